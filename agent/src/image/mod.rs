//! Images: pulled client-side from OCI registries, or imported from OCI layout archives,
//! into containerd's content store, unpacked into snapshots and recorded as containerd
//! images. Only the Content, Diff, Snapshots, Images and Leases services are used, so this
//! works on containerd 1.6 (no Transfer service) as well as 2.x.
//!
//! A pull, like containerd's own client: resolve the reference to a manifest (picking this
//! platform from an index), write every blob under a lease with Content.Write (resuming a
//! broken download from the offset containerd holds for the blob's ref), label the content
//! so the garbage collector keeps what the image needs once the lease is gone, unpack each
//! layer into the snapshot named by its chain ID, and create (or update) the image record.
//!
//! Names: a reference is recorded fully qualified (`busybox` is
//! `docker.io/library/busybox:latest`). An archive's images are named by their index.json
//! annotation `io.containerd.image.name` when present (containerd's exporter writes it),
//! else by `org.opencontainers.image.ref.name` when that is a full reference such as
//! `busybox:latest` (as `skopeo copy ... oci-archive:FILE:busybox:latest` writes); both are
//! normalized the same way, so a task definition's `busybox:latest` finds the image. An
//! entry whose ref.name is a bare tag (`latest`) names no repository and is skipped.

mod archive;
mod manifest;
mod reference;
mod registry;
mod store;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::image::ImageConfiguration;

pub use manifest::Platform;
pub use reference::Reference;

use manifest::{chain_ids, kind_of, sha256_digest, Descriptor, Index, Kind, Manifest, MAX_JSON};
use registry::Registry;
use store::{ContentWriter, Opened, Unpacked};

use crate::runtime::Containerd;

/// Layer downloads in flight at once for one pull.
const PARALLEL_LAYERS: usize = 3;
/// Attempts per registry request or blob download, for transient failures.
const MAX_ATTEMPTS: u32 = 5;
/// Bytes gathered from the registry before one Content.Write message.
const WRITE_CHUNK: usize = 256 << 10;

const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Clone, Default, serde::Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// Registries (`host[:port]`, or `host` for any port) allowed over plain HTTP besides
    /// loopback ones.
    pub insecure: Vec<String>,
    /// Credentials by registry host as references name it (`docker.io`, `ghcr.io`,
    /// `10.0.0.5:5000`).
    pub auths: HashMap<String, Credentials>,
    /// The platform to pull for; `None` is this machine's (`linux/arm64`, `linux/arm/v7`).
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug)]
pub struct ImageInfo {
    /// The fully qualified name the image is recorded under in containerd.
    pub name: String,
    /// The platform-specific manifest (for a multi-platform image, not the index).
    pub manifest_digest: String,
    pub config: ImageConfiguration,
    /// The committed snapshot of the top layer: the parent for a container's rootfs.
    pub chain_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("{reference}: {what} not found in the registry; check the repository and tag")]
    NotFound { reference: String, what: String },
    #[error("{reference}: registry {registry} is unreachable: {reason}")]
    Unreachable {
        reference: String,
        registry: String,
        reason: String,
    },
    #[error("{reference}: registry {registry} refused access: {detail}")]
    AuthRefused {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("{reference}: digest mismatch for {what}: expected {expected}, got {got}")]
    DigestMismatch {
        reference: String,
        what: String,
        expected: String,
        got: String,
    },
    #[error("{reference}: no image for platform {wanted}; the index has: {}", available.join(", "))]
    NoPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },
    #[error(
        "{reference}: refusing plain HTTP to {url}; add {host:?} to the image config's \
         `insecure` registries to allow it"
    )]
    PlainHttpRefused {
        reference: String,
        url: String,
        host: String,
    },
    #[error("{reference}: registry {registry} answered {status} for {url}: {detail}")]
    Registry {
        reference: String,
        registry: String,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{reference}: download of {what} from {registry} broke: {reason}")]
    Transfer {
        reference: String,
        registry: String,
        what: String,
        reason: String,
    },
    #[error("{reference}: containerd {op}: {}", source.message())]
    Containerd {
        reference: String,
        op: String,
        #[source]
        source: tonic::Status,
    },
    #[error("{reference}: {what} is invalid: {reason}")]
    Invalid {
        reference: String,
        what: String,
        reason: String,
    },
    #[error("archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    #[error("cannot build the registry HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl ImageError {
    /// Worth another attempt: the network or the registry may recover.
    fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Transfer { .. } => true,
            Self::Registry { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            // A ref still locked by a writer whose stream has not been torn down yet.
            Self::Containerd { source, .. } => source.code() == tonic::Code::Unavailable,
            _ => false,
        }
    }
}

