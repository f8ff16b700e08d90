//! The scheduler: which instance each task goes to, and what a service needs to hold its
//! count. [`place`], [`plan_replica`] and [`plan_daemon`] are pure; [`run_tasks`] and
//! [`reconcile_service`] apply them inside one store transaction, so two callers never
//! hand out the same room; [`run`] is the service loop.
//!
//! Placement follows ECS's default for EXTERNAL: only ACTIVE instances of the cluster with
//! room for the task's CPU, memory and fixed host ports; among them the one with the fewest
//! live tasks of the same group (`family:NAME` or `service:NAME`), then the most memory left,
//! then the lowest instance id. An instance whose agent is disconnected keeps its tasks and
//! stays a candidate: a device offline still runs what it was given.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use serde_json::{json, Value};
use skerry_proto::desired::DesiredStatus;
use skerry_proto::status::{HealthStatus, TaskStatus};
use skerry_proto::taskdef::{NetworkMode, TaskDefinition};
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::fleet::Fleet;
use crate::store::{InstanceLoad, ServiceRow, StartFailures, StoreError, TaskRow, Txn};

/// How often the service loop looks at every service even when nothing poked it.
pub const SERVICE_TICK: Duration = Duration::from_secs(1);
/// Stopped tasks stay visible this long, as in ECS.
pub const STOPPED_TASK_RETENTION: Duration = Duration::from_secs(3600);
const RETENTION_SWEEP: Duration = Duration::from_secs(60);
/// A service whose task failed to start waits this long before placing the next one, twice
/// as long after each further failure in a row, up to [`THROTTLE_MAX`]; a task of it that
/// reaches RUNNING resets the count. An image that does not exist would otherwise have
/// the service place a task every tick, for ever.
pub const THROTTLE_BASE: Duration = Duration::from_secs(10);
pub const THROTTLE_MAX: Duration = Duration::from_secs(15 * 60);
/// Task ids are 32 hex digits, as in ECS.
const TASK_ID_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "cluster {cluster} has no ACTIVE container instances; register a device with an \
         activation first"
    )]
    NoInstances { cluster: String },
    #[error("task definition {family}:{revision} cannot be run: {message}")]
    BadDefinition {
        family: String,
        revision: i64,
        message: String,
    },
}

/// What a task reserves on its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// CPU units (1024 per core).
    pub cpu: i64,
    /// MiB.
    pub memory: i64,
    /// Fixed host ports, as `8080/tcp`.
    pub ports: Vec<String>,
}

impl Demand {
    /// As ECS counts it: the task-level `cpu` and `memory` when given, else the sum over the
    /// containers of `cpu` and of `memoryReservation` (or `memory` without one).
    pub fn of(td: &TaskDefinition) -> Demand {
        let containers = &td.container_definitions;
        let cpu = td.cpu_units().map(u64::from).unwrap_or_else(|| {
            containers
                .iter()
                .map(|c| u64::from(c.cpu.unwrap_or(0)))
                .sum()
        });
        let memory = td.memory_mib().unwrap_or_else(|| {
            containers
                .iter()
                .map(|c| c.memory_reservation.or(c.memory).unwrap_or(0))
                .sum()
        });
        Demand {
            cpu: i64::try_from(cpu).unwrap_or(i64::MAX),
            memory: i64::try_from(memory).unwrap_or(i64::MAX),
            ports: host_ports(td),
        }
    }
}

/// The host ports a running task holds on its device, by the rule the agent checks a
/// document with: `containerPort` in host mode, a fixed `hostPort` otherwise.
pub fn host_ports(td: &TaskDefinition) -> Vec<String> {
    let host_mode = td.network_mode() == NetworkMode::Host;
    let mut ports = BTreeSet::new();
    for pm in td
        .container_definitions
        .iter()
        .flat_map(|c| c.port_mappings.iter().flatten())
    {
        let port = if host_mode {
            Some(pm.container_port())
        } else {
            pm.fixed_host_port()
        };
        if let Some(p) = port {
            ports.insert(format!("{p}/{}", pm.protocol().as_str()));
        }
    }
    ports.into_iter().collect()
}

/// An instance as placement sees it; updated as tasks are placed on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub arn: String,
    pub cpu_left: i64,
    pub memory_left: i64,
    pub ports: BTreeSet<String>,
    pub group_tasks: i64,
}

impl From<&InstanceLoad> for Candidate {
    fn from(l: &InstanceLoad) -> Self {
        Candidate {
            id: l.id.clone(),
            arn: l.arn.clone(),
            cpu_left: l.cpu_units - l.cpu_used,
            memory_left: l.memory_mib - l.memory_used,
            ports: l.ports.iter().cloned().collect(),
            group_tasks: l.group_tasks,
        }
    }
}

/// The resource no candidate had enough of, in ECS's failure words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    Memory,
    Cpu,
    Ports,
}

impl Shortage {
    pub fn reason(self) -> &'static str {
        match self {
            Shortage::Memory => "RESOURCE:MEMORY",
            Shortage::Cpu => "RESOURCE:CPU",
            Shortage::Ports => "RESOURCE:PORTS",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Shortage::Memory => "memory",
            Shortage::Cpu => "CPU",
            Shortage::Ports => "ports",
        }
    }
}

/// A task that found no room, and the candidate that came closest (`None` with no
/// candidates at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub shortage: Shortage,
    pub closest: Option<usize>,
}

fn fits_memory(c: &Candidate, d: &Demand) -> bool {
    c.memory_left >= d.memory
}

fn fits_cpu(c: &Candidate, d: &Demand) -> bool {
    c.cpu_left >= d.cpu
}

fn fits_ports(c: &Candidate, d: &Demand) -> bool {
    d.ports.iter().all(|p| !c.ports.contains(p))
}

