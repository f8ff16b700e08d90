//! Outbox throughput: durable appends per second with group commit from many concurrent
//! appenders, fsyncs per message (the outbox's counter) and bytes written per message (the
//! kernel's `/proc/self/io`, beside what the outbox meant to write), the local peek+ack
//! rate, and the drain rate after a reconnect: N records already on disk, published by the
//! agent's own broker connection (`link::mqtt`) into a real Mosquitto over mutual TLS, timed
//! until every one is PUBACKed and acked out of the outbox, with a subscriber counting what
//! arrives. The drain needs a broker: `scripts/bench-outbox` starts one from the hub's
//! `broker-config` and passes `SKERRY_BENCH_BROKER` (its `mqtts://` URL) and
//! `SKERRY_BENCH_CA` (the hub's CA directory); without them it is skipped. Prints a table
//! and writes it to bench/results/outbox.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
use rumqttc::{Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use skerry_agent::identity::{Identity, IdentityMeta};
use skerry_agent::link::{mqtt, DeviceState, Outbound};
use skerry_agent::os::Os;
use skerry_agent::outbox::{Class, Outbox, OutboxConfig, OutboxStats};
use skerry_proto::link::{Envelope, EventKind, Message};
use skerry_proto::status::TaskReport;
use tokio_util::sync::CancellationToken;

const PAYLOAD: usize = 100;
/// Records on disk when the link comes up in the drain scenario.
const DRAIN_RECORDS: u64 = 100_000;
const INSTANCE: &str = "mi-0000000000bench0";
/// The hub's identity on the broker (its ACL may read every device's `up`).
const HUB_IDENTITY: &str = "skerry-hub";

/// The kernel's I/O counters of this process (all threads).
#[derive(Debug, Clone, Copy, Default)]
struct Io {
    /// Bytes this process caused to be sent to the storage layer.
    write_bytes: u64,
}

fn proc_io() -> Io {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(": ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    Io {
        write_bytes: field("write_bytes"),
    }
}

struct Row {
    name: String,
    msgs: u64,
    secs: f64,
    before: OutboxStats,
    after: OutboxStats,
    io_before: Io,
    io_after: Io,
}

impl Row {
    fn rate(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
    fn per_msg(&self, f: impl Fn(&OutboxStats) -> u64) -> f64 {
        (f(&self.after) - f(&self.before)) as f64 / self.msgs as f64
    }
    fn io_per_msg(&self, f: impl Fn(&Io) -> u64) -> f64 {
        f(&self.io_after).saturating_sub(f(&self.io_before)) as f64 / self.msgs as f64
    }
}

async fn appenders(ob: &Outbox, tasks: u64, per_task: u64, name: &str) -> Row {
    let before = ob.stats();
    let io_before = proc_io();
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let ob = ob.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let mut p = format!("{t}:{i} ").into_bytes();
                p.resize(PAYLOAD, b'.');
                ob.append(Class::Log, p).await.expect("bench append");
            }
        }));
    }
    for h in handles {
        h.await.expect("appender task");
    }
    Row {
        name: name.to_string(),
        msgs: tasks * per_task,
        secs: start.elapsed().as_secs_f64(),
        before,
        after: ob.stats(),
        io_before,
        io_after: proc_io(),
    }
}

async fn local_drain(ob: &Outbox, batch: usize) -> Row {
    let before = ob.stats();
    let io_before = proc_io();
    let start = Instant::now();
    let mut msgs = 0;
    loop {
        let recs = ob.peek(batch).await.expect("bench peek");
        let Some(last) = recs.last() else { break };
        msgs += recs.len() as u64;
        ob.ack(last.seq).await.expect("bench ack");
    }
    Row {
        name: format!("local drain: peek({batch}) + ack, no network"),
        msgs,
        secs: start.elapsed().as_secs_f64(),
        before,
        after: ob.stats(),
        io_before,
        io_after: proc_io(),
    }
}

