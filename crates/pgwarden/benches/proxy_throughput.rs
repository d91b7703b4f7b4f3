//! `cargo bench -p pgwarden --bench proxy_throughput`: what the proxy costs.
//!
//! One three-node cluster (`pgbench -i -s 10` on its primary,
//! `max_connections = 300`), then pgbench select-only (`-S`) and TPC-B (the
//! default script) at 8, 64 and 256 clients (`-j 2`), each for
//! `PGWARDEN_BENCH_SECONDS` (default 15), three ways: directly to the
//! primary, through `pgwarden proxy`, and through haproxy in TCP mode. The
//! three paths are interleaved: every round runs each workload on all three
//! back to back, in an order that rotates, for `PGWARDEN_BENCH_ROUNDS`
//! (default 3) rounds, so that a noisy minute on this shared machine hurts
//! all three alike. Prints per workload and path the median TPS of the
//! rounds (and their range), p50 and p99 latency from pgbench's sampled
//! transaction log and what the proxy adds to them against direct, the CPU
//! seconds the proxy process used per 100 000 transactions, and the
//! pgwarden / haproxy ratio of the medians. With `PGWARDEN_BENCH_PROFILE`
//! set, the first round's `-S` 64-client runs through either proxy are
//! profiled with `perf record -e cpu-clock` and the top symbols printed (the
//! profiler costs those two runs a little). Run as root, like the
//! end-to-end tests.

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

/// The order of the first run; each next one starts one further along, so
/// that no path always runs first (on the coldest cache) or last.
const ORDER: [Path; 3] = [Path::Direct, Path::Pgwarden, Path::Haproxy];
const CLIENTS: [u32; 3] = [8, 64, 256];
/// Enough for 256 pgbench clients plus the harness's own sessions.
const SPEC: &str = "[pg_parameters]\nmax_connections = '300'\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Workload {
    select_only: bool,
    clients: u32,
}

impl Workload {
    fn name(self) -> String {
        format!(
            "{} {} clients",
            if self.select_only { "-S" } else { "TPC-B" },
            self.clients
        )
    }
}

struct Row {
    workload: Workload,
    path: Path,
    detail: PgbenchDetail,
    /// CPU seconds the proxy process used during the run (none for direct).
    proxy_cpu: Option<f64>,
}

