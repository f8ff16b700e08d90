//! The contract between the Skerry hub and agent. serde only: no I/O, no async.
//!
//! # Layout
//! - `taskdef`: Amazon ECS task definitions (camelCase JSON), validated for what Skerry runs.
//!   The model is `taskdef`; its checks are `taskdef::validate` (task, volumes, container,
//!   ports, linux, dependencies).
//! - `desired`: the desired-state document the hub sends and the agent persists.
//! - `status`: task and container states in ECS's lifecycle names, as DescribeTasks shows them.
//! - `link`: MQTT topic names and the payloads carried on them (`v1`).
//! - `registration`: the device registration request and response.

pub mod desired;
pub mod link;
pub mod registration;
pub mod status;
pub mod taskdef;
