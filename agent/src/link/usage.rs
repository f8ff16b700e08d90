//! Per-container figures for the hub, sampled every `container_metrics_interval` and
//! appended as one `Metric` record (droppable, like the host figures): CPU time and memory
//! of each running container, read from the cgroup runc makes for it at
//! `/skerry/<namespace>/<task id>/<container>` (see `cgroup`): on a unified cgroup v2
//! hierarchy `cpu.stat` and `memory.{current,max,peak}`; on cgroup v1 (older boards'
//! kernels, hybrid hosts) `cpuacct.usage` and `memory.{usage,limit,max_usage}_in_bytes`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skerry_proto::desired::task_id_of;
use skerry_proto::link::{ContainerUsage, Message, MAX_CONTAINER_USAGES};
use skerry_proto::status::{TaskReport, TaskStatus};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Outbound;
use crate::outbox::Class;
use crate::reconcile::Handle;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The figures of every RUNNING container of `tasks` whose cgroup under `root` can be read,
/// at most [`MAX_CONTAINER_USAGES`].
pub fn sample(root: &Path, namespace: &str, tasks: &[TaskReport]) -> Vec<ContainerUsage> {
    let running = tasks
        .iter()
        .filter(|t| t.last_status == TaskStatus::Running)
        .flat_map(|t| {
            t.containers
                .iter()
                .filter(|c| c.last_status == TaskStatus::Running)
                .map(move |c| (t, c))
        });
    running
        .filter_map(|(t, c)| {
            let rel = Path::new("skerry")
                .join(namespace)
                .join(task_id_of(&t.task_arn))
                .join(&c.name);
            read(root, &rel, &t.task_arn, &c.name)
        })
        .take(MAX_CONTAINER_USAGES)
        .collect()
}

/// v1 reports "no limit" as a huge number (the largest page-aligned i64).
const V1_UNLIMITED: u64 = 1 << 62;

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read(root: &Path, rel: &Path, task_arn: &str, container: &str) -> Option<ContainerUsage> {
    let usage = |cpu_usage_usec, memory_bytes, memory_limit_bytes, memory_peak_bytes| {
        Some(ContainerUsage {
            task_arn: task_arn.to_string(),
            container: container.to_string(),
            cpu_usage_usec,
            memory_bytes,
            memory_limit_bytes,
            memory_peak_bytes,
        })
    };
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(rel);
        let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let usec = cpu
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))?
            .trim()
            .parse()
            .ok()?;
        return usage(
            usec,
            read_number(&dir.join("memory.current"))?,
            // "max" is no limit, which does not parse.
            read_number(&dir.join("memory.max")),
            read_number(&dir.join("memory.peak")),
        );
    }
    let memory = root.join("memory").join(rel);
    let nanos = read_number(&root.join("cpuacct").join(rel).join("cpuacct.usage"))?;
    usage(
        nanos / 1000,
        read_number(&memory.join("memory.usage_in_bytes"))?,
        read_number(&memory.join("memory.limit_in_bytes")).filter(|l| *l < V1_UNLIMITED),
        read_number(&memory.join("memory.max_usage_in_bytes")),
    )
}

