//! Tests for `decide`, written with a small builder so each case reads as the
//! cluster it describes, and each asserts the whole decision.

use super::*;
use crate::lsn::Lsn;
use crate::report::ErrorKind;
use crate::spec::OnPostgresCrash;
use proptest::prelude::*;

const SID: u64 = 7_000_000_000_000_000_001;

#[derive(Clone)]
struct Cluster {
    view: ClusterView,
}

fn cluster() -> Cluster {
    Cluster {
        view: ClusterView {
            now_ms: 1_000_000,
            spec: Spec::default(),
            status: Status::default(),
            keepers: BTreeMap::new(),
            primary_lease_holder: None,
            proxies: BTreeMap::new(),
        },
    }
}

fn report(uid: &str) -> KeeperReport {
    KeeperReport::new(
        uid,
        &format!("host-{uid}"),
        5432,
        &format!("http://host-{uid}:8008"),
    )
}

impl Cluster {
    /// A keeper with an empty data dir, not yet running postgres.
    fn fresh(mut self, uid: &str) -> Self {
        self.view.keepers.insert(uid.into(), report(uid));
        self
    }

    /// A keeper whose data (of `sid`) is at `lsn`, postgres stopped.
    fn with_data(mut self, uid: &str, sid: u64, timeline: u32, lsn: u64) -> Self {
        let mut r = report(uid);
        r.system_id = Some(sid);
        r.timeline = timeline;
        r.replay_lsn = Some(Lsn(lsn));
        self.view.keepers.insert(uid.into(), r);
        self
    }

    fn broken(mut self, uid: &str) -> Self {
        let mut r = report(uid);
        r.error = Some("bad password file".into());
        r.error_kind = ErrorKind::Fatal;
        self.view.keepers.insert(uid.into(), r);
        self
    }

    /// `uid` runs as the healthy primary of system SID.
    fn primary_running(mut self, uid: &str) -> Self {
        let mut r = report(uid);
        r.role = ObservedRole::Primary;
        r.healthy = true;
        r.system_id = Some(SID);
        r.timeline = 1;
        r.current_lsn = Some(Lsn(0x3000000));
        self.view.keepers.insert(uid.into(), r);
        self.view.primary_lease_holder = Some(uid.into());
        self
    }

    fn status(mut self, f: impl FnOnce(&mut Status)) -> Self {
        f(&mut self.view.status);
        self
    }

    fn decide(&self) -> Decision {
        decide(&self.view)
    }
}

fn standby_of(primary: &str) -> Assignment {
    Assignment::Standby {
        follow: primary.into(),
        host: format!("host-{primary}"),
        port: 5432,
    }
}

/// The status after `a` was chosen and created the cluster, nothing else.
fn bootstrapped(s: &mut Status) {
    s.generation = 1;
    s.primary = Some("a".into());
    s.system_id = Some(SID);
    s.timeline = 1;
    s.members.insert("a".into(), Assignment::Primary);
    s.primary_confirmed = true;
}

#[test]
fn no_keepers_means_waiting() {
    let d = cluster().decide();
    assert_eq!(
        d,
        Decision {
            next: Status::default(),
            reason: Reason::WaitingForKeepers
        }
    );
}

#[test]
fn first_keeper_becomes_the_primary() {
    let c = cluster().fresh("b").fresh("a");
    let d = c.decide();
    assert_eq!(d.reason, Reason::InitialPrimary { uid: "a".into() });
    let mut want = Status {
        generation: 1,
        primary: Some("a".into()),
        ..Status::default()
    };
    want.members.insert("a".into(), Assignment::Primary);
    want.primary_since_ms = 1_000_000;
    want.unhealthy_since.insert("a".into(), 1_000_000);
    want.history.push(HistoryEntry {
        at_ms: 1_000_000,
        generation: 1,
        old_primary: None,
        new_primary: Some("a".into()),
        reason: "a chosen as the first primary: it will create the cluster".into(),
        kind: "initial_primary".into(),
    });
    assert_eq!(d.next, want);
}

#[test]
fn keepers_reporting_errors_are_not_chosen() {
    let d = cluster().broken("a").fresh("b").decide();
    assert_eq!(d.reason, Reason::InitialPrimary { uid: "b".into() });
    let d = cluster().broken("a").decide();
    assert_eq!(d.reason, Reason::WaitingForKeepers);
    assert_eq!(d.next, Status::default());
}

