//! The reconciler: converges what runs in containerd to the desired-state document. The
//! document is committed to the store before anything acts on it; each task then gets a
//! supervisor (`task`) that drives it through ECS's lifecycle. Local `apply` and the hub's
//! link feed the same `Handle::apply`.

mod health;
pub mod policy;
mod signal;
mod task;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skerry_proto::desired::{DesiredState, DesiredStatus, DesiredTask};
use skerry_proto::link::EventKind;
use skerry_proto::status::{ContainerReport, HealthStatus, TaskReport, TaskStatus};
use skerry_proto::taskdef::{ContainerDefinition, TaskDefinition};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::image::{ImageInfo, ImageStore};
use crate::network::Network;
use crate::runtime::containers::LABEL_TASK_ARN;
use crate::runtime::{Containerd, Runtime};
use crate::store::{Store, StoreError};

/// How often finished supervisors and old STOPPED tasks are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// How long supervisors get to finish what they are doing when the agent stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const COMMAND_QUEUE: usize = 16;
/// Local replacements of a service's tasks: the first is at once, then they back off.
const REPLACEMENT_BACKOFF: Duration = Duration::from_secs(10);
const REPLACEMENT_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A task that ran this long resets its service's backoff.
const REPLACEMENT_RESET: Duration = Duration::from_secs(600);

/// What the agent keeps per task, across restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub definition: TaskDefinition,
    pub report: TaskReport,
    /// Restarts per container, by restart policy.
    #[serde(default)]
    pub restarts: BTreeMap<String, u32>,
    /// When each container's current process started (epoch seconds).
    #[serde(default)]
    pub container_started: BTreeMap<String, f64>,
    /// Everything the task held (containers, network, scratch files) has been removed.
    #[serde(default)]
    pub cleaned: bool,
    /// The device started this task on its own (from the bootstrap document, or to replace
    /// a service's task) and no document has mentioned it since: documents that leave it
    /// out keep it running, as the hub may not have heard of it yet.
    #[serde(default)]
    pub local: bool,
    /// Not started before this time (epoch seconds): a local replacement of a task that
    /// keeps failing waits, as ECS's service scheduler does.
    #[serde(default)]
    pub start_after: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "generation {got} is older than the applied generation {current}; send a newer document"
    )]
    Stale { got: u64, current: u64 },
    #[error("cannot persist the desired state: {0}")]
    Store(#[from] StoreError),
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// What supervisors share.
pub(crate) struct Shared {
    pub cfg: Arc<Config>,
    /// containerd in the agent; a fake in the supervisor's unit tests.
    pub runtime: Arc<dyn Runtime>,
    pub images: ImageStore,
    pub network: Network,
    pub store: Store,
    /// The agent's own (static) binary: the shim's log driver and the containers' init.
    pub agent_bin: PathBuf,
    records: Mutex<BTreeMap<String, TaskRecord>>,
    netns: Mutex<HashMap<String, Option<PathBuf>>>,
    observer: OnceLock<Observer>,
    events: OnceLock<EventSink>,
    /// Supervisors ask the reconciler to replace their task through this.
    replacements: mpsc::Sender<(String, oneshot::Sender<Option<String>>)>,
}

/// Told the ARN of every task whose record changed, after the change is committed. Called
/// on the reconciler's path, so it must return at once (no I/O, no waiting).
pub type Observer = Arc<dyn Fn(&str) + Send + Sync>;

/// Something that happened to a task that its state alone does not say: a container
/// restarted, a task replaced on the device.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskEvent {
    pub kind: EventKind,
    pub task_arn: String,
    pub container: Option<String>,
    pub message: String,
}

