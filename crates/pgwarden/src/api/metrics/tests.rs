#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pgwarden_core::status::HistoryEntry;
use pgwarden_core::{Assignment, KeeperReport, Lsn, ObservedRole, Status};
use tokio::time::Instant;

use super::*;
use crate::api::decisions::Counts;
use crate::api::health::PrimaryPosition;
use crate::local_state::LocalState;

fn standby_state() -> LocalState {
    let mut r = KeeperReport::new("k2", "127.0.0.1", 5433, "http://127.0.0.1:8009");
    r.role = ObservedRole::Standby;
    r.healthy = true;
    r.streaming = true;
    r.timeline = 2;
    r.receive_lsn = Some(Lsn(900));
    r.replay_lsn = Some(Lsn(800));
    LocalState {
        report: r,
        assigned_primary: false,
        generation: 3,
        lease_valid_until: None,
        lease_renewals: pgwarden_store::Renewals::default(),
        slot_retained_bytes: Default::default(),
    }
}

fn snapshot() -> Snapshot {
    let mut status = Status {
        generation: 3,
        primary: Some("k1".into()),
        timeline: 2,
        ..Status::default()
    };
    status.members.insert("k1".into(), Assignment::Primary);
    status.members.insert(
        "k2".into(),
        Assignment::Standby {
            follow: "k1".into(),
            host: "127.0.0.1".into(),
            port: 5432,
        },
    );
    for (g, old, new) in [(1, None, Some("k0")), (3, Some("k0"), Some("k1"))] {
        status.history.push(HistoryEntry {
            at_ms: 1_700_000_000_500,
            generation: g,
            old_primary: old.map(String::from),
            new_primary: new.map(String::from),
            reason: "r".into(),
            kind: String::new(),
        });
    }
    let mut k1 = KeeperReport::new("k1", "127.0.0.1", 5432, "http://127.0.0.1:8008");
    k1.role = ObservedRole::Primary;
    k1.healthy = true;
    k1.current_lsn = Some(Lsn(1000));
    Snapshot {
        spec: Some(pgwarden_core::Spec::default()),
        status,
        status_revision: 1,
        keepers: BTreeMap::from([("k1".into(), k1), ("k2".into(), standby_state().report)]),
        primary_holder: Some("k1".into()),
        proxies: BTreeMap::new(),
        spec_problem: None,
        status_problem: None,
    }
}

/// A strict reading of the text format: every family announced by HELP and
/// TYPE before its samples, names and labels well formed, values numbers.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut typed = BTreeSet::new();
    let mut samples = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name_ok(name), "{line}");
            assert!(
                (kind == "counter" && name.ends_with("_total"))
                    || (kind == "gauge" && !name.ends_with("_total")),
                "{line}"
            );
            assert!(typed.insert(name.to_string()), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "{line}");
        assert!(typed.contains(name), "sample before TYPE: {line}");
        let v: f64 = value.parse().unwrap();
        assert!(v.is_finite(), "{line}");
        assert!(samples.insert(series.to_string(), v).is_none(), "{line}");
    }
    samples
}

