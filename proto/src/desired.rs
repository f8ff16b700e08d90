//! The desired-state document: what the hub wants a device to run. The hub sends it whole and
//! the agent persists it; `generation` orders documents so an older one never wins.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::taskdef::{self, NetworkMode, Protocol, TaskDefError, TaskDefinition};

/// A desired-state error: JSON path (from the document root) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DesiredError {
    pub path: String,
    pub message: String,
}

impl From<TaskDefError> for DesiredError {
    fn from(e: TaskDefError) -> Self {
        Self {
            path: e.path,
            message: e.message,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesiredState {
    pub generation: u64,
    pub tasks: Vec<DesiredTask>,
    /// Tasks the device started on its own (from its bootstrap document, or as a local
    /// replacement) that the hub will not take on, by ARN: the device stops them. A task the
    /// device started on its own and that a document neither lists in `tasks` nor here is
    /// one the hub has not heard of yet, and keeps running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesiredTask {
    pub task_arn: String,
    pub task_definition: TaskDefinition,
    pub desired_status: DesiredStatus,
    /// ECS's task group: `service:NAME` for a service's task, which the device replaces on
    /// its own when the task stops for good (its essential container exited), without
    /// waiting for the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DesiredStatus {
    Running,
    Stopped,
}

/// The id part of a task ARN: the last `/`-separated segment. Validated by
/// [`DesiredState::parse`] to be 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn task_id_of(task_arn: &str) -> &str {
    task_arn.rsplit('/').next().unwrap_or(task_arn)
}

fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && id != "."
        && id != ".."
}

/// Whether `id` is a valid containerd identifier: at most 76 characters, letters and digits
/// in runs separated by single '.', '_' or '-'.
pub fn is_containerd_id(id: &str) -> bool {
    let b = id.as_bytes();
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    !b.is_empty()
        && b.len() <= 76
        && b.iter().all(|c| c.is_ascii_alphanumeric() || sep(*c))
        && !sep(b[0])
        && !sep(b[b.len() - 1])
        && !b.windows(2).any(|w| sep(w[0]) && sep(w[1]))
}

/// The prefix of a service's task group.
pub const SERVICE_GROUP_PREFIX: &str = "service:";

impl DesiredTask {
    /// Whether the device replaces this task itself when it stops for good.
    pub fn replaced_locally(&self) -> bool {
        self.desired_status == DesiredStatus::Running
            && self.group.as_deref().is_some_and(|g| {
                g.len() > SERVICE_GROUP_PREFIX.len() && g.starts_with(SERVICE_GROUP_PREFIX)
            })
    }

    /// The containerd container id of one of the task's containers: `<task_id>-<name>`.
    /// Validated by [`DesiredState::parse`] to be a valid containerd id for every container.
    pub fn container_id(&self, container_name: &str) -> String {
        format!("{}-{container_name}", self.task_id())
    }

    /// The last `/`-separated segment of the task ARN; containerd ids are built from it as
    /// `<task_id>-<container name>`.
    pub fn task_id(&self) -> &str {
        task_id_of(&self.task_arn)
    }
}

impl DesiredState {
    /// Parses and validates a desired-state document: every task definition, unique task
    /// ARNs and ids, containerd-valid container ids, and no host port held by two running
    /// tasks.
    pub fn parse(json: &str) -> Result<DesiredState, DesiredError> {
        let state: DesiredState = taskdef::from_json(json)?;
        state.validate()?;
        Ok(state)
    }

    /// Parses a bootstrap document: the desired state a device runs from its first boot,
    /// before it has heard from the hub. Its generation is 0, so that the hub's first
    /// document takes over, and only the hub refuses tasks.
    pub fn parse_bootstrap(json: &str) -> Result<DesiredState, DesiredError> {
        let state = Self::parse(json)?;
        if state.generation != 0 {
            return Err(DesiredError {
                path: "generation".into(),
                message: format!(
                    "is {}, must be 0 so that the hub's first document takes over",
                    state.generation
                ),
            });
        }
        if !state.refused.is_empty() {
            return Err(DesiredError {
                path: "refused".into(),
                message: "only the hub refuses tasks; leave it out".into(),
            });
        }
        Ok(state)
    }