/// `perf record` of the proxy process `pid` for most of a run.
fn start_perf(pid: u32, path: Path, seconds: u64) -> (tokio::process::Child, std::path::PathBuf) {
    let out = std::env::temp_dir().join(format!(
        "pgwarden-bench-{}-{}.perf",
        std::process::id(),
        if path == Path::Pgwarden {
            "pgwarden"
        } else {
            "haproxy"
        }
    ));
    let child = tokio::process::Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-g",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(&out)
        .args(["--", "sleep", &seconds.saturating_sub(2).max(1).to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run perf (PGWARDEN_BENCH_PROFILE is set)");
    (child, out)
}

/// Prints where the proxy's CPU went: the top symbols, kernel ones marked [k].
async fn report_perf((mut child, out): (tokio::process::Child, std::path::PathBuf), path: Path) {
    let _ = child.wait().await;
    let report = tokio::process::Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--percent-limit",
            "1",
            "--sort",
            "sym",
            "-g",
            "none",
            "-i",
        ])
        .arg(&out)
        .output()
        .await
        .expect("run perf report");
    println!(
        "where {}'s CPU went during -S 64 clients, round 1 (perf, cpu-clock):",
        path.name()
    );
    for line in String::from_utf8_lossy(&report.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(30)
    {
        println!("  {line}");
    }
    let _ = std::fs::remove_file(&out);
}

async fn measure(rounds: u64, seconds: u64) -> Vec<Row> {
    let profile = std::env::var_os("PGWARDEN_BENCH_PROFILE").is_some();
    let bench = Bench::start_custom(SPEC, &[]).await;
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
    for round in 1..=rounds {
        for select_only in [true, false] {
            for clients in CLIENTS {
                let workload = Workload {
                    select_only,
                    clients,
                };
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
                    let profiled =
                        pid.filter(|_| profile && round == 1 && select_only && clients == 64);
                    let perf = profiled.map(|pid| start_perf(pid, path, seconds));
                    let detail = pgbench_detailed(port, select_only, clients, seconds).await;
                    if let Some(perf) = perf {
                        report_perf(perf, path).await;
                    }
                    let proxy_cpu = pid
                        .zip(before)
                        .map(|(pid, before)| (cpu_ticks(pid) - before) as f64 / ticks);
                    eprintln!(
                        "round {round}, {}, {}: {:.0} tps, p50 {:.3} ms, p99 {:.3} ms (load {})",
                        workload.name(),
                        path.name(),
                        detail.run.tps,
                        detail.p50_ms,
                        detail.p99_ms,
                        load_average()
                    );
                    rows.push(Row {
                        workload,
                        path,
                        detail,
                        proxy_cpu,
                    });
                }
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

/// The 1-minute load average now.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
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

/// Medians over the rounds of one workload on one path.
struct Summary {
    tps: f64,
    tps_min: f64,
    tps_max: f64,
    p50: f64,
    p99: f64,
    /// Proxy CPU seconds per 100 000 transactions.
    cpu_per_100k: Option<f64>,
}

fn summarise(rows: &[Row], workload: Workload, path: Path) -> Summary {
    let mine: Vec<&Row> = rows
        .iter()
        .filter(|r| r.workload == workload && r.path == path)
        .collect();
    let tps: Vec<f64> = mine.iter().map(|r| r.detail.run.tps).collect();
    let cpu: Vec<f64> = mine
        .iter()
        .filter_map(|r| Some(r.proxy_cpu? / r.detail.transactions as f64 * 100_000.0))
        .collect();
    Summary {
        tps: median(tps.clone()),
        tps_min: tps.iter().copied().fold(f64::INFINITY, f64::min),
        tps_max: tps.iter().copied().fold(0.0, f64::max),
        p50: median(mine.iter().map(|r| r.detail.p50_ms).collect()),
        p99: median(mine.iter().map(|r| r.detail.p99_ms).collect()),
        cpu_per_100k: (!cpu.is_empty()).then(|| median(cpu)),
    }
}

fn main() {
    let seconds = env_u64("PGWARDEN_BENCH_SECONDS", 15);
    let rounds = env_u64("PGWARDEN_BENCH_ROUNDS", 3).max(1);
    let rows = runtime().block_on(measure(rounds, seconds));
    let mut table = vec![vec![
        "workload".to_string(),
        "path".into(),
        "TPS (median)".into(),
        "TPS range".into(),
        "/ direct".into(),
        "p50 ms".into(),
        "p99 ms".into(),
        "+p50 ms".into(),
        "+p99 ms".into(),
        "CPU s / 100k tx".into(),
    ]];
    let mut ratios = Vec::new();
    for select_only in [true, false] {
        for clients in CLIENTS {
            let workload = Workload {
                select_only,
                clients,
            };
            let direct = summarise(&rows, workload, Path::Direct);
            for path in ORDER {
                let s = summarise(&rows, workload, path);
                let added = |v: f64| {
                    if path == Path::Direct {
                        "-".to_string()
                    } else {
                        format!("{v:+.3}")
                    }
                };
                table.push(vec![
                    workload.name(),
                    path.name().into(),
                    format!("{:.0}", s.tps),
                    format!("{:.0}-{:.0}", s.tps_min, s.tps_max),
                    format!("{:.2}", s.tps / direct.tps),
                    format!("{:.3}", s.p50),
                    format!("{:.3}", s.p99),
                    added(s.p50 - direct.p50),
                    added(s.p99 - direct.p99),
                    s.cpu_per_100k
                        .map(|c| format!("{c:.2}"))
                        .unwrap_or("-".into()),
                ]);
            }
            let pgwarden = summarise(&rows, workload, Path::Pgwarden);
            let haproxy = summarise(&rows, workload, Path::Haproxy);
            ratios.push((workload, pgwarden, haproxy));
        }
    }
    println!(
        "proxy throughput: pgbench -s 10, -j 2, {seconds} s per run, {rounds} interleaved rounds, \
         medians; latency from a {}% sample of transactions; everything on this machine's cores",
        LATENCY_SAMPLING * 100.0
    );
    print_table(&table);
    println!("(TPC-B: seven statements per transaction, -S: one)");
    for (workload, pgwarden, haproxy) in ratios {
        let per_round: Vec<String> = (0..rounds as usize)
            .map(|i| {
                let tps = |path| {
                    rows.iter()
                        .filter(|r| r.workload == workload && r.path == path)
                        .nth(i)
                        .map(|r| r.detail.run.tps)
                        .unwrap_or(f64::NAN)
                };
                format!("{:.2}", tps(Path::Pgwarden) / tps(Path::Haproxy))
            })
            .collect();
        let cpu = match (pgwarden.cpu_per_100k, haproxy.cpu_per_100k) {
            (Some(p), Some(h)) => format!(", CPU per query {:.2} of haproxy's", p / h),
            _ => String::new(),
        };
        println!(
            "{}: pgwarden / haproxy TPS = {:.2} (medians; per round {}){cpu}",
            workload.name(),
            pgwarden.tps / haproxy.tps,
            per_round.join(", ")
        );
    }
}
