//! Tests for the keeper's step: each builds a status and an observation and
//! asserts the whole step.

use super::*;
use crate::plan::DataState;

fn standby_of(p: &str) -> Assignment {
    Assignment::Standby {
        follow: p.into(),
        host: p.into(),
        port: 5432,
    }
}

/// a primary of b and c, generation 4.
fn status() -> Status {
    let mut s = Status {
        generation: 4,
        system_id: Some(7),
        primary: Some("a".into()),
        ..Status::default()
    };
    s.members.insert("a".into(), Assignment::Primary);
    s.members.insert("b".into(), standby_of("a"));
    s.members.insert("c".into(), standby_of("a"));
    s
}

fn running(in_recovery: bool) -> Observed {
    Observed {
        data: DataState::Postgres { system_id: 7 },
        running: true,
        in_recovery: Some(in_recovery),
        standby_signal: in_recovery,
        config_current: true,
        slots: Some(BTreeSet::new()),
        replication_role_ready: true,
        diverged: false,
        unrewindable: false,
    }
}

fn round(observed: &Observed) -> Round<'_> {
    Round {
        observed,
        holds_primary_lease: true,
        crashed_ms_ago: None,
        round: 0,
    }
}

#[test]
fn a_status_older_than_the_one_carried_out_is_ignored() {
    let (spec, status) = (Spec::default(), status());
    assert_eq!(
        Tick::new("a", &spec, &status, 5, 0).unwrap_err(),
        Stale {
            generation: 4,
            applied: 5
        }
    );
    assert!(Tick::new("a", &spec, &status, 4, 0).is_ok());
}

#[test]
fn the_primary_makes_its_followers_slots_and_a_standby_its_peers() {
    let (spec, status) = (Spec::default(), status());
    let a = Tick::new("a", &spec, &status, 0, 0).unwrap();
    assert!(a.takes_primary_lease());
    assert_eq!(
        a.step(&round(&running(false))).unwrap(),
        KeeperStep {
            actions: vec![
                PgAction::CreateSlot("pgwarden_b".into()),
                PgAction::CreateSlot("pgwarden_c".into())
            ],
            await_crash_verdict: false,
            release_primary_lease: false,
        }
    );
    // b, streaming, makes c's slot ahead of a promotion (not its own).
    let b = Tick::new("b", &spec, &status, 0, 0).unwrap();
    assert!(!b.takes_primary_lease());
    assert_eq!(
        b.step(&round(&running(true))).unwrap(),
        KeeperStep {
            actions: vec![PgAction::CreateSlot("pgwarden_c".into())],
            await_crash_verdict: false,
            release_primary_lease: true,
        }
    );
}

#[test]
fn the_lease_is_given_up_only_once_postgres_cannot_accept_writes() {
    let (spec, mut status) = (Spec::default(), status());
    status.members.insert("a".into(), standby_of("b"));
    status.members.insert("b".into(), Assignment::Primary);
    status.primary = Some("b".into());
    let a = Tick::new("a", &spec, &status, 0, 0).unwrap();
    let step = a.step(&round(&running(false))).unwrap();
    assert!(!step.release_primary_lease);
    assert_eq!(step.actions[0], PgAction::Stop);
    let stopped = Observed {
        running: false,
        in_recovery: None,
        ..running(false)
    };
    assert!(a.step(&round(&stopped)).unwrap().release_primary_lease);
}

#[test]
fn a_crashed_primary_waits_for_the_verdict_then_restarts() {
    let (mut spec, status) = (Spec::default(), status());
    spec.on_postgres_crash = OnPostgresCrash::Failover;
    let a = Tick::new("a", &spec, &status, 0, 0).unwrap();
    let down = Observed {
        running: false,
        in_recovery: None,
        ..running(false)
    };
    let at = |ms| Round {
        crashed_ms_ago: Some(ms),
        ..round(&down)
    };
    assert_eq!(
        a.step(&at(CRASH_VERDICT_WAIT_MS - 1)).unwrap(),
        KeeperStep {
            actions: vec![],
            await_crash_verdict: true,
            release_primary_lease: false,
        }
    );
    assert_eq!(
        a.step(&at(CRASH_VERDICT_WAIT_MS)).unwrap().actions,
        vec![PgAction::Start]
    );
    spec.on_postgres_crash = OnPostgresCrash::Restart;
    let a = Tick::new("a", &spec, &status, 0, 0).unwrap();
    assert_eq!(a.step(&at(0)).unwrap().actions, vec![PgAction::Start]);
}

