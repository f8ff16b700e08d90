//! `skerry events --follow`: the event history, then each event as the hub ingests it. One
//! long-poll `ListEvents` at a time with `afterId` (the last id printed) and `waitSeconds`;
//! when the hub cannot be reached or is busy, the next try resumes from that id after a
//! pause, so nothing is skipped or printed twice across a reconnect.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::client::{ClientError, Hub};
use crate::views;

/// How long one request waits for an event at the hub (its maximum).
const WAIT_SECONDS: u64 = 20;
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Which events, and how to print them.
pub struct Follow<'a> {
    pub instance: Option<&'a str>,
    pub cluster: Option<&'a str>,
    /// One JSON object per line instead of text columns.
    pub json: bool,
}

/// Whether trying again later can help: the hub was unreachable, failed or was busy.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } | ClientError::BadResponse { .. } => true,
        ClientError::Api { code, .. } => {
            matches!(
                code.as_str(),
                "ServerException" | "ThrottlingException" | "InternalFailure"
            )
        }
        _ => false,
    }
}

/// One line per event: JSON, or the columns `skerry events` shows, tab-separated.
pub fn line(e: &Value, as_json: bool) -> String {
    if as_json {
        e.to_string()
    } else {
        views::event_cells(e).join("\t")
    }
}

/// Prints events to `out` until the process is stopped; returns only on an error that
/// retrying cannot fix (a bad filter, bad credentials) or when `out` is closed.
pub async fn run(hub: &Hub, what: &Follow<'_>, out: &mut impl Write) -> anyhow::Result<()> {
    let mut after: i64 = 0;
    let mut retry = RETRY_MIN;
    loop {
        let mut input = json!({ "afterId": after, "waitSeconds": WAIT_SECONDS });
        if let Some(i) = what.instance {
            input["instanceId"] = Value::from(i);
        }
        if let Some(c) = what.cluster {
            input["cluster"] = Value::from(c);
        }
        let resp = match hub.skerry("ListEvents", &input).await {
            Ok(r) => r,
            Err(e) if transient(&e) => {
                eprintln!(
                    "skerry: events: {e}; retrying in {}s from event {after}",
                    retry.as_secs()
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        retry = RETRY_MIN;
        let page = resp
            .get("events")
            .and_then(Value::as_array)
            .context("ListEvents answered without events")?;
        for e in page {
            let id = e
                .get("id")
                .and_then(Value::as_i64)
                .context("ListEvents answered an event without an id")?;
            writeln!(out, "{}", line(e, what.json)).context("cannot write to stdout")?;
            after = after.max(id);
        }
        out.flush().context("cannot write to stdout")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_what_is_worth_retrying() {
        let e = json!({"id": 7, "instanceId": "mi-1", "seq": 3, "time": 0.0,
            "taskArn": "arn:aws:ecs:us-east-1:0:task/c/abc", "container": "web",
            "kind": "containerRestarted", "message": "again"});
        assert_eq!(line(&e, true), e.to_string());
        assert_eq!(
            line(&e, false),
            "mi-1\t3\t1970-01-01T00:00:00Z\tabc/web\tcontainerRestarted\tagain"
        );
        let api = |code: &str| ClientError::Api {
            operation: "ListEvents".into(),
            code: code.into(),
            message: String::new(),
        };
        assert!(transient(&api("ThrottlingException")));
        assert!(transient(&api("ServerException")));
        assert!(!transient(&api("ClusterNotFoundException")));
        assert!(!transient(&ClientError::NoHub));
    }
}
