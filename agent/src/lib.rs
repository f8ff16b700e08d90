//! skerry-agent: runs Amazon ECS task definitions on containerd, from a desired-state
//! document kept on disk.
//!
//! # Layout
//! - `runtime`: the containerd connection, scoped to the agent's namespace.
//! - `spec`: the OCI runtime spec for one container of a task definition.

pub mod runtime;
pub mod spec;
