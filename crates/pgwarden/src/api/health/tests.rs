#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pgwarden_core::{KeeperReport, Lsn, ObservedRole};
use tokio::time::Instant;

use super::*;

fn report(role: ObservedRole) -> KeeperReport {
    let mut r = KeeperReport::new("k1", "127.0.0.1", 5432, "http://127.0.0.1:8008");
    r.role = role;
    r.healthy = matches!(role, ObservedRole::Primary | ObservedRole::Standby);
    r.timeline = 1;
    r.applied_generation = 4;
    r
}

fn primary(now: Instant, lease_left: Option<Duration>) -> LocalState {
    let mut r = report(ObservedRole::Primary);
    r.current_lsn = Some(Lsn(5000));
    LocalState {
        report: r,
        assigned_primary: true,
        generation: 4,
        lease_valid_until: lease_left.map(|d| now + d),
        lease_renewals: pgwarden_store::Renewals::default(),
        slot_retained_bytes: Default::default(),
    }
}

fn standby(replay: u64, receive: u64) -> LocalState {
    let mut r = report(ObservedRole::Standby);
    r.streaming = true;
    r.replay_lsn = Some(Lsn(replay));
    r.receive_lsn = Some(Lsn(receive));
    LocalState {
        report: r,
        assigned_primary: false,
        generation: 4,
        lease_valid_until: None,
        lease_renewals: pgwarden_store::Renewals::default(),
        slot_retained_bytes: Default::default(),
    }
}

fn inputs(local: &LocalState, now: Instant) -> Inputs<'_> {
    Inputs {
        local: Some(local),
        published_at: Some(now),
        started_at: now,
        now,
        primary: PrimaryPosition::NotLoaded,
        max_lag: None,
    }
}

fn ok(check: Check, i: &Inputs<'_>) -> bool {
    evaluate(check, i).ok
}

#[test]
fn paths_and_aliases() {
    for p in ["/", "/primary", "/leader", "/master", "/read-write"] {
        assert_eq!(Check::from_path(p), Some(Check::Primary), "{p}");
    }
    assert_eq!(Check::from_path("/replica"), Some(Check::Replica));
    assert_eq!(Check::from_path("/read-only"), Some(Check::ReadOnly));
    assert_eq!(Check::from_path("/primaryx"), None);
    assert_eq!(Check::from_path("/cluster"), None);
}

#[test]
fn the_writable_primary_needs_assignment_role_health_and_a_live_lease() {
    let now = Instant::now();
    let p = primary(now, Some(Duration::from_secs(2)));
    for check in [
        Check::Primary,
        Check::ReadOnly,
        Check::Health,
        Check::Readiness,
    ] {
        assert!(ok(check, &inputs(&p, now)), "{check:?}");
    }
    assert!(!ok(Check::Replica, &inputs(&p, now)));
    let h = evaluate(Check::Primary, &inputs(&p, now));
    assert_eq!(h.lease_remaining_ms, Some(2000));
    assert_eq!(h.lsn, Some(Lsn(5000)));
    assert!(h.writable_primary && h.reason.is_none());

    let expired = primary(now, Some(Duration::ZERO));
    let h = evaluate(Check::Primary, &inputs(&expired, now));
    assert!(!h.ok);
    assert!(h.reason.unwrap().contains("lease"));
    assert!(!ok(Check::ReadOnly, &inputs(&expired, now)));
    assert!(ok(Check::Health, &inputs(&expired, now)));

    let no_lease = primary(now, None);
    assert!(!ok(Check::Primary, &inputs(&no_lease, now)));

    // Running as primary but deposed by a newer generation.
    let mut deposed = primary(now, Some(Duration::from_secs(2)));
    deposed.assigned_primary = false;
    let h = evaluate(Check::Primary, &inputs(&deposed, now));
    assert_eq!(
        h.reason.as_deref(),
        Some("not the assigned primary of generation 4")
    );
    assert!(!ok(Check::Readiness, &inputs(&deposed, now)));

    // Assigned and leased, but postgres still in recovery (being promoted).
    let mut promoting = standby(10, 10);
    promoting.assigned_primary = true;
    promoting.lease_valid_until = Some(now + Duration::from_secs(2));
    assert!(!ok(Check::Primary, &inputs(&promoting, now)));
}

#[test]
fn a_streaming_standby_is_a_replica_within_the_lag_limit() {
    let now = Instant::now();
    let s = standby(1000, 1500);
    let mut i = inputs(&s, now);
    for check in [
        Check::Replica,
        Check::ReadOnly,
        Check::Health,
        Check::Readiness,
    ] {
        assert!(ok(check, &i), "{check:?}");
    }
    assert!(!ok(Check::Primary, &i));

    i.primary = PrimaryPosition::Store(Some(Lsn(4000)));
    let h = evaluate(Check::Replica, &i);
    assert_eq!(
        (h.lag_bytes, h.lag_source),
        (Some(3000), Some("primary position in the store"))
    );
    i.max_lag = Some(3000);
    assert!(ok(Check::Replica, &i));
    i.max_lag = Some(2999);
    let h = evaluate(Check::Replica, &i);
    assert!(!h.ok);
    assert_eq!(
        h.reason.as_deref(),
        Some("replay lag 3000 bytes exceeds 2999")
    );
    assert!(!ok(Check::ReadOnly, &i) && !ok(Check::Readiness, &i));
    assert!(ok(Check::Health, &i));
}

