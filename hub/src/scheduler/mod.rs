//! The scheduler: which instance each task goes to, and what a service needs to hold its
//! count. `placement` is pure (where tasks fit, what a service's plan is); this module
//! applies it inside one store transaction ([`run_tasks`]), so two callers never hand out
//! the same room; `service_loop` brings every service toward its plan.
//!
//! Placement follows ECS's default for EXTERNAL: only ACTIVE instances of the cluster with
//! room for the task's CPU, memory and fixed host ports; among them the one with the fewest
//! live tasks of the same group (`family:NAME` or `service:NAME`), then the most memory left,
//! then the lowest instance id. An instance whose agent is disconnected keeps its tasks and
//! stays a candidate: a device offline still runs what it was given.
//!
//! # Layout
//! - `placement`: the pure part: demands, candidates, placement and service plans.
//! - `service_loop`: one pass over a service, and the loop that runs it for every service.

mod placement;
mod service_loop;

use std::collections::HashMap;

use rand::RngCore;
use serde_json::{json, Value};
use skerry_proto::desired::DesiredStatus;
use skerry_proto::status::{HealthStatus, TaskStatus};
use skerry_proto::taskdef::TaskDefinition;

use crate::arn::Arns;
use crate::store::{InstanceLoad, ServiceRow, StoreError, TaskRow, Txn};

pub use placement::{
    place, plan_daemon, plan_replica, shortage_detail, throttle_delay, Candidate, Demand,
    ServiceTask, Shortage,
};
#[cfg(test)]
pub(crate) use service_loop::ServiceOutcome;
pub use service_loop::{reconcile_service, run};

#[cfg(test)]
pub(crate) use service_loop::tests as service_tests;

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
pub fn new_task(arns: &Arns, spec: &TaskSpec, instance: &Candidate, now: f64) -> TaskRow {
    let demand = Demand::of(&spec.definition);
    TaskRow {
        seq: 0,
        arn: arns.task(&spec.cluster, &random_hex(TASK_ID_BYTES)),
        cluster: spec.cluster.clone(),
        instance_id: instance.id.clone(),
        instance_arn: instance.arn.clone(),
        family: Some(spec.family.clone()),
        revision: Some(spec.revision),
        task_definition_arn: Some(arns.task_definition(&spec.family, spec.revision)),
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
    arns: &Arns,
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
                let mut row = new_task(arns, spec, &candidates[i], now);
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
    arns: &Arns,
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
                let mut row = new_task(arns, spec, &candidates[0], now);
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

/// The placement group of a service's tasks, as ECS names it.
pub fn service_group(s: &ServiceRow) -> String {
    format!("service:{}", s.name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub(crate) use crate::state::Hub;
    use crate::store::{ContainerInstance, Store};
    use serde_json::json;

    /// A hub on a temporary store with the cluster `edge`.
    pub(crate) struct TestHub {
        _dir: tempfile::TempDir,
        hub: Hub,
    }

    impl std::ops::Deref for TestHub {
        type Target = Hub;
        fn deref(&self) -> &Hub {
            &self.hub
        }
    }

    pub(crate) fn hub() -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open store");
        store.create_cluster("edge", "[]", 1.0).expect("cluster");
        TestHub {
            _dir: dir,
            hub: Hub::new(store, Arns::new("eu-west-1", "123456789012")),
        }
    }

    pub(crate) fn instance_id(n: u32) -> String {
        format!("mi-{n:017x}")
    }

    /// Adds ACTIVE instance number `n` of `edge` with that much CPU and memory.
    pub(crate) fn add_instance(hub: &Hub, n: u32, cpu: i64, memory: i64) -> String {
        let id = instance_id(n);
        hub.store
            .insert_container_instance(&ContainerInstance {
                id: id.clone(),
                arn: hub.arns.container_instance("edge", &format!("{n:032x}")),
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
        hub.write(|tx| -> Result<Placed, SchedError> {
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
            run_tasks(tx, &hub.arns, &spec, count, None, 10.0)
        })
        .expect("run tasks")
    }

    #[test]
    fn no_instances_is_an_error_naming_the_cluster() {
        let hub = hub();
        register(&hub, web(10));
        let err = hub
            .write(|tx| -> Result<Placed, SchedError> {
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
                run_tasks(tx, &hub.arns, &spec, 1, None, 1.0)
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
            .write(|tx| load_definition(tx, "long", None))
            .expect_err("44 characters do not fit");
        assert!(matches!(err, SchedError::BadDefinition { .. }), "{err}");
        assert!(err.to_string().contains(&name), "{err}");
        // 43 do.
        register(
            &hub,
            json!({"family": "long", "containerDefinitions": [
                {"name": "n".repeat(43), "image": "busybox", "memory": 8}]}),
        );
        let ok = hub.write(|tx| load_definition(tx, "long", Some(2)));
        assert!(matches!(ok, Ok(Some(_))));
    }
}