/// Places `count` tasks of one group, one at a time, each seeing the ones before it: an
/// index into `candidates` per task, or why it found no room.
pub fn place(
    candidates: &mut [Candidate],
    demand: &Demand,
    count: usize,
) -> Vec<Result<usize, Unplaced>> {
    (0..count)
        .map(|_| {
            let best = candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    fits_memory(c, demand) && fits_cpu(c, demand) && fits_ports(c, demand)
                })
                .min_by(|(_, a), (_, b)| {
                    a.group_tasks
                        .cmp(&b.group_tasks)
                        .then(b.memory_left.cmp(&a.memory_left))
                        .then(a.id.cmp(&b.id))
                })
                .map(|(i, _)| i);
            match best {
                Some(i) => {
                    let c = &mut candidates[i];
                    c.cpu_left -= demand.cpu;
                    c.memory_left -= demand.memory;
                    c.ports.extend(demand.ports.iter().cloned());
                    c.group_tasks += 1;
                    Ok(i)
                }
                None => Err(shortage(candidates, demand)),
            }
        })
        .collect()
}

/// Why nothing fits: memory if no instance has enough, else CPU among those with the
/// memory, else ports; with the candidate that came closest.
fn shortage(candidates: &[Candidate], d: &Demand) -> Unplaced {
    let by = |pick: &dyn Fn(&Candidate) -> i64, keep: &dyn Fn(&Candidate) -> bool| {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| keep(c))
            .max_by(|(_, a), (_, b)| pick(a).cmp(&pick(b)).then(b.id.cmp(&a.id)))
            .map(|(i, _)| i)
    };
    if !candidates.iter().any(|c| fits_memory(c, d)) {
        Unplaced {
            shortage: Shortage::Memory,
            closest: by(&|c| c.memory_left, &|_| true),
        }
    } else if !candidates
        .iter()
        .any(|c| fits_memory(c, d) && fits_cpu(c, d))
    {
        Unplaced {
            shortage: Shortage::Cpu,
            closest: by(&|c| c.cpu_left, &|c| fits_memory(c, d)),
        }
    } else {
        Unplaced {
            shortage: Shortage::Ports,
            closest: by(&|c| c.memory_left, &|c| fits_memory(c, d) && fits_cpu(c, d)),
        }
    }
}

/// The words of a placement failure for the closest candidate.
pub fn shortage_detail(u: &Unplaced, candidates: &[Candidate], d: &Demand) -> String {
    let Some(c) = u.closest.and_then(|i| candidates.get(i)) else {
        return "no container instance to place on".into();
    };
    match u.shortage {
        Shortage::Memory => format!(
            "the task reserves {} MiB of memory; the most any instance has left is {} MiB ({})",
            d.memory, c.memory_left, c.id
        ),
        Shortage::Cpu => format!(
            "the task reserves {} CPU units; the most any instance with the memory has left is {} ({})",
            d.cpu, c.cpu_left, c.id
        ),
        Shortage::Ports => format!(
            "the task needs host ports {}; every instance with room already has one of them taken",
            d.ports.join(", ")
        ),
    }
}

/// A live task of a service, as its plan sees it. Lists are in creation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTask {
    pub arn: String,
    pub instance_id: String,
    /// Of the service's current deployment.
    pub current: bool,
    /// Reported RUNNING.
    pub running: bool,
}

/// What a service needs now: tasks to stop, and how many to start (REPLICA) or where
/// (DAEMON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub stop: Vec<String>,
    pub start: usize,
    pub start_on: Vec<String>,
}

/// A REPLICA service: `desired` tasks of the current deployment. Surplus ones stop newest
/// first. Tasks of older deployments are replaced without dropping below
/// `min_healthy_percent` of `desired` RUNNING nor going above `max_percent` in total, as
/// ECS's rolling update does.
pub fn plan_replica(
    desired: usize,
    max_percent: u32,
    min_healthy_percent: u32,
    tasks: &[ServiceTask],
) -> Plan {
    let current: Vec<&ServiceTask> = tasks.iter().filter(|t| t.current).collect();
    let outdated: Vec<&ServiceTask> = tasks.iter().filter(|t| !t.current).collect();
    let kept = current.len().min(desired);
    let mut stop: Vec<String> = current[kept..]
        .iter()
        .rev()
        .map(|t| t.arn.clone())
        .collect();
    let min_healthy = (desired * min_healthy_percent as usize).div_ceil(100);
    let mut healthy = current[..kept].iter().filter(|t| t.running).count()
        + outdated.iter().filter(|t| t.running).count();
    let mut outdated_kept = outdated.len();
    // Those not yet running serve nothing; then the oldest running ones, while enough run.
    let order = outdated
        .iter()
        .filter(|t| !t.running)
        .chain(outdated.iter().filter(|t| t.running));
    for t in order {
        if !t.running || healthy > min_healthy {
            stop.push(t.arn.clone());
            outdated_kept -= 1;
            healthy -= usize::from(t.running);
        }
    }
    let max_total = (desired * max_percent as usize / 100).max(desired);
    let start = (desired - kept).min(max_total.saturating_sub(kept + outdated_kept));
    Plan {
        stop,
        start,
        start_on: Vec::new(),
    }
}

/// A DAEMON service: one task of the current deployment on each of `instances`; older
/// deployments' tasks stop at once (ECS's daemon default of 0% minimum healthy). Linear in
/// instances and tasks: the service loop runs it every tick for the whole fleet.
pub fn plan_daemon(instances: &[String], tasks: &[ServiceTask]) -> Plan {
    let mut plan = Plan::default();
    let wanted: HashSet<&str> = instances.iter().map(String::as_str).collect();
    let mut here: HashMap<&str, Vec<&ServiceTask>> = HashMap::new();
    for t in tasks {
        if !t.current || !wanted.contains(t.instance_id.as_str()) {
            plan.stop.push(t.arn.clone());
        }
        if t.current {
            here.entry(t.instance_id.as_str()).or_default().push(t);
        }
    }
    for id in instances {
        match here.get(id.as_str()).map(Vec::as_slice).unwrap_or_default() {
            [] => plan.start_on.push(id.clone()),
            [_, surplus @ ..] => plan
                .stop
                .extend(surplus.iter().rev().map(|t| t.arn.clone())),
        }
    }
    plan
}

/// How long a service waits after its latest task that failed to start, with `failures`
/// of them in a row.
pub fn throttle_delay(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => THROTTLE_BASE
            .saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
            .min(THROTTLE_MAX),
    }
}

