//! watch_prefix against a real etcd, through restarts, compaction and a
//! silent network.

mod common;

use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::{start_etcd, store};
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// The next notification, within `secs`.
async fn next(rx: &mut Receiver<i64>, secs: u64) -> i64 {
    timeout(Duration::from_secs(secs), rx.recv())
        .await
        .expect("a notification in time")
        .expect("the watch never stops")
}

/// Waits for a notification at or after `revision`.
async fn until(rx: &mut Receiver<i64>, revision: i64, secs: u64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let seen = timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no notification for revision {revision}"))
            .expect("the watch never stops");
        if seen >= revision {
            return seen;
        }
    }
}

async fn drain(rx: &mut Receiver<i64>) {
    while timeout(Duration::from_millis(300), rx.recv()).await.is_ok() {}
}

#[tokio::test]
async fn watch_notifies_on_changes_under_its_prefix_only() {
    let etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");
    let cancel = CancellationToken::new();
    let mut rx = s.watch_prefix("keepers/", cancel.clone());

    // Once when established.
    next(&mut rx, 5).await;

    let rev = s.put("keepers/a", b"1".to_vec(), None).await.unwrap();
    assert_eq!(next(&mut rx, 5).await, rev);

    s.put("status", b"x".to_vec(), None).await.unwrap();
    assert!(
        timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "notified for a key outside the prefix"
    );

    // Idle for longer than the request timeout: the stream must survive.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.delete("keepers/a").await.unwrap();
    next(&mut rx, 5).await;

    cancel.cancel();
    assert_eq!(
        timeout(Duration::from_secs(2), rx.recv()).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn watch_resumes_after_etcd_is_killed_and_restarted() {
    let mut etcd = start_etcd().await;
    let s = store(&[etcd.server.endpoint()], "c");
    let mut rx = s.watch_prefix("", CancellationToken::new());
    next(&mut rx, 5).await;

    for round in 0..2 {
        etcd.server.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        etcd.server.restart().await.unwrap();
        drain(&mut rx).await;

        let rev = s
            .put("status", format!("round {round}").into_bytes(), None)
            .await
            .unwrap();
        until(&mut rx, rev, 10).await;
    }
}

#[tokio::test]
async fn watch_notifies_when_its_resume_revision_was_compacted() {
    let etcd = start_etcd().await;
    let target = etcd
        .server
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let through_proxy = store(&[proxy.endpoint()], "c");
    let direct = store(&[etcd.server.endpoint()], "c");

    let mut rx = through_proxy.watch_prefix("", CancellationToken::new());
    next(&mut rx, 5).await;
    let first = direct.put("status", b"1".to_vec(), None).await.unwrap();
    assert_eq!(next(&mut rx, 5).await, first);

    // Cut the watch off, change and compact history it has not seen.
    proxy.set(Mode::Refuse);
    tokio::time::sleep(Duration::from_millis(300)).await;
    direct.put("status", b"2".to_vec(), None).await.unwrap();
    let last = direct.put("status", b"3".to_vec(), None).await.unwrap();
    let mut client = etcd_client::Client::connect([etcd.server.endpoint()], None)
        .await
        .unwrap();
    client.compact(last, None).await.unwrap();

    proxy.set(Mode::Forward);
    until(&mut rx, last, 10).await;

    // And it keeps watching afterwards.
    let rev = direct.put("status", b"4".to_vec(), None).await.unwrap();
    until(&mut rx, rev, 5).await;
}

#[tokio::test]
async fn watch_leaves_a_silent_endpoint_for_a_live_one() {
    let etcd = start_etcd().await;
    let target = etcd
        .server
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let s = store(&[proxy.endpoint(), etcd.server.endpoint()], "c");
    let direct = store(&[etcd.server.endpoint()], "c");

    let mut rx = s.watch_prefix("", CancellationToken::new());
    next(&mut rx, 5).await;

    // The proxy's host "drops packets": no error, just silence.
    proxy.set(Mode::Blackhole);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rev = direct.put("status", b"x".to_vec(), None).await.unwrap();
    // Detected by the progress probe (5 s + request timeout), then resumed
    // on the live endpoint from the last revision seen.
    until(&mut rx, rev, 12).await;
}
