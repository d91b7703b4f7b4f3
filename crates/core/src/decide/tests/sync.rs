//! Synchronous replication: the sync set moves in an order that keeps the
//! zero-loss promise, and only its members are promoted.

use super::*;
use crate::decide::sync::{render_sync_names, writes_blocked};
use crate::spec::SyncMode;

fn strict() -> Cluster {
    running()
        .standby("b", 0x3000000)
        .standby("c", 0x2FFF000)
        .tweak("b", |r| r.streaming = true)
        .tweak("c", |r| r.streaming = true)
        .spec(|s| s.sync_mode = SyncMode::Strict)
}

/// The primary reports `names` applied and `confirmed` synchronous.
fn primary_applied(c: Cluster, names: &[&str], confirmed: &[&str]) -> Cluster {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let rendered = render_sync_names(&names, c.view.spec.min_sync_standbys, c.view.spec.sync_mode);
    let confirmed: Vec<String> = confirmed.iter().map(|s| s.to_string()).collect();
    let streaming: Vec<String> = c
        .view
        .keepers
        .values()
        .filter(|r| r.healthy && r.role == ObservedRole::Standby)
        .map(|r| r.uid.clone())
        .collect();
    c.tweak("a", move |r| {
        r.sync_names_applied = Some(rendered);
        r.sync_confirmed = confirmed;
        r.replicas_streaming = streaming;
    })
}

fn lists(d: &Decision) -> (Vec<&str>, Vec<&str>) {
    (
        d.next.sync_names.iter().map(String::as_str).collect(),
        d.next.sync_standbys.iter().map(String::as_str).collect(),
    )
}

#[test]
fn names_render_as_a_quorum() {
    let n = vec!["b".to_string(), "c".to_string()];
    assert_eq!(
        render_sync_names(&n, 1, SyncMode::Strict),
        "ANY 1 (\"b\", \"c\")"
    );
    assert_eq!(
        render_sync_names(&n[..1], 2, SyncMode::Strict),
        "ANY 2 (\"b\")",
        "strict keeps the quorum: commits wait"
    );
    assert_eq!(render_sync_names(&n[..1], 2, SyncMode::On), "ANY 1 (\"b\")");
    assert_eq!(render_sync_names(&[], 1, SyncMode::Strict), "");
    assert_eq!(render_sync_names(&n, 1, SyncMode::Off), "");
}

#[test]
fn a_standby_becomes_promotable_only_after_the_primary_applied_and_confirmed_it() {
    // Round 1: the most advanced healthy standby is listed, nobody promotable.
    let d = strict().decide();
    assert_eq!(lists(&d), (vec!["b"], vec![]));
    assert!(matches!(d.reason, Reason::SyncSetChanged { .. }));
    // Applied but not yet synchronous: still not promotable.
    let d2 = primary_applied(strict().status(|s| *s = d.next.clone()), &["b"], &[]).decide();
    assert_eq!(lists(&d2), (vec!["b"], vec![]));
    // Synchronous: promotable.
    let d3 = primary_applied(strict().status(|s| *s = d.next.clone()), &["b"], &["b"]).decide();
    assert_eq!(lists(&d3), (vec!["b"], vec!["b"]));
    // Stable from then on.
    let d4 = primary_applied(strict().status(|s| *s = d3.next.clone()), &["b"], &["b"]).decide();
    assert_eq!(d4.reason, Reason::Unchanged);
}

#[test]
fn only_a_synchronous_standby_is_promoted_even_if_another_is_ahead() {
    let c = strict()
        .tweak("c", |r| r.receive_lsn = Some(Lsn(0x3100000)))
        .status(|s| {
            s.sync_names = vec!["b".into()];
            s.sync_standbys = vec!["b".into()];
        })
        .primary_gone();
    assert_eq!(primary_of(&c.decide()), Some("b"));
}

