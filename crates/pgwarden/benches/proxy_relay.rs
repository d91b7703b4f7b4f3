//! `cargo bench -p pgwarden --bench proxy_relay`: the proxy's two ways of
//! moving bytes, `--relay copy` (read and write through a buffer) against
//! `--relay splice` (splice(2) through a pipe per direction).
//!
//! One three-node cluster (`pgbench -i -s 10`) with two proxies in front of
//! the same primary, one per relay mode. Two workloads:
//! - small messages: pgbench `-S` at 64 clients (one short query, one row);
//! - bulk: 8 clients each reading 20 000 rows of `pgbench_accounts` (about
//!   2 MB) per query, where the bytes moved dominate.
//!
//! The modes are interleaved, in an order that alternates, for
//! `PGWARDEN_BENCH_ROUNDS` (default 3) rounds of `PGWARDEN_BENCH_SECONDS`
//! (default 15) per run. Prints per workload and mode the median TPS, the
//! proxy's CPU seconds per 1000 queries, and splice / copy of both. Run as
//! root, like the end-to-end tests.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use pgwarden_store::etcd_server::free_port;
use support::*;

/// Rows each bulk query reads.
const BULK_ROWS: u32 = 20_000;
const PROXY_SPLICE: &str = "proxy-splice";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Copy,
    Splice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// `-S`, 64 clients.
    Small,
    /// The bulk script, 8 clients.
    Bulk,
}

impl Workload {
    fn name(self) -> String {
        match self {
            Workload::Small => "-S, 64 clients".into(),
            Workload::Bulk => format!("{BULK_ROWS} rows per query, 8 clients"),
        }
    }
}

struct Row {
    workload: Workload,
    mode: Mode,
    tps: f64,
    /// Proxy CPU seconds per 1000 queries.
    cpu_per_1k: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn measure(rounds: u64, seconds: u64) -> Vec<Row> {
    let mut bench = Bench::start_custom("", &[]).await;
    let primary = bench.primary_port();
    pgbench_init(primary, 10).await;
    wait_replayed(&bench).await;
    let splice_port = free_port();
    bench.cluster.spawn_proxy_with(
        PROXY_SPLICE,
        splice_port,
        free_port(),
        &["--relay", "splice"],
    );
    // Wait for the second proxy the way the first was waited for.
    let copy_port = bench.proxy_port;
    bench.proxy_port = splice_port;
    bench.wait_proxy_routes().await;
    bench.proxy_port = copy_port;
    let script = bench.cluster.path().join("bulk.sql");
    std::fs::write(
        &script,
        format!("SELECT * FROM pgbench_accounts WHERE aid <= {BULK_ROWS};\n"),
    )
    .unwrap();
    let ticks = clock_ticks_per_second();
    let pids = [
        (Mode::Copy, copy_port, bench.cluster.pid(PROXY)),
        (Mode::Splice, splice_port, bench.cluster.pid(PROXY_SPLICE)),
    ];
    // Warm the caches once.
    pgbench(primary, true, 8, 5.min(seconds)).await;

    let mut rows = Vec::new();
    let mut turn = 0;
    for round in 1..=rounds {
        for workload in [Workload::Small, Workload::Bulk] {
            let mut order = pids;
            order.rotate_left(turn % 2);
            turn += 1;
            for (mode, port, pid) in order {
                let before = cpu_ticks(pid);
                let run = match workload {
                    Workload::Small => pgbench(port, true, 64, seconds).await,
                    Workload::Bulk => pgbench_script(port, &script, 8, seconds).await,
                };
                let cpu = (cpu_ticks(pid) - before) as f64 / ticks;
                let queries = run.tps * seconds as f64;
                eprintln!(
                    "round {round}, {}, {mode:?}: {:.1} tps, proxy CPU {cpu:.2} s",
                    workload.name(),
                    run.tps
                );
                rows.push(Row {
                    workload,
                    mode,
                    tps: run.tps,
                    cpu_per_1k: cpu / queries * 1000.0,
                });
            }
        }
    }
    rows
}

fn main() {
    let seconds = env_u64("PGWARDEN_BENCH_SECONDS", 15);
    let rounds = env_u64("PGWARDEN_BENCH_ROUNDS", 3).max(1);
    let rows = runtime().block_on(measure(rounds, seconds));
    let pick = |workload: Workload, mode: Mode, f: fn(&Row) -> f64| {
        median(
            rows.iter()
                .filter(|r| r.workload == workload && r.mode == mode)
                .map(f)
                .collect(),
        )
    };
    let mut table = vec![vec![
        "workload".to_string(),
        "relay".into(),
        "TPS (median)".into(),
        "proxy CPU s / 1k queries".into(),
    ]];
    let mut ratios = Vec::new();
    for workload in [Workload::Small, Workload::Bulk] {
        for mode in [Mode::Copy, Mode::Splice] {
            table.push(vec![
                workload.name(),
                format!("{mode:?}").to_lowercase(),
                format!("{:.1}", pick(workload, mode, |r| r.tps)),
                format!("{:.3}", pick(workload, mode, |r| r.cpu_per_1k)),
            ]);
        }
        ratios.push(format!(
            "{}: splice / copy TPS = {:.2}, CPU per query {:.2}",
            workload.name(),
            pick(workload, Mode::Splice, |r| r.tps) / pick(workload, Mode::Copy, |r| r.tps),
            pick(workload, Mode::Splice, |r| r.cpu_per_1k)
                / pick(workload, Mode::Copy, |r| r.cpu_per_1k)
        ));
    }
    println!(
        "proxy relay modes: pgbench -s 10, {seconds} s per run, {rounds} interleaved rounds, medians"
    );
    print_table(&table);
    for line in ratios {
        println!("{line}");
    }
}
