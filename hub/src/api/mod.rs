//! The API the aws CLI speaks to: the AWS JSON 1.1 protocol (`X-Amz-Target` names the
//! operation, the body is its input, errors carry `__type` the way the aws CLI reads them;
//! the wire parts are the `skerry-aws-json` crate) and [`OPERATIONS`], the one table from an
//! operation's name to its handler. Start there to find where any operation is handled.
//! Operations are synchronous over the store; the server runs them on the blocking pool.
//!
//! # Layout
//! - `ecs`: the Amazon ECS operations (clusters, task definitions, tasks, services,
//!   container instances) and what they share.
//! - `ssm`: SSM activations, the credentials devices register with.
//! - `skerry`: Skerry's own operations (`ListEvents`, the device event history).

pub(crate) mod ecs;
pub(crate) mod skerry;
pub(crate) mod ssm;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::state::Hub;
use crate::store::StoreError;
use ecs::{clusters, instances, services, task_definitions, tasks};

pub use skerry_aws_json::{parse_target, ApiError, Service, CONTENT_TYPE};

/// What every operation runs over: the hub, and the time the request arrived (Unix
/// seconds, fractional), read once per request.
pub struct Context<'a> {
    pub hub: &'a Hub,
    pub now: f64,
}

/// An operation's handler: its input is the request body, still to be decoded.
type Handler = fn(&Context<'_>, &[u8]) -> Result<Value, ApiError>;

/// Every operation the hub serves: the service its `X-Amz-Target` prefix names, the
/// operation's name, and where it is handled.
#[rustfmt::skip]
pub static OPERATIONS: &[(Service, &str, Handler)] = &[
    // ECS: clusters
    (Service::Ecs, "CreateCluster", |c, b| clusters::create_cluster(c.hub, input(b)?, c.now)),
    (Service::Ecs, "DescribeClusters", |c, b| clusters::describe_clusters(c.hub, input(b)?)),
    (Service::Ecs, "ListClusters", |c, b| clusters::list_clusters(c.hub, input(b)?)),
    (Service::Ecs, "DeleteCluster", |c, b| clusters::delete_cluster(c.hub, input(b)?)),
    // ECS: task definitions
    (Service::Ecs, "RegisterTaskDefinition", |c, b| task_definitions::register_task_definition(c.hub, input(b)?, c.now)),
    (Service::Ecs, "DescribeTaskDefinition", |c, b| task_definitions::describe_task_definition(c.hub, input(b)?)),
    (Service::Ecs, "ListTaskDefinitions", |c, b| task_definitions::list_task_definitions(c.hub, input(b)?)),
    (Service::Ecs, "DeregisterTaskDefinition", |c, b| task_definitions::deregister_task_definition(c.hub, input(b)?, c.now)),
    // ECS: tasks
    (Service::Ecs, "RunTask", |c, b| tasks::run_task(c.hub, input(b)?, c.now)),
    (Service::Ecs, "StopTask", |c, b| tasks::stop_task(c.hub, input(b)?, c.now)),
    (Service::Ecs, "DescribeTasks", |c, b| tasks::describe_tasks(c.hub, input(b)?)),
    (Service::Ecs, "ListTasks", |c, b| tasks::list_tasks(c.hub, input(b)?)),
    // ECS: services
    (Service::Ecs, "CreateService", |c, b| services::create_service(c.hub, input(b)?, c.now)),
    (Service::Ecs, "UpdateService", |c, b| services::update_service(c.hub, input(b)?, c.now)),
    (Service::Ecs, "DeleteService", |c, b| services::delete_service(c.hub, input(b)?, c.now)),
    (Service::Ecs, "DescribeServices", |c, b| services::describe_services(c.hub, input(b)?)),
    (Service::Ecs, "ListServices", |c, b| services::list_services(c.hub, input(b)?)),
    // ECS: container instances
    (Service::Ecs, "ListContainerInstances", |c, b| instances::list(c.hub, input(b)?)),
    (Service::Ecs, "DescribeContainerInstances", |c, b| instances::describe(c.hub, input(b)?)),
    (Service::Ecs, "DeregisterContainerInstance", |c, b| instances::deregister(c.hub, input(b)?, c.now)),
    // SSM
    (Service::Ssm, "CreateActivation", |c, b| ssm::create_activation(c.hub, input(b)?, c.now)),
    (Service::Ssm, "DescribeActivations", |c, b| ssm::describe_activations(c.hub, input(b)?, c.now)),
    (Service::Ssm, "DeleteActivation", |c, b| ssm::delete_activation(c.hub, input(b)?)),
    // Skerry
    (Service::Skerry, "ListEvents", |c, b| skerry::list_events(c.hub, input(b)?)),
];

/// Runs one operation of `service` at the hub's time `now` (Unix seconds, fractional).
pub fn call(
    hub: &Hub,
    service: Service,
    operation: &str,
    body: &[u8],
    now: f64,
) -> Result<Value, ApiError> {
    // The aws CLI sends an empty body for operations without input.
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    let (_, _, handler) = OPERATIONS
        .iter()
        .find(|(s, name, _)| *s == service && *name == operation)
        .ok_or_else(|| unknown_operation(operation))?;
    handler(&Context { hub, now }, body)
}

/// The table's own spelling of `operation`, for counting requests by a name no client
/// can make up; `None` if the hub does not serve it.
pub fn operation_name(service: Service, operation: &str) -> Option<&'static str> {
    OPERATIONS
        .iter()
        .find(|(s, name, _)| *s == service && *name == operation)
        .map(|(_, name, _)| *name)
}

