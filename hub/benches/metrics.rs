//! `/metrics` render time for a simulated fleet: 10,000 ACTIVE instances (override with
//! `SKERRY_BENCH_DEVICES`), each with a host sample, one RUNNING task of one container
//! (reported by the device, which the hub adopts) and that container's figures, all
//! ingested through `device::ingest_batch` as the link does. Then the whole body is rendered
//! as a scrape does (one store snapshot, the text encoding) a number of times; prints the
//! times, the body's size and series count, and writes bench/results/metrics.md.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use skerry_hub::arn::Arns;
use skerry_hub::device::{self, DeviceMessage};
use skerry_hub::metrics;
use skerry_hub::state::Hub;
use skerry_hub::store::{ContainerInstance, Store};
use skerry_proto::desired::DesiredStatus;
use skerry_proto::link::{ContainerUsage, Entry, Envelope, HostMetrics, Message};
use skerry_proto::status::{ContainerReport, HealthStatus, TaskReport, TaskStatus};

const RENDERS: usize = 15;
const BATCH: usize = 500;

fn instance_id(n: usize) -> String {
    format!("mi-{n:017x}")
}

fn task_arn(n: usize) -> String {
    format!("arn:aws:ecs:us-east-1:000000000000:task/default/{n:032x}")
}

fn envelope(seq: u64, message: Message) -> DeviceMessage {
    DeviceMessage::Up(Box::new(Envelope {
        seq,
        folded: Vec::new(),
        dropped: Vec::new(),
        entry: Entry {
            time: 1_765_000_000.0 + seq as f64,
            message,
        },
    }))
}

fn running_task(arn: &str) -> TaskReport {
    TaskReport {
        task_arn: arn.into(),
        task_definition_arn: None,
        last_status: TaskStatus::Running,
        desired_status: DesiredStatus::Running,
        stopped_reason: None,
        stop_code: None,
        health_status: HealthStatus::Unknown,
        created_at: None,
        started_at: Some(1_765_000_000.0),
        stopping_at: None,
        stopped_at: None,
        containers: vec![ContainerReport {
            name: "web".into(),
            runtime_id: None,
            last_status: TaskStatus::Running,
            exit_code: None,
            reason: None,
            health_status: HealthStatus::Unknown,
            network_bindings: Vec::new(),
            image: "busybox".into(),
        }],
        group: None,
        replaces: None,
        replaced_by: None,
    }
}

/// What device `n` says: a host sample, its task RUNNING, the task's container figures.
fn messages(n: usize) -> Vec<(String, DeviceMessage)> {
    let id = instance_id(n);
    let arn = task_arn(n);
    let host = HostMetrics {
        cpu_percent: (n % 100) as f32,
        memory_used_mib: 300 + (n % 500) as u64,
        memory_total_mib: 3900,
        disk_used_mib: 1000,
        disk_total_mib: 29000,
        temperature_c: Some(45.5),
        outbox_pending_records: Some(0),
    };
    let usage = ContainerUsage {
        task_arn: arn.clone(),
        container: "web".into(),
        cpu_usage_usec: 1_000_000 * n as u64,
        memory_bytes: 8 << 20,
        memory_limit_bytes: Some(64 << 20),
        memory_peak_bytes: Some(9 << 20),
    };
    let task = running_task(&arn);
    vec![
        (id.clone(), envelope(1, Message::Metrics(host))),
        (id.clone(), envelope(2, Message::TaskState { task })),
        (
            id,
            envelope(
                3,
                Message::ContainerMetrics {
                    containers: vec![usage],
                },
            ),
        ),
    ]
}

fn instance(n: usize) -> ContainerInstance {
    ContainerInstance {
        id: instance_id(n),
        arn: format!("arn:aws:ecs:us-east-1:000000000000:container-instance/default/{n:032x}"),
        cluster: "default".into(),
        activation_id: "1da5d8c4-2a28-44b5-ac86-911892afea04".into(),
        hostname: format!("pi-{n}"),
        architecture: "arm64".into(),
        agent_version: "0.1.0".into(),
        cpu_units: 4096,
        memory_mib: 4096,
        attributes: "{}".into(),
        cert_serial: "01".into(),
        status: "ACTIVE".into(),
        agent_connected: true,
        generation: 0,
        applied_generation: 0,
        registered_at: 1_765_000_000.0,
        last_seen_at: Some(1_765_000_000.0),
    }
}

fn fleet(devices: usize) -> (Hub, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(
        Store::open(dir.path()).expect("store"),
        Arns::new("us-east-1", "000000000000"),
    );
    hub.store
        .create_cluster("default", "[]", 0.0)
        .expect("cluster");
    for n in 0..devices {
        hub.store
            .insert_container_instance(&instance(n))
            .expect("instance");
    }
    let all: Vec<(String, DeviceMessage)> = (0..devices).flat_map(messages).collect();
    for batch in all.chunks(BATCH) {
        for outcome in device::ingest_batch(&hub, batch, 1_765_000_100.0).expect("ingest") {
            outcome.expect("a device message applies");
        }
    }
    (hub, dir)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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
    let devices: usize = std::env::var("SKERRY_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let started = Instant::now();
    let (hub, _dir) = fleet(devices);
    let setup = started.elapsed();
    let mut times = Vec::with_capacity(RENDERS);
    let mut body = String::new();
    for _ in 0..RENDERS {
        let t = Instant::now();
        body = metrics::render(&hub).expect("render");
        times.push(t.elapsed());
    }
    times.sort();
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    let containers = body
        .lines()
        .filter(|l| l.starts_with("skerry_container_memory_usage_bytes{"))
        .count();
    assert_eq!(containers, devices, "every device's container is shown");
    let mut md = String::new();
    let _ = writeln!(md, "# /metrics render benchmark\n");
    let _ = writeln!(
        md,
        "`scripts/bench-metrics`: `metrics::render` (one store snapshot and the text \
         encoding: what one scrape costs the hub besides HTTP) over a simulated fleet, each \
         device with a host sample, one RUNNING task of one container and its figures, \
         ingested as the link does. {RENDERS} renders; optimized build.\n"
    );
    let _ = writeln!(md, "- date: {}", utc_now());
    let _ = writeln!(
        md,
        "- machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        md,
        "- fleet set-up (ingest): {:.1} s\n",
        setup.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| devices | series | body | render min | median | max |\n|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| {devices} | {series} | {:.1} MiB | {:.1} ms | {:.1} ms | {:.1} ms |",
        body.len() as f64 / (1024.0 * 1024.0),
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
    );
    print!("{md}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/metrics.md");
    std::fs::write(&path, md).expect("write bench/results/metrics.md");
    println!("wrote {}", path.display());
}