/// The broker the drain runs against, from the environment `scripts/bench-outbox` sets.
struct BrokerEnv {
    url: String,
    port: u16,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl BrokerEnv {
    fn from_env() -> Option<Self> {
        let url = std::env::var("SKERRY_BENCH_BROKER").ok()?;
        let ca_dir = PathBuf::from(std::env::var("SKERRY_BENCH_CA").ok()?);
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("SKERRY_BENCH_BROKER is mqtts://HOST:PORT");
        let ca_pem = std::fs::read_to_string(ca_dir.join("ca.crt")).expect("the hub's ca.crt");
        let key_pem = std::fs::read_to_string(ca_dir.join("ca.key")).expect("the hub's ca.key");
        let key = KeyPair::from_pem(&key_pem).expect("the hub's CA key");
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).expect("the hub's CA certificate");
        Some(Self {
            url,
            port,
            ca_pem,
            issuer,
        })
    }

    /// A client certificate and key with `cn`, as the hub issues them.
    fn issue(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    fn device_identity(&self) -> Identity {
        let (cert_pem, key_pem) = self.issue(INSTANCE);
        Identity {
            meta: IdentityMeta {
                instance_id: INSTANCE.into(),
                container_instance_arn: format!(
                    "arn:aws:ecs:us-east-1:000000000000:container-instance/default/{INSTANCE}"
                ),
                cluster_arn: "arn:aws:ecs:us-east-1:000000000000:cluster/default".into(),
                broker_url: self.url.clone(),
                activation_id: "bench".into(),
                hub_url: "https://127.0.0.1:1".into(),
            },
            key_pem,
            cert_pem,
            ca_pem: self.ca_pem.clone(),
        }
    }

    fn hub_tls(&self) -> rustls::ClientConfig {
        let (cert, key) = self.issue(HUB_IDENTITY);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.expect("ca pem")).expect("root");
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("cert");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth")
    }
}

/// A device with no tasks: the FullState after the backlog is small.
struct NoTasks;

impl DeviceState for NoTasks {
    fn generation(&self) -> Result<Option<u64>, String> {
        Ok(Some(1))
    }
    fn tasks(&self) -> Vec<TaskReport> {
        Vec::new()
    }
}

/// What the hub-side subscriber saw.
#[derive(Default)]
struct Arrivals {
    /// Distinct seqs up to the backlog's last one.
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    last_seq: u64,
    /// When the last backlog record arrived.
    done: Option<Instant>,
}

/// Subscribes as the hub to every device's `up` and counts envelopes up to `until`.
async fn subscriber(
    broker: &BrokerEnv,
    until: u64,
) -> (rumqttc::AsyncClient, Arc<Mutex<Arrivals>>) {
    let mut o = MqttOptions::new(HUB_IDENTITY, "127.0.0.1", broker.port);
    o.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(8 << 20, 8 << 20)
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            broker.hub_tls(),
        ))));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 64);
    client
        .subscribe("skerry/v1/+/up", QoS::AtLeastOnce)
        .await
        .expect("queue the subscription");
    let seen = Arc::new(Mutex::new(Arrivals::default()));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let s = seen.clone();
    tokio::spawn(async move {
        let mut got = std::collections::HashSet::new();
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let env: Envelope =
                        serde_json::from_slice(&p.payload).expect("an envelope on up");
                    let mut a = s.lock().expect("arrivals");
                    if env.seq < a.last_seq {
                        a.out_of_order += 1;
                    }
                    a.last_seq = a.last_seq.max(env.seq);
                    if env.seq <= until {
                        if got.insert(env.seq) {
                            a.distinct += 1;
                            if a.distinct == until {
                                a.done = Some(Instant::now());
                            }
                        } else {
                            a.duplicates += 1;
                        }
                    }
                }
                Ok(_) => {}
                // The end of the run (or a lost broker: the count then falls short).
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("the broker acknowledges the subscription")
        .expect("subscriber running");
    (client, seen)
}

struct Drain {
    msgs: u64,
    /// From the start of the link to the last record acked out of the outbox.
    acked_secs: f64,
    /// From the start of the link to the last record counted by the subscriber.
    received_secs: f64,
    duplicates: u64,
    out_of_order: u64,
    fsyncs: f64,
    bytes: f64,
}

