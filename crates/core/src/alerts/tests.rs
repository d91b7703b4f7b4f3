use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::lsn::Lsn;
use crate::report::{KeeperReport, ObservedRole};
use crate::spec::{Spec, SpecError, SyncMode};
use crate::status::{Assignment, HistoryEntry, Status};

const T0: u64 = 1_800_000_000_000;

fn spec(toml: &str) -> Spec {
    Spec::from_toml(toml).unwrap()
}

fn lag_alert(above: f64, clear: f64, for_ms: u64) -> Alert {
    Alert {
        name: "standby_lag".into(),
        kind: AlertKind::Threshold {
            metric: Metric::ReplicationLagBytes,
            condition: Condition::Above { fire: above, clear },
        },
        for_ms,
        severity: Severity::Warning,
        receivers: None,
        enabled: true,
    }
}

fn lag(v: Option<f64>) -> Measured {
    let mut m = Measured::new();
    m.insert((Metric::ReplicationLagBytes, Some("b".into())), v);
    m
}

/// Runs `alerts` over a sequence of (ms offset, measurement).
fn run(alerts: &[Alert], steps: &[(u64, Measured)]) -> (AlertState, Vec<Notification>) {
    let receivers = vec!["ops".to_string()];
    let mut state = AlertState::default();
    let mut all = Vec::new();
    for (at, measured) in steps {
        let e = evaluate(
            &state,
            &Round {
                now_ms: T0 + at,
                cluster: "c",
                alerts,
                receivers: &receivers,
                measured,
                generation: 1,
                history: &[],
            },
        );
        all.extend(e.transitions);
        state = e.next;
    }
    (state, all)
}

fn states(ns: &[Notification]) -> Vec<(String, AlertStatus)> {
    ns.iter().map(|n| (n.name.clone(), n.state)).collect()
}

#[test]
fn fires_after_for_and_clears_below_the_lower_threshold() {
    let a = [lag_alert(100.0, 50.0, 30_000)];
    let steps = [
        (0, lag(Some(150.0))),
        (10_000, lag(Some(150.0))),
        (30_000, lag(Some(150.0))),
        (31_000, lag(Some(80.0))),
        (32_000, lag(Some(120.0))),
        (33_000, lag(Some(50.0))),
    ];
    let (state, ns) = run(&a, &steps);
    assert_eq!(ns.len(), 2, "{ns:#?}");
    let f = &ns[0];
    assert_eq!(f.state, AlertStatus::Firing);
    assert_eq!(f.since_ms, T0 + 30_000);
    assert_eq!(f.value, Some(150.0));
    assert_eq!(f.threshold, Some(100.0));
    assert_eq!(f.member.as_deref(), Some("b"));
    assert_eq!(f.cluster, "c");
    assert_eq!(
        f.summary,
        "c: standby_lag on b firing: replication_lag_bytes is 150 (above 100)"
    );
    let r = &ns[1];
    assert_eq!(r.state, AlertStatus::Resolved);
    assert_eq!(r.since_ms, T0 + 33_000);
    assert_eq!((f.id, r.id), (1, 2));
    assert!(state.instances.is_empty());
    assert_eq!(state.outbox.len(), 2);
    assert_eq!(state.recent.len(), 2);
}

#[test]
fn a_value_that_drops_before_for_never_fires() {
    let a = [lag_alert(100.0, 50.0, 30_000)];
    let steps = [
        (0, lag(Some(150.0))),
        (20_000, lag(Some(90.0))),
        (25_000, lag(Some(150.0))),
        (50_000, lag(Some(150.0))),
    ];
    let (state, ns) = run(&a, &steps);
    assert!(ns.is_empty(), "{ns:#?}");
    assert_eq!(state.instances["standby_lag/b"].phase, Phase::Pending);
    assert_eq!(state.instances["standby_lag/b"].since_ms, T0 + 25_000);
}

#[test]
fn an_unknown_value_holds_and_a_member_that_left_resolves() {
    let a = [lag_alert(100.0, 50.0, 0)];
    let steps = [
        (0, lag(Some(150.0))),
        (1_000, lag(None)),
        (2_000, Measured::new()),
    ];
    let (_, ns) = run(&a, &steps);
    assert_eq!(
        states(&ns),
        vec![
            ("standby_lag".into(), AlertStatus::Firing),
            ("standby_lag".into(), AlertStatus::Resolved)
        ]
    );
    assert_eq!(ns[1].value, None);
    assert!(
        ns[1].summary.contains("no longer measured"),
        "{}",
        ns[1].summary
    );
}

