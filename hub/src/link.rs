//! The hub's MQTT link: one privileged client of the broker (CN `skerry-hub`, a certificate
//! the hub issues itself from its CA). It publishes each instance's desired-state document,
//! retained, whenever a change marks it dirty, and feeds every device message and presence
//! change into the device side ([`device::ingest_batch`]).
//!
//! - Delivery: the session is persistent (clean session off) and acks are manual: a device
//!   message is PUBACKed only after its effects are committed, so a hub that stops between
//!   the two gets it again from the broker. The device side dedupes by sequence number.
//! - The event loop only reads: a worker task applies messages and acks them. The broker sends
//!   at most its `max_inflight_messages` unacknowledged messages, which `broker-config` keeps
//!   below [`WORK_QUEUE`], so handing a message to the worker never waits on the worker.
//!   The worker takes whatever has arrived, up to [`INGEST_BATCH`], applies it in one
//!   transaction ([`device::ingest_batch`]) and acks each message of it after the commit: a
//!   device side answering at once costs a commit per batch, not per message.
//! - Documents go out in batches of [`DOCUMENT_BATCH`], built from one store snapshot off
//!   the async runtime, then queued for the event loop without waiting for the broker, at
//!   most [`DOCUMENTS_IN_FLIGHT`] not yet acked by it, so the worker's acks always find room
//!   in the event loop's request queue.
//! - Reconnects back off exponentially with jitter up to [`MAX_BACKOFF`].

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use skerry_proto::link::{self, Channel, Envelope, Presence};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ca::{Ca, HUB_IDENTITY};
use crate::config::BrokerUrl;
use crate::device::{self, DeviceMessage, Ingested};
use crate::health::Ingest;
use crate::state::Hub;

const KEEP_ALIVE: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Requests queued for the event loop; publishers wait beyond it.
const REQUESTS: usize = 1024;
/// Documents queued or in flight to the broker at most: the rest of [`REQUESTS`] is kept
/// for acks. The worker's acks share the queue with the publisher's documents; were it full
/// of documents, an ack would wait on the event loop while the event loop waits on the
/// worker to take the next device message, and the link would stop (it did at 10,000
/// devices).
const DOCUMENTS_IN_FLIGHT: usize = REQUESTS / 2;
const _: () = assert!(DOCUMENTS_IN_FLIGHT + INGEST_BATCH < REQUESTS);
/// The MQTT client's own limit of QoS 1 publishes awaiting the broker's PubAck: above
/// [`DOCUMENTS_IN_FLIGHT`], so that the documents never fill it. While it is full the client
/// takes no request at all, the worker's acks included (its default of 100 held the acks
/// behind documents during a fleet-wide change).
pub const CLIENT_INFLIGHT: u16 = DOCUMENTS_IN_FLIGHT as u16 + 1;
const _: () = assert!(DOCUMENTS_IN_FLIGHT < u16::MAX as usize);
/// Device messages between the event loop and the worker that applies them.
pub const WORK_QUEUE: usize = 1024;
/// What `broker-config` sets as the broker's `max_inflight_messages`: below [`WORK_QUEUE`].
pub const BROKER_INFLIGHT: usize = 200;
const _: () = assert!(BROKER_INFLIGHT < WORK_QUEUE);
/// Device messages applied in one transaction at most: the broker's whole window.
const INGEST_BATCH: usize = BROKER_INFLIGHT;
/// Desired-state documents built from one store snapshot.
const DOCUMENT_BATCH: usize = 256;
/// Desired-state documents carry whole task definitions.
const MAX_PACKET: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot issue the hub's broker certificate: {0}")]
    Certificate(String),
    #[error("TLS setup for the broker link: {0}")]
    Tls(#[from] rustls::Error),
}