/// Fills an outbox with `DRAIN_RECORDS` events, reopens it as an agent restart would, and
/// lets the agent's broker connection drain it.
async fn drain_into_broker(broker: &BrokerEnv, dir: &Path) -> Drain {
    let ob = Outbox::open(OutboxConfig::new(dir))
        .await
        .expect("open drain outbox");
    let out = Outbound::new(ob.clone());
    let next = Arc::new(AtomicU64::new(0));
    let mut fillers = Vec::new();
    for _ in 0..64 {
        let (out, next) = (out.clone(), next.clone());
        fillers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= DRAIN_RECORDS {
                    return;
                }
                let message = Message::Event {
                    kind: EventKind::ContainerRestarted,
                    task_arn: Some(format!(
                        "arn:aws:ecs:us-east-1:000000000000:task/default/bench{}",
                        i % 50
                    )),
                    container: Some("web".into()),
                    message: format!("container web restarted ({i})"),
                };
                let key = format!("bench{}", i % 50);
                out.append(Class::Event { key }, message)
                    .await
                    .expect("fill append");
            }
        }));
    }
    for f in fillers {
        f.await.expect("filler");
    }
    let last = ob.stats().last_seq;
    ob.close().await;

    let (hub, seen) = subscriber(broker, last).await;
    let ob = Outbox::open(OutboxConfig::new(dir))
        .await
        .expect("reopen drain outbox");
    assert_eq!(
        ob.stats().pending_records,
        last,
        "every record still on disk"
    );
    let out = Outbound::new(ob.clone());
    let (desired, _) = tokio::sync::watch::channel(None);
    let stop = CancellationToken::new();
    let before = ob.stats();
    let io_before = proc_io();
    let start = Instant::now();
    let watcher = {
        let (ob, stop) = (ob.clone(), stop.clone());
        tokio::spawn(async move {
            while ob.stats().acked_seq < last {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let acked = start.elapsed();
            let after = ob.stats();
            let io_after = proc_io();
            // Let the subscriber count the tail before the link goes.
            let deadline = Instant::now() + Duration::from_secs(30);
            while seen_done(&seen).is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            stop.cancel();
            (acked, after, io_after, seen)
        })
    };
    mqtt::run(
        broker.device_identity(),
        &Os::default(),
        out,
        &NoTasks,
        desired,
        stop,
    )
    .await;
    let (acked, after, io_after, seen) = watcher.await.expect("watcher");
    let _ = hub.disconnect().await;
    ob.close().await;
    let a = seen.lock().expect("arrivals");
    let received = a.done.map(|t| t.duration_since(start).as_secs_f64());
    assert_eq!(a.distinct, last, "the subscriber got every record");
    Drain {
        msgs: last,
        acked_secs: acked.as_secs_f64(),
        received_secs: received.unwrap_or(f64::NAN),
        duplicates: a.duplicates,
        out_of_order: a.out_of_order,
        fsyncs: (after.fsyncs - before.fsyncs) as f64 / last as f64,
        bytes: io_after.write_bytes.saturating_sub(io_before.write_bytes) as f64 / last as f64,
    }
}

fn seen_done(seen: &Mutex<Arrivals>) -> Option<Instant> {
    seen.lock().expect("arrivals").done
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into())
}

