//! The MQTT link (`v1`): topic names and the payloads carried on them.
//!
//! Per container instance `ID` (the managed instance id, `mi-…`, which is also the CN of the
//! device's client certificate and so its broker user name):
//!
//! | topic | direction | QoS | retained | payload |
//! |---|---|---|---|---|
//! | `skerry/v1/ID/desired` | hub → device | 1 | yes | [`crate::desired::DesiredState`] |
//! | `skerry/v1/ID/up` | device → hub | 1 | no | [`Envelope`] |
//! | `skerry/v1/ID/presence` | device → hub | 1 | yes | [`Presence`] (also the last will) |
//!
//! Everything a device says goes through `up`, in outbox order, so one sequence number
//! orders state changes, events, metrics and acknowledgements alike.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::status::TaskReport;

pub const ROOT: &str = "skerry/v1";
/// What the hub subscribes to for every device's messages.
pub const UP_FILTER: &str = "skerry/v1/+/up";
pub const PRESENCE_FILTER: &str = "skerry/v1/+/presence";
/// The largest payload a message of the link may carry, either way: the broker drops a
/// larger one (`message_size_limit`), the hub never publishes one, and both ends' MQTT
/// clients take packets above [`MAX_PACKET`]. One device's oversized message thus never
/// reaches the hub's session, where a client refusing it would reconnect into it for ever.
pub const MAX_PAYLOAD: usize = 2 << 20;
/// The largest packet the broker takes (`max_packet_size`; a client sending a larger one is
/// disconnected): [`MAX_PAYLOAD`] with room for the fixed header, the longest topic MQTT
/// allows and the packet id.
pub const MAX_PACKET: usize = MAX_PAYLOAD + 5 + 2 + 65_535 + 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Desired,
    Up,
    Presence,
}

impl Channel {
    fn suffix(self) -> &'static str {
        match self {
            Channel::Desired => "desired",
            Channel::Up => "up",
            Channel::Presence => "presence",
        }
    }
}

/// The topic of `channel` for the instance `instance_id`.
pub fn topic(instance_id: &str, channel: Channel) -> String {
    format!("{ROOT}/{instance_id}/{}", channel.suffix())
}

/// Splits a topic of this protocol into its instance id and channel.
pub fn parse_topic(topic: &str) -> Option<(&str, Channel)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let (id, suffix) = rest.split_once('/')?;
    if id.is_empty() || id.contains(['+', '#']) {
        return None;
    }
    let channel = [Channel::Desired, Channel::Up, Channel::Presence]
        .into_iter()
        .find(|c| c.suffix() == suffix)?;
    Some((id, channel))
}

/// One message on `up`: what the device's outbox recorded, with the sequence numbers it
/// accounts for. A receiver treats every seq in [`Envelope::covers`] as delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    /// Per instance, strictly increasing across restarts of the agent.
    pub seq: u64,
    /// Earlier seqs this message supersedes (coalesced state changes), as inclusive ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folded: Vec<(u64, u64)>,
    /// Seqs whose messages were dropped under pressure (metrics, logs); only on markers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<(u64, u64)>,
    pub entry: Entry,
}

impl Envelope {
    /// Every seq this message accounts for, its own included, as sorted inclusive ranges.
    pub fn covers(&self) -> Vec<RangeInclusive<u64>> {
        let mut v: Vec<RangeInclusive<u64>> = self
            .folded
            .iter()
            .chain(&self.dropped)
            .map(|&(a, b)| a..=b)
            .chain(std::iter::once(self.seq..=self.seq))
            .collect();
        v.sort_by_key(|r| *r.start());
        let mut out: Vec<RangeInclusive<u64>> = Vec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(last) if *r.start() <= last.end().saturating_add(1) => {
                    if r.end() > last.end() {
                        *last = *last.start()..=*r.end();
                    }
                }
                _ => out.push(r),
            }
        }
        out
    }
}