/// The TLS client setup for the broker: the hub's CA as the only root, and a client
/// certificate for [`HUB_IDENTITY`] issued now (the hub holds the CA key, so it needs no file).
pub fn client_tls(ca: &Ca) -> Result<rustls::ClientConfig, LinkError> {
    let (cert_pem, key_pem) = ca
        .issue_client_cert(HUB_IDENTITY)
        .map_err(|e| LinkError::Certificate(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = CertificateDer::from(ca.cert_der().to_vec());
    roots.add(ca_der.clone())?;
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| LinkError::Certificate(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| LinkError::Certificate(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert, ca_der], key)?)
}

pub struct Link {
    client: AsyncClient,
    events: EventLoop,
}

impl Link {
    pub fn new(broker: &BrokerUrl, ca: &Ca) -> Result<Link, LinkError> {
        let mut opts = MqttOptions::new(HUB_IDENTITY, broker.host.clone(), broker.port);
        opts.set_keep_alive(KEEP_ALIVE)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(CLIENT_INFLIGHT)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(client_tls(ca)?)),
            ));
        let (client, events) = AsyncClient::new(opts, REQUESTS);
        Ok(Link { client, events })
    }

    /// Runs until `shutdown`: the event loop (device messages in) and the publisher
    /// (documents out).
    pub async fn run(self, hub: Arc<Hub>, shutdown: CancellationToken) {
        let window = Arc::new(Semaphore::new(DOCUMENTS_IN_FLIGHT));
        let publisher = tokio::spawn(publish_documents(
            self.client.clone(),
            hub.clone(),
            window.clone(),
            shutdown.clone(),
        ));
        receive(self.client.clone(), self.events, hub, window, shutdown).await;
        let _ = self.client.try_disconnect();
        let _ = publisher.await;
    }
}

/// The next wait after `current`: doubled, capped, with ±25 % jitter so a fleet that lost
/// the broker together does not come back in step.
pub fn next_backoff(current: Duration) -> Duration {
    let doubled = (current * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
    let jitter = rand::thread_rng().gen_range(0.75..=1.25);
    doubled.mul_f64(jitter)
}

/// Gives the publisher back `n` document slots, never holding more than
/// [`DOCUMENTS_IN_FLIGHT`].
fn release(window: &Semaphore, n: usize) {
    let room = DOCUMENTS_IN_FLIGHT.saturating_sub(window.available_permits());
    window.add_permits(n.min(room));
}

async fn receive(
    client: AsyncClient,
    mut events: EventLoop,
    hub: Arc<Hub>,
    window: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Publish>(WORK_QUEUE);
    let acker = client.clone();
    let stop = shutdown.clone();
    let health_of = hub.clone();
    let worker = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(INGEST_BATCH);
        while rx.recv_many(&mut batch, INGEST_BATCH).await > 0 {
            handle(&hub, &batch).await;
            for p in batch.drain(..) {
                // Once the event loop has stopped an ack could wait for ever; an unacked
                // message comes back on the next connection and is deduplicated.
                tokio::select! {
                    r = acker.ack(&p) => if let Err(e) = r {
                        warn!(error = %e, "cannot acknowledge a device message");
                    },
                    _ = stop.cancelled() => return,
                }
            }
        }
    });
    let mut backoff = Duration::ZERO;
    loop {
        let event = tokio::select! {
            e = events.poll() => e,
            _ = shutdown.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::ZERO;
                health_of.health.broker_link(true);
                // What was in flight is either resent (and acked) or gone with the session.
                release(&window, DOCUMENTS_IN_FLIGHT);
                info!(session = ack.session_present, "broker link up");
                for filter in [link::UP_FILTER, link::PRESENCE_FILTER] {
                    // try_: awaiting here could wait on this very loop to drain requests.
                    if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                        warn!(%filter, error = %e, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    break;
                }
            }
            // Only the hub publishes with QoS 1: each PubAck is a document the broker has.
            Ok(Event::Incoming(Packet::PubAck(_))) => release(&window, 1),
            Ok(_) => {}
            Err(e) => {
                health_of.health.broker_link(false);
                backoff = next_backoff(backoff);
                warn!(error = %e, retry_in = ?backoff, "broker link down");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    drop(tx);
    let _ = worker.await;
}

/// A device message as its topic and payload say, or why it is not one the hub uses
/// (`Ok(None)`: nothing to apply, e.g. a cleared retained presence).
fn parse(p: &Publish) -> Result<Option<(String, DeviceMessage)>, String> {
    let Some((instance, channel)) = link::parse_topic(&p.topic) else {
        debug!(topic = %p.topic, "ignoring a message outside the protocol");
        return Ok(None);
    };
    let message = match channel {
        Channel::Up => DeviceMessage::Up(Box::new(
            serde_json::from_slice::<Envelope>(&p.payload)
                .map_err(|e| format!("not an envelope: {e}"))?,
        )),
        Channel::Presence if p.payload.is_empty() => return Ok(None),
        Channel::Presence => DeviceMessage::Presence {
            online: serde_json::from_slice::<Presence>(&p.payload)
                .map_err(|e| format!("not a presence: {e}"))?
                .online,
        },
        // The hub's own documents, if the broker ever echoed them.
        Channel::Desired => return Ok(None),
    };
    Ok(Some((instance.to_string(), message)))
}

/// Applies a batch of device messages, in one transaction when it can. Whatever happens
/// they are then acknowledged: a message the hub cannot use would otherwise come back for
/// ever. What is refused is logged with its topic.
async fn handle(hub: &Arc<Hub>, batch: &[Publish]) {
    let batch: Vec<Publish> = batch.to_vec();
    let hub = hub.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut messages = Vec::with_capacity(batch.len());
        let mut topics = Vec::with_capacity(batch.len());
        for p in &batch {
            match parse(p) {
                Ok(Some(m)) => {
                    messages.push(m);
                    topics.push(p.topic.as_str());
                }
                Ok(None) => {}
                Err(e) => {
                    hub.health.ingested(Ingest::Refused, 1);
                    warn!(topic = %p.topic, error = %e, "device message refused");
                }
            }
        }
        let outcomes = match device::ingest_batch(&hub, &messages, crate::clock::now()) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // The batch's transaction failed as a whole: each message alone, so one
                // that can be applied is.
                warn!(error = %e, messages = messages.len(), "device message batch failed; applying one at a time");
                messages
                    .iter()
                    .map(|m| match device::ingest_batch(&hub, std::slice::from_ref(m), crate::clock::now()) {
                        Ok(mut one) => one.pop().unwrap_or(Ok(Ingested::Duplicate)),
                        Err(e) => Err(e.into()),
                    })
                    .collect()
            }
        };
        for ((topic, (instance, message)), outcome) in topics.iter().zip(&messages).zip(outcomes) {
            match (message, outcome) {
                (DeviceMessage::Up(envelope), Ok(Ingested::Duplicate)) => {
                    hub.health.ingested(Ingest::Duplicate, 1);
                    debug!(%instance, seq = envelope.seq, "duplicate message");
                }
                (_, Ok(_)) => hub.health.ingested(Ingest::Applied, 1),
                (_, Err(e)) => {
                    hub.health.ingested(Ingest::Refused, 1);
                    warn!(%topic, error = %e, "device message refused")
                }
            }
        }
    })
    .await;
    if let Err(e) = done {
        warn!(error = %e, "device message handler failed");
    }
}

