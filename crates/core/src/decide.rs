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
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Nothing to do.
    Unchanged,
    /// A role change needs a new generation and the generation cannot grow:
    /// nothing changes (it never wraps).
    GenerationExhausted {
        /// The generation now.
        generation: u64,
    },
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
    /// An operator request was refused.
    RequestRefused {
        /// The request id.
        id: u64,
        /// Why.
        why: String,
    },
    /// A switchover or manual failover started: the primary is deposed.
    RoleChangeStarted {
        /// switchover or failover.
        kind: String,
        /// The primary handing over, if there was one.
        from: Option<String>,
        /// The node to promote.
        to: String,
    },
    /// Switchover: waiting until the target has received all the old
    /// primary wrote.
    WaitingForCatchUp {
        /// The target.
        uid: String,
    },
    /// Strict mode: waiting for enough synchronous standbys to report
    /// positions read after the deposition.
    WaitingForPositions,
    /// Nobody could take over; the deposed primary is primary again.
    Reinstated {
        /// The node.
        uid: String,
    },
    /// The synchronous standby set moved one step.
    SyncSetChanged {
        /// What synchronous_standby_names lists now.
        names: Vec<String>,
        /// Who may be promoted.
        promotable: Vec<String>,
    },
}

impl Reason {
    /// Every [`Reason::label`].
    pub const LABELS: [&'static str; 18] = [
        "unchanged",
        "waiting_for_keepers",
        "initial_primary",
        "adopted_existing_data",
        "recorded_system_id",
        "assigned_standbys",
        "health_changed",
        "deposed",
        "promoted",
        "waiting_for_lease",
        "waiting_for_proxies",
        "no_candidate",
        "request_refused",
        "role_change_started",
        "waiting_for_catch_up",
        "waiting_for_positions",
        "reinstated",
        "sync_set_changed",
    ];

