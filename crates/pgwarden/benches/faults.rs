//! `cargo bench -p pgwarden --bench faults`: the full fault-injection set.
//!
//! Every scenario of `tests/common/netns/scenarios.rs`, each on a fresh
//! cluster spread over network namespaces, `PGWARDEN_FAULT_RUNS` fault
//! cycles each (default 3), in each mode of `PGWARDEN_FAULT_MODES`
//! (default `async,strict`). Arguments after `--` keep only the scenarios
//! whose name contains one of them. Prints one line per cycle as it goes,
//! then a table per mode: runs, unavailability window (median and max),
//! acknowledged writes lost, indeterminate writes, seconds with two writable
//! nodes, problems. Exits non-zero when a scenario broke a promise (see
//! `Outcome::problems`), known product gaps included. Run as root.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::netns::scenarios::{run, Mode, Outcome, Scenario};

fn main() {
    let runs: usize = std::env::var("PGWARDEN_FAULT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let modes: Vec<Mode> = std::env::var("PGWARDEN_FAULT_MODES")
        .unwrap_or_else(|_| "async,strict".into())
        .split(',')
        .map(|m| match m.trim() {
            "async" => Mode::Async,
            "strict" => Mode::Strict,
            other => panic!("unknown mode {other:?}: use async and/or strict"),
        })
        .collect();
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let chosen: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name().contains(f.as_str())))
        .collect();
    let mut failed = false;
    let mut tables = Vec::new();
    for mode in &modes {
        let mut rows = Vec::new();
        for scenario in &chosen {
            let result = std::panic::catch_unwind(|| run(*scenario, *mode, runs));
            let row = match result {
                Ok(outcome) => row(&outcome),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    format!(
                        "{:<24} {:>4}  FAILED: {}",
                        scenario.name(),
                        0,
                        msg.lines().next().unwrap_or("")
                    )
                }
            };
            failed |= row.contains("FAILED") || !row.ends_with(" -");
            println!("{row}");
            rows.push(row);
        }
        tables.push((*mode, rows));
    }
    println!();
    for (mode, rows) in tables {
        println!(
            "fault-injection suite, {} replication, {runs} runs per scenario:",
            mode.name()
        );
        println!(
            "{:<24} {:>4} {:>14} {:>11} {:>5} {:>6} {:>13}  problems",
            "scenario", "runs", "window median", "window max", "lost", "indet.", "two writable"
        );
        for r in rows {
            println!("{r}");
        }
        println!();
    }
    if failed {
        std::process::exit(1);
    }
}

/// One table row; ends with " -" when there was no problem.
fn row(o: &Outcome) -> String {
    let mut windows: Vec<Duration> = o.cycles.iter().map(|c| c.window).collect();
    windows.sort();
    let median = match windows.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => windows[n / 2],
        n => (windows[n / 2 - 1] + windows[n / 2]) / 2,
    };
    let max = windows.last().copied().unwrap_or_default();
    let lost: usize = o.cycles.iter().map(|c| c.lost.len()).sum();
    let indeterminate: usize = o.cycles.iter().map(|c| c.indeterminate).sum();
    let two: Duration = o.cycles.iter().map(|c| c.two_writable).sum();
    let problems = o.problems();
    let summary = if problems.is_empty() {
        "-".to_string()
    } else {
        format!("{} (logs: {:?})", problems.join(" | "), o.logs)
    };
    format!(
        "{:<24} {:>4} {:>12.2} s {:>9.2} s {:>5} {:>6} {:>11.3} s  {summary}",
        o.scenario.name(),
        o.cycles.len(),
        median.as_secs_f64(),
        max.as_secs_f64(),
        lost,
        indeterminate,
        two.as_secs_f64()
    )
}
