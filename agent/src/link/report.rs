//! Task changes into the outbox. The reconciler's observer only marks a task dirty (a set
//! in memory and a wake-up: no disk, no waiting); the reporter appends the current report
//! of each dirty task as a `TaskState`, keyed by task ARN so the outbox coalesces under
//! pressure. Changes that come faster than the disk coalesce here, never losing the latest.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use skerry_proto::link::Message;
use skerry_proto::status::TaskReport;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::backoff::Backoff;
use super::Outbound;
use crate::outbox::Class;
use crate::reconcile::Handle;

/// Most task ARNs kept by name; beyond, every task is reported (nothing is lost, the set
/// stays bounded).
const MAX_DIRTY: usize = 4096;

#[derive(Default)]
struct Dirty {
    arns: BTreeSet<String>,
    /// More tasks changed than `MAX_DIRTY`: report them all.
    all: bool,
}

#[derive(Default)]
pub struct Changes {
    dirty: Mutex<Dirty>,
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
