//! Fault injection with real processes: a hub and Mosquitto from `scripts/hub-up`, one
//! registered agent per scenario (slots 60–69), and a fault while tasks change state: the
//! broker stopped and restarted, the agent's link cut in a network namespace of its own,
//! the hub killed and restarted, the agent `kill -9`ed 200 times, containerd restarted, the
//! data directory's filesystem filled up. After each run:
//! - delivery: the hub applied every seq the device's outbox ever gave out (its high-water
//!   mark equals the outbox's last seq, all acked) with no `seqGap` event, and no seq took
//!   effect twice (each seq's events form one run in the history);
//! - containers: exactly one container per task the device runs, none for any other task,
//!   each with a running process, and the hub's RUNNING tasks are the device's;
//! - a task that ran before the fault runs the same process after it (same pid and start
//!   time): a lost link, broker or hub never stops a task.

#[path = "../../agent/tests/harness/mod.rs"]
mod harness;
mod stack;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};
use skerry_proto::desired::task_id_of;

use harness::containerd::OwnContainerd;
use harness::Agent;
use stack::Stack;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `probe` until it returns Ok, or panics with `what` and the last error.
fn wait<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not reached in {timeout:?}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// What the fault scenarios ask of the hub beyond the shared stack's basics.
impl Stack {
    fn connected(&self) -> bool {
        self.instances()
            .first()
            .is_some_and(|i| i["agentConnected"] == true)
    }

    /// Every task the hub knows, running or stopped.
    fn all_tasks(&self) -> Vec<Value> {
        let mut out = self.tasks(&["--desired-status", "RUNNING"]);
        out.extend(self.tasks(&["--desired-status", "STOPPED"]));
        out
    }

    fn register(&self, family: &str, registry: &str, script: &str) {
        let def = json!({
            "family": family,
            "requiresCompatibilities": ["EXTERNAL"],
            "networkMode": "bridge",
            "memory": "64",
            "cpu": "128",
            "containerDefinitions": [{
                "name": "main", "image": format!("{registry}/busybox:latest"),
                "essential": true, "stopTimeout": 2,
                "command": ["sh", "-c", script]
            }]
        });
        self.aws(&[
            "ecs",
            "register-task-definition",
            "--cli-input-json",
            &def.to_string(),
        ]);
    }