/// Decodes an operation's input; AWS answers type errors with SerializationException.
pub fn input<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "SerializationException",
            format!("invalid request body: {e}"),
        )
    })
}

pub fn unknown_operation(operation: &str) -> ApiError {
    ApiError::bad_request(
        "UnknownOperationException",
        format!("operation {operation:?} is not supported by this hub"),
    )
}

/// Store failures are the hub's fault; the detail goes to the log, not to the client.
pub fn internal(code: &'static str, err: StoreError) -> ApiError {
    tracing::error!(error = %err, "store failure");
    ApiError::new(500, code, "internal error; see the hub's log")
}

/// Pagination tokens are opaque to clients; hex keeps them printable and unambiguous.
pub fn encode_token(key: &str) -> String {
    hex::encode(key.as_bytes())
}

pub fn decode_token(token: &str) -> Option<String> {
    String::from_utf8(hex::decode(token).ok()?).ok()
}

/// The row id a `nextToken` made by `encode_token(&id.to_string())` stands for; `None` for
/// no token, an `InvalidParameterException` for one this hub did not give out.
pub fn decode_id_token(token: Option<&str>) -> Result<Option<i64>, ApiError> {
    token
        .map(|t| {
            decode_token(t)
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "InvalidParameterException",
                        format!("nextToken {t:?} is not one this hub gave out"),
                    )
                })
        })
        .transpose()
}

/// Validates a page size against the operation's `1..=max`, defaulting to `max`.
pub fn page_size(
    value: Option<i64>,
    max: usize,
    field: &str,
    code: &'static str,
) -> Result<usize, ApiError> {
    match value {
        None => Ok(max),
        Some(n) if n >= 1 && n as usize <= max => Ok(n as usize),
        Some(n) => Err(ApiError::bad_request(
            code,
            format!("{field} {n} is out of range: use 1 to {max}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_in_the_table_once() {
        let mut seen = std::collections::HashSet::new();
        for (service, name, _) in OPERATIONS {
            assert!(seen.insert((*service, *name)), "{name} twice");
        }
        assert_eq!(OPERATIONS.len(), 24);
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        assert_eq!(
            decode_token(&encode_token("web:3")).as_deref(),
            Some("web:3")
        );
        assert_eq!(decode_token("zz"), None);
    }
}
