//! The device side of the hub, without the transport: the desired-state document each
//! instance is sent (documents out, `documents`) and the messages devices send back
//! (ingest in, `ingest`). The link (`crate::link`) carries both over MQTT; every change goes
//! through [`Hub::write`](crate::state::Hub::write), so a change to a document marks its
//! instance for the publisher.
//!
//! Device messages are deduplicated by sequence number: each instance's highest applied seq
//! is stored with the changes it brought, so a replayed message changes nothing, even after
//! a hub restart. The link hands them over in batches ([`ingest_batch`]): one transaction
//! per batch, one savepoint per message. Seqs a message skips that it does not account for
//! (folded or dropped) are logged as a gap, in the log and in the instance's events.
//!
//! Every message is checked against bounds first (`bounds`): one out of them is refused
//! whole, and recorded as an event of its instance.
//!
//! # Layout
//! - `bounds`: the length, charset and count limits on what a device says.
//! - `documents`: an instance's desired-state document, from the store's rows.
//! - `ingest`: applying one device message (task reports, events, presence).

mod bounds;
mod documents;
mod ingest;

use std::ops::RangeInclusive;

use skerry_proto::desired::DesiredState;
use skerry_proto::link::{Envelope, Presence};

use crate::state::Hub;
use crate::store::StoreError;

use documents::{document, Definitions};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no container instance {0}; a device must register before its messages count")]
    UnknownInstance(String),
    #[error("desired-state document of {instance}: {message}")]
    BadDocument { instance: String, message: String },
}

/// What [`ingest`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Its seq was applied before: nothing changed.
    Duplicate,
    /// Applied. `missing` are seqs before it that never arrived and that it does not
    /// account for.
    Applied { missing: Vec<RangeInclusive<u64>> },
    /// Dropped unread: the instance is not ACTIVE (it was deregistered).
    NotActive,
}

/// The instance's desired-state document: its generation, every task it is asked to
/// run, and every task asked to stop that it has not reported STOPPED, each with its
/// full task definition. `None` for no such instance.
pub fn desired_document(hub: &Hub, instance_id: &str) -> Result<Option<DesiredState>, DeviceError> {
    let Some(parts) = hub.store.document_rows(instance_id)? else {
        return Ok(None);
    };
    document(&hub.arns, instance_id, parts, &mut Definitions::new())
}

/// [`desired_document`] of each instance, in the order asked, read in one store
/// snapshot; each task definition revision is parsed once for all of them (a DAEMON
/// service puts the same one in every document).
pub fn desired_documents(
    hub: &Hub,
    instance_ids: &[String],
) -> Result<Vec<Result<Option<DesiredState>, DeviceError>>, StoreError> {
    let parts = hub.store.document_rows_many(instance_ids)?;
    let mut definitions = Definitions::new();
    Ok(instance_ids
        .iter()
        .zip(parts)
        .map(|(id, parts)| match parts {
            Some(parts) => document(&hub.arns, id, parts, &mut definitions),
            None => Ok(None),
        })
        .collect())
}

/// Records that the instance's desired-state document of `generation` is `bytes` long,
/// more than the link carries, so it was not sent: the device keeps its previous document
/// until the operator stops tasks or deregisters task definitions to make it smaller.
pub fn document_too_large(
    hub: &Hub,
    instance_id: &str,
    generation: u64,
    bytes: usize,
    now: f64,
) -> Result<(), DeviceError> {
    hub.write(|tx| {
        tx.add_device_event(&crate::store::DeviceEvent {
            instance_id: instance_id.to_string(),
            seq: None,
            time: now,
            task_arn: None,
            container: None,
            kind: "documentTooLarge".into(),
            message: format!(
                "desired state generation {generation} is {bytes} bytes, more than the link's \
                 limit of {} bytes; not sent: the device keeps its previous one (stop tasks \
                 on this instance to make it smaller)",
                skerry_proto::link::MAX_PAYLOAD
            ),
        })
    })?;
    Ok(())
}

/// Records whether the instance's agent is connected, as its presence says.
pub fn set_connected(
    hub: &Hub,
    instance_id: &str,
    connected: bool,
    now: f64,
) -> Result<(), DeviceError> {
    hub.write(|tx| ingest::set_connected(tx, instance_id, connected, now))
        .map(|_| ())
}

/// Applies one message from the device `instance_id` (the id its certificate names),
/// all of it in one transaction. `now` is the hub's clock.
pub fn ingest(
    hub: &Hub,
    instance_id: &str,
    envelope: &Envelope,
    now: f64,
) -> Result<Ingested, DeviceError> {
    let mut poke = false;
    let out = hub.write(|tx| ingest::ingest(tx, hub, instance_id, envelope, now, &mut poke))?;
    if poke {
        hub.changes.poke_services();
    }
    Ok(out)
}

/// Applies device messages in the order given, all in one transaction, each in a
/// savepoint of its own: one that fails leaves the others applied. Each message's
/// outcome, in order; `Err` only when the transaction itself failed, and then nothing
/// of the batch is kept. Presence from an instance the hub does not know is ignored.
pub fn ingest_batch(
    hub: &Hub,
    messages: &[(String, DeviceMessage)],
    now: f64,
) -> Result<Vec<Result<Ingested, DeviceError>>, StoreError> {
    let mut poke = false;
    let out = hub.write(|tx| -> Result<_, StoreError> {
        Ok(messages
            .iter()
            .map(|(instance_id, message)| {
                tx.attempt(|tx| match message {
                    DeviceMessage::Up(envelope) => {
                        ingest::ingest(tx, hub, instance_id, envelope, now, &mut poke)
                    }
                    DeviceMessage::Presence { online, os } => {
                        match ingest::set_connected(tx, instance_id, *online, now) {
                            Ok(applied @ Ingested::Applied { .. }) => {
                                ingest::set_os(tx, instance_id, os).map(|()| applied)
                            }
                            Err(DeviceError::UnknownInstance(_)) => Ok(Ingested::Applied {
                                missing: Vec::new(),
                            }),
                            other => other,
                        }
                    }
                })
            })
            .collect())
    })?;
    if poke {
        hub.changes.poke_services();
    }
    Ok(out)
}

/// A device message as [`ingest_batch`] takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceMessage {
    /// An envelope from the device's outbox (its `up` topic).
    Up(Box<Envelope>),
    /// Its presence, or the last will the broker sent for it; an online presence says
    /// which OS the device booted.
    Presence { online: bool, os: OsReport },
}

/// The OS a device says it booted, shown as its instance's `skerry.os.version` and
/// `skerry.os.slot` attributes. Input from a device: what is not a version (see
/// [`skerry_proto::link::valid_os_version`]) or a slot (`A`, `B`) is left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsReport {
    pub version: Option<String>,
    pub slot: Option<String>,
}

impl OsReport {
    pub fn from_presence(p: &Presence) -> OsReport {
        OsReport {
            version: p
                .os_version
                .clone()
                .filter(|v| skerry_proto::link::valid_os_version(v)),
            slot: p.os_slot.clone().filter(|s| s == "A" || s == "B"),
        }
    }
}
