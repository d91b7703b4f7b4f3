#![allow(clippy::unwrap_used)]

use pgwarden_core::Reason;

use super::*;

fn s(v: &str) -> String {
    v.to_string()
}

/// Every variant, with free text chosen to look like other reasons.
fn samples() -> Vec<Reason> {
    vec![
        Reason::Unchanged,
        Reason::WaitingForKeepers,
        Reason::InitialPrimary { uid: s("k1") },
        Reason::AdoptedExistingData {
            uid: s("k-2"),
            system_id: 7,
        },
        Reason::RecordedSystemId { system_id: 7 },
        Reason::AssignedStandbys {
            uids: vec![s("k2"), s("k3")],
        },
        Reason::AssignedStandbys {
            uids: vec![s("primary")],
        },
        Reason::HealthChanged,
        Reason::Deposed {
            uid: s("k1"),
            why: s("k2 promoted to primary (was k1)"),
        },
        Reason::Deposed {
            uid: s("k1"),
            why: s("its primary lease is gone"),
        },
        Reason::Promoted {
            uid: s("k2"),
            from: s("k1"),
        },
        Reason::Promoted {
            uid: s("primary"),
            from: s("request"),
        },
        Reason::WaitingForLease {
            holder: s("proxies"),
        },
        Reason::WaitingForProxies {
            ids: vec![s("p1"), s("p2")],
        },
        Reason::NoCandidate { uid: s("k1") },
        Reason::RequestRefused {
            id: 3,
            why: s("switchover from k1 to k2 started"),
        },
        Reason::RoleChangeStarted {
            kind: s("switchover"),
            from: Some(s("k1")),
            to: s("k2"),
        },
        Reason::RoleChangeStarted {
            kind: s("failover"),
            from: None,
            to: s("k2"),
        },
        Reason::WaitingForCatchUp { uid: s("k2") },
        Reason::WaitingForPositions,
        Reason::Reinstated { uid: s("k1") },
        Reason::SyncSetChanged {
            names: vec![s("k2")],
            promotable: vec![],
        },
    ]
}

#[test]
fn every_reason_maps_back_to_its_variant() {
    for r in samples() {
        assert_eq!(reason_label(&r.to_string()), r.label(), "{r}");
        assert!(Reason::LABELS.contains(&r.label()), "{r}");
    }
    // Every kind has a sample, so every text is tried.
    for label in Reason::LABELS {
        assert!(
            samples().iter().any(|r| r.label() == label),
            "no sample of {label}"
        );
    }
    assert_eq!(reason_label("something a newer sentinel wrote"), "other");
    assert_eq!(reason_label(""), "other");
}

#[test]
fn every_recorded_reason_is_a_known_label() {
    let labels: Vec<&str> = samples().iter().map(Reason::label).collect();
    for r in RECORDED_REASONS {
        assert!(labels.contains(&r), "{r}");
    }
}

fn entry(generation: u64, at_ms: u64, reason: Reason) -> HistoryEntry {
    HistoryEntry {
        at_ms,
        generation,
        old_primary: None,
        new_primary: None,
        reason: reason.to_string(),
        kind: reason.label().to_string(),
    }
}

#[test]
fn the_recorded_kind_counts_and_old_history_falls_back_to_the_text() {
    let mut e = deposed(1, 0);
    assert_eq!(label_of(&e), "deposed");
    // Reworded text, kind recorded: the kind counts.
    e.reason = "the primary went away".into();
    assert_eq!(label_of(&e), "deposed");
    // An older sentinel's entry: no kind, the text says.
    let mut old = promoted(2, 0, "k2", "k1");
    old.kind.clear();
    assert_eq!(label_of(&old), "promoted");
    // A kind this keeper does not know.
    e.kind = "something_newer".into();
    assert_eq!(label_of(&e), "other");
}

fn status(history: &[HistoryEntry]) -> Status {
    Status {
        generation: history.last().map_or(0, |h| h.generation),
        history: history.to_vec(),
        ..Status::default()
    }
}

fn promoted(generation: u64, at_ms: u64, uid: &str, from: &str) -> HistoryEntry {
    HistoryEntry {
        old_primary: None,
        new_primary: Some(s(uid)),
        ..entry(
            generation,
            at_ms,
            Reason::Promoted {
                uid: s(uid),
                from: s(from),
            },
        )
    }
}

