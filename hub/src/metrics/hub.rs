//! The hub's own families, from a [`Snapshot`] of its health counters.

use super::text::{Encoder, Kind};
use crate::health::{Outcome, Snapshot, LATENCY_BUCKETS};

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::ClientError => "client_error",
        Outcome::ServerError => "server_error",
    }
}

pub fn render(s: &Snapshot, e: &mut Encoder) {
    let name = "skerry_hub_api_requests_total";
    e.family(
        name,
        Kind::Counter,
        "API requests by operation and outcome (ok, client_error, server_error).",
    );
    for (op, counts) in &s.requests {
        for (o, count) in Outcome::ALL.iter().zip(counts) {
            let labels = [("operation", *op), ("outcome", outcome_label(*o))];
            e.sample(name, &labels, *count as f64);
        }
    }
    let name = "skerry_hub_api_request_duration_seconds";
    e.family(
        name,
        Kind::Histogram,
        "Time from a request's arrival to its response, in seconds.",
    );
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BUCKETS.iter().zip(&s.buckets) {
        cumulative += n;
        e.sample(&bucket, &[("le", &bound.to_string())], cumulative as f64);
    }
    e.sample(&bucket, &[("le", "+Inf")], s.latency_count as f64);
    e.sample(&format!("{name}_sum"), &[], s.latency_sum.as_secs_f64());
    e.sample(&format!("{name}_count"), &[], s.latency_count as f64);
    let name = "skerry_hub_device_messages_total";
    e.family(
        name,
        Kind::Counter,
        "Device messages the broker link handed to ingest, by what became of them.",
    );
    for (outcome, n) in ["applied", "duplicate", "refused"].iter().zip(s.ingested) {
        e.sample(name, &[("outcome", outcome)], n as f64);
    }
    let name = "skerry_hub_broker_connected";
    e.family(
        name,
        Kind::Gauge,
        "1 while the hub's link to the MQTT broker is up.",
    );
    e.sample(name, &[], f64::from(u8::from(s.broker_connected)));
    let name = "skerry_hub_broker_connects_total";
    e.family(
        name,
        Kind::Counter,
        "Times the hub's link to the MQTT broker came up.",
    );
    e.sample(name, &[], s.broker_connects as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Health, UNKNOWN_OPERATION};
    use std::time::Duration;

    #[test]
    fn counters_as_families() {
        let h = Health::default();
        h.request("CreateCluster", Outcome::Ok, Duration::from_millis(3));
        h.request(
            "CreateCluster",
            Outcome::ClientError,
            Duration::from_secs(30),
        );
        h.request(UNKNOWN_OPERATION, Outcome::ClientError, Duration::ZERO);
        h.ingested(crate::health::Ingest::Applied, 5);
        h.broker_link(true);
        let mut e = Encoder::new();
        render(&h.snapshot(), &mut e);
        let text = e.finish();
        for line in [
            "skerry_hub_api_requests_total{operation=\"CreateCluster\",outcome=\"ok\"} 1",
            "skerry_hub_api_requests_total{operation=\"CreateCluster\",outcome=\"client_error\"} 1",
            "skerry_hub_api_requests_total{operation=\"unknown\",outcome=\"client_error\"} 1",
            "skerry_hub_api_request_duration_seconds_bucket{le=\"0.001\"} 1",
            "skerry_hub_api_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "skerry_hub_api_request_duration_seconds_bucket{le=\"10\"} 2",
            "skerry_hub_api_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "skerry_hub_api_request_duration_seconds_count 3",
            "skerry_hub_api_request_duration_seconds_sum 30.003",
            "skerry_hub_device_messages_total{outcome=\"applied\"} 5",
            "skerry_hub_broker_connected 1",
            "skerry_hub_broker_connects_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
