//! Finding the containerd shim that serves one of the agent's containers, to kill it when it
//! stops answering. containerd waits on a shim without a deadline of its own: a shim left
//! half-started by an agent killed in the middle of a task create holds every later create
//! of that container forever (seen in the kill -9 recovery test). Shims are found by their
//! command line, `containerd-shim-<runtime> -namespace NS -id ID -address SOCKET`, the same
//! in containerd 1.6 and 2.x.

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The pids of the shims for container `id` in `namespace` of the containerd at `socket`,
/// read from `proc` (`/proc` but in tests).
pub fn pids(proc: &Path, socket: &Path, namespace: &str, id: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let socket = canonical(socket);
    let mut found: Vec<i32> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&str> = cmdline
                .split(|b| *b == 0)
                .filter_map(|a| std::str::from_utf8(a).ok())
                .collect();
            let serves = is_shim(&args)
                && flag(&args, "namespace") == Some(namespace)
                && flag(&args, "id") == Some(id)
                && flag(&args, "address").is_some_and(|a| canonical(Path::new(a)) == socket);
            serves.then_some(pid)
        })
        .collect();
    found.sort_unstable();
    found
}

/// SIGKILLs the shims [`pids`] finds and returns their pids. containerd sees the shim gone
/// and cleans up after it (its task, its bundle), so a new create can start afresh.
pub fn kill_all(socket: &Path, namespace: &str, id: &str) -> Vec<i32> {
    let found = pids(Path::new("/proc"), socket, namespace, id);
    for pid in &found {
        if let Err(e) = kill(Pid::from_raw(*pid), Signal::SIGKILL) {
            tracing::warn!(container = id, pid, "cannot kill the container's shim: {e}");
        }
    }
    found
}

fn is_shim(args: &[&str]) -> bool {
    args.first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("containerd-shim"))
}

/// The value of a Go-style flag: `-name value`, `--name value`, `-name=value`.
fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(rest) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            continue;
        };
        if rest == name {
            return it.next().copied();
        }
        if let Some(v) = rest.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(proc: &Path, pid: i32, args: &[&str]) {
        let dir = proc.join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("process dir");
        let mut cmdline = args.join("\0").into_bytes();
        cmdline.push(0);
        std::fs::write(dir.join("cmdline"), cmdline).expect("cmdline");
    }

    #[test]
    fn finds_only_the_shims_of_that_container_namespace_and_containerd() {
        let d = tempfile::tempdir().expect("tempdir");
        let proc = d.path().join("proc");
        let sock = d.path().join("c.sock");
        std::fs::write(&sock, "").expect("socket stand-in");
        let s = sock.to_str().expect("utf-8 path");
        let link = d.path().join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).expect("symlink");
        let shim = "/usr/bin/containerd-shim-runc-v2";
        process(
            &proc,
            10,
            &[shim, "-namespace", "ns", "-id", "t-main", "-address", s],
        );
        // The same socket by another name, and the `=` form of Go's flags.
        let l = format!("--address={}", link.display());
        process(&proc, 11, &[shim, "--namespace=ns", "-id=t-main", &l]);
        // Another container, another namespace, another containerd, not a shim.
        process(
            &proc,
            12,
            &[shim, "-namespace", "ns", "-id", "t-side", "-address", s],
        );
        process(
            &proc,
            13,
            &[shim, "-namespace", "other", "-id", "t-main", "-address", s],
        );
        process(
            &proc,
            14,
            &[shim, "-namespace", "ns", "-id", "t-main", "-address", "/x"],
        );
        process(
            &proc,
            15,
            &["sh", "-namespace", "ns", "-id", "t-main", "-address", s],
        );
        // A flag name that only starts like one, and a process with no command line.
        process(
            &proc,
            16,
            &[shim, "-namespaces", "ns", "-id", "t-main", "-address", s],
        );
        std::fs::create_dir_all(proc.join("17")).expect("pid dir");
        std::fs::create_dir_all(proc.join("self")).expect("self dir");
        assert_eq!(pids(&proc, &sock, "ns", "t-main"), vec![10, 11]);
        assert_eq!(pids(&proc, &sock, "ns", "t-side"), vec![12]);
        assert!(pids(&proc, &sock, "ns", "nothing").is_empty());
        assert!(pids(&d.path().join("absent"), &sock, "ns", "t-main").is_empty());
    }
}
