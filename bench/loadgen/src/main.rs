//! `skerry-loadgen`: N simulated devices against a hub started by `scripts/hub-up`, for
//! `scripts/bench-hub`.
//!
//! Each device registers through the hub's real HTTPS endpoint (its own P-256 key and CSR),
//! then holds one MQTT connection to the broker with its client certificate: it subscribes
//! to its `desired` topic, publishes `Presence{online:true}` retained (and the offline form
//! as its last will), and answers every desired document with a newer generation with an
//! `Applied{generation}` envelope on `up`, seq increasing, as the agent does. Nothing else
//! of the agent runs: no containers, no outbox on disk.
//!
//! Once the whole fleet is connected and settled, one DAEMON service is created through the
//! hub's API, which changes every instance's document. From the instant just before that
//! call, per device: (a) when the device received its new document, (b) when the hub's
//! store recorded the device's Applied for it (the hub's SQLite database read-only, polled).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use skerry_cli::client::Hub;
use skerry_proto::link::{self, Channel, Entry, Envelope, Message, Presence};
use skerry_proto::registration::{Architecture, RegistrationRequest, RegistrationResponse};

mod floor;

/// The hub's limit per activation, as in SSM.
const PER_ACTIVATION: usize = 1000;
const STORE_POLL: Duration = Duration::from_millis(20);

#[derive(Parser)]
enum Cmd {
    /// N simulated devices and one fleet-wide change.
    Fleet(Args),
    /// RunTask -> RUNNING through the hub for a real agent: rounds of RunTask, DescribeTasks
    /// polled every 10 ms, StopTask; the first round (the image pull) is not counted.
    RunTask(RunTaskArgs),
}

#[derive(clap::Args)]
struct RunTaskArgs {
    #[arg(long)]
    task_definition: String,
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    #[arg(long)]
    json: PathBuf,
}

#[derive(clap::Args)]
struct Args {
    /// The directory `scripts/hub-up` ran in (its env must be in the environment too).
    #[arg(long)]
    hub_dir: PathBuf,
    #[arg(long)]
    devices: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// New MQTT connections per second.
    #[arg(long, default_value_t = 500)]
    connect_rate: u32,
    /// The latency bound the report counts against, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    bound_ms: u64,
    /// How long to wait for the fleet to settle, and then for every device's Applied.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// Where to write the figures as JSON.
    #[arg(long)]
    json: PathBuf,
    /// Take the hub's work out of the change: once the fleet has settled, stop the hub and
    /// let a stand-in that keeps nothing publish the documents and count the Applied
    /// (see `floor.rs`).
    #[arg(long)]
    floor: bool,
    /// Wait this long between the fleet settling and the change, e.g. to attach a profiler.
    #[arg(long, default_value_t = 0)]
    pause_secs: u64,
}

