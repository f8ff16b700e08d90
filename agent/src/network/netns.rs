//! Named, persistent network namespaces, made the way `ip netns add` makes them: a file in the
//! netns directory with the namespace bind-mounted onto it, so it outlives every process.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

/// What failed, for the error message, and why.
pub(super) type NetnsFailure = (&'static str, io::Error);

/// Makes `dir` a mount point with shared propagation, as iproute2 does for /run/netns: a
/// namespace unmounted here is then unmounted in every mount namespace that copied it, so
/// no copy keeps the namespace (and its veth) alive.
pub(super) fn prepare_dir(dir: &Path) -> Result<(), NetnsFailure> {
    std::fs::create_dir_all(dir).map_err(|e| ("create the directory", e))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => return Ok(()),
        // EINVAL: not a mount point yet.
        Err(Errno::EINVAL) => {}
        Err(e) => return Err(("make shared", e.into())),
    }
    mount(
        Some(dir),
        dir,
        Some("none"),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| ("bind-mount onto itself", io::Error::from(e)))?;
    shared().map_err(|e| ("make shared", e.into()))
}

/// Creates a new network namespace and pins it at `path`. Runs on a thread of its own
/// because unshare() moves the calling thread into the namespace; that thread then ends.
pub(super) async fn create(path: PathBuf) -> Result<(), NetnsFailure> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("skerry-netns".into())
        .spawn(move || {
            // The receiver only goes away if setup was cancelled; nothing to report to then.
            let _ = tx.send(create_on_this_thread(&path));
        })
        .map_err(|e| ("spawn a thread to create", e))?;
    rx.await.unwrap_or_else(|_| {
        Err((
            "create",
            io::Error::other("the namespace thread ended without an answer"),
        ))
    })
}

fn create_on_this_thread(path: &Path) -> Result<(), NetnsFailure> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| ("create the file", e))?;
    let pinned = unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| ("unshare", io::Error::from(e)))
        .and_then(|()| {
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ("bind-mount", e.into()))
        });
    if pinned.is_err() {
        // Best effort: a placeholder left behind is removed by the next teardown anyway.
        let _ = std::fs::remove_file(path);
    }
    pinned
}

/// True if a network namespace is mounted at `path`.
pub(super) fn is_netns(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Unpins and removes the namespace at `path`; fine if there is none, or only the file.
pub(super) fn remove(path: &Path) -> Result<(), NetnsFailure> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: a file with nothing mounted on it.
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(("unmount", e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(("remove", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_is_fine_when_nothing_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(remove(&dir.path().join("absent")).is_ok());
    }

    #[test]
    fn a_plain_file_is_not_a_netns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("placeholder");
        std::fs::write(&f, b"").expect("write");
        assert!(!is_netns(&f));
        assert!(!is_netns(&dir.path().join("absent")));
    }
}
