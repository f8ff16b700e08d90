//! The device's whole story in QEMU. The qemu-aarch64-virt card is built offline by
//! `scripts/image-build` from Debian's arm64 packages and provisioned with a real activation
//! (`skerry activation create`, `skerry image provision`) for a hub and Mosquitto that
//! `scripts/hub-up` runs on the host's loopback, advertised as 10.0.2.2; the test
//! environment's registry, also on loopback, is listed in the card's
//! `skerry/insecure-registries`. Booted with `scripts/qemu-run` (TCG), the console must show
//! the partitions mounted, every container module loaded, containerd serving and the agent
//! running; logged in on the serial console, the guest runs runc and legacy iptables and
//! reaches the host's loopback as 10.0.2.2. Then, through the hub:
//! - the device registers and is connected in `ListContainerInstances`;
//! - RunTask of an arm64 busybox task reaches RUNNING on it;
//! - with the link cut through the QEMU monitor (`set_link n0 off`) a container crashes and
//!   is restarted by its `restartPolicy`; the hub hears nothing until the link is back, then
//!   gets every buffered message, in the device's order, with no gap in its seqs;
//! - rebooted from its console with the link down, the device runs its task again without
//!   the hub, and the hub sees it RUNNING once the link is back.
//!
//! Needs qemu-system-arm, mtools, genimage, squashfs-tools, kmod, cpio, xz-utils,
//! busybox-static, mosquitto and the aws CLI (scripts/setup), the test environment's
//! registry (`scripts/test-env`: $SKERRY_TEST_REGISTRY, with its arm64 busybox), and the
//! Debian mirror or a filled package cache ($SKERRY_IMAGE_CACHE, default
//! ~/.cache/skerry/image). The aarch64 agent comes from $SKERRY_AGENT_AARCH64, else
//! `scripts/build-agent aarch64` builds it; the hub and the CLI from $SKERRY_HUB_BIN and
//! $SKERRY_CLI_BIN, else next to this test.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The guest's boot, from QEMU's start to the agent running, under TCG on a busy
/// two-core machine.
const BOOT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// QEMU in its own process group, ended with the group when the test ends.
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg("--")
            .arg(format!("-{}", self.0.id()))
            .status();
        let _ = self.0.wait();
    }
}