/// Where a pull's blobs come from: the registry, or (archives, re-unpacking) containerd's
/// content store, which must already hold them.
#[derive(Clone, Copy)]
enum Source<'a> {
    Registry(&'a Reference),
    Content,
}

/// One pull or import: the lease it holds and the name errors mention.
#[derive(Clone, Copy)]
struct Job<'a> {
    source: Source<'a>,
    lease: &'a str,
    /// The reference (or archive path) errors are reported against.
    subject: &'a str,
}

pub struct ImageStore {
    cd: Containerd,
    registry: Registry,
    platform: Platform,
}

impl ImageStore {
    pub fn new(cd: Containerd, config: ImageConfig) -> Result<Self, ImageError> {
        let registry = Registry::new(&config).map_err(ImageError::Client)?;
        Ok(Self {
            cd,
            registry,
            platform: config.platform.unwrap_or_else(Platform::host),
        })
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Makes `reference` available to run. An image that containerd already has, unpacked,
    /// is returned without touching the network unless `force`; one whose record and
    /// content are there but whose snapshots are gone is unpacked again from local content.
    pub async fn ensure(&self, reference: &str, force: bool) -> Result<ImageInfo, ImageError> {
        let r = Reference::parse(reference).map_err(|e| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })?;
        let name = r.to_string();
        if !force {
            match self.local(&name).await? {
                Local::Ready(info) => return Ok(*info),
                Local::Packed(target) => {
                    match self
                        .with_lease("unpack", &name, |lease| {
                            let name = &name;
                            async move {
                                let job = Job {
                                    source: Source::Content,
                                    lease: &lease,
                                    subject: name,
                                };
                                self.record(job, name, target, None).await
                            }
                        })
                        .await
                    {
                        Ok(info) => return Ok(info),
                        Err(e) => {
                            tracing::info!(image = %name, error = %e, "local content incomplete; pulling");
                        }
                    }
                }
                Local::Absent => {}
            }
        }
        self.with_lease(
            "pull",
            &name,
            |lease| async move { self.pull(&r, &lease).await },
        )
        .await
    }

    /// Imports the images of an OCI image layout (a tarball, gzipped or not, or a
    /// directory), and returns the images it named. See the module doc for naming.
    pub async fn import_archive(&self, path: &Path) -> Result<Vec<ImageInfo>, ImageError> {
        let subject = path.display().to_string();
        let subject = &subject;
        self.with_lease("import", subject, |lease| async move {
            let lease = lease.as_str();
            let layout = archive::load(&self.cd, lease, path).await?;
            let index: Index =
                serde_json::from_slice(&layout.index).map_err(|e| ImageError::Archive {
                    path: path.to_path_buf(),
                    reason: format!("index.json is invalid: {e}"),
                })?;
            let job = Job {
                source: Source::Content,
                lease,
                subject,
            };
            let mut out = Vec::new();
            for entry in index.manifests {
                let Some(name) = archive_name(&entry.annotations) else {
                    tracing::warn!(
                        archive = %subject,
                        digest = %entry.digest,
                        "skipping an archive entry without a usable image name annotation"
                    );
                    continue;
                };
                out.push(self.record(job, &name, entry, None).await?);
            }
            if out.is_empty() {
                return Err(ImageError::Archive {
                    path: path.to_path_buf(),
                    reason: format!(
                        "no entry of index.json names an image ({ANNOTATION_CONTAINERD_NAME} \
                         or a full {ANNOTATION_REF_NAME} such as busybox:latest)"
                    ),
                });
            }
            Ok(out)
        })
        .await
    }