#[test]
fn existing_data_wins_and_the_most_advanced_copy_is_adopted() {
    let d = cluster()
        .fresh("a")
        .with_data("b", SID, 1, 100)
        .with_data("c", SID, 1, 200)
        .decide();
    assert_eq!(
        d.reason,
        Reason::AdoptedExistingData {
            uid: "c".into(),
            system_id: SID
        }
    );
    assert_eq!(d.next.system_id, Some(SID));
    assert_eq!(d.next.primary.as_deref(), Some("c"));
    // A higher timeline beats a higher LSN on an older one.
    let d = cluster()
        .with_data("b", SID, 2, 100)
        .with_data("c", SID, 1, 900)
        .decide();
    assert_eq!(
        d.reason,
        Reason::AdoptedExistingData {
            uid: "b".into(),
            system_id: SID
        }
    );
    // Ties go to the smallest uid.
    let d = cluster()
        .with_data("b", SID, 1, 100)
        .with_data("c", SID, 1, 100)
        .decide();
    assert_eq!(d.next.primary.as_deref(), Some("b"));
}

#[test]
fn standbys_wait_until_the_primary_runs() {
    let c = cluster().fresh("a").fresh("b").status(|s| {
        s.generation = 1;
        s.primary = Some("a".into());
        s.members.insert("a".into(), Assignment::Primary);
    });
    let d = c.decide();
    assert_eq!(d.next.members.len(), 1);
    assert_eq!(d.next.generation, 1);
}

#[test]
fn running_primary_records_the_system_id_and_gets_standbys() {
    let c = cluster()
        .primary_running("a")
        .fresh("b")
        .fresh("c")
        .status(|s| {
            s.generation = 1;
            s.primary = Some("a".into());
            s.members.insert("a".into(), Assignment::Primary);
        });
    let d = c.decide();
    assert_eq!(
        d.reason,
        Reason::AssignedStandbys {
            uids: vec!["b".into(), "c".into()]
        }
    );
    let n = &d.next;
    assert_eq!(n.system_id, Some(SID));
    assert_eq!(n.timeline, 1);
    assert_eq!(n.generation, 2);
    assert_eq!(n.members["b"], standby_of("a"));
    assert_eq!(n.members["c"], standby_of("a"));
    assert_eq!(n.history.last().map(|h| h.generation), Some(2));
}

#[test]
fn recording_the_system_id_alone_does_not_bump_the_generation() {
    let c = cluster().primary_running("a").status(|s| {
        s.generation = 1;
        s.primary = Some("a".into());
        s.members.insert("a".into(), Assignment::Primary);
    });
    let d = c.decide();
    assert_eq!(d.reason, Reason::RecordedSystemId { system_id: SID });
    assert_eq!(d.next.generation, 1);
    assert!(d.next.history.is_empty());
}

#[test]
fn keeper_with_another_clusters_data_is_left_alone() {
    let d = cluster()
        .primary_running("a")
        .with_data("x", 42, 1, 5)
        .status(bootstrapped)
        .decide();
    assert!(!d.next.members.contains_key("x"));
    assert_eq!(d.reason, Reason::Unchanged);
}

#[test]
fn converged_cluster_is_unchanged() {
    let mut c = cluster().primary_running("a").status(bootstrapped);
    let mut b = report("b");
    b.role = ObservedRole::Standby;
    b.healthy = true;
    b.system_id = Some(SID);
    c.view.keepers.insert("b".into(), b);
    c.view.status.members.insert("b".into(), standby_of("a"));
    c.view.status.generation = 2;
    let d = c.decide();
    assert_eq!(
        d,
        Decision {
            next: c.view.status.clone(),
            reason: Reason::Unchanged
        }
    );
    assert!(!d.changed(&c.view.status));
}

#[test]
fn standby_is_repointed_when_the_primary_moves_address() {
    let c = cluster().primary_running("a").fresh("b").status(|s| {
        bootstrapped(s);
        s.members.insert(
            "b".into(),
            Assignment::Standby {
                follow: "a".into(),
                host: "old".into(),
                port: 5432,
            },
        );
    });
    let d = c.decide();
    assert_eq!(
        d.reason,
        Reason::AssignedStandbys {
            uids: vec!["b".into()]
        }
    );
    assert_eq!(d.next.members["b"], standby_of("a"));
}

#[test]
fn unhealthy_since_is_remembered_and_cleared() {
    let c = cluster().primary_running("a").status(|s| {
        bootstrapped(s);
        s.members.insert("b".into(), standby_of("a"));
    });
    let d = c.decide();
    assert_eq!(d.reason, Reason::HealthChanged);
    assert_eq!(d.next.unhealthy_since.get("b"), Some(&1_000_000));
    // A later round keeps the first time it was seen unhealthy.
    let mut later = cluster()
        .primary_running("a")
        .status(|s| *s = d.next.clone());
    later.view.now_ms += 5_000;
    let d2 = later.decide();
    assert_eq!(d2.reason, Reason::Unchanged);
    assert_eq!(d2.next.unhealthy_since.get("b"), Some(&1_000_000));
}

