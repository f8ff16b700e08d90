//! The hub's clock: Unix time, read in one place. Operations take it as a parameter so tests
//! can pass their own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch. A clock before 1970 is a broken host; it reads as the epoch
/// (SigV4 then refuses every request, which says what is wrong).
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Unix seconds, fractional: the time the store records.
pub fn now() -> f64 {
    since_epoch().as_secs_f64()
}
