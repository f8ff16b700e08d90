//! Drives the real `skerry-hub` binary with the real aws CLI (Debian's `awscli`, v2), over
//! loopback only. Each test runs its own hub in its own temporary directory.

mod common;

use std::fs;
use std::process::Command;

use common::{Hub, KEY_ID, SECRET};
use serde_json::Value;

fn arns(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in {v}"))
        .iter()
        .map(|a| a.as_str().expect("ARN string").to_string())
        .collect()
}

const CONTAINERS: &str = r#"[{"name":"app","image":"busybox","memory":64,"essential":true}]"#;

#[test]
fn clusters_create_describe_list_delete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());

    let c = hub.ok(&["ecs", "create-cluster", "--cluster-name", "edge"]);
    let c = &c["cluster"];
    assert_eq!(
        c["clusterArn"],
        "arn:aws:ecs:us-east-1:000000000000:cluster/edge"
    );
    assert_eq!(c["clusterName"], "edge");
    assert_eq!(c["status"], "ACTIVE");
    for count in [
        "registeredContainerInstancesCount",
        "runningTasksCount",
        "pendingTasksCount",
        "activeServicesCount",
    ] {
        assert_eq!(c[count], 0, "{count}");
    }
    // Creating an existing cluster returns it, as ECS does.
    let again = hub.ok(&["ecs", "create-cluster", "--cluster-name", "edge"]);
    assert_eq!(again["cluster"]["clusterArn"], c["clusterArn"]);

    let d = hub.ok(&["ecs", "describe-clusters", "--clusters", "edge", "nope"]);
    assert_eq!(d["clusters"].as_array().map(Vec::len), Some(1));
    assert_eq!(d["clusters"][0]["clusterName"], "edge");
    assert_eq!(d["failures"][0]["reason"], "MISSING");
    assert_eq!(
        d["failures"][0]["arn"],
        "arn:aws:ecs:us-east-1:000000000000:cluster/nope"
    );

    for name in ["c1", "c2"] {
        hub.ok(&["ecs", "create-cluster", "--cluster-name", name]);
    }
    // Page size 1 makes the CLI follow nextToken from page to page.
    let all = hub.ok(&["ecs", "list-clusters", "--page-size", "1"]);
    assert_eq!(
        arns(&all, "clusterArns"),
        ["c1", "c2", "edge"].map(|n| format!("arn:aws:ecs:us-east-1:000000000000:cluster/{n}"))
    );
    let first = hub.ok(&["ecs", "list-clusters", "--max-items", "1"]);
    assert_eq!(arns(&first, "clusterArns").len(), 1);
    assert!(first["NextToken"].is_string(), "{first}");

    let gone = hub.ok(&[
        "ecs",
        "delete-cluster",
        "--cluster",
        "arn:aws:ecs:us-east-1:000000000000:cluster/edge",
    ]);
    assert_eq!(gone["cluster"]["status"], "INACTIVE");
    let listed = hub.ok(&["ecs", "list-clusters"]);
    assert_eq!(arns(&listed, "clusterArns").len(), 2);
    let d = hub.ok(&["ecs", "describe-clusters", "--clusters", "edge"]);
    assert_eq!(d["clusters"][0]["status"], "INACTIVE");

    hub.stop();
}

#[test]
fn unknown_cluster_gets_the_ecs_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    let err = hub.fails(&["ecs", "delete-cluster", "--cluster", "nope"]);
    assert!(
        err.contains(
            "An error occurred (ClusterNotFoundException) when calling the DeleteCluster operation"
        ),
        "{err}"
    );
    hub.stop();
}

