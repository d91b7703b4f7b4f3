//! Endpoint failover: operations keep succeeding with a dead endpoint in the
//! list, and fail clearly when every endpoint is dead.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::{dead_endpoint, start_etcd, store};
use pgwarden_store::{CasOutcome, Store, StoreError, StoreOptions};

/// 50 consecutive operations, a mix of get, put and compare-and-swap.
async fn fifty_operations(s: &Store) {
    let mut revision = 0;
    for i in 0..50 {
        match i % 3 {
            0 => {
                s.put("counter", i.to_string().into_bytes(), None)
                    .await
                    .unwrap_or_else(|e| panic!("put #{i}: {e:?}"));
            }
            1 => {
                let got = s
                    .get("counter")
                    .await
                    .unwrap_or_else(|e| panic!("get #{i}: {e:?}"))
                    .expect("counter exists");
                revision = got.mod_revision;
            }
            _ => {
                let outcome = s
                    .cas("counter", b"cas".to_vec(), revision, &[], None)
                    .await
                    .unwrap_or_else(|e| panic!("cas #{i}: {e:?}"));
                assert!(matches!(outcome, CasOutcome::Written { .. }), "cas #{i}");
            }
        }
    }
}

#[tokio::test]
async fn dead_endpoint_first_then_live() {
    let etcd = start_etcd().await;
    let s = store(&[dead_endpoint(), etcd.server.endpoint()], "c");
    fifty_operations(&s).await;
}

#[tokio::test]
async fn live_endpoint_first_then_dead() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint(), dead_endpoint()], "c");
    fifty_operations(&s).await;
}

#[tokio::test]
async fn operations_move_to_the_survivor_when_an_endpoint_dies() {
    let mut first = start_etcd().await;
    // Two independent single-member etcds stand in for two members here:
    // what is tested is that requests move, not replication.
    let second = start_etcd().await;
    let s = store(&[first.server.endpoint(), second.server.endpoint()], "c");
    s.put("k", b"on first".to_vec(), None).await.unwrap();
    first.server.kill();
    let started = Instant::now();
    for _ in 0..10 {
        s.put("k", b"on second".to_vec(), None).await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let direct = store(&[second.server.endpoint()], "c");
    assert_eq!(direct.get("k").await.unwrap().unwrap().value, b"on second");
}

#[tokio::test]
async fn only_dead_endpoints_is_unreachable() {
    let dead = [dead_endpoint(), dead_endpoint()];
    let s = store(&dead, "c");
    let err = s.get("status").await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.starts_with("cannot reach etcd at"), "{shown}");
    assert_eq!(
        shown,
        format!(
            "cannot reach etcd at {},{}: connection refused; check that etcd runs there and that --store-endpoints names its --advertise-client-urls",
            dead[0], dead[1]
        )
    );

    let err = s.put("status", b"x".to_vec(), None).await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    let err = s.grant(Duration::from_secs(5)).await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
}

#[test]
fn new_never_connects_but_refuses_malformed_endpoints() {
    // No runtime, nothing listening: still fine.
    Store::new(
        &["10.255.255.1:2379".into(), "http://127.0.0.1:1".into()],
        "c",
        StoreOptions::default(),
    )
    .unwrap();

    let err = Store::new(
        &["http://etcd:notaport".into()],
        "c",
        StoreOptions::default(),
    )
    .unwrap_err();
    match &err {
        StoreError::InvalidEndpoint { value } => assert_eq!(value, "http://etcd:notaport"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("http://etcd:notaport"));
    assert!(!err.is_unreachable());
}

#[tokio::test]
async fn silent_endpoint_times_out_and_the_next_one_serves() {
    let etcd = start_etcd().await;
    let target = etcd
        .server
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    proxy.set(Mode::Blackhole);

    let silent_only = store(&[proxy.endpoint()], "c");
    let err = silent_only.get("k").await.unwrap_err();
    assert!(matches!(err, StoreError::Timeout { .. }), "{err:?}");
    assert!(err.is_unreachable());
    assert!(err.to_string().starts_with("cannot reach etcd at"), "{err}");

    let s = store(&[proxy.endpoint(), etcd.server.endpoint()], "c");
    let started = Instant::now();
    s.put("k", b"v".to_vec(), None).await.unwrap();
    // One request timeout (1 s) on the silent endpoint, then the live one.
    assert!(started.elapsed() < Duration::from_secs(2));
    // Later operations start at the endpoint that worked.
    let started = Instant::now();
    for _ in 0..10 {
        s.get("k").await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_millis(900));
}
