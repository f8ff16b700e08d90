//! The device's whole story in QEMU. The qemu-aarch64-virt card is built offline by
//! `scripts/image-build` from Debian's arm64 packages and provisioned with a real activation
//! (`skerry activation create`, `skerry image provision`) for a hub and Mosquitto that
//! `scripts/hub-up` runs on the host's loopback, advertised as 10.0.2.2; the test
//! environment's registry, also on loopback, is listed in the card's
//! `skerry/insecure-registries`. Booted with `scripts/qemu-run` (TCG), the console must show
//! the partitions mounted, every container module loaded, containerd serving and the agent
//! running; logged in on the serial console, the guest runs runc and legacy iptables and
//! reaches the host's loopback as 10.0.2.2. The first boot has no network at all (the NIC's
//! link is off from power-on): the card's bootstrap document (`skerry image bootstrap`)
//! runs its task from an arm64 image preloaded on the card (`skerry image preload`) under
//! a name no registry serves. The card boots through U-Boot with its boot state set as
//! after an update to slot B that never committed (one try left): U-Boot tries B, finds
//! no kernel, and falls back to A. Then, with the link on, through the hub:
//! - the device registers and is connected in `ListContainerInstances`, and the hub takes
//!   the bootstrap task on (its task definition is the hub's);
//! - its attributes show the OS version it was built as and slot A; it reported the
//!   rollback as an event, and committed slot A on the card once healthy (which U-Boot
//!   reads on the next boot);
//! - RunTask of an arm64 busybox task reaches RUNNING on it;
//! - with the link cut through the QEMU monitor (`set_link n0 off`) a container crashes and
//!   is restarted by its `restartPolicy`; the hub hears nothing until the link is back, then
//!   gets every buffered message, in the device's order, with no gap in its seqs;
//! - rebooted from its console with the link down, the device runs its task again without
//!   the hub, and the hub sees it RUNNING once the link is back.
//!
//! Needs qemu-system-arm, u-boot-qemu, u-boot-tools, mtools, genimage, squashfs-tools, kmod, cpio, xz-utils,
//! busybox-static, mosquitto and the aws CLI (scripts/setup), the test environment's
//! registry (`scripts/test-env`: $SKERRY_TEST_REGISTRY, with its arm64 busybox), and the
//! Debian mirror or a filled package cache ($SKERRY_IMAGE_CACHE, default
//! ~/.cache/skerry/image). The aarch64 agent comes from $SKERRY_AGENT_AARCH64, else
//! `scripts/build-agent aarch64` builds it; the hub and the CLI from $SKERRY_HUB_BIN and
//! $SKERRY_CLI_BIN, else next to this test.

mod stack;

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use skerry_agent::os::boot::{BootState, TRIES};
use skerry_agent::os::Slot;
use stack::{repo, Stack};

