//! Tasks, services and container instances through the real aws CLI against the real
//! `skerry-hub` process. The device side has no transport yet, so the test plays the
//! devices in-process: it opens the hub's own SQLite store (SQLite serialises the two
//! processes' writes) to add container instances as registration would, and applies
//! device messages with `device::ingest` as the MQTT link does. The hub's service loop runs
//! in the hub process and sees those changes on its next tick.

mod common;

use std::time::Duration;

use common::{eventually, Hub, REGION};
use serde_json::{json, Value};
use skerry_hub::arn::Arns;
use skerry_hub::device::{self, Ingested};
use skerry_hub::state::Hub as HubState;
use skerry_hub::store::{ContainerInstance, Store};
use skerry_proto::desired::DesiredStatus;
use skerry_proto::link::{Entry, Envelope, Message};
use skerry_proto::status::{ContainerReport, HealthStatus, NetworkBinding, TaskReport, TaskStatus};
use skerry_proto::taskdef::Protocol;

const ACCOUNT: &str = "000000000000";
const WAIT: Duration = Duration::from_secs(15);
const CONTAINERS: &str = r#"[{"name":"web","image":"busybox","memory":64,"cpu":128,
    "portMappings":[{"containerPort":80}]}]"#;

/// The device side: the hub's store opened in this process.
struct Devices {
    hub: HubState,
    seq: std::collections::HashMap<String, u64>,
}

impl Devices {
    fn open(hub: &Hub) -> Devices {
        Devices {
            hub: HubState::new(
                Store::open(&hub.state_dir()).expect("open the hub's store"),
                Arns::new(REGION, ACCOUNT),
            ),
            seq: Default::default(),
        }
    }

    /// Adds ACTIVE instance `n` of `cluster`, as registration would; returns (id, ARN).
    fn add(&self, cluster: &str, n: u32, cpu: i64, memory: i64) -> (String, String) {
        let id = format!("mi-{n:017x}");
        let arn = format!(
            "arn:aws:ecs:{REGION}:{ACCOUNT}:container-instance/{cluster}/{:032x}",
            n
        );
        self.hub
            .store
            .insert_container_instance(&ContainerInstance {
                id: id.clone(),
                arn: arn.clone(),
                cluster: cluster.into(),
                activation_id: "1da5d8c4-2a28-44b5-ac86-911892afea04".into(),
                hostname: format!("pi-{n}"),
                architecture: "arm64".into(),
                agent_version: "0.1.0".into(),
                cpu_units: cpu,
                memory_mib: memory,
                attributes: r#"{"site":"shop"}"#.into(),
                cert_serial: "01".into(),
                status: "ACTIVE".into(),
                agent_connected: true,
                generation: 0,
                applied_generation: 0,
                registered_at: 1_700_000_000.0 + f64::from(n),
                last_seen_at: None,
            })
            .expect("insert container instance");
        (id, arn)
    }

    /// The next message from device `id`.
    fn send(&mut self, id: &str, message: Message) -> Ingested {
        let seq = self.seq.entry(id.to_string()).or_insert(0);
        *seq += 1;
        let e = Envelope {
            seq: *seq,
            folded: Vec::new(),
            dropped: Vec::new(),
            entry: Entry {
                time: 1_700_000_100.0 + *seq as f64,
                message,
            },
        };
        device::ingest(&self.hub, id, &e, hub_now()).expect("ingest")
    }

    /// Device `id` says task `arn` is now `last`.
    fn report(&mut self, id: &str, arn: &str, last: TaskStatus) -> Ingested {
        let task = TaskReport {
            task_arn: arn.into(),
            task_definition_arn: None,
            last_status: last,
            desired_status: if last == TaskStatus::Stopped {
                DesiredStatus::Stopped
            } else {
                DesiredStatus::Running
            },
            stopped_reason: (last == TaskStatus::Stopped)
                .then(|| "Essential container in task exited".into()),
            stop_code: (last == TaskStatus::Stopped).then(|| "EssentialContainerExited".into()),
            health_status: HealthStatus::Unknown,
            created_at: None,
            started_at: Some(1_700_000_050.0),
            stopping_at: None,
            stopped_at: None,
            containers: vec![ContainerReport {
                name: "web".into(),
                runtime_id: None,
                last_status: last,
                exit_code: (last == TaskStatus::Stopped).then_some(0),
                reason: None,
                health_status: HealthStatus::Unknown,
                network_bindings: vec![NetworkBinding {
                    bind_ip: "0.0.0.0".into(),
                    container_port: 80,
                    host_port: 32768,
                    protocol: Protocol::Tcp,
                }],
                image: "busybox".into(),
            }],
            group: None,
            replaces: None,
            replaced_by: None,
        };
        self.send(id, Message::TaskState { task })
    }