    /// RunTask; returns the new tasks' ARNs.
    fn run_task(&self, family: &str, count: u32) -> Vec<String> {
        let out = self.aws(&[
            "ecs",
            "run-task",
            "--cluster",
            "default",
            "--task-definition",
            family,
            "--count",
            &count.to_string(),
            "--launch-type",
            "EXTERNAL",
        ]);
        assert_eq!(out["failures"].as_array().map(Vec::len), Some(0), "{out:#}");
        out["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| t["taskArn"].as_str().expect("taskArn").to_string())
            .collect()
    }

    /// The highest seq of the instance the hub has applied, from its database.
    fn up_seq(&self, instance: &str) -> u64 {
        let db = self.dir.join("state/hub.db");
        let conn = rusqlite::Connection::open_with_flags(
            &db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
        conn.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        let seq: i64 = conn
            .query_row(
                "SELECT up_seq FROM container_instances WHERE id = ?1",
                [instance],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("up_seq of {instance}: {e}"));
        u64::try_from(seq).expect("up_seq is not negative")
    }
}

/// A registered agent and its instance id.
struct Device {
    agent: Agent,
    /// The instance id (mi-…) and the container instance ARN.
    id: String,
    arn: String,
}

impl Device {
    /// An agent on `slot` with a provisioning file from `stack`; `tweak` may change it before
    /// it starts (its containerd, its binary). Returns once the hub sees it connected.
    fn enroll(stack: &Stack, slot: u8, name: &str, tweak: impl FnOnce(&mut Agent)) -> Device {
        let prov = stack.dir.join(format!("provision-{name}.toml"));
        stack.activation(1, &prov, &[]);
        let mut agent = Agent::with_top(
            slot,
            name,
            &format!("provision_file = \"{}\"", prov.display()),
            // One host sample per start: fewer records that carry no event.
            "[link]\nmetrics_interval_secs = 86400\n",
        );
        tweak(&mut agent);
        agent.start();
        let (id, arn) = wait(
            "the agent registered and connected",
            Duration::from_secs(90),
            || {
                let v = stack.instances();
                match v.first() {
                    Some(i) if i["agentConnected"] == true => Ok((
                        i["ec2InstanceId"].as_str().expect("id").to_string(),
                        i["containerInstanceArn"].as_str().expect("arn").to_string(),
                    )),
                    _ => Err(format!("{v:#?}\n{}", agent.log_tail())),
                }
            },
        );
        Device { agent, id, arn }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.agent.log).unwrap_or_default()
    }

    /// (pid, start time in clock ticks) of the container's process, if it runs.
    fn process(&self, container: &str) -> Option<(u32, u64)> {
        let line = self
            .agent
            .ctr(&["tasks", "ls"])
            .lines()
            .skip(1)
            .map(str::to_string)
            .find(|l| l.split_whitespace().next() == Some(container))?;
        let mut f = line.split_whitespace().skip(1);
        let pid: u32 = f.next()?.parse().ok()?;
        if f.next() != Some("RUNNING") {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command's closing parenthesis; starttime is field 22.
        let rest = &stat[stat.rfind(')')? + 2..];
        let start = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some((pid, start))
    }
}

/// The task's container id on the device.
fn container_of(arn: &str) -> String {
    format!("{}-main", task_id_of(arn))
}

/// Waits until the device and the hub agree and nothing is duplicated or orphaned: every
/// task on the device RUNNING or STOPPED; one container per RUNNING task with a running
/// process, none for other tasks; the hub's RUNNING tasks of the instance are exactly those.
fn check_containers(stack: &Stack, dev: &Device) {
    wait(
        "device and hub converged with no duplicate or orphaned container",
        Duration::from_secs(120),
        || {
            let tasks = dev.agent.ps();
            let settled = tasks.iter().all(|t| {
                t["lastStatus"] == "STOPPED"
                    || (t["lastStatus"] == "RUNNING" && t["desiredStatus"] == "RUNNING")
            });
            let running: BTreeSet<String> = tasks
                .iter()
                .filter(|t| t["lastStatus"] == "RUNNING")
                .map(|t| t["taskArn"].as_str().unwrap_or("").to_string())
                .collect();
            let want: Vec<String> = running.iter().map(|a| container_of(a)).collect();
            let mut want_sorted = want.clone();
            want_sorted.sort();
            let have = dev.agent.containers();
            let live = want.iter().all(|c| dev.process(c).is_some());
            let on_hub: Vec<Value> = stack
                .all_tasks()
                .into_iter()
                .filter(|t| t["containerInstanceArn"] == dev.arn.as_str())
                .collect();
            // Everything the hub asked for reached an end state the device reported.
            let hub_settled = on_hub
                .iter()
                .all(|t| t["lastStatus"] == "RUNNING" || t["lastStatus"] == "STOPPED");
            let hub: BTreeSet<String> = on_hub
                .iter()
                .filter(|t| t["lastStatus"] == "RUNNING")
                .map(|t| t["taskArn"].as_str().unwrap_or("").to_string())
                .collect();
            if settled && hub_settled && have == want_sorted && live && hub == running {
                Ok(())
            } else {
                Err(format!(
                    "settled {settled}, hub settled {hub_settled}, live {live}\ncontainers {have:?}\nwant {want_sorted:?}\nhub running {hub:?}\ndevice {tasks:#?}\nagent log:\n{}",
                    dev.agent.log_tail()
                ))
            }
        },
    );
}

/// Checks delivery: stops the agent once the hub has caught up, reads its outbox, and
/// checks that the hub applied every seq up to the outbox's last with no gap, and that no
/// seq took effect twice. Leaves the agent stopped.
fn check_delivery(stack: &Stack, dev: &mut Device) {
    let outbox = dev.agent.data_dir().join("outbox");
    let mut attempts = 0;
    let (last, acked, hub) = loop {
        attempts += 1;
        // Caught up: connected, and the hub's high-water mark still for two seconds.
        wait("the agent connected", Duration::from_secs(120), || {
            if stack.connected() {
                Ok(())
            } else {
                Err(dev.agent.log_tail())
            }
        });
        let mut seen = stack.up_seq(&dev.id);
        wait("the hub's seq settled", Duration::from_secs(60), || {
            std::thread::sleep(Duration::from_secs(2));
            let now = stack.up_seq(&dev.id);
            if now == seen && now > 0 {
                Ok(())
            } else {
                seen = now;
                Err(format!("up_seq {now}"))
            }
        });
        dev.agent.stop();
        let (last, acked) = outbox_seqs(&outbox);
        let hub = stack.up_seq(&dev.id);
        // A record appended in the last moments (a state change, the shutdown's own
        // report) is delivered by the next run.
        if (hub == last && acked == last) || attempts == 3 {
            break (last, acked, hub);
        }
        dev.agent.start();
    };
    assert_eq!(
        (hub, acked),
        (last, last),
        "hub applied up to {hub}, the outbox acked {acked} and ends at {last}\nagent log:\n{}\nhub log:\n{}",
        dev.agent.log_tail(),
        stack.hub_log()
    );
    let events = stack.events(&dev.id);
    let gaps: Vec<&Value> = events.iter().filter(|e| e["kind"] == "seqGap").collect();
    assert!(gaps.is_empty(), "the hub recorded gaps: {gaps:#?}");
    // Each seq's events come from one ingest: one run in the history, at most one
    // fullState/applied, and a plain state change has one taskState.
    let mut runs: Vec<(u64, Vec<String>)> = Vec::new();
    for e in &events {
        let Some(seq) = e["seq"].as_u64() else {
            continue;
        };
        assert!(
            seq <= last,
            "event beyond the outbox's last seq {last}: {e:#}"
        );
        let kind = e["kind"].as_str().unwrap_or("").to_string();
        match runs.last_mut() {
            Some((s, kinds)) if *s == seq => kinds.push(kind),
            _ => runs.push((seq, vec![kind])),
        }
    }
    let mut seen = BTreeSet::new();
    for (seq, kinds) in &runs {
        assert!(
            seen.insert(*seq),
            "seq {seq} took effect twice (another run of its events); runs: {runs:?}"
        );
        let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
        assert!(
            count("fullState") <= 1 && count("applied") <= 1,
            "seq {seq}: {kinds:?}"
        );
        if count("fullState") == 0 {
            assert!(count("taskState") <= 1, "seq {seq}: {kinds:?}");
        }
    }
    assert!(
        runs.windows(2).all(|w| w[0].0 < w[1].0),
        "seqs out of order in the history: {runs:?}"
    );
    eprintln!(
        "delivery checked: {last} seqs, {} with events, no gap",
        runs.len()
    );
}

/// (last seq, acked seq) of a closed outbox directory.
fn outbox_seqs(dir: &Path) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let o = skerry_agent::outbox::Outbox::open(skerry_agent::outbox::OutboxConfig::new(dir))
            .await
            .unwrap_or_else(|e| panic!("open the outbox {}: {e}", dir.display()));
        let s = o.stats();
        o.close().await;
        (s.last_seq, s.acked_seq)
    })
}