#[test]
fn strict_mode_without_a_synchronous_standby_promotes_nobody() {
    let d = strict()
        .status(|s| s.sync_names = vec!["b".into()])
        .primary_gone()
        .decide();
    assert_eq!(d.reason, Reason::NoCandidate { uid: "a".into() });
    // A manual failover to a non-synchronous node is refused unless forced.
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
            .status(|s| s.sync_standbys = vec!["b".into()])
            .primary_gone()
            .spec(|s| s.paused = true)
    };
    let d = c().spec(req(false)).decide();
    assert!(d
        .next
        .request_outcome
        .unwrap()
        .contains("c is not a synchronous standby"));
    assert_eq!(primary_of(&c().spec(req(true)).decide()), Some("c"));
}

#[test]
fn a_failed_sync_standby_is_replaced_adding_before_removing() {
    // b is the sync standby and dies; c is healthy.
    let settled = |s: &mut Status| {
        s.sync_names = vec!["b".into()];
        s.sync_standbys = vec!["b".into()];
    };
    let b_dead = || strict().status(settled).tweak("b", |r| r.healthy = false);
    // Step 1: c is added to the names; b stays listed and promotable.
    let d1 = primary_applied(b_dead(), &["b"], &[]).decide();
    assert_eq!(lists(&d1), (vec!["b", "c"], vec!["b"]));
    // Step 2: applied, c synchronous: c promotable, b dropped from the names.
    let d2 = primary_applied(
        b_dead().status(|s| *s = d1.next.clone()),
        &["b", "c"],
        &["c"],
    )
    .decide();
    assert_eq!(
        lists(&d2),
        (vec!["c"], vec!["b", "c"]),
        "b stays promotable until names without it are applied"
    );
    // Step 3: names [c] applied: b leaves the promotable set.
    let d3 = primary_applied(b_dead().status(|s| *s = d2.next.clone()), &["c"], &["c"]).decide();
    assert_eq!(lists(&d3), (vec!["c"], vec!["c"]));
}

#[test]
fn strict_mode_with_no_standby_left_keeps_the_names_and_blocks_writes() {
    let settled = |s: &mut Status| {
        s.sync_names = vec!["b".into()];
        s.sync_standbys = vec!["b".into()];
    };
    let c = primary_applied(
        strict()
            .status(settled)
            .tweak("b", |r| r.healthy = false)
            .tweak("c", |r| r.healthy = false),
        &["b"],
        &[],
    );
    let d = c.decide();
    assert_eq!(lists(&d), (vec!["b"], vec!["b"]));
    assert!(writes_blocked(&c.view.spec, &d.next, &c.view.keepers));
    // With b synchronous again, writes flow.
    let ok = primary_applied(strict().status(settled), &["b"], &["b"]);
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
            .status(|s| {
                s.sync_names = vec!["b".into()];
                s.sync_standbys = vec!["b".into()];
            })
            .tweak("b", |r| r.healthy = false)
            .tweak("c", |r| r.healthy = false)
    };
    let d = primary_applied(on(), &["b"], &[]).decide();
    assert_eq!(lists(&d), (vec![], vec!["b"]));
    let d2 = primary_applied(on().status(|s| *s = d.next.clone()), &[], &[]).decide();
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
        .status(|s| {
            s.sync_names = vec!["b".into()];
            s.sync_standbys = vec!["b".into()];
        })
        .decide();
    assert_eq!(lists(&d), (vec![], vec![]));
}

#[test]
fn after_a_strict_promotion_the_other_members_are_listed_and_nobody_is_promotable() {
    let d = strict()
        .status(|s| {
            s.sync_names = vec!["b".into()];
            s.sync_standbys = vec!["b".into()];
        })
        .primary_gone()
        .decide();
    assert_eq!(primary_of(&d), Some("b"));
    assert_eq!(lists(&d), (vec!["a", "c"], vec![]));
}

#[test]
fn a_standby_the_primary_no_longer_sees_is_replaced_before_its_report_expires() {
    let settled = |s: &mut Status| {
        s.sync_names = vec!["b".into()];
        s.sync_standbys = vec!["b".into()];
    };
    // b's keeper report still says healthy, but the primary no longer sees
    // it streaming (its postgres died with its keeper).
    let c = primary_applied(strict().status(settled), &["b"], &[])
        .tweak("a", |r| r.replicas_streaming = vec!["c".into()]);
    let d = c.decide();
    assert_eq!(lists(&d), (vec!["b", "c"], vec!["b"]));
}
