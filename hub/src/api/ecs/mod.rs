//! Amazon ECS operations, with the field names and error codes of the ECS API reference so
//! the aws CLI shows them as it would for ECS, and what they share: the error
//! constructors, cluster and task definition references, tags, and pagination.
//!
//! What Skerry cannot honour (overrides, placement constraints, capacity providers, awsvpc
//! networking...) is refused with InvalidParameterException naming the field, never
//! ignored.
//!
//! # Layout
//! - `clusters`: CreateCluster, DescribeClusters, ListClusters, DeleteCluster.
//! - `task_definitions`: RegisterTaskDefinition, DescribeTaskDefinition,
//!   ListTaskDefinitions, DeregisterTaskDefinition.
//! - `tasks`: RunTask, StopTask, DescribeTasks, ListTasks.
//! - `services`: CreateService, UpdateService, DeleteService, DescribeServices,
//!   ListServices.
//! - `instances`: ListContainerInstances, DescribeContainerInstances,
//!   DeregisterContainerInstance.

pub(crate) mod clusters;
pub(crate) mod instances;
pub(crate) mod services;
pub(crate) mod task_definitions;
pub(crate) mod tasks;

use serde_json::{json, Value};

use crate::api::{self, ApiError};
use crate::scheduler::{self, SchedError};
use crate::state::Hub;
use crate::store::{
    desired_status_name, health_status_name, task_status_name, StoreError, TaskRow,
};

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

/// The ACTIVE cluster a `cluster` parameter (name or ARN; `default` when absent) names.
pub(crate) fn resolve_cluster(hub: &Hub, cluster: Option<&str>) -> Result<String, ApiError> {
    let id = cluster.unwrap_or("default");
    let name = match hub.arns.cluster_name(id) {
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
        hub.store.cluster(name).map_err(server)?
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
    hub: &Hub,
    reference: &str,
) -> Result<(String, Option<i64>), ApiError> {
    let bad = || {
        invalid(format!(
            "taskDefinition {reference:?} is not family, family:revision or a task definition \
             ARN of this hub"
        ))
    };
    parse_reference(hub, reference).ok_or_else(bad)
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

pub(crate) fn task_arn(hub: &Hub, cluster: &str, id_or_arn: &str) -> String {
    if id_or_arn.starts_with("arn:") {
        id_or_arn.to_string()
    } else {
        hub.arns.task(cluster, id_or_arn)
    }
}

/// A task as DescribeTasks shows it.
pub(crate) fn task_json(hub: &Hub, t: &TaskRow, with_tags: bool) -> Value {
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
                    hub.arns.container(&t.cluster, task_id, &name).into(),
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
        "clusterArn": hub.arns.cluster(&t.cluster),
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

/// ECS's page size cap for the List* operations.
const MAX_PAGE: usize = 100;

fn cluster_not_found() -> ApiError {
    ApiError::bad_request("ClusterNotFoundException", "Cluster not found.")
}

fn tags_json(tags: Option<Vec<Value>>) -> Result<String, ApiError> {
    let tags = tags.unwrap_or_default();
    for t in &tags {
        if !t.get("key").is_some_and(Value::is_string) {
            return Err(invalid("each tag needs a string \"key\""));
        }
    }
    Ok(Value::Array(tags).to_string())
}

fn parse_json(text: &str) -> Value {
    // Only the hub writes these columns, always from serde_json; a broken row shows as null
    // instead of failing the whole call.
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A cluster name or ARN to the name, if it names a cluster of this hub.
fn cluster_name<'a>(hub: &Hub, id: &'a str) -> Option<&'a str> {
    let name = match id.strip_prefix("arn:") {
        Some(_) => hub.arns.cluster_name(id)?,
        None => id,
    };
    valid_name(name).then_some(name)
}

// ---- the Describe* and List* skeleton

/// The list a Describe* operation names in `field`: required, 1 to `max` entries.
fn describe_list<T>(
    list: Option<Vec<T>>,
    field: &str,
    max: usize,
    what: &str,
) -> Result<Vec<T>, ApiError> {
    let list = list.ok_or_else(|| invalid(format!("{field} is required")))?;
    if list.is_empty() || list.len() > max {
        return Err(invalid(format!("{field} must name 1 to {max} {what}")));
    }
    Ok(list)
}

/// A List* operation's `maxResults`: 1 to [`MAX_PAGE`], [`MAX_PAGE`] when absent.
fn max_results(n: Option<i64>) -> Result<usize, ApiError> {
    api::page_size(n, MAX_PAGE, "maxResults", "InvalidParameterException")
}

/// The key a `nextToken` this hub gave out stands for (a name, or `family:revision`).
fn after_key(token: Option<&str>) -> Result<Option<String>, ApiError> {
    token
        .map(|t| api::decode_token(t).ok_or_else(|| invalid("invalid nextToken")))
        .transpose()
}

/// Trims a `limit + 1` fetch to `limit`; when more follow, the `nextToken` that resumes
/// after the last row kept, made from its `key`.
fn page<T>(rows: &mut Vec<T>, limit: usize, key: impl FnOnce(&T) -> String) -> Option<String> {
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| api::encode_token(&key(r)))
    } else {
        None
    }
}

