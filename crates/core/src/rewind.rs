//! What to do when pg_rewind fails: the rule shared by the keeper and the
//! simulation.
//!
//! A former primary's data directory can hold the only copy of commits no
//! standby received. So it is replaced by a new copy only when pg_rewind
//! itself says the directory cannot be rewound (the WAL it needs is gone, the
//! cluster has neither checksums nor `wal_log_hints`). Anything else (the
//! source refused the connection, the password was wrong, a timeout, the
//! source not promoted yet) is retried with a growing pause, and the
//! directory is left as it was. Even then the old directory is moved aside
//! rather than deleted, when the filesystem has room for the new copy, unless
//! the spec says it may be destroyed ([`reclone_step`]).

use std::time::Duration;

/// What a failed pg_rewind means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindFailure {
    /// pg_rewind cannot rewind this directory onto the source: only a new
    /// copy helps.
    Unrewindable,
    /// Connection, authentication, timeout or anything not known to be
    /// final: try again later, touching nothing.
    Retry,
}

/// pg_rewind's own words for a directory it cannot rewind. Kept narrow on
/// purpose: an unknown message is a reason to retry, never to delete.
const UNREWINDABLE: &[&str] = &[
    "could not find previous WAL record",
    "could not read WAL record",
    "could not find WAL",
    "could not find common ancestor",
    "needs to use either data checksums or",
    "clusters are not compatible with this version of pg_rewind",
];

/// Classifies a pg_rewind failure from its error output.
pub fn classify_rewind_failure(message: &str) -> RewindFailure {
    if UNREWINDABLE.iter().any(|m| message.contains(m)) {
        RewindFailure::Unrewindable
    } else {
        RewindFailure::Retry
    }
}

/// The first pause after a retryable rewind failure.
pub const REWIND_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between rewind attempts.
pub const REWIND_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long to wait after `failures` retryable failures in a row: doubling
/// from [`REWIND_RETRY_FIRST`] up to [`REWIND_RETRY_MAX`].
pub fn rewind_retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    REWIND_RETRY_FIRST
        .saturating_mul(1 << doublings)
        .min(REWIND_RETRY_MAX)
}

/// How to make room for a new copy of an unrewindable directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecloneStep {
    /// Move the old directory aside (replacing an older such copy) and clone.
    MoveAside,
    /// Delete the old directory and clone: the spec allows it and there is
    /// no room to keep it.
    Destroy,
    /// Neither: keep the directory and say why.
    Refuse(String),
}

/// Chooses how to re-clone: keep the old directory when the filesystem has
/// room for it and a new copy; destroy it only when the spec allows.
pub fn reclone_step(room_for_both: bool, may_destroy: bool) -> RecloneStep {
    match (room_for_both, may_destroy) {
        (true, _) => RecloneStep::MoveAside,
        (false, true) => RecloneStep::Destroy,
        (false, false) => RecloneStep::Refuse(
            "the filesystem has no room to keep the old data directory next to a new copy: free space, or allow its deletion with `pgwarden ctl spec set reclone_may_destroy_data=true`".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pg_rewinds_own_verdict_leads_to_a_new_copy() {
        for unrewindable in [
            "pg_rewind failed (exit status: 1): pg_rewind: error: could not find previous WAL record at 0/3000060",
            "pg_rewind: error: target server needs to use either data checksums or \"wal_log_hints = on\"",
        ] {
            assert_eq!(classify_rewind_failure(unrewindable), RewindFailure::Unrewindable, "{unrewindable}");
        }
        for retry in [
            "pg_rewind: error: connection to server at \"127.0.0.1\", port 5433 failed: Connection refused",
            "pg_rewind: error: connection to server at \"127.0.0.1\", port 5433 failed: timeout expired",
            "pg_rewind: error: connection to server at \"127.0.0.1\", port 5433 failed: FATAL:  password authentication failed for user \"postgres\"",
            "pg_rewind: error: source and target cluster are on the same timeline",
            "pg_rewind: error: source and target clusters are from different systems",
            "something nobody has seen before",
        ] {
            assert_eq!(classify_rewind_failure(retry), RewindFailure::Retry, "{retry}");
        }
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        let pauses: Vec<u64> = (1..=7).map(|n| rewind_retry_after(n).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(rewind_retry_after(u32::MAX), REWIND_RETRY_MAX);
    }

    #[test]
    fn the_old_directory_is_kept_unless_there_is_no_room_and_the_spec_allows() {
        assert_eq!(reclone_step(true, false), RecloneStep::MoveAside);
        assert_eq!(reclone_step(true, true), RecloneStep::MoveAside);
        assert_eq!(reclone_step(false, true), RecloneStep::Destroy);
        assert!(
            matches!(reclone_step(false, false), RecloneStep::Refuse(why) if why.contains("reclone_may_destroy_data"))
        );
    }
}
