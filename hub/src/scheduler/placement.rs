//! Placement and service plans, pure: no store, no clock. The caller reads the candidates
//! and live tasks and applies the result in its transaction.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use skerry_proto::taskdef::{NetworkMode, TaskDefinition};

use crate::store::InstanceLoad;

/// A service whose task failed to start waits this long before placing the next one, twice
/// as long after each further failure in a row, up to [`THROTTLE_MAX`]; a task of it that
/// reaches RUNNING resets the count. An image that does not exist would otherwise have
/// the service place a task every tick, for ever.
pub const THROTTLE_BASE: Duration = Duration::from_secs(10);
pub const THROTTLE_MAX: Duration = Duration::from_secs(15 * 60);

/// What a task reserves on its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// CPU units (1024 per core).
    pub cpu: i64,
    /// MiB.
    pub memory: i64,
    /// Fixed host ports, as `8080/tcp`.
    pub ports: Vec<String>,
}

impl Demand {
    /// As ECS counts it: the task-level `cpu` and `memory` when given, else the sum over the
    /// containers of `cpu` and of `memoryReservation` (or `memory` without one).
    pub fn of(td: &TaskDefinition) -> Demand {
        let containers = &td.container_definitions;
        let cpu = td.cpu_units().map(u64::from).unwrap_or_else(|| {
            containers
                .iter()
                .map(|c| u64::from(c.cpu.unwrap_or(0)))
                .sum()
        });
        let memory = td.memory_mib().unwrap_or_else(|| {
            containers
                .iter()
                .map(|c| c.memory_reservation.or(c.memory).unwrap_or(0))
                .sum()
        });
        Demand {
            cpu: i64::try_from(cpu).unwrap_or(i64::MAX),
            memory: i64::try_from(memory).unwrap_or(i64::MAX),
            ports: host_ports(td),
        }
    }
}

/// The host ports a running task holds on its device, by the rule the agent checks a
/// document with: `containerPort` in host mode, a fixed `hostPort` otherwise.
pub fn host_ports(td: &TaskDefinition) -> Vec<String> {
    let host_mode = td.network_mode() == NetworkMode::Host;
    let mut ports = BTreeSet::new();
    for pm in td
        .container_definitions
        .iter()
        .flat_map(|c| c.port_mappings.iter().flatten())
    {
        let port = if host_mode {
            Some(pm.container_port())
        } else {
            pm.fixed_host_port()
        };
        if let Some(p) = port {
            ports.insert(format!("{p}/{}", pm.protocol().as_str()));
        }
    }
    ports.into_iter().collect()
}

/// An instance as placement sees it; updated as tasks are placed on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub arn: String,
    pub cpu_left: i64,
    pub memory_left: i64,
    pub ports: BTreeSet<String>,
    pub group_tasks: i64,
}

impl From<&InstanceLoad> for Candidate {
    fn from(l: &InstanceLoad) -> Self {
        Candidate {
            id: l.id.clone(),
            arn: l.arn.clone(),
            cpu_left: l.cpu_units - l.cpu_used,
            memory_left: l.memory_mib - l.memory_used,
            ports: l.ports.iter().cloned().collect(),
            group_tasks: l.group_tasks,
        }
    }
}

/// The resource no candidate had enough of, in ECS's failure words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    Memory,
    Cpu,
    Ports,
}

impl Shortage {
    pub fn reason(self) -> &'static str {
        match self {
            Shortage::Memory => "RESOURCE:MEMORY",
            Shortage::Cpu => "RESOURCE:CPU",
            Shortage::Ports => "RESOURCE:PORTS",
        }
    }

    pub(crate) fn what(self) -> &'static str {
        match self {
            Shortage::Memory => "memory",
            Shortage::Cpu => "CPU",
            Shortage::Ports => "ports",
        }
    }
}

/// A task that found no room, and the candidate that came closest (`None` with no
/// candidates at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub shortage: Shortage,
    pub closest: Option<usize>,
}

fn fits_memory(c: &Candidate, d: &Demand) -> bool {
    c.memory_left >= d.memory
}

fn fits_cpu(c: &Candidate, d: &Demand) -> bool {
    c.cpu_left >= d.cpu
}

fn fits_ports(c: &Candidate, d: &Demand) -> bool {
    d.ports.iter().all(|p| !c.ports.contains(p))
}

