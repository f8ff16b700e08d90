//! Task-level limits: ECS's task `memory` (a hard limit for all the task's containers
//! together) and task `cpu` (units, as shares) go on the task's parent cgroup, the one the
//! containers' cgroups (`/skerry/<namespace>/<task>/<container>`, made by runc) sit in.
//! Works on cgroup v1 (the memory and cpu hierarchies) and on a unified v2 hierarchy.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {source}")]
pub struct CgroupError {
    path: PathBuf,
    source: std::io::Error,
}

/// The cgroup path (relative to a hierarchy's root) of a task's parent cgroup.
pub fn task_path(namespace: &str, task_id: &str) -> String {
    format!("skerry/{namespace}/{task_id}")
}

fn write(path: PathBuf, value: &str) -> Result<(), CgroupError> {
    std::fs::write(&path, value).map_err(|source| CgroupError { path, source })
}

fn create(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError {
        path: path.into(),
        source,
    })
}

fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// Creates the task's cgroup with its limits, before any of its containers starts.
pub fn apply(
    namespace: &str,
    task_id: &str,
    cpu_units: Option<u32>,
    memory_mib: Option<u64>,
) -> Result<(), CgroupError> {
    let rel = task_path(namespace, task_id);
    let memory = memory_mib.map(|m| (m << 20).to_string());
    if is_v2() {
        // Each ancestor must hand the controllers down to its children.
        let mut dir = PathBuf::from(ROOT);
        for part in rel.split('/') {
            let _ = write(dir.join("cgroup.subtree_control"), "+memory +cpu");
            dir.push(part);
            create(&dir)?;
        }
        let _ = write(dir.join("cgroup.subtree_control"), "+memory +cpu");
        if let Some(m) = memory {
            write(dir.join("memory.max"), &m)?;
        }
        if let Some(units) = cpu_units {
            // The conversion runc uses from shares (2..262144) to weight (1..10000).
            let shares = u64::from(units.max(2));
            let weight = 1 + ((shares - 2) * 9999) / 262_142;
            write(dir.join("cpu.weight"), &weight.to_string())?;
        }
        return Ok(());
    }
    if let Some(m) = memory {
        let dir = Path::new(ROOT).join("memory").join(&rel);
        create(&dir)?;
        write(dir.join("memory.limit_in_bytes"), &m)?;
    }
    if let Some(units) = cpu_units {
        let dir = Path::new(ROOT).join("cpu").join(&rel);
        create(&dir)?;
        write(dir.join("cpu.shares"), &units.max(2).to_string())?;
    }
    Ok(())
}

/// Removes the task's cgroup once its containers are gone (runc removes theirs); what is
/// already gone is fine.
pub fn remove(namespace: &str, task_id: &str) {
    let rel = task_path(namespace, task_id);
    let roots: Vec<PathBuf> = if is_v2() {
        vec![PathBuf::from(ROOT)]
    } else {
        std::fs::read_dir(ROOT)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for root in roots {
        let dir = root.join(&rel);
        // Leftover per-container cgroups (a container runc never deleted) go first.
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.filter_map(Result::ok) {
                if c.path().is_dir() {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(cgroup = %dir.display(), "cannot remove task cgroup: {e}"),
        }
    }
}