#[test]
fn disabling_a_firing_alert_resolves_it() {
    let mut a = [lag_alert(100.0, 50.0, 0)];
    let receivers = vec![];
    let m = lag(Some(150.0));
    fn round<'a>(alerts: &'a [Alert], receivers: &'a [String], m: &'a Measured) -> Round<'a> {
        Round {
            now_ms: T0,
            cluster: "c",
            alerts,
            receivers,
            measured: m,
            generation: 1,
            history: &[],
        }
    }
    let e = evaluate(&AlertState::default(), &round(&a, &receivers, &m));
    a[0].enabled = false;
    let e2 = evaluate(&e.next, &round(&a, &receivers, &m));
    assert_eq!(e2.transitions[0].state, AlertStatus::Resolved);
    assert!(e2.next.outbox.is_empty(), "no receivers, no outbox");
}

#[test]
fn below_thresholds_fire_low_and_clear_high() {
    let a = [Alert {
        name: "disk".into(),
        kind: AlertKind::Threshold {
            metric: Metric::DataDiskFreePercent,
            condition: Condition::Below {
                fire: 10.0,
                clear: 15.0,
            },
        },
        for_ms: 0,
        severity: Severity::Critical,
        receivers: None,
        enabled: true,
    }];
    let disk = |v: f64| {
        let mut m = Measured::new();
        m.insert((Metric::DataDiskFreePercent, Some("a".into())), Some(v));
        m
    };
    let (_, ns) = run(
        &a,
        &[
            (0, disk(20.0)),
            (1, disk(9.0)),
            (2, disk(12.0)),
            (3, disk(15.0)),
        ],
    );
    assert_eq!(ns.len(), 2);
    assert_eq!(ns[0].state, AlertStatus::Firing);
    assert_eq!(ns[1].state, AlertStatus::Resolved);
    assert_eq!(ns[1].since_ms, T0 + 3);
}

#[test]
fn receivers_get_their_alerts_and_delivery_empties_the_outbox() {
    let mut a = lag_alert(100.0, 50.0, 0);
    a.receivers = Some(vec!["pager".into()]);
    let receivers = vec!["ops".to_string(), "pager".to_string()];
    let m = lag(Some(150.0));
    let e = evaluate(
        &AlertState::default(),
        &Round {
            now_ms: T0,
            cluster: "c",
            alerts: &[a, lag_alert(120.0, 120.0, 0)],
            receivers: &receivers,
            measured: &m,
            generation: 1,
            history: &[],
        },
    );
    // The second alert has the same name: both instances share a key, so
    // only the first one's definition is used. Names are unique in specs.
    let mut s = e.next;
    assert_eq!(s.outbox.len(), 1);
    assert_eq!(s.outbox[0].receivers, vec!["pager".to_string()]);
    assert_eq!(s.next_for("pager").map(|n| n.id), Some(1));
    assert!(s.next_for("ops").is_none());
    assert!(!s.delivered(1, "ops"));
    assert!(s.delivered(1, "pager"));
    assert!(s.outbox.is_empty());
    assert!(
        !s.delivered(1, "pager"),
        "a second confirmation changes nothing"
    );
}

#[test]
fn the_outbox_is_bounded() {
    let a = [lag_alert(100.0, 50.0, 0)];
    let steps: Vec<(u64, Measured)> = (0..OUTBOX_LEN as u64 + 10)
        .map(|i| (i, lag(Some(if i % 2 == 0 { 150.0 } else { 10.0 }))))
        .collect();
    let (state, ns) = run(&a, &steps);
    assert_eq!(ns.len(), OUTBOX_LEN + 10);
    assert_eq!(state.outbox.len(), OUTBOX_LEN);
    assert_eq!(state.dropped, 10);
    assert_eq!(state.outbox[0].notification.id, 11, "the oldest went first");
    assert_eq!(state.recent.len(), RECENT_LEN);
}

fn history(
    gen: u64,
    kind: &str,
    old: Option<&str>,
    new: Option<&str>,
    reason: &str,
) -> HistoryEntry {
    HistoryEntry {
        at_ms: T0 + gen,
        generation: gen,
        old_primary: old.map(Into::into),
        new_primary: new.map(Into::into),
        reason: reason.into(),
        kind: kind.into(),
    }
}

