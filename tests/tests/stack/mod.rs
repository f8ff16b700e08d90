//! A hub and its Mosquitto started with `scripts/hub-up` in a directory of their own, and
//! the operator's tools pointed at them: the real aws CLI and `skerry`, with the exports
//! hub-up writes to `DIR/env`. Shared by the end-to-end tests; each uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// A workspace binary: from `var` when set (scripts/test sets them), else next to this test.
pub fn binary(var: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/TEST-… -> target/debug/NAME
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/debug/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build it (`cargo build -p …`) or set {var}",
        p.display()
    );
    p
}

pub struct Stack {
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
    /// Extra environment for hub-up (e.g. `HUB_ADVERTISE_HOST`), kept for restarts.
    vars: Vec<(String, String)>,
}

impl Stack {
    pub fn up(dir: &Path, vars: &[(&str, &str)]) -> Stack {
        let mut s = Stack {
            dir: dir.to_path_buf(),
            env: HashMap::new(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.hub_up();
        s
    }

    /// Starts whatever of hub and broker is not running (hub-up is idempotent).
    pub fn hub_up(&mut self) {
        let out = Command::new(repo().join("scripts/hub-up"))
            .arg(&self.dir)
            .env("SKERRY_HUB_BIN", binary("SKERRY_HUB_BIN", "skerry-hub"))
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run scripts/hub-up");
        assert!(
            out.status.success(),
            "hub-up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(self.dir.join("env")).expect("hub-up writes DIR/env");
        self.env = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches(['"', '\'']).to_string()))
            .collect();
    }

    pub fn down(&self) {
        let status = Command::new(repo().join("scripts/hub-down"))
            .arg(&self.dir)
            .status()
            .expect("run scripts/hub-down");
        assert!(status.success(), "hub-down failed");
    }

    /// Kills the hub's or the broker's process (`name` is its pid file's stem) and waits
    /// until it is gone.
    pub fn kill(&self, name: &str, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join(format!("{name}.pid")))
            .unwrap_or_else(|e| panic!("{name}.pid: {e}"));
        let pid = pid.trim();
        let status = Command::new("kill")
            .args([signal, pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {name} ({pid}) failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        // Gone or a zombie (hub-up's nohup child is reaped by init).
        while std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
            assert!(Instant::now() < deadline, "{name} ({pid}) still runs");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn command(&self, program: &Path) -> Command {
        // Keep the aws CLI off the machine's own profiles and from retrying; timestamps as
        // the hub sent them (epoch seconds; v2 prints ISO 8601 by default).
        let config = self.dir.join("aws-config");
        std::fs::write(&config, "[default]\ncli_timestamp_format = wire\n")
            .expect("write aws config");
        let mut cmd = Command::new(program);
        cmd.envs(&self.env)
            .env("AWS_CONFIG_FILE", config)
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.join("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_PAGER", "")
            .env_remove("AWS_PROFILE");
        cmd
    }

    /// The aws CLI hub-up wrote for this hub: Debian's (scripts/setup) with the hub's
    /// endpoint, whatever else PATH holds.
    fn aws_cli(&self) -> Command {
        self.command(&self.dir.join("bin/aws"))
    }

    /// Runs an aws command that must succeed; returns its JSON (Null when it prints none).
    pub fn aws(&self, args: &[&str]) -> Value {
        let out = self
            .aws_cli()
            .args(["--output", "json"])
            .args(args)
            .output()
            .expect("run DIR/bin/aws, which hub-up writes");
        assert!(
            out.status.success(),
            "aws {args:?} failed: {}\nhub log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.hub_log()
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).expect("aws prints JSON")
    }

    /// Runs an aws command that must fail; returns what it printed on stderr.
    pub fn aws_fails(&self, args: &[&str]) -> String {
        let out = self
            .aws_cli()
            .args(args)
            .output()
            .expect("run DIR/bin/aws, which hub-up writes");
        assert!(!out.status.success(), "aws {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs `skerry`, whatever its outcome.
    pub fn skerry(&self, args: &[&str]) -> Output {
        self.command(&binary("SKERRY_CLI_BIN", "skerry"))
            .args(args)
            .output()
            .expect("run skerry")
    }

    /// Runs `skerry`, which must succeed.
    pub fn skerry_ok(&self, args: &[&str]) -> Output {
        let out = self.skerry(args);
        assert!(
            out.status.success(),
            "skerry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `skerry activation create` for the default cluster, valid for a day, its
    /// provisioning file written to `out`; `extra` arguments (e.g. `--hub-url URL`) added.
    pub fn activation(&self, limit: u32, out: &Path, extra: &[&str]) {
        let limit = limit.to_string();
        let out = out.to_str().expect("utf-8 path");
        let mut args = vec![
            "activation",
            "create",
            "--cluster",
            "default",
            "--limit",
            &limit,
            "--expires",
            "1d",
            "-o",
            out,
        ];
        args.extend(extra);
        self.skerry_ok(&args);
    }

    /// The hub log's last 40 lines, for a failure's message.
    pub fn hub_log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("hub.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The default cluster's container instances, described.
    pub fn instances(&self) -> Vec<Value> {
        let arns = self.aws(&["ecs", "list-container-instances", "--cluster", "default"]);
        let arns: Vec<&str> = arns["containerInstanceArns"]
            .as_array()
            .expect("containerInstanceArns")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if arns.is_empty() {
            return Vec::new();
        }
        let mut args = vec![
            "ecs",
            "describe-container-instances",
            "--cluster",
            "default",
            "--container-instances",
        ];
        args.extend(arns);
        self.aws(&args)["containerInstances"]
            .as_array()
            .expect("containerInstances")
            .clone()
    }

    /// The default cluster's tasks that `list-tasks` with `extra` lists, described.
    pub fn tasks(&self, extra: &[&str]) -> Vec<Value> {
        let mut list = vec!["ecs", "list-tasks", "--cluster", "default"];
        list.extend(extra);
        let arns = self.aws(&list);
        let arns: Vec<&str> = arns["taskArns"]
            .as_array()
            .expect("taskArns")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut out = Vec::new();
        // DescribeTasks takes at most 100 tasks.
        for chunk in arns.chunks(100) {
            let mut args = vec!["ecs", "describe-tasks", "--cluster", "default", "--tasks"];
            args.extend(chunk);
            out.extend(
                self.aws(&args)["tasks"]
                    .as_array()
                    .expect("tasks")
                    .iter()
                    .cloned(),
            );
        }
        out
    }

    /// One task, described; Null when the hub does not know it.
    pub fn task(&self, arn: &str) -> Value {
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

    /// Polls `probe` until it returns Ok, or panics with `what`, the last error and the
    /// hub's log.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match probe() {
                Ok(v) => return v,
                Err(last) if Instant::now() > deadline => {
                    panic!(
                        "{what}: not reached in {timeout:?}; last seen: {last}\nhub log:\n{}",
                        self.hub_log()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    /// The instance's history as the hub stored it, in the hub's order.
    pub fn events(&self, instance: &str) -> Vec<Value> {
        let out = self.skerry_ok(&["events", "--instance", instance, "--json"]);
        serde_json::from_slice(&out.stdout).expect("skerry events prints JSON")
    }
}

impl Drop for Stack {
    /// A failed test leaves no hub or broker behind (hub-down of a stopped stack is a no-op).
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/hub-down"))
            .arg(&self.dir)
            .status();
    }
}
