//! The one write path to the store, and who hears about it: every change goes through
//! [`Changes::write`], one store transaction in which the generation of each instance whose
//! desired-state document changed is bumped; once it commits, those instances are marked
//! dirty and the publisher (`link`) is woken. The service loop is woken the same way when a
//! service may need a pass. The dirty set holds instance ids, so it is bounded by the number
//! of instances however often they change.
//!
//! Followers of the event history (`ListEvents` with `waitSeconds`) block on
//! [`Changes::wait_for_events`] until a write that added device events commits; at most
//! [`MAX_EVENT_WAITERS`] wait at once, each on a thread of the blocking pool.
//!
//! The publisher loops on [`Changes::documents_changed`], then publishes, for the ids
//! [`Changes::take_dirty`] returns, their documents retained (re-marking an id with
//! [`Changes::mark_dirty`] if its publish failed). Documents are read when published, so a
//! burst of changes to one instance costs one publish of its latest document.
//!
//! Deregistrations wake the revocation task the same way ([`Changes::poke_revocations`]).

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::store::{Store, StoreError, Txn};

/// Long-polls of the event history waiting at once; more are refused (each holds a thread
/// of the blocking pool).
pub const MAX_EVENT_WAITERS: usize = 64;

#[derive(Default)]
pub struct Changes {
    dirty: Mutex<BTreeSet<String>>,
    documents: Notify,
    services: Notify,
    revocations: Notify,
    events: Mutex<EventWatch>,
    events_added: Condvar,
}

#[derive(Default)]
struct EventWatch {
    /// Commits that added device events since the hub started.
    commits: u64,
    waiters: usize,
    stopped: bool,
}

/// [`Changes::wait_for_events`] was refused: [`MAX_EVENT_WAITERS`] wait already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyWaiters;

impl Changes {
    pub fn new() -> Changes {
        Changes::default()
    }

    /// Marks every instance dirty: after a restart the broker's retained documents may lag
    /// behind the store (the hub may have stopped between a commit and its publish).
    pub fn resume(&self, store: &Store) -> Result<(), StoreError> {
        self.mark_dirty(store.instance_ids()?);
        Ok(())
    }

    /// Runs `f` in one store transaction; once it commits, marks the instances whose
    /// document changed dirty and wakes the publisher.
    pub fn write<T, E: From<StoreError>>(
        &self,
        store: &Store,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let (value, written) = store.write(f)?;
        self.mark_dirty(written.instances);
        if written.events {
            let mut w = self.events.lock().unwrap_or_else(|p| p.into_inner());
            w.commits += 1;
            self.events_added.notify_all();
        }
        Ok(value)
    }

    /// A mark to read before looking at the event history and to pass to
    /// [`Changes::wait_for_events`]: events committed after it wake the waiter.
    pub fn event_mark(&self) -> u64 {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .commits
    }

    /// Blocks until events commit after `mark`, `until` passes, or [`Changes::stop_waiting`].
    /// Returns whether new events were committed.
    pub fn wait_for_events(&self, mark: u64, until: Instant) -> Result<bool, TooManyWaiters> {
        let mut w = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if w.waiters >= MAX_EVENT_WAITERS {
            return Err(TooManyWaiters);
        }
        w.waiters += 1;
        while w.commits == mark && !w.stopped {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            w = self
                .events_added
                .wait_timeout(w, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        w.waiters -= 1;
        Ok(w.commits != mark)
    }

    /// Whether [`Changes::stop_waiting`] was called.
    pub fn stopping(&self) -> bool {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopped
    }

    /// Wakes every waiter and makes later waits return at once: the hub is shutting down.
    pub fn stop_waiting(&self) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopped = true;
        self.events_added.notify_all();
    }

    pub fn mark_dirty(&self, ids: impl IntoIterator<Item = String>) {
        let mut added = false;
        {
            // A panic elsewhere cannot leave a set of strings half-updated.
            let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                added |= dirty.insert(id);
            }
        }
        if added {
            self.documents.notify_one();
        }
    }

    /// Takes the instances whose document changed since the last call, in id order.
    pub fn take_dirty(&self) -> Vec<String> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *dirty).into_iter().collect()
    }

    /// Resolves when some document changed since the last [`Changes::take_dirty`]. Meant
    /// for one publisher: a change made while nobody waits is not lost.
    pub async fn documents_changed(&self) {
        self.documents.notified().await
    }

    /// Asks the service loop for a pass now, e.g. because a service's task stopped.
    pub fn poke_services(&self) {
        self.services.notify_one();
    }

    pub async fn services_changed(&self) {
        self.services.notified().await
    }

    /// Tells the revocation task (`revocation`) an instance was deregistered.
    pub fn poke_revocations(&self) {
        self.revocations.notify_one();
    }

    pub async fn revocations_changed(&self) {
        self.revocations.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_waiter_wakes_on_events_times_out_or_stops() {
        let c = Arc::new(Changes::new());
        let mark = c.event_mark();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(c.wait_for_events(mark, soon), Ok(false));
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || {
                c.wait_for_events(mark, Instant::now() + Duration::from_secs(30))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        {
            let mut w = c.events.lock().expect("lock");
            w.commits += 1;
            c.events_added.notify_all();
        }
        assert_eq!(waiter.join().expect("waiter"), Ok(true));
        let later = c.event_mark();
        let started = Instant::now();
        let stopper = {
            let c = c.clone();
            std::thread::spawn(move || {
                c.wait_for_events(later, Instant::now() + Duration::from_secs(30))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        c.stop_waiting();
        assert_eq!(stopper.join().expect("stopper"), Ok(false));
        assert!(started.elapsed() < Duration::from_secs(10));
        c.events.lock().expect("lock").waiters = MAX_EVENT_WAITERS;
        assert_eq!(
            c.wait_for_events(later, Instant::now()),
            Err(TooManyWaiters)
        );
    }
}
