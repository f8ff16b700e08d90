//! `scripts/hub-up` and `scripts/hub-down` as an operator runs them: the hub and a real
//! Mosquitto on free loopback ports, the aws CLI driven from the written `env`, state kept
//! across a stop and a start.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::run_bounded;
use serde_json::Value;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

fn run(name: &str, dir: &Path) {
    let mut cmd = Command::new(script(name));
    cmd.arg(dir)
        .env("SKERRY_HUB_BIN", env!("CARGO_BIN_EXE_skerry-hub"))
        .env_remove("HUB_API_PORT")
        .env_remove("HUB_REGISTER_PORT")
        .env_remove("HUB_BROKER_PORT")
        .env_remove("HUB_ADVERTISE_HOST");
    let out = run_bounded(&mut cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// DIR/env's exports.
fn env_file(dir: &Path) -> HashMap<String, String> {
    fs::read_to_string(dir.join("env"))
        .expect("DIR/env")
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn aws(dir: &Path, env: &HashMap<String, String>, args: &[&str]) -> Value {
    let mut cmd = Command::new("aws");
    cmd.args(["--output", "json"])
        .args(args)
        .envs(env)
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
    let out = run_bounded(&mut cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn pid(dir: &Path, name: &str) -> u32 {
    fs::read_to_string(dir.join(format!("{name}.pid")))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Stops whatever hub-up started, even when the test fails half way.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = Command::new(script("hub-down")).arg(self.0).status();
    }
}

#[test]
fn hub_up_serves_the_aws_cli_and_keeps_state_across_down_and_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hub");
    let _down = Down(&dir);
    run("hub-up", &dir);
    let env = env_file(&dir);
    for key in [
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "SKERRY_HUB",
        "SKERRY_REGISTRATION_URL",
        "SKERRY_CA_FINGERPRINT",
        "SKERRY_BROKER",
    ] {
        assert!(env.contains_key(key), "{key} missing from env: {env:?}");
    }
    assert!(env["SKERRY_BROKER"].starts_with("mqtts://127.0.0.1:"));
    aws(
        &dir,
        &env,
        &["ecs", "create-cluster", "--cluster-name", "edge"],
    );
    let (hub, broker) = (pid(&dir, "hub"), pid(&dir, "broker"));
    assert!(alive(hub) && alive(broker));

    // Running it again leaves both as they are.
    run("hub-up", &dir);
    assert_eq!((pid(&dir, "hub"), pid(&dir, "broker")), (hub, broker));
    assert_eq!(env_file(&dir), env);

    run("hub-down", &dir);
    assert!(!alive(hub), "the hub still runs after hub-down");
    assert!(!alive(broker), "the broker still runs after hub-down");
    assert!(!dir.join("hub.pid").exists());

    // Up again: same key, ports and CA, and the cluster is still there.
    run("hub-up", &dir);
    assert_ne!(pid(&dir, "hub"), hub);
    assert_eq!(env_file(&dir), env);
    let list = aws(&dir, &env, &["ecs", "list-clusters"]);
    assert_eq!(
        list["clusterArns"],
        serde_json::json!(["arn:aws:ecs:us-east-1:000000000000:cluster/edge"])
    );
    run("hub-down", &dir);
}
