//! The broker connection (rumqttc over rustls with the device's certificate; the hub's CA is
//! the only root). One rumqttc client per connection attempt, so nothing rumqttc kept in
//! memory from a previous connection is replayed: after every connect the sender starts
//! again from the outbox's oldest unacked record (the hub dedupes by seq).
//!
//! On connect: `Presence{online: true}` (retained; the last will says `online: false`),
//! the `desired` subscription, and once the backlog present at connect time is acked, a
//! `FullState`. Connection errors back off exponentially with jitter (capped at a minute)
//! and the backoff resets after a good connect.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use skerry_proto::link::{self, Channel, Entry, Envelope, Message, Presence};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::window::Window;
use super::{DeviceState, Outbound};
use crate::backoff::Backoff;
use crate::identity::{self, Identity};
use crate::os::Os;
use crate::outbox::{Class, Record};

pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Outbox records published and not yet acknowledged by the broker.
pub const WINDOW: usize = 32;
/// Free room in the window that makes the sender read the outbox again.
const REFILL: usize = WINDOW / 4;
/// rumqttc's request queue: the window, presence and the subscription fit with room.
const REQUESTS: usize = WINDOW * 2 + 8;
/// Desired-state documents and outbox records can be large (a FullState of many tasks).
/// Above the broker's own limit ([`link::MAX_PACKET`]), so the broker refuses what is too
/// large before this client would.
const MAX_PACKET: usize = 8 << 20;
const _: () = assert!(MAX_PACKET > link::MAX_PACKET);
/// How long a clean shutdown waits to say it is offline.
const GOODBYE: Duration = Duration::from_secs(2);
/// Events the poller may get ahead of the session by.
const EVENTS: usize = 64;

