//! Scripted stories on a quiet cluster (no random faults, no jitter, no
//! latency or drift), each asserting what the user would see and when. The
//! invariants are checked after every tick as in any run: a story that
//! breaks one fails with the violation.

use pgwarden_core::spec::OnPostgresCrash;
use pgwarden_core::Spec;
use pgwarden_sim::events::Happening;
use pgwarden_sim::network::Cut;
use pgwarden_sim::postgres::{Data, Dir};
use pgwarden_sim::{SimConfig, Violation, World};

/// The value, or a panic that prints the violation readably.
fn ok<T>(r: Result<T, Violation>) -> T {
    r.unwrap_or_else(|v| panic!("{v}"))
}

/// Brings a scripted cluster up: one writable primary, every other keeper
/// streaming from it, then a few quiet seconds. Returns the primary's uid.
fn bring_up(w: &mut World) -> String {
    let up = ok(w.run_until(300, |w| {
        let writers = w.writable();
        writers.len() == 1
            && w.hosts()
                .values()
                .filter(|h| h.uid != writers[0])
                .all(|h| h.streaming && h.upstream.as_deref() == Some(writers[0]))
    }));
    assert!(up, "the cluster did not come up in 30 s");
    ok(w.run_until(30, |_| false));
    w.writable()[0].to_string()
}

fn first(w: &World, since: u64, f: impl Fn(&Happening) -> bool) -> Option<u64> {
    w.journal()
        .iter()
        .find(|(t, h)| *t >= since && f(h))
        .map(|(t, _)| *t)
}

fn someone_else_writes(old: &str) -> impl Fn(&World) -> bool + '_ {
    move |w: &World| {
        let writers = w.writable();
        writers.len() == 1 && writers[0] != old
    }
}

#[test]
fn crashed_primary_is_replaced_in_time_and_rejoins_through_rewind() {
    let mut w = World::new(1, SimConfig::scripted(3));
    let old = bring_up(&mut w);
    let t0 = w.now_ms();
    w.crash_keeper(&old);
    assert!(ok(w.run_until(100, someone_else_writes(&old))));
    let new = w.writable()[0].to_string();
    let took = w.now_ms() - t0;
    // The lease (3 s) lapses at most 3 s after the crash; the sentinel then
    // decides within a tick or two, and the new primary's keeper takes the
    // key at its next loop, up to a second later.
    assert!(
        (2_000..=4_500).contains(&took),
        "failover took {took} ms (new primary {new})"
    );
    // Nobody else was writable in between, and the standbys follow the new one.
    assert!(ok(w.run_until(50, |w| {
        w.hosts()
            .values()
            .filter(|h| h.uid != new && h.uid != old)
            .all(|h| h.streaming && h.upstream.as_deref() == Some(new.as_str()))
    })));
    // The old primary comes back as a standby of the new one, through pg_rewind.
    let t1 = w.now_ms();
    w.restart_keeper(&old);
    assert!(ok(w.run_until(100, |w| {
        let h = &w.hosts()[&old];
        h.in_recovery && h.streaming && h.upstream.as_deref() == Some(new.as_str())
    })));
    assert!(first(&w, t1, |h| *h == Happening::Rewound(old.clone())).is_some());
    assert_eq!(w.writable(), vec![new.as_str()]);
}

#[test]
fn partitioned_primary_fences_itself_before_anyone_is_promoted() {
    let mut w = World::new(2, SimConfig::scripted(3));
    let old = bring_up(&mut w);
    let t0 = w.now_ms();
    w.cut(&old, Cut::Full);
    assert!(ok(w.run_until(100, someone_else_writes(&old))));
    let new = w.writable()[0].to_string();
    let fenced = first(&w, t0, |h| *h == Happening::Fenced(old.clone()))
        .expect("the cut-off primary never fenced itself");
    let promoted =
        first(&w, t0, |h| *h == Happening::Promoted(new.clone())).expect("no promotion recorded");
    // Fenced by the TTL less the fencing margin after its last renewal,
    // which was at most one renewal interval before the cut (so by 2.5 s,
    // give or take a 100 ms step); promoted only after the lease lapsed.
    let ttl = pgwarden_core::spec::DEFAULT_PRIMARY_LEASE_TTL.0;
    let by = ttl - pgwarden_core::timing::fencing_margin(ttl);
    assert!(
        u128::from(fenced - t0) <= by.as_millis() + 100,
        "fenced {} ms after the cut",
        fenced - t0
    );
    assert!(
        promoted >= fenced + 1_000,
        "promoted at {promoted}, fenced at {fenced}: the fencing margin was not kept"
    );
    // Healed, it rejoins as a standby.
    w.heal(&old);
    assert!(ok(w.run_until(100, |w| {
        let h = &w.hosts()[&old];
        h.in_recovery && h.streaming && h.upstream.as_deref() == Some(new.as_str())
    })));
}

