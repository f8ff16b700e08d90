//! The hub's MQTT link: one privileged client of the broker (CN `skerry-hub`, a certificate
//! the hub issues itself from its CA). It publishes each instance's desired-state document,
//! retained, whenever the fleet marks it dirty, and feeds every device message into
//! [`Fleet::ingest`] and every presence change into [`Fleet::set_connected`].
//!
//! - Delivery: the session is persistent (clean session off) and acks are manual: a device
//!   message is PUBACKed only after its effects are committed, so a hub that stops between
//!   the two gets it again from the broker. The fleet dedupes by sequence number.
//! - The event loop only reads: a worker task applies messages and acks them. The broker sends
//!   at most its `max_inflight_messages` unacknowledged messages, which `broker-config` keeps
//!   below [`WORK_QUEUE`], so handing a message to the worker never waits on the worker.
//! - Reconnects back off exponentially with jitter up to [`MAX_BACKOFF`].

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use skerry_proto::link::{self, Channel, Envelope, Presence};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::Api;
use crate::ca::{Ca, HUB_IDENTITY};
use crate::config::BrokerUrl;
use crate::fleet::{Fleet, FleetError, Ingested};

const KEEP_ALIVE: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Requests queued for the event loop; publishers wait beyond it.
const REQUESTS: usize = 1024;
/// Device messages between the event loop and the worker that applies them.
pub const WORK_QUEUE: usize = 1024;
/// What `broker-config` sets as the broker's `max_inflight_messages`: below [`WORK_QUEUE`].
pub const BROKER_INFLIGHT: usize = 200;
const _: () = assert!(BROKER_INFLIGHT < WORK_QUEUE);
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
fn tls(ca: &Ca) -> Result<rustls::ClientConfig, LinkError> {
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
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls(ca)?)),
            ));
        let (client, events) = AsyncClient::new(opts, REQUESTS);
        Ok(Link { client, events })
    }

    /// Runs until `shutdown`: the event loop (device messages in) and the publisher
    /// (documents out).
    pub async fn run(self, api: Arc<Api>, fleet: Arc<Fleet>, shutdown: CancellationToken) {
        let publisher = tokio::spawn(publish_documents(
            self.client.clone(),
            api.clone(),
            fleet.clone(),
            shutdown.clone(),
        ));
        receive(self.client.clone(), self.events, api, fleet, shutdown).await;
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

async fn receive(
    client: AsyncClient,
    mut events: EventLoop,
    api: Arc<Api>,
    fleet: Arc<Fleet>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Publish>(WORK_QUEUE);
    let acker = client.clone();
    let stop = shutdown.clone();
    let worker = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            handle(&api, &fleet, &p).await;
            // Once the event loop has stopped an ack could wait for ever; an unacked
            // message comes back on the next connection and is deduplicated.
            tokio::select! {
                r = acker.ack(&p) => if let Err(e) = r {
                    warn!(error = %e, "cannot acknowledge a device message");
                },
                _ = stop.cancelled() => break,
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
            Ok(_) => {}
            Err(e) => {
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

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Applies one device message. Whatever happens it is then acknowledged: a message the hub
/// cannot use would otherwise come back for ever. What is refused is logged with its
/// instance.
async fn handle(api: &Arc<Api>, fleet: &Arc<Fleet>, p: &Publish) {
    let Some((instance, channel)) = link::parse_topic(&p.topic) else {
        debug!(topic = %p.topic, "ignoring a message outside the protocol");
        return;
    };
    let instance = instance.to_string();
    let (api, fleet) = (api.clone(), fleet.clone());
    let payload = p.payload.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        match channel {
            Channel::Up => {
                let envelope: Envelope = serde_json::from_slice(&payload)
                    .map_err(|e| format!("not an envelope: {e}"))?;
                match fleet.ingest(&api, &instance, &envelope, now()) {
                    Ok(Ingested::Duplicate) => {
                        debug!(%instance, seq = envelope.seq, "duplicate message");
                        Ok(())
                    }
                    Ok(Ingested::Applied { .. }) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Channel::Presence => {
                if payload.is_empty() {
                    return Ok(()); // a cleared retained presence
                }
                let presence: Presence =
                    serde_json::from_slice(&payload).map_err(|e| format!("not a presence: {e}"))?;
                match fleet.set_connected(&api, &instance, presence.online, now()) {
                    Ok(()) | Err(FleetError::UnknownInstance(_)) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            // The hub's own documents, if the broker ever echoed them.
            Channel::Desired => Ok(()),
        }
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(topic = %p.topic, error = %e, "device message refused"),
        Err(e) => warn!(topic = %p.topic, error = %e, "device message handler failed"),
    }
}

async fn publish_documents(
    client: AsyncClient,
    api: Arc<Api>,
    fleet: Arc<Fleet>,
    shutdown: CancellationToken,
) {
    loop {
        let dirty = fleet.take_dirty();
        if dirty.is_empty() {
            tokio::select! {
                _ = fleet.documents_changed() => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        for instance in dirty {
            let (api2, fleet2, id) = (api.clone(), fleet.clone(), instance.clone());
            let doc =
                tokio::task::spawn_blocking(move || fleet2.desired_document(&api2, &id)).await;
            let doc = match doc {
                Ok(Ok(Some(doc))) => doc,
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => {
                    warn!(%instance, error = %e, "cannot build the desired-state document");
                    continue;
                }
                Err(e) => {
                    warn!(%instance, error = %e, "desired-state document builder failed");
                    continue;
                }
            };
            let payload = serde_json::to_vec(&doc).expect("a desired-state document serializes");
            let topic = link::topic(&instance, Channel::Desired);
            debug!(%instance, generation = doc.generation, "publishing desired state");
            tokio::select! {
                r = client.publish(topic, QoS::AtLeastOnce, true, payload) => {
                    if let Err(e) = r {
                        warn!(%instance, error = %e, "cannot queue the desired-state document");
                        fleet.mark_dirty([instance]);
                    }
                }
                _ = shutdown.cancelled() => return,
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