#[test]
fn a_standby_with_the_store_reachable() {
    let now = Instant::now();
    let local = standby_state();
    let inputs = Inputs {
        local: Some(&local),
        published_at: Some(now - Duration::from_millis(500)),
        started_at: now,
        now,
        primary: PrimaryPosition::Store(Some(Lsn(1000))),
        max_lag: None,
    };
    let text = render("main", "k2", &inputs, &Counts::default(), Some(&snapshot()));
    let m = parse(&text);
    let node = |name: &str| m[&format!("{name}{{cluster=\"main\",uid=\"k2\"}}")];
    assert_eq!(node("pgwarden_replica"), 1.0);
    assert_eq!(node("pgwarden_primary"), 0.0);
    assert_eq!(node("pgwarden_postgres_up"), 1.0);
    assert_eq!(node("pgwarden_postgres_timeline"), 2.0);
    assert_eq!(node("pgwarden_wal_replayed_lsn_bytes"), 800.0);
    assert_eq!(node("pgwarden_replay_lag_bytes"), 200.0);
    assert_eq!(node("pgwarden_primary_lease_remaining_seconds"), 0.0);
    assert_eq!(node("pgwarden_keeper_publish_age_seconds"), 0.5);
    assert_eq!(node("pgwarden_store_up"), 1.0);
    assert_eq!(
        m["pgwarden_role{cluster=\"main\",uid=\"k2\",role=\"standby\"}"],
        1.0
    );
    assert_eq!(
        m["pgwarden_role{cluster=\"main\",uid=\"k2\",role=\"primary\"}"],
        0.0
    );
    assert!(
        !text.contains("pgwarden_wal_current_lsn_bytes{"),
        "unknown: left out"
    );
    assert_eq!(m["pgwarden_cluster_generation{cluster=\"main\"}"], 3.0);
    assert_eq!(m["pgwarden_cluster_members{cluster=\"main\"}"], 2.0);
    assert_eq!(m["pgwarden_cluster_has_primary{cluster=\"main\"}"], 1.0);
    assert_eq!(
        m["pgwarden_standby_lag_bytes{cluster=\"main\",uid=\"k2\"}"],
        200.0
    );
    assert_eq!(
        m["pgwarden_cluster_recent_decisions{cluster=\"main\",kind=\"promotion\"}"],
        1.0
    );
    assert_eq!(
        m["pgwarden_cluster_recent_decisions{cluster=\"main\",kind=\"initial\"}"],
        1.0
    );
    assert_eq!(
        m["pgwarden_cluster_last_decision_timestamp_seconds{cluster=\"main\"}"],
        1_700_000_000.5
    );
}

#[test]
fn before_the_first_tick_and_without_the_store() {
    let now = Instant::now();
    let inputs = Inputs {
        local: None,
        published_at: None,
        started_at: now,
        now,
        primary: PrimaryPosition::Unreachable,
        max_lag: None,
    };
    let text = render("we\"ird\\", "k1", &inputs, &Counts::default(), None);
    let m = parse(&text);
    let labels = "{cluster=\"we\\\"ird\\\\\",uid=\"k1\"}";
    assert_eq!(m[&format!("pgwarden_store_up{labels}")], 0.0);
    assert_eq!(m[&format!("pgwarden_postgres_up{labels}")], 0.0);
    assert!(!text.contains("pgwarden_cluster_generation"));
}

fn primary_state(now: Instant) -> LocalState {
    let mut r = KeeperReport::new("k1", "127.0.0.1", 5432, "http://127.0.0.1:8008");
    r.role = ObservedRole::Primary;
    r.healthy = true;
    r.timeline = 2;
    r.current_lsn = Some(Lsn(1000));
    LocalState {
        report: r,
        assigned_primary: true,
        generation: 3,
        lease_valid_until: Some(now + Duration::from_secs(4)),
        lease_renewals: pgwarden_store::Renewals::default(),
        slot_retained_bytes: Default::default(),
    }
}

fn inputs_for(local: &LocalState, now: Instant) -> Inputs<'_> {
    Inputs {
        local: Some(local),
        published_at: Some(now),
        started_at: now,
        now,
        primary: PrimaryPosition::NotLoaded,
        max_lag: None,
    }
}

#[test]
fn primary_lease_renewals_while_holding_the_lease() {
    let now = Instant::now();
    let local = primary_state(now);
    let renewals = &local.lease_renewals;
    let node = |m: &BTreeMap<String, f64>, name: &str| {
        m.get(&format!("{name}{{cluster=\"main\",uid=\"k1\"}}"))
            .copied()
    };

    // Held, not renewed yet: no round trip to show.
    let m = parse(&render(
        "main",
        "k1",
        &inputs_for(&local, now),
        &Counts::default(),
        None,
    ));
    assert_eq!(node(&m, "pgwarden_primary_lease_renewal_seconds"), None);
    assert_eq!(node(&m, "pgwarden_primary_lease_renewals_total"), Some(0.0));

    renewals.succeeded(Duration::from_millis(4));
    renewals.failed();
    renewals.succeeded(Duration::from_millis(2));
    let m = parse(&render(
        "main",
        "k1",
        &inputs_for(&local, now),
        &Counts::default(),
        None,
    ));
    assert_eq!(
        node(&m, "pgwarden_primary_lease_renewal_seconds"),
        Some(0.002)
    );
    assert_eq!(node(&m, "pgwarden_primary_lease_renewals_total"), Some(2.0));
    assert_eq!(
        node(&m, "pgwarden_primary_lease_renewals_seconds_total"),
        Some(0.006)
    );
    assert_eq!(
        node(&m, "pgwarden_primary_lease_renewal_failures_total"),
        Some(1.0)
    );

    // Lease given up: the counts stay, the last round trip goes.
    let mut standby = local.clone();
    standby.lease_valid_until = None;
    let m = parse(&render(
        "main",
        "k1",
        &inputs_for(&standby, now),
        &Counts::default(),
        None,
    ));
    assert_eq!(node(&m, "pgwarden_primary_lease_renewal_seconds"), None);
    assert_eq!(node(&m, "pgwarden_primary_lease_renewals_total"), Some(2.0));
}

