//! The etcd launcher used by the demo and end-to-end tests.

mod common;

use std::path::Path;

use common::{start_etcd, store};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use pgwarden_store::etcd_server::{free_port, EtcdServer, EtcdServerError};

fn alive(pid: u32) -> bool {
    kill(
        Pid::from_raw(i32::try_from(pid).expect("pid fits i32")),
        None,
    )
    .is_ok()
}

#[tokio::test]
async fn start_stop_restart_keeps_data_and_drop_stops_the_process() {
    let mut etcd = start_etcd().await;
    let endpoint = etcd.server.endpoint();
    assert!(endpoint.starts_with("http://127.0.0.1:"));
    let s = store(std::slice::from_ref(&endpoint), "c");
    s.put("k", b"v".to_vec(), None).await.unwrap();

    let first_pid = etcd.server.pid();
    assert!(alive(first_pid));
    etcd.server.stop();
    etcd.server.stop(); // idempotent
    assert!(!alive(first_pid));

    etcd.server.restart().await.unwrap();
    assert_ne!(etcd.server.pid(), first_pid);
    assert_eq!(etcd.server.endpoint(), endpoint);
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"v");
    assert!(etcd.dir.path().join("etcd.log").exists());

    let pid = etcd.server.pid();
    drop(etcd);
    assert!(!alive(pid));
}

#[tokio::test]
async fn a_missing_binary_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = EtcdServer::start_with(
        Path::new("/nonexistent/etcd"),
        dir.path(),
        free_port(),
        free_port(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EtcdServerError::Spawn { .. }), "{err:?}");
    assert_eq!(
        EtcdServerError::NotInstalled.to_string(),
        "etcd not found on PATH: install it with `apt-get install etcd-server`"
    );
}

#[tokio::test]
async fn a_busy_port_is_reported() {
    let etcd = start_etcd().await;
    let busy: u16 = etcd
        .server
        .endpoint()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = EtcdServer::start(dir.path(), busy, free_port())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EtcdServerError::PortInUse { port } if port == busy),
        "{err:?}"
    );
}
