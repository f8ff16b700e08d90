//! Bounds on what a device says, checked before any of it is applied: a device is a stranger
//! whose strings end up in the store, in desired-state documents (`refused` copies ARNs) and
//! on operators' terminals. Identifiers (ARNs, names, ids, groups, codes, images) must be
//! short printable ASCII or the whole message is refused; free text (reasons, event
//! messages) is cut to length with control characters replaced, and the cut is counted.
//! Lists are bounded too, so the work one message makes stays bounded.

use skerry_proto::link::{Envelope, Message, MAX_CONTAINER_USAGES};
use skerry_proto::status::{ContainerReport, TaskReport};

/// Longest identifier: ECS ARNs are far shorter; an image reference with a digest fits.
pub const MAX_ID: usize = 512;
/// Longest free text kept; the rest is cut.
pub const MAX_TEXT: usize = 1024;
/// Task reports in one full state.
pub const MAX_TASKS: usize = 1024;
/// Containers in one task report (ECS allows 10 per task definition).
pub const MAX_CONTAINERS: usize = 64;
/// Port bindings of one container.
pub const MAX_BINDINGS: usize = 256;
/// Folded and dropped seq ranges one envelope may carry.
pub const MAX_RANGES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{field} is {len} bytes, more than {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is empty or has a character outside printable ASCII")]
    Charset { field: &'static str },
    #[error("{field} lists {count} entries, more than {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
}

/// `envelope`'s message, checked: refused whole when an identifier or a list is out of
/// bounds; otherwise with its free text cut to bounds, and how many fields were cut.
pub fn check(envelope: &Envelope) -> Result<(Message, usize), Refusal> {
    let ranges = envelope.folded.len() + envelope.dropped.len();
    count("folded and dropped seq ranges", ranges, MAX_RANGES)?;
    let mut message = envelope.entry.message.clone();
    let mut cut = 0;
    match &mut message {
        Message::TaskState { task } => report(task, &mut cut)?,
        Message::Event {
            task_arn,
            container,
            message,
            ..
        } => {
            optional_id("event taskArn", task_arn.as_deref())?;
            optional_id("event container", container.as_deref())?;
            text(message, &mut cut);
        }
        Message::FullState { tasks, .. } => {
            count("full state tasks", tasks.len(), MAX_TASKS)?;
            for t in tasks {
                report(t, &mut cut)?;
            }
        }
        // The agent's own words ("log lines", "task events (…)"): free text.
        Message::Dropped { what, .. } => text(what, &mut cut),
        Message::ContainerMetrics { containers } => {
            count("container metrics", containers.len(), MAX_CONTAINER_USAGES)?;
            for c in containers.iter() {
                id("container metrics taskArn", &c.task_arn)?;
                id("container metrics container", &c.container)?;
            }
        }
        Message::Applied { .. } | Message::Metrics(_) => {}
    }
    Ok((message, cut))
}

fn report(r: &mut TaskReport, cut: &mut usize) -> Result<(), Refusal> {
    id("taskArn", &r.task_arn)?;
    optional_id("taskDefinitionArn", r.task_definition_arn.as_deref())?;
    optional_id("stopCode", r.stop_code.as_deref())?;
    optional_id("group", r.group.as_deref())?;
    optional_id("replaces", r.replaces.as_deref())?;
    optional_id("replacedBy", r.replaced_by.as_deref())?;
    count("containers", r.containers.len(), MAX_CONTAINERS)?;
    for c in &mut r.containers {
        container(c, cut)?;
    }
    if let Some(reason) = &mut r.stopped_reason {
        text(reason, cut);
    }
    Ok(())
}

fn container(c: &mut ContainerReport, cut: &mut usize) -> Result<(), Refusal> {
    id("container name", &c.name)?;
    id("container image", &c.image)?;
    optional_id("container runtimeId", c.runtime_id.as_deref())?;
    count(
        "container networkBindings",
        c.network_bindings.len(),
        MAX_BINDINGS,
    )?;
    for b in &c.network_bindings {
        id("container bindIP", &b.bind_ip)?;
    }
    if let Some(reason) = &mut c.reason {
        text(reason, cut);
    }
    Ok(())
}

fn count(field: &'static str, count: usize, max: usize) -> Result<(), Refusal> {
    if count > max {
        return Err(Refusal::TooMany { field, count, max });
    }
    Ok(())
}

/// An identifier: 1 to [`MAX_ID`] bytes of printable ASCII, no spaces.
fn id(field: &'static str, value: &str) -> Result<(), Refusal> {
    if value.len() > MAX_ID {
        return Err(Refusal::TooLong {
            field,
            len: value.len(),
            max: MAX_ID,
        });
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::Charset { field });
    }
    Ok(())
}

fn optional_id(field: &'static str, value: Option<&str>) -> Result<(), Refusal> {
    value.map_or(Ok(()), |v| id(field, v))
}

