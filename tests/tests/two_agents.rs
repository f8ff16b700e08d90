//! The whole fleet on one machine: `scripts/hub-up` (hub + Mosquitto), an activation made
//! with `skerry`, two agents that register with it, and the real aws CLI running tasks and a
//! service across them. Restarts of the hub and of an agent lose nothing. A real Prometheus
//! server scraping the hub's `/metrics` answers with a running task's container memory.

#[path = "../../agent/tests/harness/mod.rs"]
mod harness;
#[path = "../../hub/tests/common/prometheus.rs"]
mod prometheus;
mod stack;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use harness::Agent;
use prometheus::{promtool_check, Prometheus};
use stack::Stack;

/// An agent of the fleet: the test harness's agent with a provisioning file, sending its
/// containers' figures every second.
fn device(slot: u8, name: &str, provision: &Path) -> Agent {
    Agent::with_top(
        slot,
        name,
        &format!("provision_file = \"{}\"", provision.display()),
        "[link]\ncontainer_metrics_interval_secs = 1\n",
    )
}

/// Prometheus scrapes the hub: a PromQL query returns the memory of each running task's
/// container, and `promtool check metrics` is clean on what the hub serves with a fleet.
fn prometheus_sees_container_memory(stack: &Stack, dir: &Path, task_arns: &[String]) {
    let url = &stack.env["SKERRY_METRICS_URL"];
    let target = url
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix("/metrics"))
        .expect("SKERRY_METRICS_URL is http://HOST:PORT/metrics");
    std::fs::create_dir_all(dir).expect("prometheus dir");
    let prom = Prometheus::start(dir, &[target.to_string()]);
    for arn in task_arns {
        let id = arn.rsplit('/').next().expect("task id");
        let query = format!(
            "skerry_container_memory_usage_bytes{{task_id=\"{id}\",container=\"main\"}} > 0"
        );
        let got = prom.query_until(&query, Duration::from_secs(60), dir);
        assert_eq!(got.len(), 1, "{query}: {got:#?}");
        assert!(
            got[0]["metric"]["instance_id"]
                .as_str()
                .is_some_and(|i| i.starts_with("mi-")),
            "{got:#?}"
        );
    }
    let text = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
        .get(url)
        .send()
        .and_then(|r| r.text())
        .expect("GET /metrics");
    let complaints = promtool_check(&text);
    assert!(
        complaints.trim().is_empty(),
        "promtool: {complaints}\n{text}"
    );
}