/// Sends one monitor command and returns what QEMU answers until its next prompt.
fn monitor(sock: &Path, cmd: &str) -> String {
    let mut s = UnixStream::connect(sock).expect("connect to the QEMU monitor");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let until_prompt = |r: &mut BufReader<UnixStream>| {
        let mut got = Vec::new();
        while !got.ends_with(b"(qemu) ") {
            let mut b = [0u8; 1];
            r.read_exact(&mut b).expect("read the monitor");
            got.push(b[0]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    until_prompt(&mut r);
    s.write_all(format!("{cmd}\n").as_bytes())
        .expect("write the monitor");
    until_prompt(&mut r)
}

/// The guest's serial console, through qemu-run's --console socket. A thread reads it all
/// the time: QEMU stops the guest's serial output while a connected reader does not read,
/// and the agent, which logs to the console, would stop with it.
struct Console {
    sock: UnixStream,
    seen: Arc<Mutex<String>>,
}

impl Console {
    fn connect(path: &Path) -> Console {
        let sock = UnixStream::connect(path).expect("connect to the guest's console");
        let seen = Arc::new(Mutex::new(String::new()));
        let mut reader = sock.try_clone().expect("clone the console socket");
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                into.lock().expect("console lock").push_str(&text);
            }
        });
        Console { sock, seen }
    }

    fn len(&self) -> usize {
        self.seen.lock().expect("console lock").len()
    }

    /// What came since `from`.
    fn since(&self, from: usize) -> String {
        self.seen.lock().expect("console lock")[from..].to_string()
    }

    /// The console's last few thousand bytes, for a failure's message.
    fn tail(&self) -> String {
        let seen = self.seen.lock().expect("console lock");
        let mut from = seen.len().saturating_sub(4000);
        while !seen.is_char_boundary(from) {
            from += 1;
        }
        seen[from..].to_string()
    }

    fn send(&mut self, line: &str) {
        self.sock
            .write_all(format!("{line}\r").as_bytes())
            .expect("write the console");
    }

    /// Waits until `needle` shows after `from`; returns what came.
    fn wait_from(&self, from: usize, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.since(from);
            if got.contains(needle) {
                return Some(got);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `needle` shows (after what was already seen); returns what came.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let from = self.len();
        self.wait_from(from, needle, within).unwrap_or_else(|| {
            panic!(
                "no {needle:?} on the console within {within:?}; got:\n{}",
                self.tail()
            )
        })
    }

    /// Runs `cmd` in the guest's shell and returns its output. The end marker is
    /// computed by the shell, so the echoed command line does not match it.
    fn run(&mut self, cmd: &str) -> String {
        let from = self.len();
        self.send(&format!("{cmd}; echo EN$((40+2))D"));
        self.wait_from(from, "EN42D", Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{cmd:?} did not finish; console:\n{}", self.tail()))
    }

    /// Logs in as root (the image's only login) once the getty asks.
    fn login(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let from = self.len();
            self.send("");
            if self
                .wait_from(from, "login:", Duration::from_secs(5))
                .is_some()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no login prompt within {within:?}; console:\n{}",
                self.tail()
            );
        }
        self.send("root");
        self.wait_for("BusyBox", Duration::from_secs(30));
    }

    /// Runs the shell condition `cond` until it holds.
    fn until(&mut self, cond: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self
                .run(&format!("if {cond}; then echo HO$((40+2))LDS; fi"))
                .contains("HO42LDS")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{cond:?} did not hold within {within:?}; console:\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// A workspace binary: from `var` when set (scripts/test sets them), else next to this test.
fn binary(var: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/debug/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build it (`cargo build -p skerry-hub -p skerry-cli`) or set {var}",
        p.display()
    );
    p
}

/// The hub and its broker on the host's loopback, advertised to the guest as 10.0.2.2.
struct Hub {
    dir: PathBuf,
    env: HashMap<String, String>,
}

impl Hub {
    fn up(dir: &Path) -> Hub {
        let out = Command::new(repo().join("scripts/hub-up"))
            .arg(dir)
            .env("SKERRY_HUB_BIN", binary("SKERRY_HUB_BIN", "skerry-hub"))
            .env("HUB_ADVERTISE_HOST", "10.0.2.2")
            .output()
            .expect("run scripts/hub-up");
        assert!(
            out.status.success(),
            "hub-up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.join("env")).expect("hub-up writes DIR/env");
        let env = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Hub {
            dir: dir.to_path_buf(),
            env,
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(&self.env)
            .env("AWS_CONFIG_FILE", self.dir.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.join("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env_remove("AWS_PROFILE");
        cmd
    }

    fn aws(&self, args: &[&str]) -> Value {
        let out = self
            .command(Path::new("aws"))
            .args(["--output", "json"])
            .args(args)
            .output()
            .expect("run the aws CLI");
        assert!(
            out.status.success(),
            "aws {args:?} failed: {}\nhub log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).expect("aws prints JSON")
    }

    fn skerry(&self, args: &[&str]) -> Output {
        let out = self
            .command(&binary("SKERRY_CLI_BIN", "skerry"))
            .args(args)
            .output()
            .expect("run skerry");
        assert!(
            out.status.success(),
            "skerry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("hub.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn instance(&self) -> Option<Value> {
        let arns = self.aws(&["ecs", "list-container-instances", "--cluster", "default"]);
        let arn = arns["containerInstanceArns"][0].as_str()?.to_string();
        let out = self.aws(&[
            "ecs",
            "describe-container-instances",
            "--cluster",
            "default",
            "--container-instances",
            &arn,
        ]);
        Some(out["containerInstances"][0].clone())
    }

    fn task(&self, arn: &str) -> Value {
        let out = self.aws(&[
            "ecs",
            "describe-tasks",
            "--cluster",
            "default",
            "--tasks",
            arn,
        ]);
        out["tasks"][0].clone()
    }

    /// The device's events as the hub stored them, in the hub's order.
    fn events(&self, instance: &str) -> Vec<Value> {
        let out = self.skerry(&["events", "--instance", instance, "--json"]);
        serde_json::from_slice(&out.stdout).expect("skerry events prints JSON")
    }

    fn down(&self) {
        let _ = Command::new(repo().join("scripts/hub-down"))
            .arg(&self.dir)
            .status();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.down();
    }
}

/// Polls `probe` every 2 s until it returns Some.
fn wait<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The crashing container's message in a taskState event: `crasher STOPPED exit 3`.
fn crashed(e: &Value) -> bool {
    e["kind"] == "taskState"
        && e["message"]
            .as_str()
            .is_some_and(|m| m.contains("crasher STOPPED exit 3"))
}

/// The agent's own event for the restart: `containerRestarted` of crasher, exit code 3.
fn restarted(e: &Value) -> bool {
    e["kind"] == "containerRestarted"
        && e["container"] == "crasher"
        && e["message"]
            .as_str()
            .is_some_and(|m| m.contains("exited with code 3"))
}

fn seq(e: &Value) -> Option<u64> {
    e["seq"].as_u64()
}

/// What the hub stored from the device: seqs never going back in the hub's order (the events
/// one message makes, a full state's task reports and itself, share its seq and time), the
/// device's clock never going back, and no seq the hub found missing or the device dropped.
fn assert_device_order(events: &[Value]) {
    let from_device: Vec<&Value> = events.iter().filter(|e| seq(e).is_some()).collect();
    for w in from_device.windows(2) {
        let (a, b) = (w[0]["time"].as_f64(), w[1]["time"].as_f64());
        assert!(
            seq(w[0]) < seq(w[1]) || (seq(w[0]) == seq(w[1]) && a == b),
            "seqs out of order: {} then {}\n{events:#?}",
            w[0],
            w[1]
        );
        assert!(
            a.is_some() && a <= b,
            "device time went back: {} then {}",
            w[0],
            w[1]
        );
    }
    let bad: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "seqGap" || e["kind"] == "dropped")
        .collect();
    assert!(bad.is_empty(), "messages lost: {bad:#?}");
}

/// On the guest: the task and both its containers RUNNING, as the agent says.
const ALL_RUNNING: &str =
    "[ \"$(skerry-agent ps --config /etc/skerry/agent.toml | grep -c ' RUNNING ')\" -ge 3 ]";

#[test]
fn qemu_device_registers_runs_tasks_and_survives_link_loss_and_reboot() {
    let registry = std::env::var("SKERRY_TEST_REGISTRY")
        .expect("SKERRY_TEST_REGISTRY: run scripts/test-env up DIR and source DIR/env");
    let port = registry
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .expect("SKERRY_TEST_REGISTRY is host:port");
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::up(&dir.path().join("hub"));

    let out = dir.path().join("out");
    let mut build = Command::new(repo().join("scripts/image-build"));
    build
        .args(["--board", "qemu-aarch64-virt", "--no-xz", "--out"])
        .arg(&out);
    if let Ok(agent) = std::env::var("SKERRY_AGENT_AARCH64") {
        build.arg("--agent").arg(agent);
    }
    if let Ok(cache) = std::env::var("SKERRY_IMAGE_CACHE") {
        build.arg("--cache").arg(cache);
    }
    let status = build.status().expect("run scripts/image-build");
    assert!(status.success(), "scripts/image-build failed: {status}");
    let img = out.join("sdcard.img");

    // A real activation, made and written to the card with the CLI, as an owner would.
    let provision = dir.path().join("provision.toml");
    let hub_url = hub.env["SKERRY_REGISTRATION_URL"].clone();
    assert!(hub_url.starts_with("https://10.0.2.2:"), "{hub_url}");
    hub.skerry(&[
        "activation",
        "create",
        "--cluster",
        "default",
        "--limit",
        "1",
        "--expires",
        "1h",
        "--hub-url",
        &hub_url,
        "-o",
        provision.to_str().expect("utf-8 path"),
    ]);
    hub.skerry(&[
        "image",
        "provision",
        img.to_str().expect("utf-8 path"),
        "--file",
        provision.to_str().expect("utf-8 path"),
    ]);
    let guest_registry = format!("10.0.2.2:{port}");
    let insecure = dir.path().join("insecure-registries");
    std::fs::write(&insecure, format!("{guest_registry}\n")).expect("write");
    // NTP from the host's loopback too: the guest talks to nothing else.
    let ntp = dir.path().join("ntp-servers");
    std::fs::write(&ntp, "10.0.2.2\n").expect("write");
    let boot = skerry_image::BootPartition::open(&img).expect("the card's boot partition");
    boot.put(&insecure, "skerry/insecure-registries")
        .and_then(|()| boot.put(&ntp, "skerry/ntp-servers"))
        .expect("write the card's settings");

    let log = dir.path().join("console.log");
    let sock = dir.path().join("monitor.sock");
    let console_sock = dir.path().join("console.sock");
    let child = Command::new(repo().join("scripts/qemu-run"))
        .arg("--log")
        .arg(&log)
        .arg("--console")
        .arg(&console_sock)
        .arg("--monitor")
        .arg(&sock)
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("run scripts/qemu-run");
    let mut guest = Guest(child);

    let wanted = [
        "Run /init as init process",
        "containerd successfully booted",
        "skerry-agent:",
        "registering with the hub",
    ];
    let start = Instant::now();
    let console = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if wanted.iter().all(|w| text.contains(w)) {
            break text;
        }
        if let Some(status) = guest.0.try_wait().expect("wait") {
            panic!("QEMU exited ({status}) before the agent ran; console:\n{text}");
        }
        assert!(
            start.elapsed() < BOOT,
            "no {:?} on the console within {BOOT:?}; console:\n{text}",
            wanted.iter().find(|w| !text.contains(*w))
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("guest booted to the agent in {:?}", start.elapsed());
    for bad in [
        "cannot mount",
        "not available:",
        "initramfs:",
        "in memory this time",
    ] {
        let line = console.lines().find(|l| l.contains(bad));
        assert!(line.is_none(), "console: {line:?}\n{console}");
    }
    assert!(
        !console.contains("/boot failed"),
        "the boot partition did not mount:\n{console}"
    );

    let mut con = Console::connect(&console_sock);
    con.login(Duration::from_secs(60));
    // The provisioning file, where the agent's configuration says it is.
    let out = con.run("cat /boot/skerry/provision.toml");
    assert!(out.contains(&format!("hub_url = \"{hub_url}\"")), "{out}");
    // runc and iptables with their shared libraries and iptables' plugins.
    let out = con.run("runc --version && iptables -t nat -A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE && iptables -t nat -S POSTROUTING");
    assert!(out.contains("runc version"), "{out}");
    assert!(
        out.contains("-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE"),
        "{out}"
    );
    // DHCP from QEMU's user-mode network, and the host's loopback as 10.0.2.2.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let nc_port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"hello-from-the-host\n");
        }
    });
    let out = con.run(&format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do nc 10.0.2.2 {nc_port} </dev/null | grep hello && break; sleep 1; done"
    ));
    assert!(out.contains("hello-from-the-host"), "{out}");
    // The guest's NIC is n0 for the monitor (a name QEMU does not know is refused).
    let info = monitor(&sock, "info network");
    assert!(info.contains("n0: index=0,type=user"), "{info}");
    let answer = monitor(&sock, "set_link n1 off");
    assert!(answer.contains("not found"), "set_link n1: {answer}");

    // Registered and connected, as the hub's API says.
    let instance = wait(
        "the device connected in ListContainerInstances",
        Duration::from_secs(180),
        || {
            hub.instance()
                .filter(|i| i["agentConnected"] == true && i["status"] == "ACTIVE")
        },
    );
    let id = instance["ec2InstanceId"]
        .as_str()
        .expect("ec2InstanceId")
        .to_string();
    eprintln!("{id} connected after {:?}", start.elapsed());
    // The agent scrubbed the activation code once registered.
    let out = con.run("cat /boot/skerry/provision.toml");
    assert!(!out.contains("activation_code ="), "{out}");

    // An arm64 task through the hub: a long-running container, and one that exits with 3
    // when told to (a file in a host volume), once it has run the 60 s its restartPolicy
    // asks before a restart.
    let image = format!("{guest_registry}/busybox:latest");
    let taskdef = json!({
        "family": "e2e",
        "requiresCompatibilities": ["EXTERNAL"],
        "memory": "64",
        "cpu": "128",
        "volumes": [{"name": "trigger", "host": {"sourcePath": "/run/e2e"}}],
        "containerDefinitions": [
            {"name": "app", "image": image, "essential": true, "command": ["sleep", "1000000"]},
            {"name": "crasher", "image": image, "essential": false,
             "command": ["sh", "-c",
                "sleep 61; while [ ! -e /trigger/crash ]; do sleep 1; done; rm -f /trigger/crash; exit 3"],
             "mountPoints": [{"sourceVolume": "trigger", "containerPath": "/trigger"}],
             "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60}}
        ]
    });
    let taskdef_file = dir.path().join("taskdef.json");
    std::fs::write(&taskdef_file, taskdef.to_string()).expect("write");
    hub.aws(&[
        "ecs",
        "register-task-definition",
        "--cli-input-json",
        &format!("file://{}", taskdef_file.display()),
    ]);
    let out = hub.aws(&[
        "ecs",
        "run-task",
        "--cluster",
        "default",
        "--task-definition",
        "e2e",
        "--launch-type",
        "EXTERNAL",
    ]);
    assert_eq!(out["failures"], json!([]), "{out}");
    let task_arn = out["tasks"][0]["taskArn"]
        .as_str()
        .expect("taskArn")
        .to_string();
    let task = wait("the task RUNNING", Duration::from_secs(240), || {
        Some(hub.task(&task_arn)).filter(|t| t["lastStatus"] == "RUNNING")
    });
    assert_eq!(
        task["containerInstanceArn"],
        instance["containerInstanceArn"]
    );
    eprintln!("task RUNNING after {:?}", start.elapsed());

    // The link cut: the container crashes and is restarted on the device alone.
    let before = hub.events(&id);
    let high = before
        .iter()
        .filter_map(seq)
        .max()
        .expect("events with seqs");
    let answer = monitor(&sock, "set_link n0 off");
    assert!(!answer.contains("not found"), "set_link n0 off: {answer}");
    let cut = Instant::now();
    con.run("mkdir -p /run/e2e && touch /run/e2e/crash");
    con.until(
        "{ logread; cat /data/log/messages; } 2>/dev/null | grep -q 'restarting container'",
        Duration::from_secs(120),
    );
    con.until(ALL_RUNNING, Duration::from_secs(60));
    // Nothing of it reached the hub while the link was down.
    let during = hub.events(&id);
    assert!(
        !during.iter().any(crashed),
        "the hub heard of the crash: {during:#?}"
    );
    eprintln!("restarted offline, {:?} after the cut", cut.elapsed());

    let answer = monitor(&sock, "set_link n0 on");
    assert!(!answer.contains("not found"), "set_link n0 on: {answer}");
    // Every buffered message, in order: the crash, then the container running again.
    let events = wait(
        "the buffered events at the hub",
        Duration::from_secs(180),
        || {
            let ev = hub.events(&id);
            let crash = ev.iter().position(crashed)?;
            (ev[crash..].iter().any(|e| {
                e["kind"] == "taskState"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("crasher RUNNING"))
            }) && ev.iter().any(restarted))
            .then_some(ev)
        },
    );
    assert_device_order(&events);
    let crash = events.iter().find(|e| crashed(e)).expect("the crash");
    assert!(seq(crash) > Some(high), "{crash} was not buffered");
    let event = events.iter().find(|e| restarted(e)).expect("the restart");
    assert!(seq(event) > Some(high), "{event} was not buffered");
    wait(
        "the device connected again",
        Duration::from_secs(120),
        || hub.instance().filter(|i| i["agentConnected"] == true),
    );

    // A clean reboot with the link down: the task comes back without the hub.
    let answer = monitor(&sock, "set_link n0 off");
    assert!(!answer.contains("not found"), "set_link n0 off: {answer}");
    let high = hub.events(&id).iter().filter_map(seq).max();
    con.send("reboot");
    con.wait_for("Run /init as init process", BOOT);
    let rebooted = Instant::now();
    con.login(BOOT);
    con.until(ALL_RUNNING, Duration::from_secs(180));
    eprintln!("task back after the reboot in {:?}", rebooted.elapsed());
    let ps = con.run("skerry-agent ps --config /etc/skerry/agent.toml");
    assert!(ps.contains("  app ") && ps.contains("  crasher "), "{ps}");
    let out = con.run("ip link show eth0");
    assert!(
        out.contains("NO-CARRIER") || out.contains("state DOWN"),
        "the link is up: {out}"
    );

    let answer = monitor(&sock, "set_link n0 on");
    assert!(!answer.contains("not found"), "set_link n0 on: {answer}");
    wait(
        "the hub hearing from the rebooted device",
        Duration::from_secs(180),
        || {
            let i = hub.instance()?;
            let ev = hub.events(&id);
            (i["agentConnected"] == true && ev.iter().filter_map(seq).max() > high).then_some(())
        },
    );
    let task = hub.task(&task_arn);
    assert_eq!(task["lastStatus"], "RUNNING", "{task:#}");
    assert!(
        task["containers"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["lastStatus"] == "RUNNING")),
        "{task:#}"
    );
    assert_device_order(&hub.events(&id));
    eprintln!("the whole story took {:?}", start.elapsed());
    drop(guest);
}
