//! OCI image layouts, as a tarball (`skopeo copy ... oci-archive:FILE:NAME`, optionally
//! gzipped) or as a directory: every blob is streamed into containerd's content store, and
//! the layout's `index.json` is handed back for the caller to resolve.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use tokio::sync::{mpsc, oneshot};

use super::reference::check_digest;
use super::store::{self, ContentWriter, Opened};
use super::ImageError;
use crate::runtime::Containerd;

const CHUNK: usize = 256 << 10;
const MAX_INDEX: u64 = 4 << 20;

/// The ends of a layout the caller needs once its blobs are in containerd.
pub struct Layout {
    pub index: Vec<u8>,
}

enum Event {
    /// A blob starts; answer whether to send its bytes.
    Blob {
        digest: String,
        size: u64,
        wanted: oneshot::Sender<bool>,
    },
    Chunk(Vec<u8>),
    End,
    Index(Vec<u8>),
    LayoutMarker,
    DockerManifest,
}

/// Streams the blobs of the layout at `path` into containerd under `lease`.
pub async fn load(cd: &Containerd, lease: &str, path: &Path) -> Result<Layout, ImageError> {
    let (tx, mut rx) = mpsc::channel(4);
    let owned = path.to_path_buf();
    // The tar reader is blocking; it runs on its own thread, throttled by the channel.
    let producer = tokio::task::spawn_blocking(move || {
        if owned.is_dir() {
            read_dir_layout(&owned, &tx)
        } else {
            read_tar_layout(&owned, &tx)
        }
    });

    let mut index = None;
    let mut marker = false;
    let mut docker = false;
    let consumed: Result<(), ImageError> = async {
        let mut current: Option<(Box<ContentWriter>, String)> = None;
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Blob {
                    digest,
                    size,
                    wanted,
                } => {
                    let cd_err = |op: &str, s| containerd_error(path, &digest, op, s);
                    if store::content_info(cd, &digest)
                        .await
                        .map_err(|s| cd_err("info", s))?
                        .is_some()
                    {
                        let _ = wanted.send(false);
                        continue;
                    }
                    let r = store::ingest_ref("import", &digest);
                    match ContentWriter::open(cd, lease, &r, &digest, size)
                        .await
                        .map_err(|s| cd_err("write", s))?
                    {
                        Opened::Exists => {
                            let _ = wanted.send(false);
                        }
                        Opened::Writer(mut w) => {
                            // The archive is read from its start: drop any earlier partial import.
                            w.rewind();
                            current = Some((w, digest));
                            let _ = wanted.send(true);
                        }
                    }
                }
                Event::Chunk(data) => {
                    if let Some((w, digest)) = current.as_mut() {
                        w.write(data)
                            .await
                            .map_err(|s| containerd_error(path, digest, "write", s))?;
                    }
                }
                Event::End => {
                    if let Some((w, digest)) = current.take() {
                        let r = w.r#ref().to_string();
                        if let Err(s) = w.commit(Default::default()).await {
                            if let Some(got) = store::commit_digest_mismatch(&s) {
                                let _ = store::abort_ingest(cd, &r).await;
                                return Err(ImageError::DigestMismatch {
                                    reference: path.display().to_string(),
                                    what: "blob in the archive".to_string(),
                                    expected: digest,
                                    got,
                                });
                            }
                            return Err(containerd_error(path, &digest, "commit", s));
                        }
                    }
                }
                Event::Index(b) => index = Some(b),
                Event::LayoutMarker => marker = true,
                Event::DockerManifest => docker = true,
            }
        }
        Ok(())
    }
    .await;
    // Dropping the receiver stops a producer still sending.
    drop(rx);
    let produced = producer.await.map_err(|e| ImageError::Archive {
        path: path.to_path_buf(),
        reason: format!("reader task failed: {e}"),
    })?;
    consumed?;
    produced.map_err(|reason| ImageError::Archive {
        path: path.to_path_buf(),
        reason,
    })?;
    match index {
        Some(index) if marker => Ok(Layout { index }),
        Some(_) => Err(archive_error(path, "has index.json but no oci-layout file")),
        None if docker => Err(archive_error(
            path,
            "is a docker-archive (manifest.json, no index.json): convert it with \
             `skopeo copy docker-archive:IN oci-archive:OUT:NAME:TAG`",
        )),
        None => Err(archive_error(
            path,
            "has no index.json: not an OCI image layout",
        )),
    }
}

