//! ECS task operations (RunTask, StopTask, DescribeTasks, ListTasks) in the shapes of the
//! ECS API reference, the dispatch of every operation of the scheduler's area, and the
//! helpers the service and container instance operations share.
//!
//! What Skerry cannot honour (overrides, placement constraints, capacity providers, awsvpc
//! networking...) is refused with InvalidParameterException naming the field, never
//! ignored.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{self, Api, ApiError, Service};
use crate::fleet::Fleet;
use crate::scheduler::{self, Placed, SchedError, TaskSpec};
use crate::store::{
    desired_status_name, health_status_name, task_status_name, StoreError, TaskFilter, TaskRow,
};
use crate::{ecs_instances, ecs_services};

/// ECS's cap on RunTask's `count`.
const MAX_RUN_COUNT: i64 = 10;
const MAX_PAGE: usize = 100;
const MAX_DESCRIBE: usize = 100;

/// Runs `operation` if it is one of the task, service or container instance operations;
/// `None` leaves it to [`Api::call`].
pub fn route(
    api: &Api,
    fleet: &Fleet,
    service: Service,
    operation: &str,
    body: &[u8],
    now: f64,
) -> Option<Result<Value, ApiError>> {
    if service != Service::Ecs {
        return None;
    }
    // The aws CLI sends an empty body for operations without input.
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    let result = match operation {
        "RunTask" => api::input(body).and_then(|i| run_task(api, fleet, i, now)),
        "StopTask" => api::input(body).and_then(|i| stop_task(api, fleet, i, now)),
        "DescribeTasks" => api::input(body).and_then(|i| describe_tasks(api, i)),
        "ListTasks" => api::input(body).and_then(|i| list_tasks(api, i)),
        _ => {
            return ecs_services::call(api, fleet, operation, body, now)
                .or_else(|| ecs_instances::call(api, fleet, operation, body, now))
        }
    };
    Some(result)
}

// ---- shared with the service and instance operations

pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("InvalidParameterException", message)
}

pub(crate) fn client(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("ClientException", message)
}

pub(crate) fn server(err: StoreError) -> ApiError {
    api::internal("ServerException", err)
}

/// An operation's failure inside a store transaction: the client's, or the store's.
pub(crate) enum OpError {
    Api(ApiError),
    Store(StoreError),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

impl From<ApiError> for OpError {
    fn from(e: ApiError) -> Self {
        OpError::Api(e)
    }
}

impl From<SchedError> for OpError {
    fn from(e: SchedError) -> Self {
        match e {
            SchedError::Store(e) => OpError::Store(e),
            SchedError::NoInstances { cluster } => OpError::Api(invalid(format!(
                "No Container Instances were found in your cluster {cluster}: register a device \
                 with an activation, or pick another cluster"
            ))),
            e @ SchedError::BadDefinition { .. } => OpError::Api(client(e.to_string())),
        }
    }
}

impl OpError {
    pub(crate) fn into_api(self) -> ApiError {
        match self {
            OpError::Api(e) => e,
            OpError::Store(e) => server(e),
        }
    }
}

/// ECS names: 1 to 255 letters, digits, hyphens and underscores.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) fn cluster_arn(api: &Api, name: &str) -> String {
    api.arn("ecs", &format!("cluster/{name}"))
}

/// The ACTIVE cluster a `cluster` parameter (name or ARN; `default` when absent) names.
pub(crate) fn resolve_cluster(api: &Api, cluster: Option<&str>) -> Result<String, ApiError> {
    let id = cluster.unwrap_or("default");
    let name = match id.strip_prefix(&cluster_arn(api, "")) {
        Some(name) => name,
        None if id.starts_with("arn:") => {
            return Err(ApiError::bad_request(
                "ClusterNotFoundException",
                format!("Cluster not found: {id} is not a cluster ARN of this hub"),
            ))
        }
        None => id,
    };
    let found = if valid_name(name) {
        api.store.cluster(name).map_err(server)?
    } else {
        None
    };
    match found {
        Some(c) if c.status == "ACTIVE" => Ok(c.name),
        Some(_) => Err(ApiError::bad_request(
            "ClusterNotFoundException",
            format!("The referenced cluster was inactive: {name} was deleted; create it again"),
        )),
        None => Err(ApiError::bad_request(
            "ClusterNotFoundException",
            format!("Cluster not found: {name}; create it with create-cluster"),
        )),
    }
}

