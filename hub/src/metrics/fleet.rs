//! The fleet's figures as Prometheus families: per instance, per service, per live task.
//!
//! Labels carry only what the hub assigned or an operator named: instance ids (the hub
//! issues them), cluster, service and task definition family names (made through the API),
//! task ids and container names (of tasks the hub lists on that instance). The two
//! device-reported strings, agent version and architecture, sit on one info series per
//! instance, cut to [`MAX_LABEL_LEN`]. A device's container figures show only for
//! containers of its own tasks not STOPPED (`store/fleet.rs` joins them). So the series
//! count is at most `INSTANCE_SERIES` per ACTIVE instance, 3 per live service, 1 per task
//! not STOPPED and `CONTAINER_SERIES` per container of those tasks: about 110,000 plus
//! 5 per running container for 10,000 devices.

use skerry_proto::link::HostMetrics;

use super::text::{Encoder, Kind};
use crate::store::{ContainerFigures, FleetFigures, InstanceFigures};

/// A device-reported label value is cut to this many characters.
pub const MAX_LABEL_LEN: usize = 64;
/// Series per ACTIVE instance, the most [`render`] writes for one.
pub const INSTANCE_SERIES: usize = 11;
/// Series per container of a task not STOPPED.
pub const CONTAINER_SERIES: usize = 4;

const MIB: f64 = 1024.0 * 1024.0;

/// A gauge of one instance, read from its row and its latest host metrics (`None`: no
/// sample for this instance, or not this figure).
struct InstanceGauge {
    name: &'static str,
    help: &'static str,
    value: fn(&InstanceFigures, Option<&HostMetrics>) -> Option<f64>,
}

const INSTANCE_GAUGES: &[InstanceGauge] = &[
    InstanceGauge {
        name: "skerry_instance_connected",
        help: "1 while the instance's agent is connected to the broker.",
        value: |i, _| Some(f64::from(u8::from(i.connected))),
    },
    InstanceGauge {
        name: "skerry_instance_last_seen_timestamp_seconds",
        help: "When the hub last heard from the instance (hub clock, Unix seconds).",
        value: |i, _| i.last_seen_at,
    },
    InstanceGauge {
        name: "skerry_instance_metrics_timestamp_seconds",
        help: "When the instance took its latest host sample (device clock, Unix seconds).",
        value: |i, m| m.and(i.metrics_at),
    },
    InstanceGauge {
        name: "skerry_instance_outbox_pending_records",
        help: "Outbox records the agent had not yet delivered at its latest sample.",
        value: |_, m| m?.outbox_pending_records.map(|n| n as f64),
    },
    InstanceGauge {
        name: "skerry_instance_cpu_usage_ratio",
        help: "Host CPU in use over all cores at the latest sample, 0 to 1.",
        value: |_, m| m.map(|m| f64::from(m.cpu_percent) / 100.0),
    },
    InstanceGauge {
        name: "skerry_instance_memory_used_bytes",
        help: "Host memory in use at the latest sample.",
        value: |_, m| m.map(|m| m.memory_used_mib as f64 * MIB),
    },
    InstanceGauge {
        name: "skerry_instance_memory_total_bytes",
        help: "Host memory in total.",
        value: |_, m| m.map(|m| m.memory_total_mib as f64 * MIB),
    },
    InstanceGauge {
        name: "skerry_instance_disk_used_bytes",
        help: "Space in use on the agent's data partition at the latest sample.",
        value: |_, m| m.map(|m| m.disk_used_mib as f64 * MIB),
    },
    InstanceGauge {
        name: "skerry_instance_disk_total_bytes",
        help: "Size of the agent's data partition.",
        value: |_, m| m.map(|m| m.disk_total_mib as f64 * MIB),
    },
    InstanceGauge {
        name: "skerry_instance_temperature_celsius",
        help: "The board's hottest thermal zone at the latest sample, where it has one.",
        value: |_, m| m?.temperature_c.map(f64::from),
    },
];

