//! The store against a real 3-member etcd at etcd's default timing (100 ms
//! heartbeat, 1000 ms election timeout), which is what users run: a member
//! lost, the leader lost, quorum lost, members discovered.

mod common;

use std::time::Duration;

use common::init_tracing;
use pgwarden_store::etcd_server::EtcdCluster;
use pgwarden_store::{LeaseKeeper, LeaseState, Store, StoreOptions};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The primary lease's timing: 3 s TTL, renewed every 200 ms, and the holder
/// fences itself 500 ms before its local validity ends.
const TTL: Duration = Duration::from_secs(3);
const INTERVAL: Duration = Duration::from_millis(200);
const MARGIN: Duration = Duration::from_millis(500);

async fn start_cluster() -> (EtcdCluster, TempDir) {
    init_tracing();
    let dir = tempfile::tempdir().expect("temporary directory");
    let cluster = EtcdCluster::start(dir.path(), 3)
        .await
        .expect("start a 3-member etcd");
    (cluster, dir)
}

/// A store over every member, with the primary lease's short timeouts.
fn lease_store(cluster: &EtcdCluster) -> Store {
    let endpoints: Vec<String> = cluster.endpoints().split(',').map(String::from).collect();
    let options = StoreOptions {
        request_timeout: TTL / 6,
        connect_timeout: TTL / 6,
        ..StoreOptions::default()
    };
    Store::new(&endpoints, "c", options).expect("valid endpoints")
}

async fn granted(state: &mut watch::Receiver<LeaseState>) -> i64 {
    let held = tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.id.is_some()))
        .await
        .expect("lease granted within 5 s")
        .expect("renewal task alive");
    held.id.expect("granted")
}

/// Samples the lease for `span`: the shortest time it was still known valid
/// beyond the fencing margin (negative when the holder would have fenced),
/// and whether its id stayed `id`.
async fn watch_lease(state: &watch::Receiver<LeaseState>, id: i64, span: Duration) -> (f64, bool) {
    let end = Instant::now() + span;
    let mut least = f64::MAX;
    let mut same = true;
    while Instant::now() < end {
        let now = Instant::now();
        let s = *state.borrow();
        same &= s.id == Some(id);
        let left = match s.valid_until {
            Some(until) if until > now => until.duration_since(now).as_secs_f64(),
            Some(until) => -now.duration_since(until).as_secs_f64(),
            None => -1.0,
        };
        least = least.min(left - MARGIN.as_secs_f64());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (least, same)
}

#[tokio::test]
async fn a_lease_outlives_the_loss_of_the_etcd_leader() {
    let (mut cluster, _dir) = start_cluster().await;
    let store = lease_store(&cluster);
    let keeper =
        LeaseKeeper::spawn_with_interval(store.clone(), TTL, INTERVAL, CancellationToken::new());
    let mut state = keeper.state();
    let id = granted(&mut state).await;
    store
        .put("held", b"yes".to_vec(), Some(id))
        .await
        .expect("attach a key");
    // Three leader losses in a row: elections at default timing vary from 1
    // to almost 3 s, and each must pass without the holder fencing.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = cluster
            .wait_leader(Duration::from_secs(10))
            .await
            .expect("a leader");
        cluster.member_mut(leader).kill();
        let killed = Instant::now();
        let (least, same) = watch_lease(&state, id, Duration::from_secs(6)).await;
        eprintln!(
            "round {round}: killed leader m{leader}; least validity beyond the margin {least:.3} s"
        );
        let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
        assert!(
            new_leader.is_some_and(|l| l != leader),
            "round {round}: no new leader"
        );
        assert!(same, "round {round}: the lease was lost and granted anew");
        assert!(
            least > 0.0,
            "round {round}: the holder would have fenced: its lease was known valid only \
             {least:.3} s beyond the margin, {:.1} s after the leader m{leader} died",
            killed.elapsed().as_secs_f64()
        );
        cluster.restart(leader).await.expect("restart the member");
    }
    assert!(
        store.get("held").await.expect("read").is_some(),
        "the key attached to the lease survived"
    );
}

