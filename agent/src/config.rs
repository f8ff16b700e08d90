//! The agent's TOML configuration, parsed in two stages: a raw struct that rejects unknown
//! keys, then a validated `Config` with defaults filled in. Nothing is bound or contacted
//! before this succeeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::image::Platform;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/skerry";
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_NAMESPACE: &str = "skerry";
pub const DEFAULT_CNI_BIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];
pub const DEFAULT_BRIDGE: &str = "skerry0";
pub const DEFAULT_SUBNET: &str = "10.209.0.0/16";
pub const DEFAULT_NETNS_DIR: &str = "/run/skerry/netns";
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_LOG_MAX_FILES: u32 = 3;
/// How long a STOPPED task stays visible in `ps` after it left the desired state.
pub const DEFAULT_STOPPED_RETENTION_SECS: u64 = 3600;
/// How often host metrics go to the hub.
pub const DEFAULT_METRICS_INTERVAL_SECS: u64 = 60;
/// Bound on the outbox's files: messages kept for the hub while the link is down.
pub const DEFAULT_OUTBOX_MAX_BYTES: u64 = 64 << 20;
pub const MIN_OUTBOX_MAX_BYTES: u64 = 1 << 20;
/// The most processes and threads one container may hold at once (its cgroup's
/// `pids.max`): plenty for a service, far below the device's own `pid_max` (32768 on a
/// Raspberry Pi), so a fork bomb stops inside its container.
pub const DEFAULT_CONTAINER_PIDS_MAX: i64 = 1024;
/// Below this a container's init, shell and a few helpers would not fit.
pub const MIN_CONTAINER_PIDS_MAX: i64 = 16;
/// The kernel's own ceiling on process ids (`PID_MAX_LIMIT` on 64-bit).
pub const MAX_CONTAINER_PIDS_MAX: i64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    provision_file: Option<PathBuf>,
    bootstrap_file: Option<PathBuf>,
    watchdog: Option<PathBuf>,
    log_format: Option<String>,
    stopped_retention_secs: Option<u64>,
    #[serde(default)]
    containerd: RawContainerd,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    images: RawImages,
    #[serde(default)]
    logs: RawLogs,
    #[serde(default)]
    link: RawLink,
    #[serde(default)]
    outbox: RawOutbox,
    #[serde(default)]
    containers: RawContainers,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawContainers {
    pids_max: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLink {
    metrics_interval_secs: Option<u64>,
    container_metrics_interval_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    max_bytes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawContainerd {
    socket: Option<PathBuf>,
    namespace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    cni_bin_dirs: Option<Vec<PathBuf>>,
    bridge: Option<String>,
    subnet: Option<String>,
    netns_dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImages {
    #[serde(default)]
    insecure_registries: Vec<String>,
    #[serde(default)]
    auths: BTreeMap<String, RawAuth>,
    platform: Option<String>,
    preload_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    username: String,
    password: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    max_bytes: Option<u64>,
    max_files: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub control_socket: PathBuf,
    pub provision_file: Option<PathBuf>,
    /// The desired-state document a device with no other runs from its first boot.
    pub bootstrap_file: Option<PathBuf>,
    /// OCI image-layout archives imported into containerd at start.
    pub preload_dir: Option<PathBuf>,
    /// The hardware watchdog the agent feeds while its reconciler answers.
    pub watchdog: Option<PathBuf>,
    pub log_format: LogFormat,
    pub stopped_retention_secs: u64,
    pub containerd_socket: PathBuf,
    pub namespace: String,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub bridge: String,
    pub subnet: String,
    pub netns_dir: PathBuf,
    pub insecure_registries: Vec<String>,
    pub auths: BTreeMap<String, (String, String)>,
    pub platform: Option<Platform>,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    pub metrics_interval: std::time::Duration,
    /// How often the running containers' CPU and memory go to the hub.
    pub container_metrics_interval: std::time::Duration,
    pub outbox_max_bytes: u64,
    /// `pids.max` of every container of every task.
    pub container_pids_max: i64,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.into(),
            key,
            message,
        };
        let data_dir = raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        if !data_dir.is_absolute() {
            return Err(invalid(
                "data_dir",
                format!("{} is not an absolute path", data_dir.display()),
            ));
        }
        let log_format = match raw.log_format.as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log_format",
                    format!("{other:?} is not one of \"human\", \"json\""),
                ))
            }
        };
        let namespace = raw
            .containerd
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        if namespace.is_empty()
            || !namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                "containerd.namespace",
                format!("{namespace:?} may hold only letters, digits, '.', '_' and '-'"),
            ));
        }
        let bridge = raw.network.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.into());
        if bridge.is_empty() || bridge.len() > 15 {
            return Err(invalid(
                "network.bridge",
                format!("{bridge:?} must be 1 to 15 characters (a Linux interface name)"),
            ));
        }
        let subnet = raw.network.subnet.unwrap_or_else(|| DEFAULT_SUBNET.into());
        validate_cidr(&subnet).map_err(|m| invalid("network.subnet", m))?;
        let log_max_bytes = raw.logs.max_bytes.unwrap_or(DEFAULT_LOG_MAX_BYTES);
        if log_max_bytes < 64 * 1024 {
            return Err(invalid(
                "logs.max_bytes",
                format!("{log_max_bytes} is below the minimum of 65536"),
            ));
        }
        let log_max_files = raw.logs.max_files.unwrap_or(DEFAULT_LOG_MAX_FILES);
        if !(1..=100).contains(&log_max_files) {
            return Err(invalid(
                "logs.max_files",
                format!("{log_max_files} is not in 1..=100"),
            ));
        }
        let metrics_interval_secs = raw
            .link
            .metrics_interval_secs
            .unwrap_or(DEFAULT_METRICS_INTERVAL_SECS);
        if !(1..=86400).contains(&metrics_interval_secs) {
            return Err(invalid(
                "link.metrics_interval_secs",
                format!("{metrics_interval_secs} is not in 1..=86400 seconds"),
            ));
        }
        let container_metrics_interval_secs = raw
            .link
            .container_metrics_interval_secs
            .unwrap_or(DEFAULT_METRICS_INTERVAL_SECS);
        if !(1..=86400).contains(&container_metrics_interval_secs) {
            return Err(invalid(
                "link.container_metrics_interval_secs",
                format!("{container_metrics_interval_secs} is not in 1..=86400 seconds"),
            ));
        }
        let outbox_max_bytes = raw.outbox.max_bytes.unwrap_or(DEFAULT_OUTBOX_MAX_BYTES);
        if outbox_max_bytes < MIN_OUTBOX_MAX_BYTES {
            return Err(invalid(
                "outbox.max_bytes",
                format!("{outbox_max_bytes} is below the minimum of {MIN_OUTBOX_MAX_BYTES}"),
            ));
        }
        let container_pids_max = raw
            .containers
            .pids_max
            .unwrap_or(DEFAULT_CONTAINER_PIDS_MAX);
        if !(MIN_CONTAINER_PIDS_MAX..=MAX_CONTAINER_PIDS_MAX).contains(&container_pids_max) {
            return Err(invalid(
                "containers.pids_max",
                format!(
                    "{container_pids_max} is not in \
                     {MIN_CONTAINER_PIDS_MAX}..={MAX_CONTAINER_PIDS_MAX} processes"
                ),
            ));
        }
        let platform = match &raw.images.platform {
            None => None,
            Some(p) => Some(p.parse::<Platform>().map_err(|e| {
                invalid(
                    "images.platform",
                    format!("{p:?}: {e}; write it like \"linux/arm64\" or \"linux/arm/v7\""),
                )
            })?),
        };
        let beside_provision = |name: &str| {
            raw.provision_file
                .as_ref()
                .and_then(|p| Some(p.parent()?.join(name)))
        };
        for (key, p) in [
            ("bootstrap_file", &raw.bootstrap_file),
            ("watchdog", &raw.watchdog),
            ("images.preload_dir", &raw.images.preload_dir),
        ] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
                return Err(invalid(
                    key,
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        Ok(Config {
            bootstrap_file: raw
                .bootstrap_file
                .or_else(|| beside_provision("bootstrap.json")),
            preload_dir: raw
                .images
                .preload_dir
                .or_else(|| beside_provision("images")),
            watchdog: raw.watchdog,
            control_socket: raw
                .control_socket
                .unwrap_or_else(|| data_dir.join("agent.sock")),
            provision_file: raw.provision_file,
            log_format,
            stopped_retention_secs: raw
                .stopped_retention_secs
                .unwrap_or(DEFAULT_STOPPED_RETENTION_SECS),
            containerd_socket: raw
                .containerd
                .socket
                .unwrap_or_else(|| DEFAULT_CONTAINERD_SOCKET.into()),
            namespace,
            cni_bin_dirs: raw
                .network
                .cni_bin_dirs
                .unwrap_or_else(|| DEFAULT_CNI_BIN_DIRS.iter().map(PathBuf::from).collect()),
            bridge,
            subnet,
            netns_dir: raw
                .network
                .netns_dir
                .unwrap_or_else(|| DEFAULT_NETNS_DIR.into()),
            insecure_registries: raw.images.insecure_registries,
            auths: raw
                .images
                .auths
                .into_iter()
                .map(|(k, v)| (k, (v.username, v.password)))
                .collect(),
            platform,
            log_max_bytes,
            log_max_files,
            metrics_interval: std::time::Duration::from_secs(metrics_interval_secs),
            container_metrics_interval: std::time::Duration::from_secs(
                container_metrics_interval_secs,
            ),
            outbox_max_bytes,
            container_pids_max,
            data_dir,
        })
    }

    pub fn state_db(&self) -> PathBuf {
        self.data_dir.join("state.redb")
    }
    pub fn tasks_dir(&self) -> PathBuf {
        self.data_dir.join("tasks")
    }
    pub fn network_state_dir(&self) -> PathBuf {
        self.data_dir.join("network")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
    pub fn identity_dir(&self) -> PathBuf {
        self.data_dir.join("identity")
    }
    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }
}

