//! The OCI runtime spec for one container of a task, with Docker's and ECS's semantics on
//! top of containerd's defaults. Pure: everything comes in through [`SpecInput`]; the only
//! I/O is a `stat` of each device's host path to learn its type and numbers.
//!
//! Every non-privileged container gets the default seccomp profile of [`seccomp`]; every
//! container gets a `pids` limit, so one task's fork bomb cannot use up the device's
//! processes.

mod seccomp;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilities, LinuxCpu, LinuxDevice,
    LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxPids,
    LinuxResources, Mount, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec,
    User,
};
use skerry_proto::taskdef::{
    capability_name, ContainerDefinition, NetworkMode, TaskDefinition, CAPABILITIES,
};

/// Where the init binary is bind-mounted in the container.
pub const INIT_PATH: &str = "/.skerry/init";

/// PATH when the image sets none, as containerd uses.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set.
const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// containerd's default masked paths.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// containerd's default read-only paths.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "container {container}: initProcessEnabled is set but the agent has no init binary to \
         mount; install it or disable initProcessEnabled"
    )]
    InitMissing { container: String },
    #[error(
        "container {container}: nothing to run: neither the task definition nor the image \
         gives an entryPoint or command"
    )]
    NoCommand { container: String },
    #[error("container {container}: user {user:?} is not in the image's /etc/passwd")]
    UnknownUser { container: String, user: String },
    #[error("container {container}: group {group:?} is not in the image's /etc/group")]
    UnknownGroup { container: String, group: String },
    #[error("container {container}: device {path}: {source}")]
    Device {
        container: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {container}: {path} is not a character or block device")]
    NotADevice { container: String, path: PathBuf },
    #[error(
        "container {container}: volume {volume:?} has no host directory; the agent must \
         resolve every volume the container mounts"
    )]
    VolumeNotResolved { container: String, volume: String },
    #[error("container {container}: {what} {name:?} is not known to the OCI spec")]
    Unknown {
        container: String,
        what: &'static str,
        name: String,
    },
    #[error("container {container}: cannot build the OCI spec: {source}")]
    Build {
        container: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
}

/// The network namespace a container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNs {
    /// The device's own network (networkMode host).
    Host,
    /// A namespace the agent prepared (bridge: with the CNI interface; none: loopback only).
    Path(PathBuf),
}

/// Everything [`build`] needs.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    pub task: &'a TaskDefinition,
    pub container: &'a ContainerDefinition,
    pub image: &'a ImageConfiguration,
    pub netns: NetNs,
    pub cgroups_path: String,
    /// Volume name -> host directory, for every volume the container mounts (task-scoped
    /// volumes resolved by the caller to their per-task directory).
    pub volumes: &'a HashMap<String, PathBuf>,
    /// A directory holding `hosts`, `resolv.conf` and `hostname` (see [`etc_files`]),
    /// bind-mounted over the container's `/etc/...`.
    pub etc_dir: Option<PathBuf>,
    /// The image's `/etc/passwd` and `/etc/group`, to resolve user and group names.
    pub passwd: Option<&'a str>,
    pub group: Option<&'a str>,
    /// A static init binary, mounted read-only at [`INIT_PATH`] for `initProcessEnabled`.
    pub init: Option<PathBuf>,
    /// The most processes and threads the container may hold at once (its cgroup's
    /// `pids.max`).
    pub pids_max: i64,
}

/// Contents for the container's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    pub hosts: String,
    pub resolv_conf: String,
    pub hostname: String,
}

/// The hostname a container gets: its `hostname`, else its name; none in host network
/// mode, where it keeps the device's.
pub fn hostname(task: &TaskDefinition, container: &ContainerDefinition) -> Option<String> {
    if task.network_mode() == NetworkMode::Host {
        return None;
    }
    Some(
        container
            .hostname
            .clone()
            .unwrap_or_else(|| container.name.clone()),
    )
}

/// Builds the `/etc` files for a container. The hostname maps to 127.0.1.1: the container's
/// address is not known when the files are written. resolv.conf takes `dnsServers` /
/// `dnsSearchDomains`, else the host's; loopback nameservers are dropped (they would point
/// into the container itself) and, if none remain, Docker's public defaults are used. In host
/// network mode the host's resolv.conf is kept as is.
pub fn etc_files(
    task: &TaskDefinition,
    container: &ContainerDefinition,
    host_resolv_conf: &str,
) -> EtcFiles {
    let host_mode = task.network_mode() == NetworkMode::Host;
    let name = hostname(task, container);
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for e in container.extra_hosts.iter().flatten() {
        hosts.push_str(&format!("{}\t{}\n", e.ip_address, e.hostname));
    }
    if let Some(n) = &name {
        hosts.push_str(&format!("127.0.1.1\t{n}\n"));
    }

    let resolv_conf = if host_mode {
        host_resolv_conf.to_string()
    } else {
        resolv_conf(container, host_resolv_conf)
    };
    EtcFiles {
        hosts,
        resolv_conf,
        hostname: name.map(|n| format!("{n}\n")).unwrap_or_default(),
    }
}

