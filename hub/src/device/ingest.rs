//! Ingest in: one device message applied in the caller's transaction.

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;

use serde_json::{json, Map, Value};
use skerry_proto::desired::{DesiredStatus, SERVICE_GROUP_PREFIX};
use skerry_proto::link::{ContainerUsage, Envelope, Message, MAX_CONTAINER_USAGES};
use skerry_proto::status::{ContainerReport, HealthStatus, TaskReport, TaskStatus};

use super::{bounds, DeviceError, Ingested, OsReport};

/// Longest task ARN or container name kept from a container metrics entry (ECS caps a
/// container name at 255 characters).
const MAX_NAME: usize = 255;
use crate::arn::Arns;
use crate::quota::{self, Verdict};
use crate::scheduler::{self, Demand};
use crate::state::Hub;
use crate::store::{
    desired_status_name, health_status_name, task_status_name, DeviceEvent, LinkState, StoreError,
    TaskRow, Txn,
};

/// Records the OS the device booted in its attributes; what the report lacks is left
/// as it was.
pub(super) fn set_os(
    tx: &mut Txn<'_>,
    instance_id: &str,
    os: &OsReport,
) -> Result<(), DeviceError> {
    for (name, value) in [
        ("skerry.os.version", &os.version),
        ("skerry.os.slot", &os.slot),
    ] {
        if let Some(value) = value {
            tx.set_attribute(instance_id, name, value)?;
        }
    }
    Ok(())
}

/// The only status whose messages count.
const ACTIVE: &str = "ACTIVE";

pub(super) fn set_connected(
    tx: &mut Txn<'_>,
    instance_id: &str,
    connected: bool,
    now: f64,
) -> Result<Ingested, DeviceError> {
    let link = tx
        .link_state(instance_id)?
        .ok_or_else(|| DeviceError::UnknownInstance(instance_id.to_string()))?;
    if link.status != ACTIVE {
        return Ok(Ingested::NotActive);
    }
    if !tx.set_connected(instance_id, connected, now)? {
        return Err(DeviceError::UnknownInstance(instance_id.to_string()));
    }
    tx.add_device_event(&DeviceEvent {
        instance_id: instance_id.to_string(),
        seq: None,
        time: now,
        task_arn: None,
        container: None,
        kind: if connected {
            "connected"
        } else {
            "disconnected"
        }
        .into(),
        message: if connected {
            "agent connected"
        } else {
            "agent disconnected"
        }
        .into(),
    })?;
    Ok(Ingested::Applied {
        missing: Vec::new(),
    })
}

/// One device message in `tx`. Sets `poke` when a service's task stopped.
pub(super) fn ingest(
    tx: &mut Txn<'_>,
    hub: &Hub,
    instance_id: &str,
    envelope: &Envelope,
    now: f64,
    poke: &mut bool,
) -> Result<Ingested, DeviceError> {
    let link = tx
        .link_state(instance_id)?
        .ok_or_else(|| DeviceError::UnknownInstance(instance_id.to_string()))?;
    if link.status != ACTIVE {
        // A deregistered device is cut off: whatever it still manages to send counts for
        // nothing, not even its sequence number.
        tracing::debug!(instance = instance_id, status = %link.status, "message dropped");
        return Ok(Ingested::NotActive);
    }
    let seq = i64::try_from(envelope.seq).unwrap_or(i64::MAX);
    if seq <= link.up_seq {
        tracing::debug!(instance = instance_id, seq, "duplicate message ignored");
        return Ok(Ingested::Duplicate);
    }
    let time = envelope.entry.time;
    let mut ctx = Ctx {
        tx,
        arns: &hub.arns,
        link: &link,
        seq,
        time,
        now,
        poke: false,
    };
    match hub.quotas.take(instance_id, now) {
        Verdict::Dropped => {
            // Consumed and counted; the count is reported with the next message let through.
            ctx.tx.set_up_seq(instance_id, seq, now)?;
            return Ok(Ingested::Applied {
                missing: Vec::new(),
            });
        }
        Verdict::Allowed { dropped: 0 } => {}
        Verdict::Allowed { dropped } => {
            tracing::warn!(
                instance = instance_id,
                dropped,
                "device messages over its quota dropped"
            );
            ctx.event(
                None,
                None,
                "rateLimited",
                format!(
                    "{dropped} messages before seq {seq} were dropped unread: over the quota of \
                     {} per second (bursts of {})",
                    quota::RATE,
                    quota::BURST
                ),
            )?;
        }
    }
    let (message, cut) = match bounds::check(envelope) {
        Ok(checked) => checked,
        Err(refusal) => {
            // Consumed, so that it is not applied when it comes again, and recorded.
            tracing::warn!(instance = instance_id, seq, %refusal, "device message refused");
            ctx.tx.set_up_seq(instance_id, seq, now)?;
            ctx.event(
                None,
                None,
                "messageRefused",
                format!("message seq {seq} refused: {refusal}"),
            )?;
            return Ok(Ingested::Applied {
                missing: Vec::new(),
            });
        }
    };
    let covers = envelope.covers();
    let missing = missing(u64::try_from(link.up_seq).unwrap_or(0), &covers);
    for r in &missing {
        tracing::warn!(
            instance = instance_id,
            from = r.start(),
            to = r.end(),
            "device messages missing"
        );
        ctx.event(
            None,
            None,
            "seqGap",
            format!(
                "seqs {} to {} never arrived; the device's outbox skipped them",
                r.start(),
                r.end()
            ),
        )?;
    }
    let high = covers
        .last()
        .map(|r| *r.end())
        .unwrap_or(envelope.seq)
        .max(envelope.seq);
    ctx.tx
        .set_up_seq(instance_id, i64::try_from(high).unwrap_or(i64::MAX), now)?;
    if cut > 0 {
        ctx.event(
            None,
            None,
            "fieldsCut",
            format!(
                "message seq {seq}: {cut} text fields longer than {} bytes or with control \
                 characters were cut and cleaned",
                bounds::MAX_TEXT
            ),
        )?;
    }
    ctx.apply(&message)?;
    *poke |= ctx.poke;
    Ok(Ingested::Applied { missing })
}

/// Seqs after `high` up to the envelope's own that `covers` does not include.
fn missing(high: u64, covers: &[RangeInclusive<u64>]) -> Vec<RangeInclusive<u64>> {
    let mut out = Vec::new();
    let mut next = high.saturating_add(1);
    for r in covers {
        if *r.end() < next {
            continue;
        }
        if *r.start() > next {
            out.push(next..=r.start() - 1);
        }
        next = r.end().saturating_add(1);
    }
    out
}

/// How far past the hub's generation a device's report may move it. A hub restored from an
/// older copy is behind its devices by the changes made since, never by a million; a claim
/// beyond is a device lying or mad, and trusting it would let one message push the
/// generation to `i64::MAX`, where the next change to the instance cannot be counted.
pub const MAX_GENERATION_AHEAD: i64 = 1 << 20;

/// One message being applied.
struct Ctx<'a, 't, 'c> {
    tx: &'t mut Txn<'c>,
    arns: &'a Arns,
    link: &'a LinkState,
    seq: i64,
    /// The device's clock when it recorded the message.
    time: f64,
    /// The hub's clock.
    now: f64,
    /// A service's task stopped: the service loop should look now.
    poke: bool,
}

