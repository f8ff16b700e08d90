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
//! - `ssm`: SSM activations, the credentials devices register with.
//! - `ca`: the hub's certificate authority: device, server and hub client certificates.
//! - `register`: the HTTPS listener devices register with (`POST /v1/register`).
//! - `broker`: the Mosquitto configuration and ACL `skerry-hub broker-config` writes.
//! - `taskdef`: the check a task definition passes before it is stored.
//! - `store`: the fleet state in SQLite; all SQL lives here (`store/instances.rs`: devices
//!   and their registration).

pub mod api;
pub mod broker;
pub mod ca;
pub mod config;
pub mod ecs;
pub mod register;
pub mod server;
pub mod sigv4;
pub mod ssm;
pub mod store;
pub mod taskdef;
