//! The containerd side of images: leases, content (streaming writes that resume from the
//! offset containerd holds for a ref), labels for the garbage collector, snapshots and
//! image records. Every call goes through the agent's [`Containerd`] handle.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AbortRequest, ApplyRequest, CreateImageRequest, DeleteRequest, GetImageRequest, Image, Info,
    InfoRequest, ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use containerd_client::types::{Descriptor as CdDescriptor, Mount};
use futures::channel::mpsc;
use futures::SinkExt;
use prost_types::FieldMask;
use tonic::{Code, Status};

use super::manifest::Descriptor;
use crate::runtime::{Containerd, SNAPSHOTTER};

/// How long a lease outlives an agent that died mid-pull before the collector may take
/// what it held; a finished pull deletes its lease at once.
const LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
pub const LABEL_GC_CONFIG: &str = "containerd.io/gc.ref.content.config";

pub fn label_gc_layer(i: usize) -> String {
    format!("containerd.io/gc.ref.content.l.{i}")
}
pub fn label_gc_manifest(i: usize) -> String {
    format!("containerd.io/gc.ref.content.m.{i}")
}
pub fn label_gc_snapshot() -> String {
    format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}")
}

/// A request held by `lease`. containerd reads the lease from the `containerd-lease`
/// header (Go: `leases.GRPCHeader`); `Containerd::request_leased` sets `containerd.lease`,
/// which containerd ignores, so the header is added here too.
fn leased<T>(cd: &Containerd, msg: T, lease: &str) -> tonic::Request<T> {
    let mut req = cd.request_leased(msg, lease);
    if let Ok(v) = lease.parse() {
        req.metadata_mut().insert("containerd-lease", v);
    }
    req
}

pub async fn create_lease(cd: &Containerd) -> Result<String, Status> {
    cd.temporary_lease(LEASE_EXPIRY).await
}

pub async fn delete_lease(cd: &Containerd, id: &str) -> Result<(), Status> {
    let req = DeleteRequest {
        id: id.to_string(),
        sync: false,
    };
    cd.leases().delete(cd.request(req)).await?;
    Ok(())
}

