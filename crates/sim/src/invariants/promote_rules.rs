//! Invariant 3: only an eligible standby is promoted, the most advanced one,
//! and only once the old primary is proven gone.
//!
//! Two checks, one per side of the promotion:
//!
//! - When the store accepts a status that names a new primary (not the
//!   first one), the view the sentinel decided on must show: nobody holding
//!   the primary lease; every live proxy at or past the deposing generation;
//!   the new primary a healthy standby assigned as one, without errors, not
//!   `nofailover`, of the cluster's system and on its timeline, within
//!   `max_lag_bytes` of the most advanced position any keeper reported,
//!   allowed by the synchronous replication rule (strict mode: see
//!   `sync_allows`), and no other such standby further ahead. An operator's
//!   switchover or failover target need only be a healthy standby of the
//!   cluster, and unless forced allowed by the sync rule; a deposed primary
//!   may be reinstated only when no standby was eligible. The rules are
//!   restated here from DESIGN.md and the docs of `decide::sync`, not taken
//!   from `decide`.
//! - When a keeper actually promotes its postgres (ground truth): it is not
//!   tagged `nofailover`, and its WAL is part of the last writer's history
//!   (it is on the primary's timeline, not on a fork).

use pgwarden_core::spec::SyncMode;
use pgwarden_core::{Assignment, ClusterView, KeeperReport, Lsn, ObservedRole, Status};

use super::Invariant;
use crate::events::{Event, StatusWrite};
use crate::postgres::is_prefix;
use crate::world::World;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PromoteRules;

