//! The hub under test: the real binary on a loopback port with a temporary data dir, and
//! the real aws CLI pointed at it.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

pub const KEY_ID: &str = "AKIDSKERRYTEST";
pub const SECRET: &str = "skerry-test-secret-0123456789";
pub const REGION: &str = "us-east-1";

pub struct Hub {
    pub dir: PathBuf,
    child: Option<Child>,
    pub port: u16,
}

impl Hub {
    /// Starts a hub on `dir`, writing its config on first use. Port 0: the hub reports the
    /// port it got as its first stdout line.
    pub fn start(dir: &Path) -> Hub {
        let config = dir.join("hub.toml");
        if !config.exists() {
            fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:0\"\ndata_dir = \"state\"\nregion = \"{REGION}\"\n\
                     shutdown_grace_secs = 5\n\n[[access_keys]]\nid = \"{KEY_ID}\"\nsecret = \"{SECRET}\"\n"
                ),
            )
            .expect("write config");
        }
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
        let mut line = String::new();
        // Blocks until the hub is listening, or returns empty when it exits.
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read hub stdout");
        let port = line
            .trim()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| {
                let log = fs::read_to_string(dir.join("hub.log")).unwrap_or_default();
                panic!("hub did not report its address (got {line:?}); log:\n{log}")
            });
        Hub {
            dir: dir.to_path_buf(),
            child: Some(child),
            port,
        }
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
        let mut cmd = Command::new("aws");
        cmd.args(["--endpoint-url", &endpoint, "--output", "json"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", REGION)
            // Keep the CLI off the machine's own profiles, off the instance metadata
            // endpoint, and from retrying: loopback only, one request per call.
            .env("AWS_CONFIG_FILE", self.dir.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.join("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_RETRY_MODE", "standard")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
        cmd.output()
            .expect("run the aws CLI; install it with `pip install awscli`")
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
