//! Task changes into the outbox. The reconciler's observer only marks a task dirty (a set
//! in memory and a wake-up: no disk, no waiting); the reporter appends the current report
//! of each dirty task as a `TaskState`, keyed by task ARN so the outbox coalesces under
//! pressure. Changes that come faster than the disk coalesce here, never losing the latest.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use skerry_proto::link::Message;
use skerry_proto::status::TaskReport;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Outbound;
use crate::backoff::Backoff;
use crate::outbox::Class;
use crate::reconcile::{Handle, TaskEvent};

/// Most task ARNs kept by name; beyond, every task is reported (nothing is lost, the set
/// stays bounded).
const MAX_DIRTY: usize = 4096;
/// Most events waiting for the outbox (which is where they are bounded); beyond, the
/// oldest are dropped and counted.
const MAX_EVENTS: usize = 4096;

#[derive(Default)]
struct Dirty {
    arns: BTreeSet<String>,
    /// More tasks changed than `MAX_DIRTY`: report them all.
    all: bool,
}

#[derive(Default)]
struct Events {
    queue: VecDeque<TaskEvent>,
    dropped: u64,
}

#[derive(Default)]
pub struct Changes {
    dirty: Mutex<Dirty>,
    events: Mutex<Events>,
    notify: Notify,
}

impl Changes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the task changed; returns at once.
    pub fn mark(&self, arn: &str) {
        {
            let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            if !d.all && !d.arns.contains(arn) {
                if d.arns.len() >= MAX_DIRTY {
                    d.all = true;
                    d.arns.clear();
                } else {
                    d.arns.insert(arn.to_string());
                }
            }
        }
        self.notify.notify_one();
    }

    /// Queues an event; returns at once.
    pub fn event(&self, e: TaskEvent) {
        {
            let mut q = self.events.lock().unwrap_or_else(|p| p.into_inner());
            if q.queue.len() >= MAX_EVENTS {
                q.queue.pop_front();
                q.dropped += 1;
            }
            q.queue.push_back(e);
        }
        self.notify.notify_one();
    }

    /// Takes the queued events, with a note of how many were dropped first if any.
    fn take_events(&self) -> Vec<Message> {
        let mut q = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(q.queue.len() + 1);
        if q.dropped > 0 {
            out.push(Message::Dropped {
                what: "task events (the outbox could not take them fast enough)".into(),
                count: std::mem::take(&mut q.dropped),
            });
        }
        out.extend(q.queue.drain(..).map(|e| Message::Event {
            kind: e.kind,
            task_arn: Some(e.task_arn),
            container: e.container,
            message: e.message,
        }));
        out
    }

    /// Puts events back at the front, in order, when the outbox could not take them.
    fn requeue(&self, events: Vec<Message>) {
        let mut q = self.events.lock().unwrap_or_else(|p| p.into_inner());
        for m in events.into_iter().rev() {
            match m {
                Message::Event {
                    kind,
                    task_arn: Some(task_arn),
                    container,
                    message,
                } => q.queue.push_front(TaskEvent {
                    kind,
                    task_arn,
                    container,
                    message,
                }),
                Message::Dropped { count, .. } => q.dropped += count,
                _ => {}
            }
        }
    }

    /// Takes the marked tasks: (ARNs, whether all tasks are to be reported).
    fn take(&self) -> (BTreeSet<String>, bool) {
        let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let all = std::mem::take(&mut d.all);
        (std::mem::take(&mut d.arns), all)
    }

    pub async fn wait(&self) {
        self.notify.notified().await
    }
}

/// Appends a `TaskState` for each changed task until `stop`, then once more for what the
/// last moments changed.
pub async fn run(
    changes: std::sync::Arc<Changes>,
    handle: Handle,
    out: Outbound,
    stop: CancellationToken,
) {
    let mut last: HashMap<String, TaskReport> = HashMap::new();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let stopping = tokio::select! {
            _ = changes.wait() => false,
            _ = stop.cancelled() => true,
        };
        let (arns, all) = changes.take();
        let tasks = handle.tasks();
        let mut failed = false;
        for t in tasks.iter().filter(|t| all || arns.contains(&t.task_arn)) {
            if failed {
                changes.mark(&t.task_arn);
                continue;
            }
            if last.get(&t.task_arn) == Some(t) {
                continue;
            }
            let class = Class::State {
                key: t.task_arn.clone(),
            };
            match out
                .append(class, Message::TaskState { task: t.clone() })
                .await
            {
                Ok(_) => {
                    last.insert(t.task_arn.clone(), t.clone());
                }
                Err(e) => {
                    warn!(task = %t.task_arn, "cannot record the task's state in the outbox: {e}");
                    // Marked again, so the latest state goes in once the outbox takes it.
                    changes.mark(&t.task_arn);
                    failed = true;
                }
            }
        }
        if !failed {
            let mut events = changes.take_events().into_iter();
            while let Some(m) = events.next() {
                let class = match &m {
                    Message::Event { task_arn, .. } => Class::Event {
                        key: task_arn.clone().unwrap_or_default(),
                    },
                    _ => Class::Event {
                        key: "events".into(),
                    },
                };
                if let Err(e) = out.append(class, m.clone()).await {
                    warn!("cannot record a task event in the outbox: {e}");
                    changes.requeue(std::iter::once(m).chain(events).collect());
                    failed = true;
                    break;
                }
            }
        }
        // Pruned tasks need no memory.
        if last.len() > tasks.len() {
            last.retain(|arn, _| tasks.iter().any(|t| &t.task_arn == arn));
        }
        if stopping {
            return;
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.cancelled() => {}
            }
        } else {
            backoff.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_coalesce_and_overflow_reports_everything() {
        let c = Changes::new();
        c.mark("a");
        c.mark("b");
        c.mark("a");
        let (arns, all) = c.take();
        assert_eq!(arns.into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert!(!all);
        for i in 0..=MAX_DIRTY {
            c.mark(&format!("task-{i}"));
        }
        let (arns, all) = c.take();
        assert!(all, "beyond the bound every task is reported");
        assert!(arns.is_empty());
        let (arns, all) = c.take();
        assert!(arns.is_empty() && !all, "taking clears");
    }
}