fn resolv_conf(container: &ContainerDefinition, host: &str) -> String {
    let mut nameservers = Vec::new();
    let mut search: Vec<String> = Vec::new();
    let mut options = Vec::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ns) = words.next() {
                    let loopback = ns
                        .parse::<std::net::IpAddr>()
                        .map(|ip| ip.is_loopback())
                        .unwrap_or(false);
                    if !loopback {
                        nameservers.push(ns.to_string());
                    }
                }
            }
            Some("search") | Some("domain") => {
                search = words.map(str::to_string).collect();
            }
            Some("options") => options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    if let Some(servers) = container.dns_servers.as_ref().filter(|s| !s.is_empty()) {
        nameservers = servers.clone();
    }
    if nameservers.is_empty() {
        nameservers = vec!["8.8.8.8".into(), "8.8.4.4".into()];
    }
    if let Some(domains) = container
        .dns_search_domains
        .as_ref()
        .filter(|d| !d.is_empty())
    {
        search = domains.clone();
    }
    let mut out = String::new();
    for ns in &nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

fn mount(dest: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

fn bind(dest: &str, source: &Path, read_only: bool) -> Mount {
    let mode = if read_only { "ro" } else { "rw" };
    mount(dest, "bind", source, &["rbind", "rprivate", mode])
}

/// containerd's default mounts, plus the cgroup filesystem read-only.
fn default_mounts(privileged: bool) -> Vec<Mount> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
    ]
}

fn to_cap(container: &str, name: &str) -> Result<Capability, SpecError> {
    Capability::from_str(name).map_err(|_| SpecError::Unknown {
        container: container.to_string(),
        what: "capability",
        name: name.to_string(),
    })
}

/// Docker's rules: privileged gets everything; `add: [ALL]` starts from everything minus the
/// drops; `drop: [ALL]` starts from nothing plus the adds; else defaults - drops + adds.
fn capability_set(cd: &ContainerDefinition) -> Result<Capabilities, SpecError> {
    let canon = |list: &Option<Vec<String>>| -> BTreeSet<&'static str> {
        list.iter()
            .flatten()
            .filter_map(|c| capability_name(c))
            .collect()
    };
    let caps = cd
        .linux_parameters
        .as_ref()
        .and_then(|l| l.capabilities.as_ref());
    let add = caps.map(|c| canon(&c.add)).unwrap_or_default();
    let drop = caps.map(|c| canon(&c.drop)).unwrap_or_default();
    let all: BTreeSet<&str> = CAPABILITIES.iter().copied().collect();
    let names: BTreeSet<&str> = if cd.is_privileged() {
        all
    } else if add.contains("ALL") {
        all.difference(&drop).copied().collect()
    } else if drop.contains("ALL") {
        add
    } else {
        DEFAULT_CAPS
            .iter()
            .copied()
            .filter(|c| !drop.contains(c))
            .chain(add.iter().copied())
            .collect()
    };
    names
        .into_iter()
        .filter(|n| *n != "ALL")
        .map(|n| to_cap(&cd.name, n))
        .collect()
}

/// Entry point and command with Docker's rules: the task's entryPoint replaces the image's
/// and drops the image's Cmd; the task's command replaces Cmd.
fn process_args(input: &SpecInput) -> Result<Vec<String>, SpecError> {
    let cd = input.container;
    let config = input.image.config().as_ref();
    let image_entry = config
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    let image_cmd = config.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let (entry, cmd) = match (&cd.entry_point, &cd.command) {
        (Some(e), Some(c)) => (e.clone(), c.clone()),
        (Some(e), None) => (e.clone(), Vec::new()),
        (None, Some(c)) => (image_entry, c.clone()),
        (None, None) => (image_entry, image_cmd),
    };
    let mut args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand {
            container: cd.name.clone(),
        });
    }
    if cd.init_process_enabled() {
        if input.init.is_none() {
            return Err(SpecError::InitMissing {
                container: cd.name.clone(),
            });
        }
        let mut wrapped = vec![INIT_PATH.to_string(), "--".to_string()];
        wrapped.append(&mut args);
        args = wrapped;
    }
    Ok(args)
}

/// Image env overlaid by the task's `environment`, by name, keeping the image's order.
fn process_env(input: &SpecInput) -> Vec<String> {
    let image_env = input
        .image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    let mut env: Vec<(String, String)> = image_env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    for (k, v) in input.container.env() {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    let mut out: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !out.iter().any(|kv| kv.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_string());
    }
    out
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
        })
    })
}

/// (name, gid, members) of each group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 3 || line.starts_with('#') {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves "uid", "uid:gid", "name", "name:group" (task definition first, else the image's
/// User) as Docker does: a numeric uid missing from passwd gets gid 0; supplementary groups
/// are those of /etc/group that list the user.
fn process_user(input: &SpecInput) -> Result<User, SpecError> {
    let cd = input.container;
    let spec = cd
        .user
        .clone()
        .or_else(|| input.image.config().as_ref().and_then(|c| c.user().clone()))
        .filter(|u| !u.is_empty());
    let mut user = User::default();
    let Some(spec) = spec else {
        return Ok(user);
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec.as_str(), None),
    };
    let passwd = input.passwd.unwrap_or("");
    let group = input.group.unwrap_or("");
    let (uid, mut gid, name) = match u.parse::<u32>() {
        Ok(uid) => match passwd_entries(passwd).find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name)),
            None => (uid, 0, None),
        },
        Err(_) => match passwd_entries(passwd).find(|e| e.name == u) {
            Some(e) => (e.uid, e.gid, Some(e.name)),
            None => {
                return Err(SpecError::UnknownUser {
                    container: cd.name.clone(),
                    user: u.to_string(),
                })
            }
        },
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match group_entries(group).find(|(n, _, _)| *n == g) {
                Some((_, gid, _)) => gid,
                None => {
                    return Err(SpecError::UnknownGroup {
                        container: cd.name.clone(),
                        group: g.to_string(),
                    })
                }
            },
        };
    }
    user.set_uid(uid);
    user.set_gid(gid);
    if let Some(name) = name {
        let extra: Vec<u32> = group_entries(group)
            .filter(|(_, g, members)| *g != gid && members.contains(&name))
            .map(|(_, g, _)| g)
            .collect();
        if !extra.is_empty() {
            user.set_additional_gids(Some(extra));
        }
    }
    Ok(user)
}