/// Cuts a device-reported label value to [`MAX_LABEL_LEN`] characters.
fn bounded(value: &str) -> &str {
    match value.char_indices().nth(MAX_LABEL_LEN) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

/// The task id: what follows the last `/` of its ARN.
pub fn task_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

pub fn render(fleet: &FleetFigures, e: &mut Encoder) {
    let samples: Vec<Option<HostMetrics>> = fleet
        .instances
        .iter()
        .map(|i| {
            let json = i.metrics.as_deref()?;
            serde_json::from_str(json)
                .map_err(|err| tracing::debug!(instance = %i.id, error = %err, "stored host metrics unreadable"))
                .ok()
        })
        .collect();
    e.family(
        "skerry_instance_info",
        Kind::Gauge,
        "1 for each ACTIVE instance, with its architecture and agent version.",
    );
    for i in &fleet.instances {
        let labels = [
            ("cluster", i.cluster.as_str()),
            ("instance_id", i.id.as_str()),
            ("architecture", bounded(&i.architecture)),
            ("agent_version", bounded(&i.agent_version)),
        ];
        e.sample("skerry_instance_info", &labels, 1.0);
    }
    for gauge in INSTANCE_GAUGES {
        e.family(gauge.name, Kind::Gauge, gauge.help);
        for (i, m) in fleet.instances.iter().zip(&samples) {
            if let Some(v) = (gauge.value)(i, m.as_ref()) {
                let labels = [
                    ("cluster", i.cluster.as_str()),
                    ("instance_id", i.id.as_str()),
                ];
                e.sample(gauge.name, &labels, v);
            }
        }
    }
    render_services(fleet, e);
    e.family(
        "skerry_task_status",
        Kind::Gauge,
        "1 for each task not yet STOPPED, its last reported status in the status label.",
    );
    for t in &fleet.tasks {
        let labels = [
            ("cluster", t.cluster.as_str()),
            ("instance_id", t.instance_id.as_str()),
            ("task_id", task_id(&t.arn)),
            ("family", t.family.as_deref().unwrap_or("")),
            ("status", t.last_status.as_str()),
        ];
        e.sample("skerry_task_status", &labels, 1.0);
    }
    render_containers(fleet, e);
}

/// A family of the containers' figures: name, kind, help, and the value (`None`: not sent).
type ContainerFamily = (
    &'static str,
    Kind,
    &'static str,
    fn(&ContainerFigures) -> Option<f64>,
);

const CONTAINER_FAMILIES: [ContainerFamily; CONTAINER_SERIES] = [
    (
        "skerry_container_cpu_usage_seconds_total",
        Kind::Counter,
        "CPU time the container used since it started (cgroup cpu.stat usage_usec).",
        |c| Some(c.cpu_usage_usec as f64 / 1e6),
    ),
    (
        "skerry_container_memory_usage_bytes",
        Kind::Gauge,
        "Memory charged to the container at the latest sample (cgroup memory.current).",
        |c| Some(c.memory_bytes as f64),
    ),
    (
        "skerry_container_memory_limit_bytes",
        Kind::Gauge,
        "The container's memory limit (cgroup memory.max), where it has one.",
        |c| c.memory_limit_bytes.map(|v| v as f64),
    ),
    (
        "skerry_container_memory_peak_bytes",
        Kind::Gauge,
        "The most memory the container held (cgroup memory.peak, Linux 5.19 on).",
        |c| c.memory_peak_bytes.map(|v| v as f64),
    ),
];

fn render_containers(fleet: &FleetFigures, e: &mut Encoder) {
    for (name, kind, help, value) in CONTAINER_FAMILIES {
        e.family(name, kind, help);
        for c in &fleet.containers {
            if let Some(v) = value(c) {
                let labels = [
                    ("cluster", c.cluster.as_str()),
                    ("instance_id", c.instance_id.as_str()),
                    ("task_id", task_id(&c.task_arn)),
                    ("container", c.container.as_str()),
                ];
                e.sample(name, &labels, v);
            }
        }
    }
}

fn render_services(fleet: &FleetFigures, e: &mut Encoder) {
    type Count = fn(&crate::store::ServiceFigures) -> i64;
    let families: [(&str, &str, Count); 3] = [
        (
            "skerry_service_desired_tasks",
            "Tasks the service should run.",
            |s| s.desired,
        ),
        (
            "skerry_service_running_tasks",
            "The service's tasks whose last reported status is RUNNING.",
            |s| s.running,
        ),
        (
            "skerry_service_pending_tasks",
            "The service's tasks on their way to RUNNING.",
            |s| s.pending,
        ),
    ];
    for (name, help, count) in families {
        e.family(name, Kind::Gauge, help);
        for s in &fleet.services {
            let labels = [
                ("cluster", s.cluster.as_str()),
                ("service", s.name.as_str()),
            ];
            e.sample(name, &labels, count(s) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ServiceFigures, TaskFigures};

    fn instance(id: &str, metrics: Option<&str>) -> InstanceFigures {
        InstanceFigures {
            id: id.into(),
            cluster: "default".into(),
            architecture: "arm64".into(),
            agent_version: "v\"1\n".repeat(40),
            connected: true,
            last_seen_at: Some(1700000000.5),
            metrics: metrics.map(str::to_string),
            metrics_at: Some(1700000000.0),
        }
    }

    #[test]
    fn instances_services_and_tasks() {
        let fleet = FleetFigures {
            instances: vec![
                instance(
                    "mi-00000000000000001",
                    Some(
                        r#"{"cpuPercent":50,"memoryUsedMib":1,"memoryTotalMib":2,"diskUsedMib":3,"diskTotalMib":4,"temperatureC":41.5,"outboxPendingRecords":7}"#,
                    ),
                ),
                instance("mi-00000000000000002", Some("not json")),
            ],
            services: vec![ServiceFigures {
                cluster: "default".into(),
                name: "web".into(),
                desired: 3,
                running: 2,
                pending: 1,
            }],
            tasks: vec![TaskFigures {
                arn: "arn:aws:ecs:us-east-1:000000000000:task/default/abc123".into(),
                cluster: "default".into(),
                instance_id: "mi-00000000000000001".into(),
                family: None,
                last_status: "RUNNING".into(),
            }],
            containers: vec![ContainerFigures {
                cluster: "default".into(),
                instance_id: "mi-00000000000000001".into(),
                task_arn: "arn:aws:ecs:us-east-1:000000000000:task/default/abc123".into(),
                container: "web".into(),
                cpu_usage_usec: 1_500_000,
                memory_bytes: 8 << 20,
                memory_limit_bytes: None,
                memory_peak_bytes: Some(9 << 20),
            }],
        };
        let mut e = Encoder::new();
        render(&fleet, &mut e);
        let text = e.finish();
        let one = "{cluster=\"default\",instance_id=\"mi-00000000000000001\"}";
        let two = "{cluster=\"default\",instance_id=\"mi-00000000000000002\"}";
        for line in [
            format!("skerry_instance_connected{one} 1"),
            format!("skerry_instance_connected{two} 1"),
            format!("skerry_instance_last_seen_timestamp_seconds{one} 1700000000.5"),
            format!("skerry_instance_cpu_usage_ratio{one} 0.5"),
            format!("skerry_instance_memory_total_bytes{one} 2097152"),
            format!("skerry_instance_temperature_celsius{one} 41.5"),
            format!("skerry_instance_outbox_pending_records{one} 7"),
            "skerry_service_desired_tasks{cluster=\"default\",service=\"web\"} 3".into(),
            "skerry_service_pending_tasks{cluster=\"default\",service=\"web\"} 1".into(),
            "skerry_task_status{cluster=\"default\",instance_id=\"mi-00000000000000001\",task_id=\"abc123\",family=\"\",status=\"RUNNING\"} 1".into(),
            "skerry_container_cpu_usage_seconds_total{cluster=\"default\",instance_id=\"mi-00000000000000001\",task_id=\"abc123\",container=\"web\"} 1.5".into(),
            "skerry_container_memory_usage_bytes{cluster=\"default\",instance_id=\"mi-00000000000000001\",task_id=\"abc123\",container=\"web\"} 8388608".into(),
            "skerry_container_memory_peak_bytes{cluster=\"default\",instance_id=\"mi-00000000000000001\",task_id=\"abc123\",container=\"web\"} 9437184".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        // An unreadable sample leaves its figures out rather than inventing them.
        assert!(!text.contains(&format!("skerry_instance_cpu_usage_ratio{two}")));
        assert!(!text.contains("skerry_container_memory_limit_bytes{"));
        // The device's version string is cut and escaped.
        let info = text
            .lines()
            .find(|l| l.starts_with("skerry_instance_info{") && l.contains("00001"))
            .expect("info");
        assert!(
            info.contains(&format!("agent_version=\"{}\"", "v\\\"1\\n".repeat(16))),
            "{info}"
        );
        let per_instance = text.lines().filter(|l| l.contains("00001\"")).count();
        assert!(
            per_instance <= INSTANCE_SERIES + 1 + CONTAINER_SERIES,
            "{per_instance}"
        );
    }
}
