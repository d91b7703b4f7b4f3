//! Synchronous replication: which standbys are synchronous, changed in an
//! order that keeps the zero-loss promise.
//!
//! Two lists live in `status`:
//! - `sync_names`: what the primary's `synchronous_standby_names` lists
//!   (rendered `ANY k (...)`); the primary's keeper applies it.
//! - `sync_standbys`: every standby that may hold an acknowledged commit the
//!   others lack. A standby joins it the moment it is listed (it may confirm
//!   commits as soon as the primary applies the list); it leaves only when
//!   the primary reports a list without it in effect, its WAL senders no
//!   longer treat it as a candidate, and a quorum of the listed standbys has
//!   flushed past the primary's position read after that report — so every
//!   commit it confirmed is held by a quorum of the current list.
//!
//! Promotion in strict mode: a commit was confirmed by `k` members of the
//! list in effect, so among any `|S| - k + 1` members of `S` at least one
//! holds it, and WAL is sequential: the most advanced of them holds them all.
//! decide therefore promotes only a member of `S`, only when at least
//! `|S| - k + 1` members of `S` report, and only one at least as advanced as
//! all of those.
//!
//! With no standby left, strict mode keeps the list (or, with an empty list, a
//! name no standby uses), so commits wait. `on` mode empties the list and
//! commits continue asynchronously: documented as not zero-loss.

use std::collections::BTreeSet;

use super::*;
use crate::lsn::Lsn;
use crate::spec::SyncMode;

/// A standby name no keeper uses: strict mode lists it when it has no
/// standby, so that commits wait instead of being confirmed by nobody.
pub const NO_SYNC_STANDBY: &str = "pgwarden_no_sync_standby";

/// `synchronous_standby_names` for `names` with a quorum of `min`.
pub fn render_sync_names(names: &[String], min: u32, mode: SyncMode) -> String {
    let listed: Vec<String> = match (mode, names.is_empty()) {
        (SyncMode::Off, _) | (SyncMode::On, true) => return String::new(),
        (SyncMode::Strict, true) => vec![NO_SYNC_STANDBY.to_string()],
        _ => names.to_vec(),
    };
    let len = u32::try_from(listed.len()).unwrap_or(u32::MAX);
    // Strict keeps the quorum even if fewer are listed: commits then wait.
    let k = if mode == SyncMode::Strict {
        min
    } else {
        min.min(len)
    };
    let quoted: Vec<String> = listed.iter().map(|n| format!("\"{n}\"")).collect();
    format!("ANY {k} ({})", quoted.join(", "))
}

/// Whether commits on the primary wait because too few synchronous
/// standbys stream (strict mode only).
pub fn writes_blocked(
    spec: &Spec,
    status: &Status,
    keepers: &BTreeMap<String, KeeperReport>,
) -> bool {
    if spec.sync_mode != SyncMode::Strict {
        return false;
    }
    let Some(p) = status.primary.as_ref().and_then(|p| keepers.get(p)) else {
        return false;
    };
    let streaming = status
        .sync_names
        .iter()
        .filter(|n| p.sync_confirmed.contains(n) && p.replicas_streaming.contains(n))
        .count();
    u32::try_from(streaming).unwrap_or(u32::MAX) < spec.min_sync_standbys
}

/// Healthy streaming standbys of `primary`, most advanced first: their
/// keepers say so and the primary sees them streaming.
fn healthy_standbys(next: &Status, view: &ClusterView, primary: &str) -> Vec<String> {
    let seen_by_primary = |uid: &str| {
        view.keepers.get(primary).is_none_or(|p| {
            p.sync_names_applied.is_none() || p.replicas_streaming.iter().any(|u| u == uid)
        })
    };
    let mut v: Vec<&KeeperReport> = view
        .keepers
        .values()
        .filter(|r| {
            usable(r)
                && r.healthy
                && r.role == ObservedRole::Standby
                && r.streaming
                && seen_by_primary(&r.uid)
                && matches!(next.members.get(&r.uid), Some(Assignment::Standby { follow, .. }) if follow == primary)
        })
        .collect();
    v.sort_by(|a, b| {
        b.received_lsn()
            .cmp(&a.received_lsn())
            .then(a.uid.cmp(&b.uid))
    });
    v.into_iter().map(|r| r.uid.clone()).collect()
}

