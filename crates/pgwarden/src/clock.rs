//! The wall clock, read in one place.
//!
//! Decisions take time as an input (`now_ms` of decide), and request ids are
//! wall-clock milliseconds; every role reads the clock through here so that
//! no module has to import another role for it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (0 before it, saturating
/// far after it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
