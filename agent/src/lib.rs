//! skerry-agent: runs Amazon ECS task definitions on containerd, from a desired-state
//! document kept on disk.
//!
//! # Layout
//! - `runtime`: the containerd connection, scoped to the agent's namespace.
//! - `image`: client-side pulls and OCI archive imports into containerd, unpacked for use.

pub mod image;
pub mod runtime;
