//! skerry-agent: runs Amazon ECS task definitions on containerd, from a desired-state
//! document kept on disk.
//!
//! # Layout
//! - `runtime`: the containerd connection, scoped to the agent's namespace.

pub mod config;
pub mod runtime;
pub mod store;