/// What a new task is made from.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub cluster: String,
    pub family: String,
    pub revision: i64,
    pub definition: TaskDefinition,
    pub group: String,
    pub started_by: Option<String>,
    pub service_id: Option<i64>,
    pub client_token: Option<String>,
    /// ECS tag list.
    pub tags: Value,
}

/// Loads and parses a definition revision; `None` when the hub has no such revision.
pub fn load_definition(
    tx: &Txn<'_>,
    family: &str,
    revision: Option<i64>,
) -> Result<Option<(crate::store::TaskDefinition, TaskDefinition)>, SchedError> {
    let Some(stored) = tx.task_definition(family, revision)? else {
        return Ok(None);
    };
    let bad = |message: String| SchedError::BadDefinition {
        family: stored.family.clone(),
        revision: stored.revision,
        message,
    };
    let parsed = TaskDefinition::parse(&stored.body).map_err(|e| bad(e.to_string()))?;
    // Container ids are `<task id>-<name>`; the agent refuses a document with a bad one.
    let example_task_id = "0".repeat(TASK_ID_BYTES * 2);
    for c in &parsed.container_definitions {
        let id = format!("{example_task_id}-{}", c.name);
        if !skerry_proto::desired::is_containerd_id(&id) {
            return Err(bad(format!(
                "container name {:?} is too long or unusable for containerd: the task id ({} \
                 characters), '-' and the name must make at most 76 letters and digits in runs \
                 separated by single '.', '_' or '-'",
                c.name,
                example_task_id.len()
            )));
        }
    }
    Ok(Some((stored, parsed)))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A new ECS deployment id: `ecs-svc/` and 19 digits.
pub fn new_deployment_id() -> String {
    format!(
        "ecs-svc/{:019}",
        rand::thread_rng().next_u64() % 10_000_000_000_000_000_000
    )
}

pub fn task_definition_arn(api: &Api, family: &str, revision: i64) -> String {
    api.arn("ecs", &format!("task-definition/{family}:{revision}"))
}

/// DescribeTasks' container objects before the device reports: each container PENDING.
fn initial_containers(td: &TaskDefinition) -> Vec<Value> {
    td.container_definitions
        .iter()
        .map(|c| {
            let mut v = json!({
                "name": c.name,
                "image": c.image,
                "lastStatus": "PENDING",
                "healthStatus": "UNKNOWN",
                "networkBindings": [],
                "networkInterfaces": [],
                "cpu": c.cpu.unwrap_or(0).to_string(),
            });
            if let Some(m) = c.memory {
                v["memory"] = m.to_string().into();
            }
            if let Some(m) = c.memory_reservation {
                v["memoryReservation"] = m.to_string().into();
            }
            v
        })
        .collect()
}

/// A new PENDING task of `spec` on `instance`.
pub fn new_task(api: &Api, spec: &TaskSpec, instance: &Candidate, now: f64) -> TaskRow {
    let demand = Demand::of(&spec.definition);
    TaskRow {
        seq: 0,
        arn: api.arn(
            "ecs",
            &format!("task/{}/{}", spec.cluster, random_hex(TASK_ID_BYTES)),
        ),
        cluster: spec.cluster.clone(),
        instance_id: instance.id.clone(),
        instance_arn: instance.arn.clone(),
        family: Some(spec.family.clone()),
        revision: Some(spec.revision),
        task_definition_arn: Some(task_definition_arn(api, &spec.family, spec.revision)),
        service_id: spec.service_id,
        started_by: spec.started_by.clone(),
        group: spec.group.clone(),
        client_token: spec.client_token.clone(),
        last_status: TaskStatus::Pending,
        desired_status: DesiredStatus::Running,
        health_status: HealthStatus::Unknown,
        cpu: demand.cpu,
        memory: demand.memory,
        ports: demand.ports,
        containers: initial_containers(&spec.definition),
        stopped_reason: None,
        stop_code: None,
        tags: spec.tags.clone(),
        version: 1,
        desired_generation: 0,
        created_at: now,
        started_at: None,
        stopping_at: None,
        stopped_at: None,
        updated_at: now,
    }
}

/// A task that found no room: the closest instance's ARN and what it lacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub arn: String,
    pub shortage: Shortage,
    pub detail: String,
}

#[derive(Debug, Clone, Default)]
pub struct Placed {
    pub tasks: Vec<TaskRow>,
    pub failures: Vec<Failure>,
}

/// Places and stores `count` tasks of `spec`, on `only` if given.
pub fn run_tasks(
    tx: &mut Txn<'_>,
    api: &Api,
    spec: &TaskSpec,
    count: usize,
    only: Option<&str>,
    now: f64,
) -> Result<Placed, SchedError> {
    let loads = tx.placement_loads(&spec.cluster, &spec.group, only)?;
    if loads.is_empty() {
        return Err(SchedError::NoInstances {
            cluster: spec.cluster.clone(),
        });
    }
    let mut candidates: Vec<Candidate> = loads.iter().map(Candidate::from).collect();
    let demand = Demand::of(&spec.definition);
    let mut out = Placed::default();
    for r in place(&mut candidates, &demand, count) {
        match r {
            Ok(i) => {
                let mut row = new_task(api, spec, &candidates[i], now);
                tx.save_task(None, &mut row, now)?;
                out.tasks.push(row);
            }
            Err(u) => out.failures.push(Failure {
                arn: u
                    .closest
                    .and_then(|i| candidates.get(i))
                    .map(|c| c.arn.clone())
                    .unwrap_or_default(),
                shortage: u.shortage,
                detail: shortage_detail(&u, &candidates, &demand),
            }),
        }
    }
    Ok(out)
}