/// Moves `sync_names` and `sync_standbys` one safe step towards the wanted
/// set; `Some` when something changed.
pub(super) fn maintain(next: &mut Status, view: &ClusterView, primary: &str) -> Option<Reason> {
    let spec = &view.spec;
    let p = view
        .keepers
        .get(primary)
        .filter(|r| r.healthy && r.role == ObservedRole::Primary)?;
    let before = (next.sync_names.clone(), next.sync_standbys.clone());
    if spec.sync_mode == SyncMode::Off {
        next.sync_names.clear();
        next.sync_standbys.clear();
    } else {
        let strict = spec.sync_mode == SyncMode::Strict;
        let names: BTreeSet<String> = next.sync_names.iter().cloned().collect();
        let mut may_hold: BTreeSet<String> = next.sync_standbys.iter().cloned().collect();
        let applied = p.sync_names_applied.as_deref().unwrap_or("")
            == render_sync_names(&next.sync_names, spec.min_sync_standbys, spec.sync_mode);
        // Flushed past the primary's position read after the list in
        // effect was observed.
        let caught_up = |u: &String| {
            p.sync_lsn
                .is_some_and(|l| p.replica_flush.get(u).is_some_and(|f| *f >= l))
        };
        let quorum_caught_up = |set: &BTreeSet<String>| {
            u32::try_from(set.iter().filter(|u| caught_up(u)).count()).unwrap_or(u32::MAX)
                >= spec.min_sync_standbys
        };
        // Members that left the list in effect, no longer candidates for the
        // WAL senders, with a quorum of the list holding what they confirmed.
        if applied && (!strict || quorum_caught_up(&names)) {
            may_hold.retain(|u| names.contains(u) || p.sync_confirmed.contains(u));
        }
        let healthy = healthy_standbys(next, view, primary);
        let max = usize::try_from(spec.max_sync_standbys).unwrap_or(usize::MAX);
        // Keep listed members the primary still sees streaming first (no
        // churn: a standby's own report flaps when the primary dies, the
        // primary's view does not), then the most advanced healthy others.
        let kept = names.iter().filter(|u| {
            p.replicas_streaming.contains(*u)
                && view.keepers.get(*u).is_some_and(|r| usable(r) && r.healthy)
        });
        let mut wanted: Vec<String> = kept.cloned().collect();
        wanted.extend(healthy.iter().filter(|u| !names.contains(*u)).cloned());
        wanted.truncate(max);
        let wanted: BTreeSet<String> = wanted.into_iter().collect();
        let mut new_names: BTreeSet<String> = names.union(&wanted).cloned().collect();
        // Dropping a listed member: only once additions are in effect, and
        // (strict) a quorum of the wanted members has caught up.
        if applied && new_names == names && (!strict || quorum_caught_up(&wanted)) {
            new_names.retain(|u| wanted.contains(u));
        }
        if !strict && wanted.is_empty() {
            new_names.clear();
        }
        // Listed from now on: may confirm commits as soon as it is applied.
        may_hold.extend(new_names.iter().cloned());
        next.sync_names = new_names.into_iter().collect();
        next.sync_standbys = may_hold.into_iter().collect();
    }
    let changed = before != (next.sync_names.clone(), next.sync_standbys.clone());
    changed.then(|| Reason::SyncSetChanged {
        names: next.sync_names.clone(),
        promotable: next.sync_standbys.clone(),
    })
}

/// Whether `uid` may be promoted under the sync policy: a member of the set
/// that may hold acknowledged commits, when enough of that set reports, and
/// at least as advanced as every member that reports (strict); any node when
/// the set is empty in `on` mode.
pub(super) fn may_promote(status: &Status, view: &ClusterView, uid: &str) -> bool {
    let spec = &view.spec;
    match spec.sync_mode {
        SyncMode::Off => true,
        SyncMode::On => {
            status.sync_standbys.is_empty() || status.sync_standbys.iter().any(|u| u == uid)
        }
        SyncMode::Strict => {
            if !status.sync_standbys.iter().any(|u| u == uid) {
                return false;
            }
            let fresh = |r: &&KeeperReport| {
                status.deposed.is_none() || r.applied_generation >= status.generation
            };
            let reporting: Vec<Lsn> = status
                .sync_standbys
                .iter()
                .filter_map(|u| {
                    view.keepers
                        .get(u)
                        .filter(fresh)
                        .and_then(|r| r.received_lsn())
                })
                .collect();
            let needed = status
                .sync_standbys
                .len()
                .saturating_sub(usize::try_from(spec.min_sync_standbys).unwrap_or(usize::MAX))
                + 1;
            let floor = reporting.iter().max().copied().unwrap_or_default();
            reporting.len() >= needed
                && view
                    .keepers
                    .get(uid)
                    .filter(fresh)
                    .and_then(|r| r.received_lsn())
                    .is_some_and(|l| l >= floor)
        }
    }
}

/// The sync lists right after `new_primary` was promoted: in strict mode the
/// other members are listed (commits wait until one of them confirms) and
/// may hold commits from then on; otherwise both lists start empty.
pub(super) fn after_promotion(next: &mut Status, spec: &Spec, new_primary: &str) {
    next.sync_names = match spec.sync_mode {
        SyncMode::Strict => next
            .members
            .keys()
            .filter(|u| *u != new_primary)
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    next.sync_standbys = next.sync_names.clone();
}

/// Strict mode, deposed: enough members of the set report, but not enough
/// have published positions read after the deposition yet.
pub(super) fn awaiting_fresh_positions(status: &Status, view: &ClusterView) -> bool {
    if view.spec.sync_mode != SyncMode::Strict || status.deposed.is_none() {
        return false;
    }
    let needed = status
        .sync_standbys
        .len()
        .saturating_sub(usize::try_from(view.spec.min_sync_standbys).unwrap_or(usize::MAX))
        + 1;
    let reports: Vec<&KeeperReport> = status
        .sync_standbys
        .iter()
        .filter_map(|u| view.keepers.get(u))
        .filter(|r| r.received_lsn().is_some())
        .collect();
    let fresh = reports
        .iter()
        .filter(|r| r.applied_generation >= status.generation)
        .count();
    reports.len() >= needed && fresh < needed
}
