//! `scripts/hub-up` and `scripts/hub-down` as an operator runs them: the hub and a real
//! Mosquitto on free loopback ports, the aws CLI driven from the written `env`, state kept
//! across a stop and a start.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
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
        .env_remove("HUB_METRICS_PORT")
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

/// Runs the aws CLI as an operator does after `. DIR/env`, with a decoy `aws` first on PATH
/// (a machine may have another aws CLI there): sourcing env must put the hub's in front. No
/// aws config: the output is what an operator sees.
fn aws(dir: &Path, args: &[&str]) -> Value {
    let out = run_bounded(
        sourced(dir, r#"shift; exec aws --output json "$@""#).args(args),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `sh -c '. DIR/env; SCRIPT' sh DIR` with a decoy aws first on PATH and no aws config.
fn sourced(dir: &Path, script: &str) -> Command {
    let decoy = dir.with_file_name("decoy");
    fs::create_dir_all(&decoy).expect("mkdir decoy");
    fs::write(
        decoy.join("aws"),
        "#!/bin/sh\necho 'a decoy aws ran, not the one DIR/env names' >&2\nexit 3\n",
    )
    .expect("write decoy");
    fs::set_permissions(decoy.join("aws"), fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        decoy.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!(". \"$1/env\"; {script}"), "sh"])
        .arg(dir)
        .env("PATH", path)
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PAGER")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
    cmd
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
        "SKERRY_METRICS_URL",
    ] {
        assert!(env.contains_key(key), "{key} missing from env: {env:?}");
    }
    assert!(env["SKERRY_BROKER"].starts_with("mqtts://127.0.0.1:"));
    aws(&dir, &["ecs", "create-cluster", "--cluster-name", "edge"]);
    let metrics = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("client")
        .get(&env["SKERRY_METRICS_URL"])
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .expect("GET SKERRY_METRICS_URL");
    assert!(
        metrics.contains(
            "skerry_hub_api_requests_total{operation=\"CreateCluster\",outcome=\"ok\"} 1"
        ),
        "{metrics}"
    );
    // The hub's timestamps as v2 shows them by default: ISO 8601, so it parsed them.
    let td = aws(
        &dir,
        &[
            "ecs",
            "register-task-definition",
            "--family",
            "web",
            "--container-definitions",
            r#"[{"name":"web","image":"busybox","memory":64}]"#,
        ],
    );
    let at = td["taskDefinition"]["registeredAt"]
        .as_str()
        .unwrap_or_default();
    assert!(
        at.starts_with("20") && at.get(10..11) == Some("T"),
        "registeredAt is not ISO 8601: {td}"
    );
    // Sourcing env again leaves PATH with the hub's bin once.
    let twice = run_bounded(
        &mut sourced(&dir, r#". "$1/env"; printf '%s' "$PATH""#),
        Duration::from_secs(10),
    );
    let bin = format!("{}/bin", dir.display());
    assert_eq!(
        String::from_utf8_lossy(&twice.stdout)
            .split(':')
            .filter(|p| *p == bin)
            .count(),
        1,
        "PATH after sourcing env twice: {}",
        String::from_utf8_lossy(&twice.stdout)
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
    let list = aws(&dir, &["ecs", "list-clusters"]);
    assert_eq!(
        list["clusterArns"],
        serde_json::json!(["arn:aws:ecs:us-east-1:000000000000:cluster/edge"])
    );
    run("hub-down", &dir);
}
