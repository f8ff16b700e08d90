//! Drives a real `skerry-agent run` against the test environment's containerd and registry
//! (`scripts/test-env up DIR`, then `source DIR/env`). Each test takes a distinct `slot`,
//! which gives it its own containerd namespace, bridge and subnet, so tests run in parallel.
#![allow(dead_code)]

pub mod containerd;
pub mod hub;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Env {
    pub containerd: PathBuf,
    pub registry: String,
    pub images: PathBuf,
    pub agent_bin: PathBuf,
}

pub fn env() -> Env {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("{k} is not set: run `scripts/test-env up DIR && source DIR/env` first (scripts/test does both)")
        })
    };
    Env {
        containerd: var("SKERRY_TEST_CONTAINERD").into(),
        registry: var("SKERRY_TEST_REGISTRY"),
        images: var("SKERRY_TEST_IMAGES").into(),
        // Containers run the agent as init and log driver, so prefer the static build. The
        // end-to-end tests (another package) share this harness and have only the variable.
        agent_bin: std::env::var("SKERRY_AGENT_BIN")
            .map(PathBuf::from)
            .ok()
            .or_else(|| option_env!("CARGO_BIN_EXE_skerry-agent").map(PathBuf::from))
            .expect("SKERRY_AGENT_BIN is not set: point it at a built skerry-agent"),
    }
}

pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub ns: String,
    pub containerd: PathBuf,
    pub bin: PathBuf,
    pub log: PathBuf,
    pub registry: String,
    child: Option<Child>,
    generation: u64,
}

impl Agent {
    pub fn new(slot: u8, name: &str) -> Self {
        let e = env();
        Self::with(slot, name, &e.containerd, "")
    }

    /// An agent on the given containerd socket, with `extra` TOML appended to its config.
    pub fn with(slot: u8, name: &str, containerd: &Path, extra: &str) -> Self {
        Self::configured(slot, name, containerd, "", extra)
    }

    /// An agent with `top` as top-level keys of its config (before any table) and `extra`
    /// TOML appended.
    pub fn with_top(slot: u8, name: &str, top: &str, extra: &str) -> Self {
        let e = env();
        Self::configured(slot, name, &e.containerd, top, extra)
    }

