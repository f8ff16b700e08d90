//! `/metrics` on the real `skerry-hub` process: `promtool check metrics` is clean on its
//! output, and a real Prometheus server scraping it answers PromQL queries with the hub's
//! own counters and an instance's host figures. The device is played in-process, as in
//! `tasks_cli.rs`: an instance added to the hub's store, a host sample ingested for it.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::time::Duration;

use common::{write_config, Hub, REGION};
use prometheus::{promtool_check, Prometheus};
use skerry_hub::arn::Arns;
use skerry_hub::device;
use skerry_hub::state::Hub as HubState;
use skerry_hub::store::{ContainerInstance, Store};
use skerry_proto::link::{ContainerUsage, Entry, Envelope, HostMetrics, Message};

const INSTANCE: &str = "mi-0000000000000000a";

fn scrape(port: u16) -> String {
    let r = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .expect("GET /metrics");
    assert_eq!(r.status(), 200);
    let kind = r.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    r.text().expect("body")
}

fn envelope(seq: u64, message: Message) -> Envelope {
    Envelope {
        seq,
        folded: Vec::new(),
        dropped: Vec::new(),
        entry: Entry {
            time: 1_700_000_100.0 + seq as f64,
            message,
        },
    }
}

fn usage(task_arn: &str, container: &str, memory_bytes: u64) -> ContainerUsage {
    ContainerUsage {
        task_arn: task_arn.into(),
        container: container.into(),
        cpu_usage_usec: 2_500_000,
        memory_bytes,
        memory_limit_bytes: Some(64 << 20),
        memory_peak_bytes: None,
    }
}

/// An instance of `cluster` with one host sample, as registration and the link would add.
fn play_device(hub: &Hub, cluster: &str) -> HubState {
    let state = HubState::new(
        Store::open(&hub.state_dir()).expect("open the hub's store"),
        Arns::new(REGION, "000000000000"),
    );
    state
        .store
        .insert_container_instance(&ContainerInstance {
            id: INSTANCE.into(),
            arn: format!(
                "arn:aws:ecs:{REGION}:000000000000:container-instance/{cluster}/{:032x}",
                10
            ),
            cluster: cluster.into(),
            activation_id: "1da5d8c4-2a28-44b5-ac86-911892afea04".into(),
            hostname: "pi-10".into(),
            architecture: "arm64".into(),
            agent_version: "0.1.0 \"quoted\"".into(),
            cpu_units: 4096,
            memory_mib: 4096,
            attributes: "{}".into(),
            cert_serial: "01".into(),
            status: "ACTIVE".into(),
            agent_connected: true,
            generation: 0,
            applied_generation: 0,
            registered_at: 1_700_000_000.0,
            last_seen_at: None,
        })
        .expect("insert container instance");
    let sample = envelope(
        1,
        Message::Metrics(HostMetrics {
            cpu_percent: 25.0,
            memory_used_mib: 300,
            memory_total_mib: 3900,
            disk_used_mib: 1000,
            disk_total_mib: 29000,
            temperature_c: Some(47.5),
            outbox_pending_records: Some(3),
        }),
    );
    device::ingest(&state, INSTANCE, &sample, 1_700_000_101.0).expect("ingest a host sample");
    state
}

/// Runs a task of one container `web` on the instance and has the device report figures
/// for it, for a container the task does not have and for a task it does not run; returns
/// the task's id.
fn run_task_with_figures(hub: &Hub, state: &HubState) -> String {
    hub.ok(&[
        "ecs",
        "register-task-definition",
        "--family",
        "web",
        "--container-definitions",
        r#"[{"name":"web","image":"busybox","memory":64}]"#,
    ]);
    let run = hub.ok(&[
        "ecs",
        "run-task",
        "--cluster",
        "shop",
        "--task-definition",
        "web",
    ]);
    let arn = run["tasks"][0]["taskArn"]
        .as_str()
        .expect("a task ARN")
        .to_string();
    let other = arn.replace(arn.rsplit('/').next().expect("id"), "0000000000000000ffff");
    let figures = envelope(
        2,
        Message::ContainerMetrics {
            containers: vec![
                usage(&arn, "web", 12 << 20),
                usage(&arn, "ghost", 1),
                usage(&other, "web", 2),
            ],
        },
    );
    device::ingest(state, INSTANCE, &figures, 1_700_000_103.0).expect("ingest container figures");
    arn.rsplit('/').next().expect("id").to_string()
}

