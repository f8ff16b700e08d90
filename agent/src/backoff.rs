//! Exponential backoff with jitter, for registration and broker connections: a fleet that
//! lost its hub must not come back in lockstep.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// The ceiling of the next delay.
    ceiling: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            ceiling: base.min(cap),
        }
    }

    /// The next delay: uniform in [ceiling/2, ceiling], then the ceiling doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let hi = self.ceiling;
        let lo = hi / 2;
        let d = if hi > lo {
            rand::thread_rng().gen_range(lo..=hi)
        } else {
            hi
        };
        self.ceiling = (self.ceiling * 2).min(self.cap);
        d
    }

    /// After a success: start again from the base.
    pub fn reset(&mut self) {
        self.ceiling = self.base.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_up_to_the_cap_and_reset() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        let mut b = Backoff::new(base, cap);
        let mut ceiling = base;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            assert!(d <= cap);
            ceiling = (ceiling * 2).min(cap);
        }
        // Long past the cap: still jittered, never above it.
        let late: Vec<Duration> = (0..50).map(|_| b.next_delay()).collect();
        assert!(late.iter().all(|d| *d >= cap / 2 && *d <= cap));
        assert!(late.iter().any(|d| *d != late[0]), "no jitter in {late:?}");
        b.reset();
        let d = b.next_delay();
        assert!(d >= base / 2 && d <= base, "{d:?} after reset");
    }
}
