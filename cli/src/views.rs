//! The fleet views: `skerry instances`, `skerry tasks`, `skerry services`. Each lists through the
//! ECS API (List* then Describe* in pages of 100, as ECS limits them) and renders a table.

use anyhow::Context;
use serde_json::{json, Value};

use crate::client::Hub;
use crate::table::Table;

/// DescribeTasks, DescribeServices and DescribeContainerInstances take at most this many.
const DESCRIBE_BATCH: usize = 100;

/// Every ARN a List* operation returns, following `nextToken`.
async fn list_all(hub: &Hub, op: &str, mut input: Value, key: &str) -> anyhow::Result<Vec<String>> {
    let mut arns = Vec::new();
    loop {
        let resp = hub.ecs(op, &input).await?;
        let page = resp
            .get(key)
            .and_then(Value::as_array)
            .with_context(|| format!("{op} answered without {key}"))?;
        arns.extend(page.iter().filter_map(Value::as_str).map(str::to_string));
        match resp.get("nextToken").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => input["nextToken"] = Value::from(t),
            _ => return Ok(arns),
        }
    }
}

async fn describe_all(
    hub: &Hub,
    op: &str,
    cluster: &str,
    arg: &str,
    arns: &[String],
    key: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for chunk in arns.chunks(DESCRIBE_BATCH) {
        let resp = hub
            .ecs(op, &json!({"cluster": cluster, arg: chunk}))
            .await?;
        let items = resp
            .get(key)
            .and_then(Value::as_array)
            .with_context(|| format!("{op} answered without {key}"))?;
        out.extend(items.iter().cloned());
    }
    Ok(out)
}

pub async fn instances(hub: &Hub, cluster: &str) -> anyhow::Result<Vec<Value>> {
    let arns = list_all(
        hub,
        "ListContainerInstances",
        json!({"cluster": cluster}),
        "containerInstanceArns",
    )
    .await?;
    describe_all(
        hub,
        "DescribeContainerInstances",
        cluster,
        "containerInstances",
        &arns,
        "containerInstances",
    )
    .await
}

pub async fn tasks(hub: &Hub, cluster: &str, all: bool) -> anyhow::Result<Vec<Value>> {
    let mut arns = Vec::new();
    let statuses: &[&str] = if all {
        &["RUNNING", "STOPPED"]
    } else {
        &["RUNNING"]
    };
    for status in statuses {
        arns.extend(
            list_all(
                hub,
                "ListTasks",
                json!({"cluster": cluster, "desiredStatus": status}),
                "taskArns",
            )
            .await?,
        );
    }
    describe_all(hub, "DescribeTasks", cluster, "tasks", &arns, "tasks").await
}

pub async fn services(hub: &Hub, cluster: &str) -> anyhow::Result<Vec<Value>> {
    let arns = list_all(
        hub,
        "ListServices",
        json!({"cluster": cluster}),
        "serviceArns",
    )
    .await?;
    describe_all(
        hub,
        "DescribeServices",
        cluster,
        "services",
        &arns,
        "services",
    )
    .await
}

/// Every event the hub holds, of one instance, one cluster's instances or all, in the
/// order they were ingested.
pub async fn events(
    hub: &Hub,
    instance: Option<&str>,
    cluster: Option<&str>,
) -> anyhow::Result<Vec<Value>> {
    let mut input = json!({});
    if let Some(i) = instance {
        input["instanceId"] = Value::from(i);
    }
    if let Some(c) = cluster {
        input["cluster"] = Value::from(c);
    }
    let mut out = Vec::new();
    loop {
        let resp = hub.skerry("ListEvents", &input).await?;
        let page = resp
            .get("events")
            .and_then(Value::as_array)
            .context("ListEvents answered without events")?;
        out.extend(page.iter().cloned());
        match resp.get("nextToken").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => input["nextToken"] = Value::from(t),
            _ => return Ok(out),
        }
    }
}

/// Epoch seconds as UTC, to the second.
fn time_of(v: &Value) -> String {
    v.as_f64()
        .filter(|t| *t >= 0.0)
        .map(|t| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t);
            humantime::format_rfc3339_seconds(at).to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// An event's columns: instance, seq, device time, task (and container), kind, message.
pub fn event_cells(e: &Value) -> Vec<String> {
    let task = match (
        e.get("taskArn").and_then(Value::as_str),
        e.get("container").and_then(Value::as_str),
    ) {
        (Some(arn), Some(c)) => format!("{}/{c}", short(arn)),
        (Some(arn), None) => short(arn),
        _ => "-".into(),
    };
    vec![
        text(e, "instanceId"),
        text(e, "seq"),
        time_of(&e["time"]),
        task,
        text(e, "kind"),
        text(e, "message"),
    ]
}

pub fn events_table(items: &[Value]) -> Table {
    let mut t = Table::new(&["INSTANCE", "SEQ", "DEVICE TIME", "TASK", "KIND", "MESSAGE"]);
    for e in items {
        t.row(event_cells(e));
    }
    t
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => "-".into(),
    }
}

/// The last `/` segment of an ARN: what a person reads.
fn short(arn: &str) -> String {
    arn.rsplit('/').next().unwrap_or(arn).to_string()
}

/// `name` of an ECS resource list (`registeredResources`…) as an integer.
fn resource(v: &Value, list: &str, name: &str) -> Option<i64> {
    v.get(list)?
        .as_array()?
        .iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(name))?
        .get("integerValue")?
        .as_i64()
}

