//! Task networking with ECS networkMode semantics: all containers of a task share one
//! network namespace (like a pod) and reach each other on localhost. `host` uses the host's
//! network; `none` is a namespace with only loopback; `bridge` joins the namespace to a Linux
//! bridge through the standard CNI plugins (bridge + host-local, portmap, loopback), called
//! directly as executables.
//!
//! Each task's attachment (the exact plugin configs, chosen ports) is persisted in
//! `state_dir/<task_id>.json` before any plugin runs, so whatever a crash leaves half-done is
//! torn down from that record.

mod cni;
mod netns;
mod ports;

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use cni::{NetworkList, Runner, Target};

/// Long enough for iptables on a busy Raspberry Pi; a plugin past this is treated as hung.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Plugin processes running at once, across all tasks.
const PLUGIN_CONCURRENCY: usize = 4;
/// Tries of a teardown before its error counts, 0.5 s, 1 s, 1.5 s apart.
const TEARDOWN_ATTEMPTS: u32 = 4;
/// Stripes of per-task locks; tasks hashing to one stripe just wait for each other.
const TASK_LOCKS: usize = 16;
/// Interface name of the task's side of the veth.
const IFNAME: &str = "eth0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Where the CNI plugin executables are looked up, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Attachment records, and host-local's IP reservations under `ipam/`.
    pub state_dir: PathBuf,
    /// Where task namespaces are pinned, one file per task.
    pub netns_dir: PathBuf,
    /// The Linux bridge of bridge mode; at most 15 characters.
    pub bridge: String,
    /// The bridge network's IPv4 subnet, in CIDR form.
    pub subnet: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            cni_bin_dirs: vec![PathBuf::from("/usr/lib/cni")],
            state_dir: PathBuf::from("/var/lib/skerry/network"),
            netns_dir: PathBuf::from("/run/skerry/netns"),
            bridge: "skerry0".into(),
            subnet: "10.209.0.0/16".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Host,
    None,
    Bridge,
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
            NetworkMode::Bridge => "bridge",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRequest {
    pub container_port: u16,
    /// 0 lets the agent pick a free port.
    pub host_port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The namespace the task's containers join; None in host mode.
    pub netns: Option<PathBuf>,
    /// The task's address on the bridge (bridge mode only).
    pub ip: Option<IpAddr>,
    pub bindings: Vec<Binding>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid task id {0:?} for networking: use 1 to 200 letters, digits, '_', '.' and '-', not starting with '.'")]
    InvalidTaskId(String),
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    #[error("task {task_id}: port mappings are not possible in network mode {mode}")]
    PortsUnsupported { task_id: String, mode: NetworkMode },
    #[error(
        "task {task_id}: containerPort 0 is not a port; set the port the container listens on"
    )]
    ZeroContainerPort { task_id: String },
    #[error("task {task_id}: in host mode hostPort {host_port} must equal containerPort {container_port} (or be 0)")]
    HostPortMismatch {
        task_id: String,
        host_port: u16,
        container_port: u16,
    },
    #[error("host port {port}/{protocol} is already in use; pick another hostPort or 0")]
    PortInUse { port: u16, protocol: Protocol },
    #[error("task {task_id}: no free host port for {protocol} found")]
    NoFreePort { task_id: String, protocol: Protocol },
    #[error("task {task_id}: cannot check host port {port}/{protocol}: {source}")]
    PortCheck {
        task_id: String,
        port: u16,
        protocol: Protocol,
        #[source]
        source: io::Error,
    },
    #[error("task {task_id}: cannot {action} network namespace {path}: {source}")]
    Netns {
        task_id: String,
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cni plugin {plugin:?} not found in {dirs:?}; install containernetworking-plugins or fix cni_bin_dirs")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("task {task_id}: cannot run cni plugin {path}: {source}")]
    PluginSpawn {
        task_id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("task {task_id}: cni plugin {plugin} {command} did not finish within {secs}s")]
    PluginTimeout {
        task_id: String,
        plugin: String,
        command: &'static str,
        secs: u64,
    },
    #[error("task {task_id}: cni plugin {plugin} {command} failed{}: {msg}", code.map(|c| format!(" (code {c})")).unwrap_or_default())]
    Plugin {
        task_id: String,
        plugin: String,
        command: &'static str,
        code: Option<u64>,
        msg: String,
    },
    #[error("task {task_id}: cni plugin {plugin} printed an unreadable result: {reason}")]
    PluginOutput {
        task_id: String,
        plugin: String,
        reason: String,
    },
    #[error("network state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("network state {path} is unreadable ({source}); tear the task's network down by hand and remove the file")]
    StateParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What `state_dir/<task_id>.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    task_id: String,
    mode: NetworkMode,
    ports: Vec<PortRequest>,
    /// In ADD order; DEL goes in reverse.
    networks: Vec<NetworkList>,
    /// Each network's ADD result once it succeeded, passed as prevResult on DEL.
    results: Vec<Option<Value>>,
    attachment: Attachment,
    /// Set once every step of setup succeeded.
    complete: bool,
}

pub struct Network {
    cfg: NetworkConfig,
    runner: Runner,
    /// Held from choosing host ports until they are persisted, so two setups can't both
    /// pick one port.
    port_choice: Mutex<()>,
    /// Setup and teardown of one task never interleave.
    task_locks: [Mutex<()>; TASK_LOCKS],
    netns_dir_ready: Mutex<bool>,
}

impl Network {
    pub fn new(cfg: NetworkConfig) -> Self {
        let runner = Runner::new(cfg.cni_bin_dirs.clone(), PLUGIN_TIMEOUT, PLUGIN_CONCURRENCY);
        Self {
            cfg,
            runner,
            port_choice: Mutex::new(()),
            task_locks: std::array::from_fn(|_| Mutex::new(())),
            netns_dir_ready: Mutex::new(false),
        }
    }

    /// Idempotent per task_id: a second call after a crash between steps finishes or
    /// redoes the setup cleanly.
    pub async fn setup(
        &self,
        task_id: &str,
        mode: NetworkMode,
        ports: &[PortRequest],
    ) -> Result<Attachment, NetworkError> {
        validate_task_id(task_id)?;
        if mode == NetworkMode::Bridge {
            self.validate_bridge_config()?;
        }
        validate_ports(task_id, mode, ports)?;
        let _task = self.task_lock(task_id).lock().await;

        if let Some(rec) = self.load(task_id)? {
            let intact = rec.attachment.netns.as_deref().is_none_or(netns::is_netns);
            if rec.complete && rec.mode == mode && rec.ports == ports && intact {
                return Ok(rec.attachment);
            }
            tracing::info!(task_id, "redoing an unfinished or changed network setup");
        }
        // Also clears a namespace file some earlier run left without a record.
        self.teardown_retrying(task_id).await?;

        let mut rec = {
            let _choice = self.port_choice.lock().await;
            let taken = self.ports_of_others(task_id)?;
            let bindings = choose_ports(task_id, mode, ports, taken)?;
            let rec = self.plan(task_id, mode, ports, bindings);
            self.persist(&rec).await?;
            rec
        };
        match self.bring_up(&mut rec).await {
            Ok(()) => {
                tracing::info!(task_id, %mode, ip = ?rec.attachment.ip, "task network up");
                Ok(rec.attachment)
            }
            Err(e) => {
                if let Err(undo) = self.teardown_retrying(task_id).await {
                    tracing::warn!(task_id, error = %undo, "cannot undo a failed network setup; it is retried at the next teardown");
                }
                Err(e)
            }
        }
    }

    /// Idempotent: tears down whatever exists for task_id (from what setup persisted in
    /// state_dir), OK if nothing does.
    pub async fn teardown(&self, task_id: &str) -> Result<(), NetworkError> {
        validate_task_id(task_id)?;
        let _task = self.task_lock(task_id).lock().await;
        self.teardown_retrying(task_id).await
    }

    /// The plugins' iptables calls can race with another task's: iptables-nft refuses to
    /// delete a chain still referenced for a moment ("CHAIN_DEL failed (Device or resource
    /// busy)"). A failed teardown is tried again before its error counts.
    async fn teardown_retrying(&self, task_id: &str) -> Result<(), NetworkError> {
        let mut attempt = 1;
        loop {
            match self.teardown_locked(task_id).await {
                Err(e) if attempt < TEARDOWN_ATTEMPTS => {
                    tracing::warn!(task_id, attempt, "network teardown failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Task ids that have persisted attachments (for orphan clean-up at agent start).
    pub fn attachments(&self) -> Result<Vec<String>, NetworkError> {
        let entries = match std::fs::read_dir(&self.cfg.state_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(NetworkError::State {
                    path: self.cfg.state_dir.clone(),
                    source,
                })
            }
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| NetworkError::State {
                path: self.cfg.state_dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if validate_task_id(id).is_ok() {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn task_lock(&self, task_id: &str) -> &Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        task_id.hash(&mut h);
        // The modulo keeps the value below TASK_LOCKS, so it fits any usize.
        let i = usize::try_from(h.finish() % TASK_LOCKS as u64).unwrap_or(0);
        &self.task_locks[i]
    }

    fn record_path(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join(format!("{task_id}.json"))
    }

    fn netns_path(&self, task_id: &str) -> PathBuf {
        self.cfg.netns_dir.join(task_id)
    }

    fn network_name(&self) -> String {
        format!("skerry-{}", self.cfg.bridge)
    }

    fn validate_bridge_config(&self) -> Result<(), NetworkError> {
        let b = &self.cfg.bridge;
        let ok = (1..=15).contains(&b.len())
            && b != "."
            && b != ".."
            && b.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(NetworkError::InvalidConfig(format!(
                "bridge {b:?}: use 1 to 15 letters, digits, '_', '.' and '-'"
            )));
        }
        let valid_subnet = self
            .cfg
            .subnet
            .split_once('/')
            .and_then(|(ip, len)| Some((ip.parse::<Ipv4Addr>().ok()?, len.parse::<u8>().ok()?)))
            .is_some_and(|(_, len)| (8..=30).contains(&len));
        if !valid_subnet {
            return Err(NetworkError::InvalidConfig(format!(
                "subnet {:?}: use IPv4 CIDR form with a prefix of 8 to 30, like 10.209.0.0/16",
                self.cfg.subnet
            )));
        }
        Ok(())
    }

    /// The networks to ADD for a task, with everything the plugins will see.
    fn plan(
        &self,
        task_id: &str,
        mode: NetworkMode,
        ports: &[PortRequest],
        bindings: Vec<Binding>,
    ) -> Record {
        let netns = (mode != NetworkMode::Host).then(|| self.netns_path(task_id));
        let mut networks = Vec::new();
        if mode != NetworkMode::Host {
            networks.push(NetworkList {
                name: "skerry-lo".into(),
                cni_version: cni::CNI_VERSION.into(),
                plugins: vec![json!({"type": "loopback"})],
            });
        }
        if mode == NetworkMode::Bridge {
            let mut plugins = vec![json!({
                "type": "bridge",
                "bridge": self.cfg.bridge,
                "isGateway": true,
                "ipMasq": true,
                // Lets a container reach its own published ports.
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.cfg.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.cfg.state_dir.join("ipam"),
                },
            })];
            if !bindings.is_empty() {
                let mappings: Vec<Value> = bindings
                    .iter()
                    .map(|b| {
                        json!({
                            "hostPort": b.host_port,
                            "containerPort": b.container_port,
                            "protocol": b.protocol.to_string(),
                        })
                    })
                    .collect();
                plugins.push(json!({
                    "type": "portmap",
                    "capabilities": {"portMappings": true},
                    // Makes a host port reachable on 127.0.0.1 too.
                    "snat": true,
                    "runtimeConfig": {"portMappings": mappings},
                }));
            }
            networks.push(NetworkList {
                name: self.network_name(),
                cni_version: cni::CNI_VERSION.into(),
                plugins,
            });
        }
        Record {
            task_id: task_id.to_string(),
            mode,
            ports: ports.to_vec(),
            results: vec![None; networks.len()],
            networks,
            attachment: Attachment {
                netns,
                ip: None,
                bindings,
            },
            complete: false,
        }
    }

    async fn bring_up(&self, rec: &mut Record) -> Result<(), NetworkError> {
        let task_id = rec.task_id.clone();
        if let Some(path) = rec.attachment.netns.clone() {
            let fail = |(action, source): netns::NetnsFailure| NetworkError::Netns {
                task_id: task_id.clone(),
                path: path.clone(),
                action,
                source,
            };
            {
                let mut ready = self.netns_dir_ready.lock().await;
                if !*ready {
                    netns::prepare_dir(&self.cfg.netns_dir).map_err(|(action, source)| {
                        NetworkError::Netns {
                            task_id: task_id.clone(),
                            path: self.cfg.netns_dir.clone(),
                            action,
                            source,
                        }
                    })?;
                    *ready = true;
                }
            }
            netns::create(path.clone()).await.map_err(fail)?;
        }
        for i in 0..rec.networks.len() {
            let target = Target {
                task_id: &task_id,
                netns: rec.attachment.netns.as_deref(),
                ifname: IFNAME,
            };
            let result = self.runner.add(&target, &rec.networks[i]).await?;
            if rec.mode == NetworkMode::Bridge && i + 1 == rec.networks.len() {
                rec.attachment.ip = cni::container_ip(&result);
            }
            rec.results[i] = Some(result);
        }
        rec.complete = true;
        self.persist(rec).await
    }

    async fn teardown_locked(&self, task_id: &str) -> Result<(), NetworkError> {
        if let Some(rec) = self.load(task_id)? {
            let ns = rec.attachment.netns.as_deref();
            let ns_error = |(action, source): netns::NetnsFailure| NetworkError::Netns {
                task_id: task_id.to_string(),
                path: ns.map(Path::to_path_buf).unwrap_or_default(),
                action,
                source,
            };
            // A file with no namespace mounted (a crash mid-create) makes plugins fail with
            // "not a network namespace"; nothing can be inside it, so drop it first.
            if let Some(ns) = ns {
                if ns.exists() && !netns::is_netns(ns) {
                    netns::remove(ns).map_err(ns_error)?;
                }
            }
            let target = Target {
                task_id,
                netns: ns,
                ifname: IFNAME,
            };
            let mut first = None;
            for (i, list) in rec.networks.iter().enumerate().rev() {
                let cached = rec.results.get(i).and_then(Option::as_ref);
                if let Err(e) = self.runner.del(&target, list, cached).await {
                    first.get_or_insert(e);
                }
            }
            // The record and namespace stay until DEL succeeds, so a retry can finish it.
            if let Some(e) = first {
                return Err(e);
            }
            if let Some(ns) = ns {
                netns::remove(ns).map_err(ns_error)?;
            }
            self.forget(task_id).await?;
            tracing::info!(task_id, "task network torn down");
        }
        let stray = self.netns_path(task_id);
        netns::remove(&stray).map_err(|(action, source)| NetworkError::Netns {
            task_id: task_id.to_string(),
            path: stray.clone(),
            action,
            source,
        })
    }

    /// Host ports mapped by every other persisted attachment.
    fn ports_of_others(&self, task_id: &str) -> Result<HashSet<(u16, Protocol)>, NetworkError> {
        let mut taken = HashSet::new();
        for id in self.attachments()? {
            if id == task_id {
                continue;
            }
            if let Some(rec) = self.load(&id)? {
                taken.extend(
                    rec.attachment
                        .bindings
                        .iter()
                        .map(|b| (b.host_port, b.protocol)),
                );
            }
        }
        Ok(taken)
    }

    fn load(&self, task_id: &str) -> Result<Option<Record>, NetworkError> {
        let path = self.record_path(task_id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(NetworkError::State { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| NetworkError::StateParse { path, source })
    }

    /// Writes the record atomically and durably: a crash leaves the old or the new one.
    async fn persist(&self, rec: &Record) -> Result<(), NetworkError> {
        let dir = self.cfg.state_dir.clone();
        let path = self.record_path(&rec.task_id);
        let bytes = serde_json::to_vec_pretty(rec).expect("a record always serializes");
        let p = path.clone();
        let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let tmp = p.with_extension("json.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        written.map_err(|source| NetworkError::State { path, source })
    }

    async fn forget(&self, task_id: &str) -> Result<(), NetworkError> {
        let path = self.record_path(task_id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetworkError::State { path, source }),
        }
    }
}

fn validate_task_id(task_id: &str) -> Result<(), NetworkError> {
    // It names a file and is the CNI container id, whose alphabet this is.
    let ok = (1..=200).contains(&task_id.len())
        && !task_id.starts_with('.')
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidTaskId(task_id.to_string()))
    }
}

fn validate_ports(
    task_id: &str,
    mode: NetworkMode,
    ports: &[PortRequest],
) -> Result<(), NetworkError> {
    if mode == NetworkMode::None && !ports.is_empty() {
        return Err(NetworkError::PortsUnsupported {
            task_id: task_id.to_string(),
            mode,
        });
    }
    for p in ports {
        if p.container_port == 0 {
            return Err(NetworkError::ZeroContainerPort {
                task_id: task_id.to_string(),
            });
        }
        if mode == NetworkMode::Host && p.host_port != 0 && p.host_port != p.container_port {
            return Err(NetworkError::HostPortMismatch {
                task_id: task_id.to_string(),
                host_port: p.host_port,
                container_port: p.container_port,
            });
        }
    }
    Ok(())
}

/// Host ports for a request, in request order: given ones are checked free, 0 is picked.
/// In host mode the container binds the host port itself, so it is the container port.
fn choose_ports(
    task_id: &str,
    mode: NetworkMode,
    ports: &[PortRequest],
    mut taken: HashSet<(u16, Protocol)>,
) -> Result<Vec<Binding>, NetworkError> {
    let check_error = |port, protocol, source| NetworkError::PortCheck {
        task_id: task_id.to_string(),
        port,
        protocol,
        source,
    };
    let wanted = |p: &PortRequest| match mode {
        NetworkMode::Host => p.container_port,
        _ => p.host_port,
    };
    // Held until every port is chosen, so a picked port can't repeat one asked for.
    let mut holds = Vec::new();
    let mut chosen = vec![0u16; ports.len()];
    for (i, p) in ports.iter().enumerate() {
        let port = wanted(p);
        if port == 0 {
            continue;
        }
        if !taken.insert((port, p.protocol)) {
            return Err(NetworkError::PortInUse {
                port,
                protocol: p.protocol,
            });
        }
        match ports::claim(port, p.protocol).map_err(|e| check_error(port, p.protocol, e))? {
            ports::Claim::Held(h) => holds.push(h),
            ports::Claim::InUse => {
                return Err(NetworkError::PortInUse {
                    port,
                    protocol: p.protocol,
                })
            }
        }
        chosen[i] = port;
    }
    for (i, p) in ports.iter().enumerate() {
        if chosen[i] != 0 {
            continue;
        }
        let (port, hold) = ports::pick(p.protocol, &mut taken)
            .map_err(|e| check_error(0, p.protocol, e))?
            .ok_or_else(|| NetworkError::NoFreePort {
                task_id: task_id.to_string(),
                protocol: p.protocol,
            })?;
        holds.push(hold);
        chosen[i] = port;
    }
    Ok(ports
        .iter()
        .zip(chosen)
        .map(|(p, host_port)| Binding {
            host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            host_port,
            container_port: p.container_port,
            protocol: p.protocol,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(container_port: u16, host_port: u16) -> PortRequest {
        PortRequest {
            container_port,
            host_port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn task_ids_that_are_not_file_names_are_refused() {
        assert!(validate_task_id("0f3c9a1b-task_1.x").is_ok());
        for bad in ["", ".hidden", "a/b", "arn:aws:ecs:task", &"x".repeat(201)] {
            assert!(validate_task_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn none_mode_refuses_port_mappings() {
        let err = validate_ports("t1", NetworkMode::None, &[req(80, 0)]).expect_err("refused");
        assert!(err.to_string().contains("t1"), "{err}");
    }

    #[test]
    fn host_mode_needs_matching_ports() {
        assert!(validate_ports("t", NetworkMode::Host, &[req(80, 80)]).is_ok());
        assert!(validate_ports("t", NetworkMode::Host, &[req(80, 0)]).is_ok());
        assert!(matches!(
            validate_ports("t", NetworkMode::Host, &[req(80, 81)]),
            Err(NetworkError::HostPortMismatch { .. })
        ));
        assert!(matches!(
            validate_ports("t", NetworkMode::Bridge, &[req(0, 81)]),
            Err(NetworkError::ZeroContainerPort { .. })
        ));
    }

    #[test]
    fn a_port_another_attachment_maps_is_in_use() {
        let taken = HashSet::from([(18099, Protocol::Tcp)]);
        let err =
            choose_ports("t", NetworkMode::Bridge, &[req(80, 18099)], taken).expect_err("taken");
        assert_eq!(
            err.to_string(),
            "host port 18099/tcp is already in use; pick another hostPort or 0"
        );
    }

    #[test]
    fn the_same_host_port_twice_in_one_request_is_in_use() {
        let picked =
            choose_ports("t", NetworkMode::Bridge, &[req(80, 0)], HashSet::new()).expect("pick");
        let port = picked[0].host_port;
        assert_ne!(port, 0);
        let err = choose_ports(
            "t",
            NetworkMode::Bridge,
            &[req(80, port), req(81, port)],
            HashSet::new(),
        )
        .expect_err("duplicate");
        assert!(matches!(err, NetworkError::PortInUse { port: p, .. } if p == port));
    }

    #[test]
    fn plugin_errors_name_task_plugin_and_message() {
        let e = NetworkError::Plugin {
            task_id: "t9".into(),
            plugin: "bridge".into(),
            command: "ADD",
            code: Some(11),
            msg: "failed to allocate: no IP addresses available".into(),
        };
        assert_eq!(
            e.to_string(),
            "task t9: cni plugin bridge ADD failed (code 11): failed to allocate: no IP addresses available"
        );
    }

    #[test]
    fn setup_and_teardown_can_run_on_spawned_tasks() {
        fn assert_send<T: Send>(_: &T) {}
        let net = Network::new(NetworkConfig::default());
        assert_send(&net.setup("t", NetworkMode::None, &[]));
        assert_send(&net.teardown("t"));
    }

    #[test]
    fn bad_bridge_config_is_refused() {
        let net = |bridge: &str, subnet: &str| {
            Network::new(NetworkConfig {
                bridge: bridge.into(),
                subnet: subnet.into(),
                ..NetworkConfig::default()
            })
        };
        assert!(net("skerry0", "10.209.0.0/16")
            .validate_bridge_config()
            .is_ok());
        assert!(net("a-very-long-bridge-name", "10.209.0.0/16")
            .validate_bridge_config()
            .is_err());
        assert!(net("skerry0", "10.209.0.0")
            .validate_bridge_config()
            .is_err());
        assert!(net("skerry0", "fd00::/64")
            .validate_bridge_config()
            .is_err());
    }
}
