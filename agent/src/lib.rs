//! skerry-agent: runs Amazon ECS task definitions on containerd, from a desired-state
//! document kept on disk, with no network needed once images are local.
//!
//! # Layout
//! - `cgroup`: task-level memory and cpu limits on the task's parent cgroup.
//! - `config`: the agent's TOML configuration, validated before anything starts.
//! - `store`: the crash-safe state (desired document, task records) in redb.
//! - `runtime`: the containerd connection and container/process calls, behind the
//!   `Runtime` trait the supervisor calls (a fake one in its unit tests).
//! - `image`: client-side registry pulls and OCI archive imports into containerd.
//! - `spec`: the OCI runtime spec for one container of a task definition, and the default
//!   seccomp profile of non-privileged containers.
//! - `network`: network namespaces and the CNI plugin chain (bridge, portmap, loopback).
//! - `logs`: the shim's log driver, the file rotation, and reading the files back.
//! - `init`: the PID 1 for `initProcessEnabled` containers (this same binary).
//! - `outbox`: the durable, ordered, bounded queue of messages for the hub.
//! - `reconcile`: converges containerd to the desired state; one supervisor per task.
//! - `control`: the root-only unix socket behind `apply`, `ps` and `logs`.
//! - `provision`: the provisioning file on the boot partition (hub, activation, CA pin).
//! - `identity`: the stored identity, the CA pin, registration, the start-up plan.
//! - `link`: the MQTT link: desired state down, the outbox up, presence and metrics.
//! - `backoff`: exponential backoff with jitter, for registration and the broker link.
//! - `bootstrap`: a first boot without network: preloaded images, the bootstrap document.
//! - `watchdog`: feeds the hardware watchdog while the reconciler answers.
//! - `os`: the OS slot and version the device booted, the card's boot state, and
//!   committing the slot once the device is healthy.

pub mod backoff;
pub mod bootstrap;
pub mod cgroup;
pub mod config;
pub mod control;
pub mod identity;
pub mod image;
pub mod init;
pub mod link;
pub mod logs;
pub mod network;
pub mod os;
pub mod outbox;
pub mod provision;
pub mod reconcile;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod watchdog;
