//! Amazon ECS task definitions in their JSON shape (camelCase), as RegisterTaskDefinition
//! takes them and DescribeTaskDefinition returns them, validated for what Skerry can run.
//!
//! Parsing rejects unknown fields; fields ECS has but Skerry cannot honour are parsed and then
//! rejected by [`TaskDefinition::validate`] with a message saying why, so nothing is silently
//! dropped. Optional fields stay `Option` so a stored definition serializes back as it came;
//! the defaults ECS applies are exposed through methods.
//!
//! This module is the model (the types, their serde shape, the defaults); `validate` holds
//! the checks, one module per part of the definition.

mod validate;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use validate::Check;

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
}
