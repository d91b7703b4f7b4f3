//! Fault injection on real hosts (network namespaces), the reduced set that
//! runs in the default `cargo test`: the most informative scenarios, once
//! each. The full set, every scenario several times in both replication
//! modes with a table of figures, is `cargo bench -p pgwarden --bench
//! faults` (docs/faults.md).
//!
//! Each test asserts: never two writable nodes (every node polled directly
//! at 40 Hz from inside its own namespace); an unavailability window under
//! a generous bound; no failed write present; no acknowledged write lost,
//! except in asynchronous mode in a cycle where a standby was promoted (the
//! old primary may have acknowledged commits it had not streamed yet).
//!
//! The scenarios run one at a time: on a small machine, two clusters at
//! once would measure CPU starvation.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Mutex;

use common::netns::scenarios::{run, Mode, Scenario};

static SERIAL: Mutex<()> = Mutex::new(());

fn check(scenario: Scenario, mode: Mode) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = run(scenario, mode, 1);
    let problems = outcome.problems();
    assert!(
        problems.is_empty(),
        "{} ({}): {problems:#?}\nlogs kept in {:?}",
        scenario.name(),
        mode.name(),
        outcome.logs
    );
}

/// Host loss in strict synchronous mode: the failover completes and not a
/// single acknowledged write is lost; the old primary rejoins.
#[test]
fn primary_host_killed_in_strict_mode_loses_no_acknowledged_write() {
    check(Scenario::HostKill, Mode::Strict);
}

/// Strict mode, the synchronous standby cut off from the primary, which
/// streams on to the other standby, then the primary's host dies: only the
/// synchronous standby is promoted, nothing acknowledged is lost, and the
/// other standby (past the new timeline's fork point) is rewound so that
/// writes resume.
#[test]
fn synchronous_standby_behind_when_the_primary_dies() {
    check(Scenario::SyncStandbyBehind, Mode::Strict);
}

/// An isolated primary fences itself before a standby is promoted.
#[test]
fn primary_cut_off_from_everything() {
    check(Scenario::CutFromAll, Mode::Async);
}

/// Keeper and postgres frozen past the lease: a standby takes over, and the
/// thawed old primary never accepts writes next to it.
#[test]
fn primary_frozen_longer_than_its_lease() {
    check(Scenario::Freeze, Mode::Async);
}

/// A frozen proxy holds the promotion until its acknowledgement expired.
#[test]
fn proxy_frozen_during_a_failover() {
    check(Scenario::ProxyFreeze, Mode::Async);
}

/// etcd gone for 30 s: the primary fences within its lease TTL, nobody is
/// promoted, and writes resume when etcd returns, with nothing lost.
#[test]
fn etcd_stopped_for_30_seconds() {
    check(Scenario::EtcdStop, Mode::Async);
}

/// Only the primary's keeper frozen, its postgres running: it can neither
/// renew nor fence, so something else must stop its postgres before a
/// standby is promoted (the first full run showed 3.4 to 4 s of two
/// writable nodes here, before the keeper got a fence watchdog).
#[test]
fn primary_keeper_frozen_while_its_postgres_runs() {
    check(Scenario::KeeperFreeze, Mode::Async);
}

/// A backend busy in a statement when its primary is cut off: fencing must
/// kill it too (backends call setsid(), so the postmaster's process group
/// holds the postmaster alone, and a busy backend only notices its death
/// when it next waits). Its commit must never be acknowledged once another
/// node is writable. Before the fencer killed every process of the instance
/// this acknowledged commits 2.8 to 3.2 s after the promotion.
#[test]
fn a_slow_write_is_not_acknowledged_after_the_fence() {
    check(Scenario::SlowWriteAtFence, Mode::Async);
}

/// A 3-member etcd at default timing loses its raft leader: no fencing, no
/// failover, no write gap over 2 s through the proxy.
///
/// Known to fail when the election needs a second round (a split vote):
/// etcd 3.4 reports the old term while electing, so the leaderless-quorum
/// proof never applies and the fencer fires. See docs/faults.md, known gap 7.
#[test]
#[ignore = "known gap 7 in docs/faults.md: a split-vote etcd election outlasts the fence (fails about 1 run in 3)"]
fn etcd_leader_killed_moves_nothing() {
    check(Scenario::EtcdLeaderKill, Mode::Async);
}

/// A 3-member etcd loses quorum for 10 s: the primary stops being writable
/// within its lease, and writes resume when quorum returns.
#[test]
fn etcd_quorum_lost_fences_within_the_lease() {
    check(Scenario::EtcdQuorumLost, Mode::Async);
}
