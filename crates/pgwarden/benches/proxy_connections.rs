//! `cargo bench -p pgwarden --bench proxy_connections`: the proxy with
//! thousands of connections.
//!
//! One three-node cluster with `max_connections = 2300` and a proxy allowed
//! 3000 connections. `PGWARDEN_BENCH_CONNECTIONS` (default 2000):
//!
//! 1. silent TCP connections, opened as fast as one task can, held, then
//!    closed: the proxy's accept rate on its own (since issue 20 they never
//!    reach postgres), and that postgres saw none of them;
//! 2. that many postgres sessions through the proxy (32 opening at a time):
//!    how fast they open, and the proxy's RSS per open session;
//! 3. a switchover with all of them open and idle: the time from the
//!    generation change in etcd (polled every 2 ms) to the moment the last
//!    of the sessions was closed, and how many of them the proxy cut itself
//!    (its `cut` counter; the others were closed by the old primary's
//!    postgres stopping first).
//!
//! Run as root, like the end-to-end tests.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::SU_PASSWORD;
use pgwarden_core::keys;
use pgwarden_store::{Store, StoreOptions};
use support::*;
use tokio::sync::Semaphore;

/// Sessions opening at once.
const OPENING: usize = 32;

/// A session through `port`; resolves, when awaited, to when its
/// connection closed.
async fn session(port: u16) -> (tokio_postgres::Client, tokio::task::JoinHandle<Instant>) {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(SU_PASSWORD)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(30))
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("open a session through port {port}: {e}"));
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    (client, closed)
}

fn generation(status: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(status).expect("status is JSON");
    v["generation"].as_u64().expect("status has a generation")
}

async fn metric(port: u16, name: &str) -> f64 {
    let response = common::http(port, "GET", "/metrics", &[]).await.unwrap();
    common::parse_prometheus(&response.body)
        .iter()
        .filter(|(k, _)| k.starts_with(name))
        .map(|(_, v)| v)
        .sum()
}

async fn measure(n: usize) {
    let metrics_port = pgwarden_store::etcd_server::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let bench = Bench::start_custom(
        "[pg_parameters]\nmax_connections = '2300'\n",
        &["--max-connections", "3000", "--metrics-listen", &metrics],
    )
    .await;
    let proxy = bench.cluster.pid(PROXY);
    let port = bench.proxy_port;
    wait_settled(&bench.cluster, &bench.primary).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = proc_status_kib(proxy, "VmRSS");
    let backends = || async {
        common::query_strings(
            bench.primary_port(),
            "SELECT count(*)::text FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
        .await
        .unwrap()
        .remove(0)
        .parse::<i64>()
        .unwrap()
    };
    let backends_before = backends().await;

    // 1. Silent connections: the accept rate alone.
    let started = Instant::now();
    let mut silent = Vec::with_capacity(n);
    for _ in 0..n {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    let accepted = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = metric(metrics_port, "pgwarden_proxy_connections_active").await;
    let silent_rss = proc_status_kib(proxy, "VmRSS");
    let backends_silent = backends().await - backends_before;
    drop(silent);
    println!(
        "{n} silent connections accepted in {} ({:.0} per second); {held} held open by the proxy, \
         {backends_silent} postgres backends more than before; proxy VmRSS {:.1} MB (idle {:.1} MB)",
        secs(accepted),
        n as f64 / accepted.as_secs_f64(),
        silent_rss as f64 / 1024.0,
        idle_rss as f64 / 1024.0
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. Real sessions.
    let opening = Arc::new(Semaphore::new(OPENING));
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let opening = opening.clone();
            tokio::spawn(async move {
                let _turn = opening.acquire_owned().await.unwrap();
                session(port).await
            })
        })
        .collect();
    let mut sessions = Vec::with_capacity(n);
    for t in tasks {
        sessions.push(t.await.unwrap());
    }
    let opened = started.elapsed();
    for (client, _) in sessions.iter().take(20) {
        client.simple_query("SELECT 1").await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open_rss = proc_status_kib(proxy, "VmRSS");
    let per_session = (open_rss.saturating_sub(idle_rss)) as f64 / n as f64;
    println!(
        "{n} sessions opened through the proxy in {} ({:.0} per second, {OPENING} at a time); \
         proxy VmRSS {:.1} MB, {per_session:.1} KiB per session over idle",
        secs(opened),
        n as f64 / opened.as_secs_f64(),
        open_rss as f64 / 1024.0
    );

    // 3. A switchover with every session open.
    let store = Store::new(
        &[bench.cluster.etcd.endpoint()],
        &bench.cluster.name,
        StoreOptions::default(),
    )
    .unwrap();
    let before = generation(&store.get(keys::STATUS).await.unwrap().unwrap().value);
    let watcher = tokio::spawn(async move {
        loop {
            if let Ok(Some(kv)) = store.get(keys::STATUS).await {
                if generation(&kv.value) > before {
                    return Instant::now();
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let cut_before = metric(metrics_port, "pgwarden_proxy_connections_cut_total").await;
    let next = KEEPERS
        .iter()
        .find(|u| **u != bench.primary)
        .unwrap()
        .to_string();
    let started = Instant::now();
    tokio::task::block_in_place(|| bench.ctl_ok(&["switchover", "--to", &next, "--yes"]));
    let changed = watcher.await.unwrap();
    let mut last = changed;
    let mut first: Option<Instant> = None;
    let mut before_change = 0;
    for (client, closed) in sessions {
        let at = tokio::time::timeout(Duration::from_secs(60), closed)
            .await
            .expect("every old session is closed")
            .unwrap();
        if at < changed {
            before_change += 1;
        }
        last = last.max(at);
        first = Some(first.map_or(at, |f| f.min(at)));
        drop(client);
    }
    let cut = metric(metrics_port, "pgwarden_proxy_connections_cut_total").await - cut_before;
    println!(
        "switchover to {next} with {n} sessions open: generation changed {} after ctl started; \
         the first old session closed {} and the last {} after the generation change \
         ({before_change} closed before it); the proxy cut {cut} of them itself",
        secs(changed - started),
        secs(first.unwrap_or(changed).saturating_duration_since(changed)),
        secs(last - changed),
    );
}

fn main() {
    let n = env_u64("PGWARDEN_BENCH_CONNECTIONS", 2000) as usize;
    runtime().block_on(measure(n));
}
