//! The hub's own health, counted where things happen: API requests by operation and
//! outcome, their latency, device messages ingested, and whether the broker link is up.
//! `metrics` renders a [`Health::snapshot`]. Operations are counted under `&'static str`
//! names, which the server takes from the API's operation table: nothing a client sends can
//! add a series.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The name requests are counted under when they named no operation the hub serves.
pub const UNKNOWN_OPERATION: &str = "unknown";

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// 4xx: the client's request was refused.
    ClientError,
    /// 5xx: the hub failed.
    ServerError,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::ClientError, Outcome::ServerError];

    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=399 => Outcome::Ok,
            500.. => Outcome::ServerError,
            _ => Outcome::ClientError,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What became of a device message the link handed to ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    Applied,
    Duplicate,
    Refused,
}

impl Ingest {
    pub const ALL: [Ingest; 3] = [Ingest::Applied, Ingest::Duplicate, Ingest::Refused];
}

#[derive(Default)]
pub struct Health {
    requests: Mutex<BTreeMap<&'static str, [u64; 3]>>,
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    ingested: [AtomicU64; 3],
    broker_connected: AtomicBool,
    broker_connects: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Per operation: requests by [`Outcome::ALL`]'s order.
    pub requests: Vec<(&'static str, [u64; 3])>,
    /// Requests per latency bucket (not cumulative); the last is over every bound.
    pub buckets: Vec<u64>,
    pub latency_count: u64,
    pub latency_sum: Duration,
    /// By [`Ingest::ALL`]'s order.
    pub ingested: [u64; 3],
    pub broker_connected: bool,
    pub broker_connects: u64,
}

impl Health {
    pub fn request(&self, operation: &'static str, outcome: Outcome, took: Duration) {
        {
            // A panic elsewhere cannot leave a map of counters half-updated.
            let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            requests.entry(operation).or_default()[outcome.index()] += 1;
        }
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn ingested(&self, what: Ingest, n: u64) {
        self.ingested[what as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn broker_link(&self, up: bool) {
        let was = self.broker_connected.swap(up, Ordering::Relaxed);
        if up && !was {
            self.broker_connects.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        Snapshot {
            requests,
            buckets: self.buckets.iter().map(load).collect(),
            latency_count: load(&self.latency_count),
            latency_sum: Duration::from_micros(load(&self.latency_sum_micros)),
            ingested: [0, 1, 2].map(|i| load(&self.ingested[i])),
            broker_connected: self.broker_connected.load(Ordering::Relaxed),
            broker_connects: load(&self.broker_connects),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_operation_and_bucket() {
        let h = Health::default();
        h.request("CreateCluster", Outcome::Ok, Duration::from_millis(3));
        h.request(
            "CreateCluster",
            Outcome::of_status(400),
            Duration::from_secs(30),
        );
        h.request(UNKNOWN_OPERATION, Outcome::of_status(503), Duration::ZERO);
        h.ingested(Ingest::Duplicate, 5);
        h.broker_link(true);
        h.broker_link(true);
        let s = h.snapshot();
        assert_eq!(
            s.requests,
            [("CreateCluster", [1, 1, 0]), (UNKNOWN_OPERATION, [0, 0, 1])]
        );
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[2], 1);
        assert_eq!(s.buckets[LATENCY_BUCKETS.len()], 1);
        assert_eq!(s.latency_count, 3);
        assert_eq!(s.latency_sum, Duration::from_micros(30_003_000));
        assert_eq!(s.ingested, [0, 5, 0]);
        assert_eq!((s.broker_connected, s.broker_connects), (true, 1));
        h.broker_link(false);
        h.broker_link(true);
        assert_eq!(h.snapshot().broker_connects, 2);
    }
}