fn rlimits(cd: &ContainerDefinition) -> Result<Vec<PosixRlimit>, SpecError> {
    let mut limits: Vec<(PosixRlimitType, u64, u64)> =
        vec![(PosixRlimitType::RlimitNofile, 1024, 1024)];
    for u in cd.ulimits.iter().flatten() {
        let name = format!("RLIMIT_{}", u.name.to_ascii_uppercase());
        let typ = PosixRlimitType::from_str(&name).map_err(|_| SpecError::Unknown {
            container: cd.name.clone(),
            what: "ulimit",
            name: u.name.clone(),
        })?;
        limits.retain(|(t, _, _)| *t != typ);
        limits.push((typ, u.soft_limit, u.hard_limit));
    }
    limits
        .into_iter()
        .map(|(typ, soft, hard)| {
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(soft)
                .hard(hard)
                .build()
                .map_err(|source| SpecError::Build {
                    container: cd.name.clone(),
                    source,
                })
        })
        .collect()
}

fn devices(
    cd: &ContainerDefinition,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for d in cd
        .linux_parameters
        .as_ref()
        .and_then(|l| l.devices.as_ref())
        .into_iter()
        .flatten()
    {
        let host = PathBuf::from(&d.host_path);
        let meta = std::fs::metadata(&host).map_err(|source| SpecError::Device {
            container: cd.name.clone(),
            path: host.clone(),
            source,
        })?;
        let typ = if meta.file_type().is_char_device() {
            LinuxDeviceType::C
        } else if meta.file_type().is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(SpecError::NotADevice {
                container: cd.name.clone(),
                path: host,
            });
        };
        let major = i64::from(rustix::fs::major(meta.rdev()));
        let minor = i64::from(rustix::fs::minor(meta.rdev()));
        let mut node = LinuxDevice::default();
        node.set_path(PathBuf::from(d.container_path()));
        node.set_typ(typ);
        node.set_major(major);
        node.set_minor(minor);
        node.set_file_mode(Some(meta.mode() & 0o7777));
        node.set_uid(Some(0));
        node.set_gid(Some(0));
        nodes.push(node);
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(typ));
        rule.set_major(Some(major));
        rule.set_minor(Some(minor));
        rule.set_access(Some(d.access()));
        rules.push(rule);
    }
    Ok((nodes, rules))
}

