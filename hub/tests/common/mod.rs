//! The hub under test: the real binary on loopback ports with a temporary data dir, and
//! the real aws CLI pointed at it.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KEY_ID: &str = "AKIDSKERRYTEST";
pub const SECRET: &str = "skerry-test-secret-0123456789";
pub const REGION: &str = "us-east-1";
/// The aws CLI scripts/setup installs (Debian's `awscli`, v2), by its path: a PATH may hold
/// another one first.
pub const AWS_CLI: &str = "/usr/bin/aws";

pub struct Hub {
    pub dir: PathBuf,
    child: Option<Child>,
    pub port: u16,
    /// The HTTPS registration listener's port.
    pub registration_port: u16,
    /// The `/metrics` listener's port, when the config has a `[metrics]` section.
    pub metrics_port: Option<u16>,
}

/// A loopback port that was free a moment ago: bind port 0, note the port, let it go.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// An aws CLI config of the tests' own in `dir`, instead of the machine's: timestamps as the
/// hub sent them (epoch seconds; v2 prints ISO 8601 by default), so tests compare the hub's
/// values, not the CLI's rendering of them.
pub fn aws_config(dir: &Path) -> PathBuf {
    let path = dir.join("aws-config");
    fs::write(&path, "[default]\ncli_timestamp_format = wire\n").expect("write aws config");
    path
}

/// The hub's config for `dir`, with `extra` (TOML sections) appended.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("hub.toml");
    fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"state\"\nregion = \"{REGION}\"\n\
             shutdown_grace_secs = 5\n\n[[access_keys]]\nid = \"{KEY_ID}\"\nsecret = \"{SECRET}\"\n\n\
             [registration]\nlisten = \"127.0.0.1:0\"\n\n{extra}"
        ),
    )
    .expect("write config");
    config
}

/// Runs `cmd` to completion or kills it after `limit`, so a hung client fails the test
/// instead of hanging it.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let deadline = Instant::now() + limit;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(out) => out.expect("wait for child"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not finish within {limit:?}")
        }
    }
}

impl Hub {
    /// Starts a hub on `dir`, writing its config on first use. Port 0: the hub reports the
    /// API's port on its first stdout line, the registration listener's on the second and,
    /// with `[metrics]` configured, the metrics listener's on the third.
    pub fn start(dir: &Path) -> Hub {
        let config = dir.join("hub.toml");
        if !config.exists() {
            write_config(dir, "");
        }
        let has_metrics = fs::read_to_string(&config)
            .expect("read hub config")
            .lines()
            .any(|l| l.trim() == "[metrics]");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("hub.log"))
            .expect("open log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_skerry-hub"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn skerry-hub");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut port = || -> u16 {
            let mut line = String::new();
            // Blocks until the hub is listening, or returns empty when it exits.
            stdout.read_line(&mut line).expect("read hub stdout");
            line.trim()
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or_else(|| {
                    let log = fs::read_to_string(dir.join("hub.log")).unwrap_or_default();
                    panic!("hub did not report its address (got {line:?}); log:\n{log}")
                })
        };
        let api_port = port();
        let registration_port = port();
        let metrics_port = has_metrics.then(&mut port);
        Hub {
            dir: dir.to_path_buf(),
            child: Some(child),
            port: api_port,
            registration_port,
            metrics_port,
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("hub.toml")
    }

    pub fn registration_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.registration_port)
    }

    /// SIGTERM, and the hub must exit cleanly.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let status = child.wait().expect("wait for hub");
        assert!(status.success(), "hub exited with {status} after SIGTERM");
    }

    pub fn aws_with(&self, key_id: &str, secret: &str, args: &[&str]) -> Output {
        let endpoint = format!("http://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(AWS_CLI);
        cmd.args(["--endpoint-url", &endpoint, "--output", "json"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", REGION)
            // Keep the CLI off the machine's own profiles, off the instance metadata
            // endpoint, and from retrying: loopback only, one request per call.
            .env("AWS_CONFIG_FILE", aws_config(&self.dir))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.join("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_RETRY_MODE", "standard")
            .env("AWS_MAX_ATTEMPTS", "1")
            // v2 pages its output through less otherwise.
            .env("AWS_PAGER", "")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
        cmd.output()
            .unwrap_or_else(|e| panic!("run {AWS_CLI}: {e}; scripts/setup installs it (awscli)"))
    }

    /// Runs an aws command that must succeed and returns its JSON output.
    pub fn ok(&self, args: &[&str]) -> Value {
        let out = self.aws_with(KEY_ID, SECRET, args);
        assert!(
            out.status.success(),
            "aws {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).expect("aws prints JSON")
    }

    /// Runs an aws command that must fail and returns what it printed on stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.aws_with(KEY_ID, SECRET, args);
        assert!(!out.status.success(), "aws {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Hub {
    /// The hub's data directory (the config's `data_dir`), for opening its store in-process.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