impl Invariant for PromoteRules {
    fn name(&self) -> &'static str {
        "promote_rules"
    }

    fn check(&mut self, _: &World, events: &[Event]) -> Result<(), String> {
        for e in events {
            match e {
                Event::StatusWritten(w) => check_decision(w)?,
                Event::Promoted {
                    uid,
                    nofailover,
                    wal,
                    last_writer,
                    ..
                } => {
                    if *nofailover {
                        return Err(format!("{uid} is tagged nofailover but was promoted"));
                    }
                    if let Some((writer, history)) = last_writer {
                        if writer != uid && !is_prefix(wal, history) {
                            return Err(format!(
                                "{uid} was promoted with WAL that is not part of {writer}'s history: it was on a fork"
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The furthest WAL position a report shows.
fn position(r: &KeeperReport) -> Lsn {
    [r.current_lsn, r.receive_lsn, r.replay_lsn]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_default()
}

/// Whether the sync policy lets `uid` be promoted, given the status before
/// and the reports the sentinel saw.
///
/// Strict mode: `sync_standbys` (S) names every standby that may hold a
/// commit the primary acknowledged, and each commit was confirmed by `k`
/// (`min_sync_standbys`) of them. Any `|S| - k + 1` members of S therefore
/// include one that has every acknowledged commit, and since WAL is a
/// sequence, whoever is at least as far as all of them has those commits
/// too. So the promoted node must be in S, at least `|S| - k + 1` members of
/// S must have a report with a position, and its position must be at least
/// the furthest of theirs.
///
/// `on` mode: a member of S while S is not empty (it falls back to
/// asynchronous, without promises, once S is empty).
fn sync_allows(view: &ClusterView, before: &Status, uid: &str) -> bool {
    let set = &before.sync_standbys;
    let member = set.iter().any(|u| u == uid);
    match view.spec.sync_mode {
        SyncMode::Off => true,
        SyncMode::On => set.is_empty() || member,
        SyncMode::Strict => {
            let reported: Vec<Lsn> = set
                .iter()
                .filter_map(|u| view.keepers.get(u))
                .filter(|r| has_position(r))
                .map(position)
                .collect();
            let k = usize::try_from(view.spec.min_sync_standbys).unwrap_or(usize::MAX);
            let quorum = (set.len() + 1).saturating_sub(k);
            let furthest = reported.iter().max().copied().unwrap_or_default();
            member
                && reported.len() >= quorum
                && view
                    .keepers
                    .get(uid)
                    .is_some_and(|r| has_position(r) && position(r) >= furthest)
        }
    }
}

/// Whether a report shows any WAL position at all.
fn has_position(r: &KeeperReport) -> bool {
    r.current_lsn.or(r.receive_lsn).or(r.replay_lsn).is_some()
}

fn eligible(
    r: &KeeperReport,
    view: &ClusterView,
    before: &Status,
    old: &str,
) -> Result<(), &'static str> {
    let checks: [(bool, &'static str); 9] = [
        (r.uid != old, "it is the deposed primary"),
        (!r.disqualified(), "its keeper reports a fatal error"),
        (r.healthy, "it is not healthy"),
        (
            r.role == ObservedRole::Standby,
            "it is not running as a standby",
        ),
        (!r.nofailover, "it is tagged nofailover"),
        (
            before.timeline == 0 || r.timeline == before.timeline,
            "it is not on the primary's timeline",
        ),
        (
            r.system_id.is_some() && r.system_id == before.system_id,
            "its data is not the cluster's",
        ),
        (
            matches!(before.members.get(&r.uid), Some(Assignment::Standby { .. })),
            "it was not assigned as a standby",
        ),
        (
            sync_allows(view, before, &r.uid),
            "the sync policy does not allow it",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, why)) => Err(why),
        None => Ok(()),
    }
}

fn check_decision(w: &StatusWrite) -> Result<(), String> {
    let (before, after, view): (&Status, &Status, &ClusterView) = (&w.before, &w.after, &w.view);
    let Some(new) = after.primary.as_deref() else {
        return Ok(());
    };
    // The first primary (no data yet, or data being adopted) is not a promotion.
    if before.primary.as_deref() == Some(new) || before.system_id.is_none() {
        return Ok(());
    }
    let old = before
        .deposed
        .as_deref()
        .or(before.primary.as_deref())
        .unwrap_or_default();
    let fail = |why: String| Err(format!("{new} named primary (was {old}): {why}"));
    if let Some(holder) = &view.primary_lease_holder {
        return fail(format!("{holder} still held the primary lease"));
    }
    // In one call decide both deposes (generation + 1) and promotes: proxies
    // must then already be past a generation that did not exist yet, so
    // there must be none.
    let deposing = if before.deposed.is_some() {
        before.generation
    } else {
        before.generation + 1
    };
    if let Some((id, g)) = view.proxies.iter().find(|(_, g)| **g < deposing) {
        return fail(format!(
            "proxy {id} had applied only generation {g}, not the deposing {deposing}"
        ));
    }
    let top = view
        .keepers
        .values()
        .map(position)
        .max()
        .unwrap_or_default();
    let within_lag = |r: &KeeperReport| chosen_lag(r, top) <= view.spec.max_lag_bytes;
    let best_other = view
        .keepers
        .values()
        .filter(|r| eligible(r, view, before, old).is_ok() && within_lag(r))
        .max_by_key(|r| position(r));
    if new == old {
        // Reinstated: only when nobody else could take over.
        return match best_other {
            Some(r) => fail(format!("{} was eligible to take over", r.uid)),
            None => Ok(()),
        };
    }
    let Some(chosen) = view.keepers.get(new) else {
        return fail("it had no report".into());
    };
    let requested = before.target.as_deref() == Some(new)
        || (after.handled_request != before.handled_request
            && view.spec.request.as_ref().and_then(|r| r.to.as_deref()) == Some(new));
    if requested {
        // An operator's choice: it need not be the most advanced, but it
        // must be a running standby of this cluster, and unless forced a
        // promotable one.
        let forced = before.target_forced || view.spec.request.as_ref().is_some_and(|r| r.force);
        if !(chosen.healthy
            && chosen.role == ObservedRole::Standby
            && chosen.system_id.is_some()
            && chosen.system_id == before.system_id)
        {
            return fail("the requested node was not a healthy standby of the cluster".into());
        }
        if !forced && !sync_allows(view, before, new) {
            return fail("the requested node is not promotable under the sync policy".into());
        }
        return Ok(());
    }
    if let Err(why) = eligible(chosen, view, before, old) {
        return fail(why.into());
    }
    if !within_lag(chosen) {
        return fail(format!(
            "it was {} bytes behind, more than max_lag_bytes {}",
            chosen_lag(chosen, top),
            view.spec.max_lag_bytes
        ));
    }
    if let Some(better) = best_other.filter(|r| position(r) > position(chosen)) {
        return fail(format!(
            "{} was further ahead ({} > {})",
            better.uid,
            position(better),
            position(chosen)
        ));
    }
    Ok(())
}

fn chosen_lag(r: &KeeperReport, top: Lsn) -> u64 {
    top.0.saturating_sub(position(r).0)
}
