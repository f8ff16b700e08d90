//! ECS service operations (CreateService, UpdateService, DeleteService, DescribeServices,
//! ListServices). A change is applied to the service's tasks in the same transaction
//! (placing, stopping), so the answer already shows its effect; the service loop in
//! [`crate::scheduler`] keeps the count from then on.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    active_definition, check_launch_type, check_placement_strategy, describe_list, invalid,
    list_answer, max_results, page, parse_task_definition, refuse_set, resolve_cluster, server,
    tags_value, valid_name, OpError,
};
use crate::api::{self, ApiError};
use crate::scheduler::{self, new_deployment_id};
use crate::state::Hub;
use crate::store::{ServiceRow, StoreError};

/// ECS's default page size for ListServices.
const DEFAULT_PAGE: usize = 10;
/// ECS describes at most 10 services per call.
const MAX_DESCRIBE: usize = 10;
/// DescribeServices shows this many of a service's newest events.
const EVENTS_SHOWN: usize = 100;
/// ECS caps a service's desired count.
const MAX_DESIRED: i64 = 5000;

fn not_found(cluster: &str, name: &str) -> ApiError {
    ApiError::bad_request(
        "ServiceNotFoundException",
        format!("Service not found: {name} in cluster {cluster}"),
    )
}

fn not_active(s: &ServiceRow) -> ApiError {
    ApiError::bad_request(
        "ServiceNotActiveException",
        format!(
            "Service was not ACTIVE: {} in cluster {} is {}",
            s.name, s.cluster, s.status
        ),
    )
}

/// The service name a `service` parameter (name or ARN) gives, for `cluster`.
fn service_name<'a>(hub: &Hub, cluster: &str, id: &'a str) -> Option<&'a str> {
    let name = if id.starts_with("arn:") {
        let rest = hub.arns.service_reference(id)?;
        // Both ARN formats: service/CLUSTER/NAME and the old service/NAME.
        match rest.split_once('/') {
            Some((c, name)) if c == cluster => name,
            Some(_) => return None,
            None => rest,
        }
    } else {
        id
    };
    valid_name(name).then_some(name)
}

/// `(maximumPercent, minimumHealthyPercent)` from a `deploymentConfiguration`, over
/// `defaults`. Only those two are honoured; the rest is refused when set.
fn deployment_configuration(
    value: &Option<Value>,
    defaults: (i64, i64),
) -> Result<(i64, i64), ApiError> {
    let Some(v) = value else {
        return Ok(defaults);
    };
    let Value::Object(fields) = v else {
        return Err(invalid("deploymentConfiguration must be an object"));
    };
    let (mut max, mut min) = defaults;
    for (k, v) in fields {
        let number = |v: &Value| {
            v.as_i64()
                .ok_or_else(|| invalid(format!("deploymentConfiguration.{k} must be an integer")))
        };
        match k.as_str() {
            "maximumPercent" => max = number(v)?,
            "minimumHealthyPercent" => min = number(v)?,
            _ => refuse_set(&[(
                &format!("deploymentConfiguration.{k}"),
                &Some(v.clone()),
                "Skerry's rolling update honours maximumPercent and minimumHealthyPercent only",
            )])?,
        }
    }
    if !(0..=100).contains(&min) {
        return Err(invalid(format!(
            "deploymentConfiguration.minimumHealthyPercent {min} must be 0 to 100"
        )));
    }
    if !(100..=2000).contains(&max) {
        return Err(invalid(format!(
            "deploymentConfiguration.maximumPercent {max} must be 100 to 2000"
        )));
    }
    if min == 100 && max == 100 {
        return Err(invalid(
            "deploymentConfiguration: with minimumHealthyPercent 100 and maximumPercent 100 a \
             deployment could neither start nor stop a task; raise maximumPercent or lower \
             minimumHealthyPercent",
        ));
    }
    Ok((max, min))
}

fn check_desired_count(n: i64) -> Result<(), ApiError> {
    if !(0..=MAX_DESIRED).contains(&n) {
        return Err(invalid(format!(
            "desiredCount {n} is out of range: use 0 to {MAX_DESIRED}"
        )));
    }
    Ok(())
}

