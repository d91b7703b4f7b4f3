//! The checks are not vacuous: with a safety mechanism switched off (or the
//! keeper modelled as it was before a fix), the invariant that depends on it
//! is violated; and each checker fed one bad transition objects to it.

mod common;

use std::collections::BTreeMap;

use pgwarden_core::spec::SyncMode;
use pgwarden_core::{
    Assignment, ClusterView, KeeperReport, Lsn, ObservedRole, Reason, Spec, Status,
};
use pgwarden_sim::events::{Applier, DirKind, Event, StatusWrite};
use pgwarden_sim::invariants::{
    GenerationMonotonic, Invariant, LeaderWrites, NoForeignOverwrite, PromoteRules,
    RewindBeforeRejoin, StrictZeroLoss,
};
use pgwarden_sim::{run, SimConfig, Violation, World};

fn first_violation(seeds: u64, cfg: &SimConfig) -> Option<Violation> {
    (0..seeds).find_map(|seed| run(seed, cfg).violation)
}

#[test]
fn without_fencing_two_nodes_accept_writes() {
    let cfg = SimConfig {
        fencing: false,
        only_invariants: Some(vec!["single_writer"]),
        ..SimConfig::default()
    };
    let v = first_violation(200, &cfg)
        .expect("with fencing off, some seed must end up with two writable nodes");
    assert_eq!(v.invariant, "single_writer", "{v}");
    println!("{v}");
    // And the same seed is clean with fencing on.
    let fenced = run(
        v.seed,
        &SimConfig {
            fencing: true,
            ..cfg
        },
    );
    assert_eq!(fenced.violation, None);
}

#[test]
fn without_fencing_the_lease_lapses_under_a_writable_primary() {
    let cfg = SimConfig {
        fencing: false,
        only_invariants: Some(vec!["writable_holds_lease"]),
        ..SimConfig::default()
    };
    let v = first_violation(50, &cfg).expect("no seed lost its lease while writable");
    assert_eq!(v.invariant, "writable_holds_lease", "{v}");
}

/// The keeper before commit 9da7bee: it held the lease until `valid_until`
/// and its fencer disarmed after firing, so the fencing-window story ends
/// with two writers. The same story with the product as built is a
/// regression test (`regressions.rs`).
#[test]
fn the_old_fencing_window_lets_two_nodes_accept_writes() {
    let old = |only| SimConfig {
        old_fencing_window: true,
        only_invariants: Some(vec![only]),
        ..SimConfig::scripted(3)
    };
    let v = common::restart_in_the_fencing_window(old("single_writer"))
        .expect_err("the old keeper must end up with two writers");
    assert_eq!(v.invariant, "single_writer", "{v}");
    // The sharper check objects earlier, as soon as the lease lapses under
    // the restarted postgres.
    let v = common::restart_in_the_fencing_window(old("writable_holds_lease"))
        .expect_err("the old keeper's lease must lapse under a writable postgres");
    assert_eq!(v.invariant, "writable_holds_lease", "{v}");
    println!("{v}");
}

/// The same, found by the random faults (the sweep found it within 200
/// seeds).
#[test]
fn the_old_fencing_window_is_found_across_seeds() {
    let cfg = SimConfig {
        old_fencing_window: true,
        only_invariants: Some(vec!["single_writer", "writable_holds_lease"]),
        ..SimConfig::default()
    };
    let v = first_violation(200, &cfg).expect("no seed caught the old fencing window");
    println!("{v}");
    // And the same seed is clean with the product's keeper.
    let fixed = run(
        v.seed,
        &SimConfig {
            old_fencing_window: false,
            ..cfg
        },
    );
    assert_eq!(fixed.violation, None);
}

/// The keeper before commit e40e966: standbys made no slots, so a new
/// primary made its standbys' slots only after promoting. The sweep finds
/// it; the same seed is clean with the product's keeper, whose standbys
/// make their peers' slots (the simulation runs that path through
/// `pgwarden_core::keeper`).
#[test]
fn the_old_standby_slots_are_found_across_seeds() {
    let cfg = SimConfig {
        old_standby_slots: true,
        only_invariants: Some(vec!["peer_slots_ahead"]),
        ..SimConfig::default()
    };
    let v = first_violation(200, &cfg).expect("no seed caught a promotion without peer slots");
    assert_eq!(v.invariant, "peer_slots_ahead", "{v}");
    println!("{v}");
    let fixed = run(
        v.seed,
        &SimConfig {
            old_standby_slots: false,
            ..cfg
        },
    );
    assert_eq!(fixed.violation, None);
}

