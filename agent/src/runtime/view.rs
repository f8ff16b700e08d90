//! Reading files out of an image without running it: a read-only view snapshot of the
//! image's top layer, mounted for a moment. Used to resolve user and group names against the
//! image's own /etc/passwd and /etc/group, as Docker does.

use std::path::Path;

use containerd_client::services::v1::snapshots;
use nix::mount::{umount2, MntFlags, MsFlags};

use super::{Containerd, SNAPSHOTTER};

const VIEW_LEASE: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("containerd: view of snapshot {chain_id}: {status}")]
    Rpc {
        chain_id: String,
        status: tonic::Status,
    },
    #[error("cannot mount the view of {chain_id}: {message}")]
    Mount { chain_id: String, message: String },
}

impl Containerd {
    /// Reads `paths` (relative to the image root) from the image whose top snapshot is
    /// `chain_id`; a missing file gives `None`.
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
    let mut flags = MsFlags::MS_RDONLY;
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
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
    }
    let out = paths
        .iter()
        .map(|p| {
            std::fs::read_to_string(dir.path().join(Path::new(p.trim_start_matches('/')))).ok()
        })
        .collect();
    umount2(dir.path(), MntFlags::MNT_DETACH).map_err(|e| err(format!("umount: {e}")))?;
    Ok(out)
}