/// Registers a long-running task definition and a short one (each blip goes PENDING,
/// RUNNING, STOPPED on its own), with images from `registry`.
fn workload(stack: &Stack, registry: &str) {
    stack.register(
        "sleeper",
        registry,
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    );
    stack.register("blip", registry, "sleep 1");
}

/// Runs the sleeper on the device; returns its ARN and process once it runs.
fn start_sleeper(stack: &Stack, dev: &Device) -> (String, (u32, u64)) {
    let arn = stack.run_task("sleeper", 1).remove(0);
    dev.agent.wait_status(&arn, "RUNNING");
    let process = wait("the sleeper's process", Duration::from_secs(30), || {
        dev.process(&container_of(&arn))
            .ok_or_else(|| dev.agent.ctr(&["tasks", "ls"]))
    });
    (arn, process)
}

fn assert_same_process(dev: &Device, arn: &str, before: (u32, u64), fault: &str) {
    assert_eq!(
        dev.process(&container_of(arn)),
        Some(before),
        "the sleeper's process changed across {fault}\nagent log:\n{}",
        dev.agent.log_tail()
    );
}

/// How many agent log lines contain `needle`.
fn log_count(dev: &Device, needle: &str) -> usize {
    dev.log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn broker_stopped_and_restarted_while_tasks_change() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut stack = Stack::up(&tmp.path().join("hub"), &[]);
    workload(&stack, &harness::env().registry);
    let mut dev = Device::enroll(&stack, 60, "fbroker", |_| {});
    let (sleeper, before) = start_sleeper(&stack, &dev);
    let connects = log_count(&dev, "connected to the broker");

    for round in 0..2 {
        stack.run_task("blip", 3);
        std::thread::sleep(Duration::from_millis(500 + round * 700));
        stack.kill("broker", "-TERM");
        // Tasks keep changing while the broker is away: the blips stop on their own.
        std::thread::sleep(Duration::from_secs(4));
        assert_same_process(&dev, &sleeper, before, "a broker outage");
        stack.hub_up();
        wait("the agent reconnected", Duration::from_secs(90), || {
            let n = log_count(&dev, "connected to the broker");
            if n > connects + round as usize {
                Ok(())
            } else {
                Err(dev.agent.log_tail())
            }
        });
    }
    check_containers(&stack, &dev);
    assert_same_process(&dev, &sleeper, before, "broker outages");
    check_delivery(&stack, &mut dev);
}

