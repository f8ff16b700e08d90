//! One supervisor per task: pulls its images, sets up its network, creates its containers,
//! starts them in `dependsOn` order, watches exits and health, restarts per
//! `restartPolicy`, and stops everything (SIGTERM, `stopTimeout`, SIGKILL) when an essential
//! container exits for good or the desired status becomes STOPPED. Every state change is
//! committed to the store as it happens. The agent shutting down leaves containers running:
//! the next agent adopts them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skerry_proto::desired::DesiredStatus;
use skerry_proto::link::EventKind;
use skerry_proto::status::{HealthStatus, NetworkBinding, TaskStatus};
use skerry_proto::taskdef::{
    ContainerDefinition, DependencyCondition, NetworkMode as EcsNetworkMode, TaskDefinition,
    VolumeKind,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::policy::{self, Condition, Readiness, Restart, View};
use super::signal::Signal;
use super::{now_secs, Shared, TaskRecord};
use crate::network::{self, PortRequest};
use crate::runtime::containers::{NewContainer, ProcessState, LABEL_CONTAINER, LABEL_TASK_ARN};
use crate::{logs, spec};

/// ECS `stopCode`s the agent sets.
const STOP_FAILED_TO_START: &str = "TaskFailedToStart";
const STOP_ESSENTIAL_EXITED: &str = "EssentialContainerExited";
const STOP_USER: &str = "UserInitiated";
/// How long to wait for a killed process to be reaped before giving up on it.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Consecutive restarts are forgotten once a container has run this long.
const RESTART_RESET: Duration = Duration::from_secs(600);

#[derive(Debug, PartialEq)]
enum Outcome {
    /// The agent is shutting down: leave everything running for the next agent.
    Shutdown,
    Stop {
        reason: String,
        code: &'static str,
    },
}

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    arn: String,
    task_id: String,
    def: TaskDefinition,
    desired: watch::Receiver<DesiredStatus>,
    shutdown: CancellationToken,
}

/// The per-container state of a running task.
#[derive(Default)]
struct Running {
    views: BTreeMap<String, View>,
    started: HashMap<String, Instant>,
    restart_due: HashMap<String, Instant>,
    consecutive: HashMap<String, u32>,
    watchers: HashMap<String, CancellationToken>,
    never: BTreeMap<String, String>,
    process: HashMap<String, serde_json::Value>,
}

