//! The recent past of each standby's lag, for the dashboard's chart.
//!
//! Every keeper samples the cluster once a second and keeps the last
//! [`LAG_HISTORY_SPAN`] in memory: bounded in count (a ring buffer of
//! [`LAG_HISTORY_LEN`] samples) and in time (a sample older than the span
//! before the newest is dropped even when a stall left the buffer short), so
//! the chart never shows more than it claims. Nothing is persisted: a
//! restarted keeper starts an empty chart, and any other keeper still has its
//! own.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often a keeper samples the lag.
pub const LAG_SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How far back the chart goes.
pub const LAG_HISTORY_SPAN: Duration = Duration::from_secs(15 * 60);
/// Samples kept: one per [`LAG_SAMPLE_EVERY`] over [`LAG_HISTORY_SPAN`].
pub const LAG_HISTORY_LEN: usize =
    (LAG_HISTORY_SPAN.as_secs() / LAG_SAMPLE_EVERY.as_secs()) as usize;

/// The lag of every standby at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagSample {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Bytes each assigned standby's replayed position is behind the
    /// primary's write position, by uid. Standbys whose lag is unknown (no
    /// report, no primary position) are absent: a gap, not a zero.
    pub lag_bytes: BTreeMap<String, u64>,
}

/// The last samples, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagHistory {
    samples: VecDeque<LagSample>,
    capacity: usize,
    span_ms: u64,
}

impl Default for LagHistory {
    fn default() -> Self {
        LagHistory::new(LAG_HISTORY_LEN, LAG_HISTORY_SPAN)
    }
}

impl LagHistory {
    /// An empty history of at most `capacity` samples within `span`.
    pub fn new(capacity: usize, span: Duration) -> Self {
        LagHistory {
            samples: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            span_ms: u64::try_from(span.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Adds the newest sample. A sample at the same millisecond as the
    /// newest replaces it; one from before it means the wall clock stepped
    /// back, and the old samples (whose times no longer compare) are
    /// dropped rather than drawn out of order.
    pub fn push(&mut self, sample: LagSample) {
        match self.samples.back() {
            Some(last) if last.at_ms == sample.at_ms => {
                self.samples.pop_back();
            }
            Some(last) if last.at_ms > sample.at_ms => self.samples.clear(),
            _ => {}
        }
        let oldest_kept = sample.at_ms.saturating_sub(self.span_ms);
        self.samples.push_back(sample);
        while self.samples.len() > self.capacity
            || self.samples.front().is_some_and(|s| s.at_ms < oldest_kept)
        {
            self.samples.pop_front();
        }
    }

    /// The samples taken after `after_ms` (all of them for `None`), oldest
    /// first: a poller asks only for what it has not drawn yet.
    pub fn since(&self, after_ms: Option<u64>) -> impl Iterator<Item = &LagSample> {
        let start = match after_ms {
            None => 0,
            Some(t) => self.samples.partition_point(|s| s.at_ms <= t),
        };
        self.samples.range(start..)
    }

    /// How many samples are kept.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// No sample yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, lags: &[(&str, u64)]) -> LagSample {
        LagSample {
            at_ms: ms,
            lag_bytes: lags.iter().map(|(u, l)| (u.to_string(), *l)).collect(),
        }
    }

    fn times(h: &LagHistory, after: Option<u64>) -> Vec<u64> {
        h.since(after).map(|s| s.at_ms).collect()
    }

    #[test]
    fn the_default_keeps_fifteen_minutes_of_one_second_samples() {
        assert_eq!(LAG_HISTORY_LEN, 900);
        let mut h = LagHistory::default();
        for i in 0..2000 {
            h.push(at(i * 1000, &[("b", i)]));
        }
        assert_eq!(h.len(), 900);
        assert_eq!(times(&h, None).first(), Some(&(1100 * 1000)));
        assert_eq!(times(&h, None).last(), Some(&(1999 * 1000)));
    }

    #[test]
    fn the_oldest_sample_goes_when_the_buffer_is_full() {
        let mut h = LagHistory::new(3, Duration::from_secs(3600));
        for t in [1, 2, 3, 4] {
            h.push(at(t, &[]));
        }
        assert_eq!(times(&h, None), [2, 3, 4]);
    }

    #[test]
    fn samples_older_than_the_span_go_even_when_the_buffer_is_not_full() {
        let mut h = LagHistory::new(900, Duration::from_secs(10));
        h.push(at(0, &[]));
        h.push(at(5_000, &[]));
        // The keeper stalled for a minute: the old samples are out of range.
        h.push(at(65_000, &[]));
        assert_eq!(times(&h, None), [65_000]);
        h.push(at(70_000, &[]));
        h.push(at(75_000, &[]));
        assert_eq!(times(&h, None), [65_000, 70_000, 75_000]);
        h.push(at(75_001, &[]));
        assert_eq!(times(&h, None), [70_000, 75_000, 75_001]);
    }

    #[test]
    fn since_returns_only_newer_samples() {
        let mut h = LagHistory::new(10, Duration::from_secs(3600));
        for t in [10, 20, 30] {
            h.push(at(t, &[]));
        }
        assert_eq!(times(&h, Some(20)), [30]);
        assert_eq!(times(&h, Some(15)), [20, 30]);
        assert_eq!(times(&h, Some(0)), [10, 20, 30]);
        assert!(times(&h, Some(30)).is_empty());
        assert!(LagHistory::default().since(None).next().is_none());
    }

    #[test]
    fn a_clock_step_back_restarts_the_history_and_a_repeat_replaces() {
        let mut h = LagHistory::new(10, Duration::from_secs(3600));
        h.push(at(10, &[("b", 1)]));
        h.push(at(20, &[("b", 2)]));
        h.push(at(20, &[("b", 3)]));
        assert_eq!(h.len(), 2);
        assert_eq!(h.since(Some(10)).next(), Some(&at(20, &[("b", 3)])));
        h.push(at(5, &[("b", 4)]));
        assert_eq!(times(&h, None), [5]);
    }

    #[test]
    fn a_sample_serialises_with_the_field_names_the_page_reads() {
        let v = serde_json::to_value(at(7, &[("k2", 42)])).unwrap();
        assert_eq!(v, serde_json::json!({"at_ms": 7, "lag_bytes": {"k2": 42}}));
    }
}
