//! Skerry's own operation `ListEvents`: the history devices reported — task state changes,
//! container restarts and exits, health changes, gaps in a device's sequence, connections —
//! with each event's instance, sequence number, time on the device, task and message, in the
//! order they happened on each device. ECS has no such call; `skerry events` uses it.

use serde::Deserialize;
use serde_json::{json, Value};
use skerry_proto::registration::is_instance_id;

use crate::api::{self, ApiError};
use crate::state::Hub;

const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListEventsInput {
    instance_id: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

fn invalid(message: String) -> ApiError {
    ApiError::bad_request("InvalidParameterException", message)
}

pub(crate) fn list_events(hub: &Hub, input: ListEventsInput) -> Result<Value, ApiError> {
    let limit = api::page_size(
        input.max_results,
        MAX_PAGE,
        "maxResults",
        "InvalidParameterException",
    )?;
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
    let after = api::decode_id_token(input.next_token.as_deref())?.unwrap_or(0);
    let rows = hub
        .store
        .device_events_after(input.instance_id.as_deref(), after, limit)
        .map_err(|e| api::internal("ServerException", e))?;
    let next = (rows.len() == limit)
        .then(|| {
            rows.last()
                .map(|(id, _)| api::encode_token(&id.to_string()))
        })
        .flatten();
    let events: Vec<Value> = rows
        .into_iter()
        .map(|(_, e)| {
            json!({
                "instanceId": e.instance_id,
                "seq": e.seq,
                "time": e.time,
                "taskArn": e.task_arn,
                "container": e.container,
                "kind": e.kind,
                "message": e.message,
            })
        })
        .collect();
    let mut out = json!({ "events": events });
    if let Some(t) = next {
        out["nextToken"] = Value::from(t);
    }
    Ok(out)
}
