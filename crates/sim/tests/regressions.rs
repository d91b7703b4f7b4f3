//! Bugs the simulation found in code outside this crate, fixed since: the
//! story that showed each one now runs with every invariant checked.
//! (`checkers_can_fail.rs` shows that the old fencing behaviour is caught.)
//!
//! Restart inside the fencing window (fixed in commit 9da7bee): the fencer
//! killed postgres at `valid_until - ttl/3` and disarmed until the next
//! renewal, while `PrimaryLease::try_hold` accepted the lease until
//! `valid_until`. A primary whose etcd came back in the last third of its
//! lease started postgres again with nothing left to fence it; the lease
//! lapsed, a standby was promoted, and two nodes accepted writes. Now
//! `try_hold` needs the fencing deadline not to have passed, and a fired
//! fencer kills any postmaster until a renewal.
//!
//! Strict synchronous mode lost acknowledged writes (fixed in commit
//! b03b1f9): with `ANY k (...)` listing more standbys than `k`, a
//! promotable standby without the last commits could be promoted; a
//! standby could confirm commits as soon as it was listed, before the
//! sentinel counted it promotable; and the first primary acknowledged
//! commits before any standby was listed. Now every listed standby is in
//! `sync_standbys` from the moment it is listed until a quorum of the list
//! holds what it may have confirmed; promotion needs `|S| - k + 1` members
//! of that set reporting and a candidate at least as advanced as all of
//! them; and strict mode with no standby lists a name nobody uses, so
//! commits wait.

mod common;

use pgwarden_core::decide::sync::NO_SYNC_STANDBY;
use pgwarden_core::spec::SyncMode;
use pgwarden_core::Spec;
use pgwarden_sim::events::Happening;
use pgwarden_sim::network::Cut;
use pgwarden_sim::{SimConfig, Violation, World};

/// The value, or a panic that prints the violation readably.
fn ok<T>(r: Result<T, Violation>) -> T {
    r.unwrap_or_else(|v| panic!("{v}"))
}

#[test]
fn restart_in_the_fencing_window_keeps_a_single_writer() {
    let w = ok(common::restart_in_the_fencing_window(SimConfig::scripted(
        3,
    )));
    let writers = w.writable();
    assert_eq!(writers.len(), 1, "{writers:?}");
    assert!(w
        .journal()
        .iter()
        .any(|(_, h)| *h == Happening::Promoted(writers[0].to_string())));
}

/// Strict mode, `ANY 1 (n2, n3)`, both in `sync_standbys`. The sentinels
/// stall (frozen) while n3's replication breaks: commits are now confirmed
/// by n2 alone. n2 dies and its report expires; then the primary dies. n3
/// still reports, but one member of two cannot show what a quorum of one
/// confirmed: nobody is promoted until n2 is back, and then n2 is, with
/// every acknowledged write. (Before the fix n3 was promoted without them.)
#[test]
fn strict_mode_promotes_only_a_standby_holding_every_acknowledged_commit() {
    let cfg = SimConfig {
        spec: Spec {
            sync_mode: SyncMode::Strict,
            min_sync_standbys: 1,
            max_sync_standbys: 2,
            ..Spec::default()
        },
        ..SimConfig::scripted(3)
    };
    let mut w = World::new(8, cfg);
    let both = |w: &World| {
        w.writable() == ["n1"]
            && w.status()
                .is_some_and(|s| s.sync_standbys == ["n2".to_string(), "n3".to_string()])
    };
    assert!(
        ok(w.run_until(300, both)),
        "n2 and n3 never both synchronous"
    );
    w.freeze_sentinel("s1", true);
    w.freeze_sentinel("s2", true);
    w.cut("n3", Cut::Peers);
    let acked = w.stats().acked_writes;
    assert!(ok(w.run_until(20, |w| w.stats().acked_writes > acked)));
    w.crash_keeper("n2");
    ok(w.run_until(60, |_| false));
    w.crash_keeper("n1");
    w.freeze_sentinel("s1", false);
    w.freeze_sentinel("s2", false);
    let promoted = ok(w.run_until(100, |w| !w.writable().is_empty()));
    assert!(!promoted, "{:?} promoted while n2 was down", w.writable());
    w.restart_keeper("n2");
    assert!(ok(w.run_until(100, |w| w.writable() == ["n2"])));
    assert_eq!(w.stats().lost_writes, 0);
}

/// Strict mode: the first primary, with no standby yet, lists a name no
/// standby uses, so its commits wait instead of being confirmed by nobody;
/// the keeper's own statements (the replication role) do not wait, so a
/// standby can still join, and from then on commits are confirmed and
/// survive the primary's death. (Before the fix the first primary
/// acknowledged commits asynchronously until a standby was listed.)
#[test]
fn strict_mode_first_primary_waits_for_a_standby() {
    let cfg = SimConfig {
        spec: Spec {
            sync_mode: SyncMode::Strict,
            ..Spec::default()
        },
        ..SimConfig::scripted(3)
    };
    let mut w = World::new(9, cfg);
    w.crash_keeper("n2");
    w.crash_keeper("n3");
    ok(w.run_until(100, |_| false));
    assert_eq!(w.writable(), ["n1"]);
    assert!(
        w.hosts()["n1"].sync_applied.contains(NO_SYNC_STANDBY),
        "{:?}",
        w.hosts()["n1"].sync_applied
    );
    assert_eq!(w.stats().acked_writes, 0, "acknowledged without a standby");
    w.restart_keeper("n2");
    assert!(ok(w.run_until(100, |w| w.stats().acked_writes > 0)));
    w.crash_keeper("n1");
    assert!(ok(w.run_until(100, |w| w.writable() == ["n2"])));
    assert_eq!(w.stats().lost_writes, 0);
}
