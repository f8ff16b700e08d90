//! skerry-hub: the control plane Skerry devices register with. It speaks the Amazon ECS
//! (and SSM activation) JSON API, so the stock aws CLI drives it with `--endpoint-url`.
//!
//! # Layout
//! - `config`: the TOML configuration, checked into [`config::Config`] at startup.
//! - `server`: the HTTP listeners (API and registration), request handling and graceful
//!   shutdown.
//! - `sigv4`: AWS Signature Version 4 verification of incoming requests.
//! - `api`: the AWS JSON 1.1 protocol: operation dispatch and the error shape.
//! - `ecs`: ECS operations: clusters and task definitions.
//! - `ecs_tasks`: ECS task operations, and the dispatch of the task, service and container
//!   instance operations.
//! - `ecs_services`: ECS service operations.
//! - `ecs_instances`: ECS container instance operations.
//! - `scheduler`: task placement, service plans and the service loop.
//! - `fleet`: the hub's side of the device link: desired-state documents, the instances
//!   whose document changed, and applying what devices report.
//! - `ssm`: SSM activations, the credentials devices register with.
//! - `events`: `ListEvents`, the device event history `skerry events` shows.
//! - `ca`: the hub's certificate authority: device, server and hub client certificates.
//! - `register`: the HTTPS listener devices register with (`POST /v1/register`).
//! - `broker`: the Mosquitto configuration and ACL `skerry-hub broker-config` writes.
//! - `taskdef`: the check a task definition passes before it is stored.
//! - `store`: the fleet state in SQLite; all SQL lives here (`store/instances.rs`: devices
//!   and their registration, `store/tasks.rs`: tasks and the write transaction,
//!   `store/services.rs`, `store/events.rs`: device and service events, `store/fleet.rs`:
//!   each device's link).
//! - `link`: the hub's MQTT client: desired-state documents out, device messages in.

pub mod api;
pub mod broker;
pub mod ca;
pub mod config;
pub mod ecs;
pub mod ecs_instances;
pub mod ecs_services;
pub mod ecs_tasks;
pub mod events;
pub mod fleet;
pub mod link;
pub mod register;
pub mod scheduler;
pub mod server;
pub mod sigv4;
pub mod ssm;
pub mod store;
pub mod taskdef;
