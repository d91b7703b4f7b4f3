//! Tests for the keeper's `plan`: one observed state each, asserting the whole plan.

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
        unrewindable: false,
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
        reclone_on_rewind_failure: true,
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

#[test]
fn an_unrewindable_former_primary_is_set_aside_and_cloned_again() {
    let s = standby_of("h");
    let stopped_primary = Observed {
        unrewindable: true,
        ..observed(DataState::Postgres { system_id: 7 })
    };
    assert_eq!(
        plan(&target(Some(&s), Some(7)), &stopped_primary).unwrap(),
        vec![
            PgAction::SetAside,
            PgAction::BaseBackup {
                host: "h".into(),
                port: 5432
            },
            PgAction::WriteConfig,
            PgAction::Start
        ]
    );
    // Re-cloning is off in the spec: pg_rewind again (its error is reported).
    let off = Target {
        reclone_on_rewind_failure: false,
        ..target(Some(&s), Some(7))
    };
    assert_eq!(
        plan(&off, &stopped_primary).unwrap(),
        vec![
            PgAction::Rewind {
                host: "h".into(),
                port: 5432
            },
            PgAction::WriteConfig,
            PgAction::Start
        ]
    );
}

#[test]
fn slot_names_are_derived_from_the_uid() {
    assert_eq!(slot_name("Db-1"), "pgwarden_db_1");
    assert_eq!(slot_name(&"x".repeat(80)).len(), 63);
}