/// Places and stores one task of `spec` on each of `instances` (a DAEMON service's), from
/// one read of the cluster's load: asking per instance made a fleet-wide change a query
/// per instance. For each, what [`run_tasks`] with `count` 1 and `only` that instance gives.
pub fn run_tasks_on(
    tx: &mut Txn<'_>,
    api: &Api,
    spec: &TaskSpec,
    instances: &[String],
    now: f64,
) -> Result<Vec<Result<Placed, SchedError>>, SchedError> {
    let loads = tx.placement_loads(&spec.cluster, &spec.group, None)?;
    let by_id: HashMap<&str, &InstanceLoad> = loads.iter().map(|l| (l.id.as_str(), l)).collect();
    let demand = Demand::of(&spec.definition);
    let mut out = Vec::with_capacity(instances.len());
    for id in instances {
        let Some(load) = by_id.get(id.as_str()) else {
            out.push(Err(SchedError::NoInstances {
                cluster: spec.cluster.clone(),
            }));
            continue;
        };
        let mut candidates = [Candidate::from(*load)];
        let mut placed = Placed::default();
        match place(&mut candidates, &demand, 1).remove(0) {
            Ok(_) => {
                let mut row = new_task(api, spec, &candidates[0], now);
                tx.save_task(None, &mut row, now)?;
                placed.tasks.push(row);
            }
            Err(u) => placed.failures.push(Failure {
                arn: candidates[0].arn.clone(),
                shortage: u.shortage,
                detail: shortage_detail(&u, &candidates, &demand),
            }),
        }
        out.push(Ok(placed));
    }
    Ok(out)
}

/// Sets a task's desired status to STOPPED (once: a second stop keeps the first reason).
pub fn stop_task(
    tx: &mut Txn<'_>,
    task: &TaskRow,
    reason: &str,
    code: &str,
    now: f64,
) -> Result<TaskRow, StoreError> {
    if task.desired_status == DesiredStatus::Stopped {
        return Ok(task.clone());
    }
    let mut after = task.clone();
    after.desired_status = DesiredStatus::Stopped;
    after.stopping_at.get_or_insert(now);
    after
        .stopped_reason
        .get_or_insert_with(|| reason.to_string());
    after.stop_code.get_or_insert_with(|| code.to_string());
    tx.save_task(Some(task), &mut after, now)?;
    Ok(after)
}

/// The short id ECS messages use for a task or instance: the ARN's last segment.
pub fn short_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// What one pass over a service did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceOutcome {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
}

