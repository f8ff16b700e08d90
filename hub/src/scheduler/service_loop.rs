//! The service loop: every [`SERVICE_TICK`], and whenever a change says a service may need
//! it, each live service is brought toward its plan ([`reconcile_service`]), one store
//! transaction per service.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use skerry_proto::status::TaskStatus;
use tokio_util::sync::CancellationToken;

use super::placement::Plan;
use super::{
    load_definition, plan_daemon, plan_replica, run_tasks, run_tasks_on, service_group, short_id,
    stop_task, throttle_delay, Placed, SchedError, ServiceTask, TaskSpec,
};
use crate::arn::Arns;
use crate::state::Hub;
use crate::store::{ServiceRow, StartFailures, StoreError, TaskRow, Txn};

/// How often the service loop looks at every service even when nothing poked it.
pub const SERVICE_TICK: Duration = Duration::from_secs(1);
/// Stopped tasks stay visible this long, as in ECS.
pub const STOPPED_TASK_RETENTION: Duration = Duration::from_secs(3600);
const RETENTION_SWEEP: Duration = Duration::from_secs(60);

/// What one pass over a service did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceOutcome {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
}

fn tasks_list(arns: &[String]) -> String {
    arns.iter()
        .map(|a| format!("(task {})", short_id(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Brings one service toward its plan: stops what it should, places what it can, and
/// records ECS-style service events. A DRAINING service stops its tasks and turns INACTIVE
/// once none is left running.
pub fn reconcile_service(
    tx: &mut Txn<'_>,
    arns: &Arns,
    service_id: i64,
    now: f64,
) -> Result<ServiceOutcome, SchedError> {
    let mut out = ServiceOutcome::default();
    let Some(mut s) = tx.service(service_id)? else {
        return Ok(out);
    };
    let why = StopReason::of(&s);
    match s.status.as_str() {
        "ACTIVE" => {}
        "DRAINING" => {
            drain(tx, &mut s, &why, now, &mut out)?;
            return Ok(out);
        }
        _ => return Ok(out),
    }
    let tasks = service_tasks(tx, &s)?;
    let daemon = s.scheduling_strategy == "DAEMON";
    let plan = if daemon {
        plan_daemon(&tx.active_instance_ids(&s.cluster)?, &tasks)
    } else {
        plan_replica(
            usize::try_from(s.desired_count).unwrap_or(0),
            u32::try_from(s.maximum_percent).unwrap_or(200),
            u32::try_from(s.minimum_healthy_percent).unwrap_or(100),
            &tasks,
        )
    };
    for arn in &plan.stop {
        if let Some(t) = tx.task(arn)?.filter(TaskRow::is_live) {
            stop_task(tx, &t, &why.reason, why.code, now)?;
            out.stopped.push(arn.clone());
        }
    }
    let unplaced = start(tx, arns, &s, &plan, now, &mut out)?;
    record_events(tx, &s, &tasks, daemon, &out, unplaced, now)?;
    Ok(out)
}

/// Why the service loop stops a service's task, in ECS's words.
struct StopReason {
    reason: String,
    code: &'static str,
}

impl StopReason {
    fn of(s: &ServiceRow) -> StopReason {
        StopReason {
            reason: format!(
                "Scaling activity initiated by (deployment {})",
                s.deployment_id
            ),
            code: "ServiceSchedulerInitiated",
        }
    }
}

/// A DRAINING service: stops every live task; INACTIVE once none is left unstopped.
fn drain(
    tx: &mut Txn<'_>,
    s: &mut ServiceRow,
    why: &StopReason,
    now: f64,
    out: &mut ServiceOutcome,
) -> Result<(), SchedError> {
    for t in tx.live_service_tasks(s.id)? {
        stop_task(tx, &t, &why.reason, why.code, now)?;
        out.stopped.push(t.arn);
    }
    if tx.unstopped_service_tasks(s.id)?.is_empty() {
        s.status = "INACTIVE".into();
        s.updated_at = now;
        tx.update_service(s)?;
    }
    Ok(())
}

/// The service's live tasks as its plan sees them.
fn service_tasks(tx: &Txn<'_>, s: &ServiceRow) -> Result<Vec<ServiceTask>, SchedError> {
    Ok(tx
        .live_service_task_states(s.id)?
        .into_iter()
        .map(|t| ServiceTask {
            current: t.started_by.as_deref() == Some(s.deployment_id.as_str()),
            running: t.last_status == TaskStatus::Running,
            arn: t.arn,
            instance_id: t.instance_id,
        })
        .collect())
}

/// Places the tasks `plan` asks for, unless the service is waiting out failures to start.
/// What could not be started, in the words of the service event that says so.
fn start(
    tx: &mut Txn<'_>,
    arns: &Arns,
    s: &ServiceRow,
    plan: &Plan,
    now: f64,
    out: &mut ServiceOutcome,
) -> Result<Option<String>, SchedError> {
    let starting = plan.start > 0 || !plan.start_on.is_empty();
    let failures = if starting {
        tx.start_failures(s.id)?
    } else {
        StartFailures::default()
    };
    let wait = throttle_delay(failures.count);
    if failures
        .last_at
        .is_some_and(|at| now < at + wait.as_secs_f64())
    {
        // The same words while the wait lasts, so the event is said once.
        return Ok(Some(format!(
            "(service {}) is unable to consistently start tasks successfully: {} tasks in a \
             row failed to start; the next one is placed {} s after the last failure.",
            s.name,
            failures.count,
            wait.as_secs()
        )));
    }
    if !starting {
        return Ok(None);
    }
    let definition = match load_definition(tx, &s.family, Some(s.revision)) {
        Ok(Some((_, definition))) => definition,
        Ok(None) => {
            return Ok(Some(format!(
                "(service {}) was unable to start tasks: task definition {}:{} no longer exists",
                s.name, s.family, s.revision
            )))
        }
        Err(SchedError::BadDefinition { message, .. }) => {
            return Ok(Some(format!(
                "(service {}) was unable to start tasks: task definition {}:{}: {message}",
                s.name, s.family, s.revision
            )))
        }
        Err(e) => return Err(e),
    };
    let spec = TaskSpec {
        cluster: s.cluster.clone(),
        family: s.family.clone(),
        revision: s.revision,
        definition,
        group: service_group(s),
        started_by: Some(s.deployment_id.clone()),
        service_id: Some(s.id),
        client_token: None,
        tags: Value::Array(Vec::new()),
    };
    let mut batches: Vec<Result<Placed, SchedError>> = Vec::new();
    if plan.start > 0 {
        batches.push(run_tasks(tx, arns, &spec, plan.start, None, now));
    }
    if !plan.start_on.is_empty() {
        batches.extend(run_tasks_on(tx, arns, &spec, &plan.start_on, now)?);
    }
    let mut unplaced = None;
    for placed in batches {
        match placed {
            Ok(placed) => {
                out.started.extend(placed.tasks.into_iter().map(|t| t.arn));
                if let Some(f) = placed.failures.first() {
                    unplaced = Some(format!(
                        "(service {}) was unable to place a task because no container \
                         instance met all of its requirements. The closest matching \
                         (container-instance {}) has insufficient {} available. {}",
                        s.name,
                        short_id(&f.arn),
                        f.shortage.what(),
                        f.detail
                    ));
                }
            }
            Err(SchedError::NoInstances { cluster }) => {
                unplaced = Some(format!(
                    "(service {}) was unable to place a task because no container \
                     instance met all of its requirements. Reason: No Container \
                     Instances were found in your cluster {cluster}.",
                    s.name
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(unplaced)
}

/// The pass's service events: what stopped, what started, what could not be placed (once,
/// not every tick), or that the service reached a steady state (once).
fn record_events(
    tx: &mut Txn<'_>,
    s: &ServiceRow,
    tasks: &[ServiceTask],
    daemon: bool,
    out: &ServiceOutcome,
    unplaced: Option<String>,
    now: f64,
) -> Result<(), StoreError> {
    let last = tx.last_service_event(s.id)?;
    let say = |tx: &mut Txn<'_>, m: String| -> Result<(), StoreError> {
        tx.add_service_event(s.id, now, &m)
    };
    if !out.stopped.is_empty() {
        let m = format!(
            "(service {}) has stopped {} running tasks: {}.",
            s.name,
            out.stopped.len(),
            tasks_list(&out.stopped)
        );
        say(tx, m)?;
    }
    if !out.started.is_empty() {
        let m = format!(
            "(service {}) has started {} tasks: {}.",
            s.name,
            out.started.len(),
            tasks_list(&out.started)
        );
        say(tx, m)?;
    }
    match unplaced {
        // The same complaint once, not every tick.
        Some(m) if last.as_deref() != Some(m.as_str()) => say(tx, m)?,
        Some(_) => {}
        None if out.started.is_empty() && out.stopped.is_empty() => {
            let running = tasks.iter().filter(|t| t.current && t.running).count();
            let settled = tasks.iter().all(|t| t.current)
                && (daemon || running == usize::try_from(s.desired_count).unwrap_or(0))
                && (!daemon || running == tasks.len());
            let steady = format!("(service {}) has reached a steady state.", s.name);
            if settled && last.as_deref() != Some(steady.as_str()) {
                say(tx, steady)?;
            }
        }
        None => {}
    }
    Ok(())
}

/// The service loop: every [`SERVICE_TICK`], and whenever the fleet says a service may need
/// it, brings every live service toward its plan, one transaction per service. Stopped
/// tasks older than [`STOPPED_TASK_RETENTION`] are forgotten once a minute.
pub async fn run(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SERVICE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = 0.0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = hub.changes.services_changed() => {}
        }
        let now = crate::clock::now();
        let sweep = now - last_sweep >= RETENTION_SWEEP.as_secs_f64();
        if sweep {
            last_sweep = now;
        }
        let hub = hub.clone();
        let pass = tokio::task::spawn_blocking(move || reconcile_all(&hub, now, sweep));
        match pass.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "service pass failed"),
            Err(e) => tracing::error!(error = %e, "service pass panicked"),
        }
    }
    tracing::debug!("service loop stopped");
}

/// One pass of the service loop.
pub fn reconcile_all(hub: &Hub, now: f64, sweep: bool) -> Result<(), SchedError> {
    for id in hub.store.live_service_ids()? {
        let outcome = hub.write(|tx| reconcile_service(tx, &hub.arns, id, now));
        match outcome {
            Ok(o) if !o.started.is_empty() || !o.stopped.is_empty() => {
                tracing::info!(
                    service = id,
                    started = o.started.len(),
                    stopped = o.stopped.len(),
                    "service tasks changed"
                );
            }
            Ok(_) => {}
            // One service's trouble must not starve the others.
            Err(e) => tracing::error!(service = id, error = %e, "service pass failed"),
        }
    }
    if sweep {
        let before = now - STOPPED_TASK_RETENTION.as_secs_f64();
        let n = hub.store.delete_stopped_tasks(before)?;
        if n > 0 {
            tracing::debug!(tasks = n, "forgot stopped tasks");
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scheduler::new_deployment_id;
    use crate::scheduler::placement::THROTTLE_MAX;
    use crate::scheduler::tests::*;
    use crate::store::ServiceRow;
    use serde_json::json;
    use skerry_proto::desired::DesiredStatus;

    pub(crate) fn add_service(hub: &Hub, name: &str, desired: i64, strategy: &str) -> i64 {
        hub.write(|tx| -> Result<i64, SchedError> {
            let mut s = ServiceRow {
                id: 0,
                cluster: "edge".into(),
                name: name.into(),
                status: "ACTIVE".into(),
                family: "web".into(),
                revision: 1,
                desired_count: desired,
                scheduling_strategy: strategy.into(),
                maximum_percent: 200,
                minimum_healthy_percent: 100,
                deployment_id: new_deployment_id(),
                deployment_created_at: 1.0,
                tags: json!([]),
                created_at: 1.0,
                updated_at: 1.0,
            };
            tx.insert_service(&mut s)?;
            Ok(s.id)
        })
        .expect("service")
    }

    pub(crate) fn pass(hub: &Hub, id: i64, now: f64) -> ServiceOutcome {
        hub.write(|tx| reconcile_service(tx, &hub.arns, id, now))
            .expect("reconcile")
    }

    #[test]
    fn a_daemon_service_starts_on_every_instance_with_room_and_names_the_one_without() {
        let hub = hub();
        for n in 1..=4 {
            add_instance(&hub, n, 4096, if n == 3 { 32 } else { 4096 });
        }
        register(&hub, web(64));
        let id = add_service(&hub, "agent", 0, "DAEMON");
        let first = pass(&hub, id, 2.0);
        let mut on: Vec<String> = first
            .started
            .iter()
            .map(|arn| hub.store.task(arn).expect("get").expect("task").instance_id)
            .collect();
        on.sort();
        assert_eq!(on, [instance_id(1), instance_id(2), instance_id(4)]);
        let said = hub
            .store
            .service_events(id, 1)
            .expect("events")
            .pop()
            .expect("an event")
            .message;
        assert!(
            said.contains(&format!("{:032x}", 3)) && said.contains("insufficient memory"),
            "{said}"
        );
        // Each instance's document changed once, the full one's not at all.
        let generation = |n| {
            hub.store
                .link_state(&instance_id(n))
                .expect("l")
                .expect("i")
                .generation
        };
        assert_eq!(
            [generation(1), generation(2), generation(3), generation(4)],
            [1, 1, 0, 1]
        );
        assert!(pass(&hub, id, 3.0).started.is_empty());
    }

    /// Marks the service task `arn` STOPPED at hub time `at`, as a device's report does.
    fn stopped(hub: &Hub, arn: &str, code: &str, ran: bool, at: f64) {
        hub.write(|tx| -> Result<(), StoreError> {
            let t = tx.task(arn)?.expect("task");
            let mut m = t.clone();
            m.last_status = TaskStatus::Stopped;
            m.desired_status = DesiredStatus::Stopped;
            m.stop_code = Some(code.into());
            m.started_at = ran.then_some(at - 1.0);
            m.stopped_at = Some(at);
            tx.save_task(Some(&t), &mut m, at)
        })
        .expect("stop");
    }

    #[test]
    fn a_service_whose_tasks_fail_to_start_waits_longer_each_time() {
        let hub = hub();
        add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let id = add_service(&hub, "site", 1, "REPLICA");
        let first = pass(&hub, id, 10.0).started;
        assert_eq!(first.len(), 1);
        stopped(&hub, &first[0], "TaskFailedToStart", false, 11.0);
        // One failure: 10 s from it.
        assert!(pass(&hub, id, 11.5).started.is_empty(), "placed at once");
        let said = hub.store.service_events(id, 1).expect("events")[0]
            .message
            .clone();
        assert!(
            said.contains("unable to consistently start tasks") && said.contains("10 s"),
            "{said}"
        );
        assert!(pass(&hub, id, 20.5).started.is_empty());
        let times = hub
            .store
            .service_events(id, 10)
            .expect("events")
            .iter()
            .filter(|e| e.message == said)
            .count();
        assert_eq!(times, 1, "said once, not every tick");
        let second = pass(&hub, id, 21.0).started;
        assert_eq!(second.len(), 1);
        // Two in a row: 20 s.
        stopped(&hub, &second[0], "TaskFailedToStart", false, 22.0);
        assert!(pass(&hub, id, 41.5).started.is_empty());
        let third = pass(&hub, id, 42.0).started;
        assert_eq!(third.len(), 1);
        // A task that ran resets the count: its replacement is placed at once.
        stopped(&hub, &third[0], "EssentialContainerExited", true, 50.0);
        assert_eq!(pass(&hub, id, 50.1).started.len(), 1);
        assert_eq!(throttle_delay(3), Duration::from_secs(40));
        assert_eq!(throttle_delay(40), THROTTLE_MAX);
    }

    #[test]
    fn daemon_service_follows_instances() {
        let hub = hub();
        add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let id = add_service(&hub, "agent", 0, "DAEMON");
        assert_eq!(pass(&hub, id, 2.0).started.len(), 1);
        add_instance(&hub, 2, 4096, 4096);
        let second = pass(&hub, id, 3.0);
        assert_eq!(second.started.len(), 1);
        let t = hub
            .store
            .task(&second.started[0])
            .expect("get")
            .expect("task");
        assert_eq!(t.instance_id, instance_id(2));
        assert_eq!(pass(&hub, id, 4.0), ServiceOutcome::default());
    }
}