#[test]
fn postgres_crash_under_a_live_keeper_is_handled_at_once() {
    for policy in [OnPostgresCrash::Failover, OnPostgresCrash::Restart] {
        let cfg = SimConfig {
            spec: Spec {
                on_postgres_crash: policy,
                ..Spec::default()
            },
            ..SimConfig::scripted(3)
        };
        let mut w = World::new(3, cfg);
        let old = bring_up(&mut w);
        let t0 = w.now_ms();
        w.crash_postgres(&old);
        assert!(ok(w.run_until(60, |w| w.writable().len() == 1)));
        let writer = w.writable()[0].to_string();
        let took = w.now_ms() - t0;
        match policy {
            // A caught-up standby takes over once the keeper gave the lease up.
            OnPostgresCrash::Failover => assert!(
                writer != old || took <= 2_600,
                "{policy:?}: {writer} writes after {took} ms"
            ),
            // Restarted in place at the keeper's next tick.
            OnPostgresCrash::Restart => {
                assert_eq!(writer, old, "{policy:?}");
                assert!(took <= 300, "{policy:?}: restarted after {took} ms");
            }
        }
        assert!(took <= 4_500, "{policy:?}: no writer for {took} ms");
    }
}

#[test]
fn frozen_leader_sentinel_does_not_stop_a_failover() {
    let mut w = World::new(4, SimConfig::scripted(3));
    let old = bring_up(&mut w);
    let leader = w
        .sentinels()
        .iter()
        .find(|s| s.leading())
        .map(|s| s.id.clone())
        .unwrap();
    let t0 = w.now_ms();
    w.freeze_sentinel(&leader, true);
    w.crash_keeper(&old);
    assert!(ok(w.run_until(100, someone_else_writes(&old))));
    // The other sentinel's lease wait (3 s) overlaps the primary's.
    assert!(w.now_ms() - t0 <= 5_000, "took {} ms", w.now_ms() - t0);
    // Thawed, the old leader finds itself deposed and writes nothing stale.
    w.freeze_sentinel(&leader, false);
    ok(w.run_until(50, |_| false));
    assert_eq!(w.writable().len(), 1);
}

#[test]
fn proxies_hold_promotion_until_they_stop_routing_to_the_old_primary() {
    let cfg = SimConfig {
        proxies: Some(2),
        ..SimConfig::scripted(3)
    };
    let mut w = World::new(5, cfg);
    let old = bring_up(&mut w);
    assert!(ok(w.run_until(30, |w| {
        w.proxies()
            .iter()
            .all(|p| p.routes_primary_to(w.now_ms()) == Some(old.as_str()))
    })));
    w.freeze_proxy("p2", true);
    let t0 = w.now_ms();
    w.crash_keeper(&old);
    assert!(ok(w.run_until(150, someone_else_writes(&old))));
    let new = w.writable()[0].to_string();
    // p2 never acknowledged the deposing generation: the promotion waited
    // for its lease (proxy_ttl, 3 s) to lapse.
    let promoted = first(&w, t0, |h| *h == Happening::Promoted(new.clone())).unwrap();
    assert!(
        promoted - t0 >= 3_000,
        "promoted {} ms after the crash",
        promoted - t0
    );
    assert!(ok(w.run_until(30, |w| w.proxies()[0]
        .routes_primary_to(w.now_ms())
        == Some(new.as_str()))));
    w.freeze_proxy("p2", false);
    assert!(ok(w.run_until(30, |w| w.proxies()[1]
        .routes_primary_to(w.now_ms())
        == Some(new.as_str()))));
}

#[test]
fn foreign_data_is_never_touched() {
    let mut w = World::new(6, SimConfig::scripted(3));
    bring_up(&mut w);
    let other = Data::initdb(42, u64::MAX);
    w.add_keeper("n4", Dir::Data(other.clone()));
    w.add_keeper("n5", Dir::Foreign);
    w.restart_keeper("n4");
    w.restart_keeper("n5");
    ok(w.run_until(50, |_| false));
    for uid in ["n4", "n5"] {
        let k = w.keepers().iter().find(|k| k.uid == uid).unwrap();
        assert!(!k.alive(), "{uid} should have exited");
        assert!(
            k.exited
                .as_deref()
                .is_some_and(|e| e.contains("refusing to touch it")),
            "{uid}: {:?}",
            k.exited
        );
        assert!(!w.status().unwrap().members.contains_key(uid));
    }
    assert_eq!(w.hosts()["n4"].dir, Dir::Data(other));
    assert_eq!(w.hosts()["n5"].dir, Dir::Foreign);
}

#[test]
fn standbys_reporting_transient_errors_are_still_promoted() {
    let mut w = World::new(1, SimConfig::scripted(3));
    let old = bring_up(&mut w);
    let standbys: Vec<String> = w.hosts().keys().filter(|u| **u != old).cloned().collect();
    for s in &standbys {
        w.fail_config_writes(s, true);
    }
    // Every standby's keeper reports the failed write.
    assert!(ok(w.run_until(30, |w| standbys
        .iter()
        .all(|s| w.report(s).is_some_and(|r| r.error.is_some())))));
    w.crash_keeper(&old);
    // The sentinel still names a new primary...
    assert!(
        ok(w.run_until(100, |w| w
            .status()
            .and_then(|s| s.primary.as_deref())
            .is_some_and(|p| p != old))),
        "no failover: standbys with a transient error were disqualified"
    );
    // ...which takes over once its configuration can be written again.
    for s in &standbys {
        w.fail_config_writes(s, false);
    }
    assert!(ok(w.run_until(100, someone_else_writes(&old))));
}
