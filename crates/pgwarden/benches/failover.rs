//! `cargo bench -p pgwarden --bench failover`: host-loss failover time.
//!
//! Each run brings up a fresh three-node cluster (real etcd, postgres and
//! keepers), SIGKILLs the primary's keeper and its postgres process group at
//! once, and measures the time until a standby accepts a write (polled
//! directly every 50 ms). Prints every run and the median, minimum and
//! maximum. `PGWARDEN_BENCH_RUNS` sets the number of runs (default 5).
//! Run as root, like the end-to-end tests.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

async fn one_run() -> Duration {
    let mut c = TestCluster::initialised().await;
    c.spawn_sentinel("sentinel1");
    c.spawn_keepers(&["k1", "k2", "k3"]);
    let status = c.wait_converged(2, Duration::from_secs(120)).await;
    let primary = status["primary"].as_str().unwrap().to_string();
    let p = connect(c.port_of(&primary)).await.unwrap();
    p.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // Let the standbys catch up and the cluster settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    c.kill_host(&primary);
    let others: Vec<u16> = c
        .keepers
        .iter()
        .filter(|(u, _)| **u != primary)
        .map(|(_, k)| k.pg_port)
        .collect();
    loop {
        for port in &others {
            if let Ok(Ok(cl)) =
                tokio::time::timeout(Duration::from_millis(200), connect(*port)).await
            {
                if cl.batch_execute("INSERT INTO t VALUES (2)").await.is_ok() {
                    return t0.elapsed();
                }
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no failover within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn main() {
    let runs: usize = std::env::var("PGWARDEN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut times = Vec::new();
    for i in 1..=runs {
        let t = rt.block_on(one_run());
        println!(
            "run {i}: host-loss failover, first write accepted after {:.2} s",
            t.as_secs_f64()
        );
        times.push(t);
    }
    times.sort();
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "host-loss failover over {runs} runs: median {:.2} s, min {:.2} s, max {:.2} s (default spec: primary_lease_ttl 3s)",
        secs(times[times.len() / 2]),
        secs(times[0]),
        secs(times[times.len() - 1])
    );
}