impl Ctx<'_, '_, '_> {
    fn event(
        &mut self,
        task_arn: Option<&str>,
        container: Option<&str>,
        kind: &str,
        message: String,
    ) -> Result<(), StoreError> {
        self.tx.add_device_event(&DeviceEvent {
            instance_id: self.link.id.clone(),
            seq: Some(self.seq),
            time: self.time,
            task_arn: task_arn.map(str::to_string),
            container: container.map(str::to_string),
            kind: kind.to_string(),
            message,
        })
    }

    fn apply(&mut self, message: &Message) -> Result<(), DeviceError> {
        match message {
            Message::TaskState { task } => self.report(task)?,
            Message::Event {
                kind,
                task_arn,
                container,
                message,
            } => {
                let kind = serde_json::to_value(kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "other".into());
                self.event(
                    task_arn.as_deref(),
                    container.as_deref(),
                    &kind,
                    message.clone(),
                )?;
            }
            Message::Applied { generation } => {
                if !self.applied(*generation)? {
                    return Ok(());
                }
                self.event(
                    None,
                    None,
                    "applied",
                    format!("applied generation {generation}"),
                )?;
            }
            Message::FullState { generation, tasks } => self.full_state(*generation, tasks)?,
            Message::Metrics(m) => {
                let json = serde_json::to_string(m).unwrap_or_default();
                self.tx.set_metrics(&self.link.id, &json, self.time)?;
            }
            Message::ContainerMetrics { containers } => self.container_metrics(containers)?,
            Message::Dropped { what, count } => {
                self.event(
                    None,
                    None,
                    "dropped",
                    format!("the device dropped {count} {what} messages under its outbox bound"),
                )?;
            }
        }
        Ok(())
    }

    /// Keeps the latest set, cut to the bound; what names no live task's container of this
    /// instance is kept but never shown (`/metrics` joins the set with the tasks).
    fn container_metrics(&mut self, containers: &[ContainerUsage]) -> Result<(), DeviceError> {
        if containers.len() > MAX_CONTAINER_USAGES {
            tracing::warn!(
                instance = %self.link.id,
                sent = containers.len(),
                kept = MAX_CONTAINER_USAGES,
                "container metrics over the bound; the rest are dropped"
            );
        }
        let kept: Vec<&ContainerUsage> = containers
            .iter()
            .filter(|c| c.task_arn.len() <= MAX_NAME && c.container.len() <= MAX_NAME)
            .take(MAX_CONTAINER_USAGES)
            .collect();
        let json = serde_json::to_string(&kept).unwrap_or_default();
        self.tx
            .set_container_metrics(&self.link.id, &json, self.time)?;
        Ok(())
    }

    /// Records the generation the device says it runs; whether the hub accepted it. A
    /// device's number is trusted only so far beyond the hub's own
    /// ([`MAX_GENERATION_AHEAD`]): past that it is recorded as refused and changes nothing.
    fn applied(&mut self, generation: u64) -> Result<bool, DeviceError> {
        let hub = self.link.generation;
        let limit = hub.saturating_add(MAX_GENERATION_AHEAD);
        let g = match i64::try_from(generation) {
            Ok(g) if g <= limit => g,
            _ => {
                tracing::warn!(instance = %self.link.id, device = generation, hub, "device generation refused");
                self.event(
                    None,
                    None,
                    "generationRefused",
                    format!(
                        "ignored: the device says it runs generation {generation}, more than \
                         {MAX_GENERATION_AHEAD} past the hub's {hub}"
                    ),
                )?;
                return Ok(false);
            }
        };
        self.tx.set_applied_generation(&self.link.id, g)?;
        // The device runs a generation this hub never made (the hub's state was restored
        // from an older copy): move past it, or the next document is refused as older.
        if g > hub {
            let next = g.checked_add(1).ok_or(StoreError::GenerationExhausted {
                instance: self.link.id.clone(),
            })?;
            tracing::warn!(
                instance = %self.link.id,
                device = g,
                hub,
                "device is ahead of the hub's generation"
            );
            self.tx.raise_generation(&self.link.id, next)?;
            self.event(
                None,
                None,
                "generationBehind",
                format!(
                    "the device runs generation {g}, newer than the hub's {hub}; the next \
                     document is generation {next}"
                ),
            )?;
        }
        Ok(true)
    }

    fn full_state(&mut self, generation: u64, reports: &[TaskReport]) -> Result<(), DeviceError> {
        // Which tasks the device dropped is read from its generation: a refused one
        // says nothing the hub can use.
        if !self.applied(generation)? {
            return Ok(());
        }
        let g = i64::try_from(generation).unwrap_or(i64::MAX);
        for r in reports {
            self.report(r)?;
        }
        let reported: HashSet<&str> = reports.iter().map(|r| r.task_arn.as_str()).collect();
        for t in self.tx.document_tasks(&self.link.id)? {
            // A task the device's generation already carried and that it does not list is
            // gone from the device (its store was wiped, or it forgot a stopped task).
            if reported.contains(t.arn.as_str()) || t.desired_generation > g {
                continue;
            }
            let mut gone = t.clone();
            if gone.desired_status == DesiredStatus::Running {
                gone.desired_status = DesiredStatus::Stopped;
                gone.stopped_reason.get_or_insert_with(|| {
                    format!("the device no longer has this task (its full state at generation {generation} does not list it)")
                });
            }
            gone.stopping_at.get_or_insert(self.time);
            gone.last_status = TaskStatus::Stopped;
            gone.stopped_at.get_or_insert(self.time);
            for c in &mut gone.containers {
                if let Some(o) = c.as_object_mut() {
                    o.insert("lastStatus".into(), "STOPPED".into());
                }
            }
            self.tx.save_task(Some(&t), &mut gone, self.now)?;
            self.poke |= t.service_id.is_some();
            self.event(
                Some(&t.arn),
                None,
                "taskMissing",
                format!(
                    "{} -> STOPPED: not in the device's full state at generation {generation}",
                    task_status_name(t.last_status)
                ),
            )?;
        }
        self.event(
            None,
            None,
            "fullState",
            format!(
                "full state at generation {generation}: {} tasks",
                reports.len()
            ),
        )?;
        Ok(())
    }

    /// Applies a task's report: its status, containers, times and stop reason. The hub's
    /// wish to stop a task always wins over a device's RUNNING.
    fn report(&mut self, r: &TaskReport) -> Result<(), DeviceError> {
        let Some(t) = self.tx.task(&r.task_arn)? else {
            return self.unknown(r);
        };
        if t.instance_id != self.link.id {
            tracing::warn!(instance = %self.link.id, task = %r.task_arn, owner = %t.instance_id, "device reported another instance's task");
            self.event(
                Some(&r.task_arn),
                None,
                "foreignTask",
                format!(
                    "ignored: the task belongs to container instance {}",
                    t.instance_id
                ),
            )?;
            return Ok(());
        }
        if t.last_status == TaskStatus::Stopped && r.last_status != TaskStatus::Stopped {
            self.event(
                Some(&r.task_arn),
                None,
                "staleReport",
                format!(
                    "ignored: reported {} after it was STOPPED",
                    task_status_name(r.last_status)
                ),
            )?;
            return Ok(());
        }
        let mut m = t.clone();
        m.last_status = r.last_status;
        m.health_status = r.health_status;
        m.containers = merge_containers(&t.containers, &r.containers);
        m.started_at = r.started_at.or(t.started_at);
        if r.last_status == TaskStatus::Stopped || r.desired_status == DesiredStatus::Stopped {
            m.desired_status = DesiredStatus::Stopped;
        }
        if m.desired_status == DesiredStatus::Stopped {
            m.stopping_at = t.stopping_at.or(r.stopping_at).or(Some(self.time));
        }
        if r.last_status == TaskStatus::Stopped {
            m.stopped_at = r.stopped_at.or(t.stopped_at).or(Some(self.time));
        }
        m.stopped_reason = t
            .stopped_reason
            .clone()
            .or_else(|| r.stopped_reason.clone());
        m.stop_code = t.stop_code.clone().or_else(|| r.stop_code.clone());
        self.tx.save_task(Some(&t), &mut m, self.now)?;
        if t.service_id.is_some()
            && (m.last_status == TaskStatus::Stopped || m.desired_status == DesiredStatus::Stopped)
            && t.is_live()
        {
            self.poke = true;
        }
        let message = state_message(Some(&t), &m);
        self.event(Some(&r.task_arn), None, "taskState", message)?;
        if let Some(new) = &r.replaced_by {
            self.replacement(&t, new)?;
        }
        Ok(())
    }

    /// The device replaced the service task `before` (as it stood before this message) with
    /// `new_arn` on its own: the new task becomes the service's, in the old one's place, so
    /// the service loop does not start one of its own; the old one is wanted STOPPED and its
    /// report says why it stopped. A replacement of a task the hub no longer wanted (its
    /// service scaled down, deleted, or the task stopped while the device was away) is
    /// recorded wanted STOPPED, and the device stops it. Either report, the old task's
    /// `replacedBy` or the new one's `replaces`, may come first; the second finds it done.
    fn replacement(&mut self, before: &TaskRow, new_arn: &str) -> Result<(), DeviceError> {
        if self.tx.task(new_arn)?.is_some() {
            return Ok(());
        }
        let service = match before.service_id {
            Some(id) => self.tx.service(id)?,
            None => None,
        };
        let wanted = before.desired_status == DesiredStatus::Running
            && service.as_ref().is_some_and(|s| s.status == "ACTIVE");
        if let Some(cur) = self.tx.task(&before.arn)? {
            if cur.desired_status != DesiredStatus::Stopped {
                let mut m = cur.clone();
                m.desired_status = DesiredStatus::Stopped;
                m.stopping_at.get_or_insert(self.time);
                self.tx.save_task(Some(&cur), &mut m, self.now)?;
            }
        }
        let mut row = TaskRow {
            seq: 0,
            arn: new_arn.to_string(),
            cluster: before.cluster.clone(),
            instance_id: before.instance_id.clone(),
            instance_arn: before.instance_arn.clone(),
            family: before.family.clone(),
            revision: before.revision,
            task_definition_arn: before.task_definition_arn.clone(),
            service_id: before.service_id,
            started_by: before.started_by.clone(),
            group: before.group.clone(),
            client_token: None,
            last_status: TaskStatus::Pending,
            desired_status: if wanted {
                DesiredStatus::Running
            } else {
                DesiredStatus::Stopped
            },
            health_status: HealthStatus::Unknown,
            cpu: before.cpu,
            memory: before.memory,
            ports: before.ports.clone(),
            containers: Vec::new(),
            stopped_reason: (!wanted)
                .then(|| "Task stopped: the hub no longer wants the task it replaced".into()),
            stop_code: (!wanted).then(|| "ServiceSchedulerInitiated".into()),
            tags: before.tags.clone(),
            version: 1,
            desired_generation: 0,
            created_at: self.time,
            started_at: None,
            stopping_at: (!wanted).then_some(self.time),
            stopped_at: None,
            updated_at: self.now,
        };
        self.tx.save_task(None, &mut row, self.now)?;
        self.poke = true;
        let what = if wanted {
            format!("{}'s task in its place", before.group)
        } else {
            "to be stopped: the hub no longer wanted the task it replaced".into()
        };
        self.event(
            Some(&before.arn),
            None,
            "taskReplaced",
            format!("replaced on the device by task {new_arn}, {what}"),
        )?;
        Ok(())
    }

    /// A task the hub does not know: recorded as a task of this instance. With a definition
    /// the hub has, it is adopted as the device reports it; without one the hub cannot put
    /// it in a document, so it is recorded as wanted STOPPED and the device gets a new
    /// document, which leaves it out and so stops it.
    fn unknown(&mut self, r: &TaskReport) -> Result<(), DeviceError> {
        if let Some(old) = r.replaces.as_deref() {
            if let Some(before) = self.tx.task(old)? {
                if before.instance_id == self.link.id {
                    // The old task as it stood: its own report may not have come yet.
                    self.replacement(&before, &r.task_arn)?;
                    return self.report(r);
                }
            }
        }
        // A device cannot make the hub keep tasks without end by reporting new ARNs: past
        // the bound, one more is only an event (the device's quota bounds those).
        let live = self.tx.unstopped_instance_task_count(&self.link.id)?;
        if r.last_status != TaskStatus::Stopped && live >= bounds::MAX_TASKS {
            return Ok(self.event(
                Some(&r.task_arn),
                None,
                "unknownTaskIgnored",
                format!(
                    "ignored: the instance already has {live} tasks not STOPPED, at most {}",
                    bounds::MAX_TASKS
                ),
            )?);
        }
        let reference = r
            .task_definition_arn
            .as_deref()
            .and_then(|a| self.arns.parse_task_definition(a));
        let definition = match &reference {
            Some((family, revision)) => {
                match scheduler::load_definition(self.tx, family, Some(*revision)) {
                    Ok(found) => found,
                    Err(scheduler::SchedError::Store(e)) => return Err(e.into()),
                    Err(_) => None,
                }
            }
            None => None,
        };
        let adopt = definition.is_some() && self.link.status == "ACTIVE";
        let demand = definition.as_ref().map(|(_, td)| Demand::of(td));
        let family = reference.as_ref().map(|(f, _)| f.clone());
        // A task of a service of this cluster (from a bootstrap document that names it):
        // the service's, if it runs this definition, and wanted while the service is ACTIVE.
        let service = match r
            .group
            .as_deref()
            .and_then(|g| g.strip_prefix(SERVICE_GROUP_PREFIX))
        {
            Some(name) if adopt => self
                .tx
                .service_by_name(&self.link.cluster, name)?
                .filter(|s| reference.as_ref() == Some(&(s.family.clone(), s.revision))),
            _ => None,
        };
        let adopt = adopt && service.as_ref().is_none_or(|s| s.status == "ACTIVE");
        let mut row = TaskRow {
            seq: 0,
            arn: r.task_arn.clone(),
            cluster: self.link.cluster.clone(),
            instance_id: self.link.id.clone(),
            instance_arn: self.link.arn.clone(),
            family: definition.as_ref().map(|(d, _)| d.family.clone()),
            revision: definition.as_ref().map(|(d, _)| d.revision),
            task_definition_arn: r.task_definition_arn.clone(),
            service_id: service.as_ref().map(|s| s.id),
            started_by: service.as_ref().map(|s| s.deployment_id.clone()),
            group: match &service {
                Some(s) => scheduler::service_group(s),
                None => format!("family:{}", family.as_deref().unwrap_or("unknown")),
            },
            client_token: None,
            last_status: r.last_status,
            desired_status: if adopt && r.last_status != TaskStatus::Stopped {
                r.desired_status
            } else {
                DesiredStatus::Stopped
            },
            health_status: r.health_status,
            cpu: demand.as_ref().map_or(0, |d| d.cpu),
            memory: demand.as_ref().map_or(0, |d| d.memory),
            ports: demand.map(|d| d.ports).unwrap_or_default(),
            containers: merge_containers(&[], &r.containers),
            stopped_reason: r.stopped_reason.clone(),
            stop_code: r.stop_code.clone(),
            tags: Value::Array(Vec::new()),
            version: 1,
            desired_generation: 0,
            created_at: r.created_at.unwrap_or(self.time),
            started_at: r.started_at,
            stopping_at: r.stopping_at,
            stopped_at: r.stopped_at,
            updated_at: self.now,
        };
        if row.desired_status == DesiredStatus::Stopped {
            row.stopping_at.get_or_insert(self.time);
            if !adopt {
                row.stopped_reason
                    .get_or_insert_with(|| "the hub did not ask for this task".into());
            }
        }
        if row.last_status == TaskStatus::Stopped {
            row.stopped_at.get_or_insert(self.time);
        }
        self.tx.save_task(None, &mut row, self.now)?;
        if row.in_document().is_none() && row.last_status != TaskStatus::Stopped {
            self.tx.bump_generation(&self.link.id)?;
        }
        let what = if adopt {
            "adopted as reported"
        } else {
            "recorded to be stopped"
        };
        self.event(
            Some(&r.task_arn),
            None,
            "unknownTask",
            format!(
                "the hub did not know this task; {what} ({})",
                state_message(None, &row)
            ),
        )?;
        Ok(())
    }
}

