//! An in-memory [`Runtime`] for unit tests of the task supervisor: containers are entries
//! in a map, processes exit when a test says so (or on the signals a real one would exit
//! on), and every call that changes something is recorded with the (tokio) time it was
//! made, so tests can assert the order and the timing of what the supervisor did.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::containers::{ContainerError, ContainerSummary, NewContainer, ProcessState};
use super::view::ViewError;
use super::Runtime;

/// Exit codes of a process ended by a signal, as runc reports them.
pub(crate) const EXIT_SIGTERM: u32 = 128 + nix::libc::SIGTERM as u32;
pub(crate) const EXIT_SIGKILL: u32 = 128 + nix::libc::SIGKILL as u32;

/// A call that changed the runtime's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Create(String),
    Start(String),
    Kill(String, u32),
    Delete(String),
}

struct Container {
    labels: BTreeMap<String, String>,
    process: ProcessState,
    /// The process ignores SIGTERM (only SIGKILL ends it).
    ignores_sigterm: bool,
    /// What a health check `exec` in it returns.
    health_exit: u32,
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, Container>,
    calls: Vec<(Instant, Call)>,
    next_pid: u32,
}

pub(crate) struct FakeRuntime {
    state: Mutex<State>,
    /// Bumped on every change, so waiters (ours and the tests') look again.
    changed: watch::Sender<u64>,
}

fn not_found(op: &'static str, id: &str) -> ContainerError {
    ContainerError::Rpc {
        op,
        id: id.to_string(),
        status: tonic::Status::not_found(format!("container {id} not found")),
    }
}

impl FakeRuntime {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                next_pid: 100,
                ..State::default()
            }),
            changed: watch::channel(0).0,
        }
    }

    fn change<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.state.lock().expect("no test panics while holding it"));
        self.changed.send_modify(|n| *n += 1);
        out
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().expect("no test panics while holding it"))
    }

    /// A container as an earlier agent left it.
    pub(crate) fn put(&self, id: &str, process: ProcessState) {
        self.change(|s| {
            s.containers.insert(
                id.to_string(),
                Container {
                    labels: BTreeMap::new(),
                    process,
                    ignores_sigterm: false,
                    health_exit: 0,
                },
            );
        });
    }

    /// Makes the running process of `id` exit with `code`.
    pub(crate) fn exit(&self, id: &str, code: u32) {
        self.change(|s| {
            let c = s.containers.get_mut(id).expect("the test created it");
            assert!(
                matches!(c.process, ProcessState::Running { .. }),
                "{id} is not running: {:?}",
                c.process
            );
            c.process = ProcessState::Stopped { exit_code: code };
        });
    }

    pub(crate) fn ignore_sigterm(&self, id: &str) {
        self.change(|s| {
            s.containers
                .get_mut(id)
                .expect("the test created it")
                .ignores_sigterm = true;
        });
    }

    pub(crate) fn process(&self, id: &str) -> Option<ProcessState> {
        self.read(|s| s.containers.get(id).map(|c| c.process))
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.read(|s| s.calls.iter().map(|(_, c)| c.clone()).collect())
    }

    /// When each call matching `call` was made, in order.
    pub(crate) fn times(&self, call: &Call) -> Vec<Instant> {
        self.read(|s| {
            s.calls
                .iter()
                .filter(|(_, c)| c == call)
                .map(|(t, _)| *t)
                .collect()
        })
    }

    /// Waits until `f` holds of the recorded calls; panics after an hour of (tokio's,
    /// usually paused) time, so a supervisor that never gets there fails the test instead
    /// of hanging it.
    pub(crate) async fn until(&self, what: &str, f: impl Fn(&[Call]) -> bool) {
        let mut rx = self.changed.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(3600), async {
            while !f(&self.calls()) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            waited.is_ok() && f(&self.calls()),
            "never saw {what}; calls: {:?}",
            self.calls()
        );
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn namespace(&self) -> &str {
        "fake"
    }

    async fn create(&self, c: NewContainer<'_>) -> Result<(), ContainerError> {
        self.change(|s| {
            s.calls
                .push((Instant::now(), Call::Create(c.id.to_string())));
            s.containers
                .entry(c.id.to_string())
                .or_insert_with(|| Container {
                    labels: c.labels.into_iter().collect(),
                    process: ProcessState::Absent,
                    ignores_sigterm: false,
                    health_exit: 0,
                });
        });
        Ok(())
    }

    async fn start(&self, id: &str, _stdio: &str) -> Result<u32, ContainerError> {
        self.change(|s| {
            s.calls.push((Instant::now(), Call::Start(id.to_string())));
            s.next_pid += 1;
            let pid = s.next_pid;
            let c = s
                .containers
                .get_mut(id)
                .ok_or_else(|| not_found("start", id))?;
            match c.process {
                ProcessState::Running { pid } => Ok(pid),
                _ => {
                    c.process = ProcessState::Running { pid };
                    Ok(pid)
                }
            }
        })
    }

    async fn state(&self, id: &str) -> Result<ProcessState, ContainerError> {
        Ok(self.process(id).unwrap_or(ProcessState::Absent))
    }

    async fn wait(&self, id: &str) -> Result<u32, ContainerError> {
        let mut rx = self.changed.subscribe();
        loop {
            match self.process(id) {
                Some(ProcessState::Stopped { exit_code }) => return Ok(exit_code),
                None => return Err(not_found("wait task", id)),
                Some(_) => {}
            }
            if rx.changed().await.is_err() {
                return Err(not_found("wait task", id));
            }
        }
    }

    async fn kill(&self, id: &str, signal: u32) -> Result<(), ContainerError> {
        self.change(|s| {
            s.calls
                .push((Instant::now(), Call::Kill(id.to_string(), signal)));
            if let Some(c) = s.containers.get_mut(id) {
                let ends = signal == nix::libc::SIGKILL as u32
                    || (signal == nix::libc::SIGTERM as u32 && !c.ignores_sigterm);
                if ends && matches!(c.process, ProcessState::Running { .. }) {
                    c.process = ProcessState::Stopped {
                        exit_code: 128 + signal,
                    };
                }
            }
        });
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), ContainerError> {
        self.change(|s| {
            s.calls.push((Instant::now(), Call::Delete(id.to_string())));
            s.containers.remove(id);
        });
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        _exec_id: &str,
        _process: serde_json::Value,
        _timeout: Duration,
    ) -> Result<u32, ContainerError> {
        self.read(|s| s.containers.get(id).map(|c| c.health_exit))
            .ok_or_else(|| not_found("exec", id))
    }

    async fn list(&self, label: &str) -> Result<Vec<ContainerSummary>, ContainerError> {
        Ok(self.read(|s| {
            s.containers
                .iter()
                .filter(|(_, c)| c.labels.contains_key(label))
                .map(|(id, c)| ContainerSummary {
                    id: id.clone(),
                    labels: c.labels.clone().into_iter().collect(),
                })
                .collect()
        }))
    }

    async fn image_files(
        &self,
        _chain_id: &str,
        paths: &[&str],
    ) -> Result<Vec<Option<String>>, ViewError> {
        Ok(vec![None; paths.len()])
    }
}
