//! Skerry's own operation `ListEvents`: the history devices reported — task state changes,
//! container restarts and exits, health changes, gaps in a device's sequence, connections —
//! with each event's id, instance, sequence number, time on the device, task and message,
//! in the order they were ingested (for one device: the order they happened on it). ECS has
//! no such call; `skerry events` uses it, and `skerry events --follow` long-polls it with
//! `afterId` (the last id seen) and `waitSeconds`: the hub answers as soon as an event
//! after that id is ingested, or with none once the wait is over.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use skerry_proto::registration::is_instance_id;

use crate::api::{self, ApiError};
use crate::state::Hub;
use crate::store::DeviceEvent;

const MAX_PAGE: usize = 1000;
/// The longest a long-poll waits: under the clients' 30 s request timeout.
pub const MAX_WAIT_SECONDS: i64 = 20;
/// A waiting long-poll looks again this often even unwoken: events another process wrote
/// to the store (a second hub process, tools, tests) wake nobody here.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListEventsInput {
    instance_id: Option<String>,
    cluster: Option<String>,
    next_token: Option<String>,
    after_id: Option<i64>,
    wait_seconds: Option<i64>,
    max_results: Option<i64>,
}

fn invalid(message: String) -> ApiError {
    ApiError::bad_request("InvalidParameterException", message)
}

/// Where the page starts: after `afterId` or the id `nextToken` stands for (not both).
fn start(input: &ListEventsInput) -> Result<i64, ApiError> {
    let token = api::decode_id_token(input.next_token.as_deref())?;
    match (token, input.after_id) {
        (Some(_), Some(_)) => Err(invalid(
            "give nextToken or afterId, not both: both say where the page starts".into(),
        )),
        (_, Some(id)) if id < 0 => Err(invalid(format!("afterId {id} is negative"))),
        (t, a) => Ok(t.or(a).unwrap_or(0)),
    }
}

fn check_filters(hub: &Hub, input: &ListEventsInput) -> Result<(), ApiError> {
    if let Some(id) = &input.instance_id {
        if !is_instance_id(id) {
            return Err(invalid(format!(
                "instanceId {id:?} is not an instance id (mi- and 17 hex digits); \
                 `skerry instances` lists them"
            )));
        }
        let known = hub
            .store
            .container_instance(id)
            .map_err(|e| api::internal("ServerException", e))?;
        if known.is_none() {
            return Err(ApiError::bad_request(
                "ClientException",
                format!("no container instance {id} is registered with this hub"),
            ));
        }
    }
    if let Some(name) = &input.cluster {
        let known = hub
            .store
            .cluster(name)
            .map_err(|e| api::internal("ServerException", e))?;
        if known.is_none() {
            return Err(ApiError::bad_request(
                "ClusterNotFoundException",
                format!("cluster {name:?} not found; `aws ecs list-clusters` lists them"),
            ));
        }
    }
    Ok(())
}

fn event_json(id: i64, e: DeviceEvent) -> Value {
    json!({
        "id": id,
        "instanceId": e.instance_id,
        "seq": e.seq,
        "time": e.time,
        "taskArn": e.task_arn,
        "container": e.container,
        "kind": e.kind,
        "message": e.message,
    })
}

