//! The sentinel's decision: a pure function from what the store shows to the
//! next `status`.
//!
//! `decide` does no IO and reads no clock (`now_ms` is an input), so every
//! branch is a unit test, and a sentinel that takes over leadership decides
//! exactly as its predecessor would have: all memory is in `status`.
//!
//! It brings a cluster up (picks the first primary, records the system
//! identifier the primary created, assigns every other keeper to stream from
//! it) and fails over in two steps, each its own generation:
//!
//! 1. *Depose*: the primary's lease is gone, or its keeper reports postgres
//!    down while a caught-up standby exists. `primary` becomes `None`, the old
//!    primary is assigned to follow the best candidate, `deposed` remembers it.
//!    Proxies stop routing to it; its keeper (if alive) stops serving writes
//!    and releases the primary lease.
//! 2. *Promote*: once the primary lease is held by nobody and every live proxy
//!    has acknowledged the deposing generation, the most advanced healthy
//!    candidate becomes primary.
//!
//! Both steps may happen in one call when nothing needs waiting for.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::report::{KeeperReport, ObservedRole};
use crate::spec::{OnPostgresCrash, Spec};
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
    /// Live proxies and the generation each has applied.
    pub proxies: BTreeMap<String, u64>,
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
    /// The primary failed and was deposed; promotion follows once it is
    /// proven gone.
    Deposed {
        /// The old primary.
        uid: String,
        /// What showed it failed.
        why: String,
    },
    /// A standby was promoted.
    Promoted {
        /// The new primary.
        uid: String,
        /// The deposed primary.
        from: String,
    },
    /// Deposed, but the old primary still holds the primary lease.
    WaitingForLease {
        /// The holder.
        holder: String,
    },
    /// Deposed, but some proxies have not acknowledged the deposing generation.
    WaitingForProxies {
        /// Those proxies.
        ids: Vec<String>,
    },
    /// The primary failed and no standby can take over without losing data
    /// or breaking the rules; waiting for it (or a candidate) to come back.
    NoCandidate {
        /// The failed primary.
        uid: String,
    },
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
            Reason::Deposed { uid, why } => write!(f, "primary {uid} deposed: {why}"),
            Reason::Promoted { uid, from } => write!(f, "{uid} promoted to primary (was {from})"),
            Reason::WaitingForLease { holder } => {
                write!(f, "waiting for {holder} to give up the primary lease")
            }
            Reason::WaitingForProxies { ids } => {
                write!(
                    f,
                    "waiting for proxies {} to stop routing to the old primary",
                    ids.join(", ")
                )
            }
            Reason::NoCandidate { uid } => write!(
                f,
                "primary {uid} failed and no standby is eligible: waiting"
            ),
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
        None if next.deposed.is_some() => promote(&mut next, view),
        None => choose_first_primary(&mut next, view),
        Some(primary) => {
            if view.primary_lease_holder.as_deref() == Some(primary.as_str()) {
                next.primary_confirmed = true;
            }
            match check_primary(&mut next, view, &primary) {
                Some(Reason::Deposed { uid, why }) => match promote(&mut next, view) {
                    promoted @ Reason::Promoted { .. } => promoted,
                    _ => Reason::Deposed { uid, why },
                },
                Some(other) => other,
                None => {
                    let recorded = record_primary_identity(&mut next, view, &primary);
                    let assigned = assign_standbys(&mut next, view, &primary);
                    assigned.or(recorded).unwrap_or(Reason::Unchanged)
                }
            }
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
    next.primary_confirmed = false;
    next.primary_since_ms = view.now_ms;
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

/// Whether the primary has failed; if so, deposes it (step 1).
///
/// Nothing happens before the cluster's data exists (the first primary is
/// still being created) or while the operator has paused the cluster.
fn check_primary(next: &mut Status, view: &ClusterView, primary: &str) -> Option<Reason> {
    next.system_id?;
    if view.spec.paused {
        return None;
    }
    let report = view.keepers.get(primary);
    let lease_held = view.primary_lease_holder.as_deref() == Some(primary);
    let settling = !next.primary_confirmed
        && view.now_ms.saturating_sub(next.primary_since_ms)
            < view.spec.promotion_timeout.as_millis();
    if settling {
        // Named but not yet holding the lease (initdb, crash recovery or
        // promotion under way): it has promotion_timeout to get there.
        return None;
    }
    // Postgres not answering under a live keeper that still holds the lease
    // (a promotion in progress answers, as a standby, and is not "down").
    let postgres_down = lease_held && report.is_some_and(|r| !r.healthy);
    let why = if !lease_held {
        "its primary lease is gone".to_string()
    } else if postgres_down && view.spec.on_postgres_crash == OnPostgresCrash::Failover {
        // Fail over only to a standby that is caught up; otherwise the
        // keeper restarts postgres in place.
        let candidate = best_candidate(next, view, primary)?;
        if candidate.lag > 0 {
            return None;
        }
        "its postgres is down and a caught-up standby exists".to_string()
    } else {
        return None;
    };
    let Some(candidate) = best_candidate(next, view, primary) else {
        return Some(Reason::NoCandidate {
            uid: primary.to_string(),
        });
    };
    next.generation += 1;
    next.primary = None;
    next.primary_confirmed = false;
    next.deposed = Some(primary.to_string());
    next.members.insert(
        primary.to_string(),
        Assignment::Standby {
            follow: candidate.uid.clone(),
            host: candidate.host,
            port: candidate.port,
        },
    );
    Some(Reason::Deposed {
        uid: primary.to_string(),
        why,
    })
}

/// A standby eligible for promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    uid: String,
    host: String,
    port: u16,
    /// Bytes behind the most advanced position any live node reported.
    lag: u64,
}