    /// (generation, [(task ARN, desired status)]) of the instance's desired document.
    fn document(&self, id: &str) -> (u64, Vec<(String, DesiredStatus)>) {
        let doc = device::desired_document(&self.hub, id)
            .expect("document")
            .expect("instance exists");
        let tasks = doc
            .tasks
            .iter()
            .map(|t| (t.task_arn.clone(), t.desired_status))
            .collect();
        (doc.generation, tasks)
    }
}

/// The hub's clock, as its link passes it to `ingest` (device clocks are the devices' own).
/// An aws command line's words: `w("ecs list-tasks --cluster edge")`.
fn w(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn hub_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn setup(hub: &Hub) {
    hub.ok(&w("ecs create-cluster --cluster-name edge"));
    hub.ok(&[
        "ecs",
        "register-task-definition",
        "--family",
        "web",
        "--container-definitions",
        CONTAINERS,
    ]);
}

fn describe_tasks(hub: &Hub, arns: &[String]) -> Vec<Value> {
    let mut args = vec!["ecs", "describe-tasks", "--cluster", "edge", "--tasks"];
    args.extend(arns.iter().map(String::as_str));
    let out = hub.ok(&args);
    assert_eq!(out["failures"], json!([]), "{out}");
    out["tasks"].as_array().expect("tasks").clone()
}

fn list_tasks(hub: &Hub, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["ecs", "list-tasks", "--cluster", "edge"];
    args.extend_from_slice(extra);
    strings(&hub.ok(&args)["taskArns"])
}

fn describe_instances(hub: &Hub, arns: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "ecs",
        "describe-container-instances",
        "--cluster",
        "edge",
        "--container-instances",
    ];
    args.extend_from_slice(arns);
    let out = hub.ok(&args);
    assert_eq!(out["failures"], json!([]), "{out}");
    out["containerInstances"].as_array().expect("list").clone()
}

fn resource(instance: &Value, which: &str, name: &str) -> Value {
    instance[which]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {which}"))
        .clone()
}

