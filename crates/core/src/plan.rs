//! The keeper's plan: a pure function from its assignment and what it observes
//! of its postgres to the actions that close the gap.
//!
//! The keeper's loop only observes, calls [`plan`], and executes the actions in
//! order, stopping at the first failure; the next tick is the retry. Every
//! action is therefore written to be safe to repeat.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::status::Assignment;

/// Replication slots pgwarden creates start with this, so that it never drops
/// a slot an operator made by hand.
pub const SLOT_PREFIX: &str = "pgwarden_";

/// A valid physical replication slot name for a keeper uid: [`SLOT_PREFIX`]
/// and the uid lowercased, every character outside `[a-z0-9_]` replaced by
/// `_`, cut to postgres' 63-byte limit.
pub fn slot_name(uid: &str) -> String {
    const MAX: usize = 63;
    let mut name = String::from(SLOT_PREFIX);
    for c in uid.chars().flat_map(char::to_lowercase) {
        if name.len() == MAX {
            break;
        }
        name.push(
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            },
        );
    }
    name
}

/// What the data directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataState {
    /// It does not exist.
    Missing,
    /// It exists and is empty.
    Empty,
    /// It is not empty and is not a postgres data directory.
    Foreign,
    /// A postgres data directory with this system identifier.
    Postgres {
        /// From pg_controldata.
        system_id: u64,
    },
}

/// What the keeper sees of its postgres this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The data directory.
    pub data: DataState,
    /// The postmaster is running (it is the keeper's child).
    pub running: bool,
    /// Whether postgres answers and is in recovery; `None` when it does not answer.
    pub in_recovery: Option<bool>,
    /// `standby.signal` exists in the data directory.
    pub standby_signal: bool,
    /// The configuration files on disk are the ones the assignment needs.
    pub config_current: bool,
    /// Physical replication slots on this (primary) postgres; `None` when unknown.
    pub slots: Option<BTreeSet<String>>,
    /// The replication role exists with the configured password.
    pub replication_role_ready: bool,
    /// This standby replayed its timeline past the point where its
    /// upstream's history left it ([`crate::timeline::diverged`]): it can
    /// never follow and must be rewound.
    pub diverged: bool,
    /// pg_rewind said this data directory cannot be rewound onto the
    /// upstream (see [`crate::rewind::classify_rewind_failure`]): only a new
    /// copy helps.
    pub unrewindable: bool,
}

/// One step towards the assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PgAction {
    /// Create a new cluster (first primary only).
    InitDb,
    /// Clone the data directory from the primary.
    BaseBackup {
        /// Primary host.
        host: String,
        /// Primary port.
        port: u16,
    },
    /// Rewind a former primary's data onto the new primary's timeline.
    Rewind {
        /// Source host.
        host: String,
        /// Source port.
        port: u16,
    },
    /// Render and write postgresql.conf, pg_hba.conf and standby.signal.
    WriteConfig,
    /// Start the postmaster.
    Start,
    /// Stop the postmaster (fast shutdown).
    Stop,
    /// Make postgres re-read its configuration.
    Reload,
    /// Promote a standby.
    Promote,
    /// Create or update the replication role.
    EnsureReplicationRole,
    /// Create a physical replication slot.
    CreateSlot(String),
    /// Drop a replication slot no standby uses any more.
    DropSlot(String),
    /// Empty the data directory of a standby (before a re-clone).
    Wipe,
    /// Make room for a new copy of a data directory pg_rewind cannot rewind:
    /// move it aside, or delete it only where the spec allows
    /// ([`crate::rewind::reclone_step`]).
    SetAside,
}

/// Why the keeper cannot carry out its assignment; a human must act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The data directory holds another cluster's data.
    #[error("data directory belongs to another cluster (system identifier {found}, this cluster's is {expected}): refusing to touch it; point --data-dir at an empty or missing directory")]
    ForeignData {
        /// What the directory holds.
        found: u64,
        /// What the cluster's status says.
        expected: u64,
    },
    /// The directory is neither empty nor a data directory.
    #[error("data directory is not empty and is not a postgres data directory: refusing to touch it; point --data-dir at an empty or missing directory")]
    ForeignDirectory,
}

/// What the keeper is asked to be, with the facts it needs from the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// This keeper's assignment, if the sentinel made one.
    pub assignment: Option<&'a Assignment>,
    /// The cluster's system identifier, once its data exists.
    pub cluster_system_id: Option<u64>,
    /// Slots this node must hold: on the primary one per standby following
    /// it; on a standby one per other standby (what it would need as
    /// primary, made ahead).
    pub wanted_slots: BTreeSet<String>,
    /// This keeper holds the primary lease now. Postgres is started or
    /// promoted as primary only then, so that two nodes are never writable.
    pub holds_primary_lease: bool,
    /// The node this keeper is assigned to follow is the cluster's primary
    /// (false while a failover is between its two steps).
    pub upstream_is_primary: bool,
    /// An operator's restart or re-clone request not carried out yet.
    pub node_request: Option<crate::spec::NodeAction>,
    /// The spec's `reclone_on_rewind_failure`: a directory pg_rewind cannot
    /// rewind is replaced by a new copy.
    pub reclone_on_rewind_failure: bool,
}

