//! `cargo bench -p pgwarden --bench footprint`: memory and CPU of each role
//! in an idle cluster.
//!
//! One three-node cluster with a sentinel and a proxy, built with the bench
//! profile (optimized, like a release). Once it has converged it is left idle
//! for `PGWARDEN_BENCH_IDLE_SECONDS` (default 10); then each process's
//! resident memory (`VmRSS`, and its anonymous part `RssAnon`, from
//! `/proc/PID/status`) is read, and its CPU use over the next
//! `PGWARDEN_BENCH_IDLE_SECONDS` (utime + stime from `/proc/PID/stat`).
//! Postgres' own processes are not counted in a keeper's figures; etcd is
//! shown for comparison. Run as root, like the end-to-end tests.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::Duration;

use support::*;

struct Process {
    role: String,
    pid: u32,
    rss_kib: u64,
    anon_kib: u64,
    cpu_percent: f64,
}

async fn measure(idle: Duration) -> Vec<Process> {
    let bench = Bench::start().await;
    let cluster = &bench.cluster;
    let mut roles: Vec<(String, u32)> = KEEPERS
        .iter()
        .map(|k| {
            let role = if *k == bench.primary {
                format!("keeper {k} (primary)")
            } else {
                format!("keeper {k} (standby)")
            };
            (role, cluster.pid(k))
        })
        .collect();
    roles.push(("sentinel".into(), cluster.pid("sentinel1")));
    roles.push(("proxy".into(), cluster.pid(PROXY)));
    roles.push(("etcd (for comparison)".into(), cluster.etcd.pid()));
    tokio::time::sleep(idle).await;
    let before: Vec<u64> = roles.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
    let memory: Vec<(u64, u64)> = roles
        .iter()
        .map(|(_, pid)| {
            (
                proc_status_kib(*pid, "VmRSS"),
                proc_status_kib(*pid, "RssAnon"),
            )
        })
        .collect();
    tokio::time::sleep(idle).await;
    let ticks = clock_ticks_per_second();
    roles
        .into_iter()
        .zip(before)
        .zip(memory)
        .map(|(((role, pid), before), (rss_kib, anon_kib))| Process {
            role,
            pid,
            rss_kib,
            anon_kib,
            cpu_percent: (cpu_ticks(pid) - before) as f64 / ticks / idle.as_secs_f64() * 100.0,
        })
        .collect()
}

fn main() {
    let idle = Duration::from_secs(env_u64("PGWARDEN_BENCH_IDLE_SECONDS", 10));
    println!("binary measured: {}", common::bin_under_test().display());
    let processes = runtime().block_on(measure(idle));
    let mb = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    let mut table = vec![vec![
        "process".to_string(),
        "pid".into(),
        "VmRSS MB".into(),
        "RssAnon MB".into(),
        format!("CPU % over {} s", idle.as_secs()),
    ]];
    for p in &processes {
        table.push(vec![
            p.role.clone(),
            p.pid.to_string(),
            mb(p.rss_kib),
            mb(p.anon_kib),
            format!("{:.2}", p.cpu_percent),
        ]);
    }
    println!(
        "idle footprint after {} s idle (targets: keeper < 20 MB RSS, proxy < 10 MB)",
        idle.as_secs()
    );
    print_table(&table);
}