#[test]
fn lag_uses_what_was_received_when_it_is_ahead_of_the_store_or_the_store_is_gone() {
    let s = standby(1000, 1500);
    let lag = |p| replay_lag(&s, p).unwrap();
    // The primary's report is a tick old; the standby already has more.
    assert_eq!(lag(PrimaryPosition::Store(Some(Lsn(1200)))).bytes, 500);
    let gone = lag(PrimaryPosition::Unreachable);
    assert_eq!(gone.bytes, 500);
    assert!(gone.source.contains("store is unreachable"));
    assert!(lag(PrimaryPosition::Store(None))
        .source
        .contains("no primary position"));
    // Replay ahead of a stale reference is no lag, never an underflow.
    assert_eq!(
        replay_lag(&standby(2000, 0), PrimaryPosition::Store(Some(Lsn(10))))
            .unwrap()
            .bytes,
        0
    );
    assert_eq!(
        replay_lag(&primary(Instant::now(), None), PrimaryPosition::Unreachable),
        None
    );
}

#[test]
fn a_standby_that_does_not_stream_or_lags_behind_its_generation_is_not_ready() {
    let now = Instant::now();
    let mut s = standby(10, 10);
    s.report.streaming = false;
    let h = evaluate(Check::Replica, &inputs(&s, now));
    assert_eq!(
        h.reason.as_deref(),
        Some("standby is not streaming from the primary")
    );
    assert!(!ok(Check::Readiness, &inputs(&s, now)));
    assert!(ok(Check::Health, &inputs(&s, now)));

    let mut behind = standby(10, 10);
    behind.generation = 5;
    assert!(ok(Check::Replica, &inputs(&behind, now)));
    assert!(!ok(Check::Readiness, &inputs(&behind, now)));

    let mut unknown = standby(10, 10);
    unknown.report.replay_lsn = None;
    let mut i = inputs(&unknown, now);
    assert!(ok(Check::Replica, &i), "no limit: position not needed");
    i.max_lag = Some(1 << 20);
    assert!(!ok(Check::Replica, &i));
}

#[test]
fn stopped_postgres_fails_everything_but_liveness() {
    let now = Instant::now();
    let mut s = standby(10, 10);
    s.report.healthy = false;
    s.report.role = ObservedRole::Stopped;
    s.report.error = Some("postgres action Start: boom".into());
    let i = inputs(&s, now);
    for check in [
        Check::Primary,
        Check::Replica,
        Check::ReadOnly,
        Check::Health,
        Check::Readiness,
    ] {
        assert!(!ok(check, &i), "{check:?}");
    }
    assert!(ok(Check::Liveness, &i));
    let h = evaluate(Check::Health, &i);
    assert_eq!(h.state, "stopped");
    assert!(h.reason.unwrap().contains("boom"));
}

#[test]
fn liveness_follows_the_keeper_loop() {
    let start = Instant::now();
    let s = standby(10, 10);
    let mut i = inputs(&s, start);
    i.published_at = Some(start);
    i.now = start + LIVENESS_WINDOW;
    assert!(ok(Check::Liveness, &i));
    i.now = start + LIVENESS_WINDOW + Duration::from_secs(1);
    let h = evaluate(Check::Liveness, &i);
    assert!(!h.ok);
    assert_eq!(
        h.reason.as_deref(),
        Some("the keeper loop has not published for 11s")
    );
    // Before the first publish: live for a window after start, nothing else.
    let none = Inputs {
        local: None,
        published_at: None,
        started_at: start,
        now: start + Duration::from_secs(1),
        primary: PrimaryPosition::NotLoaded,
        max_lag: None,
    };
    assert!(ok(Check::Liveness, &none));
    assert!(!ok(Check::Health, &none));
    assert_eq!(evaluate(Check::Health, &none).state, "unknown");
}

#[test]
fn sizes_parse_like_postgres_units() {
    assert_eq!(parse_size("0"), Some(0));
    assert_eq!(parse_size("1048576"), Some(1 << 20));
    assert_eq!(parse_size("16MB"), Some(16 << 20));
    assert_eq!(parse_size("1kB"), Some(1024));
    assert_eq!(parse_size("2 GB"), Some(2 << 30));
    assert_eq!(parse_size("1tb"), Some(1 << 40));
    for bad in ["", "MB", "-1", "1.5MB", "16XB", "99999999999999999999"] {
        assert_eq!(parse_size(bad), None, "{bad:?}");
    }
    assert_eq!(parse_size("99999999TB"), None, "overflow");
}
