//! skerry-agent: runs Amazon ECS task definitions on containerd, from a desired-state
//! document kept on disk.
//!
//! # Layout
//! - `runtime`: the containerd connection, scoped to the agent's namespace.
//! - `network`: task network namespaces (host, none, bridge) wired with the CNI plugins.

pub mod network;
pub mod runtime;
