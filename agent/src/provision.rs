//! The provisioning file (`provision.toml` on the boot partition): where a fresh device
//! registers (`hub_url`), with which SSM activation, into which cluster, and the SHA-256
//! fingerprint of the hub's CA that the device pins instead of trusting any root.
//! Parsed in two stages like the config. After registration the activation code is
//! scrubbed from the file, which is rewritten atomically with every other line kept.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use skerry_proto::registration::is_cluster_name;

pub const DEFAULT_CLUSTER: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot read provisioning file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid provisioning file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid provisioning file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("cannot rewrite provisioning file {path} without its activation code: {message}")]
    Scrub { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvision {
    hub_url: Option<String>,
    activation_id: Option<String>,
    activation_code: Option<String>,
    cluster: Option<String>,
    ca_fingerprint: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

/// A validated provisioning file.
#[derive(Clone, PartialEq, Eq)]
pub struct Provision {
    pub path: PathBuf,
    /// The registration endpoint's base: `https://HOST[:PORT][/PATH]`, no trailing slash.
    pub hub_url: String,
    pub activation_id: String,
    /// Gone once the device has registered with it.
    pub activation_code: Option<String>,
    pub cluster: String,
    /// SHA-256 of the hub CA certificate's DER.
    pub ca_fingerprint: [u8; 32],
    pub attributes: BTreeMap<String, String>,
}

// Hand-written so the activation code never reaches a log line.
impl std::fmt::Debug for Provision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provision")
            .field("path", &self.path)
            .field("hub_url", &self.hub_url)
            .field("activation_id", &self.activation_id)
            .field(
                "activation_code",
                &self.activation_code.as_ref().map(|_| "<redacted>"),
            )
            .field("cluster", &self.cluster)
            .field("ca_fingerprint", &hex::encode(self.ca_fingerprint))
            .field("attributes", &self.attributes)
            .finish()
    }
}