/// Keeps the broker connection until `stop`.
pub async fn run(
    id: Identity,
    os: &Os,
    out: Outbound,
    state: &dyn DeviceState,
    desired: watch::Sender<Option<Bytes>>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
    loop {
        let mut session = match Session::new(&id, os, &out, state, &desired) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(instance = %id.meta.instance_id, "cannot set up the broker connection: {e}");
                stop.cancelled().await;
                return;
            }
        };
        let connected = session.run(&stop, &mut backoff).await;
        if stop.is_cancelled() {
            return;
        }
        let delay = backoff.next_delay();
        info!(
            broker = %id.meta.broker_url,
            retry_in_ms = delay.as_millis() as u64,
            was_connected = connected,
            "reconnecting to the broker"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

fn tls_config(id: &Identity) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in identity::pem_certs(&id.ca_pem).map_err(|e| format!("ca.pem: {e}"))? {
        roots
            .add(ca)
            .map_err(|e| format!("ca.pem is not a usable CA: {e}"))?;
    }
    let chain: Vec<CertificateDer<'static>> =
        identity::pem_certs(&id.cert_pem).map_err(|e| format!("cert.pem: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
        .map_err(|e| format!("key.pem: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the client certificate does not fit the key: {e}"))
}

/// The presence payload; an online one says which OS the device booted.
fn presence(online: bool, os: Option<&Os>) -> Vec<u8> {
    serde_json::to_vec(&Presence {
        online,
        agent_version: Some(env!("CARGO_PKG_VERSION").into()),
        os_version: os.and_then(|o| o.version.clone()),
        os_slot: os.and_then(|o| o.slot.map(|s| s.to_string())),
    })
    .expect("presence is plain data, which JSON always encodes")
}

/// The envelope published for an outbox record.
pub fn envelope(rec: &Record) -> Envelope {
    let ranges = |v: &[std::ops::RangeInclusive<u64>]| -> Vec<(u64, u64)> {
        v.iter().map(|r| (*r.start(), *r.end())).collect()
    };
    let entry = if rec.is_marker() {
        Entry {
            time: crate::reconcile::now_secs(),
            message: Message::Dropped {
                what: match rec.class {
                    Class::Log => "log lines".into(),
                    _ => "metrics".into(),
                },
                count: rec.dropped_count(),
            },
        }
    } else {
        match serde_json::from_slice::<Entry>(&rec.payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(seq = rec.seq, "unreadable outbox record: {e}");
                Entry {
                    time: crate::reconcile::now_secs(),
                    message: Message::Dropped {
                        what: format!("unreadable record: {e}"),
                        count: 1,
                    },
                }
            }
        }
    };
    Envelope {
        seq: rec.seq,
        folded: ranges(&rec.folded),
        dropped: ranges(&rec.dropped),
        entry,
    }
}

struct Session<'a> {
    id: &'a Identity,
    os: &'a Os,
    out: &'a Outbound,
    state: &'a dyn DeviceState,
    desired: &'a watch::Sender<Option<Bytes>>,
    client: AsyncClient,
    /// rumqttc's event loop runs in a task of its own and is never cancelled mid-poll (its
    /// poll is not documented as cancel-safe); its events come through here.
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    poller: JoinHandle<()>,
    up: String,
    presence: String,
    desired_topic: String,
    connected: bool,
    window: Window,
    /// The newest seq published on this connection.
    last_published: u64,
    /// What each publish request was, in request order, until rumqttc names its packet id.
    issued: VecDeque<Option<u64>>,
    /// Packet id -> outbox seq (None for presence) until the broker acks.
    pkids: HashMap<u16, Option<u64>>,
    /// The outbox's last seq when the connection came up; FullState goes once it is acked.
    backlog_until: Option<u64>,
    /// Acknowledged by the broker, not yet acked in the outbox.
    ack_due: Option<u64>,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl<'a> Session<'a> {
    fn new(
        id: &'a Identity,
        os: &'a Os,
        out: &'a Outbound,
        state: &'a dyn DeviceState,
        desired: &'a watch::Sender<Option<Bytes>>,
    ) -> Result<Self, String> {
        let (host, port) = id.broker_addr()?;
        let instance = &id.meta.instance_id;
        let presence_topic = link::topic(instance, Channel::Presence);
        let mut o = MqttOptions::new(instance.clone(), host, port);
        o.set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_inflight(u16::try_from(WINDOW + 8).unwrap_or(u16::MAX))
            .set_last_will(LastWill::new(
                presence_topic.clone(),
                presence(false, None),
                QoS::AtLeastOnce,
                true,
            ))
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
                tls_config(id)?,
            ))));
        let (client, mut eventloop) = AsyncClient::new(o, REQUESTS);
        let (tx, events) = mpsc::channel(EVENTS);
        let poller = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let failed = ev.is_err();
                if tx.send(ev).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Self {
            id,
            os,
            out,
            state,
            desired,
            client,
            events,
            poller,
            up: link::topic(instance, Channel::Up),
            presence: presence_topic,
            desired_topic: link::topic(instance, Channel::Desired),
            connected: false,
            window: Window::new(),
            last_published: 0,
            issued: VecDeque::new(),
            pkids: HashMap::new(),
            backlog_until: None,
            ack_due: None,
        })
    }

    /// Runs one connection until it fails or `stop`; returns whether it got connected.
    async fn run(&mut self, stop: &CancellationToken, backoff: &mut Backoff) -> bool {
        loop {
            tokio::select! {
                ev = self.events.recv() => {
                    // Whatever else is ready goes with it: one outbox ack and one refill per
                    // burst of PubAcks, not per message.
                    let mut next = ev;
                    loop {
                        match next {
                            Some(Ok(ev)) => {
                                if let Err(e) = self.on_event(ev, backoff).await {
                                    warn!(broker = %self.id.meta.broker_url, "dropping the broker connection: {e}");
                                    return self.connected;
                                }
                            }
                            Some(Err(e)) => {
                                warn!(broker = %self.id.meta.broker_url, "broker connection: {e}");
                                // What the broker acknowledged is not sent again.
                                let _ = self.ack_outbox().await;
                                return self.connected;
                            }
                            None => return self.connected,
                        }
                        match self.events.try_recv() {
                            Ok(ev) => next = Some(ev),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.ack_outbox().await {
                        warn!("dropping the broker connection: {e}");
                        return self.connected;
                    }
                }
                _ = self.out.appended(), if self.connected => {}
                _ = stop.cancelled() => {
                    let _ = self.ack_outbox().await;
                    self.goodbye().await;
                    return self.connected;
                }
            }
            if self.connected {
                if let Err(e) = self.fill().await {
                    warn!("cannot read the outbox: {e}");
                    return self.connected;
                }
            }
        }
    }

    async fn on_event(&mut self, ev: Event, backoff: &mut Backoff) -> Result<(), String> {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.connected = true;
                backoff.reset();
                let stats = self.out.outbox().stats();
                self.last_published = stats.acked_seq;
                self.backlog_until = Some(stats.last_seq);
                info!(
                    instance = %self.id.meta.instance_id,
                    broker = %self.id.meta.broker_url,
                    pending = stats.pending_records,
                    "connected to the broker"
                );
                self.publish(
                    &self.presence.clone(),
                    presence(true, Some(self.os)),
                    true,
                    None,
                )?;
                self.client
                    .try_subscribe(self.desired_topic.clone(), QoS::AtLeastOnce)
                    .map_err(|e| format!("cannot subscribe: {e}"))?;
                self.full_state_if_due().await;
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == self.desired_topic => {
                debug!(bytes = p.payload.len(), "desired-state document received");
                self.desired.send_replace(Some(p.payload));
            }
            Event::Incoming(Packet::SubAck(s))
                if s.return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure)) =>
            {
                warn!(
                    topic = %self.desired_topic,
                    "the broker refused the desired-state subscription; check its ACL \
                     (pattern read skerry/v1/%u/desired)"
                );
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(tag) = self.issued.pop_front() {
                    self.pkids.insert(pkid, tag);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Some(seq)) = self.pkids.remove(&ack.pkid) {
                    if let Some(upto) = self.window.acked(seq) {
                        self.ack_due = Some(upto);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Acks the outbox up to what the broker has acknowledged since the last call.
    async fn ack_outbox(&mut self) -> Result<(), String> {
        let Some(upto) = self.ack_due.take() else {
            return Ok(());
        };
        self.out
            .outbox()
            .ack(upto)
            .await
            .map_err(|e| format!("cannot ack the outbox up to {upto}: {e}"))?;
        self.full_state_if_due().await;
        Ok(())
    }

    fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        seq: Option<u64>,
    ) -> Result<(), String> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|e| format!("cannot queue a publish: {e}"))?;
        self.issued.push_back(seq);
        Ok(())
    }

    /// Publishes outbox records beyond the last published, in order, while the window has
    /// room. Waits for a quarter of the window to be free (acks are on their way for the
    /// rest), so that a peek, which reads from the oldest unacked record, is not paid per
    /// message.
    async fn fill(&mut self) -> Result<(), String> {
        if WINDOW - self.window.len() < REFILL {
            return Ok(());
        }
        while self.window.len() < WINDOW && self.out.outbox().stats().last_seq > self.last_published
        {
            let recs = self
                .out
                .outbox()
                .peek(WINDOW * 2)
                .await
                .map_err(|e| e.to_string())?;
            let fresh: Vec<Record> = recs
                .into_iter()
                .filter(|r| r.seq > self.last_published)
                .take(WINDOW - self.window.len())
                .collect();
            if fresh.is_empty() {
                // What is beyond was folded into records already in flight.
                break;
            }
            for rec in fresh {
                let env = envelope(&rec);
                let payload = serde_json::to_vec(&env)
                    .expect("an envelope is plain data, which JSON always encodes");
                self.publish(&self.up.clone(), payload, false, Some(rec.seq))?;
                self.window.published(rec.seq);
                self.last_published = rec.seq;
            }
        }
        Ok(())
    }

    /// Appends the FullState once the backlog that was there at connect is acked.
    async fn full_state_if_due(&mut self) {
        let Some(until) = self.backlog_until else {
            return;
        };
        if self
            .window
            .acked_upto()
            .max(self.out.outbox().stats().acked_seq)
            < until
        {
            return;
        }
        self.backlog_until = None;
        match super::append_full_state(self.state, self.out).await {
            Ok(seq) => debug!(seq, "full state recorded for the hub"),
            Err(e) => warn!("cannot record the full state: {e}"),
        }
    }

    /// Says `online: false` (retained) and disconnects, within a short grace.
    async fn goodbye(&mut self) {
        if !self.connected {
            return;
        }
        let topic = self.presence.clone();
        if self
            .publish(&topic, presence(false, None), true, None)
            .is_err()
        {
            return;
        }
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(GOODBYE, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, class: Class, payload: &[u8]) -> Record {
        Record {
            seq,
            class,
            payload: payload.to_vec(),
            folded: Vec::new(),
            dropped: Vec::new(),
        }
    }

    #[test]
    fn envelopes_carry_the_entry_and_its_coverage() {
        let entry = Entry {
            time: 1.5,
            message: Message::Applied { generation: 7 },
        };
        let mut r = record(
            9,
            Class::State {
                key: "applied-generation".into(),
            },
            &serde_json::to_vec(&entry).expect("json"),
        );
        r.folded = vec![3..=4, 6..=6];
        let e = envelope(&r);
        assert_eq!(e.seq, 9);
        assert_eq!(e.entry, entry);
        assert_eq!(e.folded, vec![(3, 4), (6, 6)]);
        assert_eq!(e.covers(), vec![3..=4, 6..=6, 9..=9]);

        // A marker the outbox left for dropped metrics says how many, in the protocol.
        let mut m = record(12, Class::Metric, b"dropped 5 metrics");
        m.dropped = vec![8..=12];
        let e = envelope(&m);
        assert_eq!(
            e.entry.message,
            Message::Dropped {
                what: "metrics".into(),
                count: 5
            }
        );
        assert_eq!(e.covers(), vec![8..=12]);

        // An unreadable payload still accounts for its seq.
        let e = envelope(&record(13, Class::Metric, b"\xff"));
        assert!(matches!(e.entry.message, Message::Dropped { count: 1, .. }));
        assert_eq!(e.covers(), vec![13..=13]);
    }
}