/// The best standby to promote, by the rules of invariant 3: assigned
/// standby, healthy, streaming-capable report, on the cluster's timeline, not
/// tagged nofailover, within `max_lag_bytes` of the most advanced position any
/// live keeper reported (the old primary's last report included, when it is
/// still there). The most advanced by received LSN wins; ties go to the higher
/// replayed LSN, then to the smallest uid.
fn best_candidate(status: &Status, view: &ClusterView, exclude: &str) -> Option<Candidate> {
    let most_advanced = view
        .keepers
        .values()
        .filter_map(|r| r.received_lsn())
        .max()
        .unwrap_or_default();
    view.keepers
        .values()
        .filter(|r| {
            r.uid != exclude
                && usable(r)
                && r.healthy
                && r.role == ObservedRole::Standby
                && !r.nofailover
                && (status.timeline == 0 || r.timeline == status.timeline)
                && r.system_id.is_some_and(|sid| Some(sid) == status.system_id)
                && matches!(status.members.get(&r.uid), Some(Assignment::Standby { .. }))
        })
        .filter_map(|r| {
            let lag = r.received_lsn()?.lag_behind(most_advanced);
            (lag <= view.spec.max_lag_bytes).then_some((r, lag))
        })
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

/// Step 2: promotes the best candidate once the deposed primary is proven
/// gone: nobody holds the primary lease and every live proxy has applied the
/// current (deposing) generation.
fn promote(next: &mut Status, view: &ClusterView) -> Reason {
    let deposed = next.deposed.clone().unwrap_or_default();
    if let Some(holder) = &view.primary_lease_holder {
        return Reason::WaitingForLease {
            holder: holder.clone(),
        };
    }
    let lagging: Vec<String> = view
        .proxies
        .iter()
        .filter(|(_, g)| **g < next.generation)
        .map(|(id, _)| id.clone())
        .collect();
    if !lagging.is_empty() {
        return Reason::WaitingForProxies { ids: lagging };
    }
    let Some(c) = best_candidate(next, view, &deposed) else {
        return Reason::NoCandidate { uid: deposed };
    };
    next.generation += 1;
    next.primary = Some(c.uid.clone());
    next.primary_confirmed = false;
    next.primary_since_ms = view.now_ms;
    next.deposed = None;
    for (uid, a) in next.members.iter_mut() {
        *a = if *uid == c.uid {
            Assignment::Primary
        } else {
            Assignment::Standby {
                follow: c.uid.clone(),
                host: c.host.clone(),
                port: c.port,
            }
        };
    }
    Reason::Promoted {
        uid: c.uid,
        from: deposed,
    }
}

#[cfg(test)]
mod tests;