fn arb_report() -> impl Strategy<Value = KeeperReport> {
    (
        "[a-e]",
        proptest::option::of(prop_oneof![Just(SID), Just(42u64)]),
        any::<bool>(),
        any::<bool>(),
        0u64..1000,
        any::<bool>(),
    )
        .prop_map(|(uid, sid, healthy, is_primary, lsn, err)| {
            let mut r = report(&uid);
            r.system_id = sid;
            r.healthy = healthy;
            r.role = if is_primary {
                ObservedRole::Primary
            } else {
                ObservedRole::Standby
            };
            r.replay_lsn = Some(Lsn(lsn));
            r.current_lsn = Some(Lsn(lsn));
            r.timeline = 1;
            r.error = err.then(|| "broken".to_string());
            r.error_kind = ErrorKind::Fatal;
            r
        })
}

proptest! {
    /// Whatever the keepers report, repeated rounds never lower the generation,
    /// never name two primaries, never assign a keeper whose data belongs to
    /// another system, and reach a fixed point.
    #[test]
    fn rounds_are_safe_and_converge(rounds in proptest::collection::vec(proptest::collection::vec(arb_report(), 0..5), 1..8)) {
        let mut status = Status::default();
        for (i, reports) in rounds.iter().enumerate() {
            let view = ClusterView {
                now_ms: 1000 * i as u64,
                spec: Spec::default(),
                status: status.clone(),
                keepers: reports.iter().map(|r| (r.uid.clone(), r.clone())).collect(),
                primary_lease_holder: None,
                proxies: BTreeMap::new(),
            };
            let d = decide(&view);
            prop_assert!(d.next.generation >= status.generation);
            let primaries = d.next.members.values().filter(|a| **a == Assignment::Primary).count();
            prop_assert!(primaries <= 1);
            prop_assert_eq!(primaries == 1, d.next.primary.is_some());
            if let Some(sid) = d.next.system_id {
                for (uid, _) in d.next.members.iter().filter(|(u, _)| Some(*u) != d.next.primary.as_ref()) {
                    if let Some(r) = view.keepers.get(uid) {
                        prop_assert!(r.system_id.is_none_or(|s| s == sid) || status.members.contains_key(uid));
                    }
                }
            }
            // On an unchanging view, decisions reach a fixed point within a
            // few rounds (choose a primary, record its data, add standbys).
            let mut s = d.next.clone();
            let mut fixed = false;
            for _ in 0..3 {
                let again = decide(&ClusterView { status: s.clone(), ..view.clone() });
                fixed = !again.changed(&s);
                s = again.next;
                if fixed {
                    break;
                }
            }
            prop_assert!(fixed, "no fixed point after 3 rounds: {:?}", s);
            status = d.next;
        }
    }
}

/// A healthy standby of SID on timeline 1 that has received up to `lsn`.
fn standby_report(uid: &str, lsn: u64) -> KeeperReport {
    let mut r = report(uid);
    r.role = ObservedRole::Standby;
    r.healthy = true;
    r.system_id = Some(SID);
    r.timeline = 1;
    r.receive_lsn = Some(Lsn(lsn));
    r.replay_lsn = Some(Lsn(lsn));
    r
}

impl Cluster {
    fn standby(mut self, uid: &str, lsn: u64) -> Self {
        self.view
            .keepers
            .insert(uid.into(), standby_report(uid, lsn));
        self.view.status.members.insert(uid.into(), standby_of("a"));
        self
    }

    /// The primary `a` is gone: no report, no lease.
    fn primary_gone(mut self) -> Self {
        self.view.keepers.remove("a");
        self.view.primary_lease_holder = None;
        self
    }

    fn tweak(mut self, uid: &str, f: impl FnOnce(&mut KeeperReport)) -> Self {
        f(self.view.keepers.get_mut(uid).unwrap());
        self
    }

    fn spec(mut self, f: impl FnOnce(&mut Spec)) -> Self {
        f(&mut self.view.spec);
        self
    }

    fn proxy(mut self, id: &str, generation: u64) -> Self {
        self.view.proxies.insert(id.into(), generation);
        self
    }
}

/// A running cluster at generation 2: primary a, standbys added by the caller.
fn running() -> Cluster {
    cluster().primary_running("a").status(|s| {
        bootstrapped(s);
        s.generation = 2;
    })
}