#[test]
fn without_the_election_guard_a_deposed_leader_writes() {
    let cfg = SimConfig {
        sentinel_guard: false,
        only_invariants: Some(vec!["leader_writes"]),
        ..SimConfig::default()
    };
    let v = first_violation(300, &cfg)
        .expect("without the guard, some deposed sentinel's write must land");
    assert_eq!(v.invariant, "leader_writes", "{v}");
    println!("{v}");
}

// Checkers fed one bad transition each: they must object.

fn world() -> World {
    World::new(0, SimConfig::scripted(3))
}

fn standby(uid: &str, lsn: u64) -> KeeperReport {
    let mut r = KeeperReport::new(uid, uid, 5432, "");
    r.role = ObservedRole::Standby;
    r.healthy = true;
    r.system_id = Some(7);
    r.timeline = 1;
    r.receive_lsn = Some(Lsn(lsn));
    r.replay_lsn = Some(Lsn(lsn));
    r
}

/// a was primary of system 7; b (at `b_lsn`) and c (at `c_lsn`) its
/// standbys; the sentinel wrote `after`.
fn promotion(b_lsn: u64, c_lsn: u64, new: &str) -> StatusWrite {
    let follow = |p: &str| Assignment::Standby {
        follow: p.into(),
        host: p.into(),
        port: 5432,
    };
    let mut before = Status {
        generation: 3,
        system_id: Some(7),
        timeline: 1,
        primary: Some("a".into()),
        ..Status::default()
    };
    before.members.insert("a".into(), Assignment::Primary);
    before.members.insert("b".into(), follow("a"));
    before.members.insert("c".into(), follow("a"));
    let mut after = before.clone();
    after.generation = 5;
    after.primary = Some(new.into());
    let view = ClusterView {
        now_ms: 0,
        spec: Spec::default(),
        status: before.clone(),
        keepers: [
            ("b".into(), standby("b", b_lsn)),
            ("c".into(), standby("c", c_lsn)),
        ]
        .into(),
        primary_lease_holder: None,
        proxies: BTreeMap::new(),
    };
    StatusWrite {
        by: "s1".into(),
        election_revision: 9,
        leader_key: Some(("s1".into(), 9)),
        view,
        before,
        after,
        reason: Reason::Unchanged,
    }
}

fn objects(c: &mut dyn Invariant, w: &World, e: Event) -> String {
    c.check(w, &[e])
        .expect_err("the checker let a bad transition pass")
}

#[test]
fn promote_rules_objects_to_a_less_advanced_or_held_up_promotion() {
    let w = world();
    let ok = promotion(0x2000, 0x1000, "b");
    assert_eq!(
        PromoteRules.check(&w, &[Event::StatusWritten(Box::new(ok))]),
        Ok(())
    );
    let behind = promotion(0x1000, 0x2000, "b");
    let msg = objects(
        &mut PromoteRules,
        &w,
        Event::StatusWritten(Box::new(behind)),
    );
    assert!(msg.contains("further ahead"), "{msg}");
    let mut leased = promotion(0x2000, 0x1000, "b");
    leased.view.primary_lease_holder = Some("a".into());
    let msg = objects(
        &mut PromoteRules,
        &w,
        Event::StatusWritten(Box::new(leased)),
    );
    assert!(msg.contains("still held the primary lease"), "{msg}");
    let forked = Event::Promoted {
        uid: "b".into(),
        nofailover: false,
        wal: vec![1, 2, 9],
        last_writer: Some(("a".into(), vec![1, 2, 3])),
        slots: Default::default(),
    };
    assert!(objects(&mut PromoteRules, &w, forked).contains("fork"));
}

