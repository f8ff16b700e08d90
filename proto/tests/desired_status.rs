//! The desired-state document and the task reports, through the public API.

use serde_json::json;
use skerry_proto::desired::{is_containerd_id, DesiredState, DesiredStatus};
use skerry_proto::status::{ContainerReport, HealthStatus, NetworkBinding, TaskReport, TaskStatus};
use skerry_proto::taskdef::Protocol;

fn taskdef() -> serde_json::Value {
    json!({
        "family": "nginx",
        "containerDefinitions": [{"name": "nginx", "image": "nginx", "memory": 64}]
    })
}

fn doc(tasks: serde_json::Value) -> String {
    json!({"generation": 7, "tasks": tasks}).to_string()
}

#[test]
fn parses_a_desired_state() {
    let s = DesiredState::parse(&doc(json!([
        {"taskArn": "arn:aws:ecs:eu-west-1:1:task/edge/abc123", "taskDefinition": taskdef(), "desiredStatus": "RUNNING"},
        {"taskArn": "t-2", "taskDefinition": taskdef(), "desiredStatus": "STOPPED"}
    ])))
    .expect("valid");
    assert_eq!(s.generation, 7);
    assert_eq!(s.tasks[0].task_id(), "abc123");
    assert_eq!(s.tasks[1].task_id(), "t-2");
    assert_eq!(s.tasks[1].desired_status, DesiredStatus::Stopped);
    let back = serde_json::to_value(&s).expect("serializes");
    assert_eq!(back["tasks"][0]["desiredStatus"], "RUNNING");
    assert_eq!(
        back["tasks"][0]["taskArn"],
        "arn:aws:ecs:eu-west-1:1:task/edge/abc123"
    );
    assert_eq!(back["tasks"][0]["taskDefinition"]["family"], "nginx");
}

#[test]
fn task_definition_errors_are_prefixed_with_the_task() {
    let mut bad = taskdef();
    bad["containerDefinitions"][0]["linuxParameters"] = json!({"capabilities": {"add": ["NOPE"]}});
    let e = DesiredState::parse(&doc(json!([
        {"taskArn": "a", "taskDefinition": taskdef(), "desiredStatus": "RUNNING"},
        {"taskArn": "b", "taskDefinition": bad, "desiredStatus": "RUNNING"}
    ])))
    .expect_err("bad capability");
    assert_eq!(
        e.path,
        "tasks[1].taskDefinition.containerDefinitions[0].linuxParameters.capabilities.add[0]"
    );
    let mut unknown = taskdef();
    unknown["colour"] = json!("blue");
    let e = DesiredState::parse(&doc(json!([
        {"taskArn": "a", "taskDefinition": unknown, "desiredStatus": "RUNNING"}
    ])))
    .expect_err("unknown field");
    assert_eq!(e.path, "tasks[0].taskDefinition.colour");
}

#[test]
fn rejects_duplicate_and_unusable_task_arns() {
    let e = DesiredState::parse(&doc(json!([
        {"taskArn": "a/x", "taskDefinition": taskdef(), "desiredStatus": "RUNNING"},
        {"taskArn": "a/x", "taskDefinition": taskdef(), "desiredStatus": "STOPPED"}
    ])))
    .expect_err("duplicate");
    assert_eq!(e.path, "tasks[1].taskArn");
    assert!(e.message.contains("twice"), "{e}");

    let e = DesiredState::parse(&doc(json!([
        {"taskArn": "a/x", "taskDefinition": taskdef(), "desiredStatus": "RUNNING"},
        {"taskArn": "b/x", "taskDefinition": taskdef(), "desiredStatus": "RUNNING"}
    ])))
    .expect_err("same id");
    assert_eq!(e.path, "tasks[1].taskArn");
    assert!(e.message.contains("task id \"x\""), "{e}");

    for arn in [
        "task/",
        "task/a b",
        "task/a:b",
        &format!("task/{}", "x".repeat(65)),
        "..",
    ] {
        let e = DesiredState::parse(&doc(json!([
            {"taskArn": arn, "taskDefinition": taskdef(), "desiredStatus": "RUNNING"}
        ])))
        .expect_err("bad id");
        assert_eq!(e.path, "tasks[0].taskArn", "{arn}");
    }
}

#[test]
fn rejects_unknown_desired_status() {
    let e = DesiredState::parse(&doc(json!([
        {"taskArn": "a", "taskDefinition": taskdef(), "desiredStatus": "PAUSED"}
    ])))
    .expect_err("bad status");
    assert_eq!(e.path, "tasks[0].desiredStatus");
}