#[tokio::test]
async fn a_lease_outlives_the_loss_of_a_follower() {
    let (mut cluster, _dir) = start_cluster().await;
    let store = lease_store(&cluster);
    let keeper = LeaseKeeper::spawn_with_interval(store, TTL, INTERVAL, CancellationToken::new());
    let mut state = keeper.state();
    let id = granted(&mut state).await;
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    cluster.member_mut((leader + 1) % 3).kill();
    let (least, same) = watch_lease(&state, id, Duration::from_secs(4)).await;
    assert!(same, "the lease was lost");
    // A follower's loss costs nothing: renewals go on at once through the
    // others, so validity never drops much below a full TTL.
    assert!(
        least > (TTL - MARGIN - Duration::from_secs(1)).as_secs_f64(),
        "validity dropped to {least:.3} s beyond the margin"
    );
}

#[tokio::test]
async fn a_lease_lapses_locally_when_etcd_loses_quorum() {
    let (mut cluster, _dir) = start_cluster().await;
    let store = lease_store(&cluster);
    let keeper = LeaseKeeper::spawn_with_interval(store, TTL, INTERVAL, CancellationToken::new());
    let mut state = keeper.state();
    let id = granted(&mut state).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = cluster
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    // Two of three gone: the survivor has no leader and no quorum, and one
    // leaderless member proves nothing about the others.
    let before = state.borrow().valid_until.expect("valid");
    cluster.member_mut(leader).kill();
    cluster.member_mut((leader + 1) % 3).kill();
    let lost = Instant::now();
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    let s = *state.borrow();
    assert!(
        s.valid_at(Instant::now()).is_none(),
        "the lease still counts as valid {:.1} s after quorum was lost",
        lost.elapsed().as_secs_f64()
    );
    if let Some(until) = s.valid_until {
        assert!(
            until <= before + INTERVAL * 2,
            "validity was extended without a quorum"
        );
    }
    // Quorum back: the lease (the same one, or a new one if it expired) is
    // held again.
    cluster
        .restart(leader)
        .await
        .expect("restart the first member");
    cluster
        .restart((leader + 1) % 3)
        .await
        .expect("restart the second member");
    let back = tokio::time::timeout(
        Duration::from_secs(15),
        state.wait_for(|s| s.valid_at(Instant::now()).is_some()),
    )
    .await;
    assert!(
        back.is_ok(),
        "lease {id:x} (or a new one) is not held again after quorum returned"
    );
}

#[tokio::test]
async fn members_not_given_are_discovered_and_used() {
    let (mut cluster, _dir) = start_cluster().await;
    let first = cluster.members()[0].endpoint();
    let store = Store::new(
        std::slice::from_ref(&first),
        "c",
        StoreOptions {
            request_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            ..StoreOptions::default()
        },
    )
    .expect("valid endpoint");
    store.refresh_members().await.expect("read the member list");
    let in_use = store.endpoints_in_use();
    for member in cluster.members() {
        assert!(
            in_use.contains(&member.endpoint()),
            "{} not in use: {in_use:?}",
            member.endpoint()
        );
    }
    // The only endpoint given dies: the discovered members serve (once
    // they have a leader: the member killed may have been it).
    cluster.member_mut(0).kill();
    cluster
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader among the survivors");
    for i in 0..20 {
        store
            .put("k", format!("{i}").into_bytes(), None)
            .await
            .unwrap_or_else(|e| panic!("put #{i} with the given endpoint dead: {e}"));
    }
}

#[tokio::test]
async fn a_watch_resumes_on_another_member_when_its_member_dies() {
    let (mut cluster, _dir) = start_cluster().await;
    let store = lease_store(&cluster);
    let cancel = CancellationToken::new();
    let mut changes = store.watch_prefix("w/", cancel.clone());
    tokio::time::timeout(Duration::from_secs(5), changes.recv())
        .await
        .expect("the watch is established")
        .expect("channel open");
    // Each member in turn dies (its restart follows): wherever the watch is
    // connected, a later change still arrives.
    for victim in 0..3 {
        cluster.member_mut(victim).kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let value = format!("{victim}").into_bytes();
        let mut written = false;
        for _ in 0..40 {
            if store.put("w/k", value.clone(), None).await.is_ok() {
                written = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(written, "no write succeeded with m{victim} dead");
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                changes.recv().await.expect("channel open");
                if let Ok(Some(v)) = store.get("w/k").await {
                    if v.value == format!("{victim}").into_bytes() {
                        return;
                    }
                }
            }
        })
        .await;
        assert!(got.is_ok(), "no notification with m{victim} dead");
        cluster.restart(victim).await.expect("restart the member");
    }
    cancel.cancel();
}
