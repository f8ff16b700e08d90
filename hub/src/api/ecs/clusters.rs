//! ECS cluster operations: CreateCluster, DescribeClusters, ListClusters, DeleteCluster.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    after_key, cluster_name, cluster_not_found, invalid, list_answer, max_results, page,
    parse_json, server, tags_json, valid_name,
};
use crate::api::ApiError;
use crate::state::Hub;
use crate::store;

fn cluster_json(hub: &Hub, c: &store::Cluster, with_tags: bool) -> Result<Value, ApiError> {
    let n = hub.store.cluster_counts(&c.name).map_err(server)?;
    let mut v = json!({
        "clusterArn": hub.arns.cluster(&c.name),
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
pub(crate) struct CreateClusterInput {
    cluster_name: Option<String>,
    tags: Option<Vec<Value>>,
}

pub(crate) fn create_cluster(
    hub: &Hub,
    input: CreateClusterInput,
    now: f64,
) -> Result<Value, ApiError> {
    let name = input.cluster_name.unwrap_or_else(|| "default".into());
    if !valid_name(&name) {
        return Err(invalid(format!(
            "cluster name {name:?} is invalid: use 1 to 255 letters, digits, hyphens and underscores"
        )));
    }
    let tags = tags_json(input.tags)?;
    let c = hub
        .store
        .create_cluster(&name, &tags, now)
        .map_err(server)?;
    Ok(json!({ "cluster": cluster_json(hub, &c, true)? }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DescribeClustersInput {
    clusters: Option<Vec<String>>,
    include: Option<Vec<String>>,
}

pub(crate) fn describe_clusters(
    hub: &Hub,
    input: DescribeClustersInput,
) -> Result<Value, ApiError> {
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
        let found = match cluster_name(hub, id) {
            Some(name) => hub.store.cluster(name).map_err(server)?,
            None => None,
        };
        match found {
            Some(c) => clusters.push(cluster_json(hub, &c, with_tags)?),
            None => {
                let arn = if id.starts_with("arn:") {
                    id.clone()
                } else {
                    hub.arns.cluster(id)
                };
                failures.push(json!({ "arn": arn, "reason": "MISSING" }));
            }
        }
    }
    Ok(json!({ "clusters": clusters, "failures": failures }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListInput {
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(crate) fn list_clusters(hub: &Hub, input: ListInput) -> Result<Value, ApiError> {
    let limit = max_results(input.max_results)?;
    let after = after_key(input.next_token.as_deref())?;
    let mut names = hub
        .store
        .list_clusters(after.as_deref(), limit + 1)
        .map_err(server)?;
    let next = page(&mut names, limit, String::clone);
    let arns = names.iter().map(|n| hub.arns.cluster(n)).collect();
    Ok(list_answer("clusterArns", arns, next))
}

#[derive(Deserialize)]
pub(crate) struct DeleteClusterInput {
    cluster: Option<String>,
}

pub(crate) fn delete_cluster(hub: &Hub, input: DeleteClusterInput) -> Result<Value, ApiError> {
    let id = input
        .cluster
        .ok_or_else(|| invalid("cluster is required"))?;
    let name = cluster_name(hub, &id).ok_or_else(cluster_not_found)?;
    // As ECS: a cluster with devices, services or live tasks cannot go.
    let n = hub.store.cluster_counts(name).map_err(server)?;
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
    let c = hub
        .store
        .delete_cluster(name)
        .map_err(server)?
        .ok_or_else(cluster_not_found)?;
    Ok(json!({ "cluster": cluster_json(hub, &c, false)? }))
}