/// Free text: control characters become U+FFFD and it is cut to [`MAX_TEXT`] bytes at a
/// character boundary; `cut` counts each field changed.
fn text(value: &mut String, cut: &mut usize) {
    let clean = value.len() <= MAX_TEXT && !value.chars().any(char::is_control);
    if clean {
        return;
    }
    let mut out = String::with_capacity(value.len().min(MAX_TEXT));
    for c in value.chars() {
        let c = if c.is_control() { '\u{fffd}' } else { c };
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(c);
    }
    *value = out;
    *cut += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use skerry_proto::desired::DesiredStatus;
    use skerry_proto::link::{Entry, EventKind};
    use skerry_proto::status::{HealthStatus, TaskStatus};

    fn envelope(message: Message) -> Envelope {
        Envelope {
            seq: 1,
            folded: Vec::new(),
            dropped: Vec::new(),
            entry: Entry { time: 1.0, message },
        }
    }

    fn task(arn: &str) -> TaskReport {
        TaskReport {
            task_arn: arn.into(),
            task_definition_arn: None,
            last_status: TaskStatus::Running,
            desired_status: DesiredStatus::Running,
            stopped_reason: None,
            stop_code: None,
            health_status: HealthStatus::Unknown,
            created_at: None,
            started_at: None,
            stopping_at: None,
            stopped_at: None,
            containers: Vec::new(),
            group: None,
            replaces: None,
            replaced_by: None,
        }
    }

    fn state(t: TaskReport) -> Envelope {
        envelope(Message::TaskState { task: t })
    }

    #[test]
    fn identifiers_out_of_length_or_charset_refuse_the_message() {
        let long = "a".repeat(MAX_ID + 1);
        assert_eq!(
            check(&state(task(&long))),
            Err(Refusal::TooLong {
                field: "taskArn",
                len: MAX_ID + 1,
                max: MAX_ID
            })
        );
        assert!(check(&state(task(&"a".repeat(MAX_ID)))).is_ok());
        for bad in ["", "arn with space", "arn\u{1b}[2J", "arné"] {
            assert_eq!(
                check(&state(task(bad))),
                Err(Refusal::Charset { field: "taskArn" }),
                "{bad:?}"
            );
        }
        let mut t = task("arn:ok");
        t.replaced_by = Some("x\ny".into());
        assert_eq!(
            check(&state(t)),
            Err(Refusal::Charset {
                field: "replacedBy"
            })
        );
        let event = envelope(Message::Event {
            kind: EventKind::Other,
            task_arn: None,
            container: Some(long.clone()),
            message: "fine".into(),
        });
        assert!(matches!(
            check(&event),
            Err(Refusal::TooLong {
                field: "event container",
                ..
            })
        ));
        // What the agent says it dropped is free text: kept as it is.
        let dropped = envelope(Message::Dropped {
            what: "task events (the outbox could not take them fast enough)".into(),
            count: 1,
        });
        assert_eq!(
            check(&dropped).expect("kept"),
            (dropped.entry.message.clone(), 0)
        );
        let long_what = envelope(Message::Dropped {
            what: "x".repeat(MAX_TEXT + 1),
            count: 1,
        });
        assert_eq!(check(&long_what).expect("cut").1, 1);
    }

    #[test]
    fn lists_out_of_bounds_refuse_the_message() {
        let full = envelope(Message::FullState {
            generation: 1,
            tasks: vec![task("arn:t"); MAX_TASKS + 1],
        });
        assert_eq!(
            check(&full),
            Err(Refusal::TooMany {
                field: "full state tasks",
                count: MAX_TASKS + 1,
                max: MAX_TASKS
            })
        );
        let mut ranges = envelope(Message::Applied { generation: 1 });
        ranges.folded = vec![(1, 1); MAX_RANGES + 1];
        assert!(matches!(check(&ranges), Err(Refusal::TooMany { .. })));
    }

    #[test]
    fn free_text_is_cut_and_cleaned_and_counted() {
        let mut t = task("arn:t");
        t.stopped_reason = Some("é".repeat(MAX_TEXT));
        let (m, cut) = check(&state(t)).expect("kept");
        let Message::TaskState { task } = m else {
            panic!("same message")
        };
        let reason = task.stopped_reason.expect("reason");
        assert!(reason.len() <= MAX_TEXT && reason.len() > MAX_TEXT - 2);
        assert_eq!(cut, 1);
        let event = envelope(Message::Event {
            kind: EventKind::Other,
            task_arn: None,
            container: None,
            message: "bell\u{7} and\r\nescape\u{1b}[31m".into(),
        });
        let (m, cut) = check(&event).expect("kept");
        assert_eq!(cut, 1);
        let Message::Event { message, .. } = m else {
            panic!("same message")
        };
        assert_eq!(
            message,
            "bell\u{fffd} and\u{fffd}\u{fffd}escape\u{fffd}[31m"
        );
        // Clean text passes untouched and uncounted.
        let ok = envelope(Message::Event {
            kind: EventKind::Other,
            task_arn: Some("arn:t".into()),
            container: Some("web".into()),
            message: "restarted (exit 1)".into(),
        });
        assert_eq!(check(&ok).expect("kept"), (ok.entry.message.clone(), 0));
    }
}