fn primary_of(d: &Decision) -> Option<&str> {
    d.next.primary.as_deref()
}

#[test]
fn a_member_gone_past_member_slots_ttl_has_its_slots_released_until_it_returns() {
    let gone_since = |c: &mut Cluster, mins: u64| {
        c.view.keepers.remove("c");
        c.view.now_ms = 10_000_000;
        let since = c.view.now_ms - mins * 60_000;
        c.view.status.unhealthy_since.insert("c".into(), since);
    };
    let mut c = running().standby("b", 0x1000).standby("c", 0x1000);
    gone_since(&mut c, 29);
    let d = c.decide();
    assert!(d.next.slots_released.is_empty(), "{:?}", d.next);
    let mut c = running().standby("b", 0x1000).standby("c", 0x1000);
    gone_since(&mut c, 31);
    let d = c.decide();
    assert_eq!(d.next.slots_released, ["c"]);
    assert!(d.next.members.contains_key("c"), "it stays listed as gone");
    assert_eq!(
        d.next.generation, c.view.status.generation,
        "no role changed"
    );
    // Back and healthy: its slots are kept again.
    let mut back = running().standby("b", 0x1000).standby("c", 0x1000);
    back.view.status = d.next.clone();
    let d = back.decide();
    assert!(d.next.slots_released.is_empty(), "{:?}", d.next);
}

#[test]
fn dead_primary_is_replaced_by_the_most_advanced_standby() {
    let d = running()
        .standby("b", 0x2000)
        .standby("c", 0x3000)
        .primary_gone()
        .decide();
    assert_eq!(
        d.reason,
        Reason::Promoted {
            uid: "c".into(),
            from: "a".into()
        }
    );
    // Depose and promote are two generations, even in one call.
    assert_eq!(d.next.generation, 4);
    assert_eq!(d.next.deposed, None);
    assert_eq!(d.next.members["c"], Assignment::Primary);
    let follow_c = Assignment::Standby {
        follow: "c".into(),
        host: "host-c".into(),
        port: 5432,
    };
    assert_eq!(
        d.next.members["a"], follow_c,
        "the old primary must rejoin as a standby of c"
    );
    assert_eq!(d.next.members["b"], follow_c);
    assert_eq!(
        d.next.history.last().unwrap().reason,
        "c promoted to primary (was a)"
    );
    // Order does not depend on uid order: the most advanced still wins.
    let d = running()
        .standby("b", 0x3000)
        .standby("c", 0x2000)
        .primary_gone()
        .decide();
    assert_eq!(primary_of(&d), Some("b"));
}

#[test]
fn ties_go_to_the_higher_replay_then_the_smaller_uid() {
    let d = running()
        .standby("b", 0x3000)
        .standby("c", 0x3000)
        .tweak("b", |r| r.replay_lsn = Some(Lsn(0x1000)))
        .primary_gone()
        .decide();
    assert_eq!(primary_of(&d), Some("c"));
    let d = running()
        .standby("c", 0x3000)
        .standby("b", 0x3000)
        .primary_gone()
        .decide();
    assert_eq!(primary_of(&d), Some("b"));
}

#[test]
fn ineligible_standbys_are_never_promoted() {
    // Beyond max lag.
    let d = running()
        .standby("b", 0x100)
        .standby("c", 0x100 + 2 * 16 * 1024 * 1024)
        .tweak("c", |r| r.healthy = false)
        .spec(|s| s.max_lag_bytes = 16 * 1024 * 1024)
        .primary_gone()
        .decide();
    assert_eq!(d.reason, Reason::NoCandidate { uid: "a".into() });
    let before = running()
        .standby("b", 0x100)
        .standby("c", 0)
        .primary_gone()
        .view
        .status;
    assert_eq!(
        (&d.next.members, &d.next.primary, d.next.generation),
        (&before.members, &before.primary, 2)
    );
    assert_eq!(
        d.next.unhealthy_since.keys().collect::<Vec<_>>(),
        ["a", "c"]
    );
    // nofailover, another timeline, unhealthy, or reporting an error.
    for tweak in [
        (|r: &mut KeeperReport| r.nofailover = true) as fn(&mut KeeperReport),
        |r| r.timeline = 0,
        |r| r.healthy = false,
        |r| {
            r.error = Some("x".into());
            r.error_kind = ErrorKind::Fatal;
        },
        |r| r.role = ObservedRole::Stopped,
    ] {
        let d = running()
            .standby("b", 0x9000)
            .standby("c", 0x1000)
            .tweak("b", tweak)
            .primary_gone()
            .decide();
        assert_eq!(primary_of(&d), Some("c"));
    }
}

