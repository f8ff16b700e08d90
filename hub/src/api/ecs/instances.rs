//! ECS container instance operations (ListContainerInstances, DescribeContainerInstances,
//! DeregisterContainerInstance). A container instance is a registered device; its
//! `ec2InstanceId` is the managed instance id (`mi-…`) as in ECS Anywhere. The store says
//! DEREGISTERED where ECS says INACTIVE.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use skerry_proto::desired::DesiredStatus;
use skerry_proto::status::TaskStatus;

use super::{
    after_key, describe_list, invalid, list_answer, max_results, page, refuse_set, resolve_cluster,
    server, OpError,
};
use crate::api::ApiError;
use crate::state::Hub;
use crate::store::{ContainerInstance, InstanceLoad};

const MAX_DESCRIBE: usize = 100;
const DEREGISTERED: &str = "DEREGISTERED";

/// ECS's name for a stored status.
fn ecs_status(status: &str) -> &str {
    if status == DEREGISTERED {
        "INACTIVE"
    } else {
        status
    }
}

/// The instance id a `containerInstance` parameter names in `cluster`: its ARN, the id at
/// the end of the ARN, or the managed instance id.
pub(crate) fn resolve_instance(
    hub: &Hub,
    cluster: &str,
    reference: &str,
) -> Result<Option<String>, ApiError> {
    let by_id = if skerry_proto::registration::is_instance_id(reference) {
        hub.store.container_instance(reference).map_err(server)?
    } else {
        let arn = if reference.starts_with("arn:") {
            reference.to_string()
        } else {
            hub.arns.container_instance(cluster, reference)
        };
        match hub.store.instance_id_by_arn(&arn).map_err(server)? {
            Some(id) => hub.store.container_instance(&id).map_err(server)?,
            None => None,
        }
    };
    Ok(by_id.filter(|i| i.cluster == cluster).map(|i| i.id))
}

fn resource(name: &str, value: i64) -> Value {
    json!({"name": name, "type": "INTEGER", "doubleValue": 0.0, "longValue": 0, "integerValue": value})
}

fn ports_resource(name: &str, ports: &[String]) -> Value {
    json!({"name": name, "type": "STRINGSET", "doubleValue": 0.0, "longValue": 0,
           "integerValue": 0, "stringSetValue": ports})
}

