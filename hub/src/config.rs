//! The hub's TOML configuration: read into a raw form that rejects unknown keys, then
//! validated into [`Config`], so a typo fails at startup instead of being silently ignored.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ca::is_server_name;

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
    #[serde(default)]
    registration: RawRegistration,
    #[serde(default)]
    broker: RawBroker,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    listen: Option<String>,
    server_names: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    listen: Option<String>,
    url: Option<String>,
    hub_url: Option<String>,
    dir: Option<PathBuf>,
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessKey {
    id: String,
    secret: String,
}

/// Where devices register: HTTPS, with a certificate from the hub's CA.
pub const DEFAULT_REGISTRATION_LISTEN: &str = "127.0.0.1:8443";
/// The names the hub's server certificates carry unless `server_names` says otherwise.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1"];
/// MQTT over TLS's registered port, on loopback.
pub const DEFAULT_BROKER_LISTEN: &str = "127.0.0.1:8883";
/// The broker's files, beside the config file.
pub const DEFAULT_BROKER_DIR: &str = "broker";
/// Debian's mosquitto package makes this user.
pub const DEFAULT_BROKER_USER: &str = "mosquitto";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub listen: SocketAddr,
    /// DNS names and IP addresses devices use to reach the hub and the broker; both
    /// servers' certificates carry them.
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Where `broker-config` makes the broker listen.
    pub listen: SocketAddr,
    /// The broker as devices reach it, sent to them at registration.
    pub url: BrokerUrl,
    /// The broker as the hub itself reaches it.
    pub hub_url: BrokerUrl,
    /// Where `broker-config` writes the broker's files and the running broker reads them:
    /// the hub rewrites the revocation list there and signals the broker's pid file.
    /// Default `broker` beside the config file; a relative path is taken from there too.
    pub dir: PathBuf,
    /// The user a broker started as root switches to (`mosquitto`, as Debian makes it).
    pub user: String,
}

/// `mqtts://HOST:PORT`; an IPv6 host is in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => write!(f, "mqtts://[{ip}]:{}", self.port),
            _ => write!(f, "mqtts://{}:{}", self.host, self.port),
        }
    }
}

impl BrokerUrl {
    fn parse(text: &str) -> Result<Self, String> {
        let usage = || format!("{text:?} is not a URL like mqtts://10.0.2.2:8883");
        let rest = text.strip_prefix("mqtts://").ok_or_else(|| {
            format!("{text:?} must start with mqtts:// (devices only speak MQTT over TLS)")
        })?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(usage)?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(usage)?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| usage())?
                .to_string(),
            None if is_server_name(host) => host.to_string(),
            None => return Err(usage()),
        };
        Ok(Self { host, port })
    }

    fn from_addr(addr: SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

/// Adds `name` to `names` unless it is there already.
fn push_unique(names: &mut Vec<String>, name: String) {
    if !names.contains(&name) {
        names.push(name);
    }
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
    pub registration: Registration,
    pub broker: Broker,
    /// Where Prometheus scrapes `/metrics`; `None` (no `[metrics]` section): not served.
    pub metrics_listen: Option<SocketAddr>,
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
            .field("registration", &self.registration)
            .field("broker", &self.broker)
            .field("metrics_listen", &self.metrics_listen)
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
        let registration = parse_registration(raw.registration, &invalid)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let broker = parse_broker(raw.broker, base, &invalid)?;
        let metrics_listen = raw
            .metrics
            .map(|m| parse_addr("metrics.listen", Some(m.listen), "127.0.0.1:9464", &invalid))
            .transpose()?;
        Ok(Config {
            listen,
            data_dir,
            access_keys,
            region,
            account_id,
            shutdown_grace: Duration::from_secs(grace),
            registration,
            broker,
            metrics_listen,
        })
    }

    /// The hub's data directory holds the CA in `ca/`.
    pub fn ca_dir(&self) -> PathBuf {
        self.data_dir.join("ca")
    }

    /// The names on the registration listener's certificate.
    pub fn registration_cert_names(&self) -> Vec<String> {
        let mut names = self.registration.server_names.clone();
        let ip = self.registration.listen.ip();
        if !ip.is_unspecified() {
            push_unique(&mut names, ip.to_string());
        }
        names
    }

    /// The names on the broker's certificate: the server names plus the hosts of both
    /// broker URLs, so devices and the hub can each verify the name they connect to.
    pub fn broker_cert_names(&self) -> Vec<String> {
        let mut names = self.registration.server_names.clone();
        for host in [&self.broker.url.host, &self.broker.hub_url.host] {
            push_unique(&mut names, host.clone());
        }
        let ip = self.broker.listen.ip();
        if !ip.is_unspecified() {
            push_unique(&mut names, ip.to_string());
        }
        names
    }
}

