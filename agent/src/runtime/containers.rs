//! Containers and their processes: the calls the reconciler makes to run, watch, signal and
//! remove a container. Container ids are deterministic (`<task id>-<container name>`), so a
//! restarted agent finds and adopts what it created before instead of creating duplicates.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::{
    container::Runtime as ContainerRuntimeInfo, snapshots, Container, CreateContainerRequest,
    CreateTaskRequest, DeleteContainerRequest, DeleteProcessRequest, DeleteTaskRequest,
    ExecProcessRequest, GetContainerRequest, GetRequest, KillRequest, ListContainersRequest,
    StartRequest, WaitRequest,
};
use containerd_client::types::Mount;
use tonic::Code;

use super::view::ViewError;
use super::{Containerd, Runtime, SNAPSHOTTER};

/// The runc shim, present in containerd 1.6 and 2.x.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// How often a task create is tried while an earlier, interrupted create settles.
const CREATE_ATTEMPTS: u32 = 20;
/// How long creating and starting a container's process may take before its shim is taken
/// for stuck (`runtime::shim`). Generous: a first start on a slow SD card takes seconds.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How often a start is tried, a stuck shim killed before each retry.
const START_TRIES: u32 = 3;
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Labels the agent puts on every container it creates.
pub const LABEL_TASK_ARN: &str = "skerry.task-arn";
pub const LABEL_CONTAINER: &str = "skerry.container-name";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("containerd: {op} {id}: {status}")]
    Rpc {
        op: &'static str,
        id: String,
        status: tonic::Status,
    },
    #[error(
        "containerd did not create and start the process of {id} within {secs}s, {tries} \
         times (its shim was killed each time): see containerd's log"
    )]
    StartTimeout { id: String, secs: u64, tries: u32 },
    #[error("health check in {id} timed out after {secs}s")]
    ExecTimeout { id: String, secs: u64 },
    #[error("cannot encode the runtime spec of {id}: {source}")]
    Spec {
        id: String,
        source: serde_json::Error,
    },
}

impl ContainerError {
    fn rpc(op: &'static str, id: &str) -> impl FnOnce(tonic::Status) -> Self {
        let id = id.to_string();
        move |status| Self::Rpc { op, id, status }
    }

    /// True when containerd could not be reached (restarting, socket gone): the caller
    /// retries instead of treating the container as failed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Rpc { status, .. } if status.code() == Code::Unavailable)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Rpc { status, .. } if status.code() == Code::NotFound)
    }
}

/// The state of a container's process, as containerd reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessState {
    Created,
    Running {
        pid: u32,
    },
    Stopped {
        exit_code: u32,
    },
    /// No process: never started, or deleted.
    Absent,
}

#[derive(Clone, Debug)]
pub struct ContainerSummary {
    pub id: String,
    pub labels: HashMap<String, String>,
}

/// What creating a container needs.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub image: &'a str,
    /// The image's top snapshot, the parent of the container's writable layer.
    pub chain_id: &'a str,
    pub labels: HashMap<String, String>,
    pub spec: serde_json::Value,
}