pub async fn run(
    handle: Handle,
    namespace: String,
    interval: Duration,
    out: Outbound,
    stop: CancellationToken,
) {
    let root = PathBuf::from(CGROUP_ROOT);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_any = false;
    // The first tick is immediate; the agent's tasks are still starting then.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let containers = sample(&root, &namespace, &handle.tasks());
        // One empty set tells the hub the last containers are gone; more say nothing new.
        if containers.is_empty() && !sent_any {
            continue;
        }
        sent_any = !containers.is_empty();
        let message = Message::ContainerMetrics { containers };
        if let Err(e) = out.append(Class::Metric, message).await {
            // Metrics are the first to go when the outbox is full; that is by design.
            debug!("container metrics not recorded: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skerry_proto::desired::DesiredStatus;
    use skerry_proto::status::{ContainerReport, HealthStatus};

    fn task(arn: &str, status: TaskStatus, containers: &[(&str, TaskStatus)]) -> TaskReport {
        TaskReport {
            task_arn: arn.into(),
            task_definition_arn: None,
            last_status: status,
            desired_status: DesiredStatus::Running,
            stopped_reason: None,
            stop_code: None,
            health_status: HealthStatus::Unknown,
            created_at: None,
            started_at: None,
            stopping_at: None,
            stopped_at: None,
            containers: containers
                .iter()
                .map(|(name, s)| ContainerReport {
                    name: (*name).into(),
                    runtime_id: None,
                    last_status: *s,
                    exit_code: None,
                    reason: None,
                    health_status: HealthStatus::Unknown,
                    network_bindings: Vec::new(),
                    image: "busybox".into(),
                })
                .collect(),
            group: None,
            replaces: None,
            replaced_by: None,
        }
    }

    fn cgroup(root: &Path, task: &str, container: &str, files: &[(&str, &str)]) {
        let dir = root.join("skerry/skerry").join(task).join(container);
        if !root.ends_with("memory") && !root.ends_with("cpuacct") {
            std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").expect("v2");
        }
        std::fs::create_dir_all(&dir).expect("cgroup dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("cgroup file");
        }
    }

    /// The first task's `web` container on a cgroup v1 layout with the figures the v2 test
    /// writes, sampled.
    fn v1_sample(tasks: &[TaskReport]) -> Vec<ContainerUsage> {
        let root = tempfile::tempdir().expect("tempdir");
        cgroup(
            &root.path().join("memory"),
            "t1",
            "web",
            &[
                ("memory.usage_in_bytes", "8388608\n"),
                ("memory.limit_in_bytes", "67108864\n"),
                ("memory.max_usage_in_bytes", "9000000\n"),
            ],
        );
        cgroup(
            &root.path().join("cpuacct"),
            "t1",
            "web",
            &[("cpuacct.usage", "1500000999\n")],
        );
        cgroup(
            &root.path().join("memory"),
            "t1",
            "side",
            &[
                ("memory.usage_in_bytes", "1\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
            ],
        );
        cgroup(
            &root.path().join("cpuacct"),
            "t1",
            "side",
            &[("cpuacct.usage", "1\n")],
        );
        let got = sample(root.path(), "skerry", tasks);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[1].memory_limit_bytes, None,
            "v1's unlimited is no limit"
        );
        got
    }

    #[test]
    fn running_containers_with_readable_cgroups() {
        let root = tempfile::tempdir().expect("tempdir");
        let arn = "arn:aws:ecs:us-east-1:000000000000:task/default/t1";
        cgroup(
            root.path(),
            "t1",
            "web",
            &[
                (
                    "cpu.stat",
                    "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
                ),
                ("memory.current", "8388608\n"),
                ("memory.max", "67108864\n"),
                ("memory.peak", "9000000\n"),
            ],
        );
        cgroup(
            root.path(),
            "t1",
            "side",
            &[
                ("cpu.stat", "usage_usec 7\n"),
                ("memory.current", "4096\n"),
                ("memory.max", "max\n"),
            ],
        );
        // Stopped containers and tasks, and a container without a cgroup, are left out.
        cgroup(
            root.path(),
            "t1",
            "done",
            &[("cpu.stat", "usage_usec 1\n"), ("memory.current", "1\n")],
        );
        let tasks = [
            task(
                arn,
                TaskStatus::Running,
                &[
                    ("web", TaskStatus::Running),
                    ("side", TaskStatus::Running),
                    ("done", TaskStatus::Stopped),
                    ("gone", TaskStatus::Running),
                ],
            ),
            task(
                "arn:aws:ecs:us-east-1:000000000000:task/default/t2",
                TaskStatus::Stopped,
                &[("web", TaskStatus::Stopped)],
            ),
        ];
        let got = sample(root.path(), "skerry", &tasks);
        assert_eq!(
            v1_sample(&tasks[..1])[..1],
            got[..1],
            "v1 reads the same figures"
        );
        assert_eq!(
            got,
            [
                ContainerUsage {
                    task_arn: arn.into(),
                    container: "web".into(),
                    cpu_usage_usec: 1_500_000,
                    memory_bytes: 8 << 20,
                    memory_limit_bytes: Some(64 << 20),
                    memory_peak_bytes: Some(9_000_000),
                },
                ContainerUsage {
                    task_arn: arn.into(),
                    container: "side".into(),
                    cpu_usage_usec: 7,
                    memory_bytes: 4096,
                    memory_limit_bytes: None,
                    memory_peak_bytes: None,
                },
            ]
        );
    }
}