impl Provision {
    /// Reads the file; `Ok(None)` when it does not exist (a device that is not managed).
    pub fn load(path: &Path) -> Result<Option<Provision>, ProvisionError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ProvisionError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Provision, ProvisionError> {
        let raw: RawProvision = toml::from_str(text).map_err(|e| ProvisionError::Parse {
            path: path.into(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        let invalid = |key: &str, message: String| ProvisionError::Invalid {
            path: path.into(),
            key: key.to_string(),
            message,
        };
        let required = |key: &str, v: Option<String>, what: &str| {
            v.ok_or_else(|| invalid(key, format!("missing; add {key} = \"...\" with {what}")))
        };
        let hub_url = required(
            "hub_url",
            raw.hub_url,
            "the hub's registration URL, like \"https://hub.example:8443\"",
        )?;
        let hub_url = validate_hub_url(&hub_url).map_err(|m| invalid("hub_url", m))?;
        let activation_id = required(
            "activation_id",
            raw.activation_id,
            "the ActivationId create-activation returned",
        )?;
        if !is_uuid(&activation_id) {
            return Err(invalid(
                "activation_id",
                format!(
                    "{activation_id:?} is not an activation id; use the ActivationId \
                     create-activation returned (8-4-4-4-12 hex digits)"
                ),
            ));
        }
        if let Some(code) = &raw.activation_code {
            if code.is_empty()
                || code.len() > 128
                || !code.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(invalid(
                    "activation_code",
                    "must be the 1 to 128 letters and digits create-activation returned".into(),
                ));
            }
        }
        let cluster = raw.cluster.unwrap_or_else(|| DEFAULT_CLUSTER.into());
        if !is_cluster_name(&cluster) {
            return Err(invalid(
                "cluster",
                format!("{cluster:?} must be 1 to 255 letters, digits, hyphens and underscores"),
            ));
        }
        let fp = required(
            "ca_fingerprint",
            raw.ca_fingerprint,
            "the SHA-256 fingerprint of the hub's CA certificate",
        )?;
        let ca_fingerprint = parse_fingerprint(&fp).map_err(|m| invalid("ca_fingerprint", m))?;
        for name in raw.attributes.keys() {
            let ok = (1..=128).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
            if !ok {
                return Err(invalid(
                    &format!("attributes.{name}"),
                    "attribute names are 1 to 128 letters, digits, '-', '_', '.' and '/'".into(),
                ));
            }
        }
        Ok(Provision {
            path: path.into(),
            hub_url,
            activation_id,
            activation_code: raw.activation_code,
            cluster,
            ca_fingerprint,
            attributes: raw.attributes,
        })
    }

    /// Rewrites the file without its `activation_code`, every other line kept, and a comment
    /// in its place; atomically (temp file in the same directory, fsync, rename, directory
    /// fsync), so the file is the old or the new one after a power cut.
    pub fn scrub(&self, instance_id: &str) -> Result<(), ProvisionError> {
        let fail = |message: String| ProvisionError::Scrub {
            path: self.path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&self.path).map_err(|e| fail(e.to_string()))?;
        let Some(new_text) = without_activation_code(&text, instance_id) else {
            return Ok(());
        };
        // The result must be the same file less the code; anything else is not written.
        let check = Self::parse(&new_text, &self.path).map_err(|e| fail(e.to_string()))?;
        let current = Self::parse(&text, &self.path).map_err(|e| fail(e.to_string()))?;
        let expected = Provision {
            activation_code: None,
            ..current
        };
        if check.activation_code.is_some() || expected != check {
            return Err(fail(
                "activation_code is not a plain top-level `activation_code = \"...\"` line; \
                 remove it by hand"
                    .into(),
            ));
        }
        write_atomically(&self.path, new_text.as_bytes()).map_err(|e| fail(e.to_string()))
    }
}

/// `text` without its top-level `activation_code` line, or `None` if it has none.
fn without_activation_code(text: &str, instance_id: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut top_level = true;
    let mut found = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') {
            top_level = false;
        }
        let is_code = top_level
            && t.strip_prefix("activation_code")
                .is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_code && !found {
            found = true;
            out.push_str(&format!(
                "# activation_code removed after registration as instance {instance_id}\n"
            ));
            continue;
        }
        out.push_str(line);
    }
    found.then_some(out)
}

