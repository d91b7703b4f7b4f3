//! `cargo bench -p pgwarden --bench failover_proxy`: host-loss failover as a
//! client going through the proxy sees it.
//!
//! The `failover` benchmark polls the standbys directly; this one measures
//! what DESIGN.md's target names: the time until a write is accepted
//! *through the proxy*. Each run brings up a fresh three-node cluster with a
//! proxy, starts a client inserting unique rows through the proxy back to
//! back (reconnecting after any error), SIGKILLs the primary's keeper and its
//! postgres process group at once, and measures the time from the kill to the
//! first write the new primary acknowledged through the proxy (the old one
//! may still acknowledge a write or two while the signal lands). It also counts acknowledged
//! writes missing from the new primary: with the default asynchronous
//! replication a host loss may lose the last commits, so that count is a
//! figure here, not a failure (with `PGWARDEN_BENCH_SYNC_MODE=strict` it
//! should be zero). `PGWARDEN_BENCH_RUNS` sets the number of runs (default
//! 5). Run as root, like the end-to-end tests.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

struct Run {
    /// From the kill to the first write acknowledged through the proxy.
    window: Duration,
    /// The longest time without an acknowledgement around the failover.
    gap: Duration,
    lost: usize,
    acked: usize,
}

async fn one_run() -> Run {
    let mut bench = Bench::start().await;
    let writer = Writer::start(bench.primary_port(), bench.proxy_port).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = bench.primary.clone();
    let pid_file = bench.cluster.keepers[&old].data_dir.join("postmaster.pid");
    let postmaster: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let killed = Instant::now();
    kill(Pid::from_raw(-postmaster), Signal::SIGKILL).unwrap();
    bench.cluster.stop(&old, Signal::SIGKILL);
    let new = common::wait_for("a new primary", CONVERGE, || {
        let s = bench.cluster.status();
        let p = s["primary"].as_str()?;
        (p != old).then(|| p.to_string())
    })
    .await;
    let new_port = bench.cluster.port_of(&new);
    let resumed = writer
        .first_ack_from(new_port, killed, Duration::from_secs(120))
        .await;
    let gap = longest_gap(&writer.ack_times(), killed, resumed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, _) = writer.finish().await;
    let rows = written_rows(new_port).await;
    let lost = acked.iter().filter(|id| !rows.contains(id)).count();
    Run {
        window: resumed - killed,
        gap,
        lost,
        acked: acked.len(),
    }
}

fn main() {
    let runs = env_u64("PGWARDEN_BENCH_RUNS", 5) as usize;
    assert!(runs > 0, "PGWARDEN_BENCH_RUNS must be at least 1");
    let rt = runtime();
    let mut table = vec![vec![
        "run".to_string(),
        "kill -> first write via proxy".into(),
        "longest write gap".into(),
        "acked writes".into(),
        "acked writes lost".into(),
    ]];
    let mut windows = Vec::new();
    let mut lost = 0;
    for i in 1..=runs {
        let run = rt.block_on(one_run());
        println!(
            "run {i}: host-loss failover, first write through the proxy after {} ({} acknowledged writes lost)",
            secs(run.window),
            run.lost
        );
        table.push(vec![
            i.to_string(),
            secs(run.window),
            secs(run.gap),
            run.acked.to_string(),
            run.lost.to_string(),
        ]);
        windows.push(run.window);
        lost += run.lost;
    }
    println!("host-loss failover through the proxy");
    print_table(&table);
    let (median, min, max) = summary(&windows);
    let mode = std::env::var("PGWARDEN_BENCH_SYNC_MODE").unwrap_or_else(|_| "off".into());
    println!(
        "host-loss failover through the proxy over {runs} runs: median {}, min {}, max {}; acknowledged writes lost in all: {lost} (sync_mode {mode})",
        secs(median),
        secs(min),
        secs(max)
    );
}