/// What the device recorded, and when (its own clock, epoch seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    pub time: f64,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Message {
    /// A task changed: its whole report as it now stands.
    #[serde(rename_all = "camelCase")]
    TaskState {
        task: TaskReport,
    },
    /// Something happened that a state alone does not say: a restart, a health change, a
    /// task replaced locally.
    #[serde(rename_all = "camelCase")]
    Event {
        kind: EventKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_arn: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
        message: String,
    },
    /// The device committed this desired-state generation.
    #[serde(rename_all = "camelCase")]
    Applied {
        generation: u64,
    },
    /// Every task the device knows and the generation it runs, sent after each (re)connect
    /// once the outbox has drained.
    #[serde(rename_all = "camelCase")]
    FullState {
        generation: u64,
        tasks: Vec<TaskReport>,
    },
    Metrics(HostMetrics),
    /// The latest figures of every running container, from its cgroup; the hub keeps only
    /// the latest set per instance.
    #[serde(rename_all = "camelCase")]
    ContainerMetrics {
        containers: Vec<ContainerUsage>,
    },
    /// Stands for messages dropped under the outbox's bound.
    #[serde(rename_all = "camelCase")]
    Dropped {
        what: String,
        count: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    ContainerRestarted,
    ContainerExited,
    HealthChanged,
    TaskReplaced,
    TaskFailedToStart,
    Registered,
    /// The device booted the other OS slot because the one it preferred did not commit.
    OsRolledBack,
    Other,
}

/// Periodic host figures. Sizes in MiB; `cpu_percent` over all cores (0..=100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostMetrics {
    pub cpu_percent: f32,
    pub memory_used_mib: u64,
    pub memory_total_mib: u64,
    pub disk_used_mib: u64,
    pub disk_total_mib: u64,
    /// Degrees Celsius where the board has a sensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f32>,
    /// Outbox records not yet acknowledged by the broker when the sample was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_pending_records: Option<u64>,
}

/// Most containers one [`Message::ContainerMetrics`] carries; the hub keeps no more.
pub const MAX_CONTAINER_USAGES: usize = 256;

/// One container's figures from cgroup v2, at the time of the entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerUsage {
    pub task_arn: String,
    pub container: String,
    /// CPU time used since the container started (`cpu.stat` `usage_usec`).
    pub cpu_usage_usec: u64,
    /// Memory charged to it now (`memory.current`).
    pub memory_bytes: u64,
    /// Its own limit (`memory.max`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// The most it ever held (`memory.peak`, Linux 5.19 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
}

/// The retained presence of a device; the broker publishes the `online: false` form as the
/// device's last will when its connection drops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Presence {
    pub online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// The OS version of the slot the device booted (the image build's `--version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// The slot the device booted: `A` or `B`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_slot: Option<String>,
}

/// The longest OS version accepted.
pub const OS_VERSION_MAX: usize = 64;

/// An OS version: 1 to [`OS_VERSION_MAX`] ASCII letters, digits and `.+-_~`, starting
/// with a letter or a digit (what `skerry image build --version` accepts).
pub fn valid_os_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= OS_VERSION_MAX
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-_~".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        let id = "mi-0123456789abcdef0";
        for c in [Channel::Desired, Channel::Up, Channel::Presence] {
            assert_eq!(parse_topic(&topic(id, c)), Some((id, c)));
        }
        assert_eq!(parse_topic("skerry/v1/+/up"), None);
        assert_eq!(parse_topic("skerry/v2/mi-1/up"), None);
        assert_eq!(parse_topic("skerry/v1/mi-1/down"), None);
    }

    #[test]
    fn envelope_wire_shape_and_coverage() {
        let e = Envelope {
            seq: 9,
            folded: vec![(3, 4), (7, 8)],
            dropped: vec![],
            entry: Entry {
                time: 1.5,
                message: Message::Applied { generation: 4 },
            },
        };
        let json = serde_json::to_string(&e).expect("serialize");
        assert_eq!(
            json,
            r#"{"seq":9,"folded":[[3,4],[7,8]],"entry":{"time":1.5,"message":{"type":"applied","generation":4}}}"#
        );
        let back: Envelope = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, e);
        assert_eq!(back.covers(), vec![3..=4, 7..=9]);
    }

    #[test]
    fn unknown_message_type_is_an_error() {
        let bad = r#"{"seq":1,"entry":{"time":0,"message":{"type":"reboot"}}}"#;
        assert!(serde_json::from_str::<Envelope>(bad).is_err());
    }
}