/// A `taskDefinition` parameter: `family` (its latest ACTIVE revision), `family:revision`
/// or the ARN.
pub(crate) fn parse_task_definition(
    api: &Api,
    reference: &str,
) -> Result<(String, Option<i64>), ApiError> {
    let bad = || {
        invalid(format!(
            "taskDefinition {reference:?} is not family, family:revision or a task definition \
             ARN of this hub"
        ))
    };
    let rest = if reference.starts_with("arn:") {
        reference
            .strip_prefix(&api.arn("ecs", "task-definition/"))
            .ok_or_else(bad)?
    } else {
        reference
    };
    let (family, revision) = match rest.rsplit_once(':') {
        Some((f, r)) => (
            f,
            Some(r.parse::<i64>().ok().filter(|r| *r >= 1).ok_or_else(bad)?),
        ),
        None => (rest, None),
    };
    if !valid_name(family) {
        return Err(bad());
    }
    Ok((family.to_string(), revision))
}

/// Loads the definition a service or RunTask names; it must exist and be ACTIVE.
pub(crate) fn active_definition(
    tx: &crate::store::Txn<'_>,
    family: &str,
    revision: Option<i64>,
) -> Result<
    (
        crate::store::TaskDefinition,
        skerry_proto::taskdef::TaskDefinition,
    ),
    OpError,
> {
    let shown = match revision {
        Some(r) => format!("{family}:{r}"),
        None => family.to_string(),
    };
    let (stored, parsed) = scheduler::load_definition(tx, family, revision)?.ok_or_else(|| {
        invalid(format!(
            "TaskDefinition not found: {shown}; register it with register-task-definition"
        ))
    })?;
    if stored.status != "ACTIVE" {
        return Err(invalid(format!(
            "TaskDefinition is inactive: {shown} was deregistered; use an ACTIVE revision"
        ))
        .into());
    }
    Ok((stored, parsed))
}

/// ECS tags: a list of `{"key", "value"}`.
pub(crate) fn tags_value(tags: Option<Vec<Value>>) -> Result<Value, ApiError> {
    let tags = tags.unwrap_or_default();
    for t in &tags {
        if !t.get("key").is_some_and(Value::is_string) {
            return Err(invalid("each tag needs a string \"key\""));
        }
    }
    Ok(Value::Array(tags))
}

/// Whether an optional parameter holds something (not absent, null, false, empty or
/// all-empty).
pub(crate) fn is_set(v: &Option<Value>) -> bool {
    fn set(v: &Value) -> bool {
        match v {
            Value::Null | Value::Bool(false) => false,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => a.iter().any(set),
            Value::Object(o) => o.values().any(set),
            Value::Number(_) | Value::Bool(true) => true,
        }
    }
    v.as_ref().is_some_and(set)
}

/// Refuses each parameter of `fields` that is set: Skerry does not do what it asks.
pub(crate) fn refuse_set(fields: &[(&str, &Option<Value>, &str)]) -> Result<(), ApiError> {
    for (name, value, why) in fields {
        if is_set(value) {
            return Err(invalid(format!("{name} is not supported by Skerry: {why}")));
        }
    }
    Ok(())
}

/// `launchType` may be absent or EXTERNAL.
pub(crate) fn check_launch_type(launch_type: Option<&str>) -> Result<(), ApiError> {
    match launch_type {
        None | Some("EXTERNAL") => Ok(()),
        Some(other) => Err(invalid(format!(
            "launchType {other} is not supported: this hub runs tasks on EXTERNAL instances \
             (its devices); use EXTERNAL or leave it out"
        ))),
    }
}

/// Placement strategies Skerry follows anyway: spread over instances. Anything else would
/// be silently different, so it is refused.
pub(crate) fn check_placement_strategy(strategy: &Option<Vec<Value>>) -> Result<(), ApiError> {
    for s in strategy.iter().flatten() {
        let spread_instances =
            s["type"] == "spread" && matches!(s["field"].as_str(), Some("instanceId" | "host"));
        if !spread_instances {
            return Err(invalid(format!(
                "placementStrategy {s} is not supported: Skerry spreads a group's tasks over \
                 instances, then prefers the most memory left; leave placementStrategy out or \
                 use spread on instanceId"
            )));
        }
    }
    Ok(())
}

