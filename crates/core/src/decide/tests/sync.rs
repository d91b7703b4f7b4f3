//! Synchronous replication: the lists move in an order that keeps the
//! zero-loss promise, and only a standby that holds every acknowledged
//! commit is promoted.

use super::*;
use crate::decide::sync::{render_sync_names, writes_blocked, NO_SYNC_STANDBY};
use crate::spec::SyncMode;

fn strict() -> Cluster {
    running()
        .standby("b", 0x3000000)
        .standby("c", 0x2FFF000)
        .tweak("b", |r| r.streaming = true)
        .tweak("c", |r| r.streaming = true)
        .tweak("b", fresh)
        .tweak("c", fresh)
        .spec(|s| s.sync_mode = SyncMode::Strict)
}

/// The keeper has carried out every generation these tests reach, so its
/// positions were read after any deposition.
fn fresh(r: &mut KeeperReport) {
    r.applied_generation = 99;
}

/// The primary reports `names` in effect, `candidates` treated as synchronous
/// by its WAL senders, and `caught_up` flushed past its position.
fn primary_applied(c: Cluster, names: &[&str], candidates: &[&str], caught_up: &[&str]) -> Cluster {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let rendered = render_sync_names(&names, c.view.spec.min_sync_standbys, c.view.spec.sync_mode);
    let candidates: Vec<String> = candidates.iter().map(|s| s.to_string()).collect();
    let streaming: Vec<String> = c
        .view
        .keepers
        .values()
        .filter(|r| r.healthy && r.role == ObservedRole::Standby)
        .map(|r| r.uid.clone())
        .collect();
    let flush: BTreeMap<String, Lsn> = caught_up
        .iter()
        .map(|u| (u.to_string(), Lsn(0x3000000)))
        .collect();
    c.tweak("a", move |r| {
        r.sync_names_applied = Some(rendered);
        r.sync_confirmed = candidates;
        r.replicas_streaming = streaming;
        r.sync_lsn = Some(Lsn(0x3000000));
        r.replica_flush = flush;
    })
}

fn lists(d: &Decision) -> (Vec<&str>, Vec<&str>) {
    (
        d.next.sync_names.iter().map(String::as_str).collect(),
        d.next.sync_standbys.iter().map(String::as_str).collect(),
    )
}

fn settled(s: &mut Status) {
    s.sync_names = vec!["b".into()];
    s.sync_standbys = vec!["b".into()];
}

#[test]
fn names_render_as_a_quorum_and_strict_never_renders_empty() {
    let n = vec!["b".to_string(), "c".to_string()];
    assert_eq!(
        render_sync_names(&n, 1, SyncMode::Strict),
        "ANY 1 (\"b\", \"c\")"
    );
    assert_eq!(
        render_sync_names(&n[..1], 2, SyncMode::Strict),
        "ANY 2 (\"b\")",
        "strict keeps the quorum"
    );
    assert_eq!(render_sync_names(&n[..1], 2, SyncMode::On), "ANY 1 (\"b\")");
    assert_eq!(
        render_sync_names(&[], 1, SyncMode::Strict),
        format!("ANY 1 (\"{NO_SYNC_STANDBY}\")")
    );
    assert_eq!(render_sync_names(&[], 1, SyncMode::On), "");
    assert_eq!(render_sync_names(&n, 1, SyncMode::Off), "");
}

#[test]
fn a_listed_standby_may_hold_commits_at_once() {
    let d = strict().decide();
    assert_eq!(lists(&d), (vec!["b"], vec!["b"]));
    assert!(matches!(d.reason, Reason::SyncSetChanged { .. }));
    let d2 = primary_applied(
        strict().status(|s| *s = d.next.clone()),
        &["b"],
        &["b"],
        &["b"],
    )
    .decide();
    assert_eq!(d2.reason, Reason::Unchanged);
}

#[test]
fn only_a_synchronous_standby_is_promoted_even_if_another_is_ahead() {
    let c = strict()
        .tweak("c", |r| r.receive_lsn = Some(Lsn(0x3100000)))
        .status(settled)
        .primary_gone();
    assert_eq!(primary_of(&c.decide()), Some("b"));
}

#[test]
fn strict_mode_without_a_synchronous_standby_promotes_nobody() {
    let d = strict().primary_gone().decide();
    assert_eq!(d.reason, Reason::NoCandidate { uid: "a".into() });
    let req = |force| {
        move |s: &mut Spec| {
            s.request = Some(crate::spec::RoleRequest {
                id: 1,
                kind: crate::spec::RequestKind::Failover,
                to: Some("c".into()),
                force,
            })
        }
    };
    let c = || {
        strict()
            .status(settled)
            .primary_gone()
            .spec(|s| s.paused = true)
    };
    let d = c().spec(req(false)).decide();
    assert!(d
        .next
        .request_outcome
        .unwrap()
        .to_string()
        .contains("c is not a synchronous standby"));
    assert_eq!(
        primary_of(&c().spec(req(true)).decide()),
        Some("c"),
        "--force accepts the loss"
    );
}

