//! Shared helpers: a throwaway etcd per test and a store over it.
#![allow(dead_code)]

pub mod proxy;

use std::time::Duration;

use pgwarden_store::etcd_server::{free_port, EtcdServer};
use pgwarden_store::{Store, StoreOptions};
use tempfile::TempDir;

/// A running etcd and the directory holding its data (removed on drop).
pub struct TestEtcd {
    pub server: EtcdServer,
    pub dir: TempDir,
}

/// Shows the crate's logs in test output (`--nocapture`), once per binary.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "pgwarden_store=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn start_etcd() -> TestEtcd {
    init_tracing();
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = EtcdServer::start_on_free_ports(dir.path())
        .await
        .expect("start etcd");
    TestEtcd { server, dir }
}

/// Short timeouts so that failure cases stay fast.
pub fn fast_options() -> StoreOptions {
    StoreOptions {
        request_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        ..StoreOptions::default()
    }
}

pub fn store(endpoints: &[String], cluster: &str) -> Store {
    Store::new(endpoints, cluster, fast_options()).expect("valid endpoints")
}

/// An endpoint nothing listens on.
pub fn dead_endpoint() -> String {
    format!("http://127.0.0.1:{}", free_port())
}
