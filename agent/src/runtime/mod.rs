//! The containerd boundary: one gRPC channel over containerd's socket, and requests scoped
//! to the agent's namespace. Only services that containerd 1.6 and 2.x both serve are used
//! (containers, tasks, content, diff, snapshots, images, leases, events, version).

pub mod containers;
#[cfg(test)]
pub(crate) mod fake;
pub mod shim;
pub mod view;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    events_client::EventsClient, images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
    version_client::VersionClient,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use containers::{ContainerError, ContainerSummary, NewContainer, ProcessState};
use view::ViewError;

/// The snapshotter the agent unpacks images into and runs containers from.
pub const SNAPSHOTTER: &str = "overlayfs";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot connect to containerd at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid containerd namespace {0:?}: use letters, digits, '.', '_' and '-'")]
    Namespace(String),
}

/// What the reconciler asks of the container runtime, containerd in the agent: the seam
/// between the task supervisor's rules and the runtime, so that the rules can be exercised
/// without one (`fake`). Ids are container ids (`<task id>-<container name>`).
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The containerd namespace the containers live in; it also names their cgroups.
    fn namespace(&self) -> &str;
    /// Creates a container (not its process); an existing one is kept.
    async fn create(&self, c: NewContainer<'_>) -> Result<(), ContainerError>;
    /// Starts the container's process, replacing an exited one; returns its pid.
    async fn start(&self, id: &str, stdio: &str) -> Result<u32, ContainerError>;
    async fn state(&self, id: &str) -> Result<ProcessState, ContainerError>;
    /// Waits for the process to exit and returns its exit code (at once if it has).
    async fn wait(&self, id: &str) -> Result<u32, ContainerError>;
    /// Signals the container's processes; one already gone is not an error.
    async fn kill(&self, id: &str, signal: u32) -> Result<(), ContainerError>;
    /// Deletes the container, its process and its writable layer; nothing left is fine.
    async fn delete(&self, id: &str) -> Result<(), ContainerError>;
    /// Runs `process` (an OCI process spec) in the running container; its exit code.
    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: serde_json::Value,
        timeout: Duration,
    ) -> Result<u32, ContainerError>;
    /// The containers that carry `label`.
    async fn list(&self, label: &str) -> Result<Vec<ContainerSummary>, ContainerError>;
    /// The files at `paths` in the image whose top snapshot is `chain_id`, if present.
    async fn image_files(
        &self,
        chain_id: &str,
        paths: &[&str],
    ) -> Result<Vec<Option<String>>, ViewError>;
}

/// A handle on containerd. Cloning is cheap: clones share the channel, which reconnects by
/// itself after containerd restarts.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    namespace_name: String,
    socket: PathBuf,
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, RuntimeError> {
        let valid = !namespace.is_empty()
            && namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        let ns = match namespace.parse() {
            Ok(ns) if valid => ns,
            _ => return Err(RuntimeError::Namespace(namespace.to_string())),
        };
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|source| RuntimeError::Connect {
                    path: socket.to_path_buf(),
                    source,
                })?;
        Ok(Self {
            channel,
            namespace: ns,
            namespace_name: namespace.to_string(),
            socket: socket.to_path_buf(),
        })
    }

    /// A handle on nothing (every call fails as containerd being unavailable), for unit
    /// tests that must build what holds one but drive a fake runtime.
    #[cfg(test)]
    pub(crate) fn unconnected(namespace: &str) -> Self {
        Self {
            channel: tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy(),
            namespace: namespace.parse().expect("tests pass a valid namespace"),
            namespace_name: namespace.to_string(),
            socket: PathBuf::from("/nonexistent/containerd.sock"),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace_name
    }

    /// containerd's socket, as configured.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Wraps a message in a request scoped to the agent's namespace.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        req
    }

    /// Like [`Containerd::request`], and holds what the request creates under `lease` so the
    /// garbage collector leaves it alone until the lease is deleted.
    pub fn request_leased<T>(&self, msg: T, lease: &str) -> tonic::Request<T> {
        let mut req = self.request(msg);
        if let Ok(v) = lease.parse() {
            req.metadata_mut().insert("containerd-lease", v);
        }
        req
    }

    /// A lease that expires by itself after `ttl`, so what it holds is collected even if
    /// this process dies before [`Containerd::delete_lease`].
    pub async fn temporary_lease(&self, ttl: std::time::Duration) -> Result<String, tonic::Status> {
        let id = format!("skerry-{:016x}", rand::random::<u64>());
        let expire = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + ttl);
        let req = containerd_client::services::v1::CreateRequest {
            id: id.clone(),
            labels: std::collections::HashMap::from([(
                "containerd.io/gc.expire".to_string(),
                expire.to_string(),
            )]),
        };
        self.leases().create(self.request(req)).await?;
        Ok(id)
    }

    /// Deletes a lease; failing to is harmless, it expires.
    pub async fn delete_lease(&self, id: &str) {
        let req = containerd_client::services::v1::DeleteRequest {
            id: id.to_string(),
            sync: false,
        };
        if let Err(e) = self.leases().delete(self.request(req)).await {
            tracing::debug!(lease = id, "cannot delete lease, it expires: {e}");
        }
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
    pub fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }

    /// Whether containerd answers a version request within `within`.
    pub async fn answers(&self, within: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.version().version(())).await,
            Ok(Ok(_))
        )
    }
}
