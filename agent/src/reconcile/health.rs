//! ECS container health checks: the command runs inside the container every `interval`
//! seconds, is killed after `timeout`, and `retries` failures in a row make the container
//! UNHEALTHY; failures during `startPeriod` do not count.

use std::sync::Arc;
use std::time::Duration;

use skerry_proto::status::HealthStatus;
use skerry_proto::taskdef::HealthCheck;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::signal::Signal;
use crate::runtime::Runtime;

pub(crate) async fn check(
    rt: Arc<dyn Runtime>,
    id: String,
    name: String,
    hc: HealthCheck,
    mut process: serde_json::Value,
    tx: mpsc::Sender<Signal>,
    stop: CancellationToken,
) {
    process["args"] = serde_json::json!(hc.argv());
    process["terminal"] = serde_json::json!(false);
    let interval = Duration::from_secs(hc.interval_secs().into());
    let timeout = Duration::from_secs(hc.timeout_secs().into());
    let start_period = Duration::from_secs(hc.start_period_secs().into());
    let started = Instant::now();
    let mut status = HealthStatus::Unknown;
    let mut failures = 0u32;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
        n += 1;
        let exec_id = format!("health-{n}");
        let ok = matches!(
            rt.exec(&id, &exec_id, process.clone(), timeout).await,
            Ok(0)
        );
        debug!(container = %id, ok, "health check");
        let next = if ok {
            failures = 0;
            HealthStatus::Healthy
        } else if started.elapsed() < start_period {
            status
        } else {
            failures += 1;
            if failures >= hc.retries() {
                HealthStatus::Unhealthy
            } else {
                status
            }
        };
        if next != status {
            status = next;
            let sig = Signal::Health {
                name: name.clone(),
                status,
            };
            if tx.send(sig).await.is_err() {
                return;
            }
        }
    }
}