/// A service as DescribeServices shows it.
fn service_json(hub: &Hub, s: &ServiceRow, with_tags: bool) -> Result<Value, StoreError> {
    let counts = hub.store.service_deployment_counts(s)?;
    let daemon = s.scheduling_strategy == "DAEMON";
    let desired = if daemon && s.status == "ACTIVE" {
        hub.store
            .instance_loads(&s.cluster, None)?
            .iter()
            .filter(|l| l.status == "ACTIVE")
            .count() as i64
    } else {
        s.desired_count
    };
    let running: i64 = counts.iter().map(|d| d.running).sum();
    let pending: i64 = counts.iter().map(|d| d.pending).sum();
    let td_arn = hub.arns.task_definition(&s.family, s.revision);
    let deployments: Vec<Value> = counts
        .iter()
        .map(|d| {
            let primary = d.started_by == s.deployment_id;
            let mut v = json!({
                "id": d.started_by,
                "status": if primary { "PRIMARY" } else { "ACTIVE" },
                "taskDefinition": if primary { Some(td_arn.clone()) } else { d.task_definition_arn.clone() },
                "desiredCount": if primary { desired } else { 0 },
                "pendingCount": d.pending,
                "runningCount": d.running,
                "failedTasks": 0,
                "launchType": "EXTERNAL",
            });
            if primary {
                let done = d.running == desired && counts.len() == 1;
                v["createdAt"] = s.deployment_created_at.into();
                v["updatedAt"] = s.updated_at.into();
                v["rolloutState"] = if done { "COMPLETED" } else { "IN_PROGRESS" }.into();
            }
            v
        })
        .collect();
    let events: Vec<Value> = hub
        .store
        .service_events(s.id, EVENTS_SHOWN)?
        .into_iter()
        .map(|e| json!({"id": e.id.to_string(), "createdAt": e.created_at, "message": e.message}))
        .collect();
    let mut v = json!({
        "serviceArn": hub.arns.service(&s.cluster, &s.name),
        "serviceName": s.name,
        "clusterArn": hub.arns.cluster(&s.cluster),
        "loadBalancers": [],
        "serviceRegistries": [],
        "status": s.status,
        "desiredCount": desired,
        "runningCount": running,
        "pendingCount": pending,
        "launchType": "EXTERNAL",
        "taskDefinition": td_arn,
        "deploymentConfiguration": {
            "deploymentCircuitBreaker": {"enable": false, "rollback": false},
            "maximumPercent": s.maximum_percent,
            "minimumHealthyPercent": s.minimum_healthy_percent,
        },
        "deployments": if s.status == "INACTIVE" { Vec::new() } else { deployments },
        "events": events,
        "createdAt": s.created_at,
        "placementConstraints": [],
        "placementStrategy": [],
        "schedulingStrategy": s.scheduling_strategy,
        "deploymentController": {"type": "ECS"},
        "enableECSManagedTags": false,
        "propagateTags": "NONE",
        "enableExecuteCommand": false,
    });
    if with_tags {
        v["tags"] = s.tags.clone();
    }
    Ok(v)
}