impl Containerd {
    /// Creates the container record and its writable snapshot. Existing ones are kept:
    /// after a crash between the two calls the second attempt completes the first.
    pub async fn create_container(&self, c: NewContainer<'_>) -> Result<(), ContainerError> {
        // Until the container record references it, only this label keeps the garbage
        // collector off the new snapshot; `remove` deletes it either way.
        let prepare = snapshots::PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: c.id.into(),
            parent: c.chain_id.into(),
            labels: HashMap::from([("containerd.io/gc.root".to_string(), c.id.to_string())]),
        };
        match self.snapshots().prepare(self.request(prepare)).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(ContainerError::rpc("prepare snapshot", c.id)(s)),
        }
        let spec = serde_json::to_vec(&c.spec).map_err(|source| ContainerError::Spec {
            id: c.id.into(),
            source,
        })?;
        let container = Container {
            id: c.id.into(),
            labels: c.labels,
            image: c.image.into(),
            runtime: Some(ContainerRuntimeInfo {
                name: RUNC_RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: spec,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: c.id.into(),
            ..Default::default()
        };
        let req = CreateContainerRequest {
            container: Some(container),
        };
        match self.containers().create(self.request(req)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(ContainerError::rpc("create container", c.id)(s)),
        }
    }

    pub async fn container_exists(&self, id: &str) -> Result<bool, ContainerError> {
        let req = GetContainerRequest { id: id.into() };
        match self.containers().get(self.request(req)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(ContainerError::rpc("get container", id)(s)),
        }
    }

    /// Every container of this namespace that carries `label`.
    pub async fn list_containers(
        &self,
        label: &str,
    ) -> Result<Vec<ContainerSummary>, ContainerError> {
        let req = ListContainersRequest {
            filters: vec![format!("labels.\"{label}\"")],
        };
        let resp = self
            .containers()
            .list(self.request(req))
            .await
            .map_err(ContainerError::rpc("list containers", label))?;
        Ok(resp
            .into_inner()
            .containers
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id,
                labels: c.labels,
            })
            .collect())
    }

    /// Starts a new process for the container, replacing a stopped one. `stdio` is the
    /// URI the shim sends stdout and stderr to. A create and start that take longer than
    /// [`START_DEADLINE`] are abandoned, the container's shim killed, and tried again.
    pub async fn start(&self, id: &str, stdio: &str) -> Result<u32, ContainerError> {
        let mut tries = 0;
        loop {
            tries += 1;
            if let Ok(r) = tokio::time::timeout(START_DEADLINE, self.start_once(id, stdio)).await {
                return r;
            }
            let killed = super::shim::kill_all(self.socket(), self.namespace(), id);
            if tries == START_TRIES {
                return Err(ContainerError::StartTimeout {
                    id: id.to_string(),
                    secs: START_DEADLINE.as_secs(),
                    tries,
                });
            }
            tracing::warn!(
                container = id,
                ?killed,
                "containerd did not create and start the process within {}s: killed the \
                 container's shim, trying again",
                START_DEADLINE.as_secs()
            );
        }
    }

    async fn start_once(&self, id: &str, stdio: &str) -> Result<u32, ContainerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.state(id).await? {
                ProcessState::Running { pid } => return Ok(pid),
                ProcessState::Stopped { .. } | ProcessState::Created => {
                    self.delete_process(id).await?
                }
                ProcessState::Absent => {}
            }
            match self.create_process(id, stdio).await {
                // A Create abandoned by `start`'s deadline or from an agent killed
                // mid-call may still be in flight in containerd: its bundle exists and the
                // task not yet, or its clean-up removes the bundle under this Create
                // ("failed to start shim: open .../config.json: no such file or
                // directory", seen on a loaded device right after a boot). Wait for it to
                // settle, then replace it.
                Err(ContainerError::Rpc { status, .. })
                    if attempt < CREATE_ATTEMPTS && create_raced(&status) =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        tracing::debug!(container = id, "process created");
        let resp = self
            .tasks()
            .start(self.request(StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(ContainerError::rpc("start task", id))?;
        Ok(resp.into_inner().pid)
    }

    async fn create_process(&self, id: &str, stdio: &str) -> Result<(), ContainerError> {
        let mounts = self
            .snapshots()
            .mounts(self.request(snapshots::MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
            }))
            .await
            .map_err(ContainerError::rpc("snapshot mounts", id))?
            .into_inner()
            .mounts;
        let req = CreateTaskRequest {
            container_id: id.into(),
            rootfs: mounts
                .into_iter()
                .map(|m| Mount {
                    r#type: m.r#type,
                    source: m.source,
                    target: m.target,
                    options: m.options,
                })
                .collect(),
            stdout: stdio.into(),
            stderr: stdio.into(),
            ..Default::default()
        };
        self.tasks()
            .create(self.request(req))
            .await
            .map_err(ContainerError::rpc("create task", id))?;
        Ok(())
    }

    pub async fn state(&self, id: &str) -> Result<ProcessState, ContainerError> {
        let req = GetRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        let process = match self.tasks().get(self.request(req)).await {
            Ok(r) => r.into_inner().process,
            Err(s) if s.code() == Code::NotFound => return Ok(ProcessState::Absent),
            Err(s) => return Err(ContainerError::rpc("get task", id)(s)),
        };
        use containerd_client::types::v1::Status;
        Ok(match process {
            None => ProcessState::Absent,
            Some(p) => match Status::try_from(p.status).unwrap_or(Status::Unknown) {
                Status::Created => ProcessState::Created,
                Status::Stopped => ProcessState::Stopped {
                    exit_code: p.exit_status,
                },
                _ => ProcessState::Running { pid: p.pid },
            },
        })
    }

    /// Waits for the container's process to exit and returns its exit code. Returns at
    /// once for a process that already exited, so it also serves adoption after a restart.
    pub async fn wait(&self, id: &str) -> Result<u32, ContainerError> {
        let req = WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        let resp = self
            .tasks()
            .wait(self.request(req))
            .await
            .map_err(ContainerError::rpc("wait task", id))?;
        Ok(resp.into_inner().exit_status)
    }

    /// Signals the container's processes. A process that is already gone is not an error.
    pub async fn kill(&self, id: &str, signal: u32) -> Result<(), ContainerError> {
        let req = KillRequest {
            container_id: id.into(),
            exec_id: String::new(),
            signal,
            all: true,
        };
        match self.tasks().kill(self.request(req)).await {
            Ok(_) => Ok(()),
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(ContainerError::rpc("kill task", id)(s)),
        }
    }

    /// Removes the container's (stopped) process so a new one can be started.
    pub async fn delete_process(&self, id: &str) -> Result<(), ContainerError> {
        let req = DeleteTaskRequest {
            container_id: id.into(),
        };
        match self.tasks().delete(self.request(req)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerError::rpc("delete task", id)(s)),
        }
    }

    /// Removes the container, its process and its writable snapshot; nothing left is fine.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        if let ProcessState::Running { .. } = self.state(id).await? {
            self.kill(id, nix::libc::SIGKILL as u32).await?;
            let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id)).await;
        }
        self.delete_process(id).await?;
        match self
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.into() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(ContainerError::rpc("delete container", id)(s)),
        }
        let req = snapshots::RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.into(),
        };
        match self.snapshots().remove(self.request(req)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerError::rpc("remove snapshot", id)(s)),
        }
    }

    /// Runs `process` (an OCI process spec) inside the running container, without stdio,
    /// and returns its exit code; kills it after `timeout`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: serde_json::Value,
        timeout: Duration,
    ) -> Result<u32, ContainerError> {
        let spec = serde_json::to_vec(&process).map_err(|source| ContainerError::Spec {
            id: id.into(),
            source,
        })?;
        let req = ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: spec,
            }),
            ..Default::default()
        };
        self.tasks()
            .exec(self.request(req))
            .await
            .map_err(ContainerError::rpc("exec", id))?;
        let result = async {
            self.tasks()
                .start(self.request(StartRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                }))
                .await
                .map_err(ContainerError::rpc("start exec", id))?;
            // An exited exec process stays until DeleteProcess, so waiting after Start
            // cannot miss a fast exit.
            let mut tasks = self.tasks();
            let wait = tasks.wait(self.request(WaitRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }));
            match tokio::time::timeout(timeout, wait).await {
                Ok(r) => Ok(r
                    .map_err(ContainerError::rpc("wait exec", id))?
                    .into_inner()
                    .exit_status),
                Err(_) => {
                    let _ = self
                        .tasks()
                        .kill(self.request(KillRequest {
                            container_id: id.into(),
                            exec_id: exec_id.into(),
                            signal: nix::libc::SIGKILL as u32,
                            all: false,
                        }))
                        .await;
                    Err(ContainerError::ExecTimeout {
                        id: id.into(),
                        secs: timeout.as_secs(),
                    })
                }
            }
        }
        .await;
        let _ = self
            .tasks()
            .delete_process(self.request(DeleteProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }))
            .await;
        result
    }
}