fn parse_addr(
    field: &str,
    value: Option<String>,
    default: &str,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    text.parse()
        .map_err(|_| invalid(field, format!("{text:?} is not an address like {default}")))
}

fn parse_registration(
    raw: RawRegistration,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Registration, ConfigError> {
    let listen = parse_addr(
        "registration.listen",
        raw.listen,
        DEFAULT_REGISTRATION_LISTEN,
        invalid,
    )?;
    let server_names = raw
        .server_names
        .unwrap_or_else(|| DEFAULT_SERVER_NAMES.iter().map(|n| n.to_string()).collect());
    if server_names.is_empty() {
        return Err(invalid(
            "registration.server_names",
            "list at least one DNS name or IP address devices reach the hub by".into(),
        ));
    }
    for (i, name) in server_names.iter().enumerate() {
        if !is_server_name(name) {
            return Err(invalid(
                &format!("registration.server_names[{i}]"),
                format!("{name:?} is neither a DNS name nor an IP address"),
            ));
        }
    }
    Ok(Registration {
        listen,
        server_names,
    })
}

fn parse_broker(
    raw: RawBroker,
    base: &Path,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Broker, ConfigError> {
    let listen = parse_addr("broker.listen", raw.listen, DEFAULT_BROKER_LISTEN, invalid)?;
    if listen.port() == 0 {
        return Err(invalid(
            "broker.listen",
            "needs a port: the broker cannot tell anyone which one it picked".into(),
        ));
    }
    let derived = |field: &str| {
        if listen.ip().is_unspecified() {
            Err(invalid(
                field,
                format!(
                    "is required when broker.listen is {listen}: give the address it is reached at, like mqtts://10.0.2.2:{}",
                    listen.port()
                ),
            ))
        } else {
            Ok(BrokerUrl::from_addr(listen))
        }
    };
    let url = match raw.url {
        Some(u) => BrokerUrl::parse(&u).map_err(|r| invalid("broker.url", r))?,
        None => derived("broker.url")?,
    };
    let hub_url = match raw.hub_url {
        Some(u) => BrokerUrl::parse(&u).map_err(|r| invalid("broker.hub_url", r))?,
        None => derived("broker.hub_url")?,
    };
    let dir = raw.dir.unwrap_or_else(|| PathBuf::from(DEFAULT_BROKER_DIR));
    if dir.as_os_str().is_empty() {
        return Err(invalid("broker.dir", "must not be empty".into()));
    }
    let user = raw.user.unwrap_or_else(|| DEFAULT_BROKER_USER.into());
    let user_ok = !user.is_empty()
        && user.len() <= 32
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !user_ok || user == "root" {
        return Err(invalid(
            "broker.user",
            format!("{user:?} must be a user name other than root (letters, digits, '_', '-')"),
        ));
    }
    Ok(Broker {
        listen,
        url,
        hub_url,
        dir: base.join(dir),
        user,
    })
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
        assert_eq!(
            c.registration.listen.to_string(),
            DEFAULT_REGISTRATION_LISTEN
        );
        assert_eq!(c.registration.server_names, DEFAULT_SERVER_NAMES);
        assert_eq!(c.broker.listen.to_string(), DEFAULT_BROKER_LISTEN);
        assert_eq!(c.broker.url.to_string(), "mqtts://127.0.0.1:8883");
        assert_eq!(c.broker.hub_url, c.broker.url);
        assert_eq!(c.ca_dir(), Path::new("/etc/skerry/state/ca"));
        assert_eq!(c.broker.dir, Path::new("/etc/skerry/broker"));
        let abs = format!("{GOOD}\n[broker]\ndir = \"/srv/broker\"\n");
        let c = Config::parse(&abs, Path::new("/etc/skerry/hub.toml")).expect("valid");
        assert_eq!(c.broker.dir, Path::new("/srv/broker"));
        assert_eq!(c.broker.user, "mosquitto");
        let root = format!("{GOOD}\n[broker]\nuser = \"root\"\n");
        let e = Config::parse(&root, Path::new("hub.toml")).expect_err("root");
        assert!(e.to_string().contains("broker.user"), "{e}");
        assert_eq!(c.metrics_listen, None);
        let c = Config::parse(
            &format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n"),
            Path::new("hub.toml"),
        )
        .expect("metrics");
        assert_eq!(c.metrics_listen, Some(([127, 0, 0, 1], 9464).into()));
    }

    #[test]
    fn registration_and_broker_sections() {
        let text = format!(
            "{GOOD}\n[registration]\nlisten = \"0.0.0.0:9443\"\nserver_names = [\"hub.lan\", \"10.0.2.2\"]\n\
             [broker]\nlisten = \"127.0.0.1:18883\"\nurl = \"mqtts://10.0.2.2:18883\"\n"
        );
        let c = Config::parse(&text, Path::new("hub.toml")).expect("valid");
        assert_eq!(c.registration.listen.to_string(), "0.0.0.0:9443");
        assert_eq!(c.broker.url.to_string(), "mqtts://10.0.2.2:18883");
        assert_eq!(c.broker.hub_url.to_string(), "mqtts://127.0.0.1:18883");
        // An unspecified listen address is no name anyone connects to.
        assert_eq!(c.registration_cert_names(), ["hub.lan", "10.0.2.2"]);
        assert_eq!(c.broker_cert_names(), ["hub.lan", "10.0.2.2", "127.0.0.1"]);
        let v6 = format!("{GOOD}\n[broker]\nlisten = \"[::1]:8883\"\n");
        let c = Config::parse(&v6, Path::new("hub.toml")).expect("v6");
        assert_eq!(c.broker.url.to_string(), "mqtts://[::1]:8883");
        assert_eq!(c.broker.url.host, "::1");
    }

    #[test]
    fn bad_registration_and_broker_values_name_their_field() {
        for (section, field) in [
            ("[registration]\nlisten = \"8443\"", "registration.listen"),
            (
                "[registration]\nserver_names = []",
                "registration.server_names",
            ),
            (
                "[registration]\nserver_names = [\"a b\"]",
                "registration.server_names[0]",
            ),
            ("[registration]\nlisen = \"x\"", "lisen"),
            ("[broker]\nlisten = \"127.0.0.1:0\"", "broker.listen"),
            ("[broker]\nurl = \"tcp://127.0.0.1:1883\"", "broker.url"),
            ("[broker]\nurl = \"mqtts://127.0.0.1\"", "broker.url"),
            ("[broker]\nhub_url = \"mqtts://h/x:1\"", "broker.hub_url"),
            ("[broker]\nlisten = \"0.0.0.0:8883\"", "broker.url"),
            ("[metrics]\nlisten = \"9464\"", "metrics.listen"),
            ("[metrics]\nport = 1", "port"),
        ] {
            let err = Config::parse(&format!("{GOOD}\n{section}\n"), Path::new("hub.toml"))
                .expect_err(field);
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
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
