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
use crate::device::{self, DeviceMessage, Ingested, OsReport};
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
/// Above the broker's own limit ([`link::MAX_PACKET`]): the broker refuses what is too large
/// before it reaches the hub's session, where this client refusing it would drop the link
/// and meet the same message again on every reconnect.
const MAX_PACKET: usize = 4 << 20;
const _: () = assert!(MAX_PACKET > link::MAX_PACKET);

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
    client_tls_with(ca, &cert_pem, &key_pem)
}

/// The TLS client setup for the broker with the CA as the only root and this identity.
pub fn client_tls_with(
    ca: &Ca,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, LinkError> {
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
                if p.retain {
                    clear_retained(&client, &p.topic);
                }
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

/// Devices may not keep retained messages on their `up` topic (the broker's ACL cannot
/// forbid the retain flag): one would be stored by the broker and sent to the hub again on
/// every reconnect. The broker marks it retained when the hub subscribes, and the hub
/// clears it then, with an empty retained message (QoS 0: its documents alone wait for
/// PubAcks). A device's presence is retained by design and stays.
fn clear_retained(client: &AsyncClient, topic: &str) {
    if !matches!(link::parse_topic(topic), Some((_, Channel::Up))) {
        return;
    }
    warn!(%topic, "clearing a retained device message");
    if let Err(e) = client.try_publish(topic, QoS::AtMostOnce, true, Vec::new()) {
        warn!(%topic, error = %e, "cannot clear a retained device message");
    }
}

/// A device message as its topic and payload say, or why it is not one the hub uses
/// (`Ok(None)`: nothing to apply, e.g. a cleared retained presence).
fn parse(p: &Publish) -> Result<Option<(String, DeviceMessage)>, String> {
    let Some((instance, channel)) = link::parse_topic(&p.topic) else {
        debug!(topic = %p.topic, "ignoring a message outside the protocol");
        return Ok(None);
    };
    let message = match channel {
        // The hub clearing a retained message (`clear_retained`).
        Channel::Up if p.payload.is_empty() => return Ok(None),
        Channel::Up => DeviceMessage::Up(Box::new(
            serde_json::from_slice::<Envelope>(&p.payload)
                .map_err(|e| format!("not an envelope: {e}"))?,
        )),
        Channel::Presence if p.payload.is_empty() => return Ok(None),
        Channel::Presence => {
            let presence = serde_json::from_slice::<Presence>(&p.payload)
                .map_err(|e| format!("not a presence: {e}"))?;
            DeviceMessage::Presence {
                online: presence.online,
                os: OsReport::from_presence(&presence),
            }
        }
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
            let built = tokio::task::spawn_blocking(move || payloads(&hub2, &ids2)).await;
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
                let Some((generation, payload)) = doc else {
                    continue;
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

/// A desired-state document ready to publish: its generation and its JSON.
type Payload = (u64, Vec<u8>);

/// The desired-state documents of `ids` as payloads, in order: `None` for an instance that
/// is gone, whose document cannot be built, or whose document is larger than the link
/// carries. The last is recorded as an event of the instance (`documentTooLarge`) and the
/// device keeps its previous document: publishing it would only be dropped by the broker.
fn payloads(hub: &Hub, ids: &[String]) -> Result<Vec<Option<Payload>>, crate::store::StoreError> {
    let docs = device::desired_documents(hub, ids)?;
    let mut out = Vec::with_capacity(docs.len());
    for (instance, doc) in ids.iter().zip(docs) {
        let doc = match doc {
            Ok(Some(doc)) => doc,
            Ok(None) => {
                out.push(None);
                continue;
            }
            Err(e) => {
                warn!(%instance, error = %e, "cannot build the desired-state document");
                out.push(None);
                continue;
            }
        };
        let payload = serde_json::to_vec(&doc).expect("a desired-state document serializes");
        if payload.len() > link::MAX_PAYLOAD {
            warn!(%instance, generation = doc.generation, bytes = payload.len(), limit = link::MAX_PAYLOAD, "desired-state document too large to publish");
            if let Err(e) = device::document_too_large(
                hub,
                instance,
                doc.generation,
                payload.len(),
                crate::clock::now(),
            ) {
                warn!(%instance, error = %e, "cannot record the oversized document");
            }
            out.push(None);
            continue;
        }
        out.push(Some((doc.generation, payload)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_too_large_for_the_link_is_recorded_not_built() {
        use crate::scheduler::tests::{add_instance, hub, register, run};
        let hub = hub();
        let big = add_instance(&hub, 1, 4096, 4096);
        // Three tasks of a definition carrying a 1 MiB variable: 3 MiB of document.
        register(
            &hub,
            serde_json::json!({"family": "big", "containerDefinitions": [{
                "name": "c", "image": "busybox", "memory": 8, "cpu": 1,
                "environment": [{"name": "BLOB", "value": "b".repeat(1 << 20)}]}]}),
        );
        assert_eq!(run(&hub, "big", 3).tasks.len(), 3);
        let small = add_instance(&hub, 2, 4096, 4096);
        register(&hub, crate::scheduler::tests::web(8));
        run(&hub, "web", 1);
        let built = payloads(&hub, &[big.clone(), small.clone()]).expect("payloads");
        assert!(built[0].is_none(), "the 3 MiB document is not built");
        let (_, payload) = built[1].as_ref().expect("the other instance's document");
        assert!(payload.len() <= link::MAX_PAYLOAD);
        let events = hub.store.device_events(&big, 10).expect("events");
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, "documentTooLarge");
        assert!(events[0].message.contains(&link::MAX_PAYLOAD.to_string()));
        assert!(hub.store.device_events(&small, 10).expect("e").is_empty());
    }

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

    #[test]
    fn presence_carries_the_os_and_what_is_not_valid_is_left_out() {
        let topic = link::topic("mi-0123456789abcdef0", Channel::Presence);
        let parsed = |payload: &str| {
            let p = Publish::new(&topic, QoS::AtLeastOnce, payload.as_bytes().to_vec());
            parse(&p).expect("parse").expect("a message").1
        };
        assert_eq!(
            parsed(r#"{"online":true,"osVersion":"2.1+g3e8","osSlot":"B"}"#),
            DeviceMessage::Presence {
                online: true,
                os: OsReport {
                    version: Some("2.1+g3e8".into()),
                    slot: Some("B".into())
                }
            }
        );
        let long = "9".repeat(skerry_proto::link::OS_VERSION_MAX + 1);
        for bad in [
            format!(r#"{{"online":true,"osVersion":"{long}","osSlot":"C"}}"#),
            r#"{"online":true,"osVersion":"1 <script>","osSlot":"a"}"#.to_string(),
        ] {
            assert_eq!(
                parsed(&bad),
                DeviceMessage::Presence {
                    online: true,
                    os: OsReport::default()
                },
                "{bad}"
            );
        }
        // The last will says nothing of the OS.
        assert_eq!(
            parsed(r#"{"online":false}"#),
            DeviceMessage::Presence {
                online: false,
                os: OsReport::default()
            }
        );
    }
}