fn tasks_list(arns: &[String]) -> String {
    arns.iter()
        .map(|a| format!("(task {})", short_id(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Brings one service toward its plan: stops what it should, places what it can, and
/// records ECS-style service events. A DRAINING service stops its tasks and turns INACTIVE
/// once none is left running.
pub fn reconcile_service(
    tx: &mut Txn<'_>,
    api: &Api,
    service_id: i64,
    now: f64,
) -> Result<ServiceOutcome, SchedError> {
    let mut out = ServiceOutcome::default();
    let Some(mut s) = tx.service(service_id)? else {
        return Ok(out);
    };
    let reason = format!(
        "Scaling activity initiated by (deployment {})",
        s.deployment_id
    );
    let code = "ServiceSchedulerInitiated";
    match s.status.as_str() {
        "ACTIVE" => {}
        "DRAINING" => {
            for t in tx.live_service_tasks(s.id)? {
                stop_task(tx, &t, &reason, code, now)?;
                out.stopped.push(t.arn);
            }
            if tx.unstopped_service_tasks(s.id)?.is_empty() {
                s.status = "INACTIVE".into();
                s.updated_at = now;
                tx.update_service(&s)?;
            }
            return Ok(out);
        }
        _ => return Ok(out),
    }
    let tasks: Vec<ServiceTask> = tx
        .live_service_task_states(s.id)?
        .into_iter()
        .map(|t| ServiceTask {
            current: t.started_by.as_deref() == Some(s.deployment_id.as_str()),
            running: t.last_status == TaskStatus::Running,
            arn: t.arn,
            instance_id: t.instance_id,
        })
        .collect();
    let daemon = s.scheduling_strategy == "DAEMON";
    let plan = if daemon {
        plan_daemon(&tx.active_instance_ids(&s.cluster)?, &tasks)
    } else {
        plan_replica(
            usize::try_from(s.desired_count).unwrap_or(0),
            u32::try_from(s.maximum_percent).unwrap_or(200),
            u32::try_from(s.minimum_healthy_percent).unwrap_or(100),
            &tasks,
        )
    };
    for arn in &plan.stop {
        if let Some(t) = tx.task(arn)?.filter(TaskRow::is_live) {
            stop_task(tx, &t, &reason, code, now)?;
            out.stopped.push(arn.clone());
        }
    }
    let mut unplaced: Option<String> = None;
    let starting = plan.start > 0 || !plan.start_on.is_empty();
    let failures = if starting {
        tx.start_failures(s.id)?
    } else {
        StartFailures::default()
    };
    let wait = throttle_delay(failures.count);
    if failures
        .last_at
        .is_some_and(|at| now < at + wait.as_secs_f64())
    {
        // The same words while the wait lasts, so the event is said once.
        unplaced = Some(format!(
            "(service {}) is unable to consistently start tasks successfully: {} tasks in a \
             row failed to start; the next one is placed {} s after the last failure.",
            s.name,
            failures.count,
            wait.as_secs()
        ));
    } else if starting {
        match load_definition(tx, &s.family, Some(s.revision)) {
            Ok(Some((_, definition))) => {
                let spec = TaskSpec {
                    cluster: s.cluster.clone(),
                    family: s.family.clone(),
                    revision: s.revision,
                    definition,
                    group: service_group(&s),
                    started_by: Some(s.deployment_id.clone()),
                    service_id: Some(s.id),
                    client_token: None,
                    tags: Value::Array(Vec::new()),
                };
                let mut batches: Vec<Result<Placed, SchedError>> = Vec::new();
                if plan.start > 0 {
                    batches.push(run_tasks(tx, api, &spec, plan.start, None, now));
                }
                if !plan.start_on.is_empty() {
                    batches.extend(run_tasks_on(tx, api, &spec, &plan.start_on, now)?);
                }
                for placed in batches {
                    match placed {
                        Ok(placed) => {
                            out.started.extend(placed.tasks.into_iter().map(|t| t.arn));
                            if let Some(f) = placed.failures.first() {
                                unplaced = Some(format!(
                                    "(service {}) was unable to place a task because no container \
                                     instance met all of its requirements. The closest matching \
                                     (container-instance {}) has insufficient {} available. {}",
                                    s.name,
                                    short_id(&f.arn),
                                    f.shortage.what(),
                                    f.detail
                                ));
                            }
                        }
                        Err(SchedError::NoInstances { cluster }) => {
                            unplaced = Some(format!(
                                "(service {}) was unable to place a task because no container \
                                 instance met all of its requirements. Reason: No Container \
                                 Instances were found in your cluster {cluster}.",
                                s.name
                            ));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(None) => {
                unplaced = Some(format!(
                    "(service {}) was unable to start tasks: task definition {}:{} no longer exists",
                    s.name, s.family, s.revision
                ));
            }
            Err(SchedError::BadDefinition { message, .. }) => {
                unplaced = Some(format!(
                    "(service {}) was unable to start tasks: task definition {}:{}: {message}",
                    s.name, s.family, s.revision
                ));
            }
            Err(e) => return Err(e),
        }
    }
    let last = tx.last_service_event(s.id)?;
    let say = |tx: &mut Txn<'_>, m: String| -> Result<(), StoreError> {
        tx.add_service_event(s.id, now, &m)
    };
    if !out.stopped.is_empty() {
        let m = format!(
            "(service {}) has stopped {} running tasks: {}.",
            s.name,
            out.stopped.len(),
            tasks_list(&out.stopped)
        );
        say(tx, m)?;
    }
    if !out.started.is_empty() {
        let m = format!(
            "(service {}) has started {} tasks: {}.",
            s.name,
            out.started.len(),
            tasks_list(&out.started)
        );
        say(tx, m)?;
    }
    match unplaced {
        // The same complaint once, not every tick.
        Some(m) if last.as_deref() != Some(m.as_str()) => say(tx, m)?,
        Some(_) => {}
        None if out.started.is_empty() && out.stopped.is_empty() => {
            let running = tasks.iter().filter(|t| t.current && t.running).count();
            let settled = tasks.iter().all(|t| t.current)
                && (daemon || running == usize::try_from(s.desired_count).unwrap_or(0))
                && (!daemon || running == tasks.len());
            let steady = format!("(service {}) has reached a steady state.", s.name);
            if settled && last.as_deref() != Some(steady.as_str()) {
                say(tx, steady)?;
            }
        }
        None => {}
    }
    Ok(out)
}

/// The service loop: every [`SERVICE_TICK`], and whenever the fleet says a service may need
/// it, brings every live service toward its plan, one transaction per service. Stopped
/// tasks older than [`STOPPED_TASK_RETENTION`] are forgotten once a minute.
pub async fn run(api: Arc<Api>, fleet: Arc<Fleet>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SERVICE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = 0.0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = fleet.services_changed() => {}
        }
        let now = now();
        let sweep = now - last_sweep >= RETENTION_SWEEP.as_secs_f64();
        if sweep {
            last_sweep = now;
        }
        let (api, fleet) = (api.clone(), fleet.clone());
        let pass = tokio::task::spawn_blocking(move || reconcile_all(&api, &fleet, now, sweep));
        match pass.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "service pass failed"),
            Err(e) => tracing::error!(error = %e, "service pass panicked"),
        }
    }
    tracing::debug!("service loop stopped");
}

/// One pass of the service loop.
pub fn reconcile_all(api: &Api, fleet: &Fleet, now: f64, sweep: bool) -> Result<(), SchedError> {
    for id in api.store.live_service_ids()? {
        let outcome = fleet.write(&api.store, |tx| reconcile_service(tx, api, id, now));
        match outcome {
            Ok(o) if !o.started.is_empty() || !o.stopped.is_empty() => {
                tracing::info!(
                    service = id,
                    started = o.started.len(),
                    stopped = o.stopped.len(),
                    "service tasks changed"
                );
            }
            Ok(_) => {}
            // One service's trouble must not starve the others.
            Err(e) => tracing::error!(service = id, error = %e, "service pass failed"),
        }
    }
    if sweep {
        let before = now - STOPPED_TASK_RETENTION.as_secs_f64();
        let n = api.store.delete_stopped_tasks(before)?;
        if n > 0 {
            tracing::debug!(tasks = n, "forgot stopped tasks");
        }
    }
    Ok(())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The placement group of a service's tasks, as ECS names it.
pub fn service_group(s: &ServiceRow) -> String {
    format!("service:{}", s.name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{ContainerInstance, Store};
    use serde_json::json;

    /// A hub on a temporary store with the cluster `edge`.
    pub(crate) struct Hub {
        _dir: tempfile::TempDir,
        pub api: Api,
        pub fleet: Fleet,
    }

    pub(crate) fn hub() -> Hub {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open store");
        store.create_cluster("edge", "[]", 1.0).expect("cluster");
        Hub {
            _dir: dir,
            api: Api {
                store,
                region: "eu-west-1".into(),
                account_id: "123456789012".into(),
            },
            fleet: Fleet::new(),
        }
    }

    pub(crate) fn instance_id(n: u32) -> String {
        format!("mi-{n:017x}")
    }

    /// Adds ACTIVE instance number `n` of `edge` with that much CPU and memory.
    pub(crate) fn add_instance(hub: &Hub, n: u32, cpu: i64, memory: i64) -> String {
        let id = instance_id(n);
        hub.api
            .store
            .insert_container_instance(&ContainerInstance {
                id: id.clone(),
                arn: hub
                    .api
                    .arn("ecs", &format!("container-instance/edge/{n:032x}")),
                cluster: "edge".into(),
                activation_id: "1da5d8c4-2a28-44b5-ac86-911892afea04".into(),
                hostname: format!("pi-{n}"),
                architecture: "arm64".into(),
                agent_version: "0.1.0".into(),
                cpu_units: cpu,
                memory_mib: memory,
                attributes: "{}".into(),
                cert_serial: "01".into(),
                status: "ACTIVE".into(),
                agent_connected: true,
                generation: 0,
                applied_generation: 0,
                registered_at: f64::from(n),
                last_seen_at: None,
            })
            .expect("insert instance");
        id
    }

    pub(crate) fn register(hub: &Hub, td: Value) -> (String, i64) {
        let family = td["family"].as_str().expect("family").to_string();
        let stored = hub
            .api
            .store
            .register_task_definition(&family, &td.to_string(), "[]", 1.0)
            .expect("register");
        (stored.family, stored.revision)
    }

    pub(crate) fn web(memory: u64) -> Value {
        json!({"family": "web", "containerDefinitions": [
            {"name": "web", "image": "busybox", "memory": memory, "cpu": 128}]})
    }

    /// Runs `count` tasks of `family` through the scheduler as RunTask does.
    pub(crate) fn run(hub: &Hub, family: &str, count: usize) -> Placed {
        hub.fleet
            .write(&hub.api.store, |tx| -> Result<Placed, SchedError> {
                let (stored, definition) =
                    load_definition(tx, family, None)?.expect("definition registered");
                let spec = TaskSpec {
                    cluster: "edge".into(),
                    family: stored.family,
                    revision: stored.revision,
                    definition,
                    group: format!("family:{family}"),
                    started_by: None,
                    service_id: None,
                    client_token: None,
                    tags: json!([]),
                };
                run_tasks(tx, &hub.api, &spec, count, None, 10.0)
            })
            .expect("run tasks")
    }

    fn cand(id: &str, cpu: i64, memory: i64, group_tasks: i64) -> Candidate {
        Candidate {
            id: id.into(),
            arn: format!("arn:{id}"),
            cpu_left: cpu,
            memory_left: memory,
            ports: BTreeSet::new(),
            group_tasks,
        }
    }

    fn demand(cpu: i64, memory: i64) -> Demand {
        Demand {
            cpu,
            memory,
            ports: Vec::new(),
        }
    }

    #[test]
    fn placement_spreads_by_group_then_memory_then_id() {
        let mut c = vec![
            cand("a", 4096, 1000, 0),
            cand("b", 4096, 3000, 1),
            cand("c", 4096, 1000, 0),
        ];
        let placed = place(&mut c, &demand(0, 100), 4);
        // a and c have no task of the group; tie on memory, so by id. Then b has the most
        // memory among those with one task.
        assert_eq!(placed, vec![Ok(0), Ok(2), Ok(1), Ok(0)]);
        assert_eq!(c[0].memory_left, 800);
        assert_eq!(c[0].group_tasks, 2);
    }

    #[test]
    fn placement_without_room_names_the_resource_and_the_closest_instance() {
        let mut c = vec![cand("a", 4096, 300, 0), cand("b", 4096, 500, 0)];
        let placed = place(&mut c, &demand(0, 400), 3);
        assert_eq!(placed[0], Ok(1));
        let u = placed[1].clone().expect_err("no memory left");
        assert_eq!(u.shortage.reason(), "RESOURCE:MEMORY");
        assert_eq!(u.closest, Some(0), "a has 300 MiB, b only 100 now");
        assert!(shortage_detail(&u, &c, &demand(0, 400)).contains("300 MiB"));
        assert!(placed[2].is_err());

        let mut c = vec![cand("a", 100, 4000, 0), cand("b", 900, 10, 0)];
        let u = place(&mut c, &demand(512, 100), 1)
            .remove(0)
            .expect_err("no CPU");
        // b has the CPU but not the memory: the shortage is CPU among those with memory.
        assert_eq!((u.shortage, u.closest), (Shortage::Cpu, Some(0)));

        let mut c = vec![cand("a", 4096, 4000, 0)];
        c[0].ports.insert("8080/tcp".into());
        let d = Demand {
            cpu: 0,
            memory: 10,
            ports: vec!["8080/tcp".into()],
        };
        let u = place(&mut c, &d, 1).remove(0).expect_err("port taken");
        assert_eq!(u.shortage.reason(), "RESOURCE:PORTS");
        // The same port over UDP is another port.
        let udp = Demand {
            ports: vec!["8080/udp".into()],
            ..d
        };
        assert_eq!(
            place(&mut c, &udp, 2)[..],
            [
                Ok(0),
                Err(Unplaced {
                    shortage: Shortage::Ports,
                    closest: Some(0)
                })
            ]
        );
    }

    #[test]
    fn demand_counts_like_ecs() {
        let td: TaskDefinition = serde_json::from_value(json!({
            "family": "f", "containerDefinitions": [
                {"name": "a", "image": "x", "memory": 256, "memoryReservation": 64, "cpu": 100,
                 "portMappings": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]},
                {"name": "b", "image": "x", "memory": 128, "cpu": 50}]}))
        .expect("td");
        assert_eq!(
            Demand::of(&td),
            Demand {
                cpu: 150,
                memory: 192,
                ports: vec!["8080/tcp".into()]
            }
        );
        let task_level: TaskDefinition = serde_json::from_value(json!({
            "family": "f", "cpu": "1 vCPU", "memory": "1 GB", "networkMode": "host",
            "containerDefinitions": [{"name": "a", "image": "x",
                "portMappings": [{"containerPort": 53, "protocol": "udp"}]}]}))
        .expect("td");
        assert_eq!(
            Demand::of(&task_level),
            Demand {
                cpu: 1024,
                memory: 1024,
                ports: vec!["53/udp".into()]
            }
        );
    }

    fn st(arn: &str, current: bool, running: bool) -> ServiceTask {
        ServiceTask {
            arn: arn.into(),
            instance_id: "i".into(),
            current,
            running,
        }
    }

    #[test]
    fn replica_plans_scale_and_replace() {
        // Scale up from nothing.
        assert_eq!(plan_replica(3, 200, 100, &[]).start, 3);
        // Scale down: the newest go first.
        let tasks = [
            st("t1", true, true),
            st("t2", true, true),
            st("t3", true, false),
        ];
        let p = plan_replica(1, 200, 100, &tasks);
        assert_eq!((p.stop, p.start), (vec!["t3".into(), "t2".into()], 0));
        // A stopped task is no longer listed: it is replaced.
        assert_eq!(plan_replica(2, 200, 100, &tasks[..1]).start, 1);
        // Rolling update at 100%/200%: new ones first, old ones only once new ones run.
        let old = [st("o1", false, true), st("o2", false, true)];
        let p = plan_replica(2, 200, 100, &old);
        assert_eq!((p.stop.len(), p.start), (0, 2));
        let mid = [
            old[0].clone(),
            old[1].clone(),
            st("n1", true, true),
            st("n2", true, false),
        ];
        let p = plan_replica(2, 200, 100, &mid);
        assert_eq!((p.stop, p.start), (vec!["o1".to_string()], 0));
        // At 50%/100% one old task goes first, making room for a new one.
        let p = plan_replica(2, 100, 50, &old);
        assert_eq!((p.stop, p.start), (vec!["o1".to_string()], 1));
        // An old task that never ran is replaced at once.
        let p = plan_replica(1, 200, 100, &[st("o", false, false)]);
        assert_eq!((p.stop, p.start), (vec!["o".to_string()], 1));
        // Down to zero stops everything.
        let p = plan_replica(0, 200, 100, &mid);
        assert_eq!(p.stop.len(), 4);
    }

    #[test]
    fn daemon_plans_one_task_per_instance() {
        let on = |arn: &str, inst: &str, current: bool| ServiceTask {
            arn: arn.into(),
            instance_id: inst.into(),
            current,
            running: true,
        };
        let instances = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let tasks = [
            on("a1", "a", true),
            on("a2", "a", true),
            on("b-old", "b", false),
            on("gone", "z", true),
        ];
        let p = plan_daemon(&instances, &tasks);
        assert_eq!(p.stop, vec!["b-old", "gone", "a2"]);
        assert_eq!(p.start_on, vec!["b", "c"]);
    }

    #[test]
    fn run_tasks_spreads_and_reports_what_did_not_fit() {
        let hub = hub();
        let a = add_instance(&hub, 1, 1024, 512);
        let b = add_instance(&hub, 2, 1024, 256);
        register(&hub, web(200));
        let placed = run(&hub, "web", 3);
        let on: Vec<&str> = placed
            .tasks
            .iter()
            .map(|t| t.instance_id.as_str())
            .collect();
        assert_eq!(on, [a.as_str(), b.as_str(), a.as_str()]);
        assert!(placed.failures.is_empty());
        // a has 112 MiB left, b 56: nothing fits 200.
        let more = run(&hub, "web", 1);
        assert!(more.tasks.is_empty());
        assert_eq!(more.failures[0].shortage.reason(), "RESOURCE:MEMORY");
        assert!(more.failures[0].arn.ends_with(&format!("{:032x}", 1)));
        // Each placement bumped its instance's generation once.
        let doc = hub
            .fleet
            .desired_document(&hub.api, &a)
            .expect("doc")
            .expect("instance");
        assert_eq!(doc.generation, 2);
        assert_eq!(doc.tasks.len(), 2);
        assert!(doc
            .tasks
            .iter()
            .all(|t| t.desired_status == DesiredStatus::Running));
        assert_eq!(
            doc.tasks[0].task_definition.task_definition_arn.as_deref(),
            Some("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:1")
        );
        assert_eq!(hub.fleet.take_dirty(), vec![a, b]);
    }

    #[test]
    fn no_instances_is_an_error_naming_the_cluster() {
        let hub = hub();
        register(&hub, web(10));
        let err = hub
            .fleet
            .write(&hub.api.store, |tx| -> Result<Placed, SchedError> {
                let (stored, definition) = load_definition(tx, "web", None)?.expect("td");
                let spec = TaskSpec {
                    cluster: "edge".into(),
                    family: stored.family,
                    revision: stored.revision,
                    definition,
                    group: "family:web".into(),
                    started_by: None,
                    service_id: None,
                    client_token: None,
                    tags: json!([]),
                };
                run_tasks(tx, &hub.api, &spec, 1, None, 1.0)
            })
            .expect_err("no instances");
        assert!(err.to_string().contains("cluster edge"), "{err}");
    }

    #[test]
    fn a_container_name_too_long_for_containerd_is_refused() {
        let hub = hub();
        let name = "n".repeat(44);
        register(
            &hub,
            json!({"family": "long", "containerDefinitions": [
                {"name": name, "image": "busybox", "memory": 8}]}),
        );
        let err = hub
            .fleet
            .write(&hub.api.store, |tx| load_definition(tx, "long", None))
            .expect_err("44 characters do not fit");
        assert!(matches!(err, SchedError::BadDefinition { .. }), "{err}");
        assert!(err.to_string().contains(&name), "{err}");
        // 43 do.
        register(
            &hub,
            json!({"family": "long", "containerDefinitions": [
                {"name": "n".repeat(43), "image": "busybox", "memory": 8}]}),
        );
        let ok = hub
            .fleet
            .write(&hub.api.store, |tx| load_definition(tx, "long", Some(2)));
        assert!(matches!(ok, Ok(Some(_))));
    }

    pub(crate) fn add_service(hub: &Hub, name: &str, desired: i64, strategy: &str) -> i64 {
        hub.fleet
            .write(&hub.api.store, |tx| -> Result<i64, SchedError> {
                let mut s = ServiceRow {
                    id: 0,
                    cluster: "edge".into(),
                    name: name.into(),
                    status: "ACTIVE".into(),
                    family: "web".into(),
                    revision: 1,
                    desired_count: desired,
                    scheduling_strategy: strategy.into(),
                    maximum_percent: 200,
                    minimum_healthy_percent: 100,
                    deployment_id: new_deployment_id(),
                    deployment_created_at: 1.0,
                    tags: json!([]),
                    created_at: 1.0,
                    updated_at: 1.0,
                };
                tx.insert_service(&mut s)?;
                Ok(s.id)
            })
            .expect("service")
    }

    pub(crate) fn pass(hub: &Hub, id: i64, now: f64) -> ServiceOutcome {
        hub.fleet
            .write(&hub.api.store, |tx| {
                reconcile_service(tx, &hub.api, id, now)
            })
            .expect("reconcile")
    }

    #[test]
    fn services_keep_their_count_and_say_so() {
        let hub = hub();
        add_instance(&hub, 1, 4096, 4096);
        add_instance(&hub, 2, 4096, 4096);
        register(&hub, web(64));
        let id = add_service(&hub, "site", 3, "REPLICA");
        let first = pass(&hub, id, 2.0);
        assert_eq!(first.started.len(), 3);
        let loads = hub.api.store.instance_loads("edge", None).expect("loads");
        assert_eq!(
            loads.iter().map(|l| l.group_tasks).collect::<Vec<_>>(),
            [0, 0],
            "group counted only when asked"
        );
        let per: Vec<i64> = loads.iter().map(|l| l.pending).collect();
        assert_eq!(per, [2, 1]);
        // Nothing to do: no change, no new start event.
        assert_eq!(pass(&hub, id, 3.0), ServiceOutcome::default());
        let events = hub.api.store.service_events(id, 10).expect("events");
        assert_eq!(events.len(), 1);
        assert!(events[0]
            .message
            .starts_with("(service site) has started 3 tasks:"));
        // Scale to 1: the two newest stop.
        hub.fleet
            .write(&hub.api.store, |tx| -> Result<(), StoreError> {
                let mut s = tx.service(id)?.expect("service");
                s.desired_count = 1;
                tx.update_service(&s)
            })
            .expect("scale");
        let down = pass(&hub, id, 4.0);
        assert_eq!(
            down.stopped,
            vec![first.started[2].clone(), first.started[1].clone()]
        );
        let kept = hub
            .api
            .store
            .task(&first.started[0])
            .expect("get")
            .expect("task");
        assert!(kept.is_live());
        let stopped = hub
            .api
            .store
            .task(&first.started[1])
            .expect("get")
            .expect("task");
        assert_eq!(stopped.desired_status, DesiredStatus::Stopped);
        assert_eq!(
            stopped.stop_code.as_deref(),
            Some("ServiceSchedulerInitiated")
        );
        // Stopped but not yet reported so: still in its instance's document, as STOPPED.
        let doc = hub
            .fleet
            .desired_document(&hub.api, &stopped.instance_id)
            .expect("doc")
            .expect("instance");
        assert_eq!(
            doc.task(&stopped.arn).map(|t| t.desired_status),
            Some(DesiredStatus::Stopped)
        );
    }

    #[test]
    fn a_daemon_service_starts_on_every_instance_with_room_and_names_the_one_without() {
        let hub = hub();
        for n in 1..=4 {
            add_instance(&hub, n, 4096, if n == 3 { 32 } else { 4096 });
        }
        register(&hub, web(64));
        let id = add_service(&hub, "agent", 0, "DAEMON");
        let first = pass(&hub, id, 2.0);
        let mut on: Vec<String> = first
            .started
            .iter()
            .map(|arn| {
                hub.api
                    .store
                    .task(arn)
                    .expect("get")
                    .expect("task")
                    .instance_id
            })
            .collect();
        on.sort();
        assert_eq!(on, [instance_id(1), instance_id(2), instance_id(4)]);
        let said = hub
            .api
            .store
            .service_events(id, 1)
            .expect("events")
            .pop()
            .expect("an event")
            .message;
        assert!(
            said.contains(&format!("{:032x}", 3)) && said.contains("insufficient memory"),
            "{said}"
        );
        // Each instance's document changed once, the full one's not at all.
        let generation = |n| {
            hub.api
                .store
                .link_state(&instance_id(n))
                .expect("l")
                .expect("i")
                .generation
        };
        assert_eq!(
            [generation(1), generation(2), generation(3), generation(4)],
            [1, 1, 0, 1]
        );
        assert!(pass(&hub, id, 3.0).started.is_empty());
    }

    /// Marks the service task `arn` STOPPED at hub time `at`, as a device's report does.
    fn stopped(hub: &Hub, arn: &str, code: &str, ran: bool, at: f64) {
        hub.fleet
            .write(&hub.api.store, |tx| -> Result<(), StoreError> {
                let t = tx.task(arn)?.expect("task");
                let mut m = t.clone();
                m.last_status = TaskStatus::Stopped;
                m.desired_status = DesiredStatus::Stopped;
                m.stop_code = Some(code.into());
                m.started_at = ran.then_some(at - 1.0);
                m.stopped_at = Some(at);
                tx.save_task(Some(&t), &mut m, at)
            })
            .expect("stop");
    }

    #[test]
    fn a_service_whose_tasks_fail_to_start_waits_longer_each_time() {
        let hub = hub();
        add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let id = add_service(&hub, "site", 1, "REPLICA");
        let first = pass(&hub, id, 10.0).started;
        assert_eq!(first.len(), 1);
        stopped(&hub, &first[0], "TaskFailedToStart", false, 11.0);
        // One failure: 10 s from it.
        assert!(pass(&hub, id, 11.5).started.is_empty(), "placed at once");
        let said = hub.api.store.service_events(id, 1).expect("events")[0]
            .message
            .clone();
        assert!(
            said.contains("unable to consistently start tasks") && said.contains("10 s"),
            "{said}"
        );
        assert!(pass(&hub, id, 20.5).started.is_empty());
        let times = hub
            .api
            .store
            .service_events(id, 10)
            .expect("events")
            .iter()
            .filter(|e| e.message == said)
            .count();
        assert_eq!(times, 1, "said once, not every tick");
        let second = pass(&hub, id, 21.0).started;
        assert_eq!(second.len(), 1);
        // Two in a row: 20 s.
        stopped(&hub, &second[0], "TaskFailedToStart", false, 22.0);
        assert!(pass(&hub, id, 41.5).started.is_empty());
        let third = pass(&hub, id, 42.0).started;
        assert_eq!(third.len(), 1);
        // A task that ran resets the count: its replacement is placed at once.
        stopped(&hub, &third[0], "EssentialContainerExited", true, 50.0);
        assert_eq!(pass(&hub, id, 50.1).started.len(), 1);
        assert_eq!(throttle_delay(3), Duration::from_secs(40));
        assert_eq!(throttle_delay(40), THROTTLE_MAX);
    }

    #[test]
    fn daemon_service_follows_instances() {
        let hub = hub();
        add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let id = add_service(&hub, "agent", 0, "DAEMON");
        assert_eq!(pass(&hub, id, 2.0).started.len(), 1);
        add_instance(&hub, 2, 4096, 4096);
        let second = pass(&hub, id, 3.0);
        assert_eq!(second.started.len(), 1);
        let t = hub
            .api
            .store
            .task(&second.started[0])
            .expect("get")
            .expect("task");
        assert_eq!(t.instance_id, instance_id(2));
        assert_eq!(pass(&hub, id, 4.0), ServiceOutcome::default());
    }
}
