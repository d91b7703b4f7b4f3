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
                actions.extend([
                    PgAction::Rewind { host, port },
                    PgAction::WriteConfig,
                    PgAction::Start,
                ]);
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
mod tests {
    use super::*;

    fn observed(data: DataState) -> Observed {
        Observed {
            data,
            running: false,
            in_recovery: None,
            standby_signal: false,
            config_current: false,
            slots: None,
            replication_role_ready: false,
            diverged: false,
        }
    }

    fn running_primary() -> Observed {
        Observed {
            running: true,
            in_recovery: Some(false),
            config_current: true,
            slots: Some(BTreeSet::new()),
            replication_role_ready: true,
            ..observed(DataState::Postgres { system_id: 7 })
        }
    }

    fn running_standby() -> Observed {
        Observed {
            in_recovery: Some(true),
            standby_signal: true,
            slots: None,
            ..running_primary()
        }
    }

    fn standby_of(host: &str) -> Assignment {
        Assignment::Standby {
            follow: "a".into(),
            host: host.into(),
            port: 5432,
        }
    }

    fn target(assignment: Option<&Assignment>, sid: Option<u64>) -> Target<'_> {
        Target {
            assignment,
            cluster_system_id: sid,
            wanted_slots: BTreeSet::new(),
            holds_primary_lease: true,
            upstream_is_primary: true,
            node_request: None,
        }
    }

    #[test]
    fn a_diverged_standby_is_rewound_once_its_upstream_is_primary() {
        let s = standby_of("h");
        let diverged = Observed {
            diverged: true,
            ..running_standby()
        };
        assert_eq!(
            plan(&target(Some(&s), Some(7)), &diverged).unwrap(),
            vec![
                PgAction::Stop,
                PgAction::Rewind {
                    host: "h".into(),
                    port: 5432
                },
                PgAction::WriteConfig,
                PgAction::Start
            ]
        );
        let mid_failover = Target {
            upstream_is_primary: false,
            ..target(Some(&s), Some(7))
        };
        assert_eq!(
            plan(&mid_failover, &diverged).unwrap(),
            vec![PgAction::Stop]
        );
        // Not diverged: it keeps streaming, untouched.
        assert_eq!(
            plan(&target(Some(&s), Some(7)), &running_standby()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn a_streaming_standby_makes_its_peers_slots_ahead() {
        let s = standby_of("h");
        let t = Target {
            wanted_slots: ["pgwarden_b".to_string(), "pgwarden_c".to_string()].into(),
            ..target(Some(&s), Some(7))
        };
        let standby = Observed {
            slots: Some(["pgwarden_b".to_string()].into()),
            ..running_standby()
        };
        assert_eq!(
            plan(&t, &standby).unwrap(),
            vec![PgAction::CreateSlot("pgwarden_c".into())]
        );
        // Slots unknown (not queried): nothing; a stopped standby starts first.
        assert_eq!(plan(&t, &running_standby()).unwrap(), vec![]);
        let stopped = Observed {
            running: false,
            in_recovery: None,
            ..standby
        };
        assert_eq!(plan(&t, &stopped).unwrap(), vec![PgAction::Start]);
    }

    #[test]
    fn restart_and_reinit_requests() {
        use crate::spec::NodeAction;
        let s = standby_of("h");
        let t = Target {
            node_request: Some(NodeAction::Restart),
            ..target(Some(&s), Some(7))
        };
        assert_eq!(
            plan(&t, &running_standby()).unwrap(),
            vec![PgAction::Stop, PgAction::WriteConfig, PgAction::Start]
        );
        let t = Target {
            node_request: Some(NodeAction::Reinit),
            ..target(Some(&s), Some(7))
        };
        assert_eq!(
            plan(&t, &running_standby()).unwrap(),
            vec![
                PgAction::Stop,
                PgAction::Wipe,
                PgAction::BaseBackup {
                    host: "h".into(),
                    port: 5432
                },
                PgAction::WriteConfig,
                PgAction::Start
            ]
        );
        // Never a re-clone of the primary, nor mid-failover: the request waits.
        let p = Assignment::Primary;
        let t = Target {
            node_request: Some(NodeAction::Reinit),
            ..target(Some(&p), Some(7))
        };
        assert_eq!(plan(&t, &running_primary()).unwrap(), vec![]);
        let t = Target {
            node_request: Some(NodeAction::Reinit),
            upstream_is_primary: false,
            ..target(Some(&s), Some(7))
        };
        assert_eq!(plan(&t, &running_standby()).unwrap(), vec![]);
        // Foreign data is still refused first.
        let t = Target {
            node_request: Some(NodeAction::Reinit),
            ..target(Some(&s), Some(8))
        };
        assert!(plan(&t, &running_standby()).is_err());
    }

    #[test]
    fn no_primary_start_or_promotion_without_the_lease() {
        let p = Assignment::Primary;
        let t = Target {
            holds_primary_lease: false,
            ..target(Some(&p), None)
        };
        assert_eq!(
            plan(&t, &observed(DataState::Empty)).unwrap(),
            vec![PgAction::InitDb, PgAction::WriteConfig]
        );
        let t = Target {
            holds_primary_lease: false,
            ..target(Some(&p), Some(7))
        };
        let stopped = Observed {
            running: false,
            in_recovery: None,
            ..running_primary()
        };
        assert_eq!(plan(&t, &stopped).unwrap(), vec![]);
        assert_eq!(plan(&t, &running_standby()).unwrap(), vec![]);
    }

    #[test]
    fn deposed_primary_only_stops_until_the_new_primary_is_up() {
        let s = standby_of("h");
        let t = Target {
            upstream_is_primary: false,
            ..target(Some(&s), Some(7))
        };
        assert_eq!(plan(&t, &running_primary()).unwrap(), vec![PgAction::Stop]);
        let stopped = Observed {
            running: false,
            in_recovery: None,
            ..running_primary()
        };
        assert_eq!(plan(&t, &stopped).unwrap(), vec![]);
    }

    #[test]
    fn first_primary_creates_the_cluster() {
        let p = Assignment::Primary;
        for data in [DataState::Missing, DataState::Empty] {
            assert_eq!(
                plan(&target(Some(&p), None), &observed(data)).unwrap(),
                vec![PgAction::InitDb, PgAction::WriteConfig, PgAction::Start]
            );
        }
    }

    #[test]
    fn empty_primary_of_an_existing_cluster_never_runs_initdb() {
        let p = Assignment::Primary;
        assert_eq!(
            plan(&target(Some(&p), Some(7)), &observed(DataState::Empty)).unwrap(),
            vec![]
        );
    }

    #[test]
    fn running_primary_gets_its_role_and_slots() {
        let p = Assignment::Primary;
        let mut t = target(Some(&p), Some(7));
        t.wanted_slots = ["pgwarden_b".to_string(), "pgwarden_c".to_string()].into();
        let mut o = running_primary();
        o.replication_role_ready = false;
        o.slots = Some(
            [
                "pgwarden_b".to_string(),
                "pgwarden_gone".to_string(),
                "manual".to_string(),
            ]
            .into(),
        );
        assert_eq!(
            plan(&t, &o).unwrap(),
            vec![
                PgAction::EnsureReplicationRole,
                PgAction::CreateSlot("pgwarden_c".into()),
                PgAction::DropSlot("pgwarden_gone".into()),
            ]
        );
    }

    #[test]
    fn converged_nodes_plan_nothing() {
        let p = Assignment::Primary;
        assert_eq!(
            plan(&target(Some(&p), Some(7)), &running_primary()).unwrap(),
            vec![]
        );
        let s = standby_of("h");
        assert_eq!(
            plan(&target(Some(&s), Some(7)), &running_standby()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn stopped_primary_restarts_with_fresh_config() {
        let p = Assignment::Primary;
        let o = Observed {
            running: false,
            in_recovery: None,
            config_current: false,
            ..running_primary()
        };
        assert_eq!(
            plan(&target(Some(&p), Some(7)), &o).unwrap(),
            vec![PgAction::WriteConfig, PgAction::Start]
        );
    }

    #[test]
    fn standby_assigned_primary_is_promoted() {
        let p = Assignment::Primary;
        let o = Observed {
            config_current: false,
            ..running_standby()
        };
        assert_eq!(
            plan(&target(Some(&p), Some(7)), &o).unwrap(),
            vec![PgAction::WriteConfig, PgAction::Reload, PgAction::Promote]
        );
    }

    #[test]
    fn new_standby_clones_from_its_primary() {
        let s = standby_of("10.0.0.1");
        assert_eq!(
            plan(&target(Some(&s), Some(7)), &observed(DataState::Empty)).unwrap(),
            vec![
                PgAction::BaseBackup {
                    host: "10.0.0.1".into(),
                    port: 5432
                },
                PgAction::WriteConfig,
                PgAction::Start
            ]
        );
    }

    #[test]
    fn restarted_standby_keeps_its_data() {
        let s = standby_of("h");
        let o = Observed {
            running: false,
            in_recovery: None,
            ..running_standby()
        };
        assert_eq!(
            plan(&target(Some(&s), Some(7)), &o).unwrap(),
            vec![PgAction::Start]
        );
    }

    #[test]
    fn standby_repoints_with_a_reload() {
        let s = standby_of("new-primary");
        let o = Observed {
            config_current: false,
            ..running_standby()
        };
        assert_eq!(
            plan(&target(Some(&s), Some(7)), &o).unwrap(),
            vec![PgAction::WriteConfig, PgAction::Reload]
        );
    }

    #[test]
    fn former_primary_is_rewound_before_it_streams() {
        let s = standby_of("h");
        let rewind = PgAction::Rewind {
            host: "h".into(),
            port: 5432,
        };
        assert_eq!(
            plan(&target(Some(&s), Some(7)), &running_primary()).unwrap(),
            vec![
                PgAction::Stop,
                rewind.clone(),
                PgAction::WriteConfig,
                PgAction::Start
            ]
        );
        let stopped = Observed {
            running: false,
            in_recovery: None,
            ..running_primary()
        };
        assert_eq!(
            plan(&target(Some(&s), Some(7)), &stopped).unwrap(),
            vec![rewind, PgAction::WriteConfig, PgAction::Start]
        );
    }

    #[test]
    fn foreign_data_is_never_touched() {
        let p = Assignment::Primary;
        let s = standby_of("h");
        for a in [None, Some(&p), Some(&s)] {
            assert_eq!(
                plan(&target(a, Some(8)), &running_primary()),
                Err(PlanError::ForeignData {
                    found: 7,
                    expected: 8
                })
            );
            assert_eq!(
                plan(&target(a, Some(8)), &observed(DataState::Foreign)),
                Err(PlanError::ForeignDirectory)
            );
        }
    }

    #[test]
    fn a_standby_drops_the_slot_of_a_removed_member() {
        let s = standby_of("h");
        let mut t = target(Some(&s), Some(7));
        t.wanted_slots = ["pgwarden_c".to_string()].into();
        let o = Observed {
            slots: Some(["pgwarden_c".to_string(), "pgwarden_gone".to_string()].into()),
            ..running_standby()
        };
        assert_eq!(
            plan(&t, &o).unwrap(),
            vec![PgAction::DropSlot("pgwarden_gone".into())]
        );
    }

    #[test]
    fn unassigned_keeper_does_nothing() {
        assert_eq!(
            plan(&target(None, None), &observed(DataState::Empty)).unwrap(),
            vec![]
        );
        assert_eq!(
            plan(&target(None, Some(7)), &running_primary()).unwrap(),
            vec![]
        );
    }
}