/// A container instance as DescribeContainerInstances shows it.
fn instance_json(i: &ContainerInstance, load: Option<&InstanceLoad>) -> Value {
    let (cpu_used, mem_used, running, pending) = load.map_or((0, 0, 0, 0), |l| {
        (l.cpu_used, l.memory_used, l.running, l.pending)
    });
    let held = |proto: &str| -> Vec<String> {
        load.map(|l| {
            l.ports
                .iter()
                .filter_map(|p| p.strip_suffix(proto).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
    };
    let mut attributes = vec![
        json!({"name": "ecs.os-type", "value": "linux"}),
        json!({"name": "ecs.cpu-architecture", "value": i.architecture}),
        json!({"name": "ecs.capability.external"}),
    ];
    if let Ok(Value::Object(custom)) = serde_json::from_str::<Value>(&i.attributes) {
        let custom: Map<String, Value> = custom;
        for (k, v) in custom {
            attributes.push(json!({"name": k, "value": v}));
        }
    }
    json!({
        "containerInstanceArn": i.arn,
        "ec2InstanceId": i.id,
        "version": i.generation,
        "versionInfo": {"agentVersion": i.agent_version, "agentHash": "", "dockerVersion": "containerd"},
        "registeredResources": [
            resource("CPU", i.cpu_units),
            resource("MEMORY", i.memory_mib),
            ports_resource("PORTS", &[]),
            ports_resource("PORTS_UDP", &[]),
        ],
        // As in ECS, the PORTS entries list the ports in use.
        "remainingResources": [
            resource("CPU", i.cpu_units - cpu_used),
            resource("MEMORY", i.memory_mib - mem_used),
            ports_resource("PORTS", &held("/tcp")),
            ports_resource("PORTS_UDP", &held("/udp")),
        ],
        "status": ecs_status(&i.status),
        "agentConnected": i.agent_connected,
        "runningTasksCount": running,
        "pendingTasksCount": pending,
        "attributes": attributes,
        "registeredAt": i.registered_at,
        "attachments": [],
        "tags": [],
    })
}

// ---- ListContainerInstances

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListInput {
    cluster: Option<String>,
    filter: Option<Value>,
    next_token: Option<String>,
    max_results: Option<i64>,
    status: Option<String>,
}

pub(crate) fn list(hub: &Hub, input: ListInput) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    refuse_set(&[(
        "filter",
        &input.filter,
        "the cluster query language is not implemented; filter by --status",
    )])?;
    let limit = max_results(input.max_results)?;
    let status = match input.status.as_deref() {
        None => None,
        Some("ACTIVE") => Some("ACTIVE"),
        Some("INACTIVE") => Some(DEREGISTERED),
        // States a device never passes through here: nothing matches.
        Some("DRAINING" | "REGISTERING" | "DEREGISTERING" | "REGISTRATION_FAILED") => Some("-"),
        Some(other) => {
            return Err(invalid(format!(
                "status {other} is invalid: use ACTIVE, DRAINING, REGISTERING, DEREGISTERING \
                 or REGISTRATION_FAILED"
            )))
        }
    };
    let after = after_key(input.next_token.as_deref())?;
    let mut rows = hub
        .store
        .list_container_instances(&cluster, status, after.as_deref(), limit + 1)
        .map_err(server)?;
    let next = page(&mut rows, limit, |(id, _)| id.clone());
    let arns = rows.into_iter().map(|(_, arn)| arn).collect();
    Ok(list_answer("containerInstanceArns", arns, next))
}

// ---- DescribeContainerInstances

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DescribeInput {
    cluster: Option<String>,
    container_instances: Option<Vec<String>>,
    include: Option<Vec<String>>,
}

pub(crate) fn describe(hub: &Hub, input: DescribeInput) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let refs = describe_list(
        input.container_instances,
        "containerInstances",
        MAX_DESCRIBE,
        "container instances",
    )?;
    // Tags (none on devices yet) are always shown; health is not tracked.
    if let Some(bad) = input
        .include
        .iter()
        .flatten()
        .find(|i| *i != "TAGS" && *i != "CONTAINER_INSTANCE_HEALTH")
    {
        return Err(invalid(format!(
            "include {bad} is invalid: use TAGS or CONTAINER_INSTANCE_HEALTH"
        )));
    }
    let (mut found, mut failures) = (Vec::new(), Vec::new());
    for r in &refs {
        let instance = match resolve_instance(hub, &cluster, r)? {
            Some(id) => hub.store.container_instance(&id).map_err(server)?,
            None => None,
        };
        match instance {
            Some(i) => {
                let loads = hub
                    .store
                    .instance_loads(&cluster, Some(&i.id))
                    .map_err(server)?;
                found.push(instance_json(&i, loads.first()));
            }
            None => {
                let arn = if r.starts_with("arn:") {
                    r.clone()
                } else {
                    hub.arns.container_instance(&cluster, r)
                };
                failures.push(json!({"arn": arn, "reason": "MISSING"}));
            }
        }
    }
    Ok(json!({ "containerInstances": found, "failures": failures }))
}

// ---- DeregisterContainerInstance

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DeregisterInput {
    cluster: Option<String>,
    container_instance: Option<String>,
    force: Option<bool>,
}

/// Deregisters an instance. With tasks not yet STOPPED it needs `force`, and then those
/// tasks are recorded STOPPED and the instance's document is emptied: unlike ECS, which
/// leaves them running unwatched, a device still linked stops them, so nothing runs that
/// nobody can see. Services start replacements elsewhere.
pub(crate) fn deregister(hub: &Hub, input: DeregisterInput, now: f64) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let reference = input
        .container_instance
        .ok_or_else(|| invalid("containerInstance is required"))?;
    let id = resolve_instance(hub, &cluster, &reference)?.ok_or_else(|| {
        invalid(format!(
            "container instance {reference} not found in cluster {cluster}"
        ))
    })?;
    let force = input.force.unwrap_or(false);
    let stopped_any = hub
        .write(|tx| -> Result<bool, OpError> {
            let link = tx
                .link_state(&id)?
                .ok_or_else(|| invalid(format!("container instance {id} not found")))?;
            if link.status == DEREGISTERED {
                return Ok(false);
            }
            let tasks = tx.unstopped_instance_tasks(&id)?;
            if !tasks.is_empty() && !force {
                return Err(invalid(format!(
                    "container instance {id} has {} tasks not yet STOPPED; stop them first, or \
                     pass --force to record them stopped and have the device stop them",
                    tasks.len()
                ))
                .into());
            }
            let reason = format!("container instance {id} was deregistered");
            for t in &tasks {
                let mut after = t.clone();
                after.desired_status = DesiredStatus::Stopped;
                after.last_status = TaskStatus::Stopped;
                after.stopping_at.get_or_insert(now);
                after.stopped_at.get_or_insert(now);
                after.stopped_reason.get_or_insert_with(|| reason.clone());
                after
                    .stop_code
                    .get_or_insert_with(|| "UserInitiated".into());
                for c in &mut after.containers {
                    if let Some(o) = c.as_object_mut() {
                        o.insert("lastStatus".into(), "STOPPED".into());
                    }
                }
                tx.save_task(Some(t), &mut after, now)?;
            }
            tx.set_instance_status(&id, DEREGISTERED)?;
            // The next document is empty whatever it held before.
            tx.bump_generation(&id)?;
            Ok(!tasks.is_empty())
        })
        .map_err(OpError::into_api)?;
    if stopped_any {
        hub.changes.poke_services();
    }
    // Cut the device off at the broker too (its certificate is revoked).
    hub.changes.poke_revocations();
    let i = hub
        .store
        .container_instance(&id)
        .map_err(server)?
        .ok_or_else(|| invalid(format!("container instance {id} not found")))?;
    let loads = hub
        .store
        .instance_loads(&cluster, Some(&id))
        .map_err(server)?;
    Ok(json!({ "containerInstance": instance_json(&i, loads.first()) }))
}
