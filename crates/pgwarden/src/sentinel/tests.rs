//! The sentinel round's conflict handling: the pure reading of a lost
//! compare-and-swap, and rounds against a real single-member etcd (paused
//! time does not mix with the store's gRPC timeouts), with a second
//! sentinel identity or an operator writing between a round's read and its
//! write.

use pgwarden_core::{keys, KeeperReport, Spec, Status};
use pgwarden_store::etcd_server::EtcdServer;
use pgwarden_store::{Guard, Store, StoreOptions};
use tempfile::TempDir;

use super::*;

fn guard(revision: i64) -> Vec<Guard> {
    vec![Guard::CreateRevision {
        key: keys::SENTINEL_LEADER.to_string(),
        revision,
    }]
}

#[test]
fn a_conflict_under_our_own_election_key_means_re_read() {
    assert_eq!(after_conflict(Some(42), &guard(42)), RoundOutcome::Done);
}

#[test]
fn a_conflict_with_the_election_key_re_created_means_deposed() {
    assert_eq!(after_conflict(Some(43), &guard(42)), RoundOutcome::Deposed);
}

#[test]
fn a_conflict_with_no_election_key_means_deposed() {
    assert_eq!(after_conflict(None, &guard(42)), RoundOutcome::Deposed);
}

/// A throwaway etcd holding an initialised cluster with one fresh keeper,
/// so that the first decision is to choose it as the first primary.
struct Fixture {
    store: Store,
    _etcd: EtcdServer,
    _dir: TempDir,
}

async fn cluster() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let etcd = EtcdServer::start_on_free_ports(dir.path())
        .await
        .expect("start etcd");
    let store =
        Store::new(&[etcd.endpoint()], "round", StoreOptions::default()).expect("valid endpoint");
    store
        .put(keys::SPEC, Spec::default().to_json(), None)
        .await
        .expect("write spec");
    let report = KeeperReport::new("a", "127.0.0.1", 5432, "http://127.0.0.1:8008");
    store
        .put(&keys::keeper("a"), report.to_json(), None)
        .await
        .expect("write keeper report");
    Fixture {
        store,
        _etcd: etcd,
        _dir: dir,
    }
}

/// Makes `id` the holder of the election key (taking it from whoever holds
/// it) and returns its guard.
async fn elect(store: &Store, id: &str) -> Vec<Guard> {
    store
        .delete(keys::SENTINEL_LEADER)
        .await
        .expect("delete election key");
    let revision = store
        .create(keys::SENTINEL_LEADER, id.as_bytes().to_vec(), None)
        .await
        .expect("create election key")
        .expect("election key was absent");
    guard(revision)
}

async fn stored_status(store: &Store) -> Status {
    let v = store
        .get(keys::STATUS)
        .await
        .expect("read status")
        .expect("status written");
    Status::from_json(&v.value).expect("status parses")
}

/// An operator (or a sentinel we do not model) writes the status directly.
async fn write_behind_the_back(store: &Store, generation: u64) -> Status {
    let status = Status {
        generation,
        ..Status::default()
    };
    store
        .put(keys::STATUS, status.to_json(), None)
        .await
        .expect("write status");
    status
}

#[tokio::test]
async fn a_status_written_between_read_and_write_is_kept_and_carried_forward() {
    let f = cluster().await;
    let guard = elect(&f.store, "s1").await;
    let (mut last_good, alerts) = (view::LastGood::default(), Alerts::default());

    let pending = prepare(&f.store, &guard, &mut last_good, &alerts)
        .await
        .expect("prepare")
        .expect("a first primary to write");
    let newer = write_behind_the_back(&f.store, 7).await;
    let outcome = write(&f.store, &guard, pending, &mut last_good)
        .await
        .expect("write");
    assert_eq!(outcome, RoundOutcome::Done, "still the leader: re-read");
    assert_eq!(stored_status(&f.store).await, newer, "never overwritten");

    let outcome = round(&f.store, &guard, &mut last_good, &alerts)
        .await
        .expect("round");
    assert_eq!(outcome, RoundOutcome::Done);
    let next = stored_status(&f.store).await;
    assert_eq!(next.generation, 8, "decided from generation 7: {next:?}");
    assert_eq!(next.primary.as_deref(), Some("a"));
}

#[tokio::test]
async fn a_sentinel_deposed_by_another_never_overwrites_its_status() {
    let f = cluster().await;
    let old = elect(&f.store, "s1").await;
    let (mut old_memory, old_alerts) = (view::LastGood::default(), Alerts::default());
    let pending = prepare(&f.store, &old, &mut old_memory, &old_alerts)
        .await
        .expect("prepare")
        .expect("a first primary to write");

    // s1's key expires and s2 takes over and decides first.
    let new = elect(&f.store, "s2").await;
    let (mut new_memory, new_alerts) = (view::LastGood::default(), Alerts::default());
    let outcome = round(&f.store, &new, &mut new_memory, &new_alerts)
        .await
        .expect("round of s2");
    assert_eq!(outcome, RoundOutcome::Done);
    let s2_status = stored_status(&f.store).await;
    assert_eq!(s2_status.primary.as_deref(), Some("a"));

    // s1's late write loses, and s1 learns it no longer leads.
    let outcome = write(&f.store, &old, pending, &mut old_memory)
        .await
        .expect("late write of s1");
    assert_eq!(outcome, RoundOutcome::Deposed);
    assert_eq!(stored_status(&f.store).await, s2_status);
}

#[tokio::test]
async fn a_deposed_sentinel_with_a_decision_to_write_returns_deposed() {
    let f = cluster().await;
    let old = elect(&f.store, "s1").await;
    let _new = elect(&f.store, "s2").await;
    // A status that needs a decision: s1 will try to write one.
    let newer = write_behind_the_back(&f.store, 7).await;
    let (mut last_good, alerts) = (view::LastGood::default(), Alerts::default());
    let outcome = round(&f.store, &old, &mut last_good, &alerts)
        .await
        .expect("round of s1");
    assert_eq!(outcome, RoundOutcome::Deposed);
    assert_eq!(stored_status(&f.store).await, newer);
}