/// Outbox segment size for a bound: 4 MiB, or an eighth of a small bound, so compaction
/// always has several segments to work with.
pub fn outbox_segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(64 << 10, 4 << 20)
}

fn validate_cidr(s: &str) -> Result<(), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR like \"10.209.0.0/16\""))?;
    let ok = addr.parse::<std::net::Ipv4Addr>().is_ok()
        && len.parse::<u8>().is_ok_and(|l| (8..=28).contains(&l));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an IPv4 CIDR with a prefix of 8 to 28 bits"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("agent.toml"))
    }

    #[test]
    fn empty_config_takes_the_defaults() {
        let c = parse("").expect("empty config is valid");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.namespace, "skerry");
        assert_eq!(
            c.control_socket,
            PathBuf::from("/var/lib/skerry/agent.sock")
        );
        assert_eq!(c.bridge, "skerry0");
        assert_eq!(c.container_pids_max, DEFAULT_CONTAINER_PIDS_MAX);
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            r#"
            data_dir = "/data/skerry"
            log_format = "json"
            [containerd]
            socket = "/run/c.sock"
            namespace = "edge"
            [network]
            subnet = "10.50.0.0/16"
            [images]
            insecure_registries = ["10.0.2.2:5000"]
            platform = "linux/arm64"
            [images.auths."registry.example"]
            username = "u"
            password = "p"
            [logs]
            max_bytes = 1048576
            max_files = 2
            [link]
            metrics_interval_secs = 5
            [outbox]
            max_bytes = 8388608
            [containers]
            pids_max = 256
            "#,
        )
        .expect("valid");
        assert_eq!(c.metrics_interval, std::time::Duration::from_secs(5));
        assert_eq!(
            c.container_metrics_interval,
            std::time::Duration::from_secs(DEFAULT_METRICS_INTERVAL_SECS)
        );
        assert_eq!(c.outbox_max_bytes, 8 << 20);
        assert_eq!(c.container_pids_max, 256);
        assert_eq!(c.outbox_dir(), PathBuf::from("/data/skerry/outbox"));
        assert_eq!(c.namespace, "edge");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.auths["registry.example"].0, "u");
        assert_eq!(c.log_max_files, 2);
        assert_eq!(c.bootstrap_file, None, "no provisioning file, no default");
        assert_eq!(c.watchdog, None);
    }

    #[test]
    fn bootstrap_and_preload_default_to_beside_the_provisioning_file() {
        let c = parse("provision_file = \"/boot/skerry/provision.toml\"").expect("valid");
        assert_eq!(c.bootstrap_file, Some("/boot/skerry/bootstrap.json".into()));
        assert_eq!(c.preload_dir, Some("/boot/skerry/images".into()));
        let c = parse(
            "provision_file = \"/boot/skerry/provision.toml\"\n\
             bootstrap_file = \"/etc/skerry/first.json\"\n\
             watchdog = \"/dev/watchdog\"\n\
             [images]\npreload_dir = \"/media/images\"",
        )
        .expect("valid");
        assert_eq!(c.bootstrap_file, Some("/etc/skerry/first.json".into()));
        assert_eq!(c.preload_dir, Some("/media/images".into()));
        assert_eq!(c.watchdog, Some("/dev/watchdog".into()));
        let e = parse("watchdog = \"dev/watchdog\"").expect_err("relative");
        assert!(e.to_string().contains("watchdog"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[containerd]\nsockett = \"/x\"\n")
            .expect_err("typo must be rejected")
            .to_string();
        assert!(e.contains("sockett"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("data_dir = \"relative\"", "data_dir"),
            ("log_format = \"xml\"", "log_format"),
            ("[containerd]\nnamespace = \"a b\"", "containerd.namespace"),
            ("[network]\nsubnet = \"10.0.0.0\"", "network.subnet"),
            (
                "[network]\nbridge = \"a-very-long-bridge-name\"",
                "network.bridge",
            ),
            ("[logs]\nmax_files = 0", "logs.max_files"),
            ("[images]\nplatform = \"arm64\"", "images.platform"),
            (
                "[link]\nmetrics_interval_secs = 0",
                "link.metrics_interval_secs",
            ),
            (
                "[link]\ncontainer_metrics_interval_secs = 0",
                "link.container_metrics_interval_secs",
            ),
            ("[outbox]\nmax_bytes = 4096", "outbox.max_bytes"),
            ("[containers]\npids_max = 15", "containers.pids_max"),
            ("[containers]\npids_max = -1", "containers.pids_max"),
            ("[containers]\npids_max = 4194305", "containers.pids_max"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