/// Told every [`TaskEvent`]; like an [`Observer`], it must return at once.
pub type EventSink = Arc<dyn Fn(TaskEvent) + Send + Sync>;

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TaskRecord>> {
        // A panic while holding the lock leaves records that are still whole values.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self, arn: &str) -> Option<TaskRecord> {
        self.lock().get(arn).cloned()
    }

    /// Changes a task's record and commits it.
    pub(crate) fn update(&self, arn: &str, f: impl FnOnce(&mut TaskRecord)) {
        let snapshot = {
            let mut records = self.lock();
            let Some(r) = records.get_mut(arn) else {
                return;
            };
            f(r);
            r.clone()
        };
        // Progress is re-derived from containerd after a crash; where the task ended up
        // (STOPPED, its reason, cleaned) is not, so that is committed to disk at once.
        let result = if snapshot.report.last_status == TaskStatus::Stopped {
            self.store.put_task(arn, &snapshot)
        } else {
            self.store.put_task_lazily(arn, &snapshot)
        };
        if let Err(e) = result {
            warn!(task = %arn, "cannot persist task state: {e}");
        }
        self.observed(arn);
    }

    fn insert(&self, record: TaskRecord) -> Result<(), StoreError> {
        let arn = record.report.task_arn.clone();
        self.store.put_task(&arn, &record)?;
        self.lock().insert(arn.clone(), record);
        self.observed(&arn);
        Ok(())
    }

    fn observed(&self, arn: &str) {
        if let Some(o) = self.observer.get() {
            o(arn);
        }
    }

    pub(crate) fn event(
        &self,
        kind: EventKind,
        arn: &str,
        container: Option<&str>,
        message: String,
    ) {
        if let Some(sink) = self.events.get() {
            sink(TaskEvent {
                kind,
                task_arn: arn.to_string(),
                container: container.map(str::to_string),
                message,
            });
        }
    }

    /// Asks the reconciler to replace the task `arn`, which is stopping for good, with a
    /// new task of the same service; returns the new task's ARN, or `None` when the task is
    /// not one the device replaces (not a service's, or no longer wanted).
    pub(crate) async fn replace(&self, arn: &str) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.replacements.send((arn.to_string(), tx)).await.ok()?;
        rx.await.ok().flatten()
    }

    pub(crate) fn set_netns(&self, task_id: &str, path: Option<PathBuf>) {
        let mut m = self.netns.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(task_id.to_string(), path);
    }

    pub(crate) fn netns(&self, task_id: &str) -> Option<PathBuf> {
        let m = self.netns.lock().unwrap_or_else(|p| p.into_inner());
        m.get(task_id).cloned().flatten()
    }

    /// The image's /etc/passwd and /etc/group, read only when a user or group is given by
    /// name (numeric ids need neither).
    pub(crate) async fn image_users(
        &self,
        image: &ImageInfo,
        c: &ContainerDefinition,
    ) -> Result<(Option<String>, Option<String>), String> {
        let user = c
            .user
            .clone()
            .or_else(|| {
                image
                    .config
                    .config()
                    .as_ref()
                    .and_then(|x| x.user().clone())
            })
            .unwrap_or_default();
        let numeric = user
            .split(':')
            .all(|p| p.is_empty() || p.chars().all(|ch| ch.is_ascii_digit()));
        if numeric {
            return Ok((None, None));
        }
        let files = self
            .runtime
            .image_files(&image.chain_id, &["etc/passwd", "etc/group"])
            .await
            .map_err(|e| format!("container {}: image {}: {e}", c.name, image.name))?;
        let mut it = files.into_iter();
        Ok((it.next().flatten(), it.next().flatten()))
    }
}

/// A new task's record: PENDING, its containers too.
fn new_record(t: &DesiredTask) -> TaskRecord {
    let report = TaskReport {
        task_arn: t.task_arn.clone(),
        task_definition_arn: t.task_definition.task_definition_arn.clone(),
        last_status: TaskStatus::Pending,
        desired_status: t.desired_status,
        stopped_reason: None,
        stop_code: None,
        health_status: HealthStatus::Unknown,
        created_at: Some(now_secs()),
        started_at: None,
        stopping_at: None,
        stopped_at: None,
        containers: t
            .task_definition
            .container_definitions
            .iter()
            .map(|c| ContainerReport {
                name: c.name.clone(),
                runtime_id: None,
                last_status: TaskStatus::Pending,
                exit_code: None,
                reason: None,
                health_status: HealthStatus::Unknown,
                network_bindings: Vec::new(),
                image: c.image.clone(),
            })
            .collect(),
        group: t.group.clone(),
        replaces: None,
        replaced_by: None,
    };
    TaskRecord {
        task_id: t.task_id().to_string(),
        definition: t.task_definition.clone(),
        report,
        restarts: BTreeMap::new(),
        container_started: BTreeMap::new(),
        cleaned: false,
        local: false,
        start_after: None,
    }
}