#[test]
fn a_transient_error_never_blocks_a_failover() {
    // Every standby reports a transient error (a parameter postgres
    // rejected, a failed config write): the most advanced is still promoted.
    let transient = |r: &mut KeeperReport| {
        r.error = Some("postgres action WriteConfig: no space left on device".into());
        r.error_kind = ErrorKind::Transient;
    };
    let d = running()
        .standby("b", 0x9000)
        .standby("c", 0x1000)
        .tweak("b", transient)
        .tweak("c", transient)
        .primary_gone()
        .decide();
    assert_eq!(primary_of(&d), Some("b"));
    // A fatal one does.
    let d = running()
        .standby("b", 0x9000)
        .tweak("b", |r| {
            r.error = Some("pg_basebackup: directory is not empty".into());
            r.error_kind = ErrorKind::Fatal;
        })
        .primary_gone()
        .decide();
    assert_eq!(d.reason, Reason::NoCandidate { uid: "a".into() });
}

#[test]
fn a_transient_error_does_not_keep_a_keeper_from_being_the_first_primary() {
    let mut c = cluster().fresh("a");
    c.view.keepers.get_mut("a").unwrap().error = Some("connection refused".into());
    let d = c.decide();
    assert_eq!(d.reason, Reason::InitialPrimary { uid: "a".into() });
}

#[test]
fn no_candidate_changes_nothing() {
    let c = running().primary_gone();
    let d = c.decide();
    let mut want = c.view.status.clone();
    want.unhealthy_since.insert("a".into(), c.view.now_ms);
    assert_eq!(
        d,
        Decision {
            next: want,
            reason: Reason::NoCandidate { uid: "a".into() }
        }
    );
}

#[test]
fn paused_cluster_takes_no_action() {
    let c = running()
        .standby("b", 0x3000)
        .primary_gone()
        .spec(|s| s.paused = true);
    let d = c.decide();
    assert_eq!(d.next.primary.as_deref(), Some("a"));
    assert_eq!(d.next.generation, 2);
    assert_eq!(
        d.reason,
        Reason::HealthChanged,
        "only the health record changes"
    );
}

#[test]
fn promotion_waits_for_every_proxy_to_leave_the_old_primary() {
    let c = running()
        .standby("b", 0x3000)
        .primary_gone()
        .proxy("p1", 2)
        .proxy("p2", 2);
    let d = c.decide();
    assert_eq!(
        d.reason,
        Reason::Deposed {
            uid: "a".into(),
            why: "its primary lease is gone".into()
        }
    );
    assert_eq!(
        (
            d.next.generation,
            d.next.primary.as_deref(),
            d.next.deposed.as_deref()
        ),
        (3, None, Some("a"))
    );
    // One proxy acknowledged generation 3, the other not yet.
    let mut c2 = c.status(|s| *s = d.next.clone()).proxy("p1", 3);
    let d2 = c2.decide();
    assert_eq!(
        d2.reason,
        Reason::WaitingForProxies {
            ids: vec!["p2".into()]
        }
    );
    assert_eq!(d2.next.generation, 3);
    // Both did: promote.
    c2.view.proxies.insert("p2".into(), 3);
    let d3 = c2.decide();
    assert_eq!(
        d3.reason,
        Reason::Promoted {
            uid: "b".into(),
            from: "a".into()
        }
    );
    assert_eq!(d3.next.generation, 4);
}

#[test]
fn a_new_leader_continues_a_failover_from_the_status_alone() {
    // Leader 1 deposed a and stopped (proxy not acked yet); leader 2 starts
    // from the stored status with the same view and finishes the job.
    let c = running()
        .standby("b", 0x3000)
        .standby("c", 0x1000)
        .primary_gone()
        .proxy("p", 2);
    let deposed = c.decide();
    assert!(matches!(deposed.reason, Reason::Deposed { .. }));
    let stored = Status::from_json(&deposed.next.to_json()).unwrap();
    let leader2 = c.status(|s| *s = stored).proxy("p", 3).decide();
    assert_eq!(
        leader2.reason,
        Reason::Promoted {
            uid: "b".into(),
            from: "a".into()
        }
    );
}