fn free_of(v: &Value, name: &str) -> String {
    match (
        resource(v, "remainingResources", name),
        resource(v, "registeredResources", name),
    ) {
        (Some(free), Some(total)) => format!("{free}/{total}"),
        _ => "-".into(),
    }
}

pub fn instances_table(items: &[Value]) -> Table {
    let mut t = Table::new(&[
        "INSTANCE",
        "STATUS",
        "CONNECTED",
        "RUNNING",
        "PENDING",
        "CPU FREE",
        "MEM FREE",
        "AGENT",
    ]);
    for i in items {
        let agent = i
            .pointer("/versionInfo/agentVersion")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string();
        t.row(vec![
            text(i, "ec2InstanceId"),
            text(i, "status"),
            if i.get("agentConnected").and_then(Value::as_bool) == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
            text(i, "runningTasksCount"),
            text(i, "pendingTasksCount"),
            free_of(i, "CPU"),
            free_of(i, "MEMORY"),
            agent,
        ]);
    }
    t
}

pub fn tasks_table(items: &[Value], instances: &[Value]) -> Table {
    let mut t = Table::new(&[
        "TASK",
        "DEFINITION",
        "INSTANCE",
        "LAST",
        "DESIRED",
        "GROUP",
        "CONTAINERS",
    ]);
    for task in items {
        let instance_arn = text(task, "containerInstanceArn");
        let instance = instances
            .iter()
            .find(|i| i.get("containerInstanceArn").and_then(Value::as_str) == Some(&instance_arn))
            .map(|i| text(i, "ec2InstanceId"))
            .unwrap_or_else(|| short(&instance_arn));
        let containers = task
            .get("containers")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        let mut s = format!("{}:{}", text(c, "name"), text(c, "lastStatus"));
                        if let Some(code) = c.get("exitCode").and_then(Value::as_i64) {
                            s.push_str(&format!("({code})"));
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        t.row(vec![
            short(&text(task, "taskArn")),
            short(&text(task, "taskDefinitionArn")),
            instance,
            text(task, "lastStatus"),
            text(task, "desiredStatus"),
            text(task, "group"),
            containers,
        ]);
    }
    t
}

pub fn services_table(items: &[Value]) -> Table {
    let mut t = Table::new(&[
        "SERVICE",
        "STATUS",
        "DESIRED",
        "RUNNING",
        "PENDING",
        "DEFINITION",
    ]);
    for s in items {
        t.row(vec![
            text(s, "serviceName"),
            text(s, "status"),
            text(s, "desiredCount"),
            text(s, "runningCount"),
            text(s, "pendingCount"),
            short(&text(s, "taskDefinition")),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_rows_name_instance_seq_time_and_task() {
        let e = json!({
            "instanceId": "mi-0123456789abcdef0", "seq": 7, "time": 1_800_000_000.25,
            "taskArn": "arn:aws:ecs:us-east-1:0:task/default/t1", "container": "web",
            "kind": "containerRestarted", "message": "container web restarted (exit 1)"
        });
        let out = events_table(&[e]).render();
        let row = out.lines().nth(1).expect("row");
        for want in [
            "mi-0123456789abcdef0",
            " 7 ",
            "2027-01-15T08:00:00Z",
            "t1/web",
            "containerRestarted",
            "(exit 1)",
        ] {
            assert!(row.contains(want), "{want} missing from {row:?}");
        }
    }

    #[test]
    fn instance_rows_show_free_over_registered() {
        let i = json!({
            "ec2InstanceId": "mi-0123456789abcdef0",
            "containerInstanceArn": "arn:aws:ecs:us-east-1:0:container-instance/default/ab",
            "status": "ACTIVE",
            "agentConnected": true,
            "runningTasksCount": 2,
            "pendingTasksCount": 0,
            "registeredResources": [
                {"name": "CPU", "type": "INTEGER", "integerValue": 2048},
                {"name": "MEMORY", "type": "INTEGER", "integerValue": 3800}
            ],
            "remainingResources": [
                {"name": "CPU", "type": "INTEGER", "integerValue": 1536},
                {"name": "MEMORY", "type": "INTEGER", "integerValue": 3288}
            ],
            "versionInfo": {"agentVersion": "0.1.0"}
        });
        let out = instances_table(std::slice::from_ref(&i)).render();
        let row = out.lines().nth(1).expect("row");
        for want in [
            "mi-0123456789abcdef0",
            "ACTIVE",
            "yes",
            "1536/2048",
            "3288/3800",
            "0.1.0",
        ] {
            assert!(row.contains(want), "{want} missing from {row:?}");
        }
        let task = json!({
            "taskArn": "arn:aws:ecs:us-east-1:0:task/default/t1",
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:0:task-definition/web:3",
            "containerInstanceArn": "arn:aws:ecs:us-east-1:0:container-instance/default/ab",
            "lastStatus": "STOPPED", "desiredStatus": "STOPPED", "group": "service:web",
            "containers": [{"name": "nginx", "lastStatus": "STOPPED", "exitCode": 137}]
        });
        let out = tasks_table(&[task], &[i]).render();
        let row = out.lines().nth(1).expect("row");
        for want in [
            "t1",
            "web:3",
            "mi-0123456789abcdef0",
            "service:web",
            "nginx:STOPPED(137)",
        ] {
            assert!(row.contains(want), "{want} missing from {row:?}");
        }
    }
}
