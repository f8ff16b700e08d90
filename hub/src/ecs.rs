//! Amazon ECS operations: clusters and task definitions, with the field names and error
//! codes of the ECS API reference so the aws CLI shows them as it would for ECS.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::{self, Api, ApiError};
use crate::store::{self, Order, StoreError};
use crate::taskdef::validate_task_definition;

const MAX_PAGE: usize = 100;

pub fn call(api: &Api, operation: &str, body: &[u8], now: f64) -> Result<Value, ApiError> {
    match operation {
        "CreateCluster" => create_cluster(api, api::input(body)?, now),
        "DescribeClusters" => describe_clusters(api, api::input(body)?),
        "ListClusters" => list_clusters(api, api::input(body)?),
        "DeleteCluster" => delete_cluster(api, api::input(body)?),
        "RegisterTaskDefinition" => register_task_definition(api, api::input(body)?, now),
        "DescribeTaskDefinition" => describe_task_definition(api, api::input(body)?),
        "ListTaskDefinitions" => list_task_definitions(api, api::input(body)?),
        "DeregisterTaskDefinition" => deregister_task_definition(api, api::input(body)?, now),
        _ => Err(api::unknown_operation(operation)),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("InvalidParameterException", message)
}

fn client(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("ClientException", message)
}

fn server(err: StoreError) -> ApiError {
    api::internal("ServerException", err)
}

fn cluster_not_found() -> ApiError {
    ApiError::bad_request("ClusterNotFoundException", "Cluster not found.")
}

/// ECS names: 1 to 255 letters, digits, hyphens and underscores. Both cluster names and
/// task definition families end up in ARNs, so nothing else may pass.
fn valid_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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

// ---- clusters

fn cluster_arn(api: &Api, name: &str) -> String {
    api.arn("ecs", &format!("cluster/{name}"))
}

/// A cluster name or ARN to the name, if it names a cluster of this hub.
fn cluster_name<'a>(api: &Api, id: &'a str) -> Option<&'a str> {
    let name = match id.strip_prefix("arn:") {
        Some(_) => id.strip_prefix(&cluster_arn(api, ""))?,
        None => id,
    };
    valid_name(name).then_some(name)
}

