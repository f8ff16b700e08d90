//! `skerry events --follow` against the real `skerry-hub` process: an event shows within
//! two seconds of its ingest, the cluster filter holds, and after the hub is stopped and
//! started again the follower resumes after the last event it printed: what was ingested
//! meanwhile arrives, nothing twice. The device is played in-process (its messages applied
//! to the hub's store with `device::ingest`, as the link does), as in `tasks_cli.rs`. The
//! `skerry` binary comes from `SKERRY_CLI_BIN` or the same target directory (scripts/test
//! builds it first).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{free_port, write_config, Hub, KEY_ID, REGION, SECRET};
use serde_json::Value;
use skerry_hub::arn::Arns;
use skerry_hub::device;
use skerry_hub::state::Hub as HubState;
use skerry_hub::store::{ContainerInstance, Store};
use skerry_proto::link::{Entry, Envelope, EventKind, Message};

const TASK: &str = "arn:aws:ecs:us-east-1:000000000000:task/shop/0123456789abcdef";

fn skerry_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SKERRY_CLI_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/debug/deps")
        .join("skerry");
    assert!(
        p.exists(),
        "{} is missing: `cargo build -p skerry-cli` or set SKERRY_CLI_BIN",
        p.display()
    );
    p
}

struct Device {
    hub: HubState,
    id: String,
    seq: u64,
}

impl Device {
    fn add(hub: &Hub, n: u32, cluster: &str) -> Device {
        let state = HubState::new(
            Store::open(&hub.state_dir()).expect("open the hub's store"),
            Arns::new(REGION, "000000000000"),
        );
        let id = format!("mi-{n:017x}");
        state
            .store
            .insert_container_instance(&ContainerInstance {
                id: id.clone(),
                arn: format!(
                    "arn:aws:ecs:{REGION}:000000000000:container-instance/{cluster}/{n:032x}"
                ),
                cluster: cluster.into(),
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
                registered_at: 1_700_000_000.0,
                last_seen_at: None,
            })
            .expect("insert container instance");
        Device {
            hub: state,
            id,
            seq: 0,
        }
    }

    /// The device says its container `web` restarted (the `n`th time).
    fn restart(&mut self, n: u32) {
        self.seq += 1;
        let e = Envelope {
            seq: self.seq,
            folded: Vec::new(),
            dropped: Vec::new(),
            entry: Entry {
                time: 1_700_000_100.0 + self.seq as f64,
                message: Message::Event {
                    kind: EventKind::ContainerRestarted,
                    task_arn: Some(TASK.into()),
                    container: Some("web".into()),
                    message: format!("restart {n}"),
                },
            },
        };
        device::ingest(&self.hub, &self.id, &e, 1_700_000_200.0).expect("ingest an event");
    }
}

/// `skerry events --follow --json --cluster shop`, its stdout lines on a channel.
fn follow(api_port: u16) -> (Child, mpsc::Receiver<Value>) {
    let mut child = Command::new(skerry_bin())
        .args(["events", "--follow", "--json", "--cluster", "shop"])
        .env("SKERRY_HUB", format!("http://127.0.0.1:{api_port}"))
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_DEFAULT_REGION", REGION)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn skerry events --follow");
    let out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

fn next(rx: &mpsc::Receiver<Value>, within: Duration, what: &str) -> Value {
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("{what} not printed within {within:?}"))
}

#[test]
fn follow_prints_events_within_seconds_and_resumes_after_the_hub_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A fixed API port, so the follower finds the hub again after its restart.
    let api_port = free_port();
    let config = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{api_port}\""),
            1,
        ),
    )
    .expect("config with a fixed port");
    let hub = Hub::start(dir.path());
    assert_eq!(hub.port, api_port);
    hub.ok(&["ecs", "create-cluster", "--cluster-name", "shop"]);
    hub.ok(&["ecs", "create-cluster", "--cluster-name", "lab"]);
    let mut shop = Device::add(&hub, 1, "shop");
    let mut lab = Device::add(&hub, 2, "lab");
    shop.restart(1);

    let (mut child, rx) = follow(api_port);
    let first = next(&rx, Duration::from_secs(10), "the history");
    assert_eq!(first["message"], "restart 1", "{first}");
    // Now the follower waits in a long-poll; an event of another cluster does not wake it
    // into printing, one of its own is printed within two seconds.
    std::thread::sleep(Duration::from_millis(500));
    lab.restart(1);
    let ingested = Instant::now();
    shop.restart(2);
    let second = next(&rx, Duration::from_secs(2), "the restart");
    let took = ingested.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "printed {took:?} after ingest"
    );
    assert_eq!(second["kind"], "containerRestarted", "{second}");
    assert_eq!(second["instanceId"], shop.id.as_str(), "{second}");
    assert_eq!(second["taskArn"], TASK, "{second}");
    assert_eq!(second["container"], "web", "{second}");
    assert_eq!(second["seq"], 2, "{second}");
    assert!(second["time"].as_f64().is_some(), "{second}");
    assert!(
        second["id"].as_i64() > first["id"].as_i64(),
        "{first} then {second}"
    );

    // The hub goes away; what is ingested meanwhile arrives once it is back, once.
    hub.stop();
    shop.restart(3);
    let hub = Hub::start(dir.path());
    assert_eq!(hub.port, api_port);
    shop.restart(4);
    let third = next(
        &rx,
        Duration::from_secs(30),
        "the restart while the hub was down",
    );
    let fourth = next(&rx, Duration::from_secs(5), "the restart after it returned");
    assert_eq!(
        (third["message"].as_str(), fourth["message"].as_str()),
        (Some("restart 3"), Some("restart 4"))
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "nothing more, nothing twice"
    );
    let _ = child.kill();
    let _ = child.wait();
    hub.stop();
}
