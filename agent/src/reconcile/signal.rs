//! What a task's watchers (exit waiters, health checkers) tell its supervisor. Its own
//! module so that the watchers and the supervisor both depend on it, not on each other.

use skerry_proto::status::HealthStatus;

pub(crate) enum Signal {
    /// A container's process exited (255 when containerd no longer knows it).
    Exited { name: String, code: i32 },
    /// A container's health check result changed.
    Health { name: String, status: HealthStatus },
}
