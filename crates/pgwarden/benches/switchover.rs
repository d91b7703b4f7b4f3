//! `cargo bench -p pgwarden --bench switchover`: the write gap of a planned
//! switchover, as a client going through the proxy sees it.
//!
//! One three-node cluster with a proxy; a client inserts unique rows through
//! the proxy back to back, reconnecting after any error. Then
//! `PGWARDEN_BENCH_SWITCHOVERS` (default 5) switchovers, each with
//! `ctl switchover --to NEXT --yes` where NEXT follows the current primary in
//! the order k1, k2, k3 (so the role moves around all three nodes), every
//! standby streaming on the new timeline before the next one. With
//! `PGWARDEN_BENCH_SYNC_MODE=strict` (or `on`) the cluster runs in that mode
//! and NEXT is the synchronous standby, the only node it may promote.
//!
//! A switchover's gap is the longest time between two acknowledged writes
//! from the moment ctl is started until the first write the new primary
//! acknowledged. Prints each gap and the median, minimum and maximum; then
//! checks that every acknowledged write is on the final primary (that is
//! correctness, so it is asserted). Run as root, like the end-to-end tests.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use support::*;

/// What one switchover cost.
struct Switchover {
    from: String,
    to: String,
    gap: Duration,
    /// How long `ctl switchover` ran, from start to "done".
    ctl: Duration,
    /// From "done" until every standby is on the new timeline.
    settled: Duration,
}

/// The node after `from` in the order k1, k2, k3; in a synchronous mode the
/// synchronous standby instead, the only node a switchover may promote.
async fn next_target(bench: &Bench, from: &str) -> String {
    if std::env::var("PGWARDEN_BENCH_SYNC_MODE").is_ok_and(|m| m != "off") {
        // Right after a promotion the promotable set is the union of the old
        // and the new synchronous standbys, and only its most advanced member
        // may be promoted; wait until it is down to the one standby the
        // default spec keeps synchronous.
        return common::wait_for("a single synchronous standby", CONVERGE, || {
            let s = bench.cluster.status();
            match s["sync_standbys"].as_array()?.as_slice() {
                [only] => only.as_str().filter(|u| *u != from).map(str::to_string),
                _ => None,
            }
        })
        .await;
    }
    let i = KEEPERS.iter().position(|k| *k == from).unwrap();
    KEEPERS[(i + 1) % KEEPERS.len()].to_string()
}

async fn measure(count: usize) -> (Vec<Switchover>, usize, u64) {
    let mut bench = Bench::start().await;
    let writer = Writer::start(bench.primary_port(), bench.proxy_port).await;
    wait_settled(&bench.cluster, &bench.primary).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut done = Vec::new();
    for _ in 0..count {
        let from = bench.primary.clone();
        let next = next_target(&bench, &from).await;
        let started = Instant::now();
        let out =
            tokio::task::block_in_place(|| bench.ctl_ok(&["switchover", "--to", &next, "--yes"]));
        let returned = Instant::now();
        assert!(
            out.contains(&format!("switchover done: {next} is the primary")),
            "unexpected ctl output: {out}"
        );
        let resumed = writer
            .first_ack_from(
                bench.cluster.port_of(&next),
                started,
                Duration::from_secs(60),
            )
            .await;
        let gap = longest_gap(&writer.ack_times(), started, resumed);
        println!(
            "switchover {} {from} -> {next}: write gap {} (ctl switchover ran {})",
            done.len() + 1,
            secs(gap),
            secs(returned - started)
        );
        done.push(Switchover {
            from,
            to: next.clone(),
            gap,
            ctl: returned - started,
            settled: Duration::ZERO,
        });
        bench.primary = next.clone();
        // Both standbys stream from the new primary again before the next
        // switchover starts (a standby left on the old timeline is refused
        // as a target).
        let settled = wait_settled(&bench.cluster, &next).await;
        println!(
            "  every standby on the new timeline {} after ctl returned",
            secs(settled - returned)
        );
        done.last_mut().unwrap().settled = settled - returned;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, indeterminate) = writer.finish().await;
    let on_primary = written_rows(bench.primary_port()).await;
    let lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| !on_primary.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes are not on the final primary {}: {lost:?}",
        lost.len(),
        bench.primary
    );
    (done, acked.len(), indeterminate)
}

fn main() {
    let count = env_u64("PGWARDEN_BENCH_SWITCHOVERS", 5) as usize;
    assert!(count > 0, "PGWARDEN_BENCH_SWITCHOVERS must be at least 1");
    let (switchovers, acked, indeterminate) = runtime().block_on(measure(count));
    let mut table = vec![vec![
        "#".to_string(),
        "from".into(),
        "to".into(),
        "write gap".into(),
        "ctl ran".into(),
        "standbys on new timeline after".into(),
    ]];
    for (i, s) in switchovers.iter().enumerate() {
        table.push(vec![
            (i + 1).to_string(),
            s.from.clone(),
            s.to.clone(),
            secs(s.gap),
            secs(s.ctl),
            secs(s.settled),
        ]);
    }
    println!("switchover write gap through the proxy");
    print_table(&table);
    let gaps: Vec<Duration> = switchovers.iter().map(|s| s.gap).collect();
    let (median, min, max) = summary(&gaps);
    println!(
        "switchover write gap over {count} switchovers: median {}, min {}, max {}",
        secs(median),
        secs(min),
        secs(max)
    );
    println!(
        "acknowledged writes: {acked}, lost: 0, indeterminate (failed or timed out, not counted as acknowledged): {indeterminate}"
    );
}