/// Places `count` tasks of one group, one at a time, each seeing the ones before it: an
/// index into `candidates` per task, or why it found no room.
pub fn place(
    candidates: &mut [Candidate],
    demand: &Demand,
    count: usize,
) -> Vec<Result<usize, Unplaced>> {
    (0..count)
        .map(|_| {
            let best = candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    fits_memory(c, demand) && fits_cpu(c, demand) && fits_ports(c, demand)
                })
                .min_by(|(_, a), (_, b)| {
                    a.group_tasks
                        .cmp(&b.group_tasks)
                        .then(b.memory_left.cmp(&a.memory_left))
                        .then(a.id.cmp(&b.id))
                })
                .map(|(i, _)| i);
            match best {
                Some(i) => {
                    let c = &mut candidates[i];
                    c.cpu_left -= demand.cpu;
                    c.memory_left -= demand.memory;
                    c.ports.extend(demand.ports.iter().cloned());
                    c.group_tasks += 1;
                    Ok(i)
                }
                None => Err(shortage(candidates, demand)),
            }
        })
        .collect()
}

/// Why nothing fits: memory if no instance has enough, else CPU among those with the
/// memory, else ports; with the candidate that came closest.
fn shortage(candidates: &[Candidate], d: &Demand) -> Unplaced {
    let by = |pick: &dyn Fn(&Candidate) -> i64, keep: &dyn Fn(&Candidate) -> bool| {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| keep(c))
            .max_by(|(_, a), (_, b)| pick(a).cmp(&pick(b)).then(b.id.cmp(&a.id)))
            .map(|(i, _)| i)
    };
    if !candidates.iter().any(|c| fits_memory(c, d)) {
        Unplaced {
            shortage: Shortage::Memory,
            closest: by(&|c| c.memory_left, &|_| true),
        }
    } else if !candidates
        .iter()
        .any(|c| fits_memory(c, d) && fits_cpu(c, d))
    {
        Unplaced {
            shortage: Shortage::Cpu,
            closest: by(&|c| c.cpu_left, &|c| fits_memory(c, d)),
        }
    } else {
        Unplaced {
            shortage: Shortage::Ports,
            closest: by(&|c| c.memory_left, &|c| fits_memory(c, d) && fits_cpu(c, d)),
        }
    }
}

/// The words of a placement failure for the closest candidate.
pub fn shortage_detail(u: &Unplaced, candidates: &[Candidate], d: &Demand) -> String {
    let Some(c) = u.closest.and_then(|i| candidates.get(i)) else {
        return "no container instance to place on".into();
    };
    match u.shortage {
        Shortage::Memory => format!(
            "the task reserves {} MiB of memory; the most any instance has left is {} MiB ({})",
            d.memory, c.memory_left, c.id
        ),
        Shortage::Cpu => format!(
            "the task reserves {} CPU units; the most any instance with the memory has left is {} ({})",
            d.cpu, c.cpu_left, c.id
        ),
        Shortage::Ports => format!(
            "the task needs host ports {}; every instance with room already has one of them taken",
            d.ports.join(", ")
        ),
    }
}

/// A live task of a service, as its plan sees it. Lists are in creation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTask {
    pub arn: String,
    pub instance_id: String,
    /// Of the service's current deployment.
    pub current: bool,
    /// Reported RUNNING.
    pub running: bool,
}

/// What a service needs now: tasks to stop, and how many to start (REPLICA) or where
/// (DAEMON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub stop: Vec<String>,
    pub start: usize,
    pub start_on: Vec<String>,
}

