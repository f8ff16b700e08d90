//! `skerry`, the operator's command line: activations that become provisioning files, and
//! readable views of the fleet. Everything else an operator does goes through the aws CLI
//! against the hub's ECS API.
//!
//! # Layout
//! - `client`: SigV4-signed calls to the hub's ECS and SSM JSON API.
//! - `activation`: `activation create`, which writes a device's `provision.toml`.
//! - `views`: the instances, tasks, services and events views.
//! - `follow`: `events --follow`, the event stream as the hub ingests it.
//! - `table`: plain-text tables for a terminal, and `table::escape`, which keeps
//!   device-controlled text from driving it.

pub mod activation;
pub mod client;
pub mod follow;
pub mod table;
pub mod views;
