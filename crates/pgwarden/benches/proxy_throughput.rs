//! `cargo bench -p pgwarden --bench proxy_throughput`: what the proxy costs.
//!
//! One three-node cluster (`pgbench -i -s 10` on its primary), then pgbench
//! select-only (`-S`) and TPC-B (the default script), 8 and 64 clients
//! (`-j 2`), each for `PGWARDEN_BENCH_SECONDS` (default 15) three ways side
//! by side: directly to the primary, through `pgwarden proxy`, and through
//! haproxy in TCP mode. The order of the three rotates from one workload to
//! the next, so that no path always runs first. Prints TPS, mean
//! latency, the ratio of TPS to direct, and the CPU time the proxy process
//! used during the run. Run as root, like the end-to-end tests.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use support::*;

/// One route the clients can take to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Pgwarden,
    Haproxy,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Pgwarden => "pgwarden proxy",
            Path::Haproxy => "haproxy (tcp)",
        }
    }
}

/// The order of the first workload; each next workload starts one further
/// along, so that no path always runs first (on the coldest cache) or last.
const ORDER: [Path; 3] = [Path::Direct, Path::Pgwarden, Path::Haproxy];

struct Row {
    workload: String,
    path: Path,
    run: PgbenchRun,
    /// CPU seconds the proxy process used during the run (none for direct).
    proxy_cpu: Option<f64>,
}

async fn measure() -> Vec<Row> {
    let seconds = env_u64("PGWARDEN_BENCH_SECONDS", 15);
    let bench = Bench::start().await;
    let primary = bench.primary_port();
    pgbench_init(primary, 10).await;
    wait_replayed(&bench).await;
    let haproxy = Haproxy::start(bench.cluster.path(), primary).await;
    let proxy_pid = bench.cluster.pid(PROXY);
    let ticks = clock_ticks_per_second();
    // Warm the caches once so the first measured run is not the cold one.
    pgbench(primary, true, 8, 5.min(seconds)).await;

    let mut rows = Vec::new();
    let mut turn = 0;
    for select_only in [true, false] {
        for clients in [8, 64] {
            let workload = format!(
                "{} {clients} clients",
                if select_only { "select-only" } else { "TPC-B" }
            );
            let mut order = ORDER;
            order.rotate_left(turn % ORDER.len());
            turn += 1;
            for path in order {
                let (port, pid) = match path {
                    Path::Direct => (primary, None),
                    Path::Pgwarden => (bench.proxy_port, Some(proxy_pid)),
                    Path::Haproxy => (haproxy.port, Some(haproxy.pid())),
                };
                let before = pid.map(cpu_ticks);
                let run = pgbench(port, select_only, clients, seconds).await;
                let proxy_cpu = pid
                    .zip(before)
                    .map(|(pid, before)| (cpu_ticks(pid) - before) as f64 / ticks);
                eprintln!(
                    "{workload}, {}: {:.0} tps, {:.3} ms",
                    path.name(),
                    run.tps,
                    run.latency_ms
                );
                rows.push(Row {
                    workload: workload.clone(),
                    path,
                    run,
                    proxy_cpu,
                });
            }
        }
    }
    let proxy_rss = proc_status_kib(proxy_pid, "VmRSS");
    let haproxy_rss = proc_status_kib(haproxy.pid(), "VmRSS");
    println!(
        "after the runs: pgwarden proxy VmRSS {:.1} MB, haproxy VmRSS {:.1} MB",
        proxy_rss as f64 / 1024.0,
        haproxy_rss as f64 / 1024.0
    );
    drop(haproxy);
    rows
}

fn main() {
    let seconds = env_u64("PGWARDEN_BENCH_SECONDS", 15);
    let rows = runtime().block_on(measure());
    let mut table = vec![vec![
        "workload".to_string(),
        "path".into(),
        "TPS".into(),
        "latency ms".into(),
        "TPS / direct".into(),
        "proxy CPU s".into(),
    ]];
    let mut ratios = Vec::new();
    for row in &rows {
        let direct = rows
            .iter()
            .find(|r| r.workload == row.workload && r.path == Path::Direct)
            .unwrap();
        let ratio = row.run.tps / direct.run.tps;
        if row.path != Path::Direct {
            ratios.push((row.workload.clone(), row.path, ratio));
        }
        table.push(vec![
            row.workload.clone(),
            row.path.name().into(),
            format!("{:.0}", row.run.tps),
            format!("{:.3}", row.run.latency_ms),
            format!("{ratio:.2}"),
            row.proxy_cpu
                .map(|s| format!("{s:.1}"))
                .unwrap_or("-".into()),
        ]);
    }
    println!("proxy throughput: pgbench -s 10, -j 2, {seconds} s per run, everything on this machine's cores");
    print_table(&table);
    for (workload, _, ratio) in ratios.iter().filter(|(_, p, _)| *p == Path::Pgwarden) {
        let haproxy = ratios
            .iter()
            .find(|(w, p, _)| w == workload && *p == Path::Haproxy)
            .map(|(_, _, r)| *r)
            .unwrap();
        println!(
            "{workload}: pgwarden {ratio:.2} of direct, haproxy {haproxy:.2} of direct (pgwarden / haproxy = {:.2})",
            ratio / haproxy
        );
    }
}