/// The wait before the `n`th local replacement in a row of a service's task: none for the
/// first, then 10 s doubling up to 5 minutes.
fn replacement_delay(n: u32) -> Duration {
    match n {
        0 => Duration::ZERO,
        n => (REPLACEMENT_BACKOFF * 2u32.saturating_pow(n - 1)).min(REPLACEMENT_BACKOFF_MAX),
    }
}

pub(crate) fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

enum Command {
    /// A document from the hub or the local operator; `local` for the bootstrap document,
    /// whose tasks the device starts on its own.
    Apply {
        doc: DesiredState,
        local: bool,
        reply: oneshot::Sender<Result<u64, ApplyError>>,
    },
    /// Answered at once: the watchdog's proof that the reconciler is not stuck.
    Ping(oneshot::Sender<()>),
}

/// The way in: apply a document, read task reports.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl Handle {
    /// Commits `doc` and starts converging to it; returns the generation now applied.
    pub async fn apply(&self, doc: DesiredState) -> Result<u64, ApplyError> {
        self.send_apply(doc, false).await
    }

    /// Applies the bootstrap document: only when no document was ever applied, and its
    /// tasks count as started by the device on its own (see [`TaskRecord::local`]).
    /// Returns `None` when a document was applied before.
    pub async fn bootstrap(&self, doc: DesiredState) -> Result<Option<u64>, ApplyError> {
        if self.generation()?.is_some() {
            return Ok(None);
        }
        self.send_apply(doc, true).await.map(Some)
    }

    async fn send_apply(&self, doc: DesiredState, local: bool) -> Result<u64, ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Apply { doc, local, reply })
            .await
            .map_err(|_| ApplyError::ShuttingDown)?;
        rx.await.map_err(|_| ApplyError::ShuttingDown)?
    }

    /// Whether the reconciler answers within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let asked = async {
            self.tx.send(Command::Ping(tx)).await.ok()?;
            rx.await.ok()
        };
        matches!(tokio::time::timeout(timeout, asked).await, Ok(Some(())))
    }

    /// Every task the agent knows, oldest first, in the shape of DescribeTasks' `tasks`.
    pub fn tasks(&self) -> Vec<TaskReport> {
        let mut v: Vec<TaskReport> = self
            .shared
            .lock()
            .values()
            .map(|r| r.report.clone())
            .collect();
        v.sort_by(|a, b| {
            a.created_at
                .partial_cmp(&b.created_at)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a.task_arn.cmp(&b.task_arn))
        });
        v
    }

    /// Installs the observer of task changes (the link's reporter); only the first one
    /// installed is kept.
    pub fn observe(&self, observer: Observer) {
        let _ = self.shared.observer.set(observer);
    }

    /// Installs the sink of task events; only the first one installed is kept.
    pub fn observe_events(&self, sink: EventSink) {
        let _ = self.shared.events.set(sink);
    }

    /// The generation of the desired-state document applied last, if any.
    pub fn generation(&self) -> Result<Option<u64>, StoreError> {
        #[derive(Deserialize)]
        struct Generation {
            generation: u64,
        }
        Ok(self
            .shared
            .store
            .desired::<Generation>()?
            .map(|d| d.generation))
    }

    /// The log directory of `container` in the task named by ARN or id.
    pub fn log_dir(&self, task: &str, container: &str) -> Option<PathBuf> {
        let records = self.shared.lock();
        let r = records
            .values()
            .find(|r| r.report.task_arn == task || r.task_id == task)?;
        r.definition
            .container_definitions
            .iter()
            .any(|c| c.name == container)
            .then(|| self.shared.cfg.logs_dir().join(&r.task_id).join(container))
    }
}

struct Supervised {
    desired: watch::Sender<DesiredStatus>,
    join: JoinHandle<()>,
}