/// A REPLICA service: `desired` tasks of the current deployment. Surplus ones stop newest
/// first. Tasks of older deployments are replaced without dropping below
/// `min_healthy_percent` of `desired` RUNNING nor going above `max_percent` in total, as
/// ECS's rolling update does.
pub fn plan_replica(
    desired: usize,
    max_percent: u32,
    min_healthy_percent: u32,
    tasks: &[ServiceTask],
) -> Plan {
    let current: Vec<&ServiceTask> = tasks.iter().filter(|t| t.current).collect();
    let outdated: Vec<&ServiceTask> = tasks.iter().filter(|t| !t.current).collect();
    let kept = current.len().min(desired);
    let mut stop: Vec<String> = current[kept..]
        .iter()
        .rev()
        .map(|t| t.arn.clone())
        .collect();
    let min_healthy = (desired * min_healthy_percent as usize).div_ceil(100);
    let mut healthy = current[..kept].iter().filter(|t| t.running).count()
        + outdated.iter().filter(|t| t.running).count();
    let mut outdated_kept = outdated.len();
    // Those not yet running serve nothing; then the oldest running ones, while enough run.
    let order = outdated
        .iter()
        .filter(|t| !t.running)
        .chain(outdated.iter().filter(|t| t.running));
    for t in order {
        if !t.running || healthy > min_healthy {
            stop.push(t.arn.clone());
            outdated_kept -= 1;
            healthy -= usize::from(t.running);
        }
    }
    let max_total = (desired * max_percent as usize / 100).max(desired);
    let start = (desired - kept).min(max_total.saturating_sub(kept + outdated_kept));
    Plan {
        stop,
        start,
        start_on: Vec::new(),
    }
}

/// A DAEMON service: one task of the current deployment on each of `instances`; older
/// deployments' tasks stop at once (ECS's daemon default of 0% minimum healthy). Linear in
/// instances and tasks: the service loop runs it every tick for the whole fleet.
pub fn plan_daemon(instances: &[String], tasks: &[ServiceTask]) -> Plan {
    let mut plan = Plan::default();
    let wanted: HashSet<&str> = instances.iter().map(String::as_str).collect();
    let mut here: HashMap<&str, Vec<&ServiceTask>> = HashMap::new();
    for t in tasks {
        if !t.current || !wanted.contains(t.instance_id.as_str()) {
            plan.stop.push(t.arn.clone());
        }
        if t.current {
            here.entry(t.instance_id.as_str()).or_default().push(t);
        }
    }
    for id in instances {
        match here.get(id.as_str()).map(Vec::as_slice).unwrap_or_default() {
            [] => plan.start_on.push(id.clone()),
            [_, surplus @ ..] => plan
                .stop
                .extend(surplus.iter().rev().map(|t| t.arn.clone())),
        }
    }
    plan
}

