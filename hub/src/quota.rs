//! Per-device message quotas: a token bucket per instance, so one device sending as fast as
//! the broker takes its messages cannot take the hub's one writer from the rest of the
//! fleet. What is over the quota is dropped and counted; the count is reported as an event
//! of the instance once its messages are let through again. Held in memory: a restart
//! starts every bucket full. The map holds one entry per instance that has sent anything,
//! so it is bounded by the fleet.

use std::collections::HashMap;
use std::sync::Mutex;

/// Messages a device may send per second, sustained.
pub const RATE: f64 = 50.0;
/// Messages a device may send at once: an outbox drained after a reconnect comes in a
/// burst.
pub const BURST: f64 = 2000.0;

#[derive(Debug, Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: f64,
    /// Messages dropped since the last one let through.
    dropped: u64,
}

/// What [`Quotas::take`] decided about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the quota; `dropped` messages before it were not (report them).
    Allowed { dropped: u64 },
    /// Over the quota: drop it.
    Dropped,
}

impl Quotas {
    pub fn new() -> Quotas {
        Quotas::default()
    }

    /// Takes one message of `instance_id` at the hub's time `now` (seconds).
    pub fn take(&self, instance_id: &str, now: f64) -> Verdict {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(instance_id.to_string()).or_insert(Bucket {
            tokens: BURST,
            at: now,
            dropped: 0,
        });
        // A clock stepping back refills nothing.
        let elapsed = (now - b.at).max(0.0);
        b.tokens = (b.tokens + elapsed * RATE).min(BURST);
        b.at = b.at.max(now);
        if b.tokens < 1.0 {
            b.dropped = b.dropped.saturating_add(1);
            return Verdict::Dropped;
        }
        b.tokens -= 1.0;
        Verdict::Allowed {
            dropped: std::mem::take(&mut b.dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_the_excess_is_dropped_and_counted_and_time_refills() {
        let q = Quotas::new();
        for _ in 0..BURST as usize {
            assert_eq!(q.take("mi-a", 10.0), Verdict::Allowed { dropped: 0 });
        }
        for _ in 0..5 {
            assert_eq!(q.take("mi-a", 10.0), Verdict::Dropped);
        }
        // Another device has its own bucket.
        assert_eq!(q.take("mi-b", 10.0), Verdict::Allowed { dropped: 0 });
        // One second later RATE more pass, the first says how many were dropped.
        assert_eq!(q.take("mi-a", 11.0), Verdict::Allowed { dropped: 5 });
        for _ in 1..RATE as usize {
            assert_eq!(q.take("mi-a", 11.0), Verdict::Allowed { dropped: 0 });
        }
        assert_eq!(q.take("mi-a", 11.0), Verdict::Dropped);
        // A clock stepping back refills nothing.
        assert_eq!(q.take("mi-a", 5.0), Verdict::Dropped);
    }
}
