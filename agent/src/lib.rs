//! skerry-agent: runs Amazon ECS task definitions on containerd, from a desired-state
//! document kept on disk.
//!
//! # Layout
//! - `runtime`: the containerd connection, scoped to the agent's namespace.
//! - `logs`: the shim log driver (rotated per-container files) and reading them back.
//! - `init`: the PID 1 the agent becomes inside containers that enable an init process.

pub mod init;
pub mod logs;
pub mod runtime;