async fn publish_documents(
    client: AsyncClient,
    hub: Arc<Hub>,
    window: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    loop {
        let dirty = hub.changes.take_dirty();
        if dirty.is_empty() {
            tokio::select! {
                _ = hub.changes.documents_changed() => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        for ids in dirty.chunks(DOCUMENT_BATCH) {
            let (hub2, ids2) = (hub.clone(), ids.to_vec());
            let built = tokio::task::spawn_blocking(move || {
                device::desired_documents(&hub2, &ids2).map(|docs| {
                    docs.into_iter()
                        .map(|d| {
                            d.map(|d| {
                                d.map(|d| {
                                    let payload = serde_json::to_vec(&d)
                                        .expect("a desired-state document serializes");
                                    (d.generation, payload)
                                })
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .await;
            let built = match built {
                Ok(Ok(built)) => built,
                Ok(Err(e)) => {
                    warn!(instances = ids.len(), error = %e, "cannot read the desired-state documents");
                    continue;
                }
                Err(e) => {
                    warn!(instances = ids.len(), error = %e, "desired-state document builder failed");
                    continue;
                }
            };
            for (instance, doc) in ids.iter().zip(built) {
                let (generation, payload) = match doc {
                    Ok(Some(doc)) => doc,
                    Ok(None) => continue,
                    Err(e) => {
                        warn!(%instance, error = %e, "cannot build the desired-state document");
                        continue;
                    }
                };
                let topic = link::topic(instance, Channel::Desired);
                debug!(%instance, generation, "publishing desired state");
                // A slot comes back with the broker's PubAck (or the next connection).
                tokio::select! {
                    permit = window.acquire() => match permit {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    },
                    _ = shutdown.cancelled() => return,
                }
                tokio::select! {
                    r = client.publish(topic, QoS::AtLeastOnce, true, payload) => {
                        if let Err(e) = r {
                            warn!(%instance, error = %e, "cannot queue the desired-state document");
                            release(&window, 1);
                            hub.changes.mark_dirty([instance.clone()]);
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut b = Duration::ZERO;
        for _ in 0..20 {
            let next = next_backoff(b);
            assert!(next >= MIN_BACKOFF.mul_f64(0.75), "{next:?}");
            assert!(next <= MAX_BACKOFF.mul_f64(1.25), "{next:?}");
            b = next;
        }
        assert!(b >= MAX_BACKOFF.mul_f64(0.75));
    }
}