#[test]
fn prometheus_scrapes_the_hub_and_promtool_finds_nothing_to_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let hub = Hub::start(dir.path());
    let port = hub.metrics_port.expect("the hub reports its metrics port");
    hub.ok(&["ecs", "create-cluster", "--cluster-name", "shop"]);
    hub.fails(&[
        "ecs",
        "describe-services",
        "--cluster",
        "nowhere",
        "--services",
        "x",
    ]);
    let state = play_device(&hub, "shop");
    let task_id = run_task_with_figures(&hub, &state);

    let text = scrape(port);
    let complaints = promtool_check(&text);
    assert!(
        complaints.trim().is_empty(),
        "promtool: {complaints}\n{text}"
    );
    for line in [
        "skerry_hub_api_requests_total{operation=\"CreateCluster\",outcome=\"ok\"} 1",
        "skerry_instance_memory_used_bytes{cluster=\"shop\",instance_id=\"mi-0000000000000000a\"} 314572800",
        "skerry_instance_info{cluster=\"shop\",instance_id=\"mi-0000000000000000a\",architecture=\"arm64\",agent_version=\"0.1.0 \\\"quoted\\\"\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
    }
    let web = format!(
        "skerry_container_memory_usage_bytes{{cluster=\"shop\",instance_id=\"{INSTANCE}\",task_id=\"{task_id}\",container=\"web\"}} 12582912"
    );
    assert!(text.lines().any(|l| l == web), "{web} missing from\n{text}");
    // Figures for what the hub does not list on this instance are not shown.
    let shown = text
        .lines()
        .filter(|l| l.starts_with("skerry_container_memory_usage_bytes{"))
        .count();
    assert_eq!(shown, 1, "{text}");
    // Only GET /metrics is served on this listener.
    let other = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .expect("GET /");
    assert_eq!(other.status(), 404);

    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).expect("prometheus dir");
    let prom = Prometheus::start(&prom_dir, &[format!("127.0.0.1:{port}")]);
    let wait = Duration::from_secs(30);
    let ok = prom.query_until(
        "skerry_hub_api_requests_total{operation=\"CreateCluster\",outcome=\"ok\"}",
        wait,
        &prom_dir,
    );
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(ok[0]["value"][1], "1", "{ok:?}");
    let refused = prom.query_until(
        "sum(skerry_hub_api_requests_total{operation=\"DescribeServices\",outcome=\"client_error\"})",
        wait,
        &prom_dir,
    );
    assert_eq!(refused[0]["value"][1], "1", "{refused:?}");
    let memory = prom.query_until(
        "skerry_instance_memory_used_bytes{instance_id=\"mi-0000000000000000a\"} / 2^20",
        wait,
        &prom_dir,
    );
    assert_eq!(memory[0]["value"][1], "300", "{memory:?}");
    assert_eq!(memory[0]["metric"]["cluster"], "shop", "{memory:?}");
    let joined = prom.query_until(
        "skerry_instance_temperature_celsius * on(instance_id) group_left(agent_version) skerry_instance_info",
        wait,
        &prom_dir,
    );
    assert_eq!(joined[0]["value"][1], "47.5", "{joined:?}");
    assert_eq!(joined[0]["metric"]["agent_version"], "0.1.0 \"quoted\"");
    let container = prom.query_until(
        &format!("skerry_container_memory_usage_bytes{{task_id=\"{task_id}\",container=\"web\"}}"),
        wait,
        &prom_dir,
    );
    assert_eq!(container.len(), 1, "{container:?}");
    assert_eq!(container[0]["value"][1], "12582912", "{container:?}");
    drop(prom);
    hub.stop();
}