    /// Runs `f` holding a fresh lease, and deletes the lease after, whatever `f` returned.
    async fn with_lease<T, F, Fut>(
        &self,
        purpose: &str,
        subject: &str,
        f: F,
    ) -> Result<T, ImageError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<T, ImageError>>,
    {
        let lease =
            store::create_lease(&self.cd)
                .await
                .map_err(|source| ImageError::Containerd {
                    reference: subject.to_string(),
                    op: "create lease".to_string(),
                    source,
                })?;
        tracing::debug!(lease, purpose, image = subject, "lease created");
        let out = f(lease.clone()).await;
        if let Err(e) = store::delete_lease(&self.cd, &lease).await {
            tracing::warn!(lease, error = %e, "cannot delete lease; it expires by itself");
        }
        out
    }

    async fn pull(&self, r: &Reference, lease: &str) -> Result<ImageInfo, ImageError> {
        let subject = r.to_string();
        let job = Job {
            source: Source::Registry(r),
            lease,
            subject: &subject,
        };
        let fetched = retry(&subject, || self.registry.manifest(r, r.object())).await?;
        let digest = sha256_digest(&fetched.body);
        let pinned = r.digest.as_deref().or(fetched.digest_header.as_deref());
        if let Some(want) = pinned {
            if want != digest {
                return Err(ImageError::DigestMismatch {
                    reference: subject.clone(),
                    what: format!("manifest {}", r.object()),
                    expected: want.to_string(),
                    got: digest,
                });
            }
        }
        let kind =
            kind_of(&fetched.media_type, &fetched.body).map_err(|reason| ImageError::Invalid {
                reference: subject.clone(),
                what: format!("manifest {}", r.object()),
                reason,
            })?;
        let target = Descriptor {
            media_type: media_type_of(kind, &fetched.media_type, &fetched.body),
            digest,
            size: fetched.body.len() as u64,
            platform: None,
            annotations: HashMap::new(),
        };
        self.record(job, &subject, target, Some(fetched.body)).await
    }

    /// Brings everything `target` needs into containerd (fetching what is missing from the
    /// job's source), labels it for the collector, unpacks it and records `name`.
    async fn record(
        &self,
        job: Job<'_>,
        name: &str,
        mut target: Descriptor,
        target_body: Option<Vec<u8>>,
    ) -> Result<ImageInfo, ImageError> {
        let target_body = match target_body {
            Some(b) => b,
            None => self.fetch_json(job, &target, true).await?,
        };
        let kind = kind_of(&target.media_type, &target_body)
            .map_err(|reason| self.invalid(job, &target.digest, reason))?;
        target.media_type = media_type_of(kind, &target.media_type, &target_body);
        let (manifest_desc, manifest_body, index) = match kind {
            Kind::Manifest => (target.clone(), target_body, None),
            Kind::Index => {
                let index: Index = serde_json::from_slice(&target_body)
                    .map_err(|e| self.invalid(job, &target.digest, e.to_string()))?;
                let chosen = self.platform.select(&index.manifests).ok_or_else(|| {
                    ImageError::NoPlatform {
                        reference: job.subject.to_string(),
                        wanted: self.platform.to_string(),
                        available: index
                            .manifests
                            .iter()
                            .map(|d| {
                                d.platform
                                    .as_ref()
                                    .map_or("(none)".into(), |p| p.to_string())
                            })
                            .collect(),
                    }
                })?;
                let mut chosen = chosen.clone();
                let body = self.fetch_json(job, &chosen, true).await?;
                let child_kind = kind_of(&chosen.media_type, &body)
                    .map_err(|reason| self.invalid(job, &chosen.digest, reason))?;
                if child_kind != Kind::Manifest {
                    return Err(self.invalid(
                        job,
                        &chosen.digest,
                        "an index inside an index".into(),
                    ));
                }
                chosen.media_type = media_type_of(child_kind, &chosen.media_type, &body);
                (chosen, body, Some((index, target_body)))
            }
        };
        let manifest: Manifest = serde_json::from_slice(&manifest_body)
            .map_err(|e| self.invalid(job, &manifest_desc.digest, e.to_string()))?;
        let config_body = self.fetch_json(job, &manifest.config, false).await?;
        let config: ImageConfiguration = serde_json::from_slice(&config_body)
            .map_err(|e| self.invalid(job, &manifest.config.digest, e.to_string()))?;
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers.len() || diff_ids.is_empty() {
            return Err(self.invalid(
                job,
                &manifest.config.digest,
                format!(
                    "{} diff_ids for {} layers (an image needs at least one layer, and one \
                     diff_id per layer)",
                    diff_ids.len(),
                    manifest.layers.len()
                ),
            ));
        }
        for d in &diff_ids {
            reference::check_digest(d)
                .map_err(|e| self.invalid(job, &manifest.config.digest, e))?;
        }
        let chains = chain_ids(&diff_ids);
        let chain_id = chains.last().cloned().unwrap_or_default();

        // A plain loop and a semaphore rather than a stream combinator: rustc cannot prove
        // a `buffer_unordered` over borrowing closures `Send`, and callers spawn `ensure`.
        let slots = tokio::sync::Semaphore::new(PARALLEL_LAYERS);
        let mut downloads = Vec::with_capacity(manifest.layers.len());
        for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
            let slots = &slots;
            downloads.push(async move {
                let _slot = slots.acquire().await.map_err(|_| {
                    self.invalid(job, &layer.digest, "download slots closed".into())
                })?;
                self.ensure_layer(job, layer, diff_id).await
            });
        }
        futures::future::try_join_all(downloads).await?;