#[test]
fn postgres_down_under_a_live_keeper_fails_over_only_to_a_caught_up_standby() {
    let down = |r: &mut KeeperReport| {
        r.healthy = false;
        r.role = ObservedRole::Stopped;
        r.current_lsn = None;
        r.receive_lsn = Some(Lsn(0x3000));
    };
    // Caught up: deposed; the keeper still holds the lease, so promotion waits for it.
    let d = running().standby("b", 0x3000).tweak("a", down).decide();
    assert_eq!(
        d.reason,
        Reason::Deposed {
            uid: "a".into(),
            why: "its postgres is down and a caught-up standby exists".into()
        }
    );
    let d2 = running()
        .standby("b", 0x3000)
        .tweak("a", down)
        .status(|s| *s = d.next.clone())
        .decide();
    assert_eq!(d2.reason, Reason::WaitingForLease { holder: "a".into() });
    // Behind: the keeper restarts postgres in place.
    let d = running().standby("b", 0x1000).tweak("a", down).decide();
    assert_eq!(d.next.primary.as_deref(), Some("a"));
    // Policy restart: never fail over while the keeper holds the lease.
    let d = running()
        .standby("b", 0x3000)
        .tweak("a", down)
        .spec(|s| s.on_postgres_crash = OnPostgresCrash::Restart)
        .decide();
    assert_eq!(d.next.primary.as_deref(), Some("a"));
}

#[test]
fn healthy_primary_is_left_alone() {
    let c = running().standby("b", 0x3000);
    let d = c.decide();
    assert_eq!(d.next.primary.as_deref(), Some("a"));
    assert_eq!(d.next.generation, 2);
}

#[test]
fn a_new_primary_gets_time_to_take_the_lease_then_is_replaced() {
    // Just promoted b: no lease yet. Not a failure within promotion_timeout.
    let c = running()
        .standby("b", 0x3000)
        .standby("c", 0x3000)
        .primary_gone()
        .decide();
    assert_eq!(primary_of(&c), Some("b"));
    let mut view = running()
        .standby("b", 0x3000)
        .standby("c", 0x3000)
        .primary_gone();
    view.view.status = c.next.clone();
    view.view.keepers.get_mut("b").unwrap().role = ObservedRole::Standby;
    view.view.now_ms += 1_000;
    let d = view.decide();
    assert_eq!(primary_of(&d), Some("b"));
    assert_eq!(d.next.generation, c.next.generation);
    // Once it held the lease, losing it is a failure at once.
    view.view.primary_lease_holder = Some("b".into());
    let held = view.decide();
    assert!(held.next.primary_confirmed);
    // When it was first seen writable, kept while it stays so.
    assert_eq!(c.next.primary_confirmed_ms, 0);
    assert_eq!(held.next.primary_confirmed_ms, view.view.now_ms);
    let mut again = view.clone();
    again.view.status = held.next.clone();
    again.view.now_ms += 5_000;
    assert_eq!(again.decide().next.primary_confirmed_ms, view.view.now_ms);
    // The promotion's history entry names its kind.
    assert_eq!(c.next.history.last().unwrap().kind, "promoted");
    view.view.status = held.next;
    view.view.primary_lease_holder = None;
    view.view.keepers.remove("b");
    assert_eq!(primary_of(&view.decide()), Some("c"));
    // Never took it: replaced after promotion_timeout.
    let mut never = running()
        .standby("b", 0x3000)
        .standby("c", 0x3000)
        .primary_gone();
    never.view.status = c.next.clone();
    never.view.keepers.remove("b");
    never.view.now_ms += 29_000;
    assert_eq!(primary_of(&never.decide()), Some("b"));
    never.view.now_ms += 2_000;
    assert_eq!(primary_of(&never.decide()), Some("c"));
}

mod requests {
    use super::*;
    use crate::spec::{RequestKind, RoleRequest};

    fn request(kind: RequestKind, to: Option<&'static str>, force: bool) -> impl FnOnce(&mut Spec) {
        let to = to.map(str::to_string);
        move |s: &mut Spec| {
            s.request = Some(RoleRequest {
                id: 7,
                kind,
                to,
                force,
            })
        }
    }

    fn switchover(to: Option<&'static str>) -> impl FnOnce(&mut Spec) {
        request(RequestKind::Switchover, to, false)
    }

    /// After the old primary `a` stopped cleanly at `end`.
    fn a_stopped_at(end: u64) -> impl FnOnce(&mut KeeperReport) {
        move |r: &mut KeeperReport| {
            r.role = ObservedRole::Stopped;
            r.healthy = false;
            r.current_lsn = Some(Lsn(end));
        }
    }