/// The parameters of Create/UpdateService Skerry has nothing to do with.
fn refuse_unsupported(f: &Unsupported) -> Result<(), ApiError> {
    check_placement_strategy(&f.placement_strategy)?;
    refuse_set(&[
        (
            "loadBalancers",
            &f.load_balancers,
            "there is no load balancer in front of devices",
        ),
        (
            "serviceRegistries",
            &f.service_registries,
            "there is no Cloud Map here",
        ),
        (
            "capacityProviderStrategy",
            &f.capacity_provider_strategy,
            "there are no capacity providers; use launchType EXTERNAL",
        ),
        ("platformVersion", &f.platform_version, "it is for Fargate"),
        ("role", &f.role, "there are no IAM roles here"),
        (
            "placementConstraints",
            &f.placement_constraints,
            "tasks go to any ACTIVE instance of the cluster with room",
        ),
        (
            "networkConfiguration",
            &f.network_configuration,
            "it is for awsvpc, which devices do not have",
        ),
        (
            "healthCheckGracePeriodSeconds",
            &f.health_check_grace_period_seconds,
            "it is for load balancer health checks",
        ),
        (
            "enableECSManagedTags",
            &f.enable_ecs_managed_tags,
            "the hub adds no tags of its own",
        ),
        (
            "enableExecuteCommand",
            &f.enable_execute_command,
            "ECS Exec needs SSM sessions",
        ),
        (
            "serviceConnectConfiguration",
            &f.service_connect_configuration,
            "there is no Service Connect here",
        ),
        (
            "volumeConfigurations",
            &f.volume_configurations,
            "EBS volumes cannot reach a device",
        ),
        (
            "vpcLatticeConfigurations",
            &f.vpc_lattice_configurations,
            "there is no VPC Lattice here",
        ),
        (
            "availabilityZoneRebalancing",
            &f.availability_zone_rebalancing,
            "devices have no availability zones",
        ),
    ])?;
    if let Some(c) = &f.deployment_controller {
        if c.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "ECS")
        {
            return Err(invalid(format!(
                "deploymentController {c} is not supported: only the ECS rolling update is"
            )));
        }
    }
    if let Some(p) = f.propagate_tags.as_deref().filter(|p| *p != "NONE") {
        return Err(invalid(format!(
            "propagateTags {p} is not supported by Skerry: tags stay on the service"
        )));
    }
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Unsupported {
    placement_strategy: Option<Vec<Value>>,
    load_balancers: Option<Value>,
    service_registries: Option<Value>,
    capacity_provider_strategy: Option<Value>,
    platform_version: Option<Value>,
    role: Option<Value>,
    placement_constraints: Option<Value>,
    network_configuration: Option<Value>,
    health_check_grace_period_seconds: Option<Value>,
    deployment_controller: Option<Value>,
    #[serde(rename = "enableECSManagedTags")]
    enable_ecs_managed_tags: Option<Value>,
    propagate_tags: Option<String>,
    enable_execute_command: Option<Value>,
    service_connect_configuration: Option<Value>,
    volume_configurations: Option<Value>,
    vpc_lattice_configurations: Option<Value>,
    availability_zone_rebalancing: Option<Value>,
}

/// Splits an operation's input into the fields it knows and the [`Unsupported`] ones;
/// anything in neither is refused by name.
fn split_input<T: serde::de::DeserializeOwned>(
    body: Value,
    known: &[&str],
) -> Result<(T, Unsupported), ApiError> {
    let Value::Object(all) = body else {
        return Err(ApiError::bad_request(
            "SerializationException",
            "the request body must be a JSON object",
        ));
    };
    let (mut mine, mut rest) = (Map::new(), Map::new());
    for (k, v) in all {
        if known.contains(&k.as_str()) {
            mine.insert(k, v);
        } else {
            rest.insert(k, v);
        }
    }
    let unsupported: Unsupported =
        serde_json::from_value(Value::Object(rest.clone())).map_err(|e| {
            ApiError::bad_request(
                "SerializationException",
                format!("invalid request body: {e}"),
            )
        })?;
    const UNSUPPORTED: &[&str] = &[
        "placementStrategy",
        "loadBalancers",
        "serviceRegistries",
        "capacityProviderStrategy",
        "platformVersion",
        "role",
        "placementConstraints",
        "networkConfiguration",
        "healthCheckGracePeriodSeconds",
        "deploymentController",
        "enableECSManagedTags",
        "propagateTags",
        "enableExecuteCommand",
        "serviceConnectConfiguration",
        "volumeConfigurations",
        "vpcLatticeConfigurations",
        "availabilityZoneRebalancing",
    ];
    if let Some(k) = rest.keys().find(|k| !UNSUPPORTED.contains(&k.as_str())) {
        return Err(invalid(format!("{k} is not a parameter this hub knows")));
    }
    let mine: T = serde_json::from_value(Value::Object(mine)).map_err(|e| {
        ApiError::bad_request(
            "SerializationException",
            format!("invalid request body: {e}"),
        )
    })?;
    Ok((mine, unsupported))
}

// ---- CreateService

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateServiceInput {
    cluster: Option<String>,
    service_name: Option<String>,
    task_definition: Option<String>,
    desired_count: Option<i64>,
    launch_type: Option<String>,
    scheduling_strategy: Option<String>,
    deployment_configuration: Option<Value>,
    tags: Option<Vec<Value>>,
    client_token: Option<String>,
}