        // Labels tie image -> index -> manifest -> config/layers -> snapshot for the
        // collector, so all of it survives once the lease is deleted.
        let config_labels = HashMap::from([(store::label_gc_snapshot(), chain_id.clone())]);
        self.put(job, &manifest.config.digest, &config_body, &config_labels)
            .await?;
        let mut manifest_labels = HashMap::from([(
            store::LABEL_GC_CONFIG.to_string(),
            manifest.config.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            manifest_labels.insert(store::label_gc_layer(i), l.digest.clone());
        }
        self.put(job, &manifest_desc.digest, &manifest_body, &manifest_labels)
            .await?;
        if let Some((index, body)) = &index {
            let labels = index
                .manifests
                .iter()
                .enumerate()
                .map(|(i, m)| (store::label_gc_manifest(i), m.digest.clone()))
                .collect();
            self.put(job, &target.digest, body, &labels).await?;
        }

        self.unpack(job, &manifest.layers, &diff_ids, &chains)
            .await?;
        store::put_image(&self.cd, name, &target)
            .await
            .map_err(|s| self.cd_error(job, "create image record", s))?;
        tracing::info!(image = name, manifest = %manifest_desc.digest, chain_id, "image ready");
        Ok(ImageInfo {
            name: name.to_string(),
            manifest_digest: manifest_desc.digest,
            config,
            chain_id,
        })
    }

    async fn unpack(
        &self,
        job: Job<'_>,
        layers: &[Descriptor],
        diff_ids: &[String],
        chains: &[String],
    ) -> Result<(), ImageError> {
        for (i, (layer, chain)) in layers.iter().zip(chains).enumerate() {
            let exists = store::snapshot_exists(&self.cd, chain)
                .await
                .map_err(|s| self.cd_error(job, &format!("stat snapshot {chain}"), s))?;
            if exists {
                continue;
            }
            let parent = if i == 0 { "" } else { chains[i - 1].as_str() };
            let unpacked =
                store::unpack_layer(&self.cd, job.lease, parent, chain, layer, &diff_ids[i])
                    .await
                    .map_err(|s| {
                        self.cd_error(job, &format!("unpack layer {}", layer.digest), s)
                    })?;
            if let Unpacked::DiffIdMismatch { got } = unpacked {
                return Err(ImageError::DigestMismatch {
                    reference: job.subject.to_string(),
                    what: format!("uncompressed layer {}", layer.digest),
                    expected: diff_ids[i].clone(),
                    got,
                });
            }
        }
        Ok(())
    }

    /// Reads a manifest, index or config whole from the job's source, and checks its digest
    /// and size against the descriptor.
    async fn fetch_json(
        &self,
        job: Job<'_>,
        desc: &Descriptor,
        is_manifest: bool,
    ) -> Result<Vec<u8>, ImageError> {
        reference::check_digest(&desc.digest).map_err(|e| self.invalid(job, &desc.digest, e))?;
        if desc.size > MAX_JSON {
            return Err(self.invalid(job, &desc.digest, format!("larger than {MAX_JSON} bytes")));
        }
        let body = match job.source {
            Source::Registry(r) if is_manifest => {
                retry(job.subject, || self.registry.manifest(r, &desc.digest))
                    .await?
                    .body
            }
            Source::Registry(r) => {
                retry(job.subject, || self.registry.small_blob(r, &desc.digest)).await?
            }
            Source::Content => store::read_content(&self.cd, &desc.digest, MAX_JSON)
                .await
                .map_err(|s| self.cd_error(job, &format!("read {}", desc.digest), s))?,
        };
        let got = sha256_digest(&body);
        if got != desc.digest {
            return Err(ImageError::DigestMismatch {
                reference: job.subject.to_string(),
                what: if is_manifest { "manifest" } else { "config" }.to_string(),
                expected: desc.digest.clone(),
                got,
            });
        }
        if body.len() as u64 != desc.size {
            return Err(self.invalid(
                job,
                &desc.digest,
                format!(
                    "{} bytes where the descriptor says {}",
                    body.len(),
                    desc.size
                ),
            ));
        }
        Ok(body)
    }

    async fn put(
        &self,
        job: Job<'_>,
        digest: &str,
        body: &[u8],
        labels: &HashMap<String, String>,
    ) -> Result<(), ImageError> {
        store::put_bytes(&self.cd, job.lease, digest, body, labels)
            .await
            .map_err(|s| self.cd_error(job, &format!("write {digest}"), s))
    }

    /// Makes sure containerd has the (compressed) layer, labelled with its diffID.
    async fn ensure_layer(
        &self,
        job: Job<'_>,
        layer: &Descriptor,
        diff_id: &str,
    ) -> Result<(), ImageError> {
        reference::check_digest(&layer.digest).map_err(|e| self.invalid(job, &layer.digest, e))?;
        let labels = HashMap::from([(store::LABEL_UNCOMPRESSED.to_string(), diff_id.to_string())]);
        let info = store::content_info(&self.cd, &layer.digest)
            .await
            .map_err(|s| self.cd_error(job, &format!("info {}", layer.digest), s))?;
        if let Some(info) = info {
            return store::ensure_labels(&self.cd, info, &labels)
                .await
                .map_err(|s| self.cd_error(job, &format!("label {}", layer.digest), s));
        }
        let r = match job.source {
            Source::Registry(r) => r,
            Source::Content => {
                return Err(self.invalid(
                    job,
                    &format!("layer {}", layer.digest),
                    "missing from containerd's content store (and the archive)".into(),
                ))
            }
        };
        let mut writer = None;
        let mut attempt = 0;
        loop {
            match self.download(job, r, layer, &labels, &mut writer).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && attempt + 1 < MAX_ATTEMPTS => {
                    tracing::warn!(image = job.subject, layer = %layer.digest, attempt, error = %e, "retrying layer download");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt at a layer: continues from the offset containerd holds for the blob's
    /// ref. `writer` keeps the Content.Write stream across attempts while it is healthy.
    async fn download(
        &self,
        job: Job<'_>,
        r: &Reference,
        layer: &Descriptor,
        labels: &HashMap<String, String>,
        writer: &mut Option<Box<ContentWriter>>,
    ) -> Result<(), ImageError> {
        let ingest = store::ingest_ref("pull", &layer.digest);
        let op = || format!("write {}", layer.digest);
        let mut w = match writer.take() {
            Some(w) => w,
            None => {
                match ContentWriter::open(&self.cd, job.lease, &ingest, &layer.digest, layer.size)
                    .await
                    .map_err(|s| self.cd_error(job, &op(), s))?
                {
                    Opened::Writer(w) => w,
                    Opened::Exists => {
                        let info = store::content_info(&self.cd, &layer.digest)
                            .await
                            .map_err(|s| self.cd_error(job, &op(), s))?;
                        return match info {
                            Some(info) => store::ensure_labels(&self.cd, info, labels)
                                .await
                                .map_err(|s| self.cd_error(job, &op(), s)),
                            None => Ok(()),
                        };
                    }
                }
            }
        };
        if w.offset() > layer.size {
            w.rewind();
        }
        let from = w.offset();
        if from < layer.size {
            let mut body = match self.registry.blob(r, &layer.digest, from).await {
                Ok(b) => b,
                Err(e) => {
                    // A range answered from the wrong offset: the next attempt asks for all.
                    if matches!(e, ImageError::Transfer { .. }) {
                        w.rewind();
                    }
                    *writer = Some(w);
                    return Err(e);
                }
            };
            if body.start != from {
                tracing::info!(layer = %layer.digest, from, "registry ignored Range; downloading from the start");
                w.rewind();
            }
            let mut buf: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
            let broke = loop {
                match body.chunk().await {
                    Ok(Some(bytes)) => {
                        if w.offset() + (buf.len() + bytes.len()) as u64 > layer.size {
                            let _ = store::abort_ingest(&self.cd, &ingest).await;
                            return Err(self.invalid(
                                job,
                                &format!("layer {}", layer.digest),
                                format!("the registry sent more than its {} bytes", layer.size),
                            ));
                        }
                        buf.extend_from_slice(&bytes);
                        if buf.len() >= WRITE_CHUNK {
                            w.write(std::mem::take(&mut buf))
                                .await
                                .map_err(|s| self.cd_error(job, &op(), s))?;
                        }
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            if !buf.is_empty() {
                w.write(buf)
                    .await
                    .map_err(|s| self.cd_error(job, &op(), s))?;
            }
            let reason = match broke {
                Some(e) => Some(e),
                None if w.offset() < layer.size => Some(format!(
                    "body ended at byte {} of {}",
                    w.offset(),
                    layer.size
                )),
                None => None,
            };
            if let Some(reason) = reason {
                *writer = Some(w);
                return Err(ImageError::Transfer {
                    reference: job.subject.to_string(),
                    registry: r.registry_host().to_string(),
                    what: format!("layer {}", layer.digest),
                    reason,
                });
            }
        }
        let resumed = w.resumed_from() > 0 || from > 0;
        match w.commit(labels.clone()).await {
            Ok(()) => Ok(()),
            Err(s) => match store::commit_digest_mismatch(&s) {
                Some(got) => {
                    // What containerd holds is wrong; the next attempt starts from 0.
                    let _ = store::abort_ingest(&self.cd, &ingest).await;
                    if resumed {
                        Err(ImageError::Transfer {
                            reference: job.subject.to_string(),
                            registry: r.registry_host().to_string(),
                            what: format!("layer {}", layer.digest),
                            reason: format!("resumed download has digest {got}; starting over"),
                        })
                    } else {
                        Err(ImageError::DigestMismatch {
                            reference: job.subject.to_string(),
                            what: format!("layer {}", layer.digest),
                            expected: layer.digest.clone(),
                            got,
                        })
                    }
                }
                None => Err(self.cd_error(job, &format!("commit {}", layer.digest), s)),
            },
        }
    }

    /// What containerd has for `name`, reading only local content.
    async fn local(&self, name: &str) -> Result<Local, ImageError> {
        let cd_err = |op: &str, s| ImageError::Containerd {
            reference: name.to_string(),
            op: op.to_string(),
            source: s,
        };
        let Some(target) = store::get_image(&self.cd, name)
            .await
            .map_err(|s| cd_err("get image record", s))?
        else {
            return Ok(Local::Absent);
        };
        let target = Descriptor {
            media_type: target.media_type,
            digest: target.digest,
            size: u64::try_from(target.size).unwrap_or(0),
            platform: None,
            annotations: HashMap::new(),
        };
        let Some(found) = self.local_chain(&target).await else {
            return Ok(Local::Packed(target));
        };
        let (manifest_digest, config, chain_id) = found;
        let unpacked = store::snapshot_exists(&self.cd, &chain_id)
            .await
            .map_err(|s| cd_err("stat snapshot", s))?;
        if !unpacked {
            return Ok(Local::Packed(target));
        }
        Ok(Local::Ready(Box::new(ImageInfo {
            name: name.to_string(),
            manifest_digest,
            config,
            chain_id,
        })))
    }

    /// Resolves a recorded target to (manifest digest, config, top chain ID) from local
    /// content; `None` if anything is missing or unreadable.
    async fn local_chain(
        &self,
        target: &Descriptor,
    ) -> Option<(String, ImageConfiguration, String)> {
        let read =
            |d: String| async move { store::read_content(&self.cd, &d, MAX_JSON).await.ok() };
        let body = read(target.digest.clone()).await?;
        let manifest_desc_digest;
        let manifest_body = match kind_of(&target.media_type, &body).ok()? {
            Kind::Manifest => {
                manifest_desc_digest = target.digest.clone();
                body
            }
            Kind::Index => {
                let index: Index = serde_json::from_slice(&body).ok()?;
                let chosen = self.platform.select(&index.manifests)?;
                manifest_desc_digest = chosen.digest.clone();
                read(chosen.digest.clone()).await?
            }
        };
        let manifest: Manifest = serde_json::from_slice(&manifest_body).ok()?;
        let config_body = read(manifest.config.digest.clone()).await?;
        let config: ImageConfiguration = serde_json::from_slice(&config_body).ok()?;
        let chain_id = chain_ids(config.rootfs().diff_ids()).pop()?;
        Some((manifest_desc_digest, config, chain_id))
    }

    fn invalid(&self, job: Job<'_>, what: &str, reason: String) -> ImageError {
        ImageError::Invalid {
            reference: job.subject.to_string(),
            what: what.to_string(),
            reason,
        }
    }

    fn cd_error(&self, job: Job<'_>, op: &str, source: tonic::Status) -> ImageError {
        ImageError::Containerd {
            reference: job.subject.to_string(),
            op: op.to_string(),
            source,
        }
    }
}

enum Local {
    Ready(Box<ImageInfo>),
    /// Recorded, but not unpacked (or not readable from local content alone).
    Packed(Descriptor),
    Absent,
}

/// The name an archive entry is recorded under, normalized like a pulled reference.
fn archive_name(annotations: &HashMap<String, String>) -> Option<String> {
    let name = match annotations.get(ANNOTATION_CONTAINERD_NAME) {
        Some(n) => n,
        None => {
            let n = annotations.get(ANNOTATION_REF_NAME)?;
            // A bare tag ("latest") names no repository.
            if !n.contains([':', '/', '@']) {
                return None;
            }
            n
        }
    };
    Reference::parse(name).ok().map(|r| r.to_string())
}

/// The media type to record: the declared one if it is a manifest kind, else the body's
/// `mediaType`, else the OCI type for the kind.
fn media_type_of(kind: Kind, declared: &str, body: &[u8]) -> String {
    let declared = declared.split(';').next().unwrap_or("").trim();
    let known = [
        manifest::OCI_INDEX,
        manifest::DOCKER_LIST,
        manifest::OCI_MANIFEST,
        manifest::DOCKER_MANIFEST,
    ];
    if known.contains(&declared) {
        return declared.to_string();
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
    }
    if let Some(t) = serde_json::from_slice::<Probe>(body)
        .ok()
        .and_then(|p| p.media_type)
    {
        if known.contains(&t.as_str()) {
            return t;
        }
    }
    match kind {
        Kind::Index => manifest::OCI_INDEX.to_string(),
        Kind::Manifest => manifest::OCI_MANIFEST.to_string(),
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(4))
}

/// Retries transient failures of a registry request a bounded number of times.
async fn retry<T, F, Fut>(subject: &str, mut f: F) -> Result<T, ImageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ImageError>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt + 1 < MAX_ATTEMPTS => {
                tracing::warn!(image = subject, attempt, error = %e, "retrying registry request");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_prefer_containerds_annotation() {
        let a = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(
            archive_name(&a(&[(ANNOTATION_REF_NAME, "busybox:latest")])).as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            archive_name(&a(&[
                (ANNOTATION_REF_NAME, "latest"),
                (ANNOTATION_CONTAINERD_NAME, "registry.lan:5000/app:1")
            ]))
            .as_deref(),
            Some("registry.lan:5000/app:1")
        );
        assert_eq!(archive_name(&a(&[(ANNOTATION_REF_NAME, "latest")])), None);
        assert_eq!(archive_name(&a(&[])), None);
    }

    #[test]
    fn credentials_do_not_print_passwords() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    /// Compiles only while the public futures are `Send`: the agent spawns them.
    #[allow(dead_code)]
    fn futures_are_send(store: &'static ImageStore) {
        fn spawnable<T: Send + 'static>(_: T) {}
        spawnable(store.ensure("busybox", false));
        spawnable(store.import_archive(Path::new("busybox.tar")));
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(30), Duration::from_millis(4000));
    }
}
