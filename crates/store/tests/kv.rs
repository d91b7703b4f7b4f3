//! Reads, writes and compare-and-swap against a real etcd.

mod common;

use common::{start_etcd, store};
use pgwarden_store::{CasOutcome, Guard};

#[tokio::test]
async fn get_put_get_prefix_round_trip() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "alpha");
    let other = store(&[etcd.server.endpoint()], "beta");

    assert_eq!(s.get("status").await.unwrap(), None);
    let rev = s.put("status", b"one".to_vec(), None).await.unwrap();
    let got = s.get("status").await.unwrap().unwrap();
    assert_eq!(got.value, b"one");
    assert_eq!(got.mod_revision, rev);
    assert_eq!(got.create_revision, rev);
    assert_eq!(got.lease, 0);

    s.put("keepers/b", b"kb".to_vec(), None).await.unwrap();
    s.put("keepers/a", b"ka".to_vec(), None).await.unwrap();
    other
        .put("keepers/z", b"other cluster".to_vec(), None)
        .await
        .unwrap();

    let keepers = s.get_prefix("keepers/").await.unwrap();
    let keys: Vec<&str> = keepers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["keepers/a", "keepers/b"]);
    assert_eq!(keepers[0].1.value, b"ka");

    let all = s.get_prefix("").await.unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["keepers/a", "keepers/b", "status"]);

    s.delete("status").await.unwrap();
    assert_eq!(s.get("status").await.unwrap(), None);
    // Deleting an absent key is fine.
    s.delete("status").await.unwrap();
}

#[tokio::test]
async fn create_refuses_an_existing_key() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");

    let rev = s.create("spec", b"v1".to_vec(), None).await.unwrap();
    assert!(rev.is_some());
    assert_eq!(s.create("spec", b"v2".to_vec(), None).await.unwrap(), None);
    assert_eq!(s.get("spec").await.unwrap().unwrap().value, b"v1");
}

#[tokio::test]
async fn cas_writes_on_the_right_revision_and_conflicts_on_a_stale_one() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");

    // 0 = must be absent.
    let CasOutcome::Written { revision: r1 } =
        s.cas("status", b"g1".to_vec(), 0, &[], None).await.unwrap()
    else {
        panic!("first cas on an absent key must write");
    };
    assert_eq!(
        s.cas("status", b"again".to_vec(), 0, &[], None)
            .await
            .unwrap(),
        CasOutcome::Conflict
    );

    let CasOutcome::Written { revision: r2 } = s
        .cas("status", b"g2".to_vec(), r1, &[], None)
        .await
        .unwrap()
    else {
        panic!("cas on the current revision must write");
    };
    assert!(r2 > r1);
    assert_eq!(
        s.cas("status", b"stale".to_vec(), r1, &[], None)
            .await
            .unwrap(),
        CasOutcome::Conflict
    );
    let now = s.get("status").await.unwrap().unwrap();
    assert_eq!(now.value, b"g2");
    assert_eq!(now.mod_revision, r2);
}

#[tokio::test]
async fn create_revision_guard_fences_a_deposed_leader() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");

    s.create("sentinel/leader", b"s1".to_vec(), None)
        .await
        .unwrap();
    let token = s
        .get("sentinel/leader")
        .await
        .unwrap()
        .unwrap()
        .create_revision;
    let guard = [Guard::CreateRevision {
        key: "sentinel/leader".into(),
        revision: token,
    }];

    let CasOutcome::Written { revision } = s
        .cas("status", b"by s1".to_vec(), 0, &guard, None)
        .await
        .unwrap()
    else {
        panic!("guard holds: must write");
    };

    // s1's key expires and s2 wins the election: same key, new create revision.
    s.delete("sentinel/leader").await.unwrap();
    s.create("sentinel/leader", b"s2".to_vec(), None)
        .await
        .unwrap();

    assert_eq!(
        s.cas(
            "status",
            b"late write by s1".to_vec(),
            revision,
            &guard,
            None
        )
        .await
        .unwrap(),
        CasOutcome::Conflict
    );
    assert_eq!(s.get("status").await.unwrap().unwrap().value, b"by s1");

    // A guard that the key is absent.
    let absent = [Guard::CreateRevision {
        key: "nobody".into(),
        revision: 0,
    }];
    assert!(matches!(
        s.cas("status", b"x".to_vec(), revision, &absent, None)
            .await
            .unwrap(),
        CasOutcome::Written { .. }
    ));
}

#[tokio::test]
async fn delete_if_and_delete_if_lease() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");

    let r1 = s.put("k", b"1".to_vec(), None).await.unwrap();
    let r2 = s.put("k", b"2".to_vec(), None).await.unwrap();
    assert!(!s.delete_if("k", r1).await.unwrap());
    assert!(s.get("k").await.unwrap().is_some());
    assert!(s.delete_if("k", r2).await.unwrap());
    assert!(s.get("k").await.unwrap().is_none());
    assert!(!s.delete_if("k", r2).await.unwrap());

    let mine = s.grant(std::time::Duration::from_secs(30)).await.unwrap();
    let theirs = s.grant(std::time::Duration::from_secs(30)).await.unwrap();
    s.put("primary", b"me".to_vec(), Some(mine)).await.unwrap();
    assert_eq!(s.get("primary").await.unwrap().unwrap().lease, mine);
    assert!(!s.delete_if_lease("primary", theirs).await.unwrap());
    assert!(s.get("primary").await.unwrap().is_some());
    assert!(s.delete_if_lease("primary", mine).await.unwrap());
    assert!(s.get("primary").await.unwrap().is_none());
    assert!(!s.delete_if_lease("primary", mine).await.unwrap());
}