pub struct Reconciler {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    replacements: mpsc::Receiver<(String, oneshot::Sender<Option<String>>)>,
    desired: Option<DesiredState>,
    supervisors: HashMap<String, Supervised>,
    /// Per service group: local replacements in a row, and when the last one was made.
    replaced: HashMap<String, (u32, f64)>,
    shutdown: CancellationToken,
}

impl Reconciler {
    pub fn new(
        cfg: Arc<Config>,
        cd: Containerd,
        images: ImageStore,
        network: Network,
        store: Store,
        agent_bin: PathBuf,
        shutdown: CancellationToken,
    ) -> Result<(Self, Handle), StoreError> {
        let desired: Option<DesiredState> = store.desired()?;
        let records: BTreeMap<String, TaskRecord> = store
            .tasks::<TaskRecord>()?
            .into_iter()
            .map(|r| (r.report.task_arn.clone(), r))
            .collect();
        let (replace_tx, replacements) = mpsc::channel(COMMAND_QUEUE);
        let shared = Arc::new(Shared {
            cfg,
            runtime: Arc::new(cd),
            images,
            network,
            store,
            agent_bin,
            records: Mutex::new(records),
            netns: Mutex::new(HashMap::new()),
            observer: OnceLock::new(),
            events: OnceLock::new(),
            replacements: replace_tx,
        });
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let handle = Handle {
            tx,
            shared: shared.clone(),
        };
        Ok((
            Self {
                shared,
                rx,
                replacements,
                desired,
                supervisors: HashMap::new(),
                replaced: HashMap::new(),
                shutdown,
            },
            handle,
        ))
    }