pub(crate) fn list_events(hub: &Hub, input: ListEventsInput) -> Result<Value, ApiError> {
    let limit = api::page_size(
        input.max_results,
        MAX_PAGE,
        "maxResults",
        "InvalidParameterException",
    )?;
    let wait = match input.wait_seconds {
        None => 0,
        Some(w) if (0..=MAX_WAIT_SECONDS).contains(&w) => w,
        Some(w) => {
            return Err(invalid(format!(
                "waitSeconds {w} is out of range: use 0 to {MAX_WAIT_SECONDS}"
            )))
        }
    };
    check_filters(hub, &input)?;
    let after = start(&input)?;
    let until = Instant::now() + Duration::from_secs(wait as u64);
    let rows = loop {
        // The mark is read before the query: an event committed between the two wakes
        // the wait at once instead of being missed until the next one.
        let mark = hub.changes.event_mark();
        let rows = hub
            .store
            .device_events_after(
                input.instance_id.as_deref(),
                input.cluster.as_deref(),
                after,
                limit,
            )
            .map_err(|e| api::internal("ServerException", e))?;
        if !rows.is_empty() || Instant::now() >= until {
            break rows;
        }
        let recheck = until.min(Instant::now() + RECHECK);
        hub.changes.wait_for_events(mark, recheck).map_err(|_| {
            ApiError::bad_request(
                "ThrottlingException",
                "too many followers are waiting for events; retry in a few seconds",
            )
        })?;
        if hub.changes.stopping() {
            break rows;
        }
    };
    let next = (rows.len() == limit)
        .then(|| {
            rows.last()
                .map(|(id, _)| api::encode_token(&id.to_string()))
        })
        .flatten();
    let events: Vec<Value> = rows.into_iter().map(|(id, e)| event_json(id, e)).collect();
    let mut out = json!({ "events": events });
    if let Some(t) = next {
        out["nextToken"] = Value::from(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arn::Arns;
    use crate::store::{ContainerInstance, Store};
    use std::sync::Arc;

    fn hub_with_instance(dir: &std::path::Path) -> Arc<Hub> {
        let hub = Hub::new(
            Store::open(dir).expect("store"),
            Arns::new("us-east-1", "000000000000"),
        );
        hub.store
            .create_cluster("default", "[]", 0.0)
            .expect("cluster");
        hub.store
            .insert_container_instance(&ContainerInstance {
                id: "mi-00000000000000001".into(),
                arn: "arn:aws:ecs:us-east-1:000000000000:container-instance/default/1".into(),
                cluster: "default".into(),
                activation_id: "a".into(),
                hostname: "pi".into(),
                architecture: "arm64".into(),
                agent_version: "0.1.0".into(),
                cpu_units: 1024,
                memory_mib: 1024,
                attributes: "{}".into(),
                cert_serial: "01".into(),
                status: "ACTIVE".into(),
                agent_connected: true,
                generation: 0,
                applied_generation: 0,
                registered_at: 0.0,
                last_seen_at: None,
            })
            .expect("instance");
        Arc::new(hub)
    }

    fn input(text: &str) -> ListEventsInput {
        serde_json::from_str(text).expect("input")
    }

    #[test]
    fn a_long_poll_answers_as_soon_as_an_event_is_ingested() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = hub_with_instance(dir.path());
        let waiter = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let out = list_events(&hub, input(r#"{"afterId": 0, "waitSeconds": 10}"#));
                (out, started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let ingested = Instant::now();
        // What ingest writes for a device's event, written here through the same commit
        // path (the device module depends on this one, not the other way round).
        hub.write(|tx| {
            tx.add_device_event(&DeviceEvent {
                instance_id: "mi-00000000000000001".into(),
                seq: Some(1),
                time: 5.0,
                task_arn: None,
                container: Some("web".into()),
                kind: "containerRestarted".into(),
                message: "restarted".into(),
            })
        })
        .expect("add the event");
        let (out, waited) = waiter.join().expect("waiter");
        let out = out.expect("ListEvents");
        assert!(
            ingested.elapsed() < RECHECK / 2,
            "answered {:?} after ingest",
            ingested.elapsed()
        );
        assert!(
            waited >= Duration::from_millis(250),
            "{waited:?}: it did wait"
        );
        assert_eq!(out["events"][0]["kind"], "containerRestarted", "{out}");
        assert_eq!(out["events"][0]["id"], 1, "{out}");
        // Nothing after the last id: an empty page once the (short) wait is over.
        let out = list_events(&hub, input(r#"{"afterId": 1, "waitSeconds": 1}"#)).expect("empty");
        assert_eq!(out["events"], serde_json::json!([]));
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = hub_with_instance(dir.path());
        for (text, field) in [
            (r#"{"waitSeconds": 21}"#, "waitSeconds"),
            (r#"{"afterId": -1}"#, "afterId"),
            (r#"{"afterId": 1, "nextToken": "31"}"#, "afterId"),
            (r#"{"cluster": "nowhere"}"#, "nowhere"),
        ] {
            let e = list_events(&hub, input(text)).expect_err(text);
            assert!(e.message.contains(field), "{text}: {}", e.message);
        }
    }
}