#[async_trait::async_trait]
impl Runtime for Containerd {
    fn namespace(&self) -> &str {
        Containerd::namespace(self)
    }
    async fn create(&self, c: NewContainer<'_>) -> Result<(), ContainerError> {
        self.create_container(c).await
    }
    async fn start(&self, id: &str, stdio: &str) -> Result<u32, ContainerError> {
        Containerd::start(self, id, stdio).await
    }
    async fn state(&self, id: &str) -> Result<ProcessState, ContainerError> {
        Containerd::state(self, id).await
    }
    async fn wait(&self, id: &str) -> Result<u32, ContainerError> {
        Containerd::wait(self, id).await
    }
    async fn kill(&self, id: &str, signal: u32) -> Result<(), ContainerError> {
        Containerd::kill(self, id, signal).await
    }
    async fn delete(&self, id: &str) -> Result<(), ContainerError> {
        self.remove(id).await
    }
    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: serde_json::Value,
        timeout: Duration,
    ) -> Result<u32, ContainerError> {
        Containerd::exec(self, id, exec_id, process, timeout).await
    }
    async fn list(&self, label: &str) -> Result<Vec<ContainerSummary>, ContainerError> {
        self.list_containers(label).await
    }
    async fn image_files(
        &self,
        chain_id: &str,
        paths: &[&str],
    ) -> Result<Vec<Option<String>>, ViewError> {
        self.read_image_files(chain_id, paths).await
    }
}

/// Whether a failed Create met another Create of the same container still in flight.
fn create_raced(status: &tonic::Status) -> bool {
    let message = status.message();
    status.code() == Code::AlreadyExists
        || message.contains("file exists")
        || (message.contains("failed to start shim")
            && message.contains("no such file or directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_racing_an_abandoned_one_is_retried_and_nothing_else_is() {
        let raced = [
            tonic::Status::already_exists("task web: already exists"),
            tonic::Status::unknown("mkdir /run/containerd/x/web: file exists"),
            tonic::Status::unknown(
                "failed to start shim: open /run/containerd/io.containerd.runtime.v2.task/\
                 skerry/web/config.json: no such file or directory",
            ),
        ];
        for s in &raced {
            assert!(create_raced(s), "{s:?}");
        }
        let real = [
            tonic::Status::unknown("failed to start shim: exec: \"runc\": not found"),
            tonic::Status::not_found("container web: not found"),
            tonic::Status::unknown("open /etc/x: no such file or directory"),
        ];
        for s in &real {
            assert!(!create_raced(s), "{s:?}");
        }
    }
}