fn running_per_instance(tasks: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks {
        if t["lastStatus"] == "RUNNING" {
            *m.entry(
                t["containerInstanceArn"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
            )
            .or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn two_agents_register_run_tasks_and_a_service_and_survive_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stack = Stack::up(&tmp.path().join("hub"), &[]);

    // One activation for both devices, written as a provisioning file by the CLI.
    let prov_a = tmp.path().join("provision-a.toml");
    stack.activation(2, &prov_a, &[]);
    let prov_b = tmp.path().join("provision-b.toml");
    std::fs::copy(&prov_a, &prov_b).expect("copy provisioning file");

    let mut a = device(50, "fleet-a", &prov_a);
    let mut b = device(51, "fleet-b", &prov_b);
    a.start();
    b.start();

    let instances = stack.wait(
        "both agents registered and connected",
        Duration::from_secs(90),
        || {
            let v = stack.instances();
            let connected = v.iter().filter(|i| i["agentConnected"] == true).count();
            if connected == 2 {
                Ok(v)
            } else {
                Err(format!("{v:#?}"))
            }
        },
    );
    for i in &instances {
        assert_eq!(i["status"], "ACTIVE");
        assert!(
            i["ec2InstanceId"]
                .as_str()
                .is_some_and(|s| s.starts_with("mi-")),
            "{i:#}"
        );
    }
    // The activation code is scrubbed from both files once used.
    for p in [&prov_a, &prov_b] {
        let text = std::fs::read_to_string(p).expect("provisioning file");
        assert!(
            !text.contains("activation_code ="),
            "{}:\n{text}",
            p.display()
        );
    }
    let out = stack.skerry(&["instances"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.lines().count() == 3,
        "skerry instances:\n{table}"
    );

    let registry = harness::env().registry;
    let def = json!({
        "family": "fleet-sleep",
        "requiresCompatibilities": ["EXTERNAL"],
        "networkMode": "bridge",
        "memory": "64",
        "cpu": "128",
        "containerDefinitions": [{
            "name": "main", "image": format!("{registry}/busybox:latest"),
            "essential": true, "stopTimeout": 2,
            "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
        }]
    });
    stack.aws(&[
        "ecs",
        "register-task-definition",
        "--cli-input-json",
        &def.to_string(),
    ]);

    // RunTask --count 2 spreads over both instances and both reach RUNNING on the devices.
    let run = stack.aws(&[
        "ecs",
        "run-task",
        "--cluster",
        "default",
        "--task-definition",
        "fleet-sleep",
        "--count",
        "2",
        "--launch-type",
        "EXTERNAL",
    ]);
    assert_eq!(run["failures"].as_array().map(Vec::len), Some(0), "{run:#}");
    let tasks = stack.wait("two tasks RUNNING", Duration::from_secs(120), || {
        let t = stack.tasks(&["--family", "fleet-sleep"]);
        let per = running_per_instance(&t);
        if per.len() == 2 && per.values().all(|n| *n == 1) {
            Ok(t)
        } else {
            Err(format!("{per:?}"))
        }
    });
    let task_arns: Vec<String> = tasks
        .iter()
        .map(|t| t["taskArn"].as_str().expect("taskArn").to_string())
        .collect();
    assert_eq!(
        a.ps().len() + b.ps().len(),
        2,
        "each device runs exactly its task"
    );
    prometheus_sees_container_memory(&stack, &tmp.path().join("prometheus"), &task_arns);

    // The device history: per instance, the device's seqs strictly increase and the task
    // state changes it reported are there, with the device's time.
    let out = stack.skerry(&["events", "--json"]);
    assert!(
        out.status.success(),
        "skerry events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = serde_json::from_slice(&out.stdout).expect("events JSON");
    for i in &instances {
        let id = i["ec2InstanceId"].as_str().expect("instance id");
        let mine: Vec<&Value> = events.iter().filter(|e| e["instanceId"] == id).collect();
        let seqs: Vec<u64> = mine.iter().filter_map(|e| e["seq"].as_u64()).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{id}: seqs out of order: {seqs:?}"
        );
        assert!(
            mine.iter().any(|e| e["kind"] == "taskState"
                && e["message"].as_str().is_some_and(|m| m.contains("RUNNING"))
                && e["time"].as_f64().is_some()),
            "{id}: no RUNNING state change among {mine:#?}"
        );
    }
    let out = stack.skerry(&["events", "--instance", "mi-0000000000000000x"]);
    assert!(!out.status.success(), "a malformed instance id is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("instanceId"));

    // A service of 3 spreads 2 + 1 on top of them.
    stack.aws(&[
        "ecs",
        "create-service",
        "--cluster",
        "default",
        "--service-name",
        "web",
        "--task-definition",
        "fleet-sleep",
        "--desired-count",
        "3",
        "--launch-type",
        "EXTERNAL",
    ]);
    stack.wait("service web at 3 running", Duration::from_secs(120), || {
        let s = stack.aws(&[
            "ecs",
            "describe-services",
            "--cluster",
            "default",
            "--services",
            "web",
        ]);
        let svc = &s["services"][0];
        let t = stack.tasks(&["--service-name", "web"]);
        let per = running_per_instance(&t);
        let mut counts: Vec<usize> = per.values().copied().collect();
        counts.sort();
        if svc["runningCount"] == 3 && counts == [1, 2] {
            Ok(())
        } else {
            Err(format!("{svc:#} {per:?}"))
        }
    });

    // The cluster counts what runs on it, and cannot be deleted from under it.
    let c = stack.aws(&["ecs", "describe-clusters", "--clusters", "default"]);
    let c = &c["clusters"][0];
    assert_eq!(c["registeredContainerInstancesCount"], 2, "{c:#}");
    assert_eq!(c["runningTasksCount"], 5, "{c:#}");
    assert_eq!(c["activeServicesCount"], 1, "{c:#}");
    let err = stack.aws_fails(&["ecs", "delete-cluster", "--cluster", "default"]);
    assert!(
        err.contains("ClusterContainsContainerInstancesException"),
        "{err}"
    );

    // The hub restarts; nothing is lost and the agents reconnect.
    stack.down();
    let stack = Stack::up(&tmp.path().join("hub"), &[]);
    stack.wait(
        "agents reconnected after the hub restart",
        Duration::from_secs(120),
        || {
            let v = stack.instances();
            let ok = v.len() == 2 && v.iter().all(|i| i["agentConnected"] == true);
            if ok {
                Ok(())
            } else {
                Err(format!("{v:#?}"))
            }
        },
    );
    assert_eq!(
        stack.tasks(&[]).len(),
        5,
        "2 RunTask tasks + 3 service tasks after hub restart"
    );

    // An agent restarts: its tasks are adopted, not duplicated.
    // Settled first: every task on the device RUNNING or STOPPED, one container per running
    // task, so what follows compares a restart and nothing else.
    let before = stack.wait("agent a settled", Duration::from_secs(60), || {
        let tasks = a.ps();
        let running = tasks
            .iter()
            .filter(|t| t["lastStatus"] == "RUNNING")
            .count();
        let settled = tasks.iter().all(|t| {
            t["lastStatus"] == "STOPPED"
                || (t["lastStatus"] == "RUNNING" && t["desiredStatus"] == "RUNNING")
        });
        let containers = a.containers();
        if settled && containers.len() == running {
            Ok(containers)
        } else {
            Err(format!("{tasks:#?} {containers:?}"))
        }
    });
    a.stop();
    let log_before = std::fs::read_to_string(&a.log).unwrap_or_default().len();
    a.start();
    stack.wait("agent a reconnected", Duration::from_secs(120), || {
        let log = std::fs::read_to_string(&a.log).unwrap_or_default();
        let fresh = log.get(log_before..).unwrap_or_default();
        if fresh.contains("connected to the broker") {
            Ok(())
        } else {
            Err(a.log_tail())
        }
    });
    assert_eq!(
        a.containers(),
        before,
        "the restarted agent adopted its containers; agent tasks: {:#}\nagent log:\n{}\nhub log:\n{}",
        serde_json::Value::from(a.ps()),
        a.log_tail(),
        stack.hub_log()
    );
    assert_eq!(stack.tasks(&[]).len(), 5);

    // A service's task whose essential container exits for good is replaced by its device
    // without waiting for the hub, and the hub takes the replacement as the service's task
    // in the old one's place: no task of its own, the old one's reason kept.
    let marker = tmp.path().join("flaky");
    std::fs::create_dir_all(&marker).expect("marker dir");
    let flaky = json!({
        "family": "fleet-flaky",
        "requiresCompatibilities": ["EXTERNAL"],
        "networkMode": "none",
        "memory": "64",
        "cpu": "128",
        "volumes": [{"name": "d", "host": {"sourcePath": marker}}],
        "containerDefinitions": [{
            "name": "main", "image": format!("{registry}/busybox:latest"),
            "essential": true, "stopTimeout": 2,
            "mountPoints": [{"sourceVolume": "d", "containerPath": "/d"}],
            "command": ["sh", "-c", "if [ -e /d/once ]; then trap 'exit 0' TERM; \
                while true; do sleep 1; done; fi; touch /d/once; exit 3"]
        }]
    });
    stack.aws(&[
        "ecs",
        "register-task-definition",
        "--cli-input-json",
        &flaky.to_string(),
    ]);
    stack.aws(&[
        "ecs",
        "create-service",
        "--cluster",
        "default",
        "--service-name",
        "flaky",
        "--task-definition",
        "fleet-flaky",
        "--desired-count",
        "1",
        "--launch-type",
        "EXTERNAL",
    ]);
    let flaky_tasks = || {
        let mut t = stack.tasks(&["--service-name", "flaky"]);
        t.extend(stack.tasks(&["--service-name", "flaky", "--desired-status", "STOPPED"]));
        t
    };
    let (old, new) = stack.wait(
        "the flaky service's task replaced on its device",
        Duration::from_secs(120),
        || {
            let t = flaky_tasks();
            let stopped: Vec<&Value> = t.iter().filter(|t| t["lastStatus"] == "STOPPED").collect();
            let running: Vec<&Value> = t.iter().filter(|t| t["lastStatus"] == "RUNNING").collect();
            match (stopped.as_slice(), running.as_slice()) {
                ([old], [new]) => Ok(((*old).clone(), (*new).clone())),
                _ => Err(format!("{t:#?}")),
            }
        },
    );
    assert_eq!(old["stopCode"], "EssentialContainerExited", "{old:#}");
    assert_eq!(
        old["containerInstanceArn"], new["containerInstanceArn"],
        "replaced on the same device"
    );
    assert_eq!(new["group"], "service:flaky", "{new:#}");
    let new_arn = new["taskArn"].as_str().expect("taskArn");
    let device = [&a, &b]
        .into_iter()
        .find(|d| d.task(new_arn).is_some())
        .expect("a device runs the replacement");
    assert_eq!(
        device.task(new_arn).expect("task")["replaces"],
        old["taskArn"],
        "the device made it"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        flaky_tasks().len(),
        2,
        "the hub started no task of its own: {:#?}",
        flaky_tasks()
    );
    let out = stack.skerry(&["events", "--json"]);
    let events: Vec<Value> = serde_json::from_slice(&out.stdout).expect("events JSON");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "taskReplaced" && e["taskArn"] == old["taskArn"]),
        "no taskReplaced event for {}",
        old["taskArn"]
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "containerExited" && e["taskArn"] == old["taskArn"]),
        "no containerExited event for {}",
        old["taskArn"]
    );

    // Stop everything through the API; the devices stop the containers.
    for arn in &task_arns {
        stack.aws(&[
            "ecs",
            "stop-task",
            "--cluster",
            "default",
            "--task",
            arn,
            "--reason",
            "test done",
        ]);
    }
    for service in ["web", "flaky"] {
        stack.aws(&[
            "ecs",
            "update-service",
            "--cluster",
            "default",
            "--service",
            service,
            "--desired-count",
            "0",
        ]);
        stack.aws(&[
            "ecs",
            "delete-service",
            "--cluster",
            "default",
            "--service",
            service,
        ]);
    }
    stack.wait(
        "every task STOPPED on the hub and the devices",
        Duration::from_secs(120),
        || {
            let t = stack.tasks(&["--desired-status", "STOPPED"]);
            let stopped = t.iter().filter(|t| t["lastStatus"] == "STOPPED").count();
            let left = a.containers().len() + b.containers().len();
            if stopped == 7 && left == 0 {
                Ok(())
            } else {
                Err(format!("{stopped} stopped, {left} containers"))
            }
        },
    );
    let stopped = stack.tasks(&["--desired-status", "STOPPED"]);
    let by_us = stopped
        .iter()
        .find(|t| t["taskArn"] == task_arns[0].as_str())
        .expect("the stopped task is listed");
    assert_eq!(by_us["stoppedReason"], "test done", "{by_us:#}");

    a.stop();
    b.stop();
    stack.down();
}

/// `skerry call` sends what the installed aws CLI cannot: Debian 12's aws CLI 2.9 refuses
/// `restartPolicy` in its own parameter check, before any request.
#[test]
fn skerry_call_sends_fields_the_aws_cli_does_not_know() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stack = Stack::up(&tmp.path().join("hub"), &[]);
    let def = json!({
        "family": "restarts",
        "containerDefinitions": [{"name": "app", "image": "busybox", "memory": 32,
            "restartPolicy": {"enabled": true, "ignoredExitCodes": [7],
                              "restartAttemptPeriod": 60}}]
    });
    let file = tmp.path().join("taskdef.json");
    std::fs::write(&file, def.to_string()).expect("write taskdef");
    let file = file.to_str().expect("utf-8 path");

    let err = stack.aws_fails(&[
        "ecs",
        "register-task-definition",
        "--cli-input-json",
        &format!("file://{file}"),
    ]);
    assert!(err.contains("restartPolicy"), "{err}");

    let out = stack.skerry_ok(&["call", "ecs", "RegisterTaskDefinition", "--input", file]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("skerry call prints JSON");
    assert_eq!(v["taskDefinition"]["revision"], 1, "{v:#}");
    let input = tmp.path().join("describe.json");
    std::fs::write(&input, r#"{"taskDefinition": "restarts:1"}"#).expect("write input");
    let out = stack.skerry_ok(&[
        "call",
        "ecs",
        "DescribeTaskDefinition",
        "--input",
        input.to_str().expect("utf-8 path"),
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("skerry call prints JSON");
    let policy = &v["taskDefinition"]["containerDefinitions"][0]["restartPolicy"];
    assert_eq!(policy["ignoredExitCodes"], json!([7]), "{v:#}");

    // The hub's refusal comes through with its code; a bad input names the file.
    let out = stack.skerry(&["call", "ecs", "LaunchRockets"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("LaunchRockets"),
        "{err}"
    );
    std::fs::write(&input, "[1, 2]").expect("write input");
    let out = stack.skerry(&[
        "call",
        "ecs",
        "ListClusters",
        "--input",
        &input.to_string_lossy(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("describe.json") && err.contains("JSON object"),
        "{err}"
    );
    stack.down();
}