/// The guest's boot, from QEMU's start to the agent running, under TCG on a busy
/// two-core machine.
const BOOT: Duration = Duration::from_secs(240);
/// The OS version the card is built as; the device reports it.
const OS_VERSION: &str = "1.0-e2e";
/// Root's console password in the test; the card carries its hash
/// (`mkpasswd -m sha512 -S skerrytestsalt0 skerry-console`).
const CONSOLE_PASSWORD: &str = "skerry-console";
const CONSOLE_HASH: &str = "$6$skerrytestsalt0$gTI/YvmI5AcrkOGlYy1nuvIEWFd6rykXwYaY0tTBIe1JHNXg7ZsHt0Wm3/XhRs24YsZXkb.tSGO5Py0S8sWcJ0";

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

    /// Logs in as root (the image's only login) once the getty asks, with the password
    /// whose hash the test put on the card.
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
        let from = self.len();
        self.send("root");
        self.wait_from(from, "Password:", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no password prompt; console:\n{}", self.tail()));
        let from = self.len();
        self.send(CONSOLE_PASSWORD);
        self.wait_from(from, "BusyBox", Duration::from_secs(30))
            .unwrap_or_else(|| {
                panic!(
                    "the console password was refused; console:\n{}",
                    self.tail()
                )
            });
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
            if Instant::now() >= deadline {
                let tail = self.tail();
                let ps = self.run("skerry-agent ps --config /etc/skerry/agent.toml");
                let log = self.run("{ logread; cat /data/log/messages; } 2>/dev/null | tail -n 80");
                panic!(
                    "{cond:?} did not hold within {within:?}; console:\n{tail}\n\
                     skerry-agent ps:\n{ps}\nthe device's log:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// The first container instance of the default cluster, described.
fn first_instance(hub: &Stack) -> Option<Value> {
    // The cluster comes with the first device that registers in it.
    let clusters = hub.aws(&["ecs", "list-clusters"]);
    if !clusters.to_string().contains(":cluster/default\"") {
        return None;
    }
    hub.instances().into_iter().next()
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

/// On the guest: `task` (its id) and each of `containers` RUNNING, as the agent says.
fn all_running(task: &str, containers: &[&str]) -> String {
    let ps = "skerry-agent ps --config /etc/skerry/agent.toml";
    let mut cond = format!("{ps} | grep -Eq '^{task} +RUNNING '");
    // A task's containers are the lines right under it.
    let n = containers.len();
    for c in containers {
        cond.push_str(&format!(
            " && {ps} | grep -A{n} -E '^{task} ' | grep -Eq '^  {c} +RUNNING '"
        ));
    }
    cond
}

#[test]
fn qemu_device_registers_runs_tasks_and_survives_link_loss_and_reboot() {
    let registry = std::env::var("SKERRY_TEST_REGISTRY")
        .expect("SKERRY_TEST_REGISTRY: run scripts/test-env up DIR and source DIR/env");
    let port = registry
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .expect("SKERRY_TEST_REGISTRY is host:port");
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Stack::up(
        &dir.path().join("hub"),
        &[("HUB_ADVERTISE_HOST", "10.0.2.2")],
    );

    let out = dir.path().join("out");
    let mut build = Command::new(repo().join("scripts/image-build"));
    build
        .args([
            "--board",
            "qemu-aarch64-virt",
            "--no-xz",
            "--version",
            OS_VERSION,
        ])
        .arg("--out")
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
    hub.activation(1, &provision, &["--hub-url", &hub_url]);
    hub.skerry_ok(&[
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
    // Root's console password (locked without it): CONSOLE_PASSWORD's hash.
    let console_hash = dir.path().join("console-password-hash");
    std::fs::write(&console_hash, format!("{CONSOLE_HASH}\n")).expect("write");
    let boot = skerry_card::BootPartition::open(&img).expect("the card's boot partition");
    boot.put(&insecure, "skerry/insecure-registries")
        .and_then(|()| boot.put(&ntp, "skerry/ntp-servers"))
        .and_then(|()| boot.put(&console_hash, "skerry/console-password-hash"))
        .expect("write the card's settings");

    // For the first boot, which has no network: an arm64 image on the card under a name
    // no registry serves, and a bootstrap document with a task of it. The task definition
    // is registered with the hub first, as an owner would, so that the hub takes the task
    // on when the device reaches it.
    let boot_image = "preloaded.invalid/skerry/boot:1";
    let archive = dir.path().join("boot.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .args(["--override-arch", "arm64", "--override-os", "linux"])
        .arg(format!("docker://{registry}/busybox:latest"))
        .arg(format!("oci-archive:{}:{boot_image}", archive.display()))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy of the arm64 busybox: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let boot_def = json!({
        "family": "boot",
        "requiresCompatibilities": ["EXTERNAL"],
        "networkMode": "none",
        "memory": "32",
        "cpu": "128",
        "containerDefinitions": [{"name": "main", "image": boot_image, "essential": true,
            "command": ["sh", "-c", "echo booted offline; exec sleep 1000000"]}]
    });
    let boot_def_file = dir.path().join("boot-taskdef.json");
    std::fs::write(&boot_def_file, boot_def.to_string()).expect("write");
    let registered = hub.aws(&[
        "ecs",
        "register-task-definition",
        "--cli-input-json",
        &format!("file://{}", boot_def_file.display()),
    ]);
    let boot_def_arn = registered["taskDefinition"]["taskDefinitionArn"]
        .as_str()
        .expect("taskDefinitionArn")
        .to_string();
    let (prefix, _) = boot_def_arn
        .split_once(":task-definition/")
        .expect("a task definition ARN");
    let boot_id = "bootstrap-main";
    let boot_arn = format!("{prefix}:task/default/{boot_id}");
    let bootstrap = json!({"generation": 0, "tasks": [{
        "taskArn": boot_arn,
        "taskDefinition": registered["taskDefinition"],
        "desiredStatus": "RUNNING"}]});
    let bootstrap_file = dir.path().join("bootstrap.json");
    std::fs::write(&bootstrap_file, bootstrap.to_string()).expect("write");
    let img_arg = img.to_str().expect("utf-8 path");
    hub.skerry_ok(&[
        "image",
        "preload",
        img_arg,
        archive.to_str().expect("utf-8 path"),
    ]);
    hub.skerry_ok(&[
        "image",
        "bootstrap",
        img_arg,
        "--file",
        bootstrap_file.to_str().expect("utf-8 path"),
    ]);

    // The boot state after an update to slot B that never committed, with one try left:
    // U-Boot tries B (which has no kernel on this card), spends the try, and boots A; the
    // agent on A reports the rollback and, once healthy, commits A.
    skerry_agent::os::boot::write(
        &img,
        &BootState {
            first: Slot::B,
            a_left: 3,
            b_left: 1,
        },
    )
    .expect("write the card's boot state");

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
        // Stopped before the first instruction, so that the link is off from power-on.
        .args(["--", "-S"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("run scripts/qemu-run");
    let mut guest = Guest(child);
    let up = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "no QEMU monitor at {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let answer = monitor(&sock, "set_link n0 off");
    assert!(!answer.contains("not found"), "set_link n0 off: {answer}");
    monitor(&sock, "cont");

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
    // Through U-Boot: B tried and given up, A booted with its slot on the command line.
    for want in [
        "skerry: booting slot B (tries left: A 3, B 0; order B A)",
        "skerry: slot B does not boot",
        "skerry: booting slot A (tries left: A 2, B 0; order B A)",
        "root=PARTUUID=536b7279-02 rootfstype=squashfs ro rootwait skerry.slot=A",
    ] {
        assert!(
            console.contains(want),
            "no {want:?} on the console:\n{console}"
        );
    }
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
    // The first boot, with no network at all: the bootstrap task runs from the image
    // preloaded on the card (no registry could serve it, and none is reachable).
    con.until(&all_running(boot_id, &["main"]), Duration::from_secs(180));
    eprintln!("bootstrap task RUNNING offline after {:?}", start.elapsed());
    con.until(
        &format!("skerry-agent logs --config /etc/skerry/agent.toml {boot_id} main | grep -q '^booted offline'"),
        Duration::from_secs(30),
    );
    con.until(
        "{ logread; cat /data/log/messages; } 2>/dev/null | grep -q 'preloaded images imported'",
        Duration::from_secs(30),
    );
    let out = con.run("ip link show eth0");
    assert!(
        out.contains("NO-CARRIER") || out.contains("state DOWN"),
        "the link is up on the first boot: {out}"
    );
    assert!(
        first_instance(&hub).is_none(),
        "the device registered with its link off"
    );
    let answer = monitor(&sock, "set_link n0 on");
    assert!(!answer.contains("not found"), "set_link n0 on: {answer}");

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
        "for i in $(seq 40); do nc 10.0.2.2 {nc_port} </dev/null | grep hello && break; sleep 1; done"
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
        || first_instance(&hub).filter(|i| i["agentConnected"] == true && i["status"] == "ACTIVE"),
    );
    let id = instance["ec2InstanceId"]
        .as_str()
        .expect("ec2InstanceId")
        .to_string();
    eprintln!("{id} connected after {:?}", start.elapsed());
    // The hub took the bootstrap task on: wanted RUNNING, of its definition, on this device.
    let boot = wait(
        "the bootstrap task at the hub",
        Duration::from_secs(120),
        || Some(hub.task(&boot_arn)).filter(|t| t["lastStatus"] == "RUNNING"),
    );
    assert_eq!(boot["desiredStatus"], "RUNNING", "{boot:#}");
    assert_eq!(boot["taskDefinitionArn"], boot_def_arn.as_str(), "{boot:#}");
    assert_eq!(
        boot["containerInstanceArn"], instance["containerInstanceArn"],
        "{boot:#}"
    );
    // The OS it booted, as the device reports it: version and slot as ECS attributes.
    let attribute = |name: &str| {
        instance["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["name"] == name))
            .and_then(|a| a["value"].as_str())
            .map(str::to_string)
    };
    assert_eq!(
        attribute("skerry.os.version").as_deref(),
        Some(OS_VERSION),
        "{instance:#}"
    );
    assert_eq!(
        attribute("skerry.os.slot").as_deref(),
        Some("A"),
        "{instance:#}"
    );
    // The rollback U-Boot made, reported by the device on its own.
    let rollback = wait(
        "the OS rollback at the hub",
        Duration::from_secs(60),
        || {
            hub.events(&id)
                .into_iter()
                .find(|e| e["kind"] == "osRolledBack")
        },
    );
    assert!(
        rollback["message"]
            .as_str()
            .is_some_and(|m| m.contains("slot B did not commit") && m.contains("booted slot A")),
        "{rollback:#}"
    );
    // Healthy (its task RUNNING), the device committed slot A on the card by itself: first
    // in the order, all its tries back; B stays skipped.
    let committed = wait(
        "slot A committed on the card",
        Duration::from_secs(120),
        || {
            skerry_agent::os::boot::read(&img)
                .ok()
                .filter(|s| s.first == Slot::A)
        },
    );
    assert_eq!(
        committed,
        BootState {
            first: Slot::A,
            a_left: TRIES,
            b_left: 0
        }
    );

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
    // `skerry call`: Debian's aws CLI 2.9 does not know `restartPolicy`.
    hub.skerry_ok(&[
        "call",
        "ecs",
        "RegisterTaskDefinition",
        "--input",
        &taskdef_file.to_string_lossy(),
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
    let task_id = task_arn.rsplit('/').next().expect("a task id").to_string();
    let e2e_running = all_running(&task_id, &["app", "crasher"]);

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
        // 61 s of the container's own, then its exit and restart: about 75 s under TCG,
        // more on a loaded machine.
        Duration::from_secs(180),
    );
    con.until(&e2e_running, Duration::from_secs(60));
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
        || first_instance(&hub).filter(|i| i["agentConnected"] == true),
    );

    // A clean reboot with the link down: the task comes back without the hub.
    let answer = monitor(&sock, "set_link n0 off");
    assert!(!answer.contains("not found"), "set_link n0 off: {answer}");
    let high = hub.events(&id).iter().filter_map(seq).max();
    con.send("reboot");
    // U-Boot reads the state the agent committed.
    con.wait_for(
        "skerry: booting slot A (tries left: A 2, B 0; order A B)",
        BOOT,
    );
    con.wait_for("Run /init as init process", BOOT);
    let rebooted = Instant::now();
    con.login(BOOT);
    con.until(&e2e_running, Duration::from_secs(180));
    con.until(&all_running(boot_id, &["main"]), Duration::from_secs(60));
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
            let i = first_instance(&hub)?;
            let ev = hub.events(&id);
            (i["agentConnected"] == true && ev.iter().filter_map(seq).max() > high).then_some(())
        },
    );
    // The backlog arrives in order, so the latest reports may still be on their way.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let task = hub.task(&task_arn);
        let boot = hub.task(&boot_arn);
        let containers_running = task["containers"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["lastStatus"] == "RUNNING"));
        if task["lastStatus"] == "RUNNING" && containers_running && boot["lastStatus"] == "RUNNING"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hub shows no RUNNING tasks 120 s after the device came back:\n{task:#}\n{boot:#}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_device_order(&hub.events(&id));
    eprintln!("the whole story took {:?}", start.elapsed());
    drop(guest);
}