struct Device {
    instance_id: String,
    cert_pem: String,
    key_pem: String,
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set: source the hub's env"))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = match Cmd::parse() {
        Cmd::Fleet(a) => a,
        Cmd::RunTask(a) => return run_task(a).await,
    };
    let n = args.devices;
    let ca_pem = std::fs::read_to_string(args.hub_dir.join("state/ca/ca.crt"))
        .context("reading the hub's CA certificate")?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("CA certificate")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der)?;
    let hub = Hub::from_env(None)?;

    // Registration: one activation per 1000 devices (the per-activation limit).
    let started = Instant::now();
    let mut activations = Vec::new();
    let mut left = n;
    while left > 0 {
        let limit = left.min(PER_ACTIVATION);
        let a = hub
            .ssm(
                "CreateActivation",
                &json!({"IamRole": "ecsAnywhereRole", "RegistrationLimit": limit}),
            )
            .await?;
        let id = a["ActivationId"]
            .as_str()
            .context("ActivationId")?
            .to_string();
        let code = a["ActivationCode"]
            .as_str()
            .context("ActivationCode")?
            .to_string();
        activations.push((id, code));
        left -= limit;
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(60))
        .build()?;
    let reg_url = format!("{}/v1/register", env("SKERRY_REGISTRATION_URL")?);
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut regs = tokio::task::JoinSet::new();
    for i in 0..n {
        let (aid, code) = activations[i / PER_ACTIVATION].clone();
        let (http, url, sem) = (http.clone(), reg_url.clone(), sem.clone());
        regs.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            register(&http, &url, &aid, &code, i).await.map(|d| (i, d))
        });
    }
    let mut devices: Vec<Option<Device>> = (0..n).map(|_| None).collect();
    while let Some(r) = regs.join_next().await {
        let (i, d) = r??;
        devices[i] = Some(d);
    }
    let devices: Vec<Device> = devices.into_iter().flatten().collect();
    let register_secs = started.elapsed().as_secs_f64();
    eprintln!("loadgen: {n} devices registered in {register_secs:.1} s");

    // Connections.
    let broker = env("SKERRY_BROKER")?;
    let hostport = broker
        .strip_prefix("mqtts://")
        .context("SKERRY_BROKER is not mqtts://")?;
    let (host, port) = hostport.rsplit_once(':').context("broker port")?;
    let port: u16 = port.parse().context("broker port")?;
    let shared = Arc::new(Shared {
        t0: OnceLock::new(),
        received: (0..n).map(|_| AtomicU64::new(0)).collect(),
        connected: AtomicUsize::new(0),
        connection_errors: AtomicUsize::new(0),
        publish_errors: AtomicUsize::new(0),
    });
    let started = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.connect_rate.max(1)));
    let mut ids = Vec::with_capacity(n);
    for (i, d) in devices.into_iter().enumerate() {
        let cert = CertificateDer::from_pem_slice(d.cert_pem.as_bytes())?;
        let key = PrivateKeyDer::from_pem_slice(d.key_pem.as_bytes())?;
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(vec![cert], key)?;
        ids.push(d.instance_id.clone());
        tokio::spawn(simulate(
            i,
            d.instance_id,
            host.to_string(),
            port,
            Arc::new(config),
            shared.clone(),
        ));
        tokio::time::sleep(gap).await;
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while shared.connected.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} devices connected within {} s",
                shared.connected.load(Ordering::Relaxed),
                args.timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!("loadgen: {n} devices connected in {connect_secs:.1} s");

    // Settled: the hub sees every device online and every document applied.
    let db = args.hub_dir.join("state/hub.db");
    let settle_started = Instant::now();
    loop {
        let (online, settled) = settled(&db)?;
        if online >= n && settled >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("the hub sees {online} of {n} devices online, {settled} settled");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settle_secs = settle_started.elapsed().as_secs_f64();
    eprintln!("loadgen: the hub sees all {n} online and settled after {settle_secs:.1} s more");

    if args.pause_secs > 0 {
        eprintln!("loadgen: the change starts in {} s", args.pause_secs);
        tokio::time::sleep(Duration::from_secs(args.pause_secs)).await;
    }
    let definition = json!({
        "family": "bench-daemon",
        "requiresCompatibilities": ["EXTERNAL"],
        "networkMode": "none",
        "containerDefinitions": [{"name": "c", "image": "127.0.0.1:5000/busybox",
            "memory": 8, "cpu": 1, "command": ["sleep", "3600"]}],
    });
    hub.ecs("RegisterTaskDefinition", &definition).await?;
    let baseline = generations(&db)?;
    let hub_pid = pid(&args.hub_dir.join("hub.pid"))?;
    let broker_pid = pid(&args.hub_dir.join("broker.pid"))?;
    let bound = Duration::from_secs(args.timeout_secs);
    let stand_in = if args.floor {
        floor::stop_hub(hub_pid)?;
        // Each device with its generation at T0.
        let devices: Vec<(String, u64)> = ids
            .iter()
            .map(|id| {
                let generation = baseline.get(id).map_or(0, |&(_, g)| g.max(0) as u64);
                (id.clone(), generation)
            })
            .collect();
        let stand_in =
            floor::StandIn::connect(&args.hub_dir.join("state/ca"), host, port, &devices).await?;
        let docs = floor::documents(
            &definition,
            &env("AWS_DEFAULT_REGION")?,
            "000000000000",
            &devices,
        )?;
        Some((stand_in, docs))
    } else {
        None
    };
    let hub_cpu = || {
        if args.floor {
            Ok(0.0)
        } else {
            cpu_secs(hub_pid)
        }
    };
    let before = [hub_cpu()?, cpu_secs(broker_pid)?, self_cpu()?];

    // The change. T0 is just before the call.
    let t0 = Instant::now();
    let _ = shared.t0.set(t0);
    let (api_ms, api_error, applied) = if let Some((stand_in, docs)) = stand_in {
        let applied = stand_in.change(t0, docs, bound).await?;
        (t0.elapsed().as_secs_f64() * 1000.0, None, applied)
    } else {
        let poller = {
            let (db, ids) = (db.clone(), ids.clone());
            tokio::task::spawn_blocking(move || poll_applied(&db, &ids, &baseline, t0, bound))
        };
        // The hub runs a request to its end even if the client stopped waiting (the CLI's
        // client gives up after 30 s), so a timeout here is recorded and the polling goes on.
        let call = hub
            .ecs(
                "CreateService",
                &json!({"cluster": "default", "serviceName": "bench-daemon",
                    "taskDefinition": "bench-daemon", "schedulingStrategy": "DAEMON",
                    "launchType": "EXTERNAL"}),
            )
            .await;
        let api_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let api_error = call.err().map(|e| e.to_string());
        if let Some(e) = &api_error {
            eprintln!("loadgen: CreateService after {api_ms:.0} ms: {e}");
        }
        (api_ms, api_error, poller.await??)
    };
    let after = [hub_cpu()?, cpu_secs(broker_pid)?, self_cpu()?];
    let received = millis(&shared.received);
    let bound = args.bound_ms as f64;
    let summary = json!({
        "devices": n,
        "register_secs": register_secs,
        "connect_secs": connect_secs,
        "settle_secs": settle_secs,
        "api_call_ms": api_ms,
        "api_error": api_error,
        "received_ms": stats(&received, bound),
        "applied_ms": stats(&applied, bound),
        "bound_ms": bound,
        "timeout_secs": args.timeout_secs,
        "floor": args.floor,
        "hub": if args.floor { Value::Null } else {
            json!({"cpu_secs": after[0] - before[0], "rss_mib": rss_mib(hub_pid, "VmRSS")?,
                "peak_rss_mib": rss_mib(hub_pid, "VmHWM")?})
        },
        "broker": {"cpu_secs": after[1] - before[1], "rss_mib": rss_mib(broker_pid, "VmRSS")?,
            "peak_rss_mib": rss_mib(broker_pid, "VmHWM")?},
        "loadgen_cpu_secs": after[2] - before[2],
        "connection_errors": shared.connection_errors.load(Ordering::Relaxed),
        "publish_errors": shared.publish_errors.load(Ordering::Relaxed),
    });
    std::fs::write(&args.json, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    // The simulated devices stop with the process; their last will marks them offline.
    std::process::exit(0);
}

/// Polls DescribeTasks every 10 ms until the task's lastStatus is `status`.
async fn wait_status(hub: &Hub, arn: &str, status: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = hub
            .ecs(
                "DescribeTasks",
                &json!({"cluster": "default", "tasks": [arn]}),
            )
            .await?;
        let last = d["tasks"][0]["lastStatus"].as_str().unwrap_or_default();
        if last == status {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("task {arn} is {last:?}, not {status}, after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run_task(args: RunTaskArgs) -> Result<()> {
    let hub = Hub::from_env(None)?;
    let mut samples = Vec::new();
    for round in 0..=args.rounds {
        let t0 = Instant::now();
        let r = hub
            .ecs(
                "RunTask",
                &json!({"cluster": "default", "taskDefinition": args.task_definition,
                    "launchType": "EXTERNAL"}),
            )
            .await?;
        let arn = r["tasks"][0]["taskArn"]
            .as_str()
            .with_context(|| format!("RunTask placed nothing: {r}"))?
            .to_string();
        wait_status(&hub, &arn, "RUNNING").await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if round > 0 {
            samples.push(ms);
        }
        hub.ecs(
            "StopTask",
            &json!({"cluster": "default", "task": arn, "reason": "bench round done"}),
        )
        .await?;
        wait_status(&hub, &arn, "STOPPED").await?;
    }
    let out = json!({"samples_ms": samples});
    std::fs::write(&args.json, serde_json::to_vec_pretty(&out)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("{out}");
    Ok(())
}

async fn register(
    http: &reqwest::Client,
    url: &str,
    activation_id: &str,
    code: &str,
    i: usize,
) -> Result<Device> {
    let key = rcgen::KeyPair::generate()?;
    let hostname = format!("sim-{i}");
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, hostname.clone());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?.pem()?;
    let req = RegistrationRequest {
        activation_id: activation_id.to_string(),
        activation_code: code.to_string(),
        cluster: "default".into(),
        hostname,
        architecture: Architecture::X86_64,
        agent_version: "loadgen".into(),
        cpu_units: 4096,
        memory_mib: 8192,
        csr,
        attributes: Default::default(),
    };
    let resp = http.post(url).json(&req).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("registration {i}: {status}: {text}");
    }
    let r = RegistrationResponse::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Device {
        instance_id: r.instance_id,
        cert_pem: r.certificate,
        key_pem: key.serialize_pem(),
    })
}

struct Shared {
    t0: OnceLock<Instant>,
    /// Per device: microseconds from T0 to its new document, 0 while none came.
    received: Vec<AtomicU64>,
    connected: AtomicUsize,
    connection_errors: AtomicUsize,
    publish_errors: AtomicUsize,
}

/// One device: its connection, its answers. Runs until the process exits.
async fn simulate(
    index: usize,
    id: String,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    shared: Arc<Shared>,
) {
    let presence = |online| {
        serde_json::to_vec(&Presence {
            online,
            agent_version: Some("loadgen".into()),
            os_version: None,
            os_slot: None,
        })
        .unwrap_or_default()
    };
    let mut opts = MqttOptions::new(id.clone(), host, port);
    opts.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_max_packet_size(4 << 20, 4 << 20)
        .set_last_will(LastWill::new(
            link::topic(&id, Channel::Presence),
            presence(false),
            QoS::AtLeastOnce,
            true,
        ))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut events) = AsyncClient::new(opts, 16);
    let desired = link::topic(&id, Channel::Desired);
    let up = link::topic(&id, Channel::Up);
    let mut applied: u64 = 0;
    let mut seq: u64 = 0;
    let mut ever_connected = false;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let ok = client.try_subscribe(&desired, QoS::AtLeastOnce).is_ok()
                    && client
                        .try_publish(
                            link::topic(&id, Channel::Presence),
                            QoS::AtLeastOnce,
                            true,
                            presence(true),
                        )
                        .is_ok();
                if !ok {
                    shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                }
                if !ever_connected {
                    ever_connected = true;
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == desired => {
                let generation = serde_json::from_slice::<Value>(&p.payload)
                    .ok()
                    .and_then(|v| v["generation"].as_u64())
                    .unwrap_or(0);
                if generation <= applied {
                    continue;
                }
                if let Some(t0) = shared.t0.get() {
                    let us = (t0.elapsed().as_micros() as u64).max(1);
                    let _ = shared.received[index].compare_exchange(
                        0,
                        us,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                applied = generation;
                seq += 1;
                let envelope = Envelope {
                    seq,
                    folded: vec![],
                    dropped: vec![],
                    entry: Entry {
                        time: unix_now(),
                        message: Message::Applied { generation },
                    },
                };
                let payload = serde_json::to_vec(&envelope).unwrap_or_default();
                if client
                    .try_publish(&up, QoS::AtLeastOnce, false, payload)
                    .is_err()
                {
                    shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(_) => {
                shared.connection_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn open_db(db: &Path) -> Result<rusqlite::Connection> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {} read-only", db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Devices the hub sees online, and those whose applied generation is the hub's.
fn settled(db: &Path) -> Result<(usize, usize)> {
    let conn = open_db(db)?;
    let (online, settled): (i64, i64) = conn.query_row(
        "SELECT COALESCE(SUM(agent_connected), 0),
                COALESCE(SUM(applied_generation >= generation), 0) FROM container_instances",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((online as usize, settled as usize))
}

/// Each instance's rowid and generation, by id.
fn generations(db: &Path) -> Result<std::collections::HashMap<String, (i64, i64)>> {
    let conn = open_db(db)?;
    let mut stmt = conn.prepare("SELECT id, rowid, generation FROM container_instances")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Polls the hub's store until every device's applied generation is past its baseline (or
/// `bound` passed): per device, milliseconds from `t0` to the poll that first saw it.
///
/// The poller shares the two cores with the hub and broker it measures, so each poll reads
/// two integers a row (by rowid, not the id text) through a memory map.
fn poll_applied(
    db: &Path,
    ids: &[String],
    baseline: &std::collections::HashMap<String, (i64, i64)>,
    t0: Instant,
    bound: Duration,
) -> Result<Vec<Option<f64>>> {
    let conn = open_db(db)?;
    // Pages come from the page cache in place instead of a read() copy each poll.
    conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
    // rowid -> (device index, generation applied at T0).
    let by_rowid: std::collections::HashMap<i64, (usize, i64)> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| baseline.get(id).map(|&(rowid, g)| (rowid, (i, g))))
        .collect();
    let mut seen: Vec<Option<f64>> = vec![None; ids.len()];
    let mut left = ids.len();
    let mut stmt = conn.prepare("SELECT rowid, applied_generation FROM container_instances")?;
    while left > 0 && t0.elapsed() < bound {
        let mut rows = stmt.query([])?;
        let at = t0.elapsed().as_secs_f64() * 1000.0;
        while let Some(r) = rows.next()? {
            let (rowid, applied): (i64, i64) = (r.get(0)?, r.get(1)?);
            let Some(&(i, base)) = by_rowid.get(&rowid) else {
                continue;
            };
            if seen[i].is_none() && applied > base {
                seen[i] = Some(at);
                left -= 1;
            }
        }
        drop(rows);
        std::thread::sleep(STORE_POLL);
    }
    Ok(seen)
}

/// Microseconds since T0 per device (0: not yet) as milliseconds, `None` for not yet.
fn millis(times: &[AtomicU64]) -> Vec<Option<f64>> {
    times
        .iter()
        .map(|a| match a.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us as f64 / 1000.0),
        })
        .collect()
}

/// Percentiles over every device; one that never got there counts as infinitely late.
fn stats(values: &[Option<f64>], bound: f64) -> Value {
    let mut v: Vec<f64> = values.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
        v.get(i)
            .copied()
            .filter(|x| x.is_finite())
            .map(Value::from)
            .unwrap_or(Value::Null)
    };
    json!({
        "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0),
        "within_bound": v.iter().filter(|x| **x < bound).count(),
        "missing": values.iter().filter(|x| x.is_none()).count(),
    })
}

fn pid(file: &Path) -> Result<u32> {
    let s = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    Ok(s.trim().parse()?)
}

/// User + system CPU seconds of a process, from /proc.
fn cpu_secs(pid: u32) -> Result<f64> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

fn self_cpu() -> Result<f64> {
    stat_cpu("/proc/self/stat")
}

fn stat_cpu(path: &str) -> Result<f64> {
    let s = std::fs::read_to_string(path).with_context(|| path.to_string())?;
    let rest = s.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm field: state is 0, utime 11, stime 12 (clock ticks, 100 a second).
    let ticks: f64 =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn rss_mib(pid: u32, field: &str) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} of {pid}"))?;
    let kb: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
    Ok(kb / 1024.0)
}
