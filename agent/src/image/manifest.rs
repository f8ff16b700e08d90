//! The parts of OCI and Docker v2 schema 2 manifests, indexes and platforms that a pull
//! needs. Only the fields used are modelled, so images with extra fields still parse.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Manifests and configs are read whole into memory, so their size is capped.
pub const MAX_JSON: u64 = 8 << 20;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct DescriptorPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
}

/// Classifies a manifest body: by its media type when the registry or the parent descriptor
/// gave one, else by the `mediaType` field, else by shape (an index has `manifests`).
pub fn kind_of(media_type: &str, body: &[u8]) -> Result<Kind, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let by_type = |t: &str| match t {
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Manifest),
        _ => None,
    };
    // Registries may append parameters (`; charset=utf-8`).
    let declared = media_type.split(';').next().unwrap_or("").trim();
    if let Some(k) = by_type(declared) {
        return Ok(k);
    }
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not JSON: {e}"))?;
    if probe.schema_version == Some(1) {
        return Err("Docker schema 1 manifests are not supported; re-push the image".into());
    }
    if let Some(k) = probe.media_type.as_deref().and_then(by_type) {
        return Ok(k);
    }
    match (probe.manifests.is_some(), declared) {
        (true, _) => Ok(Kind::Index),
        (false, "" | "application/json" | "text/plain") => Ok(Kind::Manifest),
        (false, other) => Err(format!("unsupported manifest media type {other:?}")),
    }
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The snapshot names of each layer's stack, per the OCI image spec:
/// chain(0) = diff(0), chain(n) = sha256(chain(n-1) + " " + diff(n)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// An OS/architecture/variant triple as OCI spells it (`linux/arm64`, `linux/arm/v7`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine the agent runs on.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            // The agent's 32-bit ARM builds target ARMv7 (Raspberry Pi 2 and later).
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            other => (other, None),
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// Variants in the spellings registries use: arm64's only variant is v8, and arm
    /// without a variant means v7, as containerd's platform matcher has it.
    fn normalized(os: &str, arch: &str, variant: Option<&str>) -> (String, String, String) {
        let arch = match arch {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            "i386" => "386",
            a => a,
        };
        let variant = match (arch, variant.unwrap_or("")) {
            ("arm64", "" | "8" | "v8") => "v8",
            ("arm", "") => "v7",
            ("arm", v @ ("5" | "6" | "7" | "8")) => {
                return (os.into(), arch.into(), format!("v{v}"))
            }
            (_, v) => v,
        };
        (os.to_string(), arch.to_string(), variant.to_string())
    }

    /// The index entry to run here: the exact variant first, then (for 32-bit ARM) an
    /// older variant the CPU also executes.
    pub fn select<'a>(&self, manifests: &'a [Descriptor]) -> Option<&'a Descriptor> {
        let (os, arch, variant) =
            Self::normalized(&self.os, &self.architecture, self.variant.as_deref());
        let mut acceptable = vec![variant.clone()];
        if arch == "arm" {
            let older = ["v8", "v7", "v6", "v5"];
            if let Some(i) = older.iter().position(|v| *v == variant) {
                acceptable.extend(older[i + 1..].iter().map(|v| v.to_string()));
            }
        }
        acceptable.iter().find_map(|want| {
            manifests.iter().find(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    let (o, a, v) = Self::normalized(&p.os, &p.architecture, p.variant.as_deref());
                    o == os && a == arch && &v == want
                })
            })
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Display for DescriptorPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!(
                "platform {s:?} is not os/architecture[/variant], e.g. linux/arm64 or linux/arm/v7"
            )),
        }
    }
}

impl TryFrom<String> for Platform {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(DescriptorPlatform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(str::to_string),
            }),
            annotations: HashMap::new(),
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let a = sha256_digest(b"a");
        let b = sha256_digest(b"b");
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], sha256_digest(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn platform_selection_normalizes_variants() {
        let list = vec![
            entry("linux", "amd64", None, "x"),
            entry("linux", "arm64", Some("v8"), "y"),
            entry("linux", "arm", Some("v6"), "z"),
            entry("windows", "amd64", None, "w"),
        ];
        let pick = |p: &str| {
            p.parse::<Platform>()
                .expect("valid platform")
                .select(&list)
                .map(|d| d.digest.clone())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("x"));
        assert_eq!(pick("linux/arm64").as_deref(), Some("y"));
        // An ARMv7 CPU runs ARMv6 code.
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("z"));
        assert_eq!(pick("linux/arm/v5"), None);
        assert_eq!(pick("linux/s390x"), None);
    }

    #[test]
    fn platform_strings_round_trip() {
        for s in ["linux/amd64", "linux/arm/v7"] {
            assert_eq!(s.parse::<Platform>().expect("valid").to_string(), s);
        }
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
    }

    #[test]
    fn kinds_by_media_type_field_or_shape() {
        assert_eq!(kind_of(OCI_INDEX, b"{}"), Ok(Kind::Index));
        assert_eq!(
            kind_of(
                "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8",
                b"{}"
            ),
            Ok(Kind::Manifest)
        );
        assert_eq!(kind_of("", br#"{"manifests":[]}"#), Ok(Kind::Index));
        assert_eq!(
            kind_of("", format!(r#"{{"mediaType":"{DOCKER_LIST}"}}"#).as_bytes()),
            Ok(Kind::Index)
        );
        assert!(kind_of("", br#"{"schemaVersion":1}"#)
            .expect_err("schema 1")
            .contains("schema 1"));
    }
}
