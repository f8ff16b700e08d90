//! Reading files out of an image without running it: a read-only view snapshot of the
//! image's top layer, mounted for a moment. Used to resolve user and group names against the
//! image's own /etc/passwd and /etc/group, as Docker does.
//!
//! The image is a stranger's: its files are looked up inside the view's root only
//! (`openat2` with `RESOLVE_IN_ROOT`, so an absolute or `..` symlink cannot reach the
//! host's files), only regular files are read (never a FIFO that blocks or a device that
//! never ends), and no more than [`IMAGE_FILE_MAX_BYTES`].

use std::io::Read;
use std::path::Path;

use containerd_client::services::v1::snapshots;
use nix::mount::{umount2, MntFlags, MsFlags};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::{Containerd, SNAPSHOTTER};

const VIEW_LEASE: std::time::Duration = std::time::Duration::from_secs(600);

/// The most the agent reads of one image file. A passwd line is under 100 bytes, so this
/// holds some ten thousand users; more is an attack on the agent's memory.
pub const IMAGE_FILE_MAX_BYTES: u64 = 1 << 20;

/// Why a file of an image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error("{path} in the image is larger than the agent reads ({limit} bytes)")]
    TooLarge { path: String, limit: u64 },
    #[error("{path} in the image is a {kind}, not a regular file")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path} in the image is not UTF-8 text")]
    NotText { path: String },
    #[error(
        "cannot read {path} inside the image: the kernel has no openat2 (Linux 5.6 or later \
         is needed to read an image's files safely); give the user as numeric uid:gid"
    )]
    NoOpenat2 { path: String },
    #[error("cannot read {path} in the image: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("containerd: view of snapshot {chain_id}: {status}")]
    Rpc {
        chain_id: String,
        status: tonic::Status,
    },
    #[error("cannot mount the view of {chain_id}: {message}")]
    Mount { chain_id: String, message: String },
    #[error(transparent)]
    File(#[from] ImageFileError),
}

impl Containerd {
    /// Reads `paths` (relative to the image root) from the image whose top snapshot is
    /// `chain_id`, with [`read_in_root`]'s rules; a missing file gives `None`.
    pub async fn read_image_files(
        &self,
        chain_id: &str,
        paths: &[&str],
    ) -> Result<Vec<Option<String>>, ViewError> {
        let key = format!(
            "skerry-view-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        );
        let req = snapshots::ViewSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent: chain_id.into(),
            labels: Default::default(),
        };
        // A lease keeps the collector off the view while it is mounted, and lets the
        // collector have it if this process dies before removing it.
        let lease = self
            .temporary_lease(VIEW_LEASE)
            .await
            .map_err(|status| ViewError::Rpc {
                chain_id: chain_id.into(),
                status,
            })?;
        let mounts = self
            .snapshots()
            .view(self.request_leased(req, &lease))
            .await
            .map_err(|status| ViewError::Rpc {
                chain_id: chain_id.into(),
                status,
            })?
            .into_inner()
            .mounts;
        let result = tokio::task::spawn_blocking({
            let chain_id = chain_id.to_string();
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            move || read_mounted(&chain_id, &mounts, &paths)
        })
        .await
        .map_err(|e| ViewError::Mount {
            chain_id: chain_id.into(),
            message: e.to_string(),
        })
        .and_then(|r| r);
        let _ = self
            .snapshots()
            .remove(self.request(snapshots::RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key,
            }))
            .await;
        self.delete_lease(&lease).await;
        result
    }
}

fn read_mounted(
    chain_id: &str,
    mounts: &[containerd_client::types::Mount],
    paths: &[String],
) -> Result<Vec<Option<String>>, ViewError> {
    let err = |message: String| ViewError::Mount {
        chain_id: chain_id.into(),
        message,
    };
    let [m] = mounts else {
        return Err(err(format!("expected one mount, got {}", mounts.len())));
    };
    let dir = tempfile::tempdir().map_err(|e| err(e.to_string()))?;
    // Nothing in the view is ever run, and a device node in it must not open.
    let mut flags =
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => {}
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "bind" => flags |= MsFlags::MS_BIND,
            other => data.push(other),
        }
    }
    let data = data.join(",");
    nix::mount::mount(
        Some(m.source.as_str()),
        dir.path(),
        Some(m.r#type.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| {
        err(format!(
            "mount {} at {}: {e}",
            m.r#type,
            dir.path().display()
        ))
    })?;
    // A bind mount ignores MS_RDONLY on the first call; make the view read-only for real.
    if flags.contains(MsFlags::MS_BIND) {
        let _ = nix::mount::mount(
            None::<&str>,
            dir.path(),
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        );
    }
    let out = paths
        .iter()
        .map(|p| read_in_root(dir.path(), p, IMAGE_FILE_MAX_BYTES))
        .collect::<Result<Vec<_>, _>>();
    umount2(dir.path(), MntFlags::MNT_DETACH).map_err(|e| err(format!("umount: {e}")))?;
    Ok(out?)
}

