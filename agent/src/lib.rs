//! skerry-agent: runs Amazon ECS task definitions on containerd, from a desired-state
//! document kept on disk.
//!
//! # Layout
//! - `outbox`: the durable, ordered, bounded on-disk queue of messages for the hub.
//! - `runtime`: the containerd connection, scoped to the agent's namespace.

pub mod outbox;
pub mod runtime;
