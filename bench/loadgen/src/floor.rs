//! `fleet --floor`: the same fleet-wide change with the hub's work taken out, to show what
//! the broker and the simulated devices alone cost on this machine.
//!
//! Once the fleet has settled the hub is stopped, and a stand-in takes its place on the
//! wire: the hub's identity (a certificate from the hub's own CA), subscribed to every
//! device's `up`, publishing one desired-state document per device, retained, QoS 1, as the
//! hub does, at most [`IN_FLIGHT`] unacknowledged, also as the hub does. It keeps nothing:
//! no database, no scheduler. An Applied counts when the stand-in receives it, where the
//! hub would start its commit. No hub can do the change faster than this on the same broker
//! and devices.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport};
use skerry_hub::ca::{Ca, HUB_IDENTITY};
use skerry_hub::link::{client_tls, CLIENT_INFLIGHT};
use skerry_proto::desired::{DesiredState, DesiredStatus, DesiredTask};
use skerry_proto::link::{self, Channel, Envelope, Message};
use skerry_proto::taskdef::TaskDefinition;

/// Stops the hub whose pid is `pid` (SIGTERM) and waits until it is gone.
pub fn stop_hub(pid: u32) -> Result<()> {
    let raw = i32::try_from(pid).context("hub pid")?;
    let target = rustix::process::Pid::from_raw(raw).context("hub pid 0")?;
    rustix::process::kill_process(target, rustix::process::Signal::Term)
        .with_context(|| format!("stopping the hub (pid {pid})"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Gone, or a zombie its parent has not reaped yet.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let alive = state
            .as_deref()
            .and_then(|s| s.rsplit_once(") "))
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        if !alive {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the hub (pid {pid}) is still running 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The hub's stand-in, connected and subscribed.
pub struct StandIn {
    client: AsyncClient,
    /// Per device: microseconds from T0 to its Applied, 0 while none came.
    applied: Arc<Vec<AtomicU64>>,
    seen: Arc<AtomicUsize>,
    t0: Arc<std::sync::OnceLock<Instant>>,
}

impl StandIn {
    /// Connects as the hub (a certificate issued now from the hub's CA in `ca_dir`) and
    /// subscribes to every device's `up`. `devices`: each device's instance id and its
    /// generation at T0, in device order.
    pub async fn connect(
        ca_dir: &Path,
        host: &str,
        port: u16,
        devices: &[(String, u64)],
    ) -> Result<StandIn> {
        let baseline: HashMap<String, (usize, u64)> = devices
            .iter()
            .enumerate()
            .map(|(i, (id, generation))| (id.clone(), (i, *generation)))
            .collect();
        let ca = Ca::load_or_create(ca_dir).context("loading the hub's CA")?;
        let tls = client_tls(&ca).context("the stand-in's TLS setup")?;
        let mut opts = MqttOptions::new(HUB_IDENTITY, host, port);
        // A clean session drops the stopped hub's, and what the broker queued for it.
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(CLIENT_INFLIGHT)
            .set_max_packet_size(4 << 20, 4 << 20)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        let (client, mut events) = AsyncClient::new(opts, 1024);
        let n = devices.len();
        let applied: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let seen = Arc::new(AtomicUsize::new(0));
        let t0 = Arc::new(std::sync::OnceLock::<Instant>::new());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
        {
            let (client, applied, seen, t0) =
                (client.clone(), applied.clone(), seen.clone(), t0.clone());
            tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Err(e) = client.try_subscribe(link::UP_FILTER, QoS::AtLeastOnce)
                            {
                                if let Some(r) = ready.take() {
                                    let _ = r.send(Err(e.into()));
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(Ok(()));
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Some(at) = t0.get() {
                                record_applied(&p, *at, &baseline, &applied, &seen);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(Err(e.into()));
                                return;
                            }
                            eprintln!("loadgen: the hub's stand-in lost the broker: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .context("the hub's stand-in did not get its subscription within 30 s")?
            .context("the stand-in's event loop ended")?
            .context("connecting the hub's stand-in")?;
        Ok(StandIn {
            client,
            applied,
            seen,
            t0,
        })
    }

    /// The change from `t0`: one document per device (`docs`, in device order, topic and
    /// payload), then every device's Applied or `bound` passed. Per device, milliseconds
    /// from `t0` to its Applied.
    pub async fn change(
        &self,
        t0: Instant,
        docs: Vec<(String, Vec<u8>)>,
        bound: Duration,
    ) -> Result<Vec<Option<f64>>> {
        let _ = self.t0.set(t0);
        let n = docs.len();
        for (topic, payload) in docs {
            self.client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .context("queueing a document")?;
        }
        while self.seen.load(Ordering::Relaxed) < n && t0.elapsed() < bound {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(crate::millis(&self.applied))
    }
}

/// Records the time of a device's first Applied past its generation at T0 (`at`).
fn record_applied(
    p: &Publish,
    at: Instant,
    baseline: &HashMap<String, (usize, u64)>,
    applied: &[AtomicU64],
    seen: &AtomicUsize,
) {
    let Some((id, Channel::Up)) = link::parse_topic(&p.topic) else {
        return;
    };
    let Some(&(i, base)) = baseline.get(id) else {
        return;
    };
    let Ok(envelope) = serde_json::from_slice::<Envelope>(&p.payload) else {
        return;
    };
    let Message::Applied { generation } = envelope.entry.message else {
        return;
    };
    let us = (at.elapsed().as_micros() as u64).max(1);
    if generation > base
        && applied[i]
            .compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        seen.fetch_add(1, Ordering::Relaxed);
    }
}

/// The document the hub would send each device for a DAEMON service of `definition`
/// (registered as revision 1): one task, `generation` one past the device's.
pub fn documents(
    definition: &serde_json::Value,
    region: &str,
    account: &str,
    devices: &[(String, u64)],
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut td = TaskDefinition::parse(&definition.to_string())
        .map_err(|e| anyhow::anyhow!("the bench task definition: {e}"))?;
    let family = td.family.clone();
    td.task_definition_arn = Some(format!(
        "arn:aws:ecs:{region}:{account}:task-definition/{family}:1"
    ));
    td.revision = Some(1);
    devices
        .iter()
        .enumerate()
        .map(|(i, (id, generation))| {
            let doc = DesiredState {
                generation: generation + 1,
                tasks: vec![DesiredTask {
                    task_arn: format!("arn:aws:ecs:{region}:{account}:task/default/{i:032x}"),
                    task_definition: td.clone(),
                    desired_status: DesiredStatus::Running,
                    group: Some(format!("service:{family}")),
                }],
                refused: vec![],
            };
            Ok((link::topic(id, Channel::Desired), serde_json::to_vec(&doc)?))
        })
        .collect()
}