    pub async fn run(mut self) {
        self.sweep_orphans().await;
        // Resume every task the store knows: running ones are adopted, unfinished stops
        // are finished.
        let arns: Vec<String> = self.shared.lock().keys().cloned().collect();
        for arn in arns {
            let status = self.desired_status(&arn);
            self.supervise(&arn, status);
        }
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Apply { doc, local, reply }) => {
                        let _ = reply.send(self.apply(doc, local));
                    }
                    Some(Command::Ping(reply)) => {
                        let _ = reply.send(());
                    }
                    None => break,
                },
                Some((arn, reply)) = self.replacements.recv() => {
                    let _ = reply.send(self.replace(&arn));
                }
                _ = sweep.tick() => self.prune(),
                _ = self.shutdown.cancelled() => break,
            }
        }
        info!("reconciler stopping; containers keep running");
        // The senders live until the supervisors are done: a closed channel would read as
        // "stop this task".
        let (senders, joins): (Vec<_>, Vec<_>) = self
            .supervisors
            .drain()
            .map(|(_, s)| (s.desired, s.join))
            .unzip();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, futures::future::join_all(joins)).await;
        drop(senders);
    }

    fn desired_status(&self, arn: &str) -> DesiredStatus {
        self.desired
            .as_ref()
            .and_then(|d| d.task(arn))
            .map(|t| t.desired_status)
            .unwrap_or(DesiredStatus::Stopped)
    }

    fn apply(&mut self, mut doc: DesiredState, local: bool) -> Result<u64, ApplyError> {
        if let Some(cur) = &self.desired {
            if doc.generation < cur.generation {
                return Err(ApplyError::Stale {
                    got: doc.generation,
                    current: cur.generation,
                });
            }
        }
        // Tasks the device started on its own: this document takes them on, refuses them,
        // or was written before the hub heard of them, and then they carry on.
        let mut mentioned = Vec::new();
        let mut refused = Vec::new();
        if !local {
            let pending: Vec<TaskRecord> = self
                .shared
                .lock()
                .values()
                .filter(|r| r.local)
                .cloned()
                .collect();
            for r in pending {
                let arn = r.report.task_arn.clone();
                if doc.task(&arn).is_some() {
                    mentioned.push(arn);
                } else if doc.refused.contains(&arn) {
                    refused.push(arn);
                } else if r.report.last_status != TaskStatus::Stopped
                    && self.desired_status(&arn) == DesiredStatus::Running
                {
                    doc.tasks.push(DesiredTask {
                        task_arn: arn,
                        task_definition: r.definition.clone(),
                        desired_status: DesiredStatus::Running,
                        group: r.report.group.clone(),
                    });
                }
            }
        }
        self.shared.store.set_desired(&doc)?;
        let generation = doc.generation;
        info!(generation, tasks = doc.tasks.len(), "desired state applied");
        for arn in mentioned {
            self.shared.update(&arn, |r| r.local = false);
        }
        for arn in refused {
            info!(task = %arn, "the hub refused a task the device started on its own; stopping it");
            self.shared.update(&arn, |r| {
                r.local = false;
                r.report.stopped_reason.get_or_insert_with(|| {
                    "Task stopped: the hub did not take on this task the device started on its own"
                        .into()
                });
                r.report
                    .stop_code
                    .get_or_insert_with(|| "UserInitiated".into());
            });
        }
        for t in &doc.tasks {
            if self.shared.record(&t.task_arn).is_none() {
                let mut record = new_record(t);
                record.local = local;
                self.shared.insert(record)?;
            }
        }
        let old = self.desired.replace(doc);
        let mut arns: Vec<String> = self.shared.lock().keys().cloned().collect();
        if let Some(old) = old {
            arns.extend(old.tasks.into_iter().map(|t| t.task_arn));
        }
        arns.sort();
        arns.dedup();
        for arn in arns {
            let status = self.desired_status(&arn);
            self.shared.update(&arn, |r| {
                if r.report.last_status != TaskStatus::Stopped {
                    r.report.desired_status = status;
                }
            });
            match self.supervisors.get(&arn) {
                Some(s) if !s.join.is_finished() => {
                    s.desired.send_replace(status);
                }
                _ => self.supervise(&arn, status),
            }
        }
        Ok(generation)
    }

    /// Replaces the service task `arn`, which stops for good, with a new task of the same
    /// service and definition, without waiting for the hub: committed to the desired state,
    /// reported with `replaces`, and the old task's report says `replacedBy`. A service
    /// whose tasks keep failing gets its replacements later and later.
    fn replace(&mut self, arn: &str) -> Option<String> {
        let old = self.desired.as_ref()?.task(arn)?.clone();
        if !old.replaced_locally() {
            return None;
        }
        let record = self.shared.record(arn)?;
        let group = old.group.clone()?;
        let now = now_secs();
        let ran_for = record.report.started_at.map_or(0.0, |s| now - s);
        let in_a_row = self.replaced.entry(group.clone()).or_insert((0, 0.0));
        if ran_for >= REPLACEMENT_RESET.as_secs_f64() {
            in_a_row.0 = 0;
        }
        let delay = replacement_delay(in_a_row.0);
        *in_a_row = (in_a_row.0 + 1, now);
        let prefix = arn.rsplit_once('/').map_or("", |(p, _)| p);
        let new_arn = if prefix.is_empty() {
            format!("{:032x}", rand::random::<u128>())
        } else {
            format!("{prefix}/{:032x}", rand::random::<u128>())
        };
        let task = DesiredTask {
            task_arn: new_arn.clone(),
            task_definition: old.task_definition.clone(),
            desired_status: DesiredStatus::Running,
            group: Some(group.clone()),
        };
        let mut doc = self.desired.clone()?;
        for t in &mut doc.tasks {
            if t.task_arn == arn {
                t.desired_status = DesiredStatus::Stopped;
            }
        }
        doc.tasks.push(task.clone());
        let mut new = new_record(&task);
        new.local = true;
        new.report.replaces = Some(arn.to_string());
        new.start_after = (!delay.is_zero()).then_some(now + delay.as_secs_f64());
        // The record first: a desired task without one would never start.
        if let Err(e) = self.shared.insert(new) {
            warn!(task = %arn, "cannot replace the task: {e}");
            return None;
        }
        if let Err(e) = self.shared.store.set_desired(&doc) {
            warn!(task = %arn, "cannot replace the task: {e}");
            let _ = self.shared.store.remove_task(&new_arn);
            self.shared.lock().remove(&new_arn);
            return None;
        }
        self.desired = Some(doc);
        self.shared.update(arn, |r| {
            r.report.replaced_by = Some(new_arn.clone());
            r.report.desired_status = DesiredStatus::Stopped;
        });
        let when = if delay.is_zero() {
            String::new()
        } else {
            format!(
                ", starting in {}s as the service's tasks keep failing",
                delay.as_secs()
            )
        };
        info!(task = %arn, replacement = %new_arn, "{group}: replacing a task that stopped for good{when}");
        self.shared.event(
            EventKind::TaskReplaced,
            arn,
            None,
            format!(
                "{group}: replaced on the device by task {}{when}",
                skerry_proto::desired::task_id_of(&new_arn)
            ),
        );
        self.supervise(&new_arn, DesiredStatus::Running);
        Some(new_arn)
    }

    fn supervise(&mut self, arn: &str, status: DesiredStatus) {
        let Some(record) = self.shared.record(arn) else {
            return;
        };
        if record.report.last_status == TaskStatus::Stopped && record.cleaned {
            return;
        }
        let (tx, rx) = watch::channel(status);
        let sup = task::Supervisor::new(self.shared.clone(), &record, rx, self.shutdown.clone());
        let join = tokio::spawn(sup.run());
        self.supervisors
            .insert(arn.to_string(), Supervised { desired: tx, join });
    }

    /// Removes containers and network attachments that no known task owns: left by a
    /// crash at a bad moment or by a store that was wiped.
    async fn sweep_orphans(&self) {
        let known: HashMap<String, bool> = self
            .shared
            .lock()
            .values()
            .map(|r| (r.report.task_arn.clone(), r.cleaned))
            .collect();
        match self.shared.runtime.list(LABEL_TASK_ARN).await {
            Ok(list) => {
                for c in list {
                    let owner = c.labels.get(LABEL_TASK_ARN).cloned().unwrap_or_default();
                    if known.get(&owner) == Some(&false) {
                        continue;
                    }
                    warn!(container = %c.id, task = %owner, "removing orphaned container");
                    if let Err(e) = self.shared.runtime.delete(&c.id).await {
                        warn!(container = %c.id, "cannot remove orphaned container: {e}");
                    }
                }
            }
            Err(e) => warn!("cannot list containers to find orphans: {e}"),
        }
        let live: Vec<String> = self
            .shared
            .lock()
            .values()
            .filter(|r| !r.cleaned)
            .map(|r| r.task_id.clone())
            .collect();
        match self.shared.network.attachments() {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !live.contains(id)) {
                    warn!(task = %id, "removing orphaned network attachment");
                    if let Err(e) = self.shared.network.teardown(&id).await {
                        warn!(task = %id, "cannot remove orphaned network attachment: {e}");
                    }
                }
            }
            Err(e) => warn!("cannot list network attachments: {e}"),
        }
    }

    /// Forgets finished supervisors, and STOPPED tasks that left the desired state longer
    /// ago than the retention.
    fn prune(&mut self) {
        self.supervisors.retain(|_, s| !s.join.is_finished());
        let retention = self.shared.cfg.stopped_retention_secs as f64;
        let now = now_secs();
        let old: Vec<TaskRecord> = self
            .shared
            .lock()
            .values()
            .filter(|r| {
                r.cleaned
                    && self
                        .desired
                        .as_ref()
                        .and_then(|d| d.task(&r.report.task_arn))
                        .is_none()
                    && r.report.stopped_at.is_some_and(|t| now - t > retention)
            })
            .cloned()
            .collect();
        for r in old {
            if let Err(e) = self.shared.store.remove_task(&r.report.task_arn) {
                warn!(task = %r.report.task_arn, "cannot prune task: {e}");
                continue;
            }
            self.shared.lock().remove(&r.report.task_arn);
            let _ = std::fs::remove_dir_all(self.shared.cfg.logs_dir().join(&r.task_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_back_off_from_the_second_on() {
        let secs: Vec<u64> = (0..8).map(|n| replacement_delay(n).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(replacement_delay(u32::MAX), REPLACEMENT_BACKOFF_MAX);
    }
}