    fn configured(slot: u8, name: &str, containerd: &Path, top: &str, extra: &str) -> Self {
        let e = env();
        let dir = tempfile::Builder::new()
            .prefix(&format!("skerry-{name}-"))
            .tempdir()
            .expect("tempdir");
        // runc keeps state per namespace under /run; a fresh namespace per run keeps an
        // earlier, aborted run from getting in the way.
        let ns = format!("skt-{slot}-{name}-{}", std::process::id());
        let config = dir.path().join("agent.toml");
        let text = format!(
            r#"data_dir = "{data}"
{top}
[containerd]
socket = "{sock}"
namespace = "{ns}"
[network]
bridge = "skt{slot}"
subnet = "10.220.{slot}.0/24"
netns_dir = "{netns}"
{extra}
"#,
            data = dir.path().join("data").display(),
            sock = containerd.display(),
            netns = dir.path().join("netns").display(),
        );
        std::fs::write(&config, text).expect("write config");
        Self {
            log: dir.path().join("agent.log"),
            dir,
            config,
            ns,
            containerd: containerd.into(),
            bin: e.agent_bin,
            registry: e.registry,
            child: None,
            generation: 0,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn start(&mut self) {
        let sock = self.data_dir().join("agent.sock");
        // A killed agent leaves its socket behind; wait for the new one's.
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("SKERRY_LOG", "info,skerry_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn skerry-agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("agent exited with {status}:\n{}", self.log_tail());
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent socket never appeared:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the agent is running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn cli(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(args[0])
            .arg("--config")
            .arg(&self.config)
            .args(&args[1..]);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run skerry-agent cli");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        let out = child.wait_with_output().expect("cli output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The generation for a document this test builds itself.
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Applies `tasks` as the next generation; returns the CLI's error text on failure.
    pub fn apply(&mut self, tasks: Vec<Value>) -> Result<String, String> {
        let doc = json!({"generation": self.next_generation(), "tasks": tasks});
        self.apply_raw(&doc.to_string())
    }

    pub fn apply_raw(&self, text: &str) -> Result<String, String> {
        let (ok, out, err) = self.cli(&["apply", "-"], Some(text));
        if ok {
            Ok(out)
        } else {
            Err(err)
        }
    }

    pub fn ps(&self) -> Vec<Value> {
        let (ok, out, err) = self.cli(&["ps", "--json"], None);
        assert!(ok, "ps failed: {err}\n{}", self.log_tail());
        serde_json::from_str(&out).expect("ps --json output is JSON")
    }

    pub fn task(&self, arn: &str) -> Option<Value> {
        self.ps().into_iter().find(|t| t["taskArn"] == arn)
    }

    /// Polls `ps` until `pred` holds for the task, or panics with what was seen.
    pub fn wait_task(&self, arn: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.task(arn);
            if let Some(t) = &t {
                if pred(t) {
                    return t.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "task {arn} did not reach the expected state in {timeout:?}; last seen:\n{}\nagent log:\n{}",
                    serde_json::to_string_pretty(&t).unwrap_or_default(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn wait_status(&self, arn: &str, status: &str) -> Value {
        self.wait_task(arn, Duration::from_secs(90), |t| t["lastStatus"] == status)
    }

    pub fn logs(&self, task: &str, container: &str) -> String {
        let (ok, out, err) = self.cli(&["logs", task, container], None);
        assert!(ok, "logs failed: {err}");
        out
    }

    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.containerd)
            .args(["-n", &self.ns])
            .args(args)
            .output()
            .expect("run ctr");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Ids of every container in the agent's namespace.
    pub fn containers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ctr(&["containers", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .filter(|s| !s.is_empty())
            .collect();
        v.sort();
        v
    }

    /// Stops every task through the agent and checks nothing is left behind.
    pub fn finish(mut self) {
        self.apply(vec![]).expect("apply the empty document");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let tasks = self.ps();
            let done = tasks.iter().all(|t| t["lastStatus"] == "STOPPED");
            if done && self.containers().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tasks did not all stop: {tasks:#?}\ncontainers: {:?}\n{}",
                self.containers(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let netns: Vec<_> = std::fs::read_dir(self.dir.path().join("netns"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            netns.is_empty(),
            "network namespaces left behind: {netns:?}"
        );
        self.stop();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // Best effort after a failed test: leave no containers or mounts behind.
        for id in self.containers() {
            self.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
            std::thread::sleep(Duration::from_millis(100));
            self.ctr(&["tasks", "rm", "-f", &id]);
            self.ctr(&["containers", "rm", &id]);
        }
        if let Ok(d) = std::fs::read_dir(self.dir.path().join("netns")) {
            for e in d.filter_map(Result::ok) {
                let _ = Command::new("umount").arg("-l").arg(e.path()).status();
            }
        }
    }
}

pub fn arn(name: &str) -> String {
    format!("arn:aws:ecs:us-east-1:000000000000:task/test/{name}")
}

pub fn task(name: &str, def: Value) -> Value {
    json!({"taskArn": arn(name), "taskDefinition": quick_stop(def), "desiredStatus": "RUNNING"})
}

pub fn stopped(name: &str, def: Value) -> Value {
    json!({"taskArn": arn(name), "taskDefinition": quick_stop(def), "desiredStatus": "STOPPED"})
}

/// A command like `sleep` running as PID 1 ignores SIGTERM, so every stop would wait out
/// ECS's default 30 s stopTimeout: tests that do not test stopping use 2 s.
fn quick_stop(mut def: Value) -> Value {
    if let Some(containers) = def["containerDefinitions"].as_array_mut() {
        for c in containers {
            if c.get("stopTimeout").is_none() {
                c["stopTimeout"] = json!(2);
            }
        }
    }
    def
}

/// A task definition with one essential busybox container running `sh -c script`.
pub fn sh_task(image: &str, family: &str, script: &str) -> Value {
    json!({
        "family": family,
        "networkMode": "bridge",
        "requiresCompatibilities": ["EXTERNAL"],
        "memory": "128",
        "containerDefinitions": [{
            "name": "main", "image": image, "essential": true,
            "command": ["sh", "-c", script]
        }]
    })
}

pub fn container<'a>(task: &'a Value, name: &str) -> &'a Value {
    task["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {task:#}"))
}

/// GET / over plain HTTP on 127.0.0.1:port, retrying while the server comes up.
pub fn http_get(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(body) if !body.is_empty() => return body,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("GET 127.0.0.1:{port} failed: {other:?}"),
        }
    }
}

/// A TCP port free on this host right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