const CREATE_FIELDS: &[&str] = &[
    "cluster",
    "serviceName",
    "taskDefinition",
    "desiredCount",
    "launchType",
    "schedulingStrategy",
    "deploymentConfiguration",
    "tags",
    "clientToken",
];

pub(crate) fn create_service(hub: &Hub, body: Value, now: f64) -> Result<Value, ApiError> {
    let (input, unsupported): (CreateServiceInput, _) = split_input(body, CREATE_FIELDS)?;
    refuse_unsupported(&unsupported)?;
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let name = input
        .service_name
        .ok_or_else(|| invalid("serviceName is required"))?;
    if !valid_name(&name) {
        return Err(invalid(format!(
            "serviceName {name:?} is invalid: use 1 to 255 letters, digits, hyphens and underscores"
        )));
    }
    let reference = input
        .task_definition
        .ok_or_else(|| invalid("taskDefinition is required"))?;
    let (family, revision) = parse_task_definition(hub, &reference)?;
    check_launch_type(input.launch_type.as_deref())?;
    let strategy = input
        .scheduling_strategy
        .unwrap_or_else(|| "REPLICA".into());
    let daemon = match strategy.as_str() {
        "REPLICA" => false,
        "DAEMON" => true,
        other => {
            return Err(invalid(format!(
                "schedulingStrategy {other} is invalid: use REPLICA or DAEMON"
            )))
        }
    };
    let desired =
        match (daemon, input.desired_count) {
            (false, Some(n)) => {
                check_desired_count(n)?;
                n
            }
            (false, None) => return Err(invalid(
                "desiredCount is required for a REPLICA service: how many tasks to keep running",
            )),
            (true, Some(_)) => {
                return Err(invalid(
                    "desiredCount cannot be given for a DAEMON service: it runs one task per \
                 ACTIVE instance",
                ))
            }
            (true, None) => 0,
        };
    // ECS's defaults: a daemon replaces in place, a replica service surges.
    let defaults = if daemon { (100, 0) } else { (200, 100) };
    let (max, min) = deployment_configuration(&input.deployment_configuration, defaults)?;
    // A retry is recognised by its parameters (below), so the token needs no keeping.
    if input
        .client_token
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > 36)
    {
        return Err(invalid("clientToken must be 1 to 36 characters"));
    }
    let tags = tags_value(input.tags)?;
    let service = hub
        .write(|tx| -> Result<ServiceRow, OpError> {
            let (stored, _) = active_definition(tx, &family, revision)?;
            if let Some(existing) = tx.service_by_name(&cluster, &name)? {
                match existing.status.as_str() {
                    "ACTIVE"
                        if existing.family == stored.family
                            && existing.revision == stored.revision
                            && existing.desired_count == desired
                            && existing.scheduling_strategy == strategy =>
                    {
                        // The same request again (a retry) is answered with what it made.
                        return Ok(existing);
                    }
                    "ACTIVE" => {
                        return Err(invalid(format!(
                            "Creation of service was not idempotent: {name} already exists in \
                             cluster {cluster}; change it with update-service"
                        ))
                        .into())
                    }
                    "DRAINING" => {
                        return Err(invalid(format!(
                            "Unable to Start a service that is still Draining: {name} in \
                             cluster {cluster} is being deleted; wait until it is INACTIVE"
                        ))
                        .into())
                    }
                    _ => {}
                }
            }
            let mut s = ServiceRow {
                id: 0,
                cluster: cluster.clone(),
                name: name.clone(),
                status: "ACTIVE".into(),
                family: stored.family,
                revision: stored.revision,
                desired_count: desired,
                scheduling_strategy: strategy.clone(),
                maximum_percent: max,
                minimum_healthy_percent: min,
                deployment_id: new_deployment_id(),
                deployment_created_at: now,
                tags: tags.clone(),
                created_at: now,
                updated_at: now,
            };
            tx.insert_service(&mut s)?;
            scheduler::reconcile_service(tx, &hub.arns, s.id, now)?;
            Ok(s)
        })
        .map_err(OpError::into_api)?;
    let v = service_json(hub, &service, true).map_err(server)?;
    Ok(json!({ "service": v }))
}