fn cluster_json(api: &Api, c: &store::Cluster, with_tags: bool) -> Result<Value, ApiError> {
    let n = api.store.cluster_counts(&c.name).map_err(server)?;
    let mut v = json!({
        "clusterArn": cluster_arn(api, &c.name),
        "clusterName": c.name,
        "status": c.status,
        "registeredContainerInstancesCount": n.instances,
        "runningTasksCount": n.running_tasks,
        "pendingTasksCount": n.pending_tasks,
        "activeServicesCount": n.active_services,
        "statistics": [],
        "settings": [{"name": "containerInsights", "value": "disabled"}],
        "capacityProviders": [],
        "defaultCapacityProviderStrategy": [],
    });
    if with_tags {
        v["tags"] = parse_json(&c.tags);
    }
    Ok(v)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateClusterInput {
    cluster_name: Option<String>,
    tags: Option<Vec<Value>>,
}

fn create_cluster(api: &Api, input: CreateClusterInput, now: f64) -> Result<Value, ApiError> {
    let name = input.cluster_name.unwrap_or_else(|| "default".into());
    if !valid_name(&name) {
        return Err(invalid(format!(
            "cluster name {name:?} is invalid: use 1 to 255 letters, digits, hyphens and underscores"
        )));
    }
    let tags = tags_json(input.tags)?;
    let c = api
        .store
        .create_cluster(&name, &tags, now)
        .map_err(server)?;
    Ok(json!({ "cluster": cluster_json(api, &c, true)? }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeClustersInput {
    clusters: Option<Vec<String>>,
    include: Option<Vec<String>>,
}

fn describe_clusters(api: &Api, input: DescribeClustersInput) -> Result<Value, ApiError> {
    let ids = input.clusters.unwrap_or_else(|| vec!["default".into()]);
    if ids.len() > 100 {
        return Err(invalid("clusters can name at most 100 clusters"));
    }
    let with_tags = input
        .include
        .unwrap_or_default()
        .iter()
        .any(|i| i == "TAGS");
    let (mut clusters, mut failures) = (Vec::new(), Vec::new());
    for id in &ids {
        let found = match cluster_name(api, id) {
            Some(name) => api.store.cluster(name).map_err(server)?,
            None => None,
        };
        match found {
            Some(c) => clusters.push(cluster_json(api, &c, with_tags)?),
            None => {
                let arn = if id.starts_with("arn:") {
                    id.clone()
                } else {
                    cluster_arn(api, id)
                };
                failures.push(json!({ "arn": arn, "reason": "MISSING" }));
            }
        }
    }
    Ok(json!({ "clusters": clusters, "failures": failures }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListInput {
    next_token: Option<String>,
    max_results: Option<i64>,
}

fn list_clusters(api: &Api, input: ListInput) -> Result<Value, ApiError> {
    let limit = api::page_size(
        input.max_results,
        MAX_PAGE,
        "maxResults",
        "InvalidParameterException",
    )?;
    let after = match &input.next_token {
        Some(t) => Some(api::decode_token(t).ok_or_else(|| invalid("invalid nextToken"))?),
        None => None,
    };
    let mut names = api
        .store
        .list_clusters(after.as_deref(), limit + 1)
        .map_err(server)?;
    let next = page_end(&mut names, limit).map(|last| api::encode_token(&last));
    let arns: Vec<String> = names.iter().map(|n| cluster_arn(api, n)).collect();
    let mut out = json!({ "clusterArns": arns });
    if let Some(t) = next {
        out["nextToken"] = t.into();
    }
    Ok(out)
}

/// Trims a `limit + 1` fetch to `limit`, returning the last kept item when more follow.
fn page_end<T: Clone>(items: &mut Vec<T>, limit: usize) -> Option<T> {
    if items.len() > limit {
        items.truncate(limit);
        items.last().cloned()
    } else {
        None
    }
}

#[derive(Deserialize)]
struct DeleteClusterInput {
    cluster: Option<String>,
}

fn delete_cluster(api: &Api, input: DeleteClusterInput) -> Result<Value, ApiError> {
    let id = input
        .cluster
        .ok_or_else(|| invalid("cluster is required"))?;
    let name = cluster_name(api, &id).ok_or_else(cluster_not_found)?;
    // As ECS: a cluster with devices, services or live tasks cannot go.
    let n = api.store.cluster_counts(name).map_err(server)?;
    for (count, code, what) in [
        (
            n.instances,
            "ClusterContainsContainerInstancesException",
            "container instances; deregister them first",
        ),
        (
            n.active_services,
            "ClusterContainsServicesException",
            "active services; delete them first",
        ),
        (
            n.running_tasks + n.pending_tasks,
            "ClusterContainsTasksException",
            "running or pending tasks; stop them first",
        ),
    ] {
        if count > 0 {
            return Err(ApiError::bad_request(
                code,
                format!("cluster {name} has {count} {what}"),
            ));
        }
    }
    let c = api
        .store
        .delete_cluster(name)
        .map_err(server)?
        .ok_or_else(cluster_not_found)?;
    Ok(json!({ "cluster": cluster_json(api, &c, false)? }))
}

// ---- task definitions

fn task_definition_arn(api: &Api, family: &str, revision: i64) -> String {
    api.arn("ecs", &format!("task-definition/{family}:{revision}"))
}

/// What a `taskDefinition` parameter names: a family (its latest ACTIVE revision) or one
/// revision, given as `family`, `family:revision` or the full ARN.
fn parse_reference(api: &Api, reference: &str) -> Option<(String, Option<i64>)> {
    let rest = if reference.starts_with("arn:") {
        reference.strip_prefix(&api.arn("ecs", "task-definition/"))?
    } else {
        reference
    };
    let (family, revision) = match rest.rsplit_once(':') {
        Some((f, r)) => (f, Some(r.parse::<i64>().ok().filter(|r| *r >= 1)?)),
        None => (rest, None),
    };
    valid_name(family).then(|| (family.to_string(), revision))
}

fn task_definition_json(api: &Api, td: &store::TaskDefinition) -> Value {
    let mut v = match parse_json(&td.body) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (k, default) in [
        ("volumes", json!([])),
        ("placementConstraints", json!([])),
        ("requiresAttributes", json!([])),
        ("compatibilities", json!(["EXTERNAL"])),
    ] {
        v.entry(k).or_insert(default);
    }
    v.insert(
        "taskDefinitionArn".into(),
        task_definition_arn(api, &td.family, td.revision).into(),
    );
    v.insert("family".into(), td.family.clone().into());
    v.insert("revision".into(), td.revision.into());
    v.insert("status".into(), td.status.clone().into());
    v.insert("registeredAt".into(), td.registered_at.into());
    if let Some(at) = td.deregistered_at {
        v.insert("deregisteredAt".into(), at.into());
    }
    Value::Object(v)
}

fn register_task_definition(api: &Api, input: Value, now: f64) -> Result<Value, ApiError> {
    let Value::Object(mut body) = input else {
        return Err(client("the request body must be a JSON object"));
    };
    let tags = match body.remove("tags") {
        None | Some(Value::Null) => None,
        Some(Value::Array(t)) => Some(t),
        Some(_) => return Err(invalid("tags must be a list")),
    };
    let tags = tags_json(tags)?;
    // Fields the hub assigns are not the client's to set.
    for k in [
        "taskDefinitionArn",
        "revision",
        "status",
        "registeredAt",
        "deregisteredAt",
    ] {
        body.remove(k);
    }
    let body = Value::Object(body);
    validate_task_definition(&body).map_err(client)?;
    let family = body["family"].as_str().unwrap_or_default();
    if !valid_name(family) {
        return Err(client(format!(
            "family {family:?} is invalid: use 1 to 255 letters, digits, hyphens and underscores"
        )));
    }
    let td = api
        .store
        .register_task_definition(family, &body.to_string(), &tags, now)
        .map_err(server)?;
    Ok(json!({
        "taskDefinition": task_definition_json(api, &td),
        "tags": parse_json(&td.tags),
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeTaskDefinitionInput {
    task_definition: Option<String>,
    include: Option<Vec<String>>,
}

fn describe_task_definition(
    api: &Api,
    input: DescribeTaskDefinitionInput,
) -> Result<Value, ApiError> {
    let reference = input
        .task_definition
        .ok_or_else(|| invalid("taskDefinition is required"))?;
    let not_found = || client("Unable to describe task definition.");
    let (family, revision) = parse_reference(api, &reference).ok_or_else(not_found)?;
    let td = api
        .store
        .task_definition(&family, revision)
        .map_err(server)?
        .ok_or_else(not_found)?;
    let mut out = json!({ "taskDefinition": task_definition_json(api, &td) });
    if input
        .include
        .unwrap_or_default()
        .iter()
        .any(|i| i == "TAGS")
    {
        out["tags"] = parse_json(&td.tags);
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListTaskDefinitionsInput {
    family_prefix: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

fn list_task_definitions(api: &Api, input: ListTaskDefinitionsInput) -> Result<Value, ApiError> {
    let limit = api::page_size(
        input.max_results,
        MAX_PAGE,
        "maxResults",
        "InvalidParameterException",
    )?;
    let status = input.status.unwrap_or_else(|| "ACTIVE".into());
    if !matches!(
        status.as_str(),
        "ACTIVE" | "INACTIVE" | "DELETE_IN_PROGRESS"
    ) {
        return Err(invalid(format!(
            "status {status:?} is invalid: use ACTIVE, INACTIVE or DELETE_IN_PROGRESS"
        )));
    }
    let order = match input.sort.as_deref() {
        None | Some("ASC") => Order::Asc,
        Some("DESC") => Order::Desc,
        Some(other) => {
            return Err(invalid(format!(
                "sort {other:?} is invalid: use ASC or DESC"
            )))
        }
    };
    let after = match &input.next_token {
        Some(t) => {
            let key = api::decode_token(t).ok_or_else(|| invalid("invalid nextToken"))?;
            let (f, r) = key
                .rsplit_once(':')
                .ok_or_else(|| invalid("invalid nextToken"))?;
            let r: i64 = r.parse().map_err(|_| invalid("invalid nextToken"))?;
            Some((f.to_string(), r))
        }
        None => None,
    };
    let mut rows = api
        .store
        .list_task_definitions(
            input.family_prefix.as_deref(),
            &status,
            order,
            after.as_ref().map(|(f, r)| (f.as_str(), *r)),
            limit + 1,
        )
        .map_err(server)?;
    let next = page_end(&mut rows, limit).map(|(f, r)| api::encode_token(&format!("{f}:{r}")));
    let arns: Vec<String> = rows
        .iter()
        .map(|(f, r)| task_definition_arn(api, f, *r))
        .collect();
    let mut out = json!({ "taskDefinitionArns": arns });
    if let Some(t) = next {
        out["nextToken"] = t.into();
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeregisterTaskDefinitionInput {
    task_definition: Option<String>,
}

fn deregister_task_definition(
    api: &Api,
    input: DeregisterTaskDefinitionInput,
    now: f64,
) -> Result<Value, ApiError> {
    let reference = input
        .task_definition
        .ok_or_else(|| invalid("taskDefinition is required"))?;
    let Some((family, Some(revision))) = parse_reference(api, &reference) else {
        return Err(client(format!(
            "task definition {reference:?} names no revision: use family:revision or the full ARN"
        )));
    };
    let td = api
        .store
        .deregister_task_definition(&family, revision, now)
        .map_err(server)?
        .ok_or_else(|| {
            client(format!(
                "task definition {family}:{revision} does not exist"
            ))
        })?;
    Ok(json!({ "taskDefinition": task_definition_json(api, &td) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> (tempfile::TempDir, Api) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store::Store::open(dir.path()).expect("open");
        let api = Api {
            store,
            region: "eu-west-1".into(),
            account_id: "123456789012".into(),
        };
        (dir, api)
    }

    #[test]
    fn task_definition_references() {
        let (_d, api) = api();
        assert_eq!(parse_reference(&api, "web"), Some(("web".into(), None)));
        assert_eq!(
            parse_reference(&api, "web:3"),
            Some(("web".into(), Some(3)))
        );
        assert_eq!(
            parse_reference(
                &api,
                "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:2"
            ),
            Some(("web".into(), Some(2)))
        );
        // Another region's or account's ARN names nothing here.
        assert_eq!(
            parse_reference(
                &api,
                "arn:aws:ecs:us-east-1:123456789012:task-definition/web:2"
            ),
            None
        );
        assert_eq!(parse_reference(&api, "web:0"), None);
        assert_eq!(parse_reference(&api, "web:x"), None);
    }

    #[test]
    fn cluster_arns_resolve_only_for_this_hub() {
        let (_d, api) = api();
        assert_eq!(
            cluster_name(&api, "arn:aws:ecs:eu-west-1:123456789012:cluster/edge"),
            Some("edge")
        );
        assert_eq!(
            cluster_name(&api, "arn:aws:ecs:eu-west-1:999999999999:cluster/edge"),
            None
        );
        assert_eq!(cluster_name(&api, "a/b"), None);
    }

    #[test]
    fn hub_assigned_fields_in_input_are_ignored() {
        let (_d, api) = api();
        let input = json!({
            "family": "web",
            "containerDefinitions": [{"name": "c", "image": "busybox", "memory": 64}],
            "revision": 42,
            "status": "INACTIVE",
        });
        let out = register_task_definition(&api, input, 5.0).expect("register");
        assert_eq!(out["taskDefinition"]["revision"], 1);
        assert_eq!(out["taskDefinition"]["status"], "ACTIVE");
        assert_eq!(
            out["taskDefinition"]["taskDefinitionArn"],
            "arn:aws:ecs:eu-west-1:123456789012:task-definition/web:1"
        );
    }
}
