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
//! should be zero). To tell that price from a wrong choice, it reads how much
//! WAL each surviving standby had received just after the kill and shows
//! whether the promoted one was the most advanced. `PGWARDEN_BENCH_RUNS` sets the number of runs (default
//! 5). Run as root, like the end-to-end tests.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use support::*;

struct Run {
    /// From the kill to the first write acknowledged through the proxy.
    window: Duration,
    /// The longest time without an acknowledgement around the failover.
    gap: Duration,
    lost: usize,
    acked: usize,
    /// What each surviving standby had received when the primary died.
    received: Vec<(String, u64)>,
    /// The node promoted.
    promoted: String,
}

/// Parses a postgres LSN (`X/Y`, hexadecimal) into a byte position.
fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN is X/Y");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

/// How much WAL each node other than `old` has received, read directly.
async fn received(bench: &Bench, old: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for uid in KEEPERS.iter().filter(|u| **u != old) {
        let sql = "SELECT coalesce(pg_last_wal_receive_lsn(), '0/0')::text";
        let lsn = common::query_strings(bench.cluster.port_of(uid), sql)
            .await
            .unwrap_or_else(|e| panic!("read {uid}'s received LSN: {e}"));
        out.push((uid.to_string(), parse_lsn(&lsn[0])));
    }
    out
}

async fn one_run() -> Run {
    let mut bench = Bench::start().await;
    let writer = Writer::start(bench.primary_port(), bench.proxy_port).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = bench.primary.clone();
    let killed = Instant::now();
    bench.cluster.kill_host(&old);
    // Long enough for the standbys' receivers to have noticed, far shorter
    // than any promotion: what they hold now is what a promotion can keep.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = received(&bench, &old).await;
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
        received,
        promoted: new,
    }
}

/// Each surviving standby's received WAL relative to the most advanced, the
/// promoted one starred: `k2* 0 B, k3 -312 B`.
fn describe_received(run: &Run) -> String {
    let most = run.received.iter().map(|(_, l)| *l).max().unwrap_or(0);
    run.received
        .iter()
        .map(|(uid, l)| {
            let star = if *uid == run.promoted { "*" } else { "" };
            match most - l {
                0 => format!("{uid}{star} 0 B"),
                behind => format!("{uid}{star} -{behind} B"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
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
        "WAL received at the kill (promoted *)".into(),
    ]];
    let mut windows = Vec::new();
    let mut lost = 0;
    let mut behind = 0;
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
            describe_received(&run),
        ]);
        windows.push(run.window);
        lost += run.lost;
        let most = run.received.iter().map(|(_, l)| *l).max().unwrap_or(0);
        if run
            .received
            .iter()
            .any(|(uid, l)| *uid == run.promoted && *l < most)
        {
            behind += 1;
        }
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
    println!("runs that promoted a standby holding less WAL than the other: {behind} of {runs}");
}