pub async fn content_info(cd: &Containerd, digest: &str) -> Result<Option<Info>, Status> {
    let req = InfoRequest {
        digest: digest.to_string(),
    };
    match cd.content().info(cd.request(req)).await {
        Ok(r) => Ok(r.into_inner().info),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// Sets the labels that are missing or differ, leaving the others alone.
pub async fn ensure_labels(
    cd: &Containerd,
    info: Info,
    labels: &HashMap<String, String>,
) -> Result<(), Status> {
    let paths: Vec<String> = labels
        .iter()
        .filter(|(k, v)| info.labels.get(*k) != Some(v))
        .map(|(k, _)| format!("labels.{k}"))
        .collect();
    if paths.is_empty() {
        return Ok(());
    }
    let req = UpdateRequest {
        info: Some(Info {
            digest: info.digest,
            labels: labels.clone(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths }),
    };
    cd.content().update(cd.request(req)).await?;
    Ok(())
}

/// Reads a whole blob of at most `max` bytes.
pub async fn read_content(cd: &Containerd, digest: &str, max: u64) -> Result<Vec<u8>, Status> {
    let req = ReadContentRequest {
        digest: digest.to_string(),
        offset: 0,
        size: 0,
    };
    let mut stream = cd.content().read(cd.request(req)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if (out.len() + chunk.data.len()) as u64 > max {
            return Err(Status::out_of_range(format!(
                "blob {digest} is larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// Writes a small blob in one message, or labels it if it is already there.
pub async fn put_bytes(
    cd: &Containerd,
    lease: &str,
    digest: &str,
    data: &[u8],
    labels: &HashMap<String, String>,
) -> Result<(), Status> {
    if let Some(info) = content_info(cd, digest).await? {
        return ensure_labels(cd, info, labels).await;
    }
    match ContentWriter::open(
        cd,
        lease,
        &ingest_ref("put", digest),
        digest,
        data.len() as u64,
    )
    .await?
    {
        Opened::Exists => {}
        Opened::Writer(mut w) => {
            w.rewind();
            w.write(data.to_vec()).await?;
            w.commit(labels.clone()).await?;
            return Ok(());
        }
    }
    // Someone else committed it between Info and Write.
    match content_info(cd, digest).await? {
        Some(info) => ensure_labels(cd, info, labels).await,
        None => Err(Status::not_found(format!("blob {digest} vanished"))),
    }
}

/// The ingest ref for a blob: the same on every attempt and after a restart, so an
/// interrupted download resumes from what containerd already holds.
pub fn ingest_ref(purpose: &str, digest: &str) -> String {
    format!("skerry-{purpose}-{digest}")
}

/// How long a writer waits for another writer of the same blob to finish.
const REF_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

pub enum Opened {
    Writer(Box<ContentWriter>),
    /// The blob is already committed in this namespace.
    Exists,
}

/// One Content.Write stream: each message is answered before the next is sent, so the
/// writer always knows the offset containerd has.
pub struct ContentWriter {
    tx: mpsc::Sender<WriteContentRequest>,
    rx: tonic::Streaming<WriteContentResponse>,
    r#ref: String,
    expected: String,
    total: u64,
    offset: u64,
    /// What containerd held for the ref when the stream opened.
    resumed_from: u64,
}

impl ContentWriter {
    /// Opens the writer for `ref`. Another writer of the same blob (a concurrent pull of an
    /// image sharing a layer) holds containerd's lock on the ref: wait for it, as
    /// containerd's own client does, and take its result when it commits.
    pub async fn open(
        cd: &Containerd,
        lease: &str,
        r#ref: &str,
        expected: &str,
        total: u64,
    ) -> Result<Opened, Status> {
        let deadline = tokio::time::Instant::now() + REF_LOCK_WAIT;
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            match Self::open_once(cd, lease, r#ref, expected, total).await {
                Err(s)
                    if s.code() == Code::Unavailable
                        && s.message().contains("locked")
                        && tokio::time::Instant::now() < deadline =>
                {
                    if content_info(cd, expected).await?.is_some() {
                        return Ok(Opened::Exists);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    async fn open_once(
        cd: &Containerd,
        lease: &str,
        r#ref: &str,
        expected: &str,
        total: u64,
    ) -> Result<Opened, Status> {
        let (mut tx, rx) = mpsc::channel(1);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: r#ref.to_string(),
            total: total as i64,
            expected: expected.to_string(),
            ..Default::default()
        };
        // Queued before the call: the server answers headers only with its first reply.
        tx.try_send(stat)
            .map_err(|e| Status::internal(format!("queue stat for {ref}: {e}")))?;
        let mut stream = match cd.content().write(leased(cd, rx, lease)).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(Opened::Exists),
            Err(s) => return Err(s),
        };
        let first = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(Status::internal(format!("write {ref}: stream closed"))),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(Opened::Exists),
            Err(s) => return Err(s),
        };
        let offset = u64::try_from(first.offset).unwrap_or(0);
        Ok(Opened::Writer(Box::new(Self {
            tx,
            rx: stream,
            r#ref: r#ref.to_string(),
            expected: expected.to_string(),
            total,
            offset,
            resumed_from: offset,
        })))
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
    }

    pub fn r#ref(&self) -> &str {
        &self.r#ref
    }

    /// The next write starts the blob over: containerd truncates an ingest written at 0.
    pub fn rewind(&mut self) {
        self.offset = 0;
    }

    async fn exchange(&mut self, msg: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        if self.tx.send(msg).await.is_err() {
            // The server ended the stream; its status says why.
            return match self.rx.message().await {
                Err(s) => Err(s),
                Ok(_) => Err(Status::aborted(format!(
                    "write {}: stream closed",
                    self.r#ref
                ))),
            };
        }
        match self.rx.message().await? {
            Some(m) => Ok(m),
            None => Err(Status::aborted(format!(
                "write {}: stream closed",
                self.r#ref
            ))),
        }
    }

    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), Status> {
        let len = data.len() as u64;
        let msg = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.r#ref.clone(),
            offset: self.offset as i64,
            data,
            ..Default::default()
        };
        let resp = self.exchange(msg).await?;
        let want = self.offset + len;
        let got = u64::try_from(resp.offset).unwrap_or(0);
        if got != want {
            return Err(Status::data_loss(format!(
                "write {}: containerd is at offset {got}, expected {want}",
                self.r#ref
            )));
        }
        self.offset = got;
        Ok(())
    }

    /// Commits with the expected digest and size; containerd verifies both.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<(), Status> {
        let msg = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.r#ref.clone(),
            total: self.total as i64,
            expected: self.expected.clone(),
            offset: self.offset as i64,
            labels,
            ..Default::default()
        };
        match self.exchange(msg).await {
            Ok(_) => Ok(()),
            // Committed by another writer meanwhile: the content is what was expected.
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(s),
        }
    }
}

/// Drops what containerd holds for an ingest ref, so the next attempt starts from 0.
pub async fn abort_ingest(cd: &Containerd, r#ref: &str) -> Result<(), Status> {
    let req = AbortRequest {
        r#ref: r#ref.to_string(),
    };
    match cd.content().abort(cd.request(req)).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(s),
    }
}

/// containerd reports a failed digest check as FailedPrecondition with
/// "unexpected commit digest GOT, expected WANT"; this picks out GOT.
pub fn commit_digest_mismatch(s: &Status) -> Option<String> {
    if s.code() != Code::FailedPrecondition {
        return None;
    }
    let rest = s.message().split("unexpected commit digest ").nth(1)?;
    Some(rest.split([',', ' ']).next().unwrap_or("").to_string())
}

pub async fn snapshot_exists(cd: &Containerd, name: &str) -> Result<bool, Status> {
    let req = StatSnapshotRequest {
        snapshotter: SNAPSHOTTER.to_string(),
        key: name.to_string(),
    };
    match cd.snapshots().stat(cd.request(req)).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(s),
    }
}

pub enum Unpacked {
    Done,
    /// Diff.Apply's uncompressed digest differs from the config's diffID.
    DiffIdMismatch {
        got: String,
    },
    /// Another unpack committed the same chain ID first.
    Raced,
}

/// Unpacks one layer on top of `parent` into the committed snapshot `chain_id`.
pub async fn unpack_layer(
    cd: &Containerd,
    lease: &str,
    parent: &str,
    chain_id: &str,
    layer: &Descriptor,
    diff_id: &str,
) -> Result<Unpacked, Status> {
    let key = format!("skerry-extract-{:016x}-{chain_id}", rand::random::<u64>());
    let prepare = PrepareSnapshotRequest {
        snapshotter: SNAPSHOTTER.to_string(),
        key: key.clone(),
        parent: parent.to_string(),
        labels: HashMap::new(),
    };
    let mounts: Vec<Mount> = cd
        .snapshots()
        .prepare(leased(cd, prepare, lease))
        .await?
        .into_inner()
        .mounts;
    let result = apply_and_commit(cd, lease, &key, chain_id, layer, diff_id, mounts).await;
    let committed = matches!(result, Ok(Unpacked::Done));
    if !committed {
        let remove = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: key.clone(),
        };
        if let Err(e) = cd.snapshots().remove(cd.request(remove)).await {
            if e.code() != Code::NotFound {
                tracing::warn!(key, error = %e, "cannot remove the unpack snapshot");
            }
        }
    }
    match result {
        Ok(Unpacked::Raced) => Ok(Unpacked::Done),
        other => other,
    }
}

async fn apply_and_commit(
    cd: &Containerd,
    lease: &str,
    key: &str,
    chain_id: &str,
    layer: &Descriptor,
    diff_id: &str,
    mounts: Vec<Mount>,
) -> Result<Unpacked, Status> {
    let apply = ApplyRequest {
        diff: Some(CdDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size as i64,
            annotations: layer.annotations.clone(),
        }),
        mounts,
        payloads: HashMap::new(),
        sync_fs: false,
    };
    let applied = cd
        .diff()
        .apply(leased(cd, apply, lease))
        .await?
        .into_inner()
        .applied
        .map(|d| d.digest)
        .unwrap_or_default();
    if applied != diff_id {
        return Ok(Unpacked::DiffIdMismatch { got: applied });
    }
    let commit = CommitSnapshotRequest {
        snapshotter: SNAPSHOTTER.to_string(),
        name: chain_id.to_string(),
        key: key.to_string(),
        labels: HashMap::new(),
    };
    match cd.snapshots().commit(leased(cd, commit, lease)).await {
        Ok(_) => Ok(Unpacked::Done),
        // Another unpack of the same layer won the race; its snapshot is identical.
        Err(s) if s.code() == Code::AlreadyExists => Ok(Unpacked::Raced),
        Err(s) => Err(s),
    }
}

pub async fn get_image(cd: &Containerd, name: &str) -> Result<Option<CdDescriptor>, Status> {
    let req = GetImageRequest {
        name: name.to_string(),
    };
    match cd.images().get(cd.request(req)).await {
        Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// Creates the image record, or points an existing one at `target`.
pub async fn put_image(cd: &Containerd, name: &str, target: &Descriptor) -> Result<(), Status> {
    let image = Image {
        name: name.to_string(),
        labels: HashMap::new(),
        target: Some(CdDescriptor {
            media_type: target.media_type.clone(),
            digest: target.digest.clone(),
            size: target.size as i64,
            annotations: HashMap::new(),
        }),
        created_at: None,
        updated_at: None,
    };
    let create = CreateImageRequest {
        image: Some(image.clone()),
        source_date_epoch: None,
    };
    match cd.images().create(cd.request(create)).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => {
            let update = UpdateImageRequest {
                image: Some(image),
                update_mask: Some(FieldMask {
                    paths: vec!["target".to_string()],
                }),
                source_date_epoch: None,
            };
            cd.images().update(cd.request(update)).await?;
            Ok(())
        }
        Err(s) => Err(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_mismatch_names_the_digest_containerd_computed() {
        let s = Status::failed_precondition(
            "unexpected commit digest sha256:aaa, expected sha256:bbb: failed precondition",
        );
        assert_eq!(commit_digest_mismatch(&s).as_deref(), Some("sha256:aaa"));
        assert_eq!(commit_digest_mismatch(&Status::internal("x")), None);
    }
}