/// "PENDING -> RUNNING (desired RUNNING); containers: web RUNNING"
fn state_message(before: Option<&TaskRow>, after: &TaskRow) -> String {
    let status = match before {
        Some(b) if b.last_status != after.last_status => format!(
            "{} -> {}",
            task_status_name(b.last_status),
            task_status_name(after.last_status)
        ),
        _ => task_status_name(after.last_status).to_string(),
    };
    let containers: Vec<String> = after
        .containers
        .iter()
        .map(|c| {
            let mut s = format!(
                "{} {}",
                c["name"].as_str().unwrap_or("?"),
                c["lastStatus"].as_str().unwrap_or("?")
            );
            if let Some(code) = c["exitCode"].as_i64() {
                s.push_str(&format!(" exit {code}"));
            }
            s
        })
        .collect();
    let mut m = format!(
        "{status} (desired {})",
        desired_status_name(after.desired_status)
    );
    if !containers.is_empty() {
        m.push_str(&format!("; containers: {}", containers.join(", ")));
    }
    if let Some(reason) = &after.stopped_reason {
        if after.last_status == TaskStatus::Stopped {
            m.push_str(&format!("; {reason}"));
        }
    }
    m
}

/// The stored container objects with the device's reports applied, matched by name (one
/// pass over each, whatever the device sends); a container the hub did not list is added
/// while the task has fewer than [`bounds::MAX_CONTAINERS`], so reports cannot grow a task
/// without end.
fn merge_containers(stored: &[Value], reports: &[ContainerReport]) -> Vec<Value> {
    let mut out: Vec<Value> = stored.to_vec();
    let mut by_name: HashMap<String, usize> = out
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v["name"].as_str().map(|n| (n.to_string(), i)))
        .collect();
    for c in reports {
        let i = match by_name.get(c.name.as_str()) {
            Some(&i) => i,
            None if out.len() >= bounds::MAX_CONTAINERS => continue,
            None => {
                out.push(json!({"name": c.name, "networkInterfaces": []}));
                by_name.insert(c.name.clone(), out.len() - 1);
                out.len() - 1
            }
        };
        let mut o = match out[i].take() {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        o.insert("name".into(), c.name.clone().into());
        o.insert("image".into(), c.image.clone().into());
        o.insert("lastStatus".into(), task_status_name(c.last_status).into());
        o.insert(
            "healthStatus".into(),
            health_status_name(c.health_status).into(),
        );
        o.insert(
            "networkBindings".into(),
            serde_json::to_value(&c.network_bindings).unwrap_or_else(|_| json!([])),
        );
        for (key, value) in [
            ("exitCode", c.exit_code.map(Value::from)),
            ("reason", c.reason.clone().map(Value::from)),
            ("runtimeId", c.runtime_id.clone().map(Value::from)),
        ] {
            match value {
                Some(v) => o.insert(key.into(), v),
                None => o.remove(key),
            };
        }
        out[i] = Value::Object(o);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceMessage;
    use crate::device::{desired_document, desired_documents, ingest_batch, set_connected};
    use crate::scheduler::service_tests::{add_service, pass};
    use crate::scheduler::tests::{
        add_instance, hub, instance_id, register, run, web, Hub, TestHub,
    };
    use crate::scheduler::ServiceOutcome;
    use skerry_proto::link::{Entry, EventKind, HostMetrics};
    use skerry_proto::status::{HealthStatus, NetworkBinding};
    use skerry_proto::taskdef::Protocol;
    use std::collections::BTreeSet;

    fn envelope(seq: u64, message: Message) -> Envelope {
        Envelope {
            seq,
            folded: Vec::new(),
            dropped: Vec::new(),
            entry: Entry {
                time: 100.0 + seq as f64,
                message,
            },
        }
    }

    fn report(arn: &str, last: TaskStatus) -> TaskReport {
        TaskReport {
            task_arn: arn.into(),
            task_definition_arn: None,
            last_status: last,
            desired_status: DesiredStatus::Running,
            stopped_reason: None,
            stop_code: None,
            health_status: HealthStatus::Unknown,
            created_at: Some(50.0),
            started_at: (last == TaskStatus::Running).then_some(60.0),
            stopping_at: None,
            stopped_at: None,
            containers: vec![ContainerReport {
                name: "web".into(),
                runtime_id: Some("x-web".into()),
                last_status: last,
                exit_code: None,
                reason: None,
                health_status: HealthStatus::Unknown,
                network_bindings: vec![NetworkBinding {
                    bind_ip: "0.0.0.0".into(),
                    container_port: 80,
                    host_port: 32768,
                    protocol: Protocol::Tcp,
                }],
                image: "busybox".into(),
            }],
            group: None,
            replaces: None,
            replaced_by: None,
        }
    }

    fn state(arn: &str, last: TaskStatus) -> Message {
        Message::TaskState {
            task: report(arn, last),
        }
    }

    fn ingest(hub: &Hub, id: &str, e: &Envelope) -> Ingested {
        crate::device::ingest(hub, id, e, 1000.0).expect("ingest")
    }

    fn task(hub: &Hub, arn: &str) -> TaskRow {
        hub.store.task(arn).expect("get").expect("task exists")
    }

    fn kinds(hub: &Hub, id: &str) -> Vec<String> {
        hub.store
            .device_events(id, 100)
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    #[test]
    fn task_state_updates_the_task_and_a_replay_changes_nothing() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let arn = run(&hub, "web", 1).tasks[0].arn.clone();
        let counts = |hub: &Hub| hub.store.cluster_counts("edge").expect("counts");
        assert_eq!((counts(&hub).instances, counts(&hub).pending_tasks), (1, 1));
        let e = envelope(1, state(&arn, TaskStatus::Running));
        assert_eq!(ingest(&hub, &id, &e), Ingested::Applied { missing: vec![] });
        assert_eq!(
            (counts(&hub).running_tasks, counts(&hub).pending_tasks),
            (1, 0)
        );
        let t = task(&hub, &arn);
        assert_eq!(t.last_status, TaskStatus::Running);
        assert_eq!(t.started_at, Some(60.0));
        assert_eq!(t.containers[0]["networkBindings"][0]["hostPort"], 32768);
        assert_eq!(t.containers[0]["runtimeId"], "x-web");
        // Containers keep what the hub set and the device does not say.
        assert_eq!(t.containers[0]["memory"], "64");
        assert_eq!(t.version, 2);
        let generation = hub
            .store
            .link_state(&id)
            .expect("link")
            .expect("i")
            .generation;

        assert_eq!(ingest(&hub, &id, &e), Ingested::Duplicate);
        // An older seq with a different story is a replay too.
        let older = envelope(1, state(&arn, TaskStatus::Stopped));
        assert_eq!(ingest(&hub, &id, &older), Ingested::Duplicate);
        assert_eq!(task(&hub, &arn), t);
        assert_eq!(kinds(&hub, &id), ["taskState"]);
        // A status change does not change the document.
        let link = hub.store.link_state(&id).expect("link").expect("i");
        assert_eq!((link.generation, link.up_seq), (generation, 1));
    }

    #[test]
    fn a_deregistered_instance_is_not_heard() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let arn = run(&hub, "web", 1).tasks[0].arn.clone();
        let before = task(&hub, &arn);
        let events = kinds(&hub, &id);
        hub.write(|tx| tx.set_instance_status(&id, "DEREGISTERED"))
            .expect("deregister");
        let link = |hub: &Hub| hub.store.link_state(&id).expect("link").expect("i");
        let up_seq = link(&hub).up_seq;
        let messages = [
            (
                id.clone(),
                DeviceMessage::Up(Box::new(envelope(7, state(&arn, TaskStatus::Running)))),
            ),
            (
                id.clone(),
                DeviceMessage::Presence {
                    online: false,
                    os: OsReport::default(),
                },
            ),
        ];
        let out = ingest_batch(&hub, &messages, 2000.0).expect("batch");
        assert!(
            out.iter().all(|o| matches!(o, Ok(Ingested::NotActive))),
            "{out:?}"
        );
        assert_eq!(
            ingest(&hub, &id, &envelope(8, state(&arn, TaskStatus::Stopped))),
            Ingested::NotActive
        );
        set_connected(&hub, &id, true, 2001.0).expect("presence");
        // Nothing it sent counted: not the task, not its seq, not its presence or events.
        assert_eq!(task(&hub, &arn), before);
        assert_eq!(link(&hub).up_seq, up_seq);
        let instance = hub.store.container_instance(&id).expect("get").expect("i");
        assert!(instance.agent_connected, "the presence offline was dropped");
        assert_eq!(kinds(&hub, &id), events);
    }

    #[test]
    fn a_gap_is_logged_with_the_missing_range() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        let metrics = || {
            Message::Metrics(HostMetrics {
                cpu_percent: 3.0,
                memory_used_mib: 100,
                memory_total_mib: 900,
                disk_used_mib: 1,
                disk_total_mib: 2,
                temperature_c: None,
                outbox_pending_records: None,
            })
        };
        ingest(&hub, &id, &envelope(1, metrics()));
        let mut e = envelope(9, metrics());
        e.folded = vec![(2, 3)];
        e.dropped = vec![(7, 8)];
        assert_eq!(
            ingest(&hub, &id, &e),
            Ingested::Applied {
                missing: vec![4..=6]
            }
        );
        let events = hub.store.device_events(&id, 10).expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "seqGap");
        assert_eq!(events[0].seq, Some(9));
        assert!(
            events[0].message.contains("4 to 6"),
            "{}",
            events[0].message
        );
        let (m, at) = hub.store.instance_metrics(&id).expect("m").expect("some");
        assert!(m.contains("\"memoryTotalMib\":900"), "{m}");
        assert_eq!(at, 109.0);
        // Messages within the covered ranges are replays now.
        assert_eq!(
            ingest(&hub, &id, &envelope(5, metrics())),
            Ingested::Duplicate
        );
    }

    #[test]
    fn events_are_kept_in_device_order() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        for (seq, kind) in [
            (1, EventKind::ContainerExited),
            (2, EventKind::ContainerRestarted),
        ] {
            let m = Message::Event {
                kind,
                task_arn: Some("t".into()),
                container: Some("web".into()),
                message: format!("event {seq}"),
            };
            ingest(&hub, &id, &envelope(seq, m));
        }
        ingest(&hub, &id, &envelope(3, Message::Applied { generation: 0 }));
        let events = hub.store.device_events(&id, 10).expect("events");
        let got: Vec<(Option<i64>, &str, f64)> = events
            .iter()
            .map(|e| (e.seq, e.kind.as_str(), e.time))
            .collect();
        assert_eq!(
            got,
            [
                (Some(1), "containerExited", 101.0),
                (Some(2), "containerRestarted", 102.0),
                (Some(3), "applied", 103.0)
            ]
        );
        assert_eq!(events[0].container.as_deref(), Some("web"));
    }

    /// A service's task that the device replaced, reported in either order: the old task's
    /// `replacedBy` or the new one's `replaces` first.
    fn replaced_on_the_device(
        new_first: bool,
        service_status: &str,
    ) -> (TestHub, String, i64, String, String) {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let svc = add_service(&hub, "site", 1, "REPLICA");
        let old = pass(&hub, svc, 2.0).started[0].clone();
        let new = format!(
            "{}/{}",
            old.rsplit_once('/').expect("arn").0,
            "f".repeat(32)
        );
        if service_status != "ACTIVE" {
            hub.write(|tx| -> Result<(), StoreError> {
                let mut s = tx.service(svc)?.expect("service");
                s.status = service_status.into();
                tx.update_service(&s)
            })
            .expect("status");
        }
        let mut stopped = report(&old, TaskStatus::Stopped);
        stopped.desired_status = DesiredStatus::Stopped;
        stopped.stopped_reason = Some("Essential container in task exited".into());
        stopped.stop_code = Some("EssentialContainerExited".into());
        stopped.group = Some("service:site".into());
        stopped.replaced_by = Some(new.clone());
        let mut started = report(&new, TaskStatus::Running);
        started.group = Some("service:site".into());
        started.replaces = Some(old.clone());
        started.task_definition_arn =
            Some("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:1".into());
        let (a, b) = if new_first {
            (started, stopped)
        } else {
            (stopped, started)
        };
        ingest(&hub, &id, &envelope(1, Message::TaskState { task: a }));
        ingest(&hub, &id, &envelope(2, Message::TaskState { task: b }));
        (hub, id, svc, old, new)
    }

    #[test]
    fn a_service_task_replaced_on_the_device_takes_its_place() {
        for new_first in [false, true] {
            let (hub, id, svc, old, new) = replaced_on_the_device(new_first, "ACTIVE");
            let n = task(&hub, &new);
            assert_eq!(n.service_id, Some(svc), "new first: {new_first}");
            assert_eq!(n.group, "service:site");
            assert_eq!(
                (n.last_status, n.desired_status),
                (TaskStatus::Running, DesiredStatus::Running)
            );
            assert_eq!(n.memory, 64);
            let o = task(&hub, &old);
            assert_eq!(
                (o.last_status, o.desired_status),
                (TaskStatus::Stopped, DesiredStatus::Stopped)
            );
            assert_eq!(o.stop_code.as_deref(), Some("EssentialContainerExited"));
            assert_eq!(
                o.stopped_reason.as_deref(),
                Some("Essential container in task exited"),
                "the device's reason, not the hub's"
            );
            assert_eq!(
                pass(&hub, svc, 5.0),
                ServiceOutcome::default(),
                "the service's count is met: the hub starts no task of its own"
            );
            let doc = desired_document(&hub, &id).expect("d").expect("i");
            let t = doc.task(&new).expect("the new task is in the document");
            assert_eq!(t.desired_status, DesiredStatus::Running);
            assert_eq!(t.group.as_deref(), Some("service:site"));
            assert!(doc.task(&old).is_none());
            assert!(kinds(&hub, &id).contains(&"taskReplaced".to_string()));
        }
    }

    #[test]
    fn a_replacement_of_a_task_the_hub_no_longer_wants_is_stopped() {
        for new_first in [false, true] {
            let (hub, id, _, _, new) = replaced_on_the_device(new_first, "DRAINING");
            let n = task(&hub, &new);
            assert_eq!(
                n.desired_status,
                DesiredStatus::Stopped,
                "new first: {new_first}"
            );
            let doc = desired_document(&hub, &id).expect("d").expect("i");
            assert_eq!(
                doc.task(&new).map(|t| t.desired_status),
                Some(DesiredStatus::Stopped),
                "the device is told to stop it"
            );
        }
    }

    #[test]
    fn an_unknown_task_is_recorded_not_dropped() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let before = hub.store.link_state(&id).expect("l").expect("i").generation;
        // With a definition the hub has: adopted, and in the document from now on.
        let known = "arn:aws:ecs:eu-west-1:123456789012:task/edge/0123456789abcdef";
        let mut r = report(known, TaskStatus::Running);
        r.task_definition_arn =
            Some("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:1".into());
        ingest(&hub, &id, &envelope(1, Message::TaskState { task: r }));
        let t = task(&hub, known);
        assert_eq!(
            (t.instance_id.as_str(), t.cluster.as_str()),
            (id.as_str(), "edge")
        );
        assert_eq!(t.desired_status, DesiredStatus::Running);
        assert_eq!(t.memory, 64, "its reservation counts against the instance");
        let doc = desired_document(&hub, &id).expect("d").expect("i");
        assert!(doc.task(known).is_some());
        assert_eq!(doc.generation, before as u64 + 1);

        // Without one: recorded, wanted STOPPED, and left out of a new document.
        let stray = "arn:aws:ecs:eu-west-1:123456789012:task/edge/stray";
        ingest(&hub, &id, &envelope(2, state(stray, TaskStatus::Running)));
        let t = task(&hub, stray);
        assert_eq!(t.desired_status, DesiredStatus::Stopped);
        assert_eq!(t.last_status, TaskStatus::Running);
        assert_eq!(
            t.stopped_reason.as_deref(),
            Some("the hub did not ask for this task")
        );
        let doc2 = desired_document(&hub, &id).expect("d").expect("i");
        assert!(doc2.task(stray).is_none());
        assert_eq!(doc2.refused, [stray], "the device is told to stop it");
        assert!(doc2.generation > doc.generation);
        assert_eq!(kinds(&hub, &id), ["unknownTask", "unknownTask"]);
    }

    #[test]
    fn a_report_out_of_bounds_is_refused_whole_and_recorded() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let arn = run(&hub, "web", 1).tasks[0].arn.clone();
        let before = desired_document(&hub, &id).expect("d").expect("i");
        // A megabyte-long ARN would be copied into the document's `refused` list.
        let huge = format!(
            "arn:aws:ecs:eu-west-1:123456789012:task/edge/{}",
            "x".repeat(1 << 20)
        );
        assert_eq!(
            ingest(&hub, &id, &envelope(1, state(&huge, TaskStatus::Running))),
            Ingested::Applied { missing: vec![] }
        );
        assert!(hub.store.task(&huge).expect("get").is_none());
        // A known task with a terminal escape in a container name changes nothing either.
        let mut r = report(&arn, TaskStatus::Running);
        r.containers[0].name = "web\u{1b}]0;owned\u{7}".into();
        ingest(&hub, &id, &envelope(2, Message::TaskState { task: r }));
        assert_eq!(task(&hub, &arn).last_status, TaskStatus::Pending);
        assert_eq!(desired_document(&hub, &id).expect("d").expect("i"), before);
        let events = hub.store.device_events(&id, 10).expect("events");
        assert_eq!(kinds(&hub, &id), ["messageRefused", "messageRefused"]);
        assert!(
            events[0].message.contains("taskArn is 1048621 bytes"),
            "{events:?}"
        );
        assert!(events[1].message.contains("container name"), "{events:?}");
        assert!(events.iter().all(|e| e.message.len() < 200));
        // Consumed: the replay is a duplicate, and the next message applies.
        assert_eq!(
            ingest(&hub, &id, &envelope(2, state(&arn, TaskStatus::Running))),
            Ingested::Duplicate
        );
        ingest(&hub, &id, &envelope(3, state(&arn, TaskStatus::Running)));
        assert_eq!(task(&hub, &arn).last_status, TaskStatus::Running);
    }

    #[test]
    fn long_free_text_is_cut_and_the_cut_is_counted() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        let e = envelope(
            1,
            Message::Event {
                kind: EventKind::Other,
                task_arn: None,
                container: None,
                message: format!("\u{1b}[2J{}", "y".repeat(1 << 20)),
            },
        );
        ingest(&hub, &id, &e);
        let events = hub.store.device_events(&id, 10).expect("events");
        assert_eq!(kinds(&hub, &id), ["fieldsCut", "other"]);
        assert_eq!(events[1].message.len(), super::bounds::MAX_TEXT);
        assert!(events[1].message.starts_with("\u{fffd}[2J"));
    }

    #[test]
    fn a_hostile_generation_is_refused_and_the_instance_stays_usable() {
        let hub = hub();
        let attacker = add_instance(&hub, 1, 4096, 4096);
        let honest = add_instance(&hub, 2, 4096, 4096);
        register(&hub, web(64));
        let daemon = add_service(&hub, "agent", 0, "DAEMON");
        assert_eq!(pass(&hub, daemon, 2.0).started.len(), 2);
        let generation = |id: &str| hub.store.link_state(id).expect("l").expect("i").generation;
        let before = generation(&attacker);
        let huge = [
            u64::MAX,
            i64::MAX as u64,
            i64::MAX as u64 - 1,
            (before + MAX_GENERATION_AHEAD + 1) as u64,
        ];
        for (seq, g) in (1..).zip(huge) {
            ingest(
                &hub,
                &attacker,
                &envelope(seq, Message::Applied { generation: g }),
            );
        }
        ingest(
            &hub,
            &attacker,
            &envelope(
                5,
                Message::FullState {
                    generation: i64::MAX as u64,
                    tasks: Vec::new(),
                },
            ),
        );
        assert_eq!(generation(&attacker), before, "the hub keeps its own count");
        assert_eq!(kinds(&hub, &attacker), ["generationRefused"; 5]);
        let doc = desired_document(&hub, &attacker).expect("d").expect("i");
        assert_eq!(doc.tasks.len(), 1, "a refused full state drops no task");
        // Within the bound it is the restored-hub case: the hub moves past it, once.
        let ahead = before + MAX_GENERATION_AHEAD;
        ingest(
            &hub,
            &attacker,
            &envelope(
                6,
                Message::Applied {
                    generation: ahead as u64,
                },
            ),
        );
        assert_eq!(generation(&attacker), ahead + 1);
        // The DAEMON service still passes over the whole cluster, and the attacker can be
        // deregistered (with its task), which bumps its generation once more.
        pass(&hub, daemon, 3.0);
        let out = crate::api::ecs::instances::deregister(
            &hub,
            serde_json::from_value(
                json!({"cluster": "edge", "containerInstance": attacker, "force": true}),
            )
            .expect("input"),
            4.0,
        )
        .expect("deregister");
        assert_eq!(out["containerInstance"]["status"], "INACTIVE");
        assert!(generation(&attacker) > ahead + 1, "each change counted");
        let outcome = pass(&hub, daemon, 5.0);
        assert!(outcome.started.is_empty(), "{outcome:?}");
        assert_eq!(
            desired_document(&hub, &honest)
                .expect("d")
                .expect("i")
                .tasks
                .len(),
            1
        );
    }

    #[test]
    fn a_generation_at_the_top_of_the_range_is_an_error_not_an_overflow() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        hub.write(|tx| tx.raise_generation(&id, i64::MAX))
            .expect("raise");
        let err = hub
            .write(|tx| tx.bump_generation(&id))
            .expect_err("no room above i64::MAX");
        assert!(
            err.to_string().contains("used up its generation numbers"),
            "{err}"
        );
        // Nothing half-written: the row still reads.
        assert_eq!(
            hub.store.link_state(&id).expect("l").expect("i").generation,
            i64::MAX
        );
        assert_eq!(
            hub.write(|tx| tx.bump_generation("mi-none")).expect("none"),
            None
        );
    }

    #[test]
    fn events_are_trimmed_by_the_hubs_count_whatever_seqs_a_device_picks() {
        use crate::store::{DEVICE_EVENTS_KEPT, TRIM_EVERY};
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        let flood = 3 * DEVICE_EVENTS_KEPT;
        // Seqs that are never a multiple of 64, which once kept the trim from running.
        // Slow enough for the device's quota: this is about the trim alone.
        for (n, seq) in (0..flood).map(|n| (n, n * 64 + 1)) {
            let e = envelope(
                seq as u64,
                Message::Event {
                    kind: EventKind::Other,
                    task_arn: None,
                    container: None,
                    message: format!("event {seq}"),
                },
            );
            crate::device::ingest(&hub, &id, &e, 1000.0 + n as f64).expect("ingest");
        }
        let kept = hub
            .store
            .device_events(&id, usize::MAX >> 1)
            .expect("events");
        assert!(
            kept.len() < (DEVICE_EVENTS_KEPT + TRIM_EVERY) as usize,
            "{}",
            kept.len()
        );
        assert!(kept.len() >= DEVICE_EVENTS_KEPT as usize);
        // The newest survive.
        let last = kept.last().expect("some");
        assert_eq!(last.message, format!("event {}", (flood - 1) * 64 + 1));
    }

    #[test]
    fn reports_cannot_grow_a_tasks_containers_without_end() {
        let stored = vec![json!({"name": "web", "memory": "64"})];
        let named = |prefix: &str| -> Vec<ContainerReport> {
            (0..bounds::MAX_CONTAINERS)
                .map(|n| {
                    let mut c = report("arn:t", TaskStatus::Running).containers.remove(0);
                    c.name = format!("{prefix}{n}");
                    c
                })
                .collect()
        };
        let mut merged = merge_containers(&stored, &named("a"));
        merged = merge_containers(&merged, &named("b"));
        assert_eq!(merged.len(), bounds::MAX_CONTAINERS);
        assert_eq!(merged[0]["memory"], "64", "the hub's own container is kept");
        // A container already there is still updated.
        let mut web = report("arn:t", TaskStatus::Stopped).containers;
        web[0].exit_code = Some(3);
        let merged = merge_containers(&merged, &web);
        assert_eq!(merged[0]["exitCode"], 3);
        assert_eq!(merged.len(), bounds::MAX_CONTAINERS);
    }

    #[test]
    fn a_device_over_its_quota_is_dropped_counted_and_told() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        let other = add_instance(&hub, 2, 4096, 4096);
        let event = |seq: u64| {
            envelope(
                seq,
                Message::Event {
                    kind: EventKind::Other,
                    task_arn: None,
                    container: None,
                    message: format!("event {seq}"),
                },
            )
        };
        let burst = crate::quota::BURST as u64;
        for seq in 1..=burst + 10 {
            crate::device::ingest(&hub, &id, &event(seq), 1000.0).expect("ingest");
        }
        let last = |id: &str, n: usize| hub.store.device_events(id, n).expect("events");
        assert_eq!(
            last(&id, 1)[0].message,
            format!("event {burst}"),
            "the excess left no trace"
        );
        // Consumed: a replay of a dropped seq is a duplicate.
        assert_eq!(
            crate::device::ingest(&hub, &id, &event(burst + 5), 1000.0).expect("ingest"),
            Ingested::Duplicate
        );
        // Another device is served meanwhile.
        crate::device::ingest(&hub, &other, &event(1), 1000.0).expect("ingest");
        assert_eq!(last(&other, 10).len(), 1);
        // A second later the device is let through again, and told what was dropped.
        crate::device::ingest(&hub, &id, &event(burst + 11), 1001.0).expect("ingest");
        let told = last(&id, 2);
        assert_eq!(told[0].kind, "rateLimited");
        assert!(
            told[0].message.starts_with("10 messages before seq"),
            "{told:?}"
        );
        assert_eq!(told[1].message, format!("event {}", burst + 11));
    }

    #[test]
    fn unknown_tasks_a_device_invents_are_bounded() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        let arn = |n: usize| format!("arn:aws:ecs:eu-west-1:123456789012:task/edge/stray{n}");
        // Each report on a second of its own, to stay within the device's quota.
        let n = super::bounds::MAX_TASKS + 5;
        for i in 0..n {
            let e = envelope(i as u64 + 1, state(&arn(i), TaskStatus::Running));
            crate::device::ingest(&hub, &id, &e, 1000.0 + i as f64).expect("ingest");
        }
        let kept = hub
            .write(|tx| tx.unstopped_instance_task_count(&id))
            .expect("count");
        assert_eq!(kept, super::bounds::MAX_TASKS);
        assert!(hub.store.task(&arn(n - 1)).expect("get").is_none());
        assert_eq!(
            kinds(&hub, &id).last().map(String::as_str),
            Some("unknownTaskIgnored")
        );
        let doc = desired_document(&hub, &id).expect("d").expect("i");
        assert_eq!(doc.refused.len(), super::bounds::MAX_TASKS);
    }

    #[test]
    fn another_instances_task_is_not_touched() {
        let hub = hub();
        let a = add_instance(&hub, 1, 4096, 64);
        let b = add_instance(&hub, 2, 4096, 4096);
        register(&hub, web(64));
        let placed = run(&hub, "web", 2);
        let on_b = placed
            .tasks
            .iter()
            .find(|t| t.instance_id == b)
            .expect("on b");
        ingest(
            &hub,
            &a,
            &envelope(1, state(&on_b.arn, TaskStatus::Stopped)),
        );
        assert_eq!(task(&hub, &on_b.arn).last_status, TaskStatus::Pending);
        assert_eq!(kinds(&hub, &a), ["foreignTask"]);
    }

    #[test]
    fn a_task_that_stops_on_its_own_leaves_the_document() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let arn = run(&hub, "web", 1).tasks[0].arn.clone();
        let g1 = desired_document(&hub, &id)
            .expect("d")
            .expect("i")
            .generation;
        let mut r = report(&arn, TaskStatus::Stopped);
        r.stopped_reason = Some("Essential container in task exited".into());
        r.stop_code = Some("EssentialContainerExited".into());
        r.containers[0].exit_code = Some(3);
        ingest(&hub, &id, &envelope(1, Message::TaskState { task: r }));
        let t = task(&hub, &arn);
        assert_eq!(
            (t.last_status, t.desired_status),
            (TaskStatus::Stopped, DesiredStatus::Stopped)
        );
        assert_eq!(t.stop_code.as_deref(), Some("EssentialContainerExited"));
        assert_eq!(t.containers[0]["exitCode"], 3);
        assert_eq!(t.stopped_at, Some(101.0));
        let doc = desired_document(&hub, &id).expect("d").expect("i");
        assert!(doc.tasks.is_empty());
        assert_eq!(doc.generation, g1 + 1);
        // A late RUNNING for a STOPPED task is ignored.
        ingest(&hub, &id, &envelope(2, state(&arn, TaskStatus::Running)));
        assert_eq!(task(&hub, &arn).last_status, TaskStatus::Stopped);
    }

    #[test]
    fn stopped_tasks_are_kept_by_the_hubs_clock_not_the_devices() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let arn = run(&hub, "web", 1).tasks[0].arn.clone();
        // The device's clock says 101 (a board without RTC); the hub's says 1000.
        let mut stopped = report(&arn, TaskStatus::Stopped);
        stopped.desired_status = DesiredStatus::Stopped;
        ingest(
            &hub,
            &id,
            &envelope(1, Message::TaskState { task: stopped }),
        );
        assert_eq!(task(&hub, &arn).stopped_at, Some(101.0));
        // The sweep forgets what the hub changed before a cutoff (its time less an hour).
        assert_eq!(hub.store.delete_stopped_tasks(999.0).expect("sweep"), 0);
        assert_eq!(hub.store.delete_stopped_tasks(1001.0).expect("sweep"), 1);
        assert!(hub.store.task(&arn).expect("get").is_none());
    }

    #[test]
    fn full_state_reconciles_every_task() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        let placed = run(&hub, "web", 3);
        let arns: Vec<String> = placed.tasks.iter().map(|t| t.arn.clone()).collect();
        // The hub wants the second one stopped.
        hub.write(|tx| -> Result<(), StoreError> {
            let t = tx.task(&arns[1])?.expect("task");
            scheduler::stop_task(tx, &t, "by test", "UserInitiated", 20.0)?;
            Ok(())
        })
        .expect("stop");
        let g = hub.store.link_state(&id).expect("l").expect("i").generation;
        assert_eq!(g, 4);
        // The device ran generation 3: it knows the first two, still running; the third
        // (from generation 3) it does not list, so it no longer has it.
        let full = Message::FullState {
            generation: 3,
            tasks: vec![
                report(&arns[0], TaskStatus::Running),
                report(&arns[1], TaskStatus::Running),
            ],
        };
        ingest(&hub, &id, &envelope(1, full));
        let first = task(&hub, &arns[0]);
        assert_eq!(
            (first.last_status, first.desired_status),
            (TaskStatus::Running, DesiredStatus::Running)
        );
        // The device's RUNNING does not undo the hub's stop.
        let second = task(&hub, &arns[1]);
        assert_eq!(
            (second.last_status, second.desired_status),
            (TaskStatus::Running, DesiredStatus::Stopped)
        );
        let third = task(&hub, &arns[2]);
        assert_eq!(
            (third.last_status, third.desired_status),
            (TaskStatus::Stopped, DesiredStatus::Stopped)
        );
        assert!(third
            .stopped_reason
            .as_deref()
            .is_some_and(|r| r.contains("generation 3")));
        let link = hub.store.link_state(&id).expect("l").expect("i");
        assert_eq!(link.applied_generation, 3);
        let doc = desired_document(&hub, &id).expect("d").expect("i");
        let entries: Vec<(&str, DesiredStatus)> = doc
            .tasks
            .iter()
            .map(|t| (t.task_arn.as_str(), t.desired_status))
            .collect();
        assert_eq!(
            entries,
            [
                (arns[0].as_str(), DesiredStatus::Running),
                (arns[1].as_str(), DesiredStatus::Stopped)
            ]
        );
        assert_eq!(doc.generation, 5, "the third task left the document");
        assert_eq!(
            kinds(&hub, &id),
            ["taskState", "taskState", "taskMissing", "fullState"]
        );

        // A device ahead of the hub (restored from an older copy) pushes the generation past.
        let ahead = Message::FullState {
            generation: 40,
            tasks: vec![report(&arns[0], TaskStatus::Running)],
        };
        ingest(&hub, &id, &envelope(2, ahead));
        // 41 to move past the device, 42 as the task asked to stop, which the device no
        // longer lists, leaves the document.
        let doc = desired_document(&hub, &id).expect("d").expect("i");
        assert_eq!(doc.generation, 42);
        assert_eq!(doc.tasks.len(), 1);
        assert_eq!(task(&hub, &arns[1]).last_status, TaskStatus::Stopped);
    }

    #[test]
    fn connection_changes_are_recorded() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        set_connected(&hub, &id, false, 5.0).expect("set");
        let i = hub.store.container_instance(&id).expect("get").expect("i");
        assert!(!i.agent_connected);
        assert_eq!(i.last_seen_at, Some(5.0));
        assert_eq!(kinds(&hub, &id), ["disconnected"]);
        let err = set_connected(&hub, "mi-00000000000000099", true, 5.0).expect_err("unknown");
        assert!(err.to_string().contains("mi-00000000000000099"), "{err}");
    }

    #[test]
    fn dirty_instances_are_taken_once_and_wake_the_publisher() {
        let hub = hub();
        let id = add_instance(&hub, 1, 4096, 4096);
        register(&hub, web(64));
        run(&hub, "web", 1);
        let waited = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    hub.changes.documents_changed(),
                )
                .await
            });
        assert!(waited.is_ok(), "a change made before waiting still wakes");
        assert_eq!(hub.changes.take_dirty(), vec![id]);
        assert!(hub.changes.take_dirty().is_empty());
    }

    #[test]
    fn a_batch_applies_each_message_and_isolates_the_one_that_fails() {
        let hub = hub();
        let a = add_instance(&hub, 1, 4096, 4096);
        let b = add_instance(&hub, 2, 4096, 4096);
        let applied = |g| Message::Applied { generation: g };
        let unknown = "mi-00000000000000099".to_string();
        let batch = [
            (
                a.clone(),
                DeviceMessage::Up(Box::new(envelope(1, applied(0)))),
            ),
            (
                unknown.clone(),
                DeviceMessage::Up(Box::new(envelope(1, applied(0)))),
            ),
            (
                b.clone(),
                DeviceMessage::Presence {
                    online: true,
                    os: OsReport {
                        version: Some("7.1".into()),
                        slot: Some("B".into()),
                    },
                },
            ),
            // The same seq again within the batch: it sees the first one applied.
            (
                a.clone(),
                DeviceMessage::Up(Box::new(envelope(1, applied(0)))),
            ),
            (
                unknown.clone(),
                DeviceMessage::Presence {
                    online: true,
                    os: OsReport::default(),
                },
            ),
            (
                b.clone(),
                DeviceMessage::Up(Box::new(envelope(4, applied(0)))),
            ),
        ];
        let out = ingest_batch(&hub, &batch, 1000.0).expect("batch");
        assert_eq!(out.len(), batch.len());
        assert_eq!(
            out[0].as_ref().expect("a"),
            &Ingested::Applied {
                missing: Vec::new()
            }
        );
        assert!(
            matches!(&out[1], Err(DeviceError::UnknownInstance(i)) if *i == unknown),
            "{:?}",
            out[1]
        );
        assert!(out[2].is_ok());
        assert_eq!(out[3].as_ref().expect("dup"), &Ingested::Duplicate);
        assert!(out[4].is_ok(), "an unknown instance's presence is ignored");
        assert_eq!(
            out[5].as_ref().expect("b"),
            &Ingested::Applied {
                missing: vec![1..=3]
            }
        );
        let link = |id: &str| hub.store.link_state(id).expect("l").expect("i");
        assert_eq!(link(&a).up_seq, 1);
        assert_eq!(link(&b).up_seq, 4);
        assert!(
            hub.store
                .container_instance(&b)
                .expect("get")
                .expect("b")
                .agent_connected
        );
        let attributes: serde_json::Value = serde_json::from_str(
            &hub.store
                .container_instance(&b)
                .expect("get")
                .expect("b")
                .attributes,
        )
        .expect("attributes are JSON");
        assert_eq!(attributes["skerry.os.version"], "7.1");
        assert_eq!(attributes["skerry.os.slot"], "B");
        assert_eq!(kinds(&hub, &a), ["applied"]);
        assert_eq!(kinds(&hub, &b), ["connected", "seqGap", "applied"]);
        // Committed: a replay of the whole batch changes nothing.
        let again = ingest_batch(&hub, &batch[..1], 1001.0).expect("replay");
        assert_eq!(again[0].as_ref().expect("a"), &Ingested::Duplicate);
    }

    #[test]
    fn documents_built_together_are_the_documents_built_alone() {
        let hub = hub();
        let a = add_instance(&hub, 1, 4096, 4096);
        let b = add_instance(&hub, 2, 4096, 4096);
        add_instance(&hub, 3, 4096, 4096);
        register(&hub, web(64));
        run(&hub, "web", 5);
        let mut second = web(32);
        second["containerDefinitions"][0]["name"] = "side".into();
        register(&hub, second);
        run(&hub, "web", 1);
        let ids = vec![
            a.clone(),
            "mi-00000000000000099".to_string(),
            b.clone(),
            instance_id(3),
        ];
        let together = desired_documents(&hub, &ids).expect("documents");
        assert_eq!(together.len(), ids.len());
        for (id, doc) in ids.iter().zip(together) {
            let alone = desired_document(&hub, id).expect("alone");
            let doc = doc.expect("together");
            assert_eq!(doc, alone, "{id}");
        }
        let doc = desired_document(&hub, &a).expect("d").expect("a");
        let revisions: BTreeSet<Option<u32>> = doc
            .tasks
            .iter()
            .map(|t| t.task_definition.revision)
            .collect();
        assert!(!doc.tasks.is_empty());
        assert!(desired_document(&hub, "mi-00000000000000099")
            .expect("none")
            .is_none());
        assert!(revisions.iter().all(Option::is_some), "{revisions:?}");
    }

    #[test]
    fn missing_seqs_skip_what_the_envelope_covers() {
        assert_eq!(missing(0, &[1..=1]), Vec::<RangeInclusive<u64>>::new());
        assert_eq!(missing(4, &[9..=9]), vec![5..=8]);
        // Folded 5..=6 accounts for those; 7..=8 are a gap.
        assert_eq!(missing(4, &[5..=6, 9..=9]), vec![7..=8]);
        // Coverage reaching below the high-water mark is not a gap.
        assert_eq!(missing(6, &[3..=7, 9..=10]), vec![8..=8]);
    }

    // The scheduler's changes as the documents show them.

    #[test]
    fn run_tasks_spreads_and_reports_what_did_not_fit() {
        let hub = hub();
        let a = add_instance(&hub, 1, 1024, 512);
        let b = add_instance(&hub, 2, 1024, 256);
        register(&hub, web(200));
        let placed = run(&hub, "web", 3);
        let on: Vec<&str> = placed
            .tasks
            .iter()
            .map(|t| t.instance_id.as_str())
            .collect();
        assert_eq!(on, [a.as_str(), b.as_str(), a.as_str()]);
        assert!(placed.failures.is_empty());
        // a has 112 MiB left, b 56: nothing fits 200.
        let more = run(&hub, "web", 1);
        assert!(more.tasks.is_empty());
        assert_eq!(more.failures[0].shortage.reason(), "RESOURCE:MEMORY");
        assert!(more.failures[0].arn.ends_with(&format!("{:032x}", 1)));
        // Each placement bumped its instance's generation once.
        let doc = desired_document(&hub, &a).expect("doc").expect("instance");
        assert_eq!(doc.generation, 2);
        assert_eq!(doc.tasks.len(), 2);
        assert!(doc
            .tasks
            .iter()
            .all(|t| t.desired_status == DesiredStatus::Running));
        assert_eq!(
            doc.tasks[0].task_definition.task_definition_arn.as_deref(),
            Some("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:1")
        );
        assert_eq!(hub.changes.take_dirty(), vec![a, b]);
    }

    #[test]
    fn services_keep_their_count_and_say_so() {
        let hub = hub();
        add_instance(&hub, 1, 4096, 4096);
        add_instance(&hub, 2, 4096, 4096);
        register(&hub, web(64));
        let id = add_service(&hub, "site", 3, "REPLICA");
        let first = pass(&hub, id, 2.0);
        assert_eq!(first.started.len(), 3);
        let loads = hub.store.instance_loads("edge", None).expect("loads");
        assert_eq!(
            loads.iter().map(|l| l.group_tasks).collect::<Vec<_>>(),
            [0, 0],
            "group counted only when asked"
        );
        let per: Vec<i64> = loads.iter().map(|l| l.pending).collect();
        assert_eq!(per, [2, 1]);
        // Nothing to do: no change, no new start event.
        assert_eq!(pass(&hub, id, 3.0), ServiceOutcome::default());
        let events = hub.store.service_events(id, 10).expect("events");
        assert_eq!(events.len(), 1);
        assert!(events[0]
            .message
            .starts_with("(service site) has started 3 tasks:"));
        // Scale to 1: the two newest stop.
        hub.write(|tx| -> Result<(), StoreError> {
            let mut s = tx.service(id)?.expect("service");
            s.desired_count = 1;
            tx.update_service(&s)
        })
        .expect("scale");
        let down = pass(&hub, id, 4.0);
        assert_eq!(
            down.stopped,
            vec![first.started[2].clone(), first.started[1].clone()]
        );
        let kept = hub
            .store
            .task(&first.started[0])
            .expect("get")
            .expect("task");
        assert!(kept.is_live());
        let stopped = hub
            .store
            .task(&first.started[1])
            .expect("get")
            .expect("task");
        assert_eq!(stopped.desired_status, DesiredStatus::Stopped);
        assert_eq!(
            stopped.stop_code.as_deref(),
            Some("ServiceSchedulerInitiated")
        );
        // Stopped but not yet reported so: still in its instance's document, as STOPPED.
        let doc = desired_document(&hub, &stopped.instance_id)
            .expect("doc")
            .expect("instance");
        assert_eq!(
            doc.task(&stopped.arn).map(|t| t.desired_status),
            Some(DesiredStatus::Stopped)
        );
    }
}
