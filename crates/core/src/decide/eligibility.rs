//! Who may be promoted: one rule for automatic failover (the best candidate)
//! and for an operator's request (a named target), so that the two cannot
//! differ. Both `failover` and `requests` use it; it uses neither.

use super::{usable, ClusterView};
use crate::lsn::Lsn;
use crate::report::ObservedRole;
use crate::status::{Assignment, Status};

/// A standby eligible for promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) uid: String,
    pub(super) host: String,
    pub(super) port: u16,
    /// Bytes behind the most advanced position any live node reported.
    pub(super) lag: u64,
}

/// The most advanced position any live keeper reported.
pub(super) fn most_advanced(view: &ClusterView) -> Lsn {
    view.keepers
        .values()
        .filter_map(|r| r.received_lsn())
        .max()
        .unwrap_or_default()
}

/// Whether `uid` may be promoted, by the rules of invariant 3: not the
/// primary already, assigned a standby, its keeper reporting a healthy
/// standby without a fatal error, of the cluster's system; and unless
/// `force`: not tagged nofailover, allowed by the synchronous replication
/// rule, on the cluster's timeline, within `max_lag_bytes` of the most
/// advanced position any live keeper reported (the old primary's last report
/// included, when it is still there). `force` never accepts an unhealthy,
/// unknown or foreign node. Returns the lag.
pub(super) fn eligible(
    next: &Status,
    view: &ClusterView,
    uid: &str,
    force: bool,
) -> Result<u64, String> {
    if next.primary.as_deref() == Some(uid) {
        return Err(format!("{uid} is already the primary"));
    }
    if !matches!(next.members.get(uid), Some(Assignment::Standby { .. })) {
        return Err(format!(
            "{uid} is not a standby of this cluster (see `pgwarden ctl status`)"
        ));
    }
    let Some(r) = view.keepers.get(uid) else {
        return Err(format!("{uid} is not running (its keeper reports nothing)"));
    };
    if !r.healthy || r.role != ObservedRole::Standby || !usable(r) {
        return Err(format!("{uid} is not a healthy standby"));
    }
    if r.system_id.is_none() || r.system_id != next.system_id {
        return Err(format!(
            "{uid} holds data of another system (identifier {}, the cluster's {})",
            r.system_id.map_or("unknown".into(), |s| s.to_string()),
            next.system_id.map_or("unknown".into(), |s| s.to_string())
        ));
    }
    let lag = r
        .received_lsn()
        .unwrap_or_default()
        .lag_behind(most_advanced(view));
    if force {
        return Ok(lag);
    }
    if r.nofailover {
        return Err(format!("{uid} is tagged nofailover"));
    }
    if !super::sync::may_promote(next, view, uid) {
        return Err(format!(
            "{uid} is not a synchronous standby (promotable: {}): it could lack acknowledged commits",
            next.sync_standbys.join(", ")
        ));
    }
    if next.timeline != 0 && r.timeline != next.timeline {
        return Err(format!(
            "{uid} is on timeline {}, the cluster on {}",
            r.timeline, next.timeline
        ));
    }
    if lag > view.spec.max_lag_bytes {
        return Err(format!(
            "{uid} is {lag} bytes behind, more than max_lag_bytes ({})",
            view.spec.max_lag_bytes
        ));
    }
    Ok(lag)
}

/// The best standby to promote: of those [`eligible`] (not forced) other
/// than `exclude` and reporting a received position, the most advanced by
/// received LSN; ties go to the higher replayed LSN, then to the smallest
/// uid.
pub(super) fn best_candidate(
    status: &Status,
    view: &ClusterView,
    exclude: &str,
) -> Option<Candidate> {
    view.keepers
        .values()
        .filter(|r| r.uid != exclude && r.received_lsn().is_some())
        .filter_map(|r| Some((r, eligible(status, view, &r.uid, false).ok()?)))
        .max_by(|(a, _), (b, _)| {
            (a.received_lsn(), a.replay_lsn, std::cmp::Reverse(&a.uid)).cmp(&(
                b.received_lsn(),
                b.replay_lsn,
                std::cmp::Reverse(&b.uid),
            ))
        })
        .map(|(r, lag)| Candidate {
            uid: r.uid.clone(),
            host: r.pg_host.clone(),
            port: r.pg_port,
            lag,
        })
}
