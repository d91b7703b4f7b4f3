//! Bugs the simulation found in code outside this crate, fixed since; each
//! test replays the story that showed it and must stay green. (Strict
//! promotion on stale positions: fixed by requiring positions from keepers
//! that carried out the deposing generation. A short-lived timeline
//! forgotten: fixed by raising status.timeline to the newest any member
//! reports.)

use pgwarden_core::spec::{RequestKind, SyncMode};
use pgwarden_core::{KeeperReport, Spec};
use pgwarden_sim::events::Happening;
use pgwarden_sim::network::Cut;
use pgwarden_sim::{run, SimConfig, Violation, World};

/// The value, or a panic that prints the violation readably.
fn ok<T>(r: Result<T, Violation>) -> T {
    r.unwrap_or_else(|v| panic!("{v}"))
}

/// The value, or a panic with the violation and the end of the trace.
fn traced<T>(w: &World, r: Result<T, Violation>) -> T {
    r.unwrap_or_else(|v| {
        let tail = &w.trace()[w.trace().len().saturating_sub(30)..];
        panic!("{v}\n{}", tail.join("\n"))
    })
}

fn position(w: &World, uid: &str) -> Option<pgwarden_core::Lsn> {
    w.report(uid).and_then(KeeperReport::received_lsn)
}

/// Strict mode, `ANY 1 (n2, n3)`, both in `sync_standbys`, n3's last
/// report ahead of n2's. n2 is cut off etcd (it streams on, its report
/// stays) and n3 off its peers: commits are confirmed by n2 alone. The
/// primary dies; when its lease lapses, both members "report", n3 at least
/// as far as n2's old position, and n3 is promoted without those commits.
/// With the fix nobody is promoted until n2 publishes again.
#[test]
fn strict_mode_promotes_only_on_positions_read_after_the_primary_stopped() {
    let cfg = SimConfig {
        spec: Spec {
            sync_mode: SyncMode::Strict,
            min_sync_standbys: 1,
            max_sync_standbys: 2,
            ..Spec::default()
        },
        trace: true,
        ..SimConfig::scripted(3)
    };
    // The story needs a moment the seed decides: n2 and n3 both
    // synchronous and n3's report ahead of n2's. The first seed that gets
    // there is replayed (seed 8 did until the lease timing changed).
    let both = |w: &World| {
        w.writable() == ["n1"]
            && w.status()
                .is_some_and(|s| s.sync_standbys == ["n2".to_string(), "n3".to_string()])
    };
    let n3_ahead = |w: &World| position(w, "n3") > position(w, "n2");
    let mut w = (1..=64)
        .map(|seed| World::new(seed, cfg.clone()))
        .find_map(|mut w| {
            (ok(w.run_until(300, both)) && ok(w.run_until(50, n3_ahead))).then_some(w)
        })
        .expect("no seed of 64 made n2 and n3 both synchronous with n3 reported ahead");
    w.freeze_sentinel("s1", true);
    w.freeze_sentinel("s2", true);
    w.cut("n2", Cut::Store);
    w.cut("n3", Cut::Peers);
    let acked = w.stats().acked_writes;
    assert!(ok(w.run_until(20, |w| w.stats().acked_writes > acked)));
    w.crash_keeper("n1");
    w.freeze_sentinel("s1", false);
    w.freeze_sentinel("s2", false);
    // Today: n3 is promoted and strict_zero_loss fails here.
    let r = w.run_until(60, |_| false);
    traced(&w, r);
    assert!(w.writable().is_empty(), "{:?} promoted", w.writable());
    w.heal("n2");
    let r = w.run_until(100, |w| w.writable() == ["n2"]);
    assert!(traced(&w, r));
}

/// The sweep in strict mode with the default sync settings (1, 1): no seed
/// may lose an acknowledged write. Prints the failing seeds and the end of
/// the first one's trace. (Seed 120 failed before the fix, see the module docs.)
#[test]
fn strict_mode_across_seeds() {
    let cfg = SimConfig {
        steps: 600,
        vary_setup: false,
        spec: Spec {
            sync_mode: SyncMode::Strict,
            ..Spec::default()
        },
        ..SimConfig::default()
    };
    let outcomes = pgwarden_sim::sweep(200, &cfg);
    let failed: Vec<&Violation> = outcomes
        .iter()
        .filter_map(|o| o.violation.as_ref())
        .collect();
    if let Some(first) = failed.first() {
        let traced = run(
            first.seed,
            &SimConfig {
                trace: true,
                ..cfg.clone()
            },
        );
        let tail = traced.trace[traced.trace.len().saturating_sub(40)..].join("\n");
        let seeds: Vec<u64> = failed.iter().map(|v| v.seed).collect();
        panic!("{first}\n{tail}\nfailing seeds: {seeds:?}");
    }
}

/// n1 dies; n2 is named primary; an operator asks for a failover to n4,
/// which is cut off its peers (on the old timeline). Depending on when the
/// request lands, n2 promotes (n3 streams its new timeline) and is deposed
/// before the sentinel records that timeline; n4 is promoted once the
/// switchover wait times out, and n3 streams from it. Every delay must
/// leave every node on one history.
#[test]
fn a_standby_of_a_primary_deposed_at_once_is_rewound_before_following_the_next() {
    for delay in 0..15 {
        let mut w = World::new(0, SimConfig::scripted(4));
        let up = |w: &World| {
            w.writable() == ["n1"] && w.hosts().values().filter(|h| h.streaming).count() == 3
        };
        assert!(ok(w.run_until(300, up)), "the cluster did not come up");
        ok(w.run_until(30, |_| false));
        w.cut("n4", Cut::Peers);
        w.crash_keeper("n1");
        let named = |w: &World| {
            w.status()
                .is_some_and(|s| s.primary.as_deref() == Some("n2"))
        };
        assert!(ok(w.run_until(100, named)), "n2 was never named primary");
        ok(w.run_until(delay, |_| false));
        w.request(RequestKind::Failover, Some("n4"), false);
        let deposed = |w: &World| {
            w.status()
                .is_some_and(|s| s.deposed.as_deref() == Some("n2"))
                && !w.hosts()["n2"].running
        };
        if !ok(w.run_until(20, deposed)) {
            continue;
        }
        w.heal("n4");
        let r = w.run_until(450, |_| false);
        if let Err(v) = r {
            let n2_promoted = w
                .journal()
                .iter()
                .any(|(_, h)| *h == Happening::Promoted("n2".into()));
            panic!("request {delay} steps after n2 was named (n2 promoted: {n2_promoted}): {v}");
        }
    }
}