// ---- UpdateService

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateServiceInput {
    cluster: Option<String>,
    service: Option<String>,
    desired_count: Option<i64>,
    task_definition: Option<String>,
    deployment_configuration: Option<Value>,
    force_new_deployment: Option<bool>,
}

const UPDATE_FIELDS: &[&str] = &[
    "cluster",
    "service",
    "desiredCount",
    "taskDefinition",
    "deploymentConfiguration",
    "forceNewDeployment",
];

pub(crate) fn update_service(hub: &Hub, body: Value, now: f64) -> Result<Value, ApiError> {
    let (input, unsupported): (UpdateServiceInput, _) = split_input(body, UPDATE_FIELDS)?;
    refuse_unsupported(&unsupported)?;
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let id = input
        .service
        .ok_or_else(|| invalid("service is required"))?;
    let name = service_name(hub, &cluster, &id)
        .ok_or_else(|| not_found(&cluster, &id))?
        .to_string();
    if let Some(n) = input.desired_count {
        check_desired_count(n)?;
    }
    let reference = match &input.task_definition {
        Some(r) => Some(parse_task_definition(hub, r)?),
        None => None,
    };
    let service = hub
        .write(|tx| -> Result<ServiceRow, OpError> {
            let mut s = tx
                .service_by_name(&cluster, &name)?
                .ok_or_else(|| not_found(&cluster, &name))?;
            if s.status != "ACTIVE" {
                return Err(not_active(&s).into());
            }
            let daemon = s.scheduling_strategy == "DAEMON";
            if let Some(n) = input.desired_count {
                if daemon {
                    return Err(invalid(
                        "desiredCount cannot be changed for a DAEMON service: it runs one task \
                         per ACTIVE instance",
                    )
                    .into());
                }
                s.desired_count = n;
            }
            let (max, min) = deployment_configuration(
                &input.deployment_configuration,
                (s.maximum_percent, s.minimum_healthy_percent),
            )?;
            s.maximum_percent = max;
            s.minimum_healthy_percent = min;
            let mut new_deployment = input.force_new_deployment.unwrap_or(false);
            if let Some((family, revision)) = &reference {
                let (stored, _) = active_definition(tx, family, *revision)?;
                if (stored.family.as_str(), stored.revision) != (s.family.as_str(), s.revision) {
                    s.family = stored.family;
                    s.revision = stored.revision;
                    new_deployment = true;
                }
            }
            if new_deployment {
                s.deployment_id = new_deployment_id();
                s.deployment_created_at = now;
            }
            s.updated_at = now;
            tx.update_service(&s)?;
            scheduler::reconcile_service(tx, &hub.arns, s.id, now)?;
            Ok(s)
        })
        .map_err(OpError::into_api)?;
    let v = service_json(hub, &service, false).map_err(server)?;
    Ok(json!({ "service": v }))
}

// ---- DeleteService

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DeleteServiceInput {
    cluster: Option<String>,
    service: Option<String>,
    force: Option<bool>,
}

pub(crate) fn delete_service(
    hub: &Hub,
    input: DeleteServiceInput,
    now: f64,
) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let id = input
        .service
        .ok_or_else(|| invalid("service is required"))?;
    let name = service_name(hub, &cluster, &id)
        .ok_or_else(|| not_found(&cluster, &id))?
        .to_string();
    let force = input.force.unwrap_or(false);
    let service = hub
        .write(|tx| -> Result<ServiceRow, OpError> {
            let mut s = tx
                .service_by_name(&cluster, &name)?
                .ok_or_else(|| not_found(&cluster, &name))?;
            match s.status.as_str() {
                "ACTIVE" => {}
                "DRAINING" => return Ok(s),
                _ => return Err(not_active(&s).into()),
            }
            if s.scheduling_strategy == "REPLICA" && s.desired_count > 0 && !force {
                return Err(invalid(format!(
                    "The service cannot be stopped while it is scaled above 0: {name} has \
                     desiredCount {}; update it to 0 first or pass --force",
                    s.desired_count
                ))
                .into());
            }
            s.desired_count = 0;
            s.status = "DRAINING".into();
            s.updated_at = now;
            tx.update_service(&s)?;
            scheduler::reconcile_service(tx, &hub.arns, s.id, now)?;
            Ok(tx.service(s.id)?.unwrap_or(s))
        })
        .map_err(OpError::into_api)?;
    let v = service_json(hub, &service, false).map_err(server)?;
    Ok(json!({ "service": v }))
}