#[test]
fn task_definitions_revisions_describe_list_deregister() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    let register = |family: &str| {
        hub.ok(&[
            "ecs",
            "register-task-definition",
            "--family",
            family,
            "--container-definitions",
            CONTAINERS,
        ])
    };
    let arn =
        |f: &str, r: u32| format!("arn:aws:ecs:us-east-1:000000000000:task-definition/{f}:{r}");

    let web1 = register("web");
    assert_eq!(web1["taskDefinition"]["revision"], 1);
    assert_eq!(web1["taskDefinition"]["status"], "ACTIVE");
    assert_eq!(web1["taskDefinition"]["taskDefinitionArn"], arn("web", 1));
    assert_eq!(
        web1["taskDefinition"]["containerDefinitions"][0]["image"],
        "busybox"
    );
    assert!(web1["taskDefinition"]["registeredAt"].is_number());
    assert_eq!(register("web")["taskDefinition"]["revision"], 2);
    assert_eq!(register("db")["taskDefinition"]["revision"], 1);

    let latest = hub.ok(&[
        "ecs",
        "describe-task-definition",
        "--task-definition",
        "web",
    ]);
    assert_eq!(latest["taskDefinition"]["revision"], 2);
    let one = hub.ok(&[
        "ecs",
        "describe-task-definition",
        "--task-definition",
        "web:1",
    ]);
    assert_eq!(one["taskDefinition"]["revision"], 1);
    let by_arn = hub.ok(&[
        "ecs",
        "describe-task-definition",
        "--task-definition",
        &arn("db", 1),
    ]);
    assert_eq!(by_arn["taskDefinition"]["family"], "db");

    let all = hub.ok(&["ecs", "list-task-definitions", "--page-size", "1"]);
    assert_eq!(
        arns(&all, "taskDefinitionArns"),
        [arn("db", 1), arn("web", 1), arn("web", 2)]
    );
    let web_desc = hub.ok(&[
        "ecs",
        "list-task-definitions",
        "--family-prefix",
        "web",
        "--sort",
        "DESC",
    ]);
    assert_eq!(
        arns(&web_desc, "taskDefinitionArns"),
        [arn("web", 2), arn("web", 1)]
    );

    let dereg = hub.ok(&[
        "ecs",
        "deregister-task-definition",
        "--task-definition",
        "web:2",
    ]);
    assert_eq!(dereg["taskDefinition"]["status"], "INACTIVE");
    assert!(dereg["taskDefinition"]["deregisteredAt"].is_number());
    let latest = hub.ok(&[
        "ecs",
        "describe-task-definition",
        "--task-definition",
        "web",
    ]);
    assert_eq!(latest["taskDefinition"]["revision"], 1);
    let inactive = hub.ok(&["ecs", "list-task-definitions", "--status", "INACTIVE"]);
    assert_eq!(arns(&inactive, "taskDefinitionArns"), [arn("web", 2)]);
    // Revisions are never reused.
    assert_eq!(register("web")["taskDefinition"]["revision"], 3);

    let err = hub.fails(&[
        "ecs",
        "describe-task-definition",
        "--task-definition",
        "nope",
    ]);
    assert!(err.contains("(ClientException)"), "{err}");
    let err = hub.fails(&[
        "ecs",
        "deregister-task-definition",
        "--task-definition",
        "web",
    ]);
    assert!(err.contains("(ClientException)"), "{err}");
    hub.stop();
}

#[test]
fn activations_limits_and_expiry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    let created = hub.ok(&[
        "ssm",
        "create-activation",
        "--iam-role",
        "ecsAnywhereRole",
        "--registration-limit",
        "5",
        "--default-instance-name",
        "pi",
    ]);
    let id = created["ActivationId"].as_str().expect("ActivationId");
    let code = created["ActivationCode"].as_str().expect("ActivationCode");
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(code.len(), 20, "{code}");

    let listed = hub.ok(&["ssm", "describe-activations"]);
    let a = &listed["ActivationList"][0];
    assert_eq!(a["ActivationId"], id);
    assert_eq!(a["IamRole"], "ecsAnywhereRole");
    assert_eq!(a["DefaultInstanceName"], "pi");
    assert_eq!(a["RegistrationLimit"], 5);
    assert_eq!(a["RegistrationsCount"], 0);
    assert_eq!(a["Expired"], false);
    assert!(
        a.get("ActivationCode").is_none(),
        "the code is shown only once: {a}"
    );
    let lifetime = a["ExpirationDate"].as_f64().expect("ExpirationDate")
        - a["CreatedDate"].as_f64().expect("CreatedDate");
    assert!(
        (lifetime - 86_400.0).abs() < 1.0,
        "default lifetime is 24h, got {lifetime}"
    );

    let err = hub.fails(&[
        "ssm",
        "create-activation",
        "--iam-role",
        "r",
        "--registration-limit",
        "1001",
    ]);
    assert!(
        err.contains("(ValidationException)") && err.contains("RegistrationLimit"),
        "{err}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let too_late = (now + 31 * 86_400).to_string();
    let err = hub.fails(&[
        "ssm",
        "create-activation",
        "--iam-role",
        "r",
        "--expiration-date",
        &too_late,
    ]);
    assert!(
        err.contains("(ValidationException)") && err.contains("30 days"),
        "{err}"
    );
    let past = (now - 3600).to_string();
    let err = hub.fails(&[
        "ssm",
        "create-activation",
        "--iam-role",
        "r",
        "--expiration-date",
        &past,
    ]);
    assert!(
        err.contains("(ValidationException)") && err.contains("past"),
        "{err}"
    );
    let in_a_week = (now + 7 * 86_400).to_string();
    let week = hub.ok(&[
        "ssm",
        "create-activation",
        "--iam-role",
        "r",
        "--expiration-date",
        &in_a_week,
    ]);
    let week_id = week["ActivationId"].as_str().expect("ActivationId");

    // Both activations, one page each.
    let paged = hub.ok(&["ssm", "describe-activations", "--page-size", "1"]);
    assert_eq!(paged["ActivationList"].as_array().map(Vec::len), Some(2));

    assert_eq!(
        hub.ok(&["ssm", "delete-activation", "--activation-id", id]),
        Value::Null
    );
    let filter = format!("FilterKey=ActivationIds,FilterValues={id},{week_id}");
    let left = hub.ok(&["ssm", "describe-activations", "--filters", &filter]);
    assert_eq!(left["ActivationList"].as_array().map(Vec::len), Some(1));
    assert_eq!(left["ActivationList"][0]["ActivationId"], week_id);
    let err = hub.fails(&["ssm", "delete-activation", "--activation-id", id]);
    assert!(err.contains("(InvalidActivationId)"), "{err}");
    hub.stop();
}