fn switchover(generation: u64, at_ms: u64, to: &str) -> HistoryEntry {
    entry(
        generation,
        at_ms,
        Reason::RoleChangeStarted {
            kind: s("switchover"),
            from: Some(s("k1")),
            to: s(to),
        },
    )
}

fn deposed(generation: u64, at_ms: u64) -> HistoryEntry {
    entry(
        generation,
        at_ms,
        Reason::Deposed {
            uid: s("k2"),
            why: s("its primary lease is gone"),
        },
    )
}

#[test]
fn counts_start_at_the_first_status_seen_and_take_each_entry_once() {
    let mut history = vec![
        entry(1, 1_000, Reason::InitialPrimary { uid: s("k1") }),
        entry(
            2,
            2_000,
            Reason::AssignedStandbys {
                uids: vec![s("k2")],
            },
        ),
    ];
    let mut c = Counts::default();
    c.observe(&status(&history));
    assert!(c.by_reason.is_empty(), "what came before is not counted");

    history.push(switchover(3, 10_000, "k2"));
    c.observe(&status(&history));
    c.observe(&status(&history));
    history.push(promoted(5, 10_400, "k2", "k1"));
    c.observe(&status(&history));
    // An older status read late changes nothing.
    c.observe(&status(&history[..3]));
    history.push(deposed(6, 20_000));
    history.push(promoted(7, 23_000, "k3", "k2"));
    // A failover where deposing and promoting were one decision.
    history.push(promoted(8, 30_000, "k1", "k3"));
    c.observe(&status(&history));

    assert_eq!(
        c.by_reason,
        BTreeMap::from([("deposed", 1), ("promoted", 3), ("role_change_started", 1)])
    );
    assert_eq!((c.switchovers, c.failovers), (1, 2));
}

#[test]
fn counting_from_an_empty_cluster_includes_the_first_primary() {
    let mut c = Counts::default();
    c.observe(&Status::default());
    c.observe(&status(&[entry(
        1,
        1_000,
        Reason::InitialPrimary { uid: s("k1") },
    )]));
    assert_eq!(c.by_reason, BTreeMap::from([("initial_primary", 1)]));
    assert_eq!((c.switchovers, c.failovers), (0, 0));
}

#[test]
fn durations_run_from_the_deposal_to_the_promotion() {
    let history = [
        entry(1, 1_000, Reason::InitialPrimary { uid: s("k1") }),
        switchover(2, 10_000, "k2"),
        promoted(3, 10_400, "k2", "k1"),
        deposed(4, 20_000),
        entry(
            5,
            21_000,
            Reason::AssignedStandbys {
                uids: vec![s("k1")],
            },
        ),
        promoted(6, 23_500, "k3", "k2"),
        switchover(7, 40_000, "k1"),
        promoted(8, 40_250, "k1", "k3"),
    ];
    assert_eq!(
        last_durations(&status(&history)),
        vec![
            (RoleChange::Switchover, Duration::from_millis(250)),
            (RoleChange::Failover, Duration::from_millis(3_500)),
        ]
    );
    // The newest one, once the new primary holds the lease, ends there.
    let mut confirmed = status(&history);
    confirmed.primary = Some(s("k1"));
    confirmed.primary_confirmed = true;
    confirmed.primary_confirmed_ms = 40_600;
    assert_eq!(
        last_durations(&confirmed),
        vec![
            (RoleChange::Switchover, Duration::from_millis(600)),
            (RoleChange::Failover, Duration::from_millis(3_500)),
        ]
    );
    // A confirmation of somebody else (or from before) does not count.
    confirmed.primary = Some(s("k3"));
    assert_eq!(
        last_durations(&confirmed)[0],
        (RoleChange::Switchover, Duration::from_millis(250))
    );
    // One decision that deposed and promoted: no time in between.
    assert_eq!(
        last_durations(&status(&[promoted(9, 50_000, "k2", "k1")])),
        vec![(RoleChange::Failover, Duration::ZERO)]
    );
    // A reinstated primary is not a failover.
    assert_eq!(
        last_durations(&status(&[
            deposed(4, 20_000),
            entry(5, 25_000, Reason::Reinstated { uid: s("k2") })
        ])),
        vec![]
    );
}