// ---- DescribeServices

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DescribeServicesInput {
    cluster: Option<String>,
    services: Option<Vec<String>>,
    include: Option<Vec<String>>,
}

pub(crate) fn describe_services(
    hub: &Hub,
    input: DescribeServicesInput,
) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let ids = describe_list(input.services, "services", MAX_DESCRIBE, "services")?;
    let with_tags = input.include.iter().flatten().any(|i| i == "TAGS");
    let (mut services, mut failures) = (Vec::new(), Vec::new());
    for id in &ids {
        let found = match service_name(hub, &cluster, id) {
            Some(name) => hub.store.service_by_name(&cluster, name).map_err(server)?,
            None => None,
        };
        match found {
            Some(s) => services.push(service_json(hub, &s, with_tags).map_err(server)?),
            None => {
                let arn = if id.starts_with("arn:") {
                    id.clone()
                } else {
                    hub.arns.service(&cluster, id)
                };
                failures.push(json!({ "arn": arn, "reason": "MISSING" }));
            }
        }
    }
    Ok(json!({ "services": services, "failures": failures }))
}

// ---- ListServices

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListServicesInput {
    cluster: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
    launch_type: Option<String>,
    scheduling_strategy: Option<String>,
    resource_management_type: Option<String>,
}

pub(crate) fn list_services(hub: &Hub, input: ListServicesInput) -> Result<Value, ApiError> {
    let cluster = resolve_cluster(hub, input.cluster.as_deref())?;
    let limit = match input.max_results {
        None => DEFAULT_PAGE,
        n => max_results(n)?,
    };
    if let Some(s) = input.scheduling_strategy.as_deref() {
        if !matches!(s, "REPLICA" | "DAEMON") {
            return Err(invalid(format!(
                "schedulingStrategy {s} is invalid: use REPLICA or DAEMON"
            )));
        }
    }
    let after = api::decode_id_token(input.next_token.as_deref())?;
    // Every service here is EXTERNAL and customer-managed: another filter matches none.
    let matches = matches!(input.launch_type.as_deref(), None | Some("EXTERNAL"))
        && matches!(
            input.resource_management_type.as_deref(),
            None | Some("CUSTOMER")
        );
    let mut rows = if matches {
        hub.store
            .list_services(
                &cluster,
                input.scheduling_strategy.as_deref(),
                after,
                limit + 1,
            )
            .map_err(server)?
    } else {
        Vec::new()
    };
    let next = page(&mut rows, limit, |s| s.id.to_string());
    let arns = rows
        .iter()
        .map(|s| hub.arns.service(&s.cluster, &s.name))
        .collect();
    Ok(list_answer("serviceArns", arns, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_configuration_defaults_and_refusals() {
        assert_eq!(deployment_configuration(&None, (200, 100)), Ok((200, 100)));
        let v = Some(json!({"maximumPercent": 150, "minimumHealthyPercent": 50}));
        assert_eq!(deployment_configuration(&v, (200, 100)), Ok((150, 50)));
        let off = Some(json!({"deploymentCircuitBreaker": {"enable": false, "rollback": false}}));
        assert_eq!(deployment_configuration(&off, (200, 100)), Ok((200, 100)));
        let on = Some(json!({"deploymentCircuitBreaker": {"enable": true, "rollback": true}}));
        let e = deployment_configuration(&on, (200, 100)).expect_err("breaker");
        assert!(e.message.contains("deploymentCircuitBreaker"), "{e}");
        let stuck = Some(json!({"maximumPercent": 100}));
        let e = deployment_configuration(&stuck, (200, 100)).expect_err("stuck");
        assert!(e.message.contains("maximumPercent"), "{e}");
    }
}