/// A List* answer: the ARNs under `key`, and `nextToken` when there is one.
fn list_answer(key: &str, arns: Vec<String>, next: Option<String>) -> Value {
    let mut out = json!({ key: arns });
    if let Some(t) = next {
        out["nextToken"] = t.into();
    }
    out
}

/// What a `taskDefinition` parameter names: a family (its latest ACTIVE revision) or one
/// revision, given as `family`, `family:revision` or the full ARN.
pub(crate) fn parse_reference(hub: &Hub, reference: &str) -> Option<(String, Option<i64>)> {
    let rest = if reference.starts_with("arn:") {
        hub.arns.task_definition_reference(reference)?
    } else {
        reference
    };
    let (family, revision) = match rest.rsplit_once(':') {
        Some((f, r)) => (f, Some(r.parse::<i64>().ok().filter(|r| *r >= 1)?)),
        None => (rest, None),
    };
    valid_name(family).then(|| (family.to_string(), revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> (tempfile::TempDir, Hub) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("open");
        let hub = Hub::new(store, crate::arn::Arns::new("eu-west-1", "123456789012"));
        (dir, hub)
    }

    #[test]
    fn task_definition_references() {
        let (_d, hub) = hub();
        assert_eq!(parse_reference(&hub, "web"), Some(("web".into(), None)));
        assert_eq!(
            parse_reference(&hub, "web:3"),
            Some(("web".into(), Some(3)))
        );
        assert_eq!(
            parse_reference(
                &hub,
                "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:2"
            ),
            Some(("web".into(), Some(2)))
        );
        // Another region's or account's ARN names nothing here.
        assert_eq!(
            parse_reference(
                &hub,
                "arn:aws:ecs:us-east-1:123456789012:task-definition/web:2"
            ),
            None
        );
        assert_eq!(parse_reference(&hub, "web:0"), None);
        assert_eq!(parse_reference(&hub, "web:x"), None);
    }

    #[test]
    fn cluster_arns_resolve_only_for_this_hub() {
        let (_d, hub) = hub();
        assert_eq!(
            cluster_name(&hub, "arn:aws:ecs:eu-west-1:123456789012:cluster/edge"),
            Some("edge")
        );
        assert_eq!(
            cluster_name(&hub, "arn:aws:ecs:eu-west-1:999999999999:cluster/edge"),
            None
        );
        assert_eq!(cluster_name(&hub, "a/b"), None);
    }

    #[test]
    fn hub_assigned_fields_in_input_are_ignored() {
        let (_d, hub) = hub();
        let input = json!({
            "family": "web",
            "containerDefinitions": [{"name": "c", "image": "busybox", "memory": 64}],
            "revision": 42,
            "status": "INACTIVE",
        });
        let out = task_definitions::register_task_definition(&hub, input, 5.0).expect("register");
        assert_eq!(out["taskDefinition"]["revision"], 1);
        assert_eq!(out["taskDefinition"]["status"], "ACTIVE");
        assert_eq!(
            out["taskDefinition"]["taskDefinitionArn"],
            "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:1"
        );
    }
}