#[test]
fn run_task_spreads_and_device_reports_show_in_describe_tasks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    setup(&hub);
    let mut dev = Devices::open(&hub);
    let (a, a_arn) = dev.add("edge", 1, 2048, 1024);
    let (b, b_arn) = dev.add("edge", 2, 2048, 1024);

    let out = hub.ok(&w("ecs run-task --cluster edge --task-definition web --count 2 --started-by ci --launch-type EXTERNAL"));
    assert_eq!(out["failures"], json!([]), "{out}");
    let tasks = out["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 2);
    let mut on: Vec<&str> = tasks
        .iter()
        .map(|t| t["containerInstanceArn"].as_str().expect("arn"))
        .collect();
    on.sort();
    assert_eq!(
        on,
        [a_arn.as_str(), b_arn.as_str()],
        "one task per instance"
    );
    let arns: Vec<String> = tasks
        .iter()
        .map(|t| t["taskArn"].as_str().expect("arn").to_string())
        .collect();
    let task_on = |inst: &str| -> String {
        tasks
            .iter()
            .find(|t| t["containerInstanceArn"] == inst)
            .and_then(|t| t["taskArn"].as_str())
            .expect("task on instance")
            .to_string()
    };
    let (task_a, task_b) = (task_on(&a_arn), task_on(&b_arn));

    for t in describe_tasks(&hub, &arns) {
        assert_eq!(t["lastStatus"], "PENDING", "{t}");
        assert_eq!(t["desiredStatus"], "RUNNING");
        assert_eq!(t["launchType"], "EXTERNAL");
        assert_eq!(t["group"], "family:web");
        assert_eq!(t["startedBy"], "ci");
        assert_eq!(
            t["clusterArn"],
            format!("arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/edge")
        );
        assert_eq!(
            t["taskDefinitionArn"],
            format!("arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/web:1")
        );
        assert_eq!(
            (t["cpu"].as_str(), t["memory"].as_str()),
            (Some("128"), Some("64"))
        );
        assert_eq!(t["containers"][0]["name"], "web");
        assert_eq!(t["containers"][0]["lastStatus"], "PENDING");
        assert!(t["createdAt"].is_number());
    }
    assert_eq!(
        dev.document(&a),
        (1, vec![(task_a.clone(), DesiredStatus::Running)])
    );
    assert_eq!(
        dev.document(&b),
        (1, vec![(task_b.clone(), DesiredStatus::Running)])
    );

    // Device a reports its task RUNNING; a replay of the same message changes nothing.
    assert!(matches!(
        dev.report(&a, &task_a, TaskStatus::Running),
        Ingested::Applied { .. }
    ));
    let running = describe_tasks(&hub, std::slice::from_ref(&task_a)).remove(0);
    assert_eq!(running["lastStatus"], "RUNNING");
    assert_eq!(running["startedAt"], 1_700_000_050.0);
    assert_eq!(running["containers"][0]["lastStatus"], "RUNNING");
    assert_eq!(
        running["containers"][0]["networkBindings"][0],
        json!({"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": 32768, "protocol": "tcp"})
    );

    assert_eq!(
        list_tasks(&hub, &["--container-instance", &a_arn]),
        std::slice::from_ref(&task_a)
    );
    assert_eq!(
        list_tasks(&hub, &["--container-instance", &b]),
        std::slice::from_ref(&task_b)
    );
    assert_eq!(list_tasks(&hub, &["--started-by", "ci"]).len(), 2);
    assert_eq!(list_tasks(&hub, &["--family", "other"]).len(), 0);
    // Page size 1 makes the CLI follow nextToken.
    assert_eq!(list_tasks(&hub, &["--page-size", "1"]).len(), 2);

    let listed = strings(
        &hub.ok(&w("ecs list-container-instances --cluster edge"))["containerInstanceArns"],
    );
    assert_eq!(listed, [a_arn.clone(), b_arn.clone()]);
    let described = describe_instances(&hub, &[&a_arn, &b]);
    let (ia, ib) = (&described[0], &described[1]);
    assert_eq!(ia["ec2InstanceId"], a);
    assert_eq!(ia["status"], "ACTIVE");
    assert_eq!(ia["agentConnected"], true);
    assert_eq!(
        (
            ia["runningTasksCount"].as_i64(),
            ia["pendingTasksCount"].as_i64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(
        (
            ib["runningTasksCount"].as_i64(),
            ib["pendingTasksCount"].as_i64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(
        resource(ia, "registeredResources", "MEMORY")["integerValue"],
        1024
    );
    assert_eq!(
        resource(ia, "remainingResources", "MEMORY")["integerValue"],
        1024 - 64
    );
    assert_eq!(
        resource(ia, "remainingResources", "CPU")["integerValue"],
        2048 - 128
    );
    assert_eq!(
        resource(ia, "registeredResources", "CPU")["type"],
        "INTEGER"
    );
    assert_eq!(ia["versionInfo"]["agentVersion"], "0.1.0");
    assert!(ia["attributes"]
        .as_array()
        .expect("attributes")
        .contains(&json!({"name": "site", "value": "shop"})));

    // StopTask: wanted STOPPED at once, STOPPED when the device says so.
    let stopped = hub.ok(&[
        "ecs",
        "stop-task",
        "--cluster",
        "edge",
        "--task",
        &task_a,
        "--reason",
        "maintenance",
    ]);
    let t = &stopped["task"];
    assert_eq!(
        (t["desiredStatus"].as_str(), t["lastStatus"].as_str()),
        (Some("STOPPED"), Some("RUNNING"))
    );
    assert_eq!(t["stoppedReason"], "maintenance");
    assert_eq!(t["stopCode"], "UserInitiated");
    assert_eq!(
        dev.document(&a),
        (2, vec![(task_a.clone(), DesiredStatus::Stopped)])
    );
    dev.report(&a, &task_a, TaskStatus::Stopped);
    let t = describe_tasks(&hub, std::slice::from_ref(&task_a)).remove(0);
    assert_eq!(t["lastStatus"], "STOPPED");
    assert_eq!(
        t["stoppedReason"], "maintenance",
        "the user's reason is kept"
    );
    assert_eq!(t["containers"][0]["exitCode"], 0);
    assert!(t["stoppedAt"].is_number());
    assert_eq!(dev.document(&a), (3, vec![]));
    assert_eq!(
        list_tasks(&hub, &["--desired-status", "STOPPED"]),
        std::slice::from_ref(&task_a)
    );
    assert_eq!(list_tasks(&hub, &[]), std::slice::from_ref(&task_b));

    // Too big for any instance: a failure in ECS's words, not an error.
    hub.ok(&[
        "ecs",
        "register-task-definition",
        "--family",
        "big",
        "--container-definitions",
        r#"[{"name":"big","image":"busybox","memory":4000}]"#,
    ]);
    let out = hub.ok(&w("ecs run-task --cluster edge --task-definition big"));
    assert_eq!(out["tasks"], json!([]));
    assert_eq!(out["failures"][0]["reason"], "RESOURCE:MEMORY", "{out}");
    // Ten more fit, spread five and five: a has its room back since its task stopped.
    let out = hub.ok(&w(
        "ecs run-task --cluster edge --task-definition web --count 10",
    ));
    let placed = out["tasks"].as_array().expect("tasks");
    assert_eq!(placed.len(), 10, "{out}");
    let on_a = placed
        .iter()
        .filter(|t| t["containerInstanceArn"] == a_arn.as_str())
        .count();
    assert_eq!(
        on_a, 6,
        "b had one of the group already: 6 and 5 is the spread: {out}"
    );

    let err = hub.fails(&w(
        "ecs run-task --cluster edge --task-definition web --count 11",
    ));
    assert!(
        err.contains("(InvalidParameterException)") && err.contains("count 11"),
        "{err}"
    );
    let err = hub.fails(&[
        "ecs",
        "run-task",
        "--cluster",
        "edge",
        "--task-definition",
        "web",
        "--overrides",
        r#"{"containerOverrides":[{"name":"web","command":["sh"]}]}"#,
    ]);
    assert!(
        err.contains("(InvalidParameterException)") && err.contains("overrides"),
        "{err}"
    );
    let err = hub.fails(&w(
        "ecs run-task --cluster edge --task-definition web --launch-type FARGATE",
    ));
    assert!(err.contains("launchType FARGATE"), "{err}");
    hub.stop();
}

#[test]
fn services_spread_replace_scale_and_delete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    setup(&hub);
    let mut dev = Devices::open(&hub);
    let (a, a_arn) = dev.add("edge", 1, 4096, 4096);
    let (b, b_arn) = dev.add("edge", 2, 4096, 4096);

    let created = hub.ok(&w("ecs create-service --cluster edge --service-name site --task-definition web:1 --desired-count 3 --launch-type EXTERNAL"));
    let s = &created["service"];
    assert_eq!(
        s["serviceArn"],
        format!("arn:aws:ecs:{REGION}:{ACCOUNT}:service/edge/site")
    );
    assert_eq!(s["status"], "ACTIVE");
    assert_eq!(s["desiredCount"], 3);
    assert_eq!(s["pendingCount"], 3);
    assert_eq!(s["schedulingStrategy"], "REPLICA");
    assert_eq!(s["deployments"][0]["status"], "PRIMARY");
    let deployment = s["deployments"][0]["id"].as_str().expect("id").to_string();
    assert!(deployment.starts_with("ecs-svc/"), "{deployment}");

    let tasks = list_tasks(&hub, &["--service-name", "site"]);
    assert_eq!(tasks.len(), 3);
    let described = describe_tasks(&hub, &tasks);
    let on = |inst: &str| {
        described
            .iter()
            .filter(|t| t["containerInstanceArn"] == inst)
            .count()
    };
    let mut spread = [on(&a_arn), on(&b_arn)];
    spread.sort();
    assert_eq!(spread, [1, 2]);
    for t in &described {
        assert_eq!(t["group"], "service:site");
        assert_eq!(t["startedBy"], deployment);
    }
    let where_is = |arn: &str| -> String {
        let t = described
            .iter()
            .find(|t| t["taskArn"] == arn)
            .expect("task");
        if t["containerInstanceArn"] == a_arn.as_str() {
            a.clone()
        } else {
            b.clone()
        }
    };
    for t in &tasks {
        dev.report(&where_is(t), t, TaskStatus::Running);
    }
    let s = &hub.ok(&w("ecs describe-services --cluster edge --services site"))["services"][0];
    assert_eq!(
        (s["runningCount"].as_i64(), s["pendingCount"].as_i64()),
        (Some(3), Some(0))
    );

    // A task that exits on its device is replaced by the hub's service loop.
    let lost = tasks[0].clone();
    dev.report(&where_is(&lost), &lost, TaskStatus::Stopped);
    let replaced = eventually("the service to replace its stopped task", WAIT, || {
        let now = list_tasks(&hub, &["--service-name", "site"]);
        (now.len() == 3 && !now.contains(&lost)).then_some(now)
    });
    let fresh: Vec<String> = replaced
        .iter()
        .filter(|t| !tasks.contains(t))
        .cloned()
        .collect();
    assert_eq!(fresh.len(), 1);
    let events = hub.ok(&w("ecs describe-services --cluster edge --services site"));
    let messages: Vec<String> = events["services"][0]["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["message"].as_str().expect("message").to_string())
        .collect();
    assert!(
        messages[0].starts_with("(service site) has started 1 tasks:"),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("(service site) has started 3 tasks:")),
        "{messages:?}"
    );

    // Scale to 1: the two newest stop; the oldest stays.
    let updated = hub.ok(&w(
        "ecs update-service --cluster edge --service site --desired-count 1",
    ));
    assert_eq!(updated["service"]["desiredCount"], 1);
    let kept = list_tasks(&hub, &["--service-name", "site"]);
    assert_eq!(kept, [tasks[1].clone()]);
    let stopping = list_tasks(
        &hub,
        &["--service-name", "site", "--desired-status", "STOPPED"],
    );
    assert_eq!(
        stopping.len(),
        3,
        "the lost one and two scaled away: {stopping:?}"
    );
    for t in describe_tasks(&hub, &stopping) {
        assert_eq!(t["desiredStatus"], "STOPPED");
    }

    // A new revision replaces the remaining task (new one first: 100% minimum healthy).
    hub.ok(&[
        "ecs",
        "register-task-definition",
        "--family",
        "web",
        "--container-definitions",
        CONTAINERS,
    ]);
    let rolled = hub.ok(&w(
        "ecs update-service --cluster edge --service site --task-definition web:2",
    ));
    assert_eq!(
        rolled["service"]["deployments"].as_array().map(Vec::len),
        Some(2),
        "{rolled}"
    );
    let both = list_tasks(&hub, &["--service-name", "site"]);
    assert_eq!(both.len(), 2);
    let new = both
        .iter()
        .find(|t| **t != tasks[1])
        .expect("new task")
        .clone();
    let new_on = describe_tasks(&hub, std::slice::from_ref(&new)).remove(0);
    let new_instance = if new_on["containerInstanceArn"] == a_arn.as_str() {
        &a
    } else {
        &b
    };
    dev.report(new_instance, &new, TaskStatus::Running);
    eventually("the old revision's task to be stopped", WAIT, || {
        (list_tasks(&hub, &["--service-name", "site"]) == std::slice::from_ref(&new)).then_some(())
    });

    let err = hub.fails(&w("ecs delete-service --cluster edge --service site"));
    assert!(
        err.contains("(InvalidParameterException)") && err.contains("scaled above 0"),
        "{err}"
    );
    let deleted = hub.ok(&w(
        "ecs delete-service --cluster edge --service site --force",
    ));
    assert_eq!(deleted["service"]["status"], "DRAINING");
    assert_eq!(
        list_tasks(&hub, &["--service-name", "site"]),
        Vec::<String>::new()
    );
    assert_eq!(
        strings(&hub.ok(&w("ecs list-services --cluster edge"))["serviceArns"]).len(),
        1
    );
    // INACTIVE once the devices report every task of it STOPPED (seen on the loop's next
    // tick), not before.
    let stopping = list_tasks(
        &hub,
        &["--service-name", "site", "--desired-status", "STOPPED"],
    );
    for t in describe_tasks(&hub, &stopping) {
        let arn = t["taskArn"].as_str().expect("arn");
        if t["lastStatus"] != "STOPPED" && arn != new {
            let on = if t["containerInstanceArn"] == a_arn.as_str() {
                &a
            } else {
                &b
            };
            dev.report(on, arn, TaskStatus::Stopped);
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let s = hub.ok(&w("ecs describe-services --cluster edge --services site"));
    assert_eq!(
        s["services"][0]["status"], "DRAINING",
        "a task is still running"
    );
    dev.report(new_instance, &new, TaskStatus::Stopped);
    eventually("the service to turn INACTIVE", WAIT, || {
        let s = hub.ok(&w("ecs describe-services --cluster edge --services site"));
        (s["services"][0]["status"] == "INACTIVE").then_some(())
    });
    assert!(strings(&hub.ok(&w("ecs list-services --cluster edge"))["serviceArns"]).is_empty());
    // Its name is free again.
    hub.ok(&w("ecs create-service --cluster edge --service-name site --task-definition web --desired-count 0"));
    hub.stop();
}

#[test]
fn unknown_things_get_ecs_errors_that_name_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    setup(&hub);

    // Each refusal: the command, the ECS error code, and what the message must name.
    let refused = |table: &[(&str, &str, &str)]| {
        for (line, code, names) in table {
            let err = hub.fails(&w(line));
            assert!(
                err.contains(&format!("({code})")) && err.contains(names),
                "{line}: {err}"
            );
        }
    };
    refused(&[
        (
            "ecs run-task --cluster nope --task-definition web",
            "ClusterNotFoundException",
            "nope",
        ),
        (
            "ecs list-tasks --cluster nope",
            "ClusterNotFoundException",
            "nope",
        ),
        // No instance to run on.
        (
            "ecs run-task --cluster edge --task-definition web",
            "InvalidParameterException",
            "No Container Instances",
        ),
    ]);

    let dev = Devices::open(&hub);
    dev.add("edge", 1, 1024, 1024);
    hub.ok(&w("ecs deregister-task-definition --task-definition web:1"));
    refused(&[
        (
            "ecs run-task --cluster edge --task-definition web:9",
            "InvalidParameterException",
            "web:9",
        ),
        (
            "ecs run-task --cluster edge --task-definition web:1",
            "InvalidParameterException",
            "inactive",
        ),
        (
            "ecs update-service --cluster edge --service ghost --desired-count 1",
            "ServiceNotFoundException",
            "ghost",
        ),
        (
            "ecs delete-service --cluster edge --service ghost",
            "ServiceNotFoundException",
            "ghost",
        ),
        (
            "ecs list-tasks --cluster edge --service-name ghost",
            "ServiceNotFoundException",
            "ghost",
        ),
        (
            "ecs stop-task --cluster edge --task 0123456789abcdef",
            "InvalidParameterException",
            "0123456789abcdef",
        ),
    ]);
    let d = hub.ok(&w("ecs describe-services --cluster edge --services ghost"));
    assert_eq!(d["failures"][0]["reason"], "MISSING");
    assert_eq!(
        d["failures"][0]["arn"],
        format!("arn:aws:ecs:{REGION}:{ACCOUNT}:service/edge/ghost")
    );

    let d = hub.ok(&w(
        "ecs describe-tasks --cluster edge --tasks 0123456789abcdef",
    ));
    assert_eq!(d["failures"][0]["reason"], "MISSING");
    let d = hub.ok(&w("ecs describe-container-instances --cluster edge --container-instances mi-00000000000000099"));
    assert_eq!(d["failures"][0]["reason"], "MISSING");
    let err = hub.fails(&[
        "ecs", "create-service", "--cluster", "edge", "--service-name", "s", "--task-definition", "web",
        "--desired-count", "1", "--load-balancers",
        r#"[{"targetGroupArn":"arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/x/1","containerName":"web","containerPort":80}]"#,
    ]);
    assert!(err.contains("loadBalancers"), "{err}");
    hub.stop();
}

#[test]
fn state_survives_a_restart_and_deregistration_moves_service_tasks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    setup(&hub);
    let dev = Devices::open(&hub);
    let (a, a_arn) = dev.add("edge", 1, 4096, 4096);
    let (b, b_arn) = dev.add("edge", 2, 4096, 4096);
    hub.ok(&w("ecs create-service --cluster edge --service-name site --task-definition web --desired-count 2"));
    let run = hub.ok(&w("ecs run-task --cluster edge --task-definition web"));
    let single = run["tasks"][0]["taskArn"]
        .as_str()
        .expect("arn")
        .to_string();
    let before_tasks = list_tasks(&hub, &[]);
    assert_eq!(before_tasks.len(), 3);
    let before = describe_tasks(&hub, &before_tasks);
    let docs = (dev.document(&a), dev.document(&b));
    drop(dev);

    hub.stop();
    let hub = Hub::start(tmp.path());
    assert_eq!(list_tasks(&hub, &[]), before_tasks);
    assert_eq!(describe_tasks(&hub, &before_tasks), before);
    let s = &hub.ok(&w("ecs describe-services --cluster edge --services site"))["services"][0];
    assert_eq!(
        (
            s["status"].as_str(),
            s["desiredCount"].as_i64(),
            s["pendingCount"].as_i64()
        ),
        (Some("ACTIVE"), Some(2), Some(2))
    );
    let dev = Devices::open(&hub);
    assert_eq!((dev.document(&a), dev.document(&b)), docs);

    // Deregistering an instance with tasks needs --force; its tasks are then STOPPED and
    // the service starts its share on the other instance.
    let err = hub.fails(&[
        "ecs",
        "deregister-container-instance",
        "--cluster",
        "edge",
        "--container-instance",
        &a_arn,
    ]);
    assert!(err.contains("--force") && err.contains(&a), "{err}");
    let on_a = list_tasks(&hub, &["--container-instance", &a]);
    assert!(!on_a.is_empty());
    let gone = hub.ok(&[
        "ecs",
        "deregister-container-instance",
        "--cluster",
        "edge",
        "--container-instance",
        &a,
        "--force",
    ]);
    assert_eq!(gone["containerInstance"]["status"], "INACTIVE");
    for t in describe_tasks(&hub, &on_a) {
        assert_eq!(
            (t["lastStatus"].as_str(), t["desiredStatus"].as_str()),
            (Some("STOPPED"), Some("STOPPED"))
        );
        assert!(t["stoppedReason"]
            .as_str()
            .is_some_and(|r| r.contains("deregistered")));
    }
    assert_eq!(
        dev.document(&a).1,
        vec![],
        "the device is told to stop everything"
    );
    assert_eq!(
        strings(
            &hub.ok(&w("ecs list-container-instances --cluster edge"))["containerInstanceArns"]
        ),
        std::slice::from_ref(&b_arn)
    );
    assert_eq!(
        strings(
            &hub.ok(&w(
                "ecs list-container-instances --cluster edge --status ACTIVE"
            ))["containerInstanceArns"]
        ),
        std::slice::from_ref(&b_arn)
    );
    let service_on_b = eventually("the service's tasks to be on b only", WAIT, || {
        let tasks = list_tasks(&hub, &["--service-name", "site"]);
        let all_b = tasks.len() == 2
            && describe_tasks(&hub, &tasks)
                .iter()
                .all(|t| t["containerInstanceArn"] == b_arn.as_str());
        all_b.then_some(tasks)
    });
    assert_eq!(service_on_b.len(), 2);
    let live_on_b = list_tasks(&hub, &["--container-instance", &b]).len() as i64;
    assert_eq!(live_on_b, 2 + i64::from(!on_a.contains(&single)));
    let bi = describe_instances(&hub, &[&b_arn]).remove(0);
    assert_eq!(bi["pendingTasksCount"].as_i64(), Some(live_on_b));
    assert_eq!(
        resource(&bi, "remainingResources", "MEMORY")["integerValue"].as_i64(),
        Some(4096 - 64 * live_on_b)
    );
    hub.stop();
}
