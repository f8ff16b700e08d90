//! Amazon ECS task definitions in their JSON shape (camelCase), as RegisterTaskDefinition
//! takes them and DescribeTaskDefinition returns them, validated for what Skerry can run.
//!
//! Parsing rejects unknown fields; fields ECS has but Skerry cannot honour are parsed and then
//! rejected by [`TaskDefinition::validate`] with a message saying why, so nothing is silently
//! dropped. Optional fields stay `Option` so a stored definition serializes back as it came;
//! the defaults ECS applies are exposed through methods.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A task definition error: the JSON path of the offending field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TaskDefError {
    /// JSON path of the field, e.g. `containerDefinitions[1].linuxParameters.capabilities.add[0]`.
    /// Empty when the error concerns the document as a whole.
    pub path: String,
    pub message: String,
}

impl TaskDefError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Linux capability names as ECS spells them (without `CAP_`), plus the few newer kernel
/// capabilities Docker also accepts. `ALL` is accepted on top of these.
pub const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

/// The canonical name (upper case, no `CAP_` prefix) of a capability as written in a task
/// definition, `ALL` included; `None` if it names no capability.
pub fn capability_name(raw: &str) -> Option<&'static str> {
    let upper = raw.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Some("ALL");
    }
    CAPABILITIES.iter().copied().find(|c| *c == bare)
}

/// ulimit names as ECS's `Ulimit.name` takes them.
pub const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

// Mount options ECS accepts for tmpfs; the last six take a value (`mode=1777`).
const TMPFS_OPTIONS: &[&str] = &[
    "defaults",
    "ro",
    "rw",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "sync",
    "async",
    "dirsync",
    "remount",
    "mand",
    "nomand",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "bind",
    "rbind",
    "unbindable",
    "runbindable",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
];
const TMPFS_VALUE_OPTIONS: &[&str] = &["mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol"];

/// A task definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskDefinition {
    pub family: String,
    pub container_definitions: Vec<ContainerDefinition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<NetworkMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_compatibilities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    /// CPU units, as ECS gives them: `"256"`, `"1 vCPU"`, or a number. See [`Self::cpu_units`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<SizeString>,
    /// Memory, as ECS gives it: `"512"` (MiB), `"1 GB"`, or a number. See [`Self::memory_mib`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<SizeString>,
    /// Metadata; kept, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_platform: Option<RuntimePlatform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc_mode: Option<String>,

    // Read-only fields DescribeTaskDefinition returns; the hub stores and returns them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_definition_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibilities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires_attributes: Option<Vec<Value>>,
    /// Epoch seconds, as the aws CLI shows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregistered_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_by: Option<String>,

    // Known to ECS, rejected by `validate` when set to anything but an empty value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_constraints: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_configuration: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_accelerators: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_fault_injection: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Bridge,
    Host,
    None,
    /// Parsed so the error can say why it is refused.
    Awsvpc,
}

/// A task-level size that ECS accepts as a string (`"1 vCPU"`, `"1 GB"`, `"512"`) or a number.
/// Kept as written; serialized as a string, as DescribeTaskDefinition returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeString(pub String);