    /// The variant in snake case: a stable name for metrics and scripts (the
    /// text of [`fmt::Display`] is for people and may be reworded).
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Unchanged => "unchanged",
            Reason::WaitingForKeepers => "waiting_for_keepers",
            Reason::InitialPrimary { .. } => "initial_primary",
            Reason::AdoptedExistingData { .. } => "adopted_existing_data",
            Reason::RecordedSystemId { .. } => "recorded_system_id",
            Reason::AssignedStandbys { .. } => "assigned_standbys",
            Reason::HealthChanged => "health_changed",
            Reason::Deposed { .. } => "deposed",
            Reason::Promoted { .. } => "promoted",
            Reason::WaitingForLease { .. } => "waiting_for_lease",
            Reason::WaitingForProxies { .. } => "waiting_for_proxies",
            Reason::NoCandidate { .. } => "no_candidate",
            Reason::RequestRefused { .. } => "request_refused",
            Reason::RoleChangeStarted { .. } => "role_change_started",
            Reason::WaitingForCatchUp { .. } => "waiting_for_catch_up",
            Reason::WaitingForPositions => "waiting_for_positions",
            Reason::Reinstated { .. } => "reinstated",
            Reason::GenerationExhausted { .. } => "generation_exhausted",
            Reason::SyncSetChanged { .. } => "sync_set_changed",
        }
    }
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
            Reason::RequestRefused { id, why } => write!(f, "request {id} refused: {why}"),
            Reason::GenerationExhausted { generation } => {
                write!(f, "{}", crate::status::GenerationExhausted(*generation))
            }
            Reason::RoleChangeStarted { kind, from, to } => {
                write!(
                    f,
                    "{kind} from {} to {to} started",
                    from.as_deref().unwrap_or("(no primary)")
                )
            }
            Reason::WaitingForCatchUp { uid } => {
                write!(f, "waiting for {uid} to receive all the old primary wrote")
            }
            Reason::WaitingForPositions => write!(
                f,
                "waiting for the synchronous standbys to report positions read after the deposition"
            ),
            Reason::Reinstated { uid } => {
                write!(f, "{uid} reinstated as primary: no standby could take over")
            }
            Reason::SyncSetChanged { names, promotable } => write!(
                f,
                "synchronous standbys: listed [{}], promotable [{}]",
                names.join(", "),
                promotable.join(", ")
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
    // The cluster's timeline is the newest any member of its system reports:
    // a primary promoted and deposed before it was seen as primary must not
    // leave the status on the older timeline (its standbys would then not be
    // rewound before following the next one).
    if let Some(sid) = next.system_id {
        let newest = view
            .keepers
            .values()
            .filter(|r| usable(r) && r.system_id == Some(sid))
            .map(|r| r.timeline)
            .max()
            .unwrap_or(0);
        if newest > next.timeline {
            next.timeline = newest;
        }
    }
    let request = requests::handle_request(&mut next, view);
    let reason = match next.primary.clone() {
        None if next.deposed.is_some() => promote(&mut next, view),
        None => choose_first_primary(&mut next, view),
        Some(primary) => {
            if view.primary_lease_holder.as_deref() == Some(primary.as_str())
                && !next.primary_confirmed
            {
                next.primary_confirmed = true;
                next.primary_confirmed_ms = view.now_ms;
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
                    let synced = sync::maintain(&mut next, view, &primary);
                    assigned
                        .or(recorded)
                        .or(synced)
                        .unwrap_or(Reason::Unchanged)
                }
            }
        }
    };
    let reason = match (request, reason) {
        (
            Some(started @ Reason::RoleChangeStarted { .. }),
            Reason::WaitingForCatchUp { .. }
            | Reason::WaitingForLease { .. }
            | Reason::WaitingForProxies { .. },
        ) => started,
        (Some(req), Reason::Unchanged) => req,
        (_, r) => r,
    };
    if let Reason::GenerationExhausted { .. } = reason {
        return Decision {
            next: view.status.clone(),
            reason,
        };
    }
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
            kind: reason.label().to_string(),
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
    let released_before = next.slots_released.clone();
    next.slots_released = released_slots(next, view);
    before != next.unhealthy_since || released_before != next.slots_released
}

/// The members gone (unhealthy, or no report) for longer than
/// `member_slots_ttl`: nobody keeps WAL for them any more. A member that
/// reports healthy again gets its slots back (and re-clones if its WAL is
/// gone).
fn released_slots(next: &Status, view: &ClusterView) -> Vec<String> {
    let ttl = u64::try_from(view.spec.member_slots_ttl.0.as_millis()).unwrap_or(u64::MAX);
    next.unhealthy_since
        .iter()
        .filter(|(uid, since)| {
            // A clone in progress is not gone: its slot is about to be used.
            let cloning = view
                .keepers
                .get(uid.as_str())
                .is_some_and(|r| r.role == ObservedRole::Initializing);
            next.primary.as_deref() != Some(uid.as_str())
                && !cloning
                && view.now_ms.saturating_sub(**since) > ttl
        })
        .map(|(uid, _)| uid.clone())
        .collect()
}

/// A keeper that reports a fatal error (another system identifier, foreign
/// data, unusable binaries) is not fit to be anything until a human fixes it;
/// a transient one (a failed config write, a timeout) does not count.
fn usable(r: &KeeperReport) -> bool {
    !r.disqualified()
}

impl From<crate::status::GenerationExhausted> for Reason {
    fn from(e: crate::status::GenerationExhausted) -> Reason {
        Reason::GenerationExhausted { generation: e.0 }
    }
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
    if let Err(e) = next.new_term(view.now_ms) {
        return e.into();
    }
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
    if let Err(e) = next.next_generation() {
        return Some(e.into());
    }
    Some(Reason::AssignedStandbys { uids: changed })
}

mod eligibility;
mod failover;
mod requests;
pub mod sync;

use failover::{check_primary, promote};

#[cfg(test)]
mod tests;