/// The filesystem type the bench directory lives on: fsync cost depends on it.
fn fs_type(dir: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown".into();
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && dir.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max()
        .map_or_else(|| "unknown".into(), |(_, t)| t)
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown date".into())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("outbox-bench");
    let _ = std::fs::remove_dir_all(&dir);
    let broker = BrokerEnv::from_env();
    let (rows, drain) = rt.block_on(async {
        let ob = Outbox::open(OutboxConfig::new(dir.join("append")))
            .await
            .expect("open bench outbox");
        let mut rows = Vec::new();
        rows.push(appenders(&ob, 1, 300, "append, 1 appender").await);
        rows.push(appenders(&ob, 64, 1000, "append, 64 concurrent appenders").await);
        rows.push(appenders(&ob, 256, 250, "append, 256 concurrent appenders").await);
        rows.push(local_drain(&ob, 256).await);
        ob.close().await;
        let drain = match &broker {
            Some(b) => Some(drain_into_broker(b, &dir.join("drain")).await),
            None => None,
        };
        (rows, drain)
    });
    let _ = std::fs::remove_dir_all(&dir);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());

    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug (unoptimized)"
    } else {
        "optimized (`cargo bench`: opt-level \"s\" as the device binary, no LTO)"
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Outbox benchmark\n");
    let _ = writeln!(
        md,
        "Made by `scripts/bench-outbox` (`cargo bench -p skerry-agent --bench outbox` with a \
         broker). Figures from one run on a shared machine; fsyncs are the outbox's own count, \
         bytes written are the kernel's `write_bytes` for the process (`/proc/self/io`), \
         \"intended\" the bytes the outbox handed to write(2).\n"
    );
    let _ = writeln!(md, "- date: {}", utc_now());
    let _ = writeln!(md, "- machine: {} x {nproc}", cpu_model());
    let _ = writeln!(
        md,
        "- filesystem: {}",
        fs_type(Path::new(env!("CARGO_TARGET_TMPDIR")))
    );
    let _ = writeln!(
        md,
        "- load average at the end (other builds share the machine): {load}"
    );
    let _ = writeln!(md, "- build: {profile}");
    let _ = writeln!(
        md,
        "- payload: {PAYLOAD} bytes, class Log; segments 4 MiB; bound 64 MiB\n"
    );
    let _ = writeln!(
        md,
        "| scenario | messages | seconds | messages/s | fsyncs/message | bytes written/message (kernel) | intended bytes/message |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.0} | {:.4} | {:.1} | {:.1} |",
            r.name,
            r.msgs,
            r.secs,
            r.rate(),
            r.per_msg(|s| s.fsyncs),
            r.io_per_msg(|io| io.write_bytes),
            r.per_msg(|s| s.bytes_written),
        );
    }
    let _ = writeln!(md, "\n## Drain after a reconnect, into Mosquitto\n");
    match (&drain, &broker) {
        (Some(d), Some(b)) => {
            let _ = writeln!(
                md,
                "{n} event records (about 250 bytes of JSON each) on disk, the outbox reopened \
                 as after a restart, then the agent's broker connection (`link::mqtt`, {w} \
                 in flight) over mutual TLS to Mosquitto ({v}) on loopback, configured by \
                 `skerry-hub broker-config`; a subscriber with the hub's identity counts \
                 what arrives. Timed from the start of the connection (TLS handshake \
                 included).\n",
                n = d.msgs,
                w = mqtt::WINDOW,
                v = mosquitto_version(),
            );
            let _ = b;
            let _ = writeln!(md, "| measure | value |\n|---|---:|");
            let _ = writeln!(md, "| records | {} |", d.msgs);
            let _ = writeln!(
                md,
                "| all PUBACKed and acked out of the outbox | {:.2} s, {:.0} messages/s |",
                d.acked_secs,
                d.msgs as f64 / d.acked_secs
            );
            let _ = writeln!(
                md,
                "| all received by the subscriber | {:.2} s, {:.0} messages/s |",
                d.received_secs,
                d.msgs as f64 / d.received_secs
            );
            let _ = writeln!(
                md,
                "| duplicates / out of order at the subscriber | {} / {} |",
                d.duplicates, d.out_of_order
            );
            let _ = writeln!(md, "| fsyncs/message while draining | {:.4} |", d.fsyncs);
            let _ = writeln!(
                md,
                "| bytes written/message while draining (kernel) | {:.1} |",
                d.bytes
            );
        }
        _ => {
            let _ = writeln!(
                md,
                "Not run: no broker (`SKERRY_BENCH_BROKER`, `SKERRY_BENCH_CA`); \
                 `scripts/bench-outbox` provides one."
            );
        }
    }
    print!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/outbox.md");
    if let Some(parent) = out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&out, &md) {
        Ok(()) => println!("\nwritten to bench/results/outbox.md"),
        Err(e) => eprintln!("cannot write bench/results/outbox.md: {e}"),
    }
}

fn mosquitto_version() -> String {
    std::process::Command::new("/usr/sbin/mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown version".into())
}