#[test]
fn one_failover_event_per_promotion_and_none_for_old_history() {
    let defs = definitions(&Spec::default()).unwrap();
    let receivers = vec!["ops".to_string()];
    let m = Measured::new();
    let mut hist = vec![history(1, "initial_primary", None, Some("a"), "a chosen")];
    let round = |gen: u64, hist: &[HistoryEntry], s: &AlertState| {
        evaluate(
            s,
            &Round {
                now_ms: T0 + 100,
                cluster: "c",
                alerts: &defs,
                receivers: &receivers,
                measured: &m,
                generation: gen,
                history: hist,
            },
        )
    };
    let s0 = round(1, &hist, &AlertState::default());
    assert!(
        s0.transitions.is_empty(),
        "history before the first round is not replayed"
    );
    assert_eq!(s0.next.events_seen_generation, Some(1));
    hist.push(history(
        2,
        "deposed",
        Some("a"),
        None,
        "a failed: its primary lease expired",
    ));
    hist.push(history(3, "promoted", None, Some("b"), "b promoted"));
    let s1 = round(3, &hist, &s0.next);
    assert_eq!(s1.transitions.len(), 1, "{:#?}", s1.transitions);
    let n = &s1.transitions[0];
    assert_eq!(n.name, "failover");
    assert_eq!(n.state, AlertStatus::Firing);
    assert_eq!(n.old_primary.as_deref(), Some("a"));
    assert_eq!(n.new_primary.as_deref(), Some("b"));
    assert_eq!(
        n.reason.as_deref(),
        Some("failover: a failed: its primary lease expired")
    );
    assert_eq!(n.since_ms, T0 + 3);
    let s2 = round(3, &hist, &s1.next);
    assert!(
        s2.transitions.is_empty(),
        "the same history, no second event"
    );
    hist.push(history(
        4,
        "role_change_started",
        Some("b"),
        None,
        "switchover from b requested",
    ));
    hist.push(history(5, "promoted", Some("b"), Some("c"), "c promoted"));
    let s3 = round(5, &hist, &s2.next);
    assert_eq!(s3.transitions.len(), 1);
    assert!(
        s3.transitions[0].summary.contains("switchover: b -> c"),
        "{}",
        s3.transitions[0].summary
    );
}

#[test]
fn measuring_reports_and_status() {
    let sp = Spec {
        sync_mode: SyncMode::Strict,
        ..Spec::default()
    };
    let mut status = Status {
        primary: Some("a".into()),
        ..Status::default()
    };
    status.members.insert("a".into(), Assignment::Primary);
    status.members.insert(
        "b".into(),
        Assignment::Standby {
            follow: "a".into(),
            host: "h".into(),
            port: 1,
        },
    );
    status.members.insert(
        "c".into(),
        Assignment::Standby {
            follow: "a".into(),
            host: "h".into(),
            port: 1,
        },
    );
    let mut a = KeeperReport::new("a", "h", 1, "u");
    a.role = ObservedRole::Primary;
    a.healthy = true;
    a.current_lsn = Some(Lsn(1000));
    a.lease_renewal_us = Some(250_000);
    a.data_disk_free_bytes = Some(5);
    a.data_disk_size_bytes = Some(100);
    let mut b = KeeperReport::new("b", "h", 1, "u");
    b.role = ObservedRole::Standby;
    b.healthy = true;
    b.replay_lsn = Some(Lsn(400));
    // e: assigned, postgres stopped on existing data; f: still being created;
    // d: reports but has no role yet.
    status
        .members
        .insert("e".into(), status.members["b"].clone());
    status
        .members
        .insert("f".into(), status.members["b"].clone());
    let mut e = KeeperReport::new("e", "h", 1, "u");
    e.system_id = Some(7);
    let f_report = KeeperReport::new("f", "h", 1, "u");
    let d = KeeperReport::new("d", "h", 1, "u");
    let keepers: BTreeMap<_, _> = [
        ("a".to_string(), a),
        ("b".to_string(), b),
        ("d".to_string(), d),
        ("e".to_string(), e),
        ("f".to_string(), f_report),
    ]
    .into();
    let m = measure(&Facts {
        spec: &sp,
        status: &status,
        keepers: &keepers,
        store_unreachable_members: Some(1),
        rpo_seconds: None,
    });
    let get = |metric, member: Option<&str>| m.get(&(metric, member.map(String::from))).copied();
    assert_eq!(get(Metric::MemberUp, Some("a")), Some(Some(1.0)));
    assert_eq!(
        get(Metric::MemberUp, Some("c")),
        Some(Some(0.0)),
        "c has no report"
    );
    assert_eq!(
        get(Metric::ReplicationLagBytes, Some("b")),
        Some(Some(600.0))
    );
    assert_eq!(get(Metric::ReplicationLagBytes, Some("a")), Some(None));
    assert_eq!(
        get(Metric::LeaseRenewalSeconds, Some("a")),
        Some(Some(0.25))
    );
    assert_eq!(get(Metric::DataDiskFreePercent, Some("a")), Some(Some(5.0)));
    assert_eq!(get(Metric::SyncStandbys, None), Some(Some(0.0)));
    assert_eq!(get(Metric::WritesBlocked, None), Some(Some(1.0)));
    assert_eq!(get(Metric::StoreUnreachableMembers, None), Some(Some(1.0)));
    assert_eq!(
        get(Metric::RpoSeconds, None),
        None,
        "inert without a standby cluster"
    );
}

