//! The hub's TOML configuration: read into a raw form that rejects unknown keys, then
//! validated into [`Config`], so a typo fails at startup instead of being silently ignored.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid config {path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    data_dir: PathBuf,
    #[serde(default)]
    access_keys: Vec<RawAccessKey>,
    region: Option<String>,
    account_id: Option<String>,
    shutdown_grace_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessKey {
    id: String,
    secret: String,
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Access key id -> secret access key.
    pub access_keys: HashMap<String, String>,
    pub region: String,
    pub account_id: String,
    /// How long in-flight requests may run after SIGTERM before the hub exits anyway.
    pub shutdown_grace: Duration,
}

// Hand-written so secrets never reach a log line.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.access_keys.keys().collect();
        ids.sort();
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("access_key_ids", &ids)
            .field("region", &self.region)
            .field("account_id", &self.account_id)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` names the file in errors and anchors a relative `data_dir`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let listen = raw.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:8080", raw.listen),
            )
        })?;
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        // Relative to the config file, so the hub behaves the same from any working directory.
        let data_dir = if raw.data_dir.is_relative() {
            path.parent().unwrap_or(Path::new(".")).join(&raw.data_dir)
        } else {
            raw.data_dir
        };
        if raw.access_keys.is_empty() {
            return Err(invalid(
                "access_keys",
                "at least one [[access_keys]] entry with id and secret is required".into(),
            ));
        }
        let mut access_keys = HashMap::new();
        for (i, key) in raw.access_keys.into_iter().enumerate() {
            let field = format!("access_keys[{i}]");
            let id_ok = (4..=128).contains(&key.id.len())
                && key.id.bytes().all(|b| b.is_ascii_alphanumeric());
            if !id_ok {
                return Err(invalid(
                    &format!("{field}.id"),
                    format!("{:?} must be 4 to 128 letters and digits", key.id),
                ));
            }
            if key.secret.len() < 16 || key.secret.chars().any(char::is_whitespace) {
                return Err(invalid(
                    &format!("{field}.secret"),
                    "must be at least 16 characters without whitespace".into(),
                ));
            }
            if access_keys.insert(key.id.clone(), key.secret).is_some() {
                return Err(invalid(
                    &format!("{field}.id"),
                    format!("{:?} is listed twice", key.id),
                ));
            }
        }
        let region = raw.region.unwrap_or_else(|| "us-east-1".into());
        let region_ok = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(invalid(
                "region",
                format!("{region:?} must be lowercase letters, digits and '-', like us-east-1"),
            ));
        }
        let account_id = raw.account_id.unwrap_or_else(|| "000000000000".into());
        if account_id.len() != 12 || !account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "account_id",
                format!("{account_id:?} must be 12 digits"),
            ));
        }
        let grace = raw.shutdown_grace_secs.unwrap_or(10);
        if grace > 600 {
            return Err(invalid(
                "shutdown_grace_secs",
                format!("{grace} is more than 600"),
            ));
        }
        Ok(Config {
            listen,
            data_dir,
            access_keys,
            region,
            account_id,
            shutdown_grace: Duration::from_secs(grace),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:0"
data_dir = "state"
[[access_keys]]
id = "AKIDSKERRYTEST"
secret = "0123456789abcdef0123"
"#;

    #[test]
    fn defaults_and_relative_data_dir() {
        let c = Config::parse(GOOD, Path::new("/etc/skerry/hub.toml")).expect("valid");
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.account_id, "000000000000");
        assert_eq!(c.data_dir, Path::new("/etc/skerry/state"));
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
    }

    #[test]
    fn unknown_key_is_rejected() {
        let text = format!("lisen = \"x\"\n{GOOD}");
        let err = Config::parse(&text, Path::new("hub.toml")).expect_err("unknown key");
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (needle, replacement, field) in [
            ("127.0.0.1:0", "localhost", "listen"),
            ("AKIDSKERRYTEST", "AK/", "access_keys[0].id"),
            ("0123456789abcdef0123", "short", "access_keys[0].secret"),
        ] {
            let err = Config::parse(&GOOD.replace(needle, replacement), Path::new("hub.toml"))
                .expect_err(field);
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = Config::parse(&format!("account_id = \"12\"\n{GOOD}"), Path::new("h"))
            .expect_err("account id");
        assert!(err.to_string().contains("account_id"), "{err}");
    }
}