fn resources(
    cd: &ContainerDefinition,
    device_rules: Vec<LinuxDeviceCgroup>,
    pids_max: i64,
) -> LinuxResources {
    let mut rules = Vec::new();
    let mut base = LinuxDeviceCgroup::default();
    base.set_access(Some("rwm".to_string()));
    if cd.is_privileged() {
        base.set_allow(true);
        rules.push(base);
    } else {
        // Deny all; runc adds its own allow-list of standard devices after these rules.
        base.set_allow(false);
        rules.push(base);
        rules.extend(device_rules);
    }
    let mut r = LinuxResources::default();
    r.set_devices(Some(rules));
    let mut pids = LinuxPids::default();
    pids.set_limit(pids_max);
    r.set_pids(Some(pids));
    if cd.memory.is_some() || cd.memory_reservation.is_some() {
        let mib = |m: u64| i64::try_from(m.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
        let mut mem = LinuxMemory::default();
        mem.set_limit(cd.memory.map(mib));
        mem.set_reservation(cd.memory_reservation.map(mib));
        r.set_memory(Some(mem));
    }
    if let Some(units) = cd.cpu.filter(|u| *u > 0) {
        let mut cpu = LinuxCpu::default();
        cpu.set_shares(Some(u64::from(units.max(2))));
        r.set_cpu(Some(cpu));
    }
    r
}

fn namespaces(input: &SpecInput) -> Vec<LinuxNamespace> {
    let ns = |typ: LinuxNamespaceType, path: Option<PathBuf>| {
        let mut n = LinuxNamespace::default();
        n.set_typ(typ);
        n.set_path(path);
        n
    };
    let mut out = vec![
        ns(LinuxNamespaceType::Pid, None),
        ns(LinuxNamespaceType::Ipc, None),
        ns(LinuxNamespaceType::Uts, None),
        ns(LinuxNamespaceType::Mount, None),
    ];
    if input.container.is_networking_disabled() {
        // A fresh namespace holds only a loopback interface, which is down.
        out.push(ns(LinuxNamespaceType::Network, None));
    } else if let NetNs::Path(p) = &input.netns {
        out.push(ns(LinuxNamespaceType::Network, Some(p.clone())));
    }
    out
}

fn mounts(input: &SpecInput) -> Result<Vec<Mount>, SpecError> {
    let cd = input.container;
    let lp = cd.linux_parameters.as_ref();
    let mut out = default_mounts(cd.is_privileged());
    if let Some(shm) = lp.and_then(|l| l.shared_memory_size) {
        let size = format!("size={shm}m");
        if let Some(m) = out
            .iter_mut()
            .find(|m| m.destination() == Path::new("/dev/shm"))
        {
            m.set_options(Some(
                ["nosuid", "noexec", "nodev", "mode=1777", size.as_str()]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ));
        }
    }
    if let Some(dir) = &input.etc_dir {
        let host_mode = input.task.network_mode() == NetworkMode::Host;
        out.push(bind("/etc/hosts", &dir.join("hosts"), false));
        out.push(bind("/etc/resolv.conf", &dir.join("resolv.conf"), false));
        if !host_mode {
            out.push(bind("/etc/hostname", &dir.join("hostname"), false));
        }
    }
    for t in lp.and_then(|l| l.tmpfs.as_ref()).into_iter().flatten() {
        let mut options: Vec<String> = match &t.mount_options {
            Some(o) if !o.is_empty() => o.clone(),
            _ => vec!["nosuid".into(), "nodev".into(), "noexec".into()],
        };
        options.push(format!("size={}m", t.size));
        let mut m = mount(&t.container_path, "tmpfs", "tmpfs", &[]);
        m.set_options(Some(options));
        out.push(m);
    }
    for mp in cd.mount_points.iter().flatten() {
        let Some(host) = input.volumes.get(&mp.source_volume) else {
            return Err(SpecError::VolumeNotResolved {
                container: cd.name.clone(),
                volume: mp.source_volume.clone(),
            });
        };
        out.push(bind(
            &mp.container_path,
            host,
            mp.read_only.unwrap_or(false),
        ));
    }
    if cd.init_process_enabled() {
        if let Some(init) = &input.init {
            out.push(bind(INIT_PATH, init, true));
        }
    }
    Ok(out)
}

/// Builds the runtime spec for `input.container`.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let cd = input.container;
    let build_err = |source| SpecError::Build {
        container: cd.name.clone(),
        source,
    };

    let caps = capability_set(cd)?;
    // Privileged means no filter at all, as with Docker's --privileged.
    let seccomp = (!cd.is_privileged()).then(|| seccomp::profile(std::env::consts::ARCH, &caps));
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);

    let cwd = cd
        .working_directory
        .clone()
        .or_else(|| {
            input
                .image
                .config()
                .as_ref()
                .and_then(|c| c.working_dir().clone())
        })
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_string());

    let mut process = Process::default();
    process.set_terminal(Some(false));
    process.set_console_size(None);
    process.set_user(process_user(input)?);
    process.set_args(Some(process_args(input)?));
    process.set_env(Some(process_env(input)));
    process.set_cwd(PathBuf::from(cwd));
    process.set_capabilities(Some(capabilities));
    process.set_rlimits(Some(rlimits(cd)?));
    process.set_no_new_privileges(Some(false));
    process.set_apparmor_profile(None);
    process.set_oom_score_adj(None);
    process.set_selinux_label(None);

    let mut root = Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(cd.is_readonly_root()));

    let (device_nodes, device_rules) = devices(cd)?;
    let privileged = cd.is_privileged();
    let mut linux = LinuxBuilder::default()
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .resources(resources(cd, device_rules, input.pids_max))
        .namespaces(namespaces(input))
        .devices(device_nodes)
        .masked_paths(if privileged {
            Vec::new()
        } else {
            MASKED_PATHS.iter().map(|s| s.to_string()).collect()
        })
        .readonly_paths(if privileged {
            Vec::new()
        } else {
            READONLY_PATHS.iter().map(|s| s.to_string()).collect()
        })
        .build()
        .map_err(build_err)?;
    linux.set_seccomp(seccomp);

    let mut spec = Spec::default();
    spec.set_version("1.0.2-dev".to_string());
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts(input)?));
    spec.set_process(Some(process));
    spec.set_hostname(hostname(input.task, cd));
    spec.set_hooks(None);
    spec.set_annotations(None);
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn task(containers: Value) -> TaskDefinition {
        task_with(json!({}), containers)
    }

    fn task_with(extra: Value, containers: Value) -> TaskDefinition {
        let mut v = json!({"family": "t", "memory": "512", "containerDefinitions": containers});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in e {
                o.insert(k.clone(), val.clone());
            }
        }
        TaskDefinition::parse(&v.to_string()).expect("test task definition is valid")
    }

    fn image(config: Value) -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "arm64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": config
        }))
        .expect("test image config is valid")
    }

    fn default_image() -> ImageConfiguration {
        image(json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin", "LANG=C"]}))
    }

    struct Case {
        task: TaskDefinition,
        image: ImageConfiguration,
        netns: NetNs,
        volumes: HashMap<String, PathBuf>,
        etc_dir: Option<PathBuf>,
        passwd: Option<&'static str>,
        group: Option<&'static str>,
        init: Option<PathBuf>,
    }

    impl Case {
        fn new(task: TaskDefinition) -> Self {
            Self {
                task,
                image: default_image(),
                netns: NetNs::Path(PathBuf::from("/run/netns/t1")),
                volumes: HashMap::new(),
                etc_dir: None,
                passwd: None,
                group: None,
                init: None,
            }
        }

        fn build(&self) -> Result<Spec, SpecError> {
            build(&SpecInput {
                task: &self.task,
                container: &self.task.container_definitions[0],
                image: &self.image,
                netns: self.netns.clone(),
                cgroups_path: "/skerry/t1/c".into(),
                volumes: &self.volumes,
                etc_dir: self.etc_dir.clone(),
                passwd: self.passwd,
                group: self.group,
                init: self.init.clone(),
                pids_max: 321,
            })
        }

        fn json(&self) -> Value {
            serde_json::to_value(self.build().expect("spec builds")).expect("spec serializes")
        }
    }

    fn one(c: Value) -> Case {
        let mut c = c;
        if let Some(o) = c.as_object_mut() {
            o.entry("name").or_insert(json!("app"));
            o.entry("image").or_insert(json!("img"));
        }
        Case::new(task(json!([c])))
    }

    fn strs(v: &Value) -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    fn mount_at<'a>(spec: &'a Value, dest: &str) -> Option<&'a Value> {
        spec["mounts"]
            .as_array()?
            .iter()
            .find(|m| m["destination"] == dest)
    }

    fn cap_names(list: &[&str]) -> Vec<String> {
        sorted(list.iter().map(|c| format!("CAP_{c}")).collect())
    }

    #[test]
    fn defaults_follow_containerd() {
        let s = one(json!({})).json();
        let dests: Vec<String> = s["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .filter_map(|m| m["destination"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert!(strs(&mount_at(&s, "/sys").expect("sys")["options"]).contains(&"ro".into()));
        assert!(
            strs(&mount_at(&s, "/sys/fs/cgroup").expect("cgroup")["options"])
                .contains(&"ro".into())
        );
        let caps = &s["process"]["capabilities"];
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(sorted(strs(&caps[set])), cap_names(DEFAULT_CAPS), "{set}");
        }
        assert!(caps.get("inheritable").is_none());
        assert!(caps.get("ambient").is_none());
        assert_eq!(strs(&s["linux"]["maskedPaths"]), MASKED_PATHS);
        assert_eq!(strs(&s["linux"]["readonlyPaths"]), READONLY_PATHS);
        assert_eq!(
            s["process"]["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
        assert_eq!(
            s["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                   {"type": "network", "path": "/run/netns/t1"}])
        );
        assert_eq!(s["process"]["noNewPrivileges"], json!(false));
        assert_eq!(s["process"]["terminal"], json!(false));
        assert_eq!(s["process"]["user"], json!({"uid": 0, "gid": 0}));
        assert_eq!(s["process"]["cwd"], json!("/"));
        assert_eq!(s["root"], json!({"path": "rootfs", "readonly": false}));
        assert_eq!(s["hostname"], json!("app"));
        assert_eq!(s["linux"]["cgroupsPath"], json!("/skerry/t1/c"));
        assert_eq!(
            s["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
        assert!(s["linux"]["resources"].get("memory").is_none());
        assert!(s["linux"]["resources"].get("cpu").is_none());
        assert_eq!(s["linux"]["resources"]["pids"], json!({"limit": 321}));
        assert_eq!(
            s["linux"]["seccomp"]["defaultAction"],
            json!("SCMP_ACT_ERRNO")
        );
        assert!(s.get("annotations").is_none());
    }

    #[test]
    fn every_task_definition_capability_is_an_oci_capability() {
        for name in CAPABILITIES {
            assert!(to_cap("c", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn entry_point_and_command_follow_docker() {
        let img = image(json!({"Entrypoint": ["/entry"], "Cmd": ["cmd-arg"]}));
        let args = |c: Value| {
            let mut case = one(c);
            case.image = img.clone();
            strs(&case.json()["process"]["args"])
        };
        assert_eq!(args(json!({})), ["/entry", "cmd-arg"]);
        assert_eq!(args(json!({"command": ["x"]})), ["/entry", "x"]);
        assert_eq!(args(json!({"entryPoint": ["/e2"]})), ["/e2"]);
        assert_eq!(
            args(json!({"entryPoint": ["/e2"], "command": ["y"]})),
            ["/e2", "y"]
        );
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let mut case = one(json!({}));
        case.image = image(json!({}));
        assert!(matches!(
            case.build(),
            Err(SpecError::NoCommand { container }) if container == "app"
        ));
    }

    #[test]
    fn environment_overlays_image_env() {
        let s = one(json!({"environment": [{"name": "LANG", "value": "en"}, {"name": "NEW", "value": "1"}]}))
            .json();
        assert_eq!(
            strs(&s["process"]["env"]),
            ["PATH=/bin", "LANG=en", "NEW=1"]
        );
        let mut case = one(json!({}));
        case.image = image(json!({"Cmd": ["x"]}));
        assert_eq!(strs(&case.json()["process"]["env"]), [DEFAULT_PATH]);
    }

    #[test]
    fn working_directory_overrides_image() {
        let mut case = one(json!({}));
        case.image = image(json!({"Cmd": ["x"], "WorkingDir": "/srv"}));
        assert_eq!(case.json()["process"]["cwd"], json!("/srv"));
        let mut case = one(json!({"workingDirectory": "/srv/app"}));
        case.image = image(json!({"Cmd": ["x"], "WorkingDir": "/srv"}));
        assert_eq!(case.json()["process"]["cwd"], json!("/srv/app"));
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:www,other\nvideo:x:44:www\n";

    fn user_of(user: Option<&str>, image_user: Option<&str>) -> Result<Value, SpecError> {
        let c = match user {
            Some(u) => json!({"user": u}),
            None => json!({}),
        };
        let mut case = one(c);
        case.image = image(json!({"Cmd": ["x"], "User": image_user.unwrap_or("")}));
        case.passwd = Some(PASSWD);
        case.group = Some(GROUP);
        let spec = case.build()?;
        Ok(serde_json::to_value(spec).expect("serializes")["process"]["user"].clone())
    }

    #[test]
    fn users_resolve_like_docker() {
        assert_eq!(
            user_of(Some("1000"), None).expect("uid"),
            json!({"uid": 1000, "gid": 0})
        );
        assert_eq!(
            user_of(Some("1000:1001"), None).expect("uid:gid"),
            json!({"uid": 1000, "gid": 1001})
        );
        assert_eq!(
            user_of(Some("www"), None).expect("name"),
            json!({"uid": 33, "gid": 33, "additionalGids": [50, 44]})
        );
        assert_eq!(
            user_of(Some("33"), None).expect("uid in passwd"),
            json!({"uid": 33, "gid": 33, "additionalGids": [50, 44]})
        );
        assert_eq!(
            user_of(Some("www:staff"), None).expect("name:group"),
            json!({"uid": 33, "gid": 50, "additionalGids": [44]})
        );
        assert_eq!(
            user_of(None, Some("www")).expect("image user"),
            json!({"uid": 33, "gid": 33, "additionalGids": [50, 44]})
        );
        assert_eq!(
            user_of(Some("0"), Some("www")).expect("task wins"),
            json!({"uid": 0, "gid": 0})
        );
    }

    #[test]
    fn unknown_user_and_group_are_named() {
        let e = user_of(Some("ghost"), None).expect_err("no such user");
        assert!(matches!(&e, SpecError::UnknownUser { user, .. } if user == "ghost"));
        assert!(e.to_string().contains("\"ghost\""), "{e}");
        let e = user_of(Some("www:ghosts"), None).expect_err("no such group");
        assert!(matches!(&e, SpecError::UnknownGroup { group, .. } if group == "ghosts"));
    }

    fn caps_of(c: Value) -> Vec<String> {
        sorted(strs(&one(c).json()["process"]["capabilities"]["bounding"]))
    }

    #[test]
    fn capabilities_add_and_drop() {
        let mut want: Vec<&str> = DEFAULT_CAPS
            .iter()
            .copied()
            .filter(|c| *c != "NET_RAW")
            .collect();
        want.push("NET_ADMIN");
        assert_eq!(
            caps_of(
                json!({"linuxParameters": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["CAP_NET_RAW"]}}})
            ),
            cap_names(&want)
        );
        assert_eq!(
            caps_of(
                json!({"linuxParameters": {"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}})
            ),
            cap_names(&["CHOWN"])
        );
        let all_but_admin: Vec<&str> = CAPABILITIES
            .iter()
            .copied()
            .filter(|c| *c != "SYS_ADMIN")
            .collect();
        assert_eq!(
            caps_of(
                json!({"linuxParameters": {"capabilities": {"add": ["ALL"], "drop": ["SYS_ADMIN"]}}})
            ),
            cap_names(&all_but_admin)
        );
    }

    #[test]
    fn privileged_opens_everything() {
        let s = one(
            json!({"privileged": true, "linuxParameters": {"capabilities": {"drop": ["ALL"]}}}),
        )
        .json();
        assert_eq!(
            sorted(strs(&s["process"]["capabilities"]["effective"])),
            cap_names(CAPABILITIES)
        );
        assert!(s["linux"]
            .get("maskedPaths")
            .is_none_or(|v| strs(v).is_empty()));
        assert!(s["linux"]
            .get("readonlyPaths")
            .is_none_or(|v| strs(v).is_empty()));
        assert!(strs(&mount_at(&s, "/sys").expect("sys")["options"]).contains(&"rw".into()));
        assert_eq!(
            s["linux"]["resources"]["devices"],
            json!([{"allow": true, "access": "rwm"}])
        );
    }

    /// The rules of `spec`'s seccomp profile that name `syscall`.
    fn seccomp_rules<'a>(spec: &'a Value, syscall: &str) -> Vec<&'a Value> {
        spec["linux"]["seccomp"]["syscalls"]
            .as_array()
            .expect("a seccomp profile")
            .iter()
            .filter(|r| strs(&r["names"]).iter().any(|n| n == syscall))
            .collect()
    }

    #[test]
    fn non_privileged_containers_get_the_default_seccomp_profile() {
        let s = one(json!({})).json();
        let p = &s["linux"]["seccomp"];
        assert_eq!(p["defaultAction"], json!("SCMP_ACT_ERRNO"));
        assert_eq!(p["defaultErrnoRet"], json!(1), "EPERM");
        assert!(!strs(&p["architectures"]).is_empty());
        for allowed in ["read", "execve", "socket", "chroot"] {
            let rules = seccomp_rules(&s, allowed);
            assert_eq!(rules.len(), 1, "{allowed}");
            assert_eq!(rules[0]["action"], json!("SCMP_ACT_ALLOW"));
        }
        // SYS_CHROOT is a default capability; the others are not granted.
        for denied in [
            "unshare",
            "mount",
            "setns",
            "keyctl",
            "kexec_load",
            "reboot",
        ] {
            assert!(seccomp_rules(&s, denied).is_empty(), "{denied}");
        }
        let with_admin =
            one(json!({"linuxParameters": {"capabilities": {"add": ["SYS_ADMIN"]}}})).json();
        assert_eq!(seccomp_rules(&with_admin, "unshare").len(), 1);
        let no_chroot =
            one(json!({"linuxParameters": {"capabilities": {"drop": ["SYS_CHROOT"]}}})).json();
        assert!(seccomp_rules(&no_chroot, "chroot").is_empty());
    }

    #[test]
    fn privileged_containers_get_no_seccomp_profile() {
        let s = one(json!({"privileged": true})).json();
        assert!(s["linux"].get("seccomp").is_none(), "{}", s["linux"]);
        assert_eq!(s["linux"]["resources"]["pids"], json!({"limit": 321}));
    }

    #[test]
    fn readonly_root_filesystem() {
        let s = one(json!({"readonlyRootFilesystem": true})).json();
        assert_eq!(s["root"]["readonly"], json!(true));
    }

    #[test]
    fn tmpfs_mounts_with_size_and_options() {
        let s = one(json!({"linuxParameters": {"tmpfs": [
            {"containerPath": "/run", "size": 64, "mountOptions": ["rw", "mode=1777"]},
            {"containerPath": "/tmp", "size": 8}
        ]}}))
        .json();
        let run = mount_at(&s, "/run").expect("/run");
        assert_eq!(run["type"], json!("tmpfs"));
        assert_eq!(strs(&run["options"]), ["rw", "mode=1777", "size=64m"]);
        assert_eq!(
            strs(&mount_at(&s, "/tmp").expect("/tmp")["options"]),
            ["nosuid", "nodev", "noexec", "size=8m"]
        );
    }

    #[test]
    fn shared_memory_size_sizes_dev_shm() {
        let s = one(json!({"linuxParameters": {"sharedMemorySize": 256}})).json();
        let opts = strs(&mount_at(&s, "/dev/shm").expect("shm")["options"]);
        assert!(opts.contains(&"size=256m".to_string()), "{opts:?}");
        assert!(!opts.contains(&"size=65536k".to_string()), "{opts:?}");
    }

    #[test]
    fn ulimits_become_rlimits() {
        let s = one(json!({"ulimits": [
            {"name": "nofile", "softLimit": 4096, "hardLimit": 8192},
            {"name": "memlock", "softLimit": 1, "hardLimit": 2}
        ]}))
        .json();
        assert_eq!(
            s["process"]["rlimits"],
            json!([
                {"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 8192},
                {"type": "RLIMIT_MEMLOCK", "soft": 1, "hard": 2}
            ])
        );
    }

    #[test]
    fn devices_are_looked_up_on_the_host() {
        let s = one(json!({"linuxParameters": {"devices": [
            {"hostPath": "/dev/null", "containerPath": "/dev/mynull", "permissions": ["read"]}
        ]}}))
        .json();
        let meta = std::fs::metadata("/dev/null").expect("/dev/null exists");
        let (major, minor) = (
            i64::from(rustix::fs::major(meta.rdev())),
            i64::from(rustix::fs::minor(meta.rdev())),
        );
        assert_eq!(s["linux"]["devices"][0]["path"], json!("/dev/mynull"));
        assert_eq!(s["linux"]["devices"][0]["type"], json!("c"));
        assert_eq!(s["linux"]["devices"][0]["major"], json!(major));
        assert_eq!(s["linux"]["devices"][0]["minor"], json!(minor));
        assert_eq!(
            s["linux"]["resources"]["devices"][1],
            json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "r"})
        );
    }

    #[test]
    fn missing_or_non_device_paths_are_named() {
        let e = one(json!({"linuxParameters": {"devices": [{"hostPath": "/dev/skerry-no-such"}]}}))
            .build()
            .expect_err("missing device");
        assert!(e.to_string().contains("/dev/skerry-no-such"), "{e}");
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let path = file.path().to_string_lossy().to_string();
        let e = one(json!({"linuxParameters": {"devices": [{"hostPath": path}]}}))
            .build()
            .expect_err("not a device");
        assert!(matches!(&e, SpecError::NotADevice { path: p, .. } if p == file.path()));
    }

    fn with_volumes() -> Case {
        let t = task_with(
            json!({"volumes": [{"name": "data", "host": {"sourcePath": "/srv/data"}}, {"name": "scratch"}]}),
            json!([{"name": "app", "image": "img", "mountPoints": [
                {"sourceVolume": "data", "containerPath": "/data", "readOnly": true},
                {"sourceVolume": "scratch", "containerPath": "/scratch"}
            ]}]),
        );
        Case::new(t)
    }

    #[test]
    fn mount_points_become_bind_mounts() {
        let mut case = with_volumes();
        case.volumes
            .insert("data".into(), PathBuf::from("/srv/data"));
        case.volumes.insert(
            "scratch".into(),
            PathBuf::from("/var/lib/skerry/t1/scratch"),
        );
        let s = case.json();
        assert_eq!(
            mount_at(&s, "/data").expect("/data"),
            &json!({"destination": "/data", "type": "bind", "source": "/srv/data",
                    "options": ["rbind", "rprivate", "ro"]})
        );
        assert_eq!(
            strs(&mount_at(&s, "/scratch").expect("/scratch")["options"]),
            ["rbind", "rprivate", "rw"]
        );
    }

    #[test]
    fn unresolved_volume_is_an_error() {
        let mut case = with_volumes();
        case.volumes
            .insert("data".into(), PathBuf::from("/srv/data"));
        assert!(matches!(
            case.build(),
            Err(SpecError::VolumeNotResolved { volume, .. }) if volume == "scratch"
        ));
    }

    #[test]
    fn etc_dir_is_bind_mounted() {
        let mut case = one(json!({}));
        case.etc_dir = Some(PathBuf::from("/var/lib/skerry/t1/app/etc"));
        let s = case.json();
        for f in ["hosts", "resolv.conf", "hostname"] {
            let m = mount_at(&s, &format!("/etc/{f}")).expect("etc mount");
            assert_eq!(
                m["source"],
                json!(format!("/var/lib/skerry/t1/app/etc/{f}"))
            );
        }
    }

    #[test]
    fn hostname_and_network_modes() {
        assert_eq!(
            one(json!({"hostname": "web"})).json()["hostname"],
            json!("web")
        );

        let mut host = Case::new(task_with(
            json!({"networkMode": "host"}),
            json!([{"name": "app", "image": "img"}]),
        ));
        host.netns = NetNs::Host;
        host.etc_dir = Some(PathBuf::from("/e"));
        let s = host.json();
        assert!(s.get("hostname").is_none());
        let types: Vec<String> = s["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .filter_map(|n| n["type"].as_str().map(str::to_string))
            .collect();
        assert_eq!(types, ["pid", "ipc", "uts", "mount"]);
        assert!(mount_at(&s, "/etc/hostname").is_none());

        let s = one(json!({"disableNetworking": true})).json();
        assert_eq!(s["linux"]["namespaces"][4], json!({"type": "network"}));
    }

    #[test]
    fn cgroup_resources() {
        let s = one(json!({"memory": 256, "memoryReservation": 128, "cpu": 512})).json();
        assert_eq!(
            s["linux"]["resources"]["memory"],
            json!({"limit": 256 * 1024 * 1024, "reservation": 128 * 1024 * 1024})
        );
        assert_eq!(s["linux"]["resources"]["cpu"], json!({"shares": 512}));
        let s = one(json!({"cpu": 1})).json();
        assert_eq!(s["linux"]["resources"]["cpu"], json!({"shares": 2}));
        let s = one(json!({"cpu": 0})).json();
        assert!(s["linux"]["resources"].get("cpu").is_none());
    }

    #[test]
    fn init_wraps_the_process() {
        let mut case = one(
            json!({"linuxParameters": {"initProcessEnabled": true}, "command": ["sleep", "1"]}),
        );
        case.init = Some(PathBuf::from("/usr/libexec/skerry/init"));
        let s = case.json();
        assert_eq!(strs(&s["process"]["args"]), [INIT_PATH, "--", "sleep", "1"]);
        let m = mount_at(&s, INIT_PATH).expect("init mount");
        assert_eq!(m["source"], json!("/usr/libexec/skerry/init"));
        assert!(strs(&m["options"]).contains(&"ro".to_string()));

        case.init = None;
        assert!(matches!(
            case.build(),
            Err(SpecError::InitMissing { container }) if container == "app"
        ));
    }

    #[test]
    fn etc_files_for_bridge_mode() {
        let t = task(json!([{"name": "app", "image": "img", "hostname": "web",
            "extraHosts": [{"hostname": "db", "ipAddress": "10.0.0.2"}]}]));
        let host_resolv = "# generated\nnameserver 127.0.0.53\nnameserver 192.168.1.1\nsearch lan\noptions edns0\n";
        let f = etc_files(&t, &t.container_definitions[0], host_resolv);
        assert!(f.hosts.starts_with("127.0.0.1\tlocalhost\n"), "{}", f.hosts);
        assert!(f.hosts.contains("10.0.0.2\tdb\n"), "{}", f.hosts);
        assert!(f.hosts.contains("127.0.1.1\tweb\n"), "{}", f.hosts);
        assert_eq!(f.hostname, "web\n");
        assert_eq!(
            f.resolv_conf,
            "nameserver 192.168.1.1\nsearch lan\noptions edns0\n"
        );

        let only_loopback = "nameserver 127.0.0.53\nnameserver ::1\n";
        let f = etc_files(&t, &t.container_definitions[0], only_loopback);
        assert_eq!(f.resolv_conf, "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }

    #[test]
    fn etc_files_prefer_the_task_dns_settings() {
        let t = task(json!([{"name": "app", "image": "img",
            "dnsServers": ["10.0.0.53"], "dnsSearchDomains": ["corp.example"]}]));
        let f = etc_files(
            &t,
            &t.container_definitions[0],
            "nameserver 192.168.1.1\nsearch lan\n",
        );
        assert_eq!(f.resolv_conf, "nameserver 10.0.0.53\nsearch corp.example\n");
        assert_eq!(f.hostname, "app\n");
    }

    #[test]
    fn etc_files_in_host_mode_keep_the_hosts_resolver() {
        let t = task_with(
            json!({"networkMode": "host"}),
            json!([{"name": "app", "image": "img"}]),
        );
        let host_resolv = "nameserver 127.0.0.53\n";
        let f = etc_files(&t, &t.container_definitions[0], host_resolv);
        assert_eq!(f.resolv_conf, host_resolv);
        assert_eq!(f.hostname, "");
        assert!(!f.hosts.contains("127.0.1.1"), "{}", f.hosts);
    }
}