#[test]
fn builtins_are_on_and_overridable() {
    let defs = definitions(&Spec::default()).unwrap();
    let names: Vec<&str> = defs.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, BUILTIN_NAMES.to_vec());
    let find = |d: &[Alert], n: &str| d.iter().find(|a| a.name == n).cloned().unwrap();
    assert!(
        !find(&defs, "no_sync_standby").enabled,
        "off without sync replication"
    );
    assert!(find(&defs, "member_gone").enabled);
    let s = spec(
        "sync_mode = 'on'\n[[alerts]]\nname = 'member_gone'\nfor = '2s'\nseverity = 'critical'\n\
         [[alerts]]\nname = 'data_disk_free'\nenabled = false\n\
         [[alerts]]\nname = 'replication_lag'\nabove = 1000\n",
    );
    let defs = definitions(&s).unwrap();
    let gone = find(&defs, "member_gone");
    assert_eq!((gone.for_ms, gone.severity), (2_000, Severity::Critical));
    assert!(!find(&defs, "data_disk_free").enabled);
    assert!(find(&defs, "no_sync_standby").enabled);
    assert_eq!(
        find(&defs, "replication_lag").kind,
        AlertKind::Threshold {
            metric: Metric::ReplicationLagBytes,
            condition: Condition::Above {
                fire: 1000.0,
                clear: 1000.0
            }
        }
    );
}

#[test]
fn the_issue_example_parses() {
    let s = spec(
        r#"
[[alert_receivers]]
name = "ops"
webhook = "http://10.0.0.9:9099/hook"

[[alert_receivers]]
name = "am"
alertmanager = "http://10.0.0.9:9093"

[[alert_receivers]]
name = "pager"
command = "/usr/local/bin/page-me"

[[alerts]]
name = "standby_lag"
metric = "replication_lag_bytes"
above = 16777216
clear_below = 8388608
for = "30s"
severity = "warning"
receivers = ["ops"]
"#,
    );
    let defs = definitions(&s).unwrap();
    let lag = defs.iter().find(|a| a.name == "standby_lag").unwrap();
    assert_eq!(lag.for_ms, 30_000);
    assert_eq!(lag.receivers, Some(vec!["ops".to_string()]));
    assert_eq!(Spec::from_toml(&s.to_toml()).unwrap(), s);
    assert_eq!(Spec::from_json(&s.to_json()).unwrap(), s);
}

#[test]
fn mistakes_are_refused_with_the_field_named() {
    for (toml, field, says) in [
        ("[[alerts]]\nname = 'x'\nmetric = 'nope'\nabove = 1\n", "alerts.x.metric", "unknown metric \"nope\""),
        ("[[alerts]]\nname = 'x'\nmetric = 'replication_lag_bytes'\nabove = 1\nclear_below = 2\n", "alerts.x.clear_below", "is above above"),
        ("[[alerts]]\nname = 'x'\nmetric = 'replication_lag_bytes'\nbelow = 5\nclear_above = 2\n", "alerts.x.clear_above", "is below below"),
        ("[[alerts]]\nname = 'x'\nmetric = 'replication_lag_bytes'\nabove = 1\nreceivers = ['ops']\n", "alerts.x.receivers", "unknown receiver \"ops\""),
        ("[[alerts]]\nname = 'x'\nabove = 1\n", "alerts.x.metric", "needs a metric"),
        ("[[alerts]]\nname = 'x'\nmetric = 'replication_lag_bytes'\n", "alerts.x.above", "needs above"),
        ("[[alerts]]\nname = 'x'\nmetric = 'replication_lag_bytes'\nabove = 1\nbelow = 0\n", "alerts.x.above", "not both"),
        ("[[alerts]]\nname = 'failover'\nabove = 1\n", "alerts.failover", "is an event"),
        ("[[alerts]]\nname = 'a b'\n", "alerts.a b", "letters, digits"),
        ("[[alert_receivers]]\nname = 'ops'\n", "alert_receivers.ops", "exactly one of"),
        ("[[alert_receivers]]\nname = 'ops'\nwebhook = 'https://x'\n", "alert_receivers.ops", "not an http:// URL"),
        ("[[alert_receivers]]\nname = 'ops'\ncommand = 'page-me'\n", "alert_receivers.ops", "absolute path"),
    ] {
        let err = Spec::from_toml(toml).unwrap_err();
        let SpecError::Alert { field: f, why } = &err else {
            panic!("{toml}: {err}");
        };
        assert_eq!(f, field, "{toml}");
        assert!(why.contains(says), "{toml}: {why}");
        assert!(err.to_string().starts_with(&format!("spec field {field}: ")));
    }
    let err = Spec::from_toml("[[alerts]]\nname = 'x'\nfoo = 1\n").unwrap_err();
    assert!(err.to_string().contains("foo"), "{err}");
}