    pub fn validate(&self) -> Result<(), DesiredError> {
        // Host ports are a device-wide resource: two running tasks cannot both hold one.
        let mut host_ports: HashMap<(u16, Protocol), String> = HashMap::new();
        let mut arns = HashSet::new();
        let mut ids = HashSet::new();
        for (i, t) in self.tasks.iter().enumerate() {
            let arn_path = format!("tasks[{i}].taskArn");
            if !valid_task_id(t.task_id()) {
                return Err(DesiredError {
                    path: arn_path,
                    message: format!(
                        "{:?} does not end in a usable task id: the part after the last '/' \
                         must be 1 to 64 letters, digits, '_', '.' or '-'",
                        t.task_arn
                    ),
                });
            }
            if !arns.insert(t.task_arn.as_str()) {
                return Err(DesiredError {
                    path: arn_path,
                    message: format!("task {:?} is listed twice", t.task_arn),
                });
            }
            if !ids.insert(t.task_id()) {
                return Err(DesiredError {
                    path: arn_path,
                    message: format!(
                        "task id {:?} is used by two tasks; task ids must be unique on a device",
                        t.task_id()
                    ),
                });
            }
            t.task_definition.validate().map_err(|e| DesiredError {
                path: if e.path.is_empty() {
                    format!("tasks[{i}].taskDefinition")
                } else {
                    format!("tasks[{i}].taskDefinition.{}", e.path)
                },
                message: e.message,
            })?;
            let host_mode = t.task_definition.network_mode() == NetworkMode::Host;
            for (j, cd) in t.task_definition.container_definitions.iter().enumerate() {
                if t.desired_status != DesiredStatus::Running {
                    break;
                }
                for (k, pm) in cd.port_mappings.iter().flatten().enumerate() {
                    let (port, field) = if host_mode {
                        (Some(pm.container_port()), "containerPort")
                    } else {
                        (pm.fixed_host_port(), "hostPort")
                    };
                    let Some(port) = port else { continue };
                    let path = format!(
                        "tasks[{i}].taskDefinition.containerDefinitions[{j}].portMappings[{k}].{field}"
                    );
                    if let Some(first) = host_ports.get(&(port, pm.protocol())) {
                        if !first.starts_with(&format!("tasks[{i}].")) {
                            return Err(DesiredError {
                                path,
                                message: format!(
                                    "host port {port}/{} is already taken by {first}; two running \
                                     tasks on one device cannot share a host port",
                                    pm.protocol().as_str()
                                ),
                            });
                        }
                    } else {
                        host_ports.insert((port, pm.protocol()), path);
                    }
                }
            }
            for (j, cd) in t.task_definition.container_definitions.iter().enumerate() {
                let id = t.container_id(&cd.name);
                if !is_containerd_id(&id) {
                    return Err(DesiredError {
                        path: format!("tasks[{i}].taskDefinition.containerDefinitions[{j}].name"),
                        message: format!(
                            "the container id {id:?} (task id, '-', container name) is not valid \
                             for containerd: at most 76 characters, no leading, trailing or \
                             doubled '.', '_' or '-'; shorten or rename the container"
                        ),
                    });
                }
            }
        }
        for (i, arn) in self.refused.iter().enumerate() {
            if self.task(arn).is_some() {
                return Err(DesiredError {
                    path: format!("refused[{i}]"),
                    message: format!(
                        "task {arn:?} is both refused and listed in tasks; name it in one place"
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn task(&self, task_arn: &str) -> Option<&DesiredTask> {
        self.tasks.iter().find(|t| t.task_arn == task_arn)
    }
}
