//! End-to-end tests that cross process boundaries: a hub and its broker started with
//! `scripts/hub-up`, agents on the test environment's containerd, the aws CLI and `skerry`.
//! The tests live in `tests/`; this library is empty.
//!
//! # Layout
//! - `tests/two_agents.rs`: registration, RunTask and services across two agents, restarts.
//! - `tests/faults.rs`: fault injection (broker, link, hub, agent kill -9, containerd, full
//!   disk) with the delivery and container invariants checked after each.
//! - `tests/image.rs`: the qemu-aarch64-virt card built offline, provisioned and booted in QEMU:
//!   a first boot with no network runs its bootstrap task from a preloaded image; then it
//!   registers with a hub on loopback, which takes that task on, runs a task, and keeps it
//!   through a cut link and a reboot without network.
//! - `tests/install.rs`: `scripts/install-agent` into a scratch root and out again, without
//!   systemd; bad input refused before anything is written.
//! - `tests/layout.rs`: no module of the workspace imports one that imports it back.
//! - `tests/stack/`: the hub stack the tests share (`scripts/hub-up`, the aws CLI, `skerry`).