#[test]
fn task_report_serializes_in_describe_tasks_shape() {
    let r = TaskReport {
        task_arn: "arn:t/1".into(),
        task_definition_arn: None,
        last_status: TaskStatus::Running,
        desired_status: DesiredStatus::Running,
        stopped_reason: None,
        stop_code: None,
        health_status: HealthStatus::Healthy,
        created_at: Some(1700000000.5),
        started_at: None,
        stopping_at: None,
        stopped_at: None,
        containers: vec![ContainerReport {
            name: "nginx".into(),
            runtime_id: Some("1-nginx".into()),
            last_status: TaskStatus::Stopped,
            exit_code: Some(137),
            reason: None,
            health_status: HealthStatus::Unknown,
            network_bindings: vec![NetworkBinding {
                bind_ip: "0.0.0.0".into(),
                container_port: 80,
                host_port: 8080,
                protocol: Protocol::Tcp,
            }],
            image: "nginx".into(),
        }],
        group: None,
        replaces: None,
        replaced_by: None,
    };
    let v = serde_json::to_value(&r).expect("serializes");
    assert_eq!(
        v,
        json!({
            "taskArn": "arn:t/1",
            "lastStatus": "RUNNING",
            "desiredStatus": "RUNNING",
            "healthStatus": "HEALTHY",
            "createdAt": 1700000000.5,
            "containers": [{
                "name": "nginx",
                "runtimeId": "1-nginx",
                "lastStatus": "STOPPED",
                "exitCode": 137,
                "healthStatus": "UNKNOWN",
                "networkBindings": [{"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": 8080, "protocol": "tcp"}],
                "image": "nginx"
            }]
        })
    );
    let back: TaskReport = serde_json::from_value(v).expect("parses back");
    assert_eq!(back, r);
}

#[test]
fn lifecycle_names_are_ecs_caps() {
    let all = [
        (TaskStatus::Provisioning, "PROVISIONING"),
        (TaskStatus::Pending, "PENDING"),
        (TaskStatus::Activating, "ACTIVATING"),
        (TaskStatus::Running, "RUNNING"),
        (TaskStatus::Deactivating, "DEACTIVATING"),
        (TaskStatus::Stopping, "STOPPING"),
        (TaskStatus::Deprovisioning, "DEPROVISIONING"),
        (TaskStatus::Stopped, "STOPPED"),
    ];
    for (s, name) in all {
        assert_eq!(serde_json::to_value(s).expect("serializes"), json!(name));
    }
    assert_eq!(
        serde_json::to_value(HealthStatus::Unhealthy).expect("serializes"),
        json!("UNHEALTHY")
    );
}

#[test]
fn container_ids_must_suit_containerd() {
    let s = DesiredState::parse(&doc(json!([
        {"taskArn": "arn:aws:ecs:r:1:task/c/0123456789abcdef0123456789abcdef", "taskDefinition": taskdef(), "desiredStatus": "RUNNING"}
    ])))
    .expect("valid");
    assert_eq!(
        s.tasks[0].container_id("nginx"),
        "0123456789abcdef0123456789abcdef-nginx"
    );

    let mut td = taskdef();
    td["containerDefinitions"][0]["name"] = json!("_nginx");
    let e = DesiredState::parse(&doc(json!([
        {"taskArn": "t1", "taskDefinition": td, "desiredStatus": "RUNNING"}
    ])))
    .expect_err("doubled separator");
    assert_eq!(
        e.path,
        "tasks[0].taskDefinition.containerDefinitions[0].name"
    );

    let mut td = taskdef();
    td["containerDefinitions"][0]["name"] = json!("n".repeat(70));
    let e = DesiredState::parse(&doc(json!([
        {"taskArn": "t1234567", "taskDefinition": td, "desiredStatus": "RUNNING"}
    ])))
    .expect_err("too long");
    assert_eq!(
        e.path,
        "tasks[0].taskDefinition.containerDefinitions[0].name"
    );
    assert!(e.message.contains("76"), "{e}");

    assert!(is_containerd_id("a.b_c-d"));
    assert!(!is_containerd_id("a..b"));
    assert!(!is_containerd_id("a-"));
    assert!(!is_containerd_id(""));
}

#[test]
fn running_tasks_cannot_share_a_host_port() {
    let web = json!({
        "family": "web",
        "containerDefinitions": [{"name": "web", "image": "nginx", "memory": 64,
            "portMappings": [{"containerPort": 80, "hostPort": 8080}]}]
    });
    let task = |arn: &str, status: &str| json!({"taskArn": arn, "taskDefinition": web, "desiredStatus": status});
    let e = DesiredState::parse(&doc(json!([task("a", "RUNNING"), task("b", "RUNNING")])))
        .expect_err("port clash");
    assert_eq!(
        e.path,
        "tasks[1].taskDefinition.containerDefinitions[0].portMappings[0].hostPort"
    );
    assert!(e.message.contains("tasks[0]."), "{e}");
    // A task being stopped does not hold its ports in the desired state.
    assert!(DesiredState::parse(&doc(json!([task("a", "RUNNING"), task("b", "STOPPED")]))).is_ok());
}