impl Serialize for SizeString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SizeString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SizeString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string such as \"256\", \"1 vCPU\" or \"1 GB\", or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeString, E> {
                Ok(SizeString(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeString, E> {
                Ok(SizeString(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeString, E> {
                Ok(SizeString(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<SizeString, E> {
                Ok(SizeString(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Splits "0.5 vcpu" into (0.5, "vcpu"); the unit is lower-cased, empty when absent.
fn number_and_unit(s: &str) -> Option<(f64, String)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Some((n, unit.trim().to_ascii_lowercase()))
}

impl SizeString {
    /// CPU units (1024 per vCPU), if the string is a CPU size.
    pub fn as_cpu_units(&self) -> Option<u32> {
        let (n, unit) = number_and_unit(&self.0)?;
        let units = match unit.as_str() {
            "" if n.fract() == 0.0 => n,
            "vcpu" => n * 1024.0,
            _ => return None,
        };
        if units.fract() != 0.0 || units > f64::from(u32::MAX) {
            return None;
        }
        Some(units as u32)
    }

    /// MiB, if the string is a memory size (bare numbers are MiB; GB means GiB as in ECS).
    pub fn as_mib(&self) -> Option<u64> {
        let (n, unit) = number_and_unit(&self.0)?;
        let mib = match unit.as_str() {
            "" | "mib" | "mb" if n.fract() == 0.0 => n,
            "gb" | "gib" => n * 1024.0,
            _ => return None,
        };
        if mib.fract() != 0.0 || mib > 1e15 {
            return None;
        }
        Some(mib as u64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimePlatform {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_system_family: Option<String>,
    /// `ARM64` or `X86_64`; the agent should refuse a task whose architecture is not its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_architecture: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_volume_configuration: Option<DockerVolumeConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efs_volume_configuration: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsx_windows_file_server_volume_configuration: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_at_launch: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostVolume {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DockerVolumeConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoprovision: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_opts: Option<BTreeMap<String, String>>,
    /// Metadata; kept, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// What backs a volume, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind<'a> {
    /// A bind mount of this absolute host path.
    Host(&'a str),
    /// An empty directory created for the task and removed with it.
    Task,
}

impl Volume {
    pub fn kind(&self) -> VolumeKind<'_> {
        match self.host.as_ref().and_then(|h| h.source_path.as_deref()) {
            Some(p) => VolumeKind::Host(p),
            None => VolumeKind::Task,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDefinition {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Vec<KeyValuePair>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub essential: Option<bool>,
    /// CPU units; 0 or absent means no reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Hard limit, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Soft limit, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<PortMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_points: Option<Vec<MountPoint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly_root_filesystem: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_parameters: Option<LinuxParameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ulimits: Option<Vec<Ulimit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<ContainerDependency>>,
    /// Seconds to wait for dependencies to reach their condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<u32>,
    /// Seconds between SIGTERM and SIGKILL; see [`Self::stop_timeout_secs`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Metadata; for the integrator to put on the containerd container as labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_hosts: Option<Vec<HostEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_servers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_search_domains: Option<Vec<String>>,
    /// A network namespace of its own with only loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_networking: Option<bool>,
    /// `enabled` or `disabled`; whether the hub pins image tags to digests. Kept as metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_consistency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudo_terminal: Option<bool>,

    // Known to ECS, rejected by `validate` when set to anything but an empty value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes_from: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_credentials: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_configuration: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firelens_configuration: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_files: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_security_options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_controls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_requirements: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_specs: Option<Value>,
}

impl ContainerDefinition {
    /// ECS's default: essential unless said otherwise.
    pub fn is_essential(&self) -> bool {
        self.essential.unwrap_or(true)
    }

    /// Seconds between SIGTERM and SIGKILL (ECS default 30).
    pub fn stop_timeout_secs(&self) -> u32 {
        self.stop_timeout.unwrap_or(30)
    }

    /// `environment` as (name, value) pairs in order.
    pub fn env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.environment
            .iter()
            .flatten()
            .map(|kv| (kv.name.as_str(), kv.value.as_deref().unwrap_or("")))
    }

    pub fn is_privileged(&self) -> bool {
        self.privileged.unwrap_or(false)
    }

    pub fn is_readonly_root(&self) -> bool {
        self.readonly_root_filesystem.unwrap_or(false)
    }

    pub fn is_networking_disabled(&self) -> bool {
        self.disable_networking.unwrap_or(false)
    }

    pub fn init_process_enabled(&self) -> bool {
        self.linux_parameters
            .as_ref()
            .and_then(|l| l.init_process_enabled)
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyValuePair {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u32>,
    /// Absent or 0: in bridge mode a dynamic port (ECS semantics), in host mode the
    /// container port. See [`PortMapping::fixed_host_port`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Service Connect name; accepted as metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port_range: Option<Value>,
}

impl PortMapping {
    /// The container port (validated present and in 1..=65535).
    pub fn container_port(&self) -> u16 {
        self.container_port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0)
    }

    /// The host port when one is given (not absent, not 0).
    pub fn fixed_host_port(&self) -> Option<u16> {
        self.host_port
            .filter(|p| *p != 0)
            .and_then(|p| u16::try_from(p).ok())
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MountPoint {
    pub source_volume: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinuxParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_process_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<KernelCapabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<Vec<Tmpfs>>,
    /// MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_memory_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<Device>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_swap: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swappiness: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelCapabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tmpfs {
    pub container_path: String,
    /// MiB.
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_options: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePermission {
    Read,
    Write,
    Mknod,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    pub host_path: String,
    /// Defaults to `hostPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_path: Option<String>,
    /// Absent means all of read, write, mknod (Docker's `rwm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<DevicePermission>>,
}

impl Device {
    pub fn container_path(&self) -> &str {
        self.container_path.as_deref().unwrap_or(&self.host_path)
    }

    /// Cgroup access string: some of `r`, `w`, `m`.
    pub fn access(&self) -> String {
        match &self.permissions {
            None => "rwm".to_string(),
            Some(p) => {
                let mut s = String::new();
                for (perm, c) in [
                    (DevicePermission::Read, 'r'),
                    (DevicePermission::Write, 'w'),
                    (DevicePermission::Mknod, 'm'),
                ] {
                    if p.contains(&perm) {
                        s.push(c);
                    }
                }
                s
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ulimit {
    pub name: String,
    pub soft_limit: u64,
    pub hard_limit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// `["CMD", exe, args...]` or `["CMD-SHELL", "shell command"]`.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u32>,
}

impl HealthCheck {
    /// Seconds between checks (default 30).
    pub fn interval_secs(&self) -> u32 {
        self.interval.unwrap_or(30)
    }
    /// Seconds a check may take (default 5).
    pub fn timeout_secs(&self) -> u32 {
        self.timeout.unwrap_or(5)
    }
    /// Consecutive failures before unhealthy (default 3).
    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(3)
    }
    /// Grace seconds after start during which failures do not count (default 0).
    pub fn start_period_secs(&self) -> u32 {
        self.start_period.unwrap_or(0)
    }
    /// The argv to exec in the container: CMD-SHELL runs through `/bin/sh -c` as Docker does.
    pub fn argv(&self) -> Vec<String> {
        match self.command.split_first() {
            Some((kind, rest)) if kind == "CMD-SHELL" => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            Some((_, rest)) => rest.to_vec(),
            None => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DependencyCondition {
    Start,
    Complete,
    Success,
    Healthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDependency {
    pub container_name: String,
    pub condition: DependencyCondition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartPolicy {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored_exit_codes: Option<Vec<i32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_attempt_period: Option<u32>,
}

impl RestartPolicy {
    /// Seconds a container must have run before it may be restarted (default 300).
    pub fn restart_attempt_period_secs(&self) -> u32 {
        self.restart_attempt_period.unwrap_or(300)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEntry {
    pub hostname: String,
    pub ip_address: String,
}

/// Parses JSON into `T`, reporting the JSON path of a type error.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, TaskDefError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner().to_string();
        let message = if inner.starts_with("unknown field") {
            format!("{inner}; remove it (Skerry accepts only fields of the ECS task definition)")
        } else {
            inner
        };
        TaskDefError { path, message }
    })
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Collects every error found; [`TaskDefinition::validate`] reports the first.
struct Check {
    errors: Vec<TaskDefError>,
}

impl Check {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(TaskDefError::new(path, message));
    }

    fn unsupported(&mut self, path: &str, v: &Option<Value>, why: &str) {
        if v.as_ref().is_some_and(|v| !is_empty_value(v)) {
            self.fail(path, format!("is not supported by Skerry: {why}"));
        }
    }
}

impl TaskDefinition {
    /// Parses and validates a task definition.
    pub fn parse(json: &str) -> Result<TaskDefinition, TaskDefError> {
        let td: TaskDefinition = from_json(json)?;
        td.validate()?;
        Ok(td)
    }

    /// The network mode, `bridge` when absent as on EXTERNAL.
    pub fn network_mode(&self) -> NetworkMode {
        self.network_mode.unwrap_or(NetworkMode::Bridge)
    }

    /// Task-level CPU units, if given (validated to parse).
    pub fn cpu_units(&self) -> Option<u32> {
        self.cpu.as_ref().and_then(SizeString::as_cpu_units)
    }

    /// Task-level memory in MiB, if given (validated to parse).
    pub fn memory_mib(&self) -> Option<u64> {
        self.memory.as_ref().and_then(SizeString::as_mib)
    }

    pub fn container(&self, name: &str) -> Option<&ContainerDefinition> {
        self.container_definitions.iter().find(|c| c.name == name)
    }

    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().flatten().find(|v| v.name == name)
    }

    /// Checks everything Skerry needs before it can run the task; the first problem found.
    pub fn validate(&self) -> Result<(), TaskDefError> {
        match self.errors().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every problem [`Self::validate`] would find, in document order (task level first).
    pub fn errors(&self) -> Vec<TaskDefError> {
        let mut c = Check { errors: Vec::new() };
        self.check(&mut c);
        c.errors
    }

    fn check(&self, c: &mut Check) {
        if !valid_name(&self.family, 255) {
            c.fail("family", "must be 1 to 255 letters, digits, '_' or '-'");
        }
        for (field, v) in [
            ("taskRoleArn", &self.task_role_arn),
            ("executionRoleArn", &self.execution_role_arn),
        ] {
            if v.as_deref().is_some_and(|s| !s.is_empty()) {
                c.fail(
                    field,
                    "is not supported by Skerry: there is no IAM on the device; remove it and \
                     give containers what they need through environment or mounted files",
                );
            }
        }
        if self.network_mode == Some(NetworkMode::Awsvpc) {
            c.fail(
                "networkMode",
                "awsvpc is not supported by Skerry: there are no ENIs at the edge; use bridge, \
                 host or none",
            );
        }
        for (i, compat) in self.requires_compatibilities.iter().flatten().enumerate() {
            let path = format!("requiresCompatibilities[{i}]");
            match compat.as_str() {
                "EXTERNAL" | "EC2" => {}
                "FARGATE" => c.fail(
                    path,
                    "FARGATE is not supported by Skerry: tasks run on your own devices; use \
                     EXTERNAL",
                ),
                other => c.fail(
                    path,
                    format!("unknown compatibility {other:?}: use EXTERNAL"),
                ),
            }
        }
        if let Some(cpu) = &self.cpu {
            if let Some(units) = cpu.as_cpu_units().filter(|u| !(128..=196_608).contains(u)) {
                c.fail(
                    "cpu",
                    format!("{units} CPU units is out of range: use 128 (0.125 vCPU) to 196608"),
                );
            } else if cpu.as_cpu_units().is_none() {
                c.fail(
                    "cpu",
                    format!(
                        "cannot read {:?} as CPU: use units (\"256\") or vCPUs (\"0.5 vCPU\")",
                        cpu.0
                    ),
                );
            }
        }
        if let Some(mem) = &self.memory {
            if mem.as_mib().is_none_or(|m| m == 0) {
                c.fail(
                    "memory",
                    format!(
                        "cannot read {:?} as memory: use MiB (\"512\") or GB (\"1 GB\")",
                        mem.0
                    ),
                );
            }
        }
        for (field, v) in [("pidMode", &self.pid_mode), ("ipcMode", &self.ipc_mode)] {
            if let Some(mode) = v.as_deref().filter(|m| *m != "none") {
                c.fail(
                    field,
                    format!(
                        "{mode:?} is not supported by Skerry: each container gets its own \
                         namespace; remove it"
                    ),
                );
            }
        }
        if let Some(rp) = &self.runtime_platform {
            if rp
                .operating_system_family
                .as_deref()
                .is_some_and(|f| f != "LINUX")
            {
                c.fail(
                    "runtimePlatform.operatingSystemFamily",
                    "is not supported by Skerry unless LINUX: devices run Linux containers",
                );
            }
            if rp
                .cpu_architecture
                .as_deref()
                .is_some_and(|a| a != "ARM64" && a != "X86_64")
            {
                c.fail("runtimePlatform.cpuArchitecture", "must be ARM64 or X86_64");
            }
        }
        c.unsupported(
            "placementConstraints",
            &self.placement_constraints,
            "each device runs what the hub assigns to it; remove them",
        );
        c.unsupported(
            "proxyConfiguration",
            &self.proxy_configuration,
            "there is no App Mesh at the edge; remove it",
        );
        c.unsupported(
            "inferenceAccelerators",
            &self.inference_accelerators,
            "Elastic Inference does not exist on devices; pass devices through \
             linuxParameters.devices instead",
        );
        c.unsupported(
            "ephemeralStorage",
            &self.ephemeral_storage,
            "it is a Fargate setting; storage is the device's disk",
        );
        if self.enable_fault_injection == Some(true) {
            c.fail(
                "enableFaultInjection",
                "is not supported by Skerry: remove it or set it to false",
            );
        }

        self.check_volumes(c);

        let mode = self.network_mode();
        let mut names = HashSet::new();
        for (i, cd) in self.container_definitions.iter().enumerate() {
            let base = format!("containerDefinitions[{i}]");
            if !names.insert(cd.name.as_str()) {
                c.fail(
                    format!("{base}.name"),
                    format!(
                        "container name {:?} is used twice; names must be unique",
                        cd.name
                    ),
                );
            }
            self.check_container(c, &base, cd, mode);
        }
        if self.container_definitions.is_empty() {
            c.fail("containerDefinitions", "must list at least one container");
        } else if !self
            .container_definitions
            .iter()
            .any(|cd| cd.is_essential())
        {
            c.fail(
                "containerDefinitions",
                "at least one container must be essential (essential defaults to true)",
            );
        }
        self.check_dependencies(c);
        self.check_resources(c);
        self.check_host_ports(c, mode);
    }

    fn check_volumes(&self, c: &mut Check) {
        let mut names = HashSet::new();
        for (i, v) in self.volumes.iter().flatten().enumerate() {
            let base = format!("volumes[{i}]");
            if !valid_name(&v.name, 255) {
                c.fail(
                    format!("{base}.name"),
                    "must be 1 to 255 letters, digits, '_' or '-'",
                );
            }
            if !names.insert(v.name.as_str()) {
                c.fail(
                    format!("{base}.name"),
                    format!("volume name {:?} is used twice", v.name),
                );
            }
            c.unsupported(
                &format!("{base}.efsVolumeConfiguration"),
                &v.efs_volume_configuration,
                "there is no EFS at the edge; use host.sourcePath",
            );
            c.unsupported(
                &format!("{base}.fsxWindowsFileServerVolumeConfiguration"),
                &v.fsx_windows_file_server_volume_configuration,
                "there is no FSx at the edge; use host.sourcePath",
            );
            if v.configured_at_launch == Some(true) {
                c.fail(
                    format!("{base}.configuredAtLaunch"),
                    "is not supported by Skerry: declare the volume in the task definition",
                );
            }
            if let Some(sp) = v.host.as_ref().and_then(|h| h.source_path.as_deref()) {
                if !sp.starts_with('/') {
                    c.fail(
                        format!("{base}.host.sourcePath"),
                        format!("{sp:?} must be an absolute path"),
                    );
                }
                if v.docker_volume_configuration.is_some() {
                    c.fail(
                        format!("{base}.dockerVolumeConfiguration"),
                        "cannot be combined with host; keep one",
                    );
                }
            }
            if let Some(dv) = &v.docker_volume_configuration {
                let p = format!("{base}.dockerVolumeConfiguration");
                if dv.scope.as_deref().is_some_and(|s| s != "task") {
                    c.fail(
                        format!("{p}.scope"),
                        "only scope \"task\" is supported by Skerry: for data that outlives the \
                         task use host.sourcePath",
                    );
                }
                if dv.driver.as_deref().is_some_and(|d| d != "local") {
                    c.fail(
                        format!("{p}.driver"),
                        "only the local driver is supported by Skerry",
                    );
                }
                if dv.driver_opts.as_ref().is_some_and(|o| !o.is_empty()) {
                    c.fail(
                        format!("{p}.driverOpts"),
                        "is not supported by Skerry: use host.sourcePath for a bind mount",
                    );
                }
                if dv.autoprovision == Some(true) {
                    c.fail(
                        format!("{p}.autoprovision"),
                        "applies to shared volumes, which Skerry does not support; remove it",
                    );
                }
            }
        }
    }

    fn check_container(
        &self,
        c: &mut Check,
        base: &str,
        cd: &ContainerDefinition,
        mode: NetworkMode,
    ) {
        if !valid_name(&cd.name, 255) {
            c.fail(
                format!("{base}.name"),
                format!("{:?} must be 1 to 255 letters, digits, '_' or '-'", cd.name),
            );
        }
        if cd.image.trim().is_empty() {
            c.fail(format!("{base}.image"), "must name an image");
        }
        for (i, kv) in cd.environment.iter().flatten().enumerate() {
            if kv.name.is_empty() || kv.name.contains('=') || kv.name.contains('\0') {
                c.fail(
                    format!("{base}.environment[{i}].name"),
                    "must be non-empty and contain no '='",
                );
            }
        }
        if let Some(m) = cd.memory {
            if m < 6 {
                c.fail(
                    format!("{base}.memory"),
                    "must be at least 6 MiB (the container runtime needs that much)",
                );
            }
            if cd.memory_reservation.is_some_and(|r| r > m) {
                c.fail(
                    format!("{base}.memoryReservation"),
                    "must not exceed memory",
                );
            }
        }
        if cd.memory_reservation == Some(0) {
            c.fail(
                format!("{base}.memoryReservation"),
                "must be greater than 0 when given",
            );
        }

        self.check_ports(c, base, cd, mode);

        for (i, mp) in cd.mount_points.iter().flatten().enumerate() {
            let p = format!("{base}.mountPoints[{i}]");
            if self.volume(&mp.source_volume).is_none() {
                c.fail(
                    format!("{p}.sourceVolume"),
                    format!(
                        "names no volume: declare {:?} under volumes",
                        mp.source_volume
                    ),
                );
            }
            if !mp.container_path.starts_with('/') {
                c.fail(format!("{p}.containerPath"), "must be an absolute path");
            }
        }
        if let Some(wd) = &cd.working_directory {
            if !wd.starts_with('/') {
                c.fail(
                    format!("{base}.workingDirectory"),
                    "must be an absolute path",
                );
            }
        }
        if let Some(u) = &cd.user {
            let ok = !u.is_empty()
                && u.split(':').count() <= 2
                && u.split(':')
                    .all(|part| !part.is_empty() && !part.contains(char::is_whitespace));
            if !ok {
                c.fail(
                    format!("{base}.user"),
                    "must be \"user\" or \"user:group\", each a name or a number",
                );
            }
        }
        if let Some(lp) = &cd.linux_parameters {
            self.check_linux(c, &format!("{base}.linuxParameters"), lp);
        }
        for (i, u) in cd.ulimits.iter().flatten().enumerate() {
            let p = format!("{base}.ulimits[{i}]");
            if !ULIMIT_NAMES.contains(&u.name.as_str()) {
                c.fail(
                    format!("{p}.name"),
                    format!(
                        "{:?} is not a ulimit: use one of {}",
                        u.name,
                        ULIMIT_NAMES.join(", ")
                    ),
                );
            }
            if u.soft_limit > u.hard_limit {
                c.fail(format!("{p}.softLimit"), "must not exceed hardLimit");
            }
        }
        if let Some(hc) = &cd.health_check {
            check_health(c, &format!("{base}.healthCheck"), hc);
        }
        if let Some(rp) = &cd.restart_policy {
            let p = format!("{base}.restartPolicy");
            if rp
                .restart_attempt_period
                .is_some_and(|s| !(60..=1800).contains(&s))
            {
                c.fail(
                    format!("{p}.restartAttemptPeriod"),
                    "must be 60 to 1800 seconds",
                );
            }
            if rp.ignored_exit_codes.as_ref().is_some_and(|e| e.len() > 50) {
                c.fail(
                    format!("{p}.ignoredExitCodes"),
                    "may list at most 50 exit codes",
                );
            }
        }
        if let Some(h) = &cd.hostname {
            if mode == NetworkMode::Host {
                c.fail(
                    format!("{base}.hostname"),
                    "cannot be set in host network mode: the container uses the device's \
                     hostname; remove it",
                );
            } else if !valid_hostname(h) {
                c.fail(
                    format!("{base}.hostname"),
                    format!("{h:?} is not a valid hostname"),
                );
            }
        }
        for (i, e) in cd.extra_hosts.iter().flatten().enumerate() {
            let p = format!("{base}.extraHosts[{i}]");
            if !valid_hostname(&e.hostname) {
                c.fail(
                    format!("{p}.hostname"),
                    format!("{:?} is not a valid hostname", e.hostname),
                );
            }
            if e.ip_address.parse::<IpAddr>().is_err() {
                c.fail(
                    format!("{p}.ipAddress"),
                    format!("{:?} is not an IP address", e.ip_address),
                );
            }
        }
        for (i, s) in cd.dns_servers.iter().flatten().enumerate() {
            if s.parse::<IpAddr>().is_err() {
                c.fail(
                    format!("{base}.dnsServers[{i}]"),
                    format!("{s:?} is not an IP address"),
                );
            }
        }
        for (i, s) in cd.dns_search_domains.iter().flatten().enumerate() {
            if !valid_hostname(s) {
                c.fail(
                    format!("{base}.dnsSearchDomains[{i}]"),
                    format!("{s:?} is not a valid domain"),
                );
            }
        }
        if mode == NetworkMode::Host
            && (cd.extra_hosts.as_ref().is_some_and(|v| !v.is_empty())
                || cd.dns_servers.as_ref().is_some_and(|v| !v.is_empty())
                || cd
                    .dns_search_domains
                    .as_ref()
                    .is_some_and(|v| !v.is_empty()))
        {
            // Host mode shares the device's /etc/hosts and resolv.conf, as Docker does.
            let field = if cd.extra_hosts.as_ref().is_some_and(|v| !v.is_empty()) {
                "extraHosts"
            } else if cd.dns_servers.as_ref().is_some_and(|v| !v.is_empty()) {
                "dnsServers"
            } else {
                "dnsSearchDomains"
            };
            c.fail(
                format!("{base}.{field}"),
                "cannot be set in host network mode: the container uses the device's files; \
                 remove it or use bridge",
            );
        }
        if cd
            .version_consistency
            .as_deref()
            .is_some_and(|v| v != "enabled" && v != "disabled")
        {
            c.fail(
                format!("{base}.versionConsistency"),
                "must be \"enabled\" or \"disabled\"",
            );
        }
        for (field, v) in [
            ("interactive", cd.interactive),
            ("pseudoTerminal", cd.pseudo_terminal),
        ] {
            if v == Some(true) {
                c.fail(
                    format!("{base}.{field}"),
                    "is not supported by Skerry: containers run detached without a terminal; \
                     remove it",
                );
            }
        }
        let unsupported: [(&str, &Option<Value>, &str); 11] = [
            (
                "links",
                &cd.links,
                "use bridge networking and reach containers by port, or extraHosts",
            ),
            (
                "volumesFrom",
                &cd.volumes_from,
                "declare a volume and mount it in both containers",
            ),
            (
                "secrets",
                &cd.secrets,
                "there is no Secrets Manager or SSM at the edge; use environment or a host volume",
            ),
            (
                "repositoryCredentials",
                &cd.repository_credentials,
                "registry credentials are configured on the device",
            ),
            (
                "logConfiguration",
                &cd.log_configuration,
                "Skerry keeps container logs on the device; remove it",
            ),
            (
                "firelensConfiguration",
                &cd.firelens_configuration,
                "Skerry keeps container logs on the device; remove it",
            ),
            (
                "environmentFiles",
                &cd.environment_files,
                "there is no S3 at the edge; use environment",
            ),
            (
                "dockerSecurityOptions",
                &cd.docker_security_options,
                "use linuxParameters.capabilities or privileged",
            ),
            (
                "systemControls",
                &cd.system_controls,
                "sysctls are not set per container; remove them",
            ),
            (
                "resourceRequirements",
                &cd.resource_requirements,
                "GPUs are passed through linuxParameters.devices",
            ),
            (
                "credentialSpecs",
                &cd.credential_specs,
                "there is no Active Directory integration; remove them",
            ),
        ];
        for (field, v, why) in unsupported {
            c.unsupported(&format!("{base}.{field}"), v, why);
        }
    }

    fn check_ports(&self, c: &mut Check, base: &str, cd: &ContainerDefinition, mode: NetworkMode) {
        let Some(pms) = &cd.port_mappings else { return };
        if !pms.is_empty() && mode == NetworkMode::None {
            c.fail(
                format!("{base}.portMappings"),
                "cannot be used with networkMode none: the task has no network; use bridge",
            );
        }
        if !pms.is_empty() && cd.is_networking_disabled() {
            c.fail(
                format!("{base}.portMappings"),
                "cannot be used with disableNetworking",
            );
        }
        for (i, pm) in pms.iter().enumerate() {
            let p = format!("{base}.portMappings[{i}]");
            c.unsupported(
                &format!("{p}.containerPortRange"),
                &pm.container_port_range,
                "map each port with containerPort",
            );
            c.unsupported(
                &format!("{p}.appProtocol"),
                &pm.app_protocol,
                "it is a Service Connect setting; remove it",
            );
            match pm.container_port {
                None => c.fail(format!("{p}.containerPort"), "is required"),
                Some(cp) if !(1..=65535).contains(&cp) => {
                    c.fail(format!("{p}.containerPort"), "must be 1 to 65535")
                }
                Some(_) => {}
            }
            if let Some(hp) = pm.host_port {
                if hp > 65535 {
                    c.fail(
                        format!("{p}.hostPort"),
                        "must be 1 to 65535 (or 0/absent for a dynamic port)",
                    );
                } else if mode == NetworkMode::Host && hp != 0 && Some(hp) != pm.container_port {
                    c.fail(
                        format!("{p}.hostPort"),
                        "must equal containerPort in host network mode (or be omitted)",
                    );
                }
            }
        }
    }

    fn check_linux(&self, c: &mut Check, base: &str, lp: &LinuxParameters) {
        if let Some(caps) = &lp.capabilities {
            for (list, v) in [("add", &caps.add), ("drop", &caps.drop)] {
                for (i, cap) in v.iter().flatten().enumerate() {
                    if capability_name(cap).is_none() {
                        c.fail(
                            format!("{base}.capabilities.{list}[{i}]"),
                            format!(
                                "{cap:?} is not a Linux capability: use a name like \"NET_ADMIN\" \
                                 or \"ALL\""
                            ),
                        );
                    }
                }
            }
        }
        for (i, t) in lp.tmpfs.iter().flatten().enumerate() {
            let p = format!("{base}.tmpfs[{i}]");
            if !t.container_path.starts_with('/') {
                c.fail(format!("{p}.containerPath"), "must be an absolute path");
            }
            if t.size == 0 {
                c.fail(format!("{p}.size"), "must be at least 1 (MiB)");
            }
            for (j, o) in t.mount_options.iter().flatten().enumerate() {
                let ok = match o.split_once('=') {
                    Some((k, v)) => TMPFS_VALUE_OPTIONS.contains(&k) && !v.is_empty(),
                    None => TMPFS_OPTIONS.contains(&o.as_str()),
                };
                if !ok {
                    c.fail(
                        format!("{p}.mountOptions[{j}]"),
                        format!("{o:?} is not a tmpfs mount option ECS accepts"),
                    );
                }
            }
        }
        if lp.shared_memory_size == Some(0) {
            c.fail(
                format!("{base}.sharedMemorySize"),
                "must be at least 1 (MiB)",
            );
        }
        for (i, d) in lp.devices.iter().flatten().enumerate() {
            let p = format!("{base}.devices[{i}]");
            if !d.host_path.starts_with('/') {
                c.fail(format!("{p}.hostPath"), "must be an absolute path");
            }
            if d.container_path
                .as_deref()
                .is_some_and(|cp| !cp.starts_with('/'))
            {
                c.fail(format!("{p}.containerPath"), "must be an absolute path");
            }
            if d.permissions.as_ref().is_some_and(|ps| ps.is_empty()) {
                c.fail(
                    format!("{p}.permissions"),
                    "must list at least one of read, write, mknod (or be omitted for all)",
                );
            }
        }
        c.unsupported(
            &format!("{base}.maxSwap"),
            &lp.max_swap,
            "swap limits are not set; remove it",
        );
        c.unsupported(
            &format!("{base}.swappiness"),
            &lp.swappiness,
            "swap limits are not set; remove it",
        );
    }

    fn check_dependencies(&self, c: &mut Check) {
        for (i, cd) in self.container_definitions.iter().enumerate() {
            for (j, dep) in cd.depends_on.iter().flatten().enumerate() {
                let p = format!("containerDefinitions[{i}].dependsOn[{j}]");
                let Some(target) = self.container(&dep.container_name) else {
                    c.fail(
                        format!("{p}.containerName"),
                        format!("names no container of this task: {:?}", dep.container_name),
                    );
                    continue;
                };
                if target.name == cd.name {
                    c.fail(
                        format!("{p}.containerName"),
                        "a container cannot depend on itself",
                    );
                    continue;
                }
                match dep.condition {
                    DependencyCondition::Healthy if target.health_check.is_none() => c.fail(
                        format!("{p}.condition"),
                        format!(
                            "HEALTHY needs a healthCheck on container {:?}; add one or use START",
                            target.name
                        ),
                    ),
                    DependencyCondition::Complete | DependencyCondition::Success
                        if target.is_essential() =>
                    {
                        c.fail(
                            format!("{p}.condition"),
                            format!(
                                "{:?} needs container {:?} to exit, so it must be essential: false",
                                dep.condition, target.name
                            ),
                        )
                    }
                    _ => {}
                }
            }
        }
        // Cycle detection: depth-first search with colours over the containers' indices.
        let index: HashMap<&str, usize> = self
            .container_definitions
            .iter()
            .enumerate()
            .map(|(i, cd)| (cd.name.as_str(), i))
            .collect();
        let n = self.container_definitions.len();
        let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
        for start in 0..n {
            if state[start] != 0 {
                continue;
            }
            // Explicit stack of (node, next edge to visit).
            let mut stack = vec![(start, 0usize)];
            state[start] = 1;
            while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
                let deps = self.container_definitions[node]
                    .depends_on
                    .as_deref()
                    .unwrap_or(&[]);
                if *edge < deps.len() {
                    let j = *edge;
                    *edge += 1;
                    let Some(&next) = index.get(deps[j].container_name.as_str()) else {
                        continue;
                    };
                    match state[next] {
                        0 => {
                            state[next] = 1;
                            stack.push((next, 0));
                        }
                        1 if next != node => {
                            c.fail(
                                format!(
                                    "containerDefinitions[{node}].dependsOn[{j}].containerName"
                                ),
                                format!(
                                    "dependency cycle: {:?} and {:?} wait on each other",
                                    self.container_definitions[node].name,
                                    self.container_definitions[next].name
                                ),
                            );
                            return;
                        }
                        _ => {}
                    }
                } else {
                    state[node] = 2;
                    stack.pop();
                }
            }
        }
    }

    fn check_resources(&self, c: &mut Check) {
        let task_mem = self.memory_mib();
        let task_cpu = self.cpu_units();
        let mut reserved_mem = 0u64;
        let mut reserved_cpu = 0u64;
        for (i, cd) in self.container_definitions.iter().enumerate() {
            let base = format!("containerDefinitions[{i}]");
            if task_mem.is_none() && cd.memory.is_none() && cd.memory_reservation.is_none() {
                c.fail(
                    format!("{base}.memory"),
                    "without a task-level memory each container needs memory or \
                     memoryReservation (MiB), as ECS requires for EXTERNAL",
                );
            }
            if let (Some(tm), Some(m)) = (task_mem, cd.memory) {
                if m > tm {
                    c.fail(
                        format!("{base}.memory"),
                        format!("{m} MiB exceeds the task's memory of {tm} MiB"),
                    );
                }
            }
            reserved_mem += cd.memory_reservation.or(cd.memory).unwrap_or(0);
            reserved_cpu += u64::from(cd.cpu.unwrap_or(0));
        }
        if let Some(tm) = task_mem {
            if reserved_mem > tm {
                c.fail(
                    "memory",
                    format!(
                        "the containers reserve {reserved_mem} MiB, more than the task's {tm} MiB"
                    ),
                );
            }
        }
        if let Some(tc) = task_cpu {
            if reserved_cpu > u64::from(tc) {
                c.fail(
                    "cpu",
                    format!(
                        "the containers reserve {reserved_cpu} CPU units, more than the task's {tc}"
                    ),
                );
            }
        }
    }

    fn check_host_ports(&self, c: &mut Check, mode: NetworkMode) {
        let mut seen: HashMap<(u32, Protocol), String> = HashMap::new();
        for (i, cd) in self.container_definitions.iter().enumerate() {
            for (j, pm) in cd.port_mappings.iter().flatten().enumerate() {
                let port = match mode {
                    NetworkMode::Host => pm.container_port,
                    _ => pm.host_port.filter(|p| *p != 0),
                };
                let Some(port) = port else { continue };
                let path = format!("containerDefinitions[{i}].portMappings[{j}]");
                let key = (port, pm.protocol());
                if let Some(first) = seen.get(&key) {
                    let field = if mode == NetworkMode::Host {
                        "containerPort"
                    } else {
                        "hostPort"
                    };
                    c.fail(
                        format!("{path}.{field}"),
                        format!(
                            "host port {port}/{} is already mapped by {first}",
                            pm.protocol().as_str()
                        ),
                    );
                } else {
                    seen.insert(key, path);
                }
            }
        }
    }
}

fn check_health(c: &mut Check, p: &str, hc: &HealthCheck) {
    match hc.command.first().map(String::as_str) {
        Some("CMD") | Some("CMD-SHELL") if hc.command.len() >= 2 => {}
        Some("CMD") | Some("CMD-SHELL") => c.fail(
            format!("{p}.command"),
            "needs the command after CMD or CMD-SHELL",
        ),
        _ => c.fail(
            format!("{p}.command"),
            "must start with \"CMD\" or \"CMD-SHELL\", e.g. [\"CMD-SHELL\", \"curl -f http://localhost/ || exit 1\"]",
        ),
    }
    for (field, v, lo, hi) in [
        ("interval", hc.interval, 5, 300),
        ("timeout", hc.timeout, 2, 60),
        ("retries", hc.retries, 1, 10),
        ("startPeriod", hc.start_period, 0, 300),
    ] {
        if v.is_some_and(|v| !(lo..=hi).contains(&v)) {
            c.fail(format!("{p}.{field}"), format!("must be {lo} to {hi}"));
        }
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}