#[test]
fn prometheus_rules_cover_the_enabled_alerts() {
    let s = spec("[[alerts]]\nname = 'member_gone'\nfor = '5s'\n[[alerts]]\nname = 'data_disk_free'\nenabled = false\n");
    let text = prometheus::rules("c", &definitions(&s).unwrap());
    assert!(text.contains("- alert: member_gone\n        expr: \"min by (cluster, uid) (pgwarden_postgres_up{cluster=\\\"c\\\"}) < 1\"\n        for: 5000ms"), "{text}");
    assert!(
        text.contains("ALERTS{alertname=\\\"replication_lag\\\""),
        "hysteresis: {text}"
    );
    assert!(text.contains("# data_disk_free: disabled"), "{text}");
    assert!(text.contains("# store_unreachable: store_unreachable_members is measured by the leader sentinel only"), "{text}");
}

proptest! {
    #[test]
    fn inside_the_band_at_most_one_transition(
        (above, gap) in (1.0f64..1e9, 1.0f64..1e6),
        start_high in any::<bool>(),
        values in prop::collection::vec(0.0f64..1.0, 1..200),
    ) {
        let clear = above - gap;
        let a = [lag_alert(above, clear, 0)];
        let mut steps = Vec::new();
        if start_high {
            steps.push((0, lag(Some(above + 1.0))));
        }
        for (i, f) in values.iter().enumerate() {
            // Strictly above clear, at most `above`.
            let v = clear + (above - clear) * (1.0 - f * 0.999_999);
            steps.push((i as u64 + 1, lag(Some(v.max(clear + gap * 1e-7)))));
        }
        let (_, ns) = run(&a, &steps);
        prop_assert!(ns.len() <= 1, "{ns:#?}");
        prop_assert_eq!(ns.len(), usize::from(start_high));
    }

    #[test]
    fn transitions_alternate_and_ids_increase(
        values in prop::collection::vec(prop_oneof![Just(None), (0.0f64..200.0).prop_map(Some)], 1..300),
        for_ms in 0u64..5,
    ) {
        let a = [lag_alert(100.0, 50.0, for_ms)];
        let steps: Vec<(u64, Measured)> =
            values.iter().enumerate().map(|(i, v)| (i as u64, lag(*v))).collect();
        let (state, ns) = run(&a, &steps);
        for (i, n) in ns.iter().enumerate() {
            let want = if i % 2 == 0 { AlertStatus::Firing } else { AlertStatus::Resolved };
            prop_assert_eq!(n.state, want);
            if i > 0 {
                prop_assert!(n.id > ns[i - 1].id);
            }
            match n.state {
                AlertStatus::Firing => prop_assert!(n.value.unwrap() > 100.0),
                AlertStatus::Resolved => prop_assert!(n.value.unwrap() <= 50.0),
            }
        }
        let firing = state.firing().count();
        prop_assert_eq!(firing, ns.len() % 2);
    }

    #[test]
    fn replaying_a_round_on_its_own_result_changes_nothing(
        values in prop::collection::vec((0.0f64..200.0).prop_map(Some), 1..50),
    ) {
        // A new leader that re-runs the round the old one stored emits nothing new.
        let a = [lag_alert(100.0, 50.0, 0)];
        let receivers = vec!["ops".to_string()];
        let mut state = AlertState::default();
        for (i, v) in values.iter().enumerate() {
            let m = lag(*v);
            let round = Round { now_ms: T0 + i as u64, cluster: "c", alerts: &a, receivers: &receivers, measured: &m, generation: 1, history: &[] };
            state = evaluate(&state, &round).next;
            let again = evaluate(&state, &round);
            prop_assert!(again.transitions.is_empty());
            prop_assert!(!again.changed(&state));
        }
    }
}