/// Reads `path` as if `root` were `/`: every symlink and `..` on the way is resolved inside
/// `root` (an absolute link to /etc/shadow finds `root`/etc/shadow, or nothing). Only a
/// regular file of at most `limit` bytes is read; a missing one gives `None`. Without
/// openat2 (Linux before 5.6) this refuses rather than resolve on the host.
pub fn read_in_root(root: &Path, path: &str, limit: u64) -> Result<Option<String>, ImageFileError> {
    let path = path.trim_start_matches('/');
    let io = |e: Errno| ImageFileError::Io {
        path: path.into(),
        source: e.into(),
    };
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
    let open = |flags: OFlags| {
        rustix::fs::openat2(&dir, path, flags | OFlags::CLOEXEC, Mode::empty(), resolve)
    };
    // A handle that opens nothing comes first, so that a device node or a FIFO is refused
    // by its type before any open for reading could block or act on it.
    let probe = match open(OFlags::PATH) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::NOSYS) => return Err(ImageFileError::NoOpenat2 { path: path.into() }),
        Err(e) => return Err(io(e)),
    };
    regular(path, &rustix::fs::fstat(&probe).map_err(io)?)?;
    // O_NONBLOCK: should the file be swapped for a FIFO in between, the open still returns.
    let fd = open(OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY).map_err(io)?;
    let stat = rustix::fs::fstat(&fd).map_err(io)?;
    regular(path, &stat)?;
    let too_large = || ImageFileError::TooLarge {
        path: path.into(),
        limit,
    };
    if u64::try_from(stat.st_size).unwrap_or(u64::MAX) > limit {
        return Err(too_large());
    }
    // The size may lie (a file that grows, a filesystem that reports 0): the read is bounded
    // on its own.
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| ImageFileError::Io {
            path: path.into(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| ImageFileError::NotText { path: path.into() })
}

fn regular(path: &str, stat: &rustix::fs::Stat) -> Result<(), ImageFileError> {
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => return Ok(()),
        FileType::Directory => "directory",
        FileType::Fifo => "FIFO",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Socket => "socket",
        FileType::Symlink => "symbolic link",
        FileType::Unknown => "file of unknown type",
    };
    Err(ImageFileError::NotRegular {
        path: path.into(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    /// A root holding etc/ and, outside it, a file standing for one of the host's.
    fn root() -> (tempfile::TempDir, std::path::PathBuf) {
        let top = tempfile::tempdir().expect("temp dir");
        let root = top.path().join("root");
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::write(top.path().join("host-secret"), "root:x:0:0:host\n").expect("secret");
        (top, root)
    }

    #[test]
    fn reads_a_regular_file_and_none_when_missing() {
        let (_top, root) = root();
        std::fs::write(root.join("etc/passwd"), "app:x:1:1::/:/bin/sh\n").expect("write");
        assert_eq!(
            read_in_root(&root, "/etc/passwd", 1024).expect("reads"),
            Some("app:x:1:1::/:/bin/sh\n".to_string())
        );
        assert_eq!(
            read_in_root(&root, "etc/group", 1024).expect("missing"),
            None
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let (top, root) = root();
        let secret = top.path().join("host-secret");
        // An absolute link to a host file, and a `..` climb to it: neither leaves the root.
        symlink(&secret, root.join("etc/passwd")).expect("symlink");
        symlink("../../host-secret", root.join("etc/group")).expect("symlink");
        assert_eq!(
            read_in_root(&root, "etc/passwd", 1024).expect("in root"),
            None
        );
        assert_eq!(
            read_in_root(&root, "etc/group", 1024).expect("in root"),
            None
        );
        // The same absolute link finds the root's own copy of that path.
        let inside = root.join(secret.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(inside.parent().expect("parent")).expect("dirs");
        std::fs::write(&inside, "image's own\n").expect("write");
        assert_eq!(
            read_in_root(&root, "etc/passwd", 1024).expect("in root"),
            Some("image's own\n".to_string())
        );
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let (_top, root) = root();
        nix::unistd::mkfifo(&root.join("etc/passwd"), nix::sys::stat::Mode::S_IRWXU)
            .expect("mkfifo");
        let started = Instant::now();
        let e = read_in_root(&root, "etc/passwd", 1024).expect_err("a FIFO");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            matches!(&e, ImageFileError::NotRegular { kind: "FIFO", .. }),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "etc/passwd in the image is a FIFO, not a regular file"
        );
    }

    #[test]
    fn a_device_or_directory_is_refused() {
        let (_top, root) = root();
        std::fs::create_dir(root.join("dev")).expect("dev");
        // A link to /dev/zero finds the root's dev/zero; made a directory here (mknod needs
        // root), it is refused all the same.
        std::fs::create_dir(root.join("dev/zero")).expect("dir");
        symlink("/dev/zero", root.join("etc/passwd")).expect("symlink");
        let e = read_in_root(&root, "etc/passwd", 1024).expect_err("a directory");
        assert!(
            matches!(
                &e,
                ImageFileError::NotRegular {
                    kind: "directory",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_file_over_the_limit_is_refused_with_the_limit() {
        let (_top, root) = root();
        std::fs::write(root.join("etc/passwd"), vec![b'#'; 1025]).expect("write");
        let e = read_in_root(&root, "etc/passwd", 1024).expect_err("too large");
        assert_eq!(
            e.to_string(),
            "etc/passwd in the image is larger than the agent reads (1024 bytes)"
        );
        std::fs::write(root.join("etc/passwd"), vec![b'#'; 1024]).expect("write");
        assert!(read_in_root(&root, "etc/passwd", 1024)
            .expect("at the limit")
            .is_some());
    }
}