pub(crate) fn task_arn(api: &Api, cluster: &str, id_or_arn: &str) -> String {
    if id_or_arn.starts_with("arn:") {
        id_or_arn.to_string()
    } else {
        api.arn("ecs", &format!("task/{cluster}/{id_or_arn}"))
    }
}

/// A task as DescribeTasks shows it.
pub(crate) fn task_json(api: &Api, t: &TaskRow, with_tags: bool) -> Value {
    let task_id = scheduler::short_id(&t.arn);
    let containers: Vec<Value> = t
        .containers
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(o) = c.as_object_mut() {
                let name = o
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                o.insert(
                    "containerArn".into(),
                    api.arn("ecs", &format!("container/{}/{task_id}/{name}", t.cluster))
                        .into(),
                );
                o.insert("taskArn".into(), t.arn.clone().into());
            }
            c
        })
        .collect();
    let overrides: Vec<Value> = t
        .containers
        .iter()
        .map(|c| json!({ "name": c["name"] }))
        .collect();
    let mut v = json!({
        "taskArn": t.arn,
        "clusterArn": cluster_arn(api, &t.cluster),
        "containerInstanceArn": t.instance_arn,
        "lastStatus": task_status_name(t.last_status),
        "desiredStatus": desired_status_name(t.desired_status),
        "healthStatus": health_status_name(t.health_status),
        "launchType": "EXTERNAL",
        "cpu": t.cpu.to_string(),
        "memory": t.memory.to_string(),
        "containers": containers,
        "group": t.group,
        "version": t.version,
        "createdAt": t.created_at,
        "attachments": [],
        "attributes": [],
        "overrides": {"containerOverrides": overrides, "inferenceAcceleratorOverrides": []},
        "enableExecuteCommand": false,
    });
    for (key, value) in [
        (
            "taskDefinitionArn",
            t.task_definition_arn.clone().map(Value::from),
        ),
        ("startedBy", t.started_by.clone().map(Value::from)),
        ("startedAt", t.started_at.map(Value::from)),
        ("stoppingAt", t.stopping_at.map(Value::from)),
        ("stoppedAt", t.stopped_at.map(Value::from)),
        ("stoppedReason", t.stopped_reason.clone().map(Value::from)),
        ("stopCode", t.stop_code.clone().map(Value::from)),
    ] {
        if let Some(value) = value {
            v[key] = value;
        }
    }
    if with_tags {
        v["tags"] = t.tags.clone();
    }
    v
}

fn wants_tags(include: &Option<Vec<String>>) -> bool {
    include.iter().flatten().any(|i| i == "TAGS")
}

// ---- RunTask

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RunTaskInput {
    cluster: Option<String>,
    task_definition: Option<String>,
    count: Option<i64>,
    started_by: Option<String>,
    group: Option<String>,
    launch_type: Option<String>,
    placement_strategy: Option<Vec<Value>>,
    placement_constraints: Option<Value>,
    overrides: Option<Value>,
    capacity_provider_strategy: Option<Value>,
    network_configuration: Option<Value>,
    platform_version: Option<Value>,
    #[serde(rename = "enableECSManagedTags")]
    enable_ecs_managed_tags: Option<Value>,
    enable_execute_command: Option<Value>,
    propagate_tags: Option<String>,
    reference_id: Option<Value>,
    volume_configurations: Option<Value>,
    tags: Option<Vec<Value>>,
    client_token: Option<String>,
}

