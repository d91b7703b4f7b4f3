//! The sentinel's decision: a pure function from what the store shows to the
//! next `status`.
//!
//! `decide` does no IO and reads no clock (`now_ms` is an input), so every
//! branch is a unit test, and a sentinel that takes over leadership decides
//! exactly as its predecessor would have: all memory is in `status`.
//!
//! This round of the code brings a cluster up: it picks the first primary,
//! records the system identifier the primary created, and assigns every other
//! keeper to stream from it. Failover lands here next, as another branch of the
//! same function.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::report::{KeeperReport, ObservedRole};
use crate::spec::Spec;
use crate::status::{Assignment, HistoryEntry, Status};

/// Everything the sentinel sees in one round.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Wall-clock time of the observation, ms since the Unix epoch.
    pub now_ms: u64,
    /// The operator's policy.
    pub spec: Spec,
    /// The status as last written (default when none was).
    pub status: Status,
    /// Reports of the keepers that are alive (their lease holds), by uid.
    pub keepers: BTreeMap<String, KeeperReport>,
    /// The uid holding the primary lease, if any.
    pub primary_lease_holder: Option<String>,
}

/// Why the status changed, or did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Nothing to do.
    Unchanged,
    /// No primary yet and no keeper that could become one.
    WaitingForKeepers,
    /// The first primary of a new cluster was chosen; it will run initdb.
    InitialPrimary {
        /// The chosen keeper.
        uid: String,
    },
    /// The first primary was chosen among keepers that already hold data, so
    /// that no existing data is thrown away.
    AdoptedExistingData {
        /// The chosen keeper.
        uid: String,
        /// The system identifier of its data.
        system_id: u64,
    },
    /// The primary finished creating the cluster's data.
    RecordedSystemId {
        /// The system identifier now owned by the cluster.
        system_id: u64,
    },
    /// Keepers were (re)assigned to stream from the primary.
    AssignedStandbys {
        /// Their uids.
        uids: Vec<String>,
    },
    /// Members' health changed; no role changed.
    HealthChanged,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unchanged => write!(f, "no change"),
            Reason::WaitingForKeepers => {
                write!(f, "waiting for a keeper that can become the first primary")
            }
            Reason::InitialPrimary { uid } => write!(
                f,
                "{uid} chosen as the first primary: it will create the cluster"
            ),
            Reason::AdoptedExistingData { uid, system_id } => {
                write!(f, "{uid} chosen as the first primary: it already holds data of system {system_id}")
            }
            Reason::RecordedSystemId { system_id } => {
                write!(f, "the cluster's data is system {system_id}")
            }
            Reason::AssignedStandbys { uids } => {
                write!(f, "{} assigned to stream from the primary", uids.join(", "))
            }
            Reason::HealthChanged => write!(f, "member health changed"),
        }
    }
}

/// The outcome of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The status to write (equal to the input when nothing changed).
    pub next: Status,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// Whether the status must be written.
    pub fn changed(&self, before: &Status) -> bool {
        &self.next != before
    }
}

/// Decides the next status. Pure: same view, same decision.
pub fn decide(view: &ClusterView) -> Decision {
    let mut next = view.status.clone();
    let reason = match next.primary.clone() {
        None => choose_first_primary(&mut next, view),
        Some(primary) => {
            let recorded = record_primary_identity(&mut next, view, &primary);
            let assigned = assign_standbys(&mut next, view, &primary);
            assigned.or(recorded).unwrap_or(Reason::Unchanged)
        }
    };
    let health_changed = track_health(&mut next, view);
    let reason = match reason {
        Reason::Unchanged if health_changed => Reason::HealthChanged,
        r => r,
    };
    if next.generation != view.status.generation {
        next.record(HistoryEntry {
            at_ms: view.now_ms,
            generation: next.generation,
            old_primary: view.status.primary.clone(),
            new_primary: next.primary.clone(),
            reason: reason.to_string(),
        });
    }
    Decision { next, reason }
}