impl Supervisor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        record: &TaskRecord,
        desired: watch::Receiver<DesiredStatus>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shared,
            arn: record.report.task_arn.clone(),
            task_id: record.task_id.clone(),
            def: record.definition.clone(),
            desired,
            shutdown,
        }
    }

    fn container_id(&self, name: &str) -> String {
        format!("{}-{}", self.task_id, name)
    }

    fn container(&self, name: &str) -> Option<&ContainerDefinition> {
        self.def
            .container_definitions
            .iter()
            .find(|c| c.name == name)
    }

    fn update(&self, f: impl FnOnce(&mut TaskRecord)) {
        self.shared.update(&self.arn, f);
    }

    fn set_container(
        &self,
        name: &str,
        f: impl FnOnce(&mut skerry_proto::status::ContainerReport),
    ) {
        self.update(|r| {
            if let Some(c) = r.report.containers.iter_mut().find(|c| c.name == name) {
                f(c);
            }
        });
    }

    /// The supervisor's whole life. Its future stays allocated while the task runs, so the
    /// steps that run once or rarely (pull, network, create, start, stop, cleanup) are
    /// boxed: their state, kilobytes each, exists only while they run.
    pub(crate) async fn run(mut self) {
        let Some((last_status, cleaned)) = self
            .shared
            .record(&self.arn)
            .map(|r| (r.report.last_status, r.cleaned))
        else {
            return;
        };
        if last_status == TaskStatus::Stopped {
            if !cleaned {
                Box::pin(self.cleanup()).await;
            }
            return;
        }
        let outcome = if *self.desired.borrow() == DesiredStatus::Stopped {
            Outcome::Stop {
                reason: "Task stopped: its desired status is STOPPED".into(),
                code: STOP_USER,
            }
        } else {
            self.run_task().await
        };
        match outcome {
            Outcome::Shutdown => {}
            Outcome::Stop { reason, code } => {
                // A service's task is replaced before it is stopped, so that the hub hears
                // of the replacement no later than of the stop.
                if code == STOP_ESSENTIAL_EXITED && *self.desired.borrow() == DesiredStatus::Running
                {
                    self.shared.replace(&self.arn).await;
                }
                Box::pin(self.stop_all(&reason, code)).await;
                Box::pin(self.cleanup()).await;
            }
        }
    }

    async fn run_task(&mut self) -> Outcome {
        info!(task = %self.arn, "task pending");
        if let Some(o) = self.hold().await {
            return o;
        }
        self.update(|r| {
            if r.report.last_status != TaskStatus::Running {
                r.report.last_status = TaskStatus::Pending;
            }
        });
        let images = match Box::pin(self.pull()).await {
            Ok(i) => i,
            Err(o) => return o,
        };
        let bindings = match Box::pin(self.attach()).await {
            Ok(b) => b,
            Err(o) => return o,
        };
        self.update(|r| {
            for c in &mut r.report.containers {
                c.network_bindings = bindings.get(&c.name).cloned().unwrap_or_default();
            }
        });
        let mut run = Running::default();
        if let Err(o) = Box::pin(self.create_containers(&images, &mut run)).await {
            return o;
        }
        self.operate(run).await
    }

    /// Runs the task whose containers exist: adopts what already runs, then starts, watches
    /// and restarts until the task must stop or the agent shuts down.
    async fn operate(&mut self, mut run: Running) -> Outcome {
        let (tx, mut rx) = mpsc::channel::<Signal>(64);
        if let Err(o) = Box::pin(self.adopt(&mut run, &tx)).await {
            return o;
        }
        let result = self.supervise(&mut run, &tx, &mut rx).await;
        for token in run.watchers.values() {
            token.cancel();
        }
        result
    }

    /// Waits out the record's `start_after`, unless the task is stopped or the agent stops
    /// first.
    async fn hold(&mut self) -> Option<Outcome> {
        let at = self.shared.record(&self.arn)?.start_after?;
        let wait = at - now_secs();
        if !wait.is_finite() || wait <= 0.0 {
            return None;
        }
        let until = tokio::time::sleep(Duration::from_secs_f64(wait));
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => return None,
                changed = self.desired.changed() => {
                    if changed.is_err() && self.shutdown.is_cancelled() {
                        return Some(Outcome::Shutdown);
                    }
                    if changed.is_err() || *self.desired.borrow() == DesiredStatus::Stopped {
                        return Some(Outcome::Stop {
                            reason: "Task stopped: its desired status is STOPPED".into(),
                            code: STOP_USER,
                        });
                    }
                }
                _ = self.shutdown.cancelled() => return Some(Outcome::Shutdown),
            }
        }
    }

    async fn pull(&self) -> Result<HashMap<String, crate::image::ImageInfo>, Outcome> {
        let mut out = HashMap::new();
        for c in &self.def.container_definitions {
            let pulled = tokio::select! {
                r = self.shared.images.ensure(&c.image, false) => r,
                _ = self.shutdown.cancelled() => return Err(Outcome::Shutdown),
            };
            match pulled {
                Ok(info) => {
                    out.insert(c.name.clone(), info);
                }
                Err(e) => {
                    let reason = format!("CannotPullContainerError: {e}");
                    self.set_container(&c.name, |r| r.reason = Some(reason.clone()));
                    return Err(Outcome::Stop {
                        reason,
                        code: STOP_FAILED_TO_START,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Sets up the task's network namespace and returns each container's port bindings.
    async fn attach(&self) -> Result<BTreeMap<String, Vec<NetworkBinding>>, Outcome> {
        let mode = match self.def.network_mode.unwrap_or(EcsNetworkMode::Bridge) {
            EcsNetworkMode::Host => network::NetworkMode::Host,
            EcsNetworkMode::None => network::NetworkMode::None,
            _ => network::NetworkMode::Bridge,
        };
        let mut requests = Vec::new();
        for c in &self.def.container_definitions {
            for p in c.port_mappings.iter().flatten() {
                requests.push(PortRequest {
                    container_port: p.container_port(),
                    host_port: p.fixed_host_port().unwrap_or(0),
                    protocol: protocol_to_net(p.protocol()),
                });
            }
        }
        let attachment = match self
            .shared
            .network
            .setup(&self.task_id, mode, &requests)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                return Err(Outcome::Stop {
                    reason: format!("network setup failed: {e}"),
                    code: STOP_FAILED_TO_START,
                })
            }
        };
        self.shared
            .set_netns(&self.task_id, attachment.netns.clone());
        let mut out: BTreeMap<String, Vec<NetworkBinding>> = BTreeMap::new();
        for c in &self.def.container_definitions {
            let mine = out.entry(c.name.clone()).or_default();
            for p in c.port_mappings.iter().flatten() {
                let proto = protocol_to_net(p.protocol());
                if let Some(b) = attachment
                    .bindings
                    .iter()
                    .find(|b| b.container_port == p.container_port() && b.protocol == proto)
                {
                    mine.push(NetworkBinding {
                        bind_ip: b.host_ip.to_string(),
                        container_port: b.container_port,
                        host_port: b.host_port,
                        protocol: p.protocol(),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn create_containers(
        &self,
        images: &HashMap<String, crate::image::ImageInfo>,
        run: &mut Running,
    ) -> Result<(), Outcome> {
        let fail = |reason: String| Outcome::Stop {
            reason,
            code: STOP_FAILED_TO_START,
        };
        let task_dir = self.shared.cfg.tasks_dir().join(&self.task_id);
        let mut volumes = HashMap::new();
        for v in self.def.volumes.iter().flatten() {
            let path = match v.kind() {
                VolumeKind::Host(p) => PathBuf::from(p),
                VolumeKind::Task => task_dir.join("volumes").join(&v.name),
            };
            std::fs::create_dir_all(&path).map_err(|e| {
                fail(format!(
                    "cannot create volume {} at {}: {e}",
                    v.name,
                    path.display()
                ))
            })?;
            volumes.insert(v.name.clone(), path);
        }
        crate::cgroup::apply(
            self.shared.runtime.namespace(),
            &self.task_id,
            self.def.cpu_units(),
            self.def.memory_mib(),
        )
        .map_err(|e| fail(format!("cannot set the task's limits: {e}")))?;
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let netns = self.shared.netns(&self.task_id);
        for c in &self.def.container_definitions {
            let id = self.container_id(&c.name);
            let image = images
                .get(&c.name)
                .ok_or_else(|| fail(format!("no image was resolved for container {}", c.name)))?;
            let etc_dir = task_dir.join("etc").join(&c.name);
            let files = spec::etc_files(&self.def, c, &host_resolv);
            write_etc(&etc_dir, &files)
                .map_err(|e| fail(format!("cannot write {}: {e}", etc_dir.display())))?;
            let users = self
                .shared
                .image_users(image, c)
                .await
                .map_err(|e| fail(format!("CannotCreateContainerError: {e}")))?;
            let input = spec::SpecInput {
                task: &self.def,
                container: c,
                image: &image.config,
                netns: match &netns {
                    Some(p) => spec::NetNs::Path(p.clone()),
                    None => spec::NetNs::Host,
                },
                cgroups_path: format!(
                    "/skerry/{}/{}/{}",
                    self.shared.runtime.namespace(),
                    self.task_id,
                    c.name
                ),
                volumes: &volumes,
                etc_dir: Some(etc_dir.clone()),
                passwd: users.0.as_deref(),
                group: users.1.as_deref(),
                init: Some(self.shared.agent_bin.clone()),
                pids_max: self.shared.cfg.container_pids_max,
            };
            tracing::debug!(task = %self.arn, container = %c.name, "building spec");
            let built = spec::build(&input)
                .map_err(|e| fail(format!("CannotCreateContainerError: {e}")))?;
            let spec_json = serde_json::to_value(&built)
                .map_err(|e| fail(format!("CannotCreateContainerError: {e}")))?;
            if let Some(p) = spec_json.get("process") {
                run.process.insert(c.name.clone(), p.clone());
            }
            let mut labels: HashMap<String, String> = c
                .docker_labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            labels.insert(LABEL_TASK_ARN.into(), self.arn.clone());
            labels.insert(LABEL_CONTAINER.into(), c.name.clone());
            self.shared
                .runtime
                .create(NewContainer {
                    id: &id,
                    image: &image.name,
                    chain_id: &image.chain_id,
                    labels,
                    spec: spec_json,
                })
                .await
                .map_err(|e| fail(format!("CannotCreateContainerError: {e}")))?;
            tracing::debug!(task = %self.arn, container = %c.name, "container created");
            self.set_container(&c.name, |r| {
                r.runtime_id = Some(id.clone());
                r.image = c.image.clone();
            });
            run.views.insert(c.name.clone(), View::default());
        }
        Ok(())
    }

    /// Takes over what an earlier agent (or a boot before) left in containerd.
    async fn adopt(&self, run: &mut Running, tx: &mpsc::Sender<Signal>) -> Result<(), Outcome> {
        let record = self.shared.record(&self.arn);
        for c in &self.def.container_definitions {
            let id = self.container_id(&c.name);
            let state = self.retry(|| self.shared.runtime.state(&id)).await?;
            if matches!(state, ProcessState::Created | ProcessState::Absent) {
                continue;
            }
            // Started by an earlier agent: its start time counts for restartAttemptPeriod.
            let since = record
                .as_ref()
                .and_then(|r| r.container_started.get(&c.name).copied())
                .unwrap_or_else(now_secs);
            let age = Duration::from_secs_f64((now_secs() - since).max(0.0));
            run.started.insert(
                c.name.clone(),
                Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            );
            let v = run.views.entry(c.name.clone()).or_default();
            v.started = true;
            v.running = true;
            match state {
                ProcessState::Running { .. } => {
                    info!(task = %self.arn, container = %c.name, "adopted running container");
                    self.set_container(&c.name, |r| r.last_status = TaskStatus::Running);
                    self.watch(run, c, tx);
                }
                ProcessState::Stopped { exit_code } => {
                    // It exited while no agent watched: decide about it now.
                    let _ = tx
                        .send(Signal::Exited {
                            name: c.name.clone(),
                            code: exit_code as i32,
                        })
                        .await;
                }
                ProcessState::Created | ProcessState::Absent => {}
            }
        }
        Ok(())
    }

    async fn supervise(
        &mut self,
        run: &mut Running,
        tx: &mpsc::Sender<Signal>,
        rx: &mut mpsc::Receiver<Signal>,
    ) -> Outcome {
        let deps = self.dependencies();
        let order = policy::start_order(
            &deps
                .iter()
                .map(|(n, d)| (n.clone(), d.iter().map(|(x, _)| x.clone()).collect()))
                .collect::<Vec<_>>(),
        );
        loop {
            if let Err(o) = self.start_ready(run, &order, &deps, tx).await {
                return o;
            }
            self.refresh_task_status(run);

            let next_restart = run.restart_due.values().min().copied();
            tokio::select! {
                Some(sig) = rx.recv() => match sig {
                    Signal::Exited { name, code } => {
                        if let Some(o) = self.exited(run, &name, code) {
                            return o;
                        }
                    }
                    Signal::Health { name, status } => self.health(run, &name, status),
                },
                changed = self.desired.changed() => {
                    // The reconciler drops the sender when it stops: that is a shutdown, and
                    // a shutdown leaves containers running. select! may see it before the
                    // cancellation.
                    if changed.is_err() && self.shutdown.is_cancelled() {
                        return Outcome::Shutdown;
                    }
                    if changed.is_err() || *self.desired.borrow() == DesiredStatus::Stopped {
                        return Outcome::Stop {
                            reason: "Task stopped: its desired status is STOPPED".into(),
                            code: STOP_USER,
                        };
                    }
                }
                _ = sleep_until(next_restart) => {
                    if let Err(o) = self.restart_due(run, tx).await {
                        return o;
                    }
                }
                _ = self.shutdown.cancelled() => return Outcome::Shutdown,
            }
        }
    }

    /// Each container's `dependsOn`, as (name, [(dependency, condition)]).
    fn dependencies(&self) -> Vec<(String, Vec<(String, Condition)>)> {
        self.def
            .container_definitions
            .iter()
            .map(|c| {
                let d = c
                    .depends_on
                    .iter()
                    .flatten()
                    .map(|d| (d.container_name.clone(), condition(d.condition)))
                    .collect();
                (c.name.clone(), d)
            })
            .collect()
    }

    /// Starts, in `order`, every container not yet started whose dependencies allow it now;
    /// gives up on those whose dependencies never will.
    async fn start_ready(
        &self,
        run: &mut Running,
        order: &[String],
        deps: &[(String, Vec<(String, Condition)>)],
        tx: &mpsc::Sender<Signal>,
    ) -> Result<(), Outcome> {
        for name in order {
            let view = run.views.get(name).cloned().unwrap_or_default();
            if view.started || run.restart_due.contains_key(name) || run.never.contains_key(name) {
                continue;
            }
            let my_deps = deps
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, d)| d.clone())
                .unwrap_or_default();
            match policy::readiness(&my_deps, &run.views) {
                Readiness::Ready => Box::pin(self.start(run, name, tx)).await?,
                Readiness::Wait => {}
                Readiness::Never(why) => {
                    let essential = self.container(name).is_some_and(|c| c.is_essential());
                    warn!(task = %self.arn, container = %name, "{why}");
                    self.set_container(name, |r| r.reason = Some(why.clone()));
                    if essential {
                        return Err(Outcome::Stop {
                            reason: format!("Essential container {name} cannot start: {why}"),
                            code: STOP_FAILED_TO_START,
                        });
                    }
                    run.never.insert(name.clone(), why);
                }
            }
        }
        Ok(())
    }

    /// Starts again the containers whose restart pause is over.
    async fn restart_due(
        &self,
        run: &mut Running,
        tx: &mpsc::Sender<Signal>,
    ) -> Result<(), Outcome> {
        let now = Instant::now();
        let due: Vec<String> = run
            .restart_due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            run.restart_due.remove(&name);
            info!(task = %self.arn, container = %name, "restarting container");
            self.update(|r| *r.restarts.entry(name.clone()).or_default() += 1);
            Box::pin(self.start(run, &name, tx)).await?;
        }
        Ok(())
    }

    async fn start(
        &self,
        run: &mut Running,
        name: &str,
        tx: &mpsc::Sender<Signal>,
    ) -> Result<(), Outcome> {
        let Some(c) = self.container(name).cloned() else {
            return Ok(());
        };
        let id = self.container_id(name);
        let log_dir = self.shared.cfg.logs_dir().join(&self.task_id).join(name);
        if let Err(e) = std::fs::create_dir_all(&log_dir) {
            warn!(task = %self.arn, container = %name, "cannot create log dir {}: {e}", log_dir.display());
        }
        let limits = logs::LogLimits {
            max_bytes: self.shared.cfg.log_max_bytes,
            max_files: self.shared.cfg.log_max_files as usize,
        };
        if let Err(e) = limits.store(&log_dir) {
            warn!(task = %self.arn, container = %name, "cannot write log limits: {e}");
        }
        let uri = logs::stdio_uri(&self.shared.agent_bin, &log_dir);
        match self.retry(|| self.shared.runtime.start(&id, &uri)).await {
            Ok(pid) => {
                info!(task = %self.arn, container = %name, pid, "container started");
                let v = run.views.entry(name.to_string()).or_default();
                *v = View {
                    started: true,
                    running: true,
                    ..View::default()
                };
                run.started.insert(name.to_string(), Instant::now());
                let now = now_secs();
                self.update(|r| {
                    r.container_started.insert(name.to_string(), now);
                    if let Some(cr) = r.report.containers.iter_mut().find(|x| x.name == name) {
                        cr.last_status = TaskStatus::Running;
                        cr.exit_code = None;
                        cr.reason = None;
                        cr.health_status = HealthStatus::Unknown;
                    }
                });
                self.watch(run, &c, tx);
                Ok(())
            }
            Err(Outcome::Stop { reason, .. }) => {
                let reason = format!("CannotStartContainerError: {reason}");
                self.set_container(name, |r| {
                    r.reason = Some(reason.clone());
                    r.last_status = TaskStatus::Stopped;
                });
                if c.is_essential() {
                    Err(Outcome::Stop {
                        reason,
                        code: STOP_FAILED_TO_START,
                    })
                } else {
                    run.never.insert(name.to_string(), reason);
                    Ok(())
                }
            }
            Err(o) => Err(o),
        }
    }

    /// Spawns the exit waiter and the health checker of a started container.
    fn watch(&self, run: &mut Running, c: &ContainerDefinition, tx: &mpsc::Sender<Signal>) {
        let token = self.shutdown.child_token();
        if let Some(old) = run.watchers.insert(c.name.clone(), token.clone()) {
            old.cancel();
        }
        let id = self.container_id(&c.name);
        let rt = self.shared.runtime.clone();
        let name = c.name.clone();
        let sender = tx.clone();
        let t = token.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                let waited = tokio::select! {
                    r = rt.wait(&id) => r,
                    _ = t.cancelled() => return,
                };
                match waited {
                    Ok(code) => {
                        let _ = sender
                            .send(Signal::Exited {
                                name,
                                code: code as i32,
                            })
                            .await;
                        return;
                    }
                    Err(e) if e.is_not_found() => {
                        let _ = sender.send(Signal::Exited { name, code: 255 }).await;
                        return;
                    }
                    Err(e) => {
                        // containerd restarting: wait again once it is back.
                        warn!(container = %id, "waiting on container failed, retrying: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = t.cancelled() => return,
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        if let (Some(hc), Some(process)) =
            (c.health_check.clone(), run.process.get(&c.name).cloned())
        {
            let rt = self.shared.runtime.clone();
            let id = self.container_id(&c.name);
            let name = c.name.clone();
            let sender = tx.clone();
            tokio::spawn(async move {
                super::health::check(rt, id, name, hc, process, sender, token).await;
            });
        }
    }

    fn exited(&self, run: &mut Running, name: &str, code: i32) -> Option<Outcome> {
        if let Some(t) = run.watchers.remove(name) {
            t.cancel();
        }
        let v = run.views.entry(name.to_string()).or_default();
        v.running = false;
        v.exit_code = Some(code);
        self.set_container(name, |r| {
            r.last_status = TaskStatus::Stopped;
            r.exit_code = Some(code);
        });
        let c = self.container(name)?;
        let ran_for = run
            .started
            .get(name)
            .map(|s| s.elapsed())
            .unwrap_or_default();
        if ran_for > RESTART_RESET {
            run.consecutive.remove(name);
        }
        let consecutive = run.consecutive.get(name).copied().unwrap_or(0);
        let policy = c.restart_policy.as_ref().map(|p| policy::RestartPolicy {
            enabled: p.enabled,
            ignored_exit_codes: p.ignored_exit_codes.clone().unwrap_or_default(),
            attempt_period: Duration::from_secs(p.restart_attempt_period_secs().into()),
        });
        match policy::restart(policy.as_ref(), code, ran_for, consecutive) {
            Restart::After(delay) => {
                info!(task = %self.arn, container = %name, exit_code = code, "container exited; restarting in {delay:?}");
                self.shared.event(
                    EventKind::ContainerRestarted,
                    &self.arn,
                    Some(name),
                    format!(
                        "exited with code {code}; restarted by its restart policy in {:.1}s",
                        delay.as_secs_f64()
                    ),
                );
                run.consecutive.insert(name.to_string(), consecutive + 1);
                run.restart_due
                    .insert(name.to_string(), Instant::now() + delay);
                None
            }
            Restart::No(why) => {
                info!(task = %self.arn, container = %name, exit_code = code, "container exited; not restarted: {why}");
                self.shared.event(
                    EventKind::ContainerExited,
                    &self.arn,
                    Some(name),
                    format!("exited with code {code}; not restarted: {why}"),
                );
                if c.is_essential() {
                    Some(Outcome::Stop {
                        reason: format!(
                            "Essential container in task exited: {name} exited with code {code}"
                        ),
                        code: STOP_ESSENTIAL_EXITED,
                    })
                } else {
                    None
                }
            }
        }
    }

    fn health(&self, run: &mut Running, name: &str, status: HealthStatus) {
        let v = run.views.entry(name.to_string()).or_default();
        v.healthy = status == HealthStatus::Healthy;
        v.unhealthy = status == HealthStatus::Unhealthy;
        info!(task = %self.arn, container = %name, health = ?status, "health changed");
        self.set_container(name, |r| r.health_status = status);
        let status = serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        self.shared.event(
            EventKind::HealthChanged,
            &self.arn,
            Some(name),
            format!("health is now {status}"),
        );
    }

    fn refresh_task_status(&self, run: &Running) {
        let essential: Vec<&ContainerDefinition> = self
            .def
            .container_definitions
            .iter()
            .filter(|c| c.is_essential())
            .collect();
        let all_up = essential
            .iter()
            .all(|c| run.views.get(&c.name).is_some_and(|v| v.running));
        let checked: Vec<&View> = essential
            .iter()
            .filter(|c| c.health_check.is_some())
            .filter_map(|c| run.views.get(&c.name))
            .collect();
        let health = if checked.iter().any(|v| v.unhealthy) {
            HealthStatus::Unhealthy
        } else if !checked.is_empty() && checked.iter().all(|v| v.healthy) {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unknown
        };
        let now = now_secs();
        self.update(|r| {
            r.report.health_status = health;
            if all_up && r.report.last_status != TaskStatus::Running {
                info!(task = %r.report.task_arn, "task running");
                r.report.last_status = TaskStatus::Running;
                r.report.started_at.get_or_insert(now);
            }
        });
    }

    /// Stops every container, dependants first: SIGTERM, then SIGKILL after its
    /// `stopTimeout`.
    async fn stop_all(&self, reason: &str, code: &'static str) {
        info!(task = %self.arn, "stopping task: {reason}");
        let now = now_secs();
        self.update(|r| {
            r.report.last_status = TaskStatus::Stopping;
            r.report.stopping_at.get_or_insert(now);
            r.report
                .stopped_reason
                .get_or_insert_with(|| reason.to_string());
            r.report.stop_code.get_or_insert_with(|| code.to_string());
        });
        let deps: Vec<(String, Vec<String>)> = self
            .def
            .container_definitions
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.depends_on
                        .iter()
                        .flatten()
                        .map(|d| d.container_name.clone())
                        .collect(),
                )
            })
            .collect();
        for name in policy::stop_order(&deps) {
            let Some(c) = self.container(&name) else {
                continue;
            };
            let id = self.container_id(&name);
            let code = self.stop_container(&id, c.stop_timeout_secs()).await;
            self.set_container(&name, |r| {
                r.last_status = TaskStatus::Stopped;
                if code.is_some() {
                    r.exit_code = code;
                }
            });
        }
    }

    async fn stop_container(&self, id: &str, timeout_secs: u32) -> Option<i32> {
        let rt = &self.shared.runtime;
        match rt.state(id).await {
            Ok(ProcessState::Running { .. }) => {}
            Ok(ProcessState::Stopped { exit_code }) => return Some(exit_code as i32),
            _ => return None,
        }
        let _ = rt.kill(id, nix::libc::SIGTERM as u32).await;
        let timeout = Duration::from_secs(timeout_secs.into());
        if let Ok(Ok(code)) = tokio::time::timeout(timeout, rt.wait(id)).await {
            return Some(code as i32);
        }
        warn!(container = %id, "did not stop within {timeout_secs}s of SIGTERM; sending SIGKILL");
        let _ = rt.kill(id, nix::libc::SIGKILL as u32).await;
        match tokio::time::timeout(KILL_GRACE, rt.wait(id)).await {
            Ok(Ok(code)) => Some(code as i32),
            _ => None,
        }
    }

    /// Removes the task's containers, network and scratch files; its logs stay until the
    /// record is pruned.
    async fn cleanup(&self) {
        let mut clean = true;
        for c in &self.def.container_definitions {
            let id = self.container_id(&c.name);
            if let Err(e) = self.shared.runtime.delete(&id).await {
                warn!(task = %self.arn, container = %c.name, "cannot remove container: {e}");
                clean = false;
            }
        }
        // Network::teardown tries again itself where the plugins' iptables calls race.
        if let Err(e) = self.shared.network.teardown(&self.task_id).await {
            warn!(task = %self.arn, "cannot tear down the network: {e}");
            clean = false;
        }
        self.shared.set_netns(&self.task_id, None);
        crate::cgroup::remove(self.shared.runtime.namespace(), &self.task_id);
        let dir = self.shared.cfg.tasks_dir().join(&self.task_id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(task = %self.arn, "cannot remove {}: {e}", dir.display());
            }
        }
        let now = now_secs();
        self.update(|r| {
            r.report.last_status = TaskStatus::Stopped;
            r.report.desired_status = DesiredStatus::Stopped;
            r.report.stopped_at.get_or_insert(now);
            r.report
                .stopped_reason
                .get_or_insert_with(|| "Task stopped".into());
            for c in &mut r.report.containers {
                c.last_status = TaskStatus::Stopped;
            }
            r.cleaned = clean;
        });
        info!(task = %self.arn, "task stopped");
    }

    /// Runs a containerd call, waiting out containerd being unavailable (restarting) until
    /// the agent shuts down.
    async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, Outcome>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::runtime::containers::ContainerError>>,
    {
        let mut delay = Duration::from_millis(200);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_unavailable() => {
                    warn!(task = %self.arn, "containerd unavailable, retrying: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => return Err(Outcome::Shutdown),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(Outcome::Stop {
                        reason: e.to_string(),
                        code: STOP_FAILED_TO_START,
                    })
                }
            }
        }
    }
}

fn condition(c: DependencyCondition) -> Condition {
    match c {
        DependencyCondition::Start => Condition::Start,
        DependencyCondition::Complete => Condition::Complete,
        DependencyCondition::Success => Condition::Success,
        DependencyCondition::Healthy => Condition::Healthy,
    }
}

fn protocol_to_net(p: skerry_proto::taskdef::Protocol) -> network::Protocol {
    match p {
        skerry_proto::taskdef::Protocol::Udp => network::Protocol::Udp,
        _ => network::Protocol::Tcp,
    }
}

fn write_etc(dir: &std::path::Path, files: &spec::EtcFiles) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("hosts"), &files.hosts)?;
    std::fs::write(dir.join("resolv.conf"), &files.resolv_conf)?;
    std::fs::write(dir.join("hostname"), &files.hostname)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