/// Writes `path` through a temp file in its directory: write, fsync, rename, fsync dir.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap_or(0o600);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        // vfat ignores modes; elsewhere keep the file's own.
        let _ = f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn validate_hub_url(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        format!("{url:?} must start with https:// (registration is always over TLS)")
    })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || rest.contains(['?', '#', ' ']) {
        return Err(format!(
            "{url:?} is not a URL like \"https://hub.example:8443\""
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// SSM activation ids are UUIDs: 8-4-4-4-12 hex digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses a SHA-256 fingerprint: 64 hex digits, optionally prefixed `sha256:` and separated
/// by `:` (as `openssl x509 -fingerprint -sha256` prints it), either case.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let t = s.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .or_else(|| t.strip_prefix("sha256 Fingerprint="))
        .or_else(|| t.strip_prefix("SHA256 Fingerprint="))
        .unwrap_or(t);
    let digits: String = t.chars().filter(|&c| c != ':').collect();
    let bytes = hex::decode(&digits).ok().filter(|b| b.len() == 32);
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            format!(
                "{s:?} is not a SHA-256 fingerprint; write the 64 hex digits of the hub CA's \
                 SHA-256 (`openssl x509 -noout -fingerprint -sha256 -in ca.pem`), with or \
                 without `sha256:` and colons"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "3f8a9c0e5b7d1f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a";

    fn text(extra: &str) -> String {
        format!(
            "hub_url = \"https://hub.example:8443/\"\n\
             activation_id = \"1da5d8c4-2a28-44b5-ac86-911892afea04\"\n\
             activation_code = \"z8Dou5q22cYMhuHuc0ww\"\n\
             ca_fingerprint = \"{FP}\"\n{extra}"
        )
    }

    fn parse(t: &str) -> Result<Provision, ProvisionError> {
        Provision::parse(t, Path::new("/boot/provision.toml"))
    }

    #[test]
    fn minimal_file_takes_the_defaults_and_hides_the_code() {
        let p = parse(&text("")).expect("valid");
        assert_eq!(p.hub_url, "https://hub.example:8443");
        assert_eq!(p.cluster, "default");
        assert_eq!(p.activation_code.as_deref(), Some("z8Dou5q22cYMhuHuc0ww"));
        assert_eq!(hex::encode(p.ca_fingerprint), FP);
        assert!(!format!("{p:?}").contains("z8Dou5q22cYMhuHuc0ww"));
        let p = parse(&text("cluster = \"site-7\"\n[attributes]\nrack = \"r1\"\n")).expect("ok");
        assert_eq!(p.cluster, "site-7");
        assert_eq!(p.attributes["rack"], "r1");
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let cases = [
            (
                text("").replace("https://", "http://"),
                "hub_url",
                "https://",
            ),
            (
                text("").replace("1da5d8c4-2a28", "1da5d8c4_2a28"),
                "activation_id",
                "ActivationId",
            ),
            (
                text("").replace("z8Dou5q22cYMhuHuc0ww", "z8D ou"),
                "activation_code",
                "letters",
            ),
            (text("").replace(FP, "abc"), "ca_fingerprint", "openssl"),
            (text("cluster = \"a b\"\n"), "cluster", "hyphens"),
            (
                text("[attributes]\n\"a b\" = \"x\"\n"),
                "attributes.a b",
                "attribute names",
            ),
            (
                text("").replace("hub_url", "# hub_url"),
                "hub_url",
                "missing; add hub_url",
            ),
            (text("hubb_url = \"x\"\n"), "hubb_url", "unknown field"),
        ];
        for (t, key, fix) in cases {
            let e = parse(&t).expect_err(key).to_string();
            assert!(e.contains("/boot/provision.toml"), "{e}");
            assert!(e.contains(key), "{key}: {e}");
            assert!(e.contains(fix), "{key}: {e}");
        }
    }

    #[test]
    fn fingerprint_forms() {
        let want = parse_fingerprint(FP).expect("plain hex");
        let colons: String = FP
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        for form in [
            format!("sha256:{FP}"),
            colons.clone(),
            format!("sha256:{colons}"),
            format!("SHA256 Fingerprint={colons}"),
            FP.to_uppercase(),
        ] {
            assert_eq!(parse_fingerprint(&form), Ok(want), "{form}");
        }
        for bad in [
            "",
            "sha1:00",
            &FP[..62],
            &format!("{FP}00"),
            &FP.replace('3', "g"),
        ] {
            assert!(parse_fingerprint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scrub_removes_only_the_code_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("provision.toml");
        let original = format!(
            "# my device\n{}[attributes]\nactivation_code = \"kept\"\n",
            text("")
        );
        std::fs::write(&path, &original).expect("write");
        let p = Provision::load(&path).expect("load").expect("exists");
        p.scrub("mi-0123456789abcdef0").expect("scrub");
        let after = std::fs::read_to_string(&path).expect("read");
        assert!(!after.contains("z8Dou5q22cYMhuHuc0ww"), "{after}");
        assert!(after.starts_with("# my device\n"), "{after}");
        assert!(
            after.contains(
                "# activation_code removed after registration as instance mi-0123456789abcdef0"
            ),
            "{after}"
        );
        let q = Provision::load(&path).expect("load").expect("exists");
        assert_eq!(q.activation_code, None);
        assert_eq!(q.attributes["activation_code"], "kept");
        assert_eq!(
            Provision {
                activation_code: None,
                ..p
            },
            q
        );
        // Nothing left to scrub is not an error, and changes nothing.
        q.scrub("mi-0123456789abcdef0").expect("second scrub");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), after);
        assert!(!dir.path().join(".provision.toml.tmp").exists());
    }

    #[test]
    fn missing_file_is_none() {
        assert!(Provision::load(Path::new("/nonexistent/provision.toml"))
            .expect("not an error")
            .is_none());
    }
}