/// Strict mode, `ANY 1` over `sync_standbys` = `set`: a commit may be on
/// one member only.
fn strict(mut w: StatusWrite, set: &[&str]) -> StatusWrite {
    w.view.spec.sync_mode = SyncMode::Strict;
    w.view.spec.min_sync_standbys = 1;
    w.before.sync_standbys = set.iter().map(|u| u.to_string()).collect();
    w.view.status = w.before.clone();
    w
}

#[test]
fn promote_rules_objects_to_a_strict_promotion_that_may_lose_commits() {
    let w = world();
    let check =
        |write: StatusWrite| PromoteRules.check(&w, &[Event::StatusWritten(Box::new(write))]);
    // Both members report and b is the furthest: fine.
    assert_eq!(
        check(strict(promotion(0x2000, 0x1000, "b"), &["b", "c"])),
        Ok(())
    );
    // Not a member.
    let msg = check(strict(promotion(0x2000, 0x1000, "b"), &["c"])).unwrap_err();
    assert!(msg.contains("sync policy"), "{msg}");
    // One of two members reporting cannot show what a quorum of one
    // confirmed: the silent one may hold it alone.
    let mut silent = strict(promotion(0x2000, 0x1000, "b"), &["b", "c"]);
    silent.view.keepers.remove("c");
    let msg = check(silent).unwrap_err();
    assert!(msg.contains("sync policy"), "{msg}");
    // A member behind another member's position.
    let msg = check(strict(promotion(0x1000, 0x2000, "b"), &["b", "c"])).unwrap_err();
    assert!(msg.contains("sync policy"), "{msg}");
    // An operator's target: the same unless forced.
    let mut requested = strict(promotion(0x1000, 0x2000, "b"), &["b", "c"]);
    requested.before.target = Some("b".into());
    let msg = check(requested.clone()).unwrap_err();
    assert!(
        msg.contains("not promotable under the sync policy"),
        "{msg}"
    );
    requested.before.target_forced = true;
    assert_eq!(check(requested), Ok(()));
}

#[test]
fn leader_writes_objects_to_a_deposed_sentinel() {
    let mut stale = promotion(0x2000, 0x1000, "b");
    stale.leader_key = Some(("s2".into(), 40));
    let msg = objects(
        &mut LeaderWrites,
        &world(),
        Event::StatusWritten(Box::new(stale)),
    );
    assert!(msg.contains("s2's"), "{msg}");
}

#[test]
fn generation_monotonic_objects_to_silent_role_changes_and_going_back() {
    let w = world();
    let mut same = promotion(0x2000, 0x1000, "b");
    same.after.generation = same.before.generation;
    let msg = objects(
        &mut GenerationMonotonic::default(),
        &w,
        Event::StatusWritten(Box::new(same)),
    );
    assert!(msg.contains("without a new generation"), "{msg}");
    let mut c = GenerationMonotonic::default();
    let applied = |generation| Event::Applied {
        by: Applier::Keeper,
        id: "n1".into(),
        incarnation: 1,
        generation,
    };
    // The scripted world has written no status yet: generation 0 only.
    assert!(objects(&mut c, &w, applied(1)).contains("newer than the store's"));
}

#[test]
fn rewind_and_foreign_data_checkers_object() {
    let w = world();
    let diverged = Event::Streamed {
        standby: "n1".into(),
        upstream: "n2".into(),
        diverged: true,
    };
    assert!(objects(&mut RewindBeforeRejoin, &w, diverged).contains("without pg_rewind"));
    for before in [DirKind::Foreign, DirKind::Data(42)] {
        let replaced = Event::DataReplaced {
            uid: "n4".into(),
            before,
            after: Some(7),
            cluster_system_id: Some(7),
            by: "pg_basebackup",
        };
        objects(&mut NoForeignOverwrite, &w, replaced);
    }
}

#[test]
fn strict_zero_loss_objects_only_in_strict_mode() {
    let lost = || Event::WritesLost {
        uid: "n2".into(),
        ids: vec![5],
    };
    assert_eq!(StrictZeroLoss.check(&world(), &[lost()]), Ok(()));
    let strict = World::new(
        0,
        SimConfig {
            spec: Spec {
                sync_mode: SyncMode::Strict,
                ..Spec::default()
            },
            ..SimConfig::scripted(3)
        },
    );
    objects(&mut StrictZeroLoss, &strict, lost());
}