#[test]
fn wrong_secret_unknown_key_and_unsigned_requests_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    let out = hub.aws_with(
        KEY_ID,
        "not-the-right-secret-000",
        &["ecs", "list-clusters"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "An error occurred (InvalidSignatureException) when calling the ListClusters operation"
        ),
        "{err}"
    );
    let out = hub.aws_with("AKIDNOBODY", SECRET, &["ecs", "list-clusters"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("(UnrecognizedClientException)"));
    let err = hub.fails(&["ecs", "list-clusters", "--no-sign-request"]);
    assert!(err.contains("(UnrecognizedClientException)"), "{err}");
    let err = hub.fails(&["ecs", "list-clusters", "--region", "eu-west-1"]);
    assert!(
        err.contains("(InvalidSignatureException)") && err.contains("region"),
        "{err}"
    );
    // Nothing the refused calls asked for happened; the right secret still works.
    assert_eq!(
        arns(&hub.ok(&["ecs", "list-clusters"]), "clusterArns").len(),
        0
    );
    hub.stop();
}

#[test]
fn restart_keeps_clusters_task_definitions_and_activations() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    hub.ok(&["ecs", "create-cluster", "--cluster-name", "edge"]);
    hub.ok(&[
        "ecs",
        "register-task-definition",
        "--family",
        "web",
        "--container-definitions",
        CONTAINERS,
    ]);
    let created = hub.ok(&["ssm", "create-activation", "--iam-role", "ecsAnywhereRole"]);
    hub.stop();

    let hub = Hub::start(tmp.path());
    let listed = hub.ok(&["ecs", "list-clusters"]);
    assert_eq!(
        arns(&listed, "clusterArns"),
        ["arn:aws:ecs:us-east-1:000000000000:cluster/edge"]
    );
    let td = hub.ok(&[
        "ecs",
        "describe-task-definition",
        "--task-definition",
        "web",
    ]);
    assert_eq!(
        td["taskDefinition"]["containerDefinitions"][0]["name"],
        "app"
    );
    let acts = hub.ok(&["ssm", "describe-activations"]);
    assert_eq!(
        acts["ActivationList"][0]["ActivationId"],
        created["ActivationId"]
    );
    let next = hub.ok(&[
        "ecs",
        "register-task-definition",
        "--family",
        "web",
        "--container-definitions",
        CONTAINERS,
    ]);
    assert_eq!(next["taskDefinition"]["revision"], 2);
    hub.stop();
}

#[test]
fn bad_config_exits_64_naming_the_problem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("hub.toml");
    fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndata_dir = \"state\"\nlisten_port = 1\n",
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_skerry-hub"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run skerry-hub");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_port"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "a bad config must not get to listening"
    );
}

#[test]
fn a_definition_devices_cannot_run_is_refused_with_the_field_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    let err = hub.fails(&[
        "ecs",
        "register-task-definition",
        "--family",
        "web",
        "--container-definitions",
        r#"[{"name":"app","image":"busybox","memory":64,"logConfiguration":{"logDriver":"awslogs"}}]"#,
    ]);
    assert!(
        err.contains("containerDefinitions[0].logConfiguration"),
        "{err}"
    );
    assert!(err.contains("not supported"), "{err}");
    // Nothing was registered.
    let list = hub.ok(&["ecs", "list-task-definitions"]);
    assert_eq!(list["taskDefinitionArns"], serde_json::json!([]));
    hub.stop();
}