#[test]
fn with_a_quorum_of_one_every_member_that_may_hold_commits_must_be_heard() {
    // ANY 1 (b, c): a commit may be on c alone. c is gone: b cannot be promoted.
    let both = |s: &mut Status| {
        s.sync_names = vec!["b".into(), "c".into()];
        s.sync_standbys = vec!["b".into(), "c".into()];
    };
    let c_gone = || {
        let mut c = strict().status(both).primary_gone();
        c.view.keepers.remove("c");
        c
    };
    assert_eq!(
        c_gone().decide().reason,
        Reason::NoCandidate { uid: "a".into() }
    );
    // ANY 2 (b, c): every commit is on both: b alone suffices.
    let d = c_gone()
        .spec(|s| s.min_sync_standbys = 2)
        .spec(|s| s.max_sync_standbys = 2)
        .decide();
    assert_eq!(primary_of(&d), Some("b"));
    // Both heard, but the more advanced one is not eligible: the other may lack commits.
    let d = strict()
        .status(both)
        .tweak("b", |r| r.healthy = false)
        .primary_gone()
        .decide();
    assert_eq!(d.reason, Reason::NoCandidate { uid: "a".into() });
}

#[test]
fn a_failed_sync_standby_is_replaced_adding_before_removing() {
    let b_dead = || strict().status(settled).tweak("b", |r| r.healthy = false);
    // Step 1: c is listed and may hold commits from now on; b stays.
    let d1 = primary_applied(b_dead(), &["b"], &["b"], &[]).decide();
    assert_eq!(lists(&d1), (vec!["b", "c"], vec!["b", "c"]));
    // c not caught up yet: b stays listed.
    let d2 = primary_applied(
        b_dead().status(|s| *s = d1.next.clone()),
        &["b", "c"],
        &["c"],
        &[],
    )
    .decide();
    assert_eq!(lists(&d2), (vec!["b", "c"], vec!["b", "c"]));
    // c caught up: b leaves the list, but not the set until the list without it is in effect.
    let d3 = primary_applied(
        b_dead().status(|s| *s = d1.next.clone()),
        &["b", "c"],
        &["c"],
        &["c"],
    )
    .decide();
    assert_eq!(lists(&d3), (vec!["c"], vec!["b", "c"]));
    // List [c] in effect, b no longer a candidate, c caught up: b leaves the set.
    let d4 = primary_applied(
        b_dead().status(|s| *s = d3.next.clone()),
        &["c"],
        &["c"],
        &["c"],
    )
    .decide();
    assert_eq!(lists(&d4), (vec!["c"], vec!["c"]));
    // The same, but the WAL senders still treat b as a candidate: b stays.
    let d5 = primary_applied(
        b_dead().status(|s| *s = d3.next.clone()),
        &["c"],
        &["b", "c"],
        &["c"],
    )
    .decide();
    assert_eq!(lists(&d5), (vec!["c"], vec!["b", "c"]));
}

#[test]
fn strict_mode_with_no_standby_left_keeps_the_names_and_blocks_writes() {
    let c = primary_applied(
        strict()
            .status(settled)
            .tweak("b", |r| r.healthy = false)
            .tweak("c", |r| r.healthy = false),
        &["b"],
        &[],
        &[],
    );
    let d = c.decide();
    assert_eq!(lists(&d), (vec!["b"], vec!["b"]));
    assert!(writes_blocked(&c.view.spec, &d.next, &c.view.keepers));
    let ok = primary_applied(strict().status(settled), &["b"], &["b"], &["b"]);
    assert!(!writes_blocked(
        &ok.view.spec,
        &ok.view.status,
        &ok.view.keepers
    ));
}

#[test]
fn on_mode_falls_back_to_async_when_no_standby_is_left() {
    let on = || {
        strict()
            .spec(|s| s.sync_mode = SyncMode::On)
            .status(settled)
            .tweak("b", |r| r.healthy = false)
            .tweak("c", |r| r.healthy = false)
    };
    let d = primary_applied(on(), &["b"], &[], &[]).decide();
    assert_eq!(lists(&d), (vec![], vec!["b"]));
    let d2 = primary_applied(on().status(|s| *s = d.next.clone()), &[], &[], &[]).decide();
    assert_eq!(lists(&d2), (vec![], vec![]));
    assert!(!writes_blocked(
        &on().view.spec,
        &d2.next,
        &on().view.keepers
    ));
}

#[test]
fn turning_sync_off_clears_both_lists() {
    let d = strict()
        .spec(|s| s.sync_mode = SyncMode::Off)
        .status(settled)
        .decide();
    assert_eq!(lists(&d), (vec![], vec![]));
}

#[test]
fn after_a_strict_promotion_the_other_members_are_listed() {
    let d = strict().status(settled).primary_gone().decide();
    assert_eq!(primary_of(&d), Some("b"));
    assert_eq!(lists(&d), (vec!["a", "c"], vec!["a", "c"]));
}

#[test]
fn a_standby_the_primary_no_longer_sees_is_replaced_before_its_report_expires() {
    let c = primary_applied(strict().status(settled), &["b"], &["b"], &[])
        .tweak("a", |r| r.replicas_streaming = vec!["c".into()]);
    assert_eq!(lists(&c.decide()), (vec!["b", "c"], vec!["b", "c"]));
}

#[test]
fn strict_promotion_waits_for_positions_read_after_the_deposition() {
    // b's report predates the deposition (it has not applied it): its
    // position may be stale, so nobody is promoted yet.
    let stale = || {
        strict()
            .status(settled)
            .tweak("b", |r| r.applied_generation = 2)
            .primary_gone()
    };
    let d = stale().decide();
    assert!(matches!(d.reason, Reason::Deposed { .. }), "{:?}", d.reason);
    let d2 = stale().status(|s| *s = d.next.clone()).decide();
    assert_eq!(d2.reason, Reason::WaitingForPositions);
    // Once b carried out the deposing generation, it is promoted.
    let d3 = stale()
        .status(|s| *s = d.next.clone())
        .tweak("b", |r| r.applied_generation = d.next.generation)
        .decide();
    assert_eq!(primary_of(&d3), Some("b"));
}
