//! ECS task operations: RunTask, StopTask, DescribeTasks, ListTasks.

use serde::Deserialize;
use serde_json::{json, Value};

use super::instances::resolve_instance;
use super::{
    active_definition, check_launch_type, check_placement_strategy, describe_list, invalid,
    list_answer, max_results, page, parse_task_definition, refuse_set, resolve_cluster, server,
    tags_value, task_arn, task_json, OpError,
};
use crate::api::{self, ApiError};
use crate::scheduler::{self, Placed, TaskSpec};
use crate::state::Hub;
use crate::store::{TaskFilter, TaskRow};

/// ECS's cap on RunTask's `count`.
const MAX_RUN_COUNT: i64 = 10;
const MAX_DESCRIBE: usize = 100;

fn wants_tags(include: &Option<Vec<String>>) -> bool {
    include.iter().flatten().any(|i| i == "TAGS")
}

// ---- RunTask

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RunTaskInput {
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

pub(crate) fn run_task(hub: &Hub, input: RunTaskInput, now: f64) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let reference = input
        .task_definition
        .as_deref()
        .ok_or_else(|| invalid("taskDefinition is required"))?;
    let (family, revision) = parse_task_definition(hub, reference)?;
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
    let placed = hub
        .write(|tx| -> Result<Placed, OpError> {
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
            Ok(scheduler::run_tasks(
                tx, &hub.arns, &spec, count, None, now,
            )?)
        })
        .map_err(OpError::into_api)?;
    let tasks: Vec<Value> = placed
        .tasks
        .iter()
        .map(|t| task_json(hub, t, false))
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
pub(crate) struct StopTaskInput {
    cluster: Option<String>,
    task: Option<String>,
    reason: Option<String>,
}

pub(crate) fn stop_task(hub: &Hub, input: StopTaskInput, now: f64) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let id = input.task.ok_or_else(|| invalid("task is required"))?;
    let reason = input
        .reason
        .unwrap_or_else(|| "Task stopped by user".into());
    if reason.len() > 255 {
        return Err(invalid("reason must be at most 255 characters"));
    }
    let arn = task_arn(hub, &cluster, &id);
    let stopped = hub
        .write(|tx| -> Result<TaskRow, OpError> {
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
        hub.changes.poke_services();
    }
    Ok(json!({ "task": task_json(hub, &stopped, false) }))
}

// ---- DescribeTasks

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DescribeTasksInput {
    cluster: Option<String>,
    tasks: Option<Vec<String>>,
    include: Option<Vec<String>>,
}

pub(crate) fn describe_tasks(hub: &Hub, input: DescribeTasksInput) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let ids = describe_list(input.tasks, "tasks", MAX_DESCRIBE, "tasks")?;
    let with_tags = wants_tags(&input.include);
    let (mut tasks, mut failures) = (Vec::new(), Vec::new());
    for id in &ids {
        let arn = task_arn(hub, &cluster, id);
        match hub.store.task(&arn).map_err(server)? {
            Some(t) if t.cluster == cluster => tasks.push(task_json(hub, &t, with_tags)),
            _ => failures.push(json!({ "arn": arn, "reason": "MISSING" })),
        }
    }
    Ok(json!({ "tasks": tasks, "failures": failures }))
}

// ---- ListTasks

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListTasksInput {
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

pub(crate) fn list_tasks(hub: &Hub, input: ListTasksInput) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let limit = max_results(input.max_results)?;
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
        Some(ci) => Some(resolve_instance(hub, &cluster, ci)?.ok_or_else(|| {
            invalid(format!(
                "container instance {ci} not found in cluster {cluster}"
            ))
        })?),
        None => None,
    };
    let service_id = match &input.service_name {
        Some(name) => Some(
            hub.store
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
    let mut rows = if matches!(input.launch_type.as_deref(), None | Some("EXTERNAL")) {
        hub.store
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
    let next = page(&mut rows, limit, |(seq, _)| seq.to_string());
    let arns = rows.into_iter().map(|(_, arn)| arn).collect();
    Ok(list_answer("taskArns", arns, next))
}