#[test]
fn hub_killed_and_restarted_during_traffic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut stack = Stack::up(&tmp.path().join("hub"), &[]);
    workload(&stack, &harness::env().registry);
    let mut dev = Device::enroll(&stack, 61, "fhub", |_| {});
    let (sleeper, before) = start_sleeper(&stack, &dev);

    for round in 0..3 {
        stack.run_task("blip", 3);
        // Mid-traffic: the blips' state changes are on their way.
        std::thread::sleep(Duration::from_millis(300 + round * 600));
        stack.kill("hub", "-KILL");
        std::thread::sleep(Duration::from_secs(2));
        stack.hub_up();
    }
    check_containers(&stack, &dev);
    assert_same_process(&dev, &sleeper, before, "hub restarts");
    check_delivery(&stack, &mut dev);
}

#[test]
fn agent_kill_9_two_hundred_times_while_tasks_change() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stack = Stack::up(&tmp.path().join("hub"), &[]);
    workload(&stack, &harness::env().registry);
    let mut dev = Device::enroll(&stack, 62, "fkill", |_| {});
    let (sleeper, before) = start_sleeper(&stack, &dev);

    // Sized for a 2-core CI machine shared with other tests; exceeding it is a failure.
    let bound = Duration::from_secs(300);
    let started = Instant::now();
    let mut rng = rand::thread_rng();
    for i in 0..200 {
        assert!(
            started.elapsed() < bound,
            "kill -9 loop exceeded its bound of {bound:?} at iteration {i}"
        );
        if i % 25 == 0 {
            stack.run_task("blip", 2);
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
        dev.agent.kill9();
        dev.agent.start();
    }
    eprintln!("200 kills in {:?}", started.elapsed());
    check_containers(&stack, &dev);
    assert_same_process(&dev, &sleeper, before, "200 agent kills");
    check_delivery(&stack, &mut dev);
}

#[test]
fn containerd_restarted_while_tasks_change() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Declared before the device: dropped after it, so the agent's cleanup still reaches it.
    let mut cd = OwnContainerd::start(&tmp.path().join("containerd"));
    let stack = Stack::up(&tmp.path().join("hub"), &[]);
    workload(&stack, &harness::env().registry);
    let sock = cd.socket();
    let mut dev = Device::enroll(&stack, 63, "fcontainerd", |a| {
        let text = std::fs::read_to_string(&a.config).expect("agent config");
        let text = text.replace(
            &format!("socket = \"{}\"", a.containerd.display()),
            &format!("socket = \"{}\"", sock.display()),
        );
        std::fs::write(&a.config, text).expect("agent config");
        a.containerd = sock.clone();
    });
    let (sleeper, before) = start_sleeper(&stack, &dev);

    for round in 0..3 {
        stack.run_task("blip", 2);
        std::thread::sleep(Duration::from_millis(400 + round * 800));
        cd.kill();
        std::thread::sleep(Duration::from_secs(2));
        cd.restart();
    }
    check_containers(&stack, &dev);
    assert_same_process(&dev, &sleeper, before, "containerd restarts");
    check_delivery(&stack, &mut dev);
}

