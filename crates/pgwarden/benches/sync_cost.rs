//! `cargo bench -p pgwarden --bench sync_cost`: what strict synchronous
//! replication costs in throughput.
//!
//! One three-node cluster (`pgbench -i -s 10` on its primary); pgbench TPC-B
//! with 8 clients (`-j 2`) directly against the primary for
//! `PGWARDEN_BENCH_SECONDS` (default 15) with `sync_mode = 'off'`, then
//! `ctl spec set sync_mode=strict`, and once the primary has a synchronous
//! standby in `synchronous_standby_names` the same run again. Prints the TPS
//! and mean latency of each and the ratio. Run as root, like the end-to-end
//! tests.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use support::*;

const CLIENTS: u32 = 8;

async fn measure(seconds: u64) -> (PgbenchRun, PgbenchRun, String) {
    // Always the default spec (sync_mode off), whatever PGWARDEN_BENCH_SYNC_MODE says.
    let bench = Bench::start_with(common::TestCluster::initialised().await).await;
    let primary = bench.primary_port();
    pgbench_init(primary, 10).await;
    wait_replayed(&bench).await;
    // Warm the caches once so the first measured run is not the cold one.
    pgbench(primary, false, CLIENTS, 5.min(seconds)).await;
    let off = pgbench(primary, false, CLIENTS, seconds).await;
    eprintln!(
        "sync_mode off: {:.0} tps, {:.3} ms",
        off.tps, off.latency_ms
    );

    bench.ctl_ok(&["spec", "set", "sync_mode=strict"]);
    let cluster = &bench.cluster;
    let standby = common::wait_for("a synchronous standby in ctl status", CONVERGE, || {
        cluster.status()["sync_standbys"]
            .as_array()?
            .first()?
            .as_str()
            .map(str::to_string)
    })
    .await;
    // The commit cost starts when the primary itself waits for the standby.
    common::poll(
        "synchronous_standby_names on the primary",
        CONVERGE,
        || async move {
            let names = common::query_strings(primary, "SHOW synchronous_standby_names")
                .await
                .ok()?;
            names.first().is_some_and(|n| !n.is_empty()).then_some(())
        },
    )
    .await;
    let strict = pgbench(primary, false, CLIENTS, seconds).await;
    eprintln!(
        "sync_mode strict: {:.0} tps, {:.3} ms",
        strict.tps, strict.latency_ms
    );
    (off, strict, standby)
}

fn main() {
    let seconds = env_u64("PGWARDEN_BENCH_SECONDS", 15);
    let (off, strict, standby) = runtime().block_on(measure(seconds));
    println!(
        "sync cost: pgbench TPC-B -s 10, {CLIENTS} clients, -j 2, {seconds} s per run, directly to the primary"
    );
    print_table(&[
        vec![
            "sync_mode".to_string(),
            "TPS".into(),
            "latency ms".into(),
            "TPS / off".into(),
        ],
        vec![
            "off".into(),
            format!("{:.0}", off.tps),
            format!("{:.3}", off.latency_ms),
            "1.00".into(),
        ],
        vec![
            format!("strict (sync standby {standby})"),
            format!("{:.0}", strict.tps),
            format!("{:.3}", strict.latency_ms),
            format!("{:.2}", strict.tps / off.tps),
        ],
    ]);
}