    #[test]
    fn switchover_deposes_waits_for_catch_up_then_promotes_the_target() {
        let c = running()
            .standby("b", 0x3000000)
            .standby("c", 0x3000000)
            .spec(switchover(Some("c")));
        let d = c.decide();
        assert_eq!(
            d.reason,
            Reason::RoleChangeStarted {
                kind: "switchover".into(),
                from: Some("a".into()),
                to: "c".into()
            }
        );
        assert_eq!(
            (
                d.next.generation,
                d.next.primary.as_deref(),
                d.next.deposed.as_deref()
            ),
            (3, None, Some("a"))
        );
        assert_eq!(d.next.target.as_deref(), Some("c"));
        assert_eq!(d.next.handled_request, 7);
        assert_eq!(
            d.next.members["a"],
            Assignment::Standby {
                follow: "c".into(),
                host: "host-c".into(),
                port: 5432
            }
        );
        // The old primary still runs and holds the lease: wait.
        let step = |s: &Status| {
            running()
                .standby("b", 0x3000000)
                .standby("c", 0x3000000)
                .spec(switchover(Some("c")))
                .status(|x| *x = s.clone())
        };
        let d2 = step(&d.next).decide();
        assert_eq!(d2.reason, Reason::WaitingForLease { holder: "a".into() });
        // Stopped at 0x3100 (its shutdown checkpoint), lease released; c has only 0x3000.
        let mut c3 = step(&d.next).tweak("a", a_stopped_at(0x3000100));
        c3.view.primary_lease_holder = None;
        assert_eq!(
            c3.decide().reason,
            Reason::WaitingForCatchUp { uid: "c".into() }
        );
        // c received past it: promoted, and the request is reported done.
        let d4 = c3
            .tweak("c", |r| r.receive_lsn = Some(Lsn(0x3000200)))
            .decide();
        assert_eq!(
            d4.reason,
            Reason::Promoted {
                uid: "c".into(),
                from: "a".into()
            }
        );
        assert_eq!(d4.next.primary.as_deref(), Some("c"));
        assert_eq!(
            d4.next
                .request_outcome
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("done: c is primary (was a)")
        );
        assert_eq!(d4.next.target, None);
    }

    #[test]
    fn a_request_is_carried_out_once() {
        let c = running().standby("b", 0x3000000).spec(switchover(None));
        let mut done = c.status(|s| s.handled_request = 7);
        let d = done.decide();
        assert_eq!(d.next.primary.as_deref(), Some("a"));
        done.view.spec.request.as_mut().unwrap().id = 8;
        assert!(matches!(
            done.decide().reason,
            Reason::RoleChangeStarted { .. }
        ));
    }

    #[test]
    fn switchover_without_a_target_picks_the_best_standby() {
        let d = running()
            .standby("b", 0x2FFF000)
            .standby("c", 0x3000000)
            .spec(switchover(None))
            .decide();
        assert!(
            matches!(&d.reason, Reason::RoleChangeStarted { to, .. } if to == "c"),
            "{:?}",
            d.reason
        );
    }

    #[test]
    fn bad_switchovers_are_refused_with_a_reason_and_change_no_role() {
        let cases: Vec<(Cluster, &str)> = vec![
            (
                running()
                    .standby("b", 0x3000000)
                    .spec(switchover(Some("zz"))),
                "zz is not a standby of this cluster",
            ),
            (
                running()
                    .standby("b", 0x3000000)
                    .spec(switchover(Some("a"))),
                "a is already the primary",
            ),
            (
                running()
                    .standby("b", 0x3000000)
                    .tweak("b", |r| r.healthy = false)
                    .spec(switchover(Some("b"))),
                "b is not a healthy standby",
            ),
            (
                running()
                    .standby("b", 0x3000000)
                    .standby("c", 0x2FFD000)
                    .spec(|s| s.max_lag_bytes = 0x100)
                    .spec(switchover(Some("c"))),
                "c is 12288 bytes behind",
            ),
            (
                running()
                    .standby("b", 0x3000000)
                    .primary_gone()
                    .spec(|s| s.paused = true)
                    .spec(switchover(Some("b"))),
                "no healthy primary",
            ),
            (
                running()
                    .standby("b", 0x3000000)
                    .status(|s| s.deposed = Some("x".into()))
                    .spec(switchover(Some("b"))),
                "a failover is in progress",
            ),
        ];
        for (c, want) in cases {
            let d = c.decide();
            let outcome = d
                .next
                .request_outcome
                .clone()
                .map(|o| o.to_string())
                .unwrap_or_default();
            assert!(
                outcome.starts_with("refused: ") && outcome.contains(want),
                "{outcome:?} lacks {want:?}"
            );
            assert!(
                matches!(d.reason, Reason::RequestRefused { id: 7, .. }),
                "{:?}",
                d.reason
            );
            assert_eq!(d.next.members, c.view.status.members);
            assert_eq!(d.next.handled_request, 7);
        }
    }

