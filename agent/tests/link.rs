//! The MQTT link against a real Mosquitto (TLS client certificates, the hub's ACL) and a
//! hub client: desired state down, task states up through the durable outbox, with no
//! sequence number lost across broker outages and `kill -9` of the agent.

mod harness;

use std::time::Duration;

use harness::hub::{check_no_gap_in_order, describe, Broker, HubClient, Seen, TestCa, INSTANCE};
use harness::{arn, sh_task, stopped, task, Agent};
use serde_json::json;
use skerry_proto::link::{EventKind, Message};
use skerry_proto::status::TaskStatus;

const WAIT: Duration = Duration::from_secs(90);

fn busybox(a: &Agent) -> String {
    format!("{}/busybox:latest", a.registry)
}

/// An agent with a stored identity for `INSTANCE` on `broker`.
fn linked_agent(slot: u8, name: &str, ca: &TestCa, broker: &Broker, extra: &str) -> Agent {
    let a = Agent::with_top(slot, name, "", extra);
    ca.identity(INSTANCE, &broker.url())
        .store(&a.data_dir().join("identity"))
        .expect("store the identity");
    a
}

/// Position of the first TaskState of task `name` in `status`, at or after `from`.
fn task_state(s: &Seen, name: &str, status: TaskStatus, from: usize) -> Option<usize> {
    s.up.iter()
        .enumerate()
        .skip(from)
        .find_map(|(i, e)| match &e.entry.message {
            Message::TaskState { task }
                if task.task_arn == arn(name) && task.last_status == status =>
            {
                Some(i)
            }
            _ => None,
        })
}

fn applied(s: &Seen, generation: u64) -> bool {
    s.up.iter()
        .any(|e| e.entry.message == Message::Applied { generation })
}

/// Position of a FullState after `from` that has generation `generation` and task `name`
/// with `status`.
fn full_state_after(
    s: &Seen,
    from: usize,
    generation: u64,
    name: &str,
    status: TaskStatus,
) -> Option<usize> {
    s.up.iter()
        .enumerate()
        .skip(from + 1)
        .find_map(|(i, e)| match &e.entry.message {
            Message::FullState {
                generation: g,
                tasks,
            } if *g == generation
                && tasks
                    .iter()
                    .any(|t| t.task_arn == arn(name) && t.last_status == status) =>
            {
                Some(i)
            }
            _ => None,
        })
}

#[test]
fn link_reports_through_broker_outages_and_agent_kills_without_a_gap() {
    let ca = TestCa::new("link test ca");
    let mut broker = Broker::start(&ca);
    let hub = HubClient::connect(&ca, &broker);
    let mut a = linked_agent(
        40,
        "link",
        &ca,
        &broker,
        "[link]\nmetrics_interval_secs = 1\n",
    );
    a.start();
    hub.wait("presence online", WAIT, |s| {
        s.presence.last().is_some_and(|p| p.online)
    });

    // Desired state from the hub: the task runs on real containerd and is reported.
    let image = busybox(&a);
    let def = sh_task(&image, "web", "sleep 600");
    let doc = json!({"generation": a.next_generation(), "tasks": [task("web", def.clone())]});
    hub.publish_desired(INSTANCE, &doc.to_string());
    a.wait_status(&arn("web"), "RUNNING");
    hub.wait("web RUNNING, generation 1 applied and metrics", WAIT, |s| {
        task_state(s, "web", TaskStatus::Running, 0).is_some()
            && applied(s, 1)
            && s.up
                .iter()
                .any(|e| matches!(e.entry.message, Message::Metrics(_)))
    });
    check_no_gap_in_order(&hub.seen.lock().expect("lock"));

    // Outage: the task is stopped on the device while the broker is down, and short tasks
    // come and go, more changes than the sender's in-flight window; they wait in the
    // outbox and come through, in order, followed by the full state.
    broker.stop();
    let mark = hub.seen.lock().expect("lock").up.len();
    let mut doc = vec![stopped("web", def.clone())];
    let blips: Vec<String> = (0..8).map(|i| format!("blip{i}")).collect();
    for b in &blips {
        doc.push(task(b, sh_task(&image, b, "exit 0")));
    }
    a.apply(doc).expect("apply locally");
    a.wait_status(&arn("web"), "STOPPED");
    for b in &blips {
        a.wait_status(&arn(b), "STOPPED");
    }
    broker.resume();
    hub.wait("web STOPPED, then a FullState", WAIT, |s| {
        task_state(s, "web", TaskStatus::Stopped, mark)
            .is_some_and(|i| full_state_after(s, i, 2, "web", TaskStatus::Stopped).is_some())
    });
    {
        let seen = hub.seen.lock().expect("lock");
        check_no_gap_in_order(&seen);
        let drained = seen.up.len() - mark;
        assert!(
            drained > 32,
            "only {drained} messages after the outage: the window was not exercised\n{}",
            describe(&seen)
        );
    }

    // kill -9 while the broker is down: what the outbox held survives the agent.
    broker.stop();
    let mark = hub.seen.lock().expect("lock").up.len();
    a.apply(vec![task("web2", sh_task(&image, "web2", "sleep 600"))])
        .expect("apply locally");
    a.wait_status(&arn("web2"), "RUNNING");
    std::thread::sleep(Duration::from_secs(1));
    a.kill9();
    a.start();
    a.wait_status(&arn("web2"), "RUNNING");
    std::thread::sleep(Duration::from_secs(2));
    broker.resume();
    hub.wait(
        "web2 RUNNING, then a FullState of generation 3",
        WAIT,
        |s| {
            task_state(s, "web2", TaskStatus::Running, mark)
                .is_some_and(|i| full_state_after(s, i, 3, "web2", TaskStatus::Running).is_some())
        },
    );
    let newest = check_no_gap_in_order(&hub.seen.lock().expect("lock"));
    assert!(newest > 5, "{}", describe(&hub.seen.lock().expect("lock")));
    a.finish();
}

