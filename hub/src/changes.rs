//! The one write path to the store, and who hears about it: every change goes through
//! [`Changes::write`], one store transaction in which the generation of each instance whose
//! desired-state document changed is bumped; once it commits, those instances are marked
//! dirty and the publisher (`link`) is woken. The service loop is woken the same way when a
//! service may need a pass. The dirty set holds instance ids, so it is bounded by the number
//! of instances however often they change.
//!
//! The publisher loops on [`Changes::documents_changed`], then publishes, for the ids
//! [`Changes::take_dirty`] returns, their documents retained (re-marking an id with
//! [`Changes::mark_dirty`] if its publish failed). Documents are read when published, so a
//! burst of changes to one instance costs one publish of its latest document.
//!
//! Deregistrations wake the revocation task the same way ([`Changes::poke_revocations`]).

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::store::{Store, StoreError, Txn};

#[derive(Default)]
pub struct Changes {
    dirty: Mutex<BTreeSet<String>>,
    documents: Notify,
    services: Notify,
    revocations: Notify,
}

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
        Ok(value)
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
