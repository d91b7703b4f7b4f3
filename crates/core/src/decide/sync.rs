//! Synchronous replication: which standbys are synchronous, changed in an
//! order that keeps the zero-loss promise.
//!
//! Two lists live in `status`:
//! - `sync_names`: what the primary's `synchronous_standby_names` must list
//!   (rendered as `ANY k (...)`); the primary's keeper applies it.
//! - `sync_standbys`: who may be promoted. A node enters it only once the
//!   primary *reports* the names that include it applied and shows it
//!   synchronous in pg_stat_replication; it leaves only once the primary
//!   reports names without it applied. So at every instant, every commit the
//!   primary acknowledged is on at least one member of `sync_standbys`, and
//!   promoting the most advanced member loses nothing.
//!
//! In `strict` mode a synchronous standby that fails is replaced when another
//! healthy standby exists; when none does, the names stay and commits wait.
//! In `on` mode the names empty out and commits continue asynchronously
//! (documented as not zero-loss).

use std::collections::BTreeSet;

use super::*;
use crate::spec::SyncMode;

/// `synchronous_standby_names` for `names` with a quorum of `min`.
pub fn render_sync_names(names: &[String], min: u32, mode: SyncMode) -> String {
    if names.is_empty() || mode == SyncMode::Off {
        return String::new();
    }
    let len = u32::try_from(names.len()).unwrap_or(u32::MAX);
    // Strict keeps the quorum even if fewer are listed: commits then wait.
    let k = if mode == SyncMode::Strict {
        min
    } else {
        min.min(len)
    };
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("ANY {k} ({})", list.join(", "))
}

/// Whether commits on the primary wait because no synchronous standby can
/// confirm them (strict mode only).
pub fn writes_blocked(
    spec: &Spec,
    status: &Status,
    keepers: &BTreeMap<String, KeeperReport>,
) -> bool {
    if spec.sync_mode != SyncMode::Strict || status.primary.is_none() {
        return false;
    }
    let Some(p) = status.primary.as_ref().and_then(|p| keepers.get(p)) else {
        return false;
    };
    let confirmed = status
        .sync_names
        .iter()
        .filter(|n| p.sync_confirmed.contains(n))
        .count();
    u32::try_from(confirmed).unwrap_or(u32::MAX) < spec.min_sync_standbys
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
        let applied = p.sync_names_applied.as_deref().unwrap_or("")
            == render_sync_names(&next.sync_names, spec.min_sync_standbys, spec.sync_mode);
        let names: BTreeSet<String> = next.sync_names.iter().cloned().collect();
        let mut promotable: BTreeSet<String> = next.sync_standbys.iter().cloned().collect();
        if applied {
            // The applied names are exactly `names`: whoever is not listed
            // can no longer have acknowledged a commit alone; whoever is
            // listed and synchronous now holds every acknowledged commit.
            promotable.retain(|u| names.contains(u));
            promotable.extend(
                names
                    .iter()
                    .filter(|u| p.sync_confirmed.contains(*u))
                    .cloned(),
            );
        }
        let healthy = healthy_standbys(next, view, primary);
        let max = usize::try_from(spec.max_sync_standbys).unwrap_or(usize::MAX);
        // Keep healthy members of the set first (no churn), then the most advanced.
        let mut wanted: Vec<String> = healthy
            .iter()
            .filter(|u| names.contains(*u))
            .cloned()
            .collect();
        wanted.extend(healthy.iter().filter(|u| !names.contains(*u)).cloned());
        wanted.truncate(max);
        let mut new_names: BTreeSet<String> = names
            .union(&wanted.iter().cloned().collect())
            .cloned()
            .collect();
        // Removing a name is safe once enough confirmed synchronous members
        // remain (strict), or at once (on: it falls back to async anyway).
        if applied && new_names.len() == names.len() {
            let confirmed_wanted = wanted.iter().filter(|u| promotable.contains(*u)).count();
            let can_drop = spec.sync_mode == SyncMode::On
                || u32::try_from(confirmed_wanted).unwrap_or(u32::MAX) >= spec.min_sync_standbys;
            if can_drop {
                new_names.retain(|u| wanted.contains(u));
            }
        }
        if spec.sync_mode == SyncMode::On && wanted.is_empty() {
            new_names.clear();
        }
        next.sync_names = new_names.into_iter().collect();
        next.sync_standbys = promotable.into_iter().collect();
    }
    let changed = before != (next.sync_names.clone(), next.sync_standbys.clone());
    changed.then(|| Reason::SyncSetChanged {
        names: next.sync_names.clone(),
        promotable: next.sync_standbys.clone(),
    })
}

/// Whether `uid` may be promoted under the sync policy.
pub(super) fn may_promote(status: &Status, spec: &Spec, uid: &str) -> bool {
    match spec.sync_mode {
        SyncMode::Off => true,
        SyncMode::On => {
            status.sync_standbys.is_empty() || status.sync_standbys.iter().any(|u| u == uid)
        }
        SyncMode::Strict => status.sync_standbys.iter().any(|u| u == uid),
    }
}

/// The sync lists right after `new_primary` was promoted: nobody is
/// promotable yet; in strict mode the other members are listed so that no
/// commit is acknowledged before one of them confirms it.
pub(super) fn after_promotion(next: &mut Status, spec: &Spec, new_primary: &str) {
    next.sync_standbys.clear();
    next.sync_names = match spec.sync_mode {
        SyncMode::Strict => next
            .members
            .keys()
            .filter(|u| *u != new_primary)
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
}
