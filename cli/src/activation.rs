//! `skerry activation create`: an SSM activation on the hub, written out as the
//! `provision.toml` a device reads from its boot partition.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::client::Hub;

/// SSM's bound on an activation's lifetime.
pub const MAX_EXPIRY: Duration = Duration::from_secs(30 * 86_400);
pub const MAX_LIMIT: u32 = 1000;
/// The role name ECS Anywhere's documentation uses; the hub records it, nothing more.
const IAM_ROLE: &str = "ecsAnywhereRole";

pub struct Request<'a> {
    pub cluster: &'a str,
    pub limit: u32,
    pub expires: Duration,
    pub hub_url: &'a str,
    pub ca_fingerprint: &'a str,
    pub attributes: BTreeMap<String, String>,
    pub description: Option<&'a str>,
}

/// The provisioning file, in the shape the agent's `provision` module reads.
#[derive(Debug, Serialize)]
pub struct ProvisionFile<'a> {
    pub hub_url: &'a str,
    pub activation_id: &'a str,
    pub activation_code: &'a str,
    pub cluster: &'a str,
    pub ca_fingerprint: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: &'a BTreeMap<String, String>,
}

/// Parses `7d`, `12h`, `30m` … and checks SSM's 30-day bound.
pub fn parse_expiry(s: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(s)
        .with_context(|| format!("--expires {s:?}: give a duration such as 7d, 12h or 90m"))?;
    if d.is_zero() || d > MAX_EXPIRY {
        bail!("--expires {s:?}: an activation lives more than 0 and at most 30 days");
    }
    Ok(d)
}

/// A SHA-256 fingerprint as the agent pins it: 64 lowercase hex digits, accepting a
/// `sha256:` prefix and `:` separators as tools print them.
pub fn normalize_fingerprint(s: &str) -> anyhow::Result<String> {
    let hex: String = s
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "--ca-fingerprint {s:?} is not a SHA-256 fingerprint (64 hex digits); \
             `skerry-hub ca-fingerprint --config HUB.toml` prints it"
        );
    }
    Ok(hex)
}

pub fn parse_attribute(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("--attribute {s:?}: write it as NAME=VALUE"),
    }
}

/// Creates the activation and writes the provisioning file to `out`; returns the
/// activation id. The file holds a secret: it is created 0600 and never overwritten.
pub async fn create(hub: &Hub, req: &Request<'_>, out: &Path) -> anyhow::Result<String> {
    if !(1..=MAX_LIMIT).contains(&req.limit) {
        bail!(
            "--limit {}: an activation registers 1 to 1000 devices",
            req.limit
        );
    }
    let url = reqwest::Url::parse(req.hub_url)
        .ok()
        .filter(|u| u.scheme() == "https" && u.host_str().is_some());
    if url.is_none() {
        bail!(
            "--hub-url {:?}: give the registration endpoint as the device reaches it, \
             https://HOST:PORT",
            req.hub_url
        );
    }
    if out.exists() {
        bail!(
            "{} already exists; remove it or choose another --output: it may hold an unused \
             activation code",
            out.display()
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let expiration = (now + req.expires).as_secs();
    let mut input = json!({
        "IamRole": IAM_ROLE,
        "RegistrationLimit": req.limit,
        "ExpirationDate": expiration,
        "Tags": [{"Key": "skerry:cluster", "Value": req.cluster}],
    });
    if let Some(d) = req.description {
        input["Description"] = Value::from(d);
    }
    let resp = hub.ssm("CreateActivation", &input).await?;
    let id = resp
        .get("ActivationId")
        .and_then(Value::as_str)
        .context("CreateActivation answered without ActivationId")?;
    let code = resp
        .get("ActivationCode")
        .and_then(Value::as_str)
        .context("CreateActivation answered without ActivationCode")?;
    let file = ProvisionFile {
        hub_url: req.hub_url,
        activation_id: id,
        activation_code: code,
        cluster: req.cluster,
        ca_fingerprint: req.ca_fingerprint,
        attributes: &req.attributes,
    };
    let text = format!(
        "# Skerry provisioning file: put it on the device's boot partition as\n\
         # skerry/provision.toml (`skerry image provision IMG --file FILE`).\n\
         # The agent removes activation_code once it has registered.\n{}",
        toml::to_string(&file).context("serialize the provisioning file")?
    );
    write_new_private(out, text.as_bytes())?;
    Ok(id.to_string())
}

fn write_new_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_bounded_by_thirty_days() {
        assert_eq!(
            parse_expiry("7d").expect("7d"),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_expiry("30d").is_ok());
        assert!(parse_expiry("31d").is_err());
        assert!(parse_expiry("0s").is_err());
        assert!(parse_expiry("soon").is_err());
    }

    #[test]
    fn fingerprints_normalize_and_bad_ones_are_named() {
        let hex = "ab".repeat(32);
        let colons = hex
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).expect("ascii").to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{colons}")).expect("ok"),
            hex
        );
        let err = normalize_fingerprint("abc").expect_err("short").to_string();
        assert!(err.contains("--ca-fingerprint"), "{err}");
    }

    #[test]
    fn provision_file_shape() {
        let attrs = BTreeMap::from([("site".to_string(), "barn".to_string())]);
        let f = ProvisionFile {
            hub_url: "https://10.0.2.2:8443",
            activation_id: "1da5d8c4-2a28-44b5-ac86-911892afea04",
            activation_code: "z8Dou5q22cYMhuHuc0ww",
            cluster: "default",
            ca_fingerprint: "00",
            attributes: &attrs,
        };
        let text = toml::to_string(&f).expect("toml");
        let back: toml::Table = text.parse().expect("parse");
        assert_eq!(
            back["activation_code"].as_str(),
            Some("z8Dou5q22cYMhuHuc0ww")
        );
        assert_eq!(back["attributes"]["site"].as_str(), Some("barn"));
    }
}
