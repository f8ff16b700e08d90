//! `linuxParameters`: capabilities, devices, tmpfs, and what Skerry cannot honour.

use super::*;
use crate::taskdef::*;

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

impl TaskDefinition {
    pub(super) fn check_linux(&self, c: &mut Check, base: &str, lp: &LinuxParameters) {
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
}
