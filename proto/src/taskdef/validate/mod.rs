//! What Skerry checks before it accepts a task definition: every problem is collected with
//! the JSON path of the field and a message saying what to do.
//!
//! - `task`: the task-level fields and the task's resources, then each part below.
//! - `volumes`: the task's volumes.
//! - `container`: one container definition (health check included).
//! - `ports`: port mappings, and host ports across the task.
//! - `linux`: `linuxParameters`.
//! - `dependencies`: `dependsOn`, its references and cycles.

mod container;
mod dependencies;
mod linux;
mod ports;
mod task;
mod volumes;

use serde_json::Value;

use super::TaskDefError;

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

pub(super) fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Collects every error found; [`TaskDefinition::validate`] reports the first.
pub(super) struct Check {
    pub(super) errors: Vec<TaskDefError>,
}

impl Check {
    pub(super) fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(TaskDefError::new(path, message));
    }

    pub(super) fn unsupported(&mut self, path: &str, v: &Option<Value>, why: &str) {
        if v.as_ref().is_some_and(|v| !is_empty_value(v)) {
            self.fail(path, format!("is not supported by Skerry: {why}"));
        }
    }
}

pub(super) fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}