/// Keeps `unhealthy_since` in step with the reports; true when it changed.
fn track_health(next: &mut Status, view: &ClusterView) -> bool {
    let before = next.unhealthy_since.clone();
    for uid in next.members.keys() {
        let healthy = view.keepers.get(uid).is_some_and(|r| r.healthy);
        if healthy {
            next.unhealthy_since.remove(uid);
        } else {
            next.unhealthy_since
                .entry(uid.clone())
                .or_insert(view.now_ms);
        }
    }
    let members = next.members.clone();
    next.unhealthy_since
        .retain(|uid, _| members.contains_key(uid));
    before != next.unhealthy_since
}

/// A keeper that reports an error (foreign data, bad password file...) is not
/// fit to be anything until a human fixes it.
fn usable(r: &KeeperReport) -> bool {
    r.error.is_none()
}

/// Picks the first primary. Keepers that already hold data win over empty
/// ones (never throw data away), the most advanced first; otherwise the
/// smallest uid, so that the choice is deterministic and testable.
fn choose_first_primary(next: &mut Status, view: &ClusterView) -> Reason {
    let with_data = view
        .keepers
        .values()
        .filter(|r| usable(r) && r.system_id.is_some())
        .max_by(|a, b| {
            (a.timeline, a.received_lsn(), &b.uid).cmp(&(b.timeline, b.received_lsn(), &a.uid))
        });
    let (uid, reason) = if let Some(r) = with_data {
        let system_id = r.system_id.unwrap_or_default();
        next.system_id = Some(system_id);
        next.timeline = r.timeline;
        (
            r.uid.clone(),
            Reason::AdoptedExistingData {
                uid: r.uid.clone(),
                system_id,
            },
        )
    } else if let Some(r) = view.keepers.values().find(|r| usable(r)) {
        (r.uid.clone(), Reason::InitialPrimary { uid: r.uid.clone() })
    } else {
        return Reason::WaitingForKeepers;
    };
    next.generation += 1;
    next.primary = Some(uid.clone());
    next.members.insert(uid, Assignment::Primary);
    reason
}

/// Once the primary runs, the cluster's system identifier and timeline are
/// whatever it reports.
fn record_primary_identity(next: &mut Status, view: &ClusterView, primary: &str) -> Option<Reason> {
    let r = view
        .keepers
        .get(primary)
        .filter(|r| r.healthy && r.role == ObservedRole::Primary)?;
    if r.timeline > next.timeline {
        next.timeline = r.timeline;
    }
    match (next.system_id, r.system_id) {
        (None, Some(sid)) => {
            next.system_id = Some(sid);
            Some(Reason::RecordedSystemId { system_id: sid })
        }
        _ => None,
    }
}

/// Assigns every keeper that is not the primary to stream from it, once the
/// primary is up (a base backup needs it). Keepers whose data belongs to
/// another system are left alone: they report the error and a human decides.
fn assign_standbys(next: &mut Status, view: &ClusterView, primary: &str) -> Option<Reason> {
    let cluster_sid = next.system_id?;
    let p = view
        .keepers
        .get(primary)
        .filter(|r| r.healthy && r.role == ObservedRole::Primary)?;
    let mut changed = Vec::new();
    for r in view.keepers.values() {
        if r.uid == primary || !usable(r) || r.system_id.is_some_and(|sid| sid != cluster_sid) {
            continue;
        }
        let wanted = Assignment::Standby {
            follow: primary.to_string(),
            host: p.pg_host.clone(),
            port: p.pg_port,
        };
        if next.members.get(&r.uid) != Some(&wanted) {
            next.members.insert(r.uid.clone(), wanted);
            changed.push(r.uid.clone());
        }
    }
    if changed.is_empty() {
        return None;
    }
    next.generation += 1;
    Some(Reason::AssignedStandbys { uids: changed })
}

#[cfg(test)]
mod tests;
