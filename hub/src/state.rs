//! What every part of the hub works over: the store, the ARNs it names things with, and the
//! changes the publisher and the service loop wait on, and the hub's health counters. One [`Hub`] is shared (behind an
//! `Arc`) by the API, the registration listener, the link and the service loop.

use crate::arn::Arns;
use crate::changes::Changes;
use crate::health::Health;
use crate::quota::Quotas;
use crate::store::{Store, StoreError, Txn};

pub struct Hub {
    pub store: Store,
    pub arns: Arns,
    pub changes: Changes,
    /// Each device's message quota (`device` takes from it).
    pub quotas: Quotas,
    /// The hub's own counters `/metrics` reports.
    pub health: Health,
}

impl Hub {
    pub fn new(store: Store, arns: Arns) -> Hub {
        Hub {
            store,
            arns,
            changes: Changes::new(),
            quotas: Quotas::new(),
            health: Health::default(),
        }
    }

    /// [`Changes::write`] on this hub's store.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.changes.write(&self.store, f)
    }
}