fn run_task(api: &Api, fleet: &Fleet, input: RunTaskInput, now: f64) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(api, input.cluster.as_deref())?;
    let reference = input
        .task_definition
        .as_deref()
        .ok_or_else(|| invalid("taskDefinition is required"))?;
    let (family, revision) = parse_task_definition(api, reference)?;
    let count = input.count.unwrap_or(1);
    if !(1..=MAX_RUN_COUNT).contains(&count) {
        return Err(invalid(format!(
            "count {count} is out of range: use 1 to {MAX_RUN_COUNT}"
        )));
    }
    check_launch_type(input.launch_type.as_deref())?;
    check_placement_strategy(&input.placement_strategy)?;
    refuse_set(&[
        (
            "overrides",
            &input.overrides,
            "a task runs its definition as registered; register a new revision instead",
        ),
        (
            "placementConstraints",
            &input.placement_constraints,
            "tasks go to any ACTIVE instance of the cluster with room",
        ),
        (
            "capacityProviderStrategy",
            &input.capacity_provider_strategy,
            "there are no capacity providers; use launchType EXTERNAL",
        ),
        (
            "networkConfiguration",
            &input.network_configuration,
            "it is for awsvpc, which devices do not have",
        ),
        (
            "platformVersion",
            &input.platform_version,
            "it is for Fargate",
        ),
        (
            "enableECSManagedTags",
            &input.enable_ecs_managed_tags,
            "the hub adds no tags of its own",
        ),
        (
            "enableExecuteCommand",
            &input.enable_execute_command,
            "ECS Exec needs SSM sessions",
        ),
        ("referenceId", &input.reference_id, "it is not kept"),
        (
            "volumeConfigurations",
            &input.volume_configurations,
            "EBS volumes cannot reach a device",
        ),
    ])?;
    if let Some(p) = input.propagate_tags.as_deref().filter(|p| *p != "NONE") {
        return Err(invalid(format!(
            "propagateTags {p} is not supported by Skerry: give tags with --tags"
        )));
    }
    if let Some(s) = &input.started_by {
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/'));
        if !ok {
            return Err(invalid(format!(
                "startedBy {s:?} must be 1 to 128 letters, digits, '-', '_' and '/'"
            )));
        }
    }
    let group = input.group.unwrap_or_else(|| format!("family:{family}"));
    if group.is_empty() || group.len() > 255 || group.chars().any(char::is_whitespace) {
        return Err(invalid(format!(
            "group {group:?} must be 1 to 255 characters without whitespace"
        )));
    }
    if let Some(t) = &input.client_token {
        if t.is_empty() || t.len() > 64 {
            return Err(invalid("clientToken must be 1 to 64 characters"));
        }
    }
    let tags = tags_value(input.tags)?;
    let placed = fleet
        .write(&api.store, |tx| -> Result<Placed, OpError> {
            // A retried call (same token) gets the tasks of the first, not new ones.
            if let Some(token) = &input.client_token {
                let earlier = tx.tasks_by_client_token(&cluster, token)?;
                if !earlier.is_empty() {
                    return Ok(Placed {
                        tasks: earlier,
                        failures: Vec::new(),
                    });
                }
            }
            let (stored, definition) = active_definition(tx, &family, revision)?;
            let spec = TaskSpec {
                cluster: cluster.clone(),
                family: stored.family,
                revision: stored.revision,
                definition,
                group,
                started_by: input.started_by,
                service_id: None,
                client_token: input.client_token.clone(),
                tags,
            };
            let count = usize::try_from(count).unwrap_or(1);
            Ok(scheduler::run_tasks(tx, api, &spec, count, None, now)?)
        })
        .map_err(OpError::into_api)?;
    let tasks: Vec<Value> = placed
        .tasks
        .iter()
        .map(|t| task_json(api, t, false))
        .collect();
    let failures: Vec<Value> = placed
        .failures
        .iter()
        .map(|f| json!({"arn": f.arn, "reason": f.shortage.reason(), "detail": f.detail}))
        .collect();
    Ok(json!({ "tasks": tasks, "failures": failures }))
}

// ---- StopTask

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StopTaskInput {
    cluster: Option<String>,
    task: Option<String>,
    reason: Option<String>,
}

