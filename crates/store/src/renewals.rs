//! [`Renewals`]: how a lease's renewals went, for metrics.
//!
//! The primary lease's fencing margin must absorb a renewal's round trip: an
//! operator who sees round trips grow towards the margin sees a lease about
//! to be lost before it is. The renewal task records, a metrics endpoint
//! reads; plain atomics, so neither ever waits on the other. A [`Renewals`]
//! may be shared by successive [`crate::LeaseKeeper`]s (a keeper that is
//! primary, then standby, then primary again), so its counts only grow and
//! read as Prometheus counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts of renewals, shared by the task that renews and whoever reports.
#[derive(Debug, Clone, Default)]
pub struct Renewals(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Sum of successful round trips, in nanoseconds.
    total_nanos: AtomicU64,
    /// The last successful round trip, in nanoseconds.
    last_nanos: AtomicU64,
}

/// What [`Renewals`] has counted so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenewalSummary {
    /// Renewals the server confirmed.
    pub succeeded: u64,
    /// Renewals that did not extend the lease: the request failed, or the
    /// server no longer knew the lease.
    pub failed: u64,
    /// Sum of the successful renewals' round trips.
    pub total: Duration,
    /// The last successful renewal's round trip; `None` before the first.
    pub last: Option<Duration>,
}

impl Renewals {
    /// Records a renewal the server confirmed `round_trip` after it was sent.
    pub fn succeeded(&self, round_trip: Duration) {
        let nanos = u64::try_from(round_trip.as_nanos()).unwrap_or(u64::MAX);
        self.0.last_nanos.store(nanos, Ordering::Relaxed);
        self.0.total_nanos.fetch_add(nanos, Ordering::Relaxed);
        // Release: a reader that sees this count sees `last` written.
        self.0.succeeded.fetch_add(1, Ordering::Release);
    }

    /// Records a renewal that did not extend the lease.
    pub fn failed(&self) {
        self.0.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn summary(&self) -> RenewalSummary {
        let succeeded = self.0.succeeded.load(Ordering::Acquire);
        RenewalSummary {
            succeeded,
            failed: self.0.failed.load(Ordering::Relaxed),
            total: Duration::from_nanos(self.0.total_nanos.load(Ordering::Relaxed)),
            last: (succeeded > 0)
                .then(|| Duration::from_nanos(self.0.last_nanos.load(Ordering::Relaxed))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accumulate_across_clones() {
        let r = Renewals::default();
        assert_eq!(r.summary(), RenewalSummary::default());
        let task = r.clone();
        task.succeeded(Duration::from_millis(3));
        task.failed();
        task.succeeded(Duration::from_millis(5));
        assert_eq!(
            r.summary(),
            RenewalSummary {
                succeeded: 2,
                failed: 1,
                total: Duration::from_millis(8),
                last: Some(Duration::from_millis(5)),
            }
        );
    }
}