#[test]
fn decisions_counted_and_the_last_role_changes_timed() {
    use pgwarden_core::Reason;
    let now = Instant::now();
    let local = primary_state(now);
    let mut snap = snapshot();
    let entry = |generation, at_ms, reason: Reason| HistoryEntry {
        at_ms,
        generation,
        old_primary: None,
        new_primary: None,
        reason: reason.to_string(),
        kind: reason.label().to_string(),
    };
    snap.status.history = vec![entry(3, 1_000, Reason::InitialPrimary { uid: "k0".into() })];
    snap.status.generation = 3;
    let mut counts = Counts::default();
    counts.observe(&snap.status);
    snap.status.history.extend([
        entry(
            4,
            5_000,
            Reason::RoleChangeStarted {
                kind: "switchover".into(),
                from: Some("k0".into()),
                to: "k1".into(),
            },
        ),
        entry(
            5,
            5_750,
            Reason::Promoted {
                uid: "k1".into(),
                from: "k0".into(),
            },
        ),
    ]);
    snap.status.generation = 5;
    counts.observe(&snap.status);

    let text = render("main", "k1", &inputs_for(&local, now), &counts, Some(&snap));
    let m = parse(&text);
    let decided = |reason: &str| {
        m[&format!("pgwarden_decisions_total{{cluster=\"main\",uid=\"k1\",reason=\"{reason}\"}}")]
    };
    assert_eq!(decided("role_change_started"), 1.0);
    assert_eq!(decided("promoted"), 1.0);
    assert_eq!(
        decided("deposed"),
        0.0,
        "every recorded reason has a series"
    );
    assert_eq!(decided("initial_primary"), 0.0, "before this keeper looked");
    assert_eq!(
        m["pgwarden_switchovers_total{cluster=\"main\",uid=\"k1\"}"],
        1.0
    );
    assert_eq!(
        m["pgwarden_failovers_total{cluster=\"main\",uid=\"k1\"}"],
        0.0
    );
    assert_eq!(
        m["pgwarden_cluster_last_failover_duration_seconds{cluster=\"main\",kind=\"switchover\"}"],
        0.75
    );
    assert!(
        !text.contains(
            "pgwarden_cluster_last_failover_duration_seconds{cluster=\"main\",kind=\"failover\"}"
        ),
        "no failover in the history: left out"
    );
}

#[test]
fn wal_retained_per_slot() {
    let now = Instant::now();
    let mut local = primary_state(now);
    local.slot_retained_bytes = BTreeMap::from([
        ("pgwarden_k2".to_string(), 16_777_216),
        ("pgwarden_k3".to_string(), 0),
    ]);
    let m = parse(&render(
        "main",
        "k1",
        &inputs_for(&local, now),
        &Counts::default(),
        None,
    ));
    let slot = |s: &str| {
        m.get(&format!(
            "pgwarden_slot_retained_wal_bytes{{cluster=\"main\",uid=\"k1\",slot=\"{s}\"}}"
        ))
        .copied()
    };
    assert_eq!(slot("pgwarden_k2"), Some(16_777_216.0));
    assert_eq!(slot("pgwarden_k3"), Some(0.0));
}