#[test]
fn invalid_desired_state_is_reported_not_applied_and_the_will_says_offline() {
    let ca = TestCa::new("link test ca");
    let broker = Broker::start(&ca);
    let hub = HubClient::connect(&ca, &broker);
    let mut a = linked_agent(41, "badoc", &ca, &broker, "");
    a.start();
    let image = busybox(&a);
    let def = sh_task(&image, "keep", "sleep 600");
    let doc = json!({"generation": a.next_generation(), "tasks": [task("keep", def)]});
    hub.publish_desired(INSTANCE, &doc.to_string());
    a.wait_status(&arn("keep"), "RUNNING");

    let mut bad = sh_task(&image, "bad", "true");
    bad["networkMode"] = json!("awsvpc");
    let doc = json!({"generation": 2, "tasks": [task("bad", bad)]});
    hub.publish_desired(INSTANCE, &doc.to_string());
    hub.wait("the refusal reported", WAIT, |s| {
        s.up.iter().any(|e| match &e.entry.message {
            Message::Event {
                kind: EventKind::Other,
                message,
                ..
            } => message.contains("refused") && message.contains("networkMode"),
            _ => false,
        })
    });
    let tasks = a.ps();
    assert_eq!(
        tasks.len(),
        1,
        "the refused document changed nothing: {tasks:#?}"
    );
    assert_eq!(tasks[0]["taskArn"], arn("keep"));
    assert_eq!(tasks[0]["lastStatus"], "RUNNING");
    {
        let seen = hub.seen.lock().expect("lock");
        assert!(!applied(&seen, 2), "{}", describe(&seen));
        check_no_gap_in_order(&seen);
    }

    // A document not newer than the applied generation is ignored.
    let from = std::fs::read_to_string(&a.log).expect("log").len();
    let stale =
        json!({"generation": 1, "tasks": [task("stale", sh_task(&image, "stale", "true"))]});
    hub.publish_desired(INSTANCE, &stale.to_string());
    harness::wait_for("the stale document to be ignored", WAIT, || {
        std::fs::read_to_string(&a.log).unwrap_or_default()[from..]
            .contains("not newer than the applied one")
    });
    let tasks = a.ps();
    assert_eq!(
        tasks.len(),
        1,
        "the stale document changed nothing: {tasks:#?}"
    );

    // The broker announces the device's death with its last will.
    a.kill9();
    hub.wait("presence offline (the last will)", WAIT, |s| {
        s.presence.last().is_some_and(|p| !p.online)
    });
    a.start();
    hub.wait("presence online again", WAIT, |s| {
        s.presence.last().is_some_and(|p| p.online)
    });
    // A clean stop says offline itself (a clean disconnect discards the will).
    a.finish();
    hub.wait("presence offline after a clean stop", WAIT, |s| {
        s.presence.last().is_some_and(|p| !p.online)
    });
    let log = broker.log();
    assert!(
        log.contains(&format!("Client {INSTANCE} disconnected.")),
        "no clean DISCONNECT from the agent:\n{log}"
    );
}