#[test]
fn a_tick_ends_after_its_rounds() {
    let (spec, status) = (Spec::default(), status());
    let a = Tick::new("a", &spec, &status, 0, 0).unwrap();
    let primary = running(false);
    let last = Round {
        round: MAX_PLAN_ROUNDS,
        ..round(&primary)
    };
    assert_eq!(a.step(&last).unwrap().actions, vec![]);
}

#[test]
fn a_node_request_is_carried_out_once() {
    let (mut spec, status) = (Spec::default(), status());
    let request = NodeRequest {
        id: 3,
        action: NodeAction::Restart,
    };
    spec.node_requests.insert("b".into(), request);
    assert_eq!(
        Tick::new("b", &spec, &status, 0, 3).unwrap().node_request,
        None
    );
    let mut b = Tick::new("b", &spec, &status, 0, 2).unwrap();
    let actions = b.step(&round(&running(true))).unwrap().actions;
    assert_eq!(
        actions,
        vec![PgAction::Stop, PgAction::WriteConfig, PgAction::Start]
    );
    assert_eq!(b.carried_out(&PgAction::Stop), None);
    assert_eq!(b.carried_out(&PgAction::Start), Some(request));
    assert_eq!(b.carried_out(&PgAction::Start), None);
}

#[test]
fn foreign_data_stops_the_keeper() {
    let (spec, status) = (Spec::default(), status());
    let b = Tick::new("b", &spec, &status, 0, 0).unwrap();
    let foreign = Observed {
        data: DataState::Postgres { system_id: 8 },
        ..running(true)
    };
    assert!(matches!(
        b.step(&round(&foreign)),
        Err(PlanError::ForeignData { .. })
    ));
}

#[test]
fn only_failures_no_retry_fixes_disqualify() {
    assert_eq!(error_kind(FailureCause::UnusableBinaries), ErrorKind::Fatal);
    assert_eq!(
        error_kind(FailureCause::DirectoryNotEmpty),
        ErrorKind::Fatal
    );
    assert_eq!(error_kind(FailureCause::Other), ErrorKind::Transient);
}

#[test]
fn the_loop_runs_fast_while_a_failover_is_between_its_steps() {
    let (spec, mut status) = (Spec::default(), status());
    assert_eq!(
        Tick::new("b", &spec, &status, 0, 0).unwrap().period_ms,
        LOOP_MS
    );
    status.deposed = Some("a".into());
    assert_eq!(
        Tick::new("b", &spec, &status, 0, 0).unwrap().period_ms,
        FAST_LOOP_MS
    );
}

#[test]
fn a_standby_whose_wal_is_gone_from_the_primary_re_clones_itself() {
    let (spec, status) = (Spec::default(), status());
    let mut tick = Tick::new("b", &spec, &status, 4, 0).unwrap();
    let mut streaming = running(true);
    streaming.slots = Some(tick.wanted_slots.clone());
    // One answer is not enough: the rule waits for a second.
    assert!(!tick.reclone_for_lost_wal(LOST_WAL_REPORTS - 1));
    assert_eq!(
        tick.step(&round(&streaming)).unwrap().actions,
        Vec::<PgAction>::new()
    );
    assert!(tick.reclone_for_lost_wal(LOST_WAL_REPORTS));
    let actions = tick.step(&round(&streaming)).unwrap().actions;
    assert_eq!(
        actions,
        vec![
            PgAction::Stop,
            PgAction::Wipe,
            PgAction::BaseBackup {
                host: "a".into(),
                port: 5432
            },
            PgAction::WriteConfig,
            PgAction::Start,
        ]
    );
    // Once cloned, the next round does not clone again, and no operator
    // request is reported as handled.
    for action in &actions {
        assert_eq!(tick.carried_out(action), None);
    }
    assert_eq!(
        tick.step(&round(&streaming)).unwrap().actions,
        Vec::<PgAction>::new()
    );
}

#[test]
fn only_a_standby_of_the_current_primary_re_clones_for_lost_wal() {
    let primary = Assignment::Primary;
    assert!(!lost_wal_reclone(Some(&primary), true, 9));
    assert!(!lost_wal_reclone(None, true, 9));
    // Mid-failover (following a node that is no longer primary): wait.
    assert!(!lost_wal_reclone(Some(&standby_of("a")), false, 9));
    assert!(lost_wal_reclone(
        Some(&standby_of("a")),
        true,
        LOST_WAL_REPORTS
    ));
    assert!(!lost_wal_reclone(Some(&standby_of("a")), true, 0));
}