    #[test]
    fn switchover_works_while_paused() {
        let d = running()
            .standby("b", 0x3000000)
            .spec(|s| s.paused = true)
            .spec(switchover(Some("b")))
            .decide();
        assert!(matches!(d.reason, Reason::RoleChangeStarted { .. }));
    }

    #[test]
    fn manual_failover_refuses_a_healthy_primary_and_a_lagging_target_unless_forced() {
        let d = running()
            .standby("b", 0x3000000)
            .spec(request(RequestKind::Failover, Some("b"), false))
            .decide();
        assert!(d
            .next
            .request_outcome
            .unwrap()
            .to_string()
            .contains("primary a is healthy: use `pgwarden ctl switchover`"));
        // Primary gone and paused: the operator picks a node that is behind.
        let behind = || {
            running()
                .standby("b", 0x3000000)
                .standby("c", 0x2FFE000)
                .spec(|s| {
                    s.paused = true;
                    s.max_lag_bytes = 0x100;
                })
                .primary_gone()
        };
        let d = behind()
            .spec(request(RequestKind::Failover, Some("c"), false))
            .decide();
        assert!(d
            .next
            .request_outcome
            .unwrap()
            .to_string()
            .contains("c is 8192 bytes behind"));
        let d = behind()
            .spec(request(RequestKind::Failover, Some("c"), true))
            .decide();
        assert_eq!(
            d.reason,
            Reason::Promoted {
                uid: "c".into(),
                from: "a".into()
            }
        );
        assert_eq!(
            d.next
                .request_outcome
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("done: c is primary (was a)")
        );
    }

    #[test]
    fn a_target_that_dies_mid_switchover_yields_to_another_or_the_old_primary() {
        let started = running()
            .standby("b", 0x3000000)
            .standby("c", 0x3000000)
            .spec(switchover(Some("c")))
            .decide()
            .next;
        // c is gone, b is fine: b is promoted.
        let mut c = running()
            .standby("b", 0x3000100)
            .tweak("a", a_stopped_at(0x3000000))
            .status(|s| *s = started.clone());
        c.view.primary_lease_holder = None;
        assert_eq!(
            c.decide().reason,
            Reason::Promoted {
                uid: "b".into(),
                from: "a".into()
            }
        );
        // Nobody else: the old primary is reinstated.
        let mut c = running()
            .tweak("a", a_stopped_at(0x3000000))
            .status(|s| *s = started.clone());
        c.view.primary_lease_holder = None;
        let d = c.decide();
        assert_eq!(d.reason, Reason::Reinstated { uid: "a".into() });
        assert_eq!(d.next.primary.as_deref(), Some("a"));
        assert!(d
            .next
            .request_outcome
            .unwrap()
            .to_string()
            .starts_with("failed: c could not take over"));
    }
}

mod sync;

#[test]
fn a_standby_on_an_older_timeline_is_not_promoted() {
    // c already follows a newer timeline (2) than b (1): the cluster is on 2.
    let d = running()
        .standby("b", 0x9000)
        .standby("c", 0x1000)
        .tweak("c", |r| r.timeline = 2)
        .primary_gone()
        .decide();
    assert_eq!(d.next.timeline, 2, "the newest timeline any member reports");
    assert_eq!(primary_of(&d), Some("c"));
}

/// Failover and requests share one eligibility rule: a standby of another
/// system is never promoted, even by a forced request (only automatic
/// failover checked the system identifier before).
#[test]
fn a_request_never_promotes_a_standby_of_another_system() {
    use crate::spec::{RequestKind, RoleRequest};
    let c = running()
        .standby("b", 0x3000000)
        .tweak("b", |r| r.system_id = Some(SID + 1))
        .spec(|s| {
            s.request = Some(RoleRequest {
                id: 7,
                kind: RequestKind::Switchover,
                to: Some("b".into()),
                force: true,
            })
        });
    let d = c.decide();
    assert_eq!(primary_of(&d), Some("a"));
    let outcome = d
        .next
        .request_outcome
        .map(|o| o.to_string())
        .unwrap_or_default();
    assert!(outcome.contains("another system"), "{outcome}");
}

/// Generation arithmetic is checked: a role change at the last generation
/// changes nothing and says why (a wrapped generation would look older than
/// everything already carried out).
#[test]
fn a_role_change_at_the_last_generation_is_refused_not_wrapped() {
    let c = running()
        .standby("b", 0x3000000)
        .status(|s| s.generation = u64::MAX)
        .primary_gone();
    let d = c.decide();
    assert_eq!(
        d.reason,
        Reason::GenerationExhausted {
            generation: u64::MAX
        }
    );
    assert_eq!(d.next, c.view.status);
    assert!(d.reason.to_string().contains("ctl init --force"));
}