fn archive_error(path: &Path, reason: &str) -> ImageError {
    ImageError::Archive {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn containerd_error(path: &Path, digest: &str, op: &str, source: tonic::Status) -> ImageError {
    ImageError::Containerd {
        reference: path.display().to_string(),
        op: format!("{op} of blob {digest}"),
        source,
    }
}

fn read_tar_layout(path: &Path, tx: &mpsc::Sender<Event>) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut reader = BufReader::new(file);
    let gzipped = reader
        .fill_buf()
        .map_err(|e| format!("cannot read: {e}"))?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzipped {
        Box::new(GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("corrupt tar archive: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| format!("bad entry name: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let size = entry.size();
        if !handle_entry(&name, size, &mut entry, tx)? {
            return Ok(());
        }
    }
    Ok(())
}

fn read_dir_layout(dir: &Path, tx: &mpsc::Sender<Event>) -> Result<(), String> {
    let mut files: Vec<(String, PathBuf)> = ["oci-layout", "index.json", "manifest.json"]
        .iter()
        .map(|n| (n.to_string(), dir.join(n)))
        .filter(|(_, p)| p.is_file())
        .collect();
    let blobs = dir.join("blobs/sha256");
    if blobs.is_dir() {
        let listing = std::fs::read_dir(&blobs)
            .map_err(|e| format!("cannot list {}: {e}", blobs.display()))?;
        for entry in listing {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", blobs.display()))?;
            let name = entry.file_name().to_string_lossy().to_string();
            files.push((format!("blobs/sha256/{name}"), entry.path()));
        }
    }
    for (name, p) in files {
        let mut f = File::open(&p).map_err(|e| format!("cannot open {}: {e}", p.display()))?;
        let size = f
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", p.display()))?
            .len();
        if !handle_entry(&name, size, &mut f, tx)? {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends one layout file to the consumer. Returns false once the consumer has gone.
fn handle_entry(
    name: &str,
    size: u64,
    reader: &mut dyn Read,
    tx: &mpsc::Sender<Event>,
) -> Result<bool, String> {
    let ev = match name {
        "index.json" => {
            let mut buf = Vec::new();
            reader
                .take(MAX_INDEX + 1)
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read index.json: {e}"))?;
            if buf.len() as u64 > MAX_INDEX {
                return Err(format!("index.json is larger than {MAX_INDEX} bytes"));
            }
            Event::Index(buf)
        }
        "oci-layout" => Event::LayoutMarker,
        "manifest.json" => Event::DockerManifest,
        _ => {
            let Some(hex) = name.strip_prefix("blobs/sha256/") else {
                return Ok(true);
            };
            let digest = format!("sha256:{hex}");
            if check_digest(&digest).is_err() {
                return Ok(true);
            }
            return send_blob(digest, size, reader, tx);
        }
    };
    Ok(tx.blocking_send(ev).is_ok())
}

fn send_blob(
    digest: String,
    size: u64,
    reader: &mut dyn Read,
    tx: &mpsc::Sender<Event>,
) -> Result<bool, String> {
    let (wanted_tx, wanted_rx) = oneshot::channel();
    let start = Event::Blob {
        digest: digest.clone(),
        size,
        wanted: wanted_tx,
    };
    if tx.blocking_send(start).is_err() {
        return Ok(false);
    }
    let Ok(wanted) = wanted_rx.blocking_recv() else {
        return Ok(false);
    };
    if !wanted {
        return Ok(true);
    }
    let mut left = size;
    while left > 0 {
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("cannot read blob {digest}: {e}"))?;
        if n == 0 {
            return Err(format!("blob {digest} ends {left} bytes early"));
        }
        buf.truncate(n);
        left -= n as u64;
        if tx.blocking_send(Event::Chunk(buf)).is_err() {
            return Ok(false);
        }
    }
    Ok(tx.blocking_send(Event::End).is_ok())
}