/// The actions that move `observed` towards `target`, in order. An empty plan
/// means the node is where it should be.
pub fn plan(target: &Target<'_>, observed: &Observed) -> Result<Vec<PgAction>, PlanError> {
    if let (DataState::Postgres { system_id }, Some(expected)) =
        (observed.data, target.cluster_system_id)
    {
        if system_id != expected {
            return Err(PlanError::ForeignData {
                found: system_id,
                expected,
            });
        }
    }
    if observed.data == DataState::Foreign {
        return Err(PlanError::ForeignDirectory);
    }
    let has_data = matches!(observed.data, DataState::Postgres { .. });
    if let Some(request) = target.node_request {
        if let Some(actions) = node_request(target, observed, request) {
            return Ok(actions);
        }
    }
    let mut actions = Vec::new();
    match target.assignment {
        // Not assigned yet: leave whatever runs alone, start nothing.
        None => {}
        Some(Assignment::Primary) => {
            if !has_data {
                // Only a brand-new cluster is created here: when the cluster
                // already has data, an empty primary must never initdb a
                // second, unrelated history.
                if target.cluster_system_id.is_none() {
                    actions.extend([PgAction::InitDb, PgAction::WriteConfig]);
                    if target.holds_primary_lease {
                        actions.push(PgAction::Start);
                    }
                }
                return Ok(actions);
            }
            if !observed.config_current {
                actions.push(PgAction::WriteConfig);
            }
            if !observed.running {
                // Without the lease a start could make a second writable
                // node (a standby.signal left behind starts it as a
                // standby, which is harmless, but not worth the rule's
                // exception).
                if target.holds_primary_lease {
                    actions.push(PgAction::Start);
                }
                return Ok(actions);
            }
            if !observed.config_current {
                actions.push(PgAction::Reload);
            }
            match observed.in_recovery {
                Some(true) if target.holds_primary_lease => actions.push(PgAction::Promote),
                Some(true) => {}
                Some(false) => {
                    if !observed.replication_role_ready {
                        actions.push(PgAction::EnsureReplicationRole);
                    }
                    if let Some(slots) = &observed.slots {
                        actions.extend(missing_slots(target, slots));
                        actions.extend(unwanted_slots(target, slots));
                    }
                }
                None => {}
            }
        }
        Some(Assignment::Standby { host, port, .. }) => {
            let (host, port) = (host.clone(), *port);
            if !has_data {
                actions.extend([
                    PgAction::BaseBackup { host, port },
                    PgAction::WriteConfig,
                    PgAction::Start,
                ]);
                return Ok(actions);
            }
            // A node that ran as primary (running writable, or stopped without
            // standby.signal) may hold WAL the new primary never saw: it must
            // be rewound before it streams, never start streaming as it is.
            // So must a standby that replayed such WAL (streamed to it by the
            // old primary before that was fenced).
            let was_primary = if observed.running {
                observed.in_recovery == Some(false)
            } else {
                !observed.standby_signal
            };
            if was_primary || observed.diverged {
                if observed.running {
                    actions.push(PgAction::Stop);
                }
                // Rewinding needs the new primary up: mid-failover, stopping
                // is all there is to do.
                if !target.upstream_is_primary {
                    return Ok(actions);
                }
                if observed.unrewindable && target.reclone_on_rewind_failure {
                    // pg_rewind's own verdict: a new copy, the old data kept
                    // aside where there is room.
                    actions.extend([PgAction::SetAside, PgAction::BaseBackup { host, port }]);
                } else {
                    actions.push(PgAction::Rewind { host, port });
                }
                actions.extend([PgAction::WriteConfig, PgAction::Start]);
                return Ok(actions);
            }
            if !observed.config_current {
                actions.push(PgAction::WriteConfig);
                if observed.running {
                    actions.push(PgAction::Reload);
                }
            }
            if !observed.running {
                actions.push(PgAction::Start);
            } else if let (Some(true), Some(slots)) = (observed.in_recovery, &observed.slots) {
                // The slots its peers would need were it promoted, made ahead
                // (unreserved: they keep no WAL) so that they stream the
                // moment it is, not once it has made them after promotion.
                actions.extend(missing_slots(target, slots));
                // And those of members gone for good (`ctl remove`).
                actions.extend(unwanted_slots(target, slots));
            }
        }
    }
    Ok(actions)
}

/// A drop for each of pgwarden's slots no member needs any more.
fn unwanted_slots<'a>(
    target: &'a Target<'_>,
    slots: &'a BTreeSet<String>,
) -> impl Iterator<Item = PgAction> + 'a {
    slots
        .iter()
        .filter(|s| s.starts_with(SLOT_PREFIX) && !target.wanted_slots.contains(*s))
        .cloned()
        .map(PgAction::DropSlot)
}

/// A slot to create for each wanted one postgres does not hold.
fn missing_slots<'a>(
    target: &'a Target<'_>,
    slots: &'a BTreeSet<String>,
) -> impl Iterator<Item = PgAction> + 'a {
    target
        .wanted_slots
        .difference(slots)
        .cloned()
        .map(PgAction::CreateSlot)
}

/// An operator's restart or re-clone. A restart is carried out on any
/// running node (a primary restarts as primary: `ctl restart` moves the role
/// away first for a rolling restart); a re-clone only on a standby that
/// streams from the primary, never on the primary or mid-failover.
fn node_request(
    target: &Target<'_>,
    observed: &Observed,
    request: crate::spec::NodeAction,
) -> Option<Vec<PgAction>> {
    use crate::spec::NodeAction;
    match request {
        NodeAction::Restart if observed.running => {
            Some(vec![PgAction::Stop, PgAction::WriteConfig, PgAction::Start])
        }
        NodeAction::Reinit => match target.assignment {
            Some(Assignment::Standby { host, port, .. }) if target.upstream_is_primary => {
                let mut actions = Vec::new();
                if observed.running {
                    actions.push(PgAction::Stop);
                }
                actions.extend([
                    PgAction::Wipe,
                    PgAction::BaseBackup {
                        host: host.clone(),
                        port: *port,
                    },
                    PgAction::WriteConfig,
                    PgAction::Start,
                ]);
                Some(actions)
            }
            _ => None,
        },
        NodeAction::Restart => None,
    }
}

#[cfg(test)]
mod tests;