fn stop_task(api: &Api, fleet: &Fleet, input: StopTaskInput, now: f64) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(api, input.cluster.as_deref())?;
    let id = input.task.ok_or_else(|| invalid("task is required"))?;
    let reason = input
        .reason
        .unwrap_or_else(|| "Task stopped by user".into());
    if reason.len() > 255 {
        return Err(invalid("reason must be at most 255 characters"));
    }
    let arn = task_arn(api, &cluster, &id);
    let stopped = fleet
        .write(&api.store, |tx| -> Result<TaskRow, OpError> {
            let task = tx
                .task(&arn)?
                .filter(|t| t.cluster == cluster)
                .ok_or_else(|| {
                    invalid(format!(
                        "The referenced task was not found: {id} in cluster {cluster}"
                    ))
                })?;
            Ok(scheduler::stop_task(
                tx,
                &task,
                &reason,
                "UserInitiated",
                now,
            )?)
        })
        .map_err(OpError::into_api)?;
    if stopped.service_id.is_some() {
        fleet.poke_services();
    }
    Ok(json!({ "task": task_json(api, &stopped, false) }))
}

// ---- DescribeTasks

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DescribeTasksInput {
    cluster: Option<String>,
    tasks: Option<Vec<String>>,
    include: Option<Vec<String>>,
}

fn describe_tasks(api: &Api, input: DescribeTasksInput) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(api, input.cluster.as_deref())?;
    let ids = input.tasks.ok_or_else(|| invalid("tasks is required"))?;
    if ids.is_empty() || ids.len() > MAX_DESCRIBE {
        return Err(invalid(format!(
            "tasks must name 1 to {MAX_DESCRIBE} tasks"
        )));
    }
    let with_tags = wants_tags(&input.include);
    let (mut tasks, mut failures) = (Vec::new(), Vec::new());
    for id in &ids {
        let arn = task_arn(api, &cluster, id);
        match api.store.task(&arn).map_err(server)? {
            Some(t) if t.cluster == cluster => tasks.push(task_json(api, &t, with_tags)),
            _ => failures.push(json!({ "arn": arn, "reason": "MISSING" })),
        }
    }
    Ok(json!({ "tasks": tasks, "failures": failures }))
}

// ---- ListTasks

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListTasksInput {
    cluster: Option<String>,
    container_instance: Option<String>,
    family: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
    started_by: Option<String>,
    service_name: Option<String>,
    desired_status: Option<String>,
    launch_type: Option<String>,
    daemon_name: Option<Value>,
}

fn list_tasks(api: &Api, input: ListTasksInput) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(api, input.cluster.as_deref())?;
    let limit = api::page_size(
        input.max_results,
        MAX_PAGE,
        "maxResults",
        "InvalidParameterException",
    )?;
    refuse_set(&[(
        "daemonName",
        &input.daemon_name,
        "ECS managed daemons do not exist here; use a DAEMON service",
    )])?;
    let desired = input.desired_status.as_deref().unwrap_or("RUNNING");
    if !matches!(desired, "RUNNING" | "PENDING" | "STOPPED") {
        return Err(invalid(format!(
            "desiredStatus {desired} is invalid: use RUNNING, PENDING or STOPPED"
        )));
    }
    let after = api::decode_id_token(input.next_token.as_deref())?;
    let instance_id = match &input.container_instance {
        Some(ci) => Some(
            ecs_instances::resolve_instance(api, &cluster, ci)?.ok_or_else(|| {
                invalid(format!(
                    "container instance {ci} not found in cluster {cluster}"
                ))
            })?,
        ),
        None => None,
    };
    let service_id = match &input.service_name {
        Some(name) => Some(
            api.store
                .service_by_name(&cluster, name)
                .map_err(server)?
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "ServiceNotFoundException",
                        format!("Service not found: {name} in cluster {cluster}"),
                    )
                })?
                .id,
        ),
        None => None,
    };
    // Tasks here are all EXTERNAL: another launch type matches none.
    let rows = if matches!(input.launch_type.as_deref(), None | Some("EXTERNAL")) {
        api.store
            .list_tasks(
                &TaskFilter {
                    cluster: &cluster,
                    desired_status: desired,
                    instance_id: instance_id.as_deref(),
                    family: input.family.as_deref(),
                    service_id,
                    started_by: input.started_by.as_deref(),
                },
                after,
                limit + 1,
            )
            .map_err(server)?
    } else {
        Vec::new()
    };
    let more = rows.len() > limit;
    let rows = &rows[..rows.len().min(limit)];
    let mut out = json!({ "taskArns": rows.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>() });
    if more {
        if let Some((seq, _)) = rows.last() {
            out["nextToken"] = api::encode_token(&seq.to_string()).into();
        }
    }
    Ok(out)
}
