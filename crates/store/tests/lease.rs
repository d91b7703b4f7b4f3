//! Leases and the LeaseKeeper against a real etcd.

mod common;

use std::time::Duration;

use common::{start_etcd, store};
use pgwarden_store::{LeaseKeeper, Renewals, StoreError};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn key_on_an_unrenewed_lease_vanishes_after_the_ttl() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");

    let lease = s.grant(Duration::from_secs(2)).await.unwrap();
    s.put("keepers/a", b"report".to_vec(), Some(lease))
        .await
        .unwrap();
    assert_eq!(s.get("keepers/a").await.unwrap().unwrap().lease, lease);

    // One manual renewal works and reports the TTL.
    assert_eq!(
        s.keep_alive_once(lease).await.unwrap(),
        Some(Duration::from_secs(2))
    );

    let deadline = Instant::now() + Duration::from_secs(6);
    while s.get("keepers/a").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "key outlived its lease");
        sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.keep_alive_once(lease).await.unwrap(), None);
    // Writing with the dead lease says so.
    match s.put("keepers/a", b"x".to_vec(), Some(lease)).await {
        Err(StoreError::LeaseNotFound { lease: l }) => assert_eq!(l, lease),
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
    // Revoking a lease that is already gone is not an error.
    s.revoke(lease).await.unwrap();
}

#[tokio::test]
async fn revoke_deletes_attached_keys() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");
    let lease = s.grant(Duration::from_secs(30)).await.unwrap();
    s.put("k", b"v".to_vec(), Some(lease)).await.unwrap();
    s.revoke(lease).await.unwrap();
    assert!(s.get("k").await.unwrap().is_none());
}

#[tokio::test]
async fn lease_keeper_keeps_a_key_alive_then_release_removes_it() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");
    let ttl = Duration::from_secs(2);

    let keeper = LeaseKeeper::spawn(s.clone(), ttl, CancellationToken::new());
    let mut state = keeper.state();
    let id = state
        .wait_for(|st| st.id.is_some())
        .await
        .unwrap()
        .id
        .unwrap();
    s.put("primary", b"me".to_vec(), Some(id)).await.unwrap();

    // Longer than 3 x ttl.
    let until = Instant::now() + Duration::from_millis(6500);
    while Instant::now() < until {
        sleep(Duration::from_millis(500)).await;
        let st = *state.borrow();
        assert_eq!(st.id, Some(id));
        let valid_until = st.valid_until.unwrap();
        assert!(valid_until > Instant::now(), "valid_until is in the past");
        assert!(valid_until <= Instant::now() + ttl);
        assert!(s.get("primary").await.unwrap().is_some(), "key expired");
    }

    keeper.release().await;
    assert!(s.get("primary").await.unwrap().is_none());
}

#[tokio::test]
async fn lease_keeper_replaces_a_lease_the_server_lost() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");
    let cancel = CancellationToken::new();
    let keeper = LeaseKeeper::spawn_with_interval(
        s.clone(),
        Duration::from_secs(5),
        Duration::from_millis(200),
        cancel.clone(),
    );
    let mut state = keeper.state();
    let first = state
        .wait_for(|st| st.id.is_some())
        .await
        .unwrap()
        .id
        .unwrap();

    s.revoke(first).await.unwrap();
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        state.wait_for(|st| st.id.is_some_and(|id| id != first)),
    )
    .await
    .expect("a new lease within 5 s")
    .unwrap()
    .id
    .unwrap();
    assert!(s.keep_alive_once(second).await.unwrap().is_some());

    // Cancelling stops renewal without revoking.
    cancel.cancel();
    sleep(Duration::from_millis(300)).await;
    assert!(s.keep_alive_once(second).await.unwrap().is_some());
    drop(keeper);
}

#[tokio::test]
async fn renewals_are_counted_with_their_round_trips_across_keepers() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");
    let renewals = Renewals::default();
    // A TTL of 2 s renews every 500 ms.
    let ttl = Duration::from_secs(2);
    let first =
        LeaseKeeper::spawn_counted(s.clone(), ttl, CancellationToken::new(), renewals.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while renewals.summary().succeeded < 2 {
        assert!(
            Instant::now() < deadline,
            "no two renewals: {:?}",
            renewals.summary()
        );
        sleep(Duration::from_millis(100)).await;
    }
    let seen = renewals.summary();
    assert_eq!(first.renewals().summary().succeeded, seen.succeeded);
    let last = seen.last.expect("a round trip after a renewal");
    assert!(last > Duration::ZERO, "{seen:?}");
    assert!(seen.total >= last, "{seen:?}");
    assert_eq!(seen.failed, 0, "{seen:?}");

    // The server forgets the lease: the next renewal fails, and is counted.
    let id = first.state().borrow().id.unwrap();
    s.revoke(id).await.unwrap();
    while renewals.summary().failed == 0 {
        assert!(
            Instant::now() < deadline,
            "no failed renewal: {:?}",
            renewals.summary()
        );
        sleep(Duration::from_millis(100)).await;
    }
    first.release().await;

    // A later keeper sharing the counts adds to them: they never go back.
    let before = renewals.summary();
    let second =
        LeaseKeeper::spawn_counted(s.clone(), ttl, CancellationToken::new(), renewals.clone());
    while renewals.summary().succeeded <= before.succeeded {
        assert!(
            Instant::now() < deadline,
            "second keeper did not renew: {:?}",
            renewals.summary()
        );
        sleep(Duration::from_millis(100)).await;
    }
    let after = renewals.summary();
    assert!(
        after.total > before.total && after.failed >= before.failed,
        "{before:?} -> {after:?}"
    );
    second.release().await;
}