/// How long a service waits after its latest task that failed to start, with `failures`
/// of them in a row.
pub fn throttle_delay(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => THROTTLE_BASE
            .saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
            .min(THROTTLE_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cand(id: &str, cpu: i64, memory: i64, group_tasks: i64) -> Candidate {
        Candidate {
            id: id.into(),
            arn: format!("arn:{id}"),
            cpu_left: cpu,
            memory_left: memory,
            ports: BTreeSet::new(),
            group_tasks,
        }
    }

    fn demand(cpu: i64, memory: i64) -> Demand {
        Demand {
            cpu,
            memory,
            ports: Vec::new(),
        }
    }

    #[test]
    fn placement_spreads_by_group_then_memory_then_id() {
        let mut c = vec![
            cand("a", 4096, 1000, 0),
            cand("b", 4096, 3000, 1),
            cand("c", 4096, 1000, 0),
        ];
        let placed = place(&mut c, &demand(0, 100), 4);
        // a and c have no task of the group; tie on memory, so by id. Then b has the most
        // memory among those with one task.
        assert_eq!(placed, vec![Ok(0), Ok(2), Ok(1), Ok(0)]);
        assert_eq!(c[0].memory_left, 800);
        assert_eq!(c[0].group_tasks, 2);
    }

    #[test]
    fn placement_without_room_names_the_resource_and_the_closest_instance() {
        let mut c = vec![cand("a", 4096, 300, 0), cand("b", 4096, 500, 0)];
        let placed = place(&mut c, &demand(0, 400), 3);
        assert_eq!(placed[0], Ok(1));
        let u = placed[1].clone().expect_err("no memory left");
        assert_eq!(u.shortage.reason(), "RESOURCE:MEMORY");
        assert_eq!(u.closest, Some(0), "a has 300 MiB, b only 100 now");
        assert!(shortage_detail(&u, &c, &demand(0, 400)).contains("300 MiB"));
        assert!(placed[2].is_err());

        let mut c = vec![cand("a", 100, 4000, 0), cand("b", 900, 10, 0)];
        let u = place(&mut c, &demand(512, 100), 1)
            .remove(0)
            .expect_err("no CPU");
        // b has the CPU but not the memory: the shortage is CPU among those with memory.
        assert_eq!((u.shortage, u.closest), (Shortage::Cpu, Some(0)));

        let mut c = vec![cand("a", 4096, 4000, 0)];
        c[0].ports.insert("8080/tcp".into());
        let d = Demand {
            cpu: 0,
            memory: 10,
            ports: vec!["8080/tcp".into()],
        };
        let u = place(&mut c, &d, 1).remove(0).expect_err("port taken");
        assert_eq!(u.shortage.reason(), "RESOURCE:PORTS");
        // The same port over UDP is another port.
        let udp = Demand {
            ports: vec!["8080/udp".into()],
            ..d
        };
        assert_eq!(
            place(&mut c, &udp, 2)[..],
            [
                Ok(0),
                Err(Unplaced {
                    shortage: Shortage::Ports,
                    closest: Some(0)
                })
            ]
        );
    }

    #[test]
    fn demand_counts_like_ecs() {
        let td: TaskDefinition = serde_json::from_value(json!({
            "family": "f", "containerDefinitions": [
                {"name": "a", "image": "x", "memory": 256, "memoryReservation": 64, "cpu": 100,
                 "portMappings": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]},
                {"name": "b", "image": "x", "memory": 128, "cpu": 50}]}))
        .expect("td");
        assert_eq!(
            Demand::of(&td),
            Demand {
                cpu: 150,
                memory: 192,
                ports: vec!["8080/tcp".into()]
            }
        );
        let task_level: TaskDefinition = serde_json::from_value(json!({
            "family": "f", "cpu": "1 vCPU", "memory": "1 GB", "networkMode": "host",
            "containerDefinitions": [{"name": "a", "image": "x",
                "portMappings": [{"containerPort": 53, "protocol": "udp"}]}]}))
        .expect("td");
        assert_eq!(
            Demand::of(&task_level),
            Demand {
                cpu: 1024,
                memory: 1024,
                ports: vec!["53/udp".into()]
            }
        );
    }

    fn st(arn: &str, current: bool, running: bool) -> ServiceTask {
        ServiceTask {
            arn: arn.into(),
            instance_id: "i".into(),
            current,
            running,
        }
    }

    #[test]
    fn replica_plans_scale_and_replace() {
        // Scale up from nothing.
        assert_eq!(plan_replica(3, 200, 100, &[]).start, 3);
        // Scale down: the newest go first.
        let tasks = [
            st("t1", true, true),
            st("t2", true, true),
            st("t3", true, false),
        ];
        let p = plan_replica(1, 200, 100, &tasks);
        assert_eq!((p.stop, p.start), (vec!["t3".into(), "t2".into()], 0));
        // A stopped task is no longer listed: it is replaced.
        assert_eq!(plan_replica(2, 200, 100, &tasks[..1]).start, 1);
        // Rolling update at 100%/200%: new ones first, old ones only once new ones run.
        let old = [st("o1", false, true), st("o2", false, true)];
        let p = plan_replica(2, 200, 100, &old);
        assert_eq!((p.stop.len(), p.start), (0, 2));
        let mid = [
            old[0].clone(),
            old[1].clone(),
            st("n1", true, true),
            st("n2", true, false),
        ];
        let p = plan_replica(2, 200, 100, &mid);
        assert_eq!((p.stop, p.start), (vec!["o1".to_string()], 0));
        // At 50%/100% one old task goes first, making room for a new one.
        let p = plan_replica(2, 100, 50, &old);
        assert_eq!((p.stop, p.start), (vec!["o1".to_string()], 1));
        // An old task that never ran is replaced at once.
        let p = plan_replica(1, 200, 100, &[st("o", false, false)]);
        assert_eq!((p.stop, p.start), (vec!["o".to_string()], 1));
        // Down to zero stops everything.
        let p = plan_replica(0, 200, 100, &mid);
        assert_eq!(p.stop.len(), 4);
    }

    #[test]
    fn daemon_plans_one_task_per_instance() {
        let on = |arn: &str, inst: &str, current: bool| ServiceTask {
            arn: arn.into(),
            instance_id: inst.into(),
            current,
            running: true,
        };
        let instances = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let tasks = [
            on("a1", "a", true),
            on("a2", "a", true),
            on("b-old", "b", false),
            on("gone", "z", true),
        ];
        let p = plan_daemon(&instances, &tasks);
        assert_eq!(p.stop, vec!["b-old", "gone", "a2"]);
        assert_eq!(p.start_on, vec!["b", "c"]);
    }
}