/// A network namespace with a veth pair to the host: HOST_IP on the host's end, NS_IP in
/// the namespace, a /30 of 10.231.0.0/16 per slot and nothing else routed.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn new(slot: u8) -> Self {
        let n = Netns {
            name: format!("skf{slot}-{}", std::process::id()),
            host_if: format!("skf{slot}h"),
            host_ip: format!("10.231.{slot}.1"),
        };
        let ns_if = format!("skf{slot}n");
        // Left over from an aborted run of this slot.
        let _ = Command::new("ip")
            .args(["link", "del", &n.host_if])
            .output();
        run(Command::new("ip").args(["netns", "add", &n.name]));
        run(Command::new("ip").args([
            "link", "add", &n.host_if, "type", "veth", "peer", "name", &ns_if, "netns", &n.name,
        ]));
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/30", n.host_ip),
            "dev",
            &n.host_if,
        ]));
        run(Command::new("ip").args(["link", "set", &n.host_if, "up"]));
        let ns = |args: &[&str]| {
            run(Command::new("ip").args(["-n", &n.name]).args(args));
        };
        ns(&["addr", "add", &format!("10.231.{slot}.2/30"), "dev", &ns_if]);
        ns(&["link", "set", &ns_if, "up"]);
        ns(&["link", "set", "lo", "up"]);
        n
    }

    fn set_link(&self, up: bool) {
        run(Command::new("ip").args([
            "link",
            "set",
            &self.host_if,
            if up { "up" } else { "down" },
        ]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Forwards TCP from `listen` to the same port on 127.0.0.1, where hub and broker listen:
/// the namespace reaches them only through the veth.
struct Proxy {
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(host: &str, port: u16) -> Self {
        let listener = TcpListener::bind((host, port))
            .unwrap_or_else(|e| panic!("proxy listen on {host}:{port}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        if let Ok(up) = TcpStream::connect(("127.0.0.1", port)) {
                            pipe(down, up);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Proxy { stop }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways until either side closes, then closes both.
fn pipe(a: TcpStream, b: TcpStream) {
    let pairs = [
        (a.try_clone(), b.try_clone()),
        (b.try_clone(), a.try_clone()),
    ];
    for (from, to) in pairs {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

#[test]
fn link_cut_in_a_network_namespace_never_stops_a_task() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let slot = 64;
    let netns = Netns::new(slot);
    // Devices are told to reach hub and broker at the host's end of the veth.
    let stack = Stack::up(
        &tmp.path().join("hub"),
        &[("HUB_ADVERTISE_HOST", netns.host_ip.as_str())],
    );
    let _reg = Proxy::start(
        &netns.host_ip,
        port_of(&stack.env["SKERRY_REGISTRATION_URL"]),
    );
    let _broker = Proxy::start(&netns.host_ip, port_of(&stack.env["SKERRY_BROKER"]));
    // The registry too: the namespace's loopback is its own.
    let registry_port = port_of(&harness::env().registry);
    let _registry = Proxy::start(&netns.host_ip, registry_port);
    let registry = format!("{}:{registry_port}", netns.host_ip);
    workload(&stack, &registry);
    let wrapper = tmp.path().join("agent-in-netns");
    let mut dev = Device::enroll(&stack, slot, "fnetns", |a| {
        let mut f = std::fs::File::create(&wrapper).expect("wrapper");
        writeln!(
            f,
            "#!/bin/sh\nexec nsenter --net=/run/netns/{} -- {} \"$@\"",
            netns.name,
            a.bin.display()
        )
        .expect("write wrapper");
        drop(f);
        run(Command::new("chmod").arg("755").arg(&wrapper));
        a.bin = wrapper.clone();
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(&a.config)
            .expect("agent config");
        writeln!(config, "[images]\ninsecure_registries = [\"{registry}\"]")
            .expect("write agent config");
    });
    let (sleeper, before) = start_sleeper(&stack, &dev);
    let (doomed, _) = start_sleeper(&stack, &dev);

    for (round, cut) in [8u64, 50].into_iter().enumerate() {
        let connects = log_count(&dev, "connected to the broker");
        stack.run_task("blip", 2);
        std::thread::sleep(Duration::from_millis(500));
        netns.set_link(false);
        // Work for the device while it is cut off: it arrives with the link.
        stack.run_task("blip", 2);
        if round == 0 {
            // So does a stop: the task runs on until the device hears of it.
            stack.aws(&[
                "ecs",
                "stop-task",
                "--cluster",
                "default",
                "--task",
                &doomed,
                "--reason",
                "stopped while away",
            ]);
            std::thread::sleep(Duration::from_secs(3));
            assert_eq!(
                dev.agent.task(&doomed).map(|t| t["lastStatus"].clone()),
                Some(json!("RUNNING")),
                "stopped before the link came back"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(cut);
        while Instant::now() < deadline {
            assert_same_process(&dev, &sleeper, before, "a cut link");
            std::thread::sleep(Duration::from_secs(2));
        }
        netns.set_link(true);
        if round == 0 {
            dev.agent.wait_task(&doomed, Duration::from_secs(120), |t| {
                t["lastStatus"] == "STOPPED"
            });
            wait("the hub seeing the stop", Duration::from_secs(60), || {
                let d = stack.aws(&[
                    "ecs",
                    "describe-tasks",
                    "--cluster",
                    "default",
                    "--tasks",
                    &doomed,
                ]);
                let t = &d["tasks"][0];
                if t["lastStatus"] == "STOPPED" && t["stoppedReason"] == "stopped while away" {
                    Ok(())
                } else {
                    Err(format!("{t:#}"))
                }
            });
        }
        if round == 1 {
            // Long enough for the broker to drop the session: the agent connects anew.
            wait("the agent reconnected", Duration::from_secs(120), || {
                if log_count(&dev, "connected to the broker") > connects {
                    Ok(())
                } else {
                    Err(dev.agent.log_tail())
                }
            });
        }
        check_containers(&stack, &dev);
    }
    assert_same_process(&dev, &sleeper, before, "cut links");
    check_delivery(&stack, &mut dev);
}

/// An ext4 filesystem in a file, loop-mounted: a data partition that can fill up.
struct LoopFs {
    mnt: PathBuf,
}

impl LoopFs {
    fn mount(image: &Path, mnt: &Path, mib: u64) -> Self {
        let f = std::fs::File::create(image).expect("image file");
        f.set_len(mib << 20).expect("size the image");
        drop(f);
        // No blocks reserved for root: the agent runs as root and would use them.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(image));
        std::fs::create_dir_all(mnt).expect("mount point");
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(mnt));
        LoopFs { mnt: mnt.into() }
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let path = self.mnt.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        for chunk in [1 << 20, 4096, 512] {
            let buf = vec![0u8; chunk];
            while f.write_all(&buf).and_then(|()| f.sync_data()).is_ok() {}
        }
        path
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

#[test]
fn data_directory_full_keeps_tasks_running_and_delivers_after() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stack = Stack::up(&tmp.path().join("hub"), &[]);
    workload(&stack, &harness::env().registry);
    // Declared before the device: unmounted after the agent is gone.
    let mut fs: Option<LoopFs> = None;
    let image = tmp.path().join("data.ext4");
    let mut dev = Device::enroll(&stack, 65, "fdiskfull", |a| {
        fs = Some(LoopFs::mount(&image, &a.data_dir(), 24));
    });
    let fs = fs.expect("mounted");
    let (sleeper, before) = start_sleeper(&stack, &dev);
    let blips_before = stack.run_task("blip", 2);
    for arn in &blips_before {
        dev.agent.wait_status(arn, "STOPPED");
    }

    let filler = fs.fill();
    // The device is asked for more while its disk is full, and its tasks change.
    let blips_full = stack.run_task("blip", 2);
    std::thread::sleep(Duration::from_secs(10));
    assert_same_process(&dev, &sleeper, before, "a full disk");
    // Still serving, and saying what is full.
    let ps = dev.agent.ps();
    assert!(
        ps.iter()
            .any(|t| t["taskArn"] == sleeper.as_str() && t["lastStatus"] == "RUNNING"),
        "{ps:#?}"
    );
    let log = dev.log();
    let full: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("No space left on device") || l.contains("disk full"))
        .collect();
    assert!(
        full.iter()
            .any(|l| l.contains(&*dev.agent.data_dir().to_string_lossy())),
        "the log does not say which file of the data directory is full:\n{}",
        dev.agent.log_tail()
    );

    std::fs::remove_file(&filler).expect("free the space");
    for arn in &blips_full {
        dev.agent.wait_task(arn, Duration::from_secs(120), |t| {
            t["lastStatus"] == "STOPPED"
        });
    }
    check_containers(&stack, &dev);
    assert_same_process(&dev, &sleeper, before, "a full disk");
    check_delivery(&stack, &mut dev);
}
