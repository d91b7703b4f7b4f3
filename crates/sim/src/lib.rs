//! pgwarden-sim: a seeded, deterministic simulation of a pgwarden cluster.
//!
//! The decisions are the real ones: each sentinel runs
//! [`pgwarden_core::decide()`], each keeper runs [`pgwarden_core::plan()`]
//! with the inputs the real keeper builds, each proxy runs
//! [`pgwarden_core::route::route`]. Everything around them is modelled, in
//! simulated time and from one random seed: an in-memory twin of the store
//! with leases and compare-and-swap ([`store`]); postgres servers with WAL,
//! timelines, promotion, pg_rewind, base backups and synchronous commit
//! ([`postgres`], [`replication`]); the keeper, sentinel and proxy loops
//! with their leases and the keeper's fencer, modelled on `crates/pgwarden`
//! ([`keeper`], [`actions`], [`primary_lease`], [`sentinel`], [`proxy`]);
//! and faults: crashes, partitions, flaky links, store outages, frozen
//! sentinels and proxies, stalls, and an operator asking for switchovers,
//! manual failovers and pauses ([`faults`]). After every tick the DESIGN.md
//! invariants are checked ([`invariants`]), one per file.
//!
//! A run is a pure function of its seed and [`SimConfig`]: a failing seed
//! replays exactly, with a step-by-step trace when `trace` is on.
//!
//! What is abstracted away: request latency beyond "the store applies a
//! request up to `max_store_latency_ms` after it was sent" (answers come
//! back at once); postgres' own timing (actions take no time); WAL
//! retention (a standby can always catch up unless it diverged); clients,
//! reduced to a commit now and then on every node that accepts writes,
//! acknowledged at once or, under `synchronous_standby_names = ANY k (...)`,
//! once `k` listed standbys streaming from it have it (a name no standby
//! uses, like strict mode's `pgwarden_no_sync_standby`, makes commits wait;
//! the keeper's own statements never wait, as its connections use
//! `synchronous_commit=local`). Not simulated: a frozen keeper (docs/failover.md
//! names it as the known gap: its postgres runs on without a fencer),
//! operator restart and re-clone requests, spec changes other than pause
//! and role requests.

pub mod actions;
pub mod config;
pub mod ctx;
pub mod events;
pub mod faults;
pub mod invariants;
pub mod keeper;
pub mod lease;
pub mod network;
pub mod postgres;
pub mod primary_lease;
pub mod proxy;
pub mod replication;
pub mod rng;
pub mod sentinel;
pub mod store;
pub mod view;
pub mod world;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use pgwarden_core::spec::SyncMode;

pub use config::SimConfig;
pub use ctx::Stats;
pub use world::World;

/// The env var that replays one seed with its trace.
pub const SEED_ENV: &str = "PGWARDEN_SIM_SEED";

/// An invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The run's seed.
    pub seed: u64,
    /// The step during which it was found.
    pub step: u64,
    /// Simulated time, ms.
    pub at_ms: u64,
    /// Which invariant.
    pub invariant: &'static str,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {} (t={} ms): invariant {} violated: {}",
            self.seed, self.step, self.at_ms, self.invariant, self.message
        )
    }
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Steps completed (the failing one included).
    pub steps: u64,
    /// Simulated time reached, ms.
    pub sim_ms: u64,
    /// Counters.
    pub stats: Stats,
    /// The synchronous replication mode the run's spec had (drawn from the
    /// seed when `vary_setup` is on).
    pub sync_mode: SyncMode,
    /// The first invariant violated, if any.
    pub violation: Option<Violation>,
    /// The trace, when `cfg.trace` was set.
    pub trace: Vec<String>,
}

/// Runs `cfg.steps` steps of the world `seed` makes, stopping at the first
/// violation.
pub fn run(seed: u64, cfg: &SimConfig) -> Outcome {
    let mut world = World::new(seed, cfg.clone());
    let mut violation = None;
    for _ in 0..cfg.steps {
        if let Err(v) = world.step() {
            violation = Some(v);
            break;
        }
    }
    Outcome {
        seed,
        steps: world.step_count(),
        sim_ms: world.now_ms(),
        stats: world.stats().clone(),
        sync_mode: world.spec().sync_mode,
        violation,
        trace: world.trace().to_vec(),
    }
}

/// Runs seeds `0..seeds` on every core; their outcomes, by seed.
pub fn sweep(seeds: u64, cfg: &SimConfig) -> Vec<Outcome> {
    let next = AtomicU64::new(0);
    let done = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds {
                    return;
                }
                let out = run(seed, cfg);
                done.lock().expect("a sweep thread panicked").push(out);
            });
        }
    });
    let mut outcomes = done.into_inner().expect("a sweep thread panicked");
    outcomes.sort_by_key(|o| o.seed);
    outcomes
}

/// How to replay `seed` run for `steps` steps, for failure messages.
pub fn replay_hint(seed: u64, steps: u64) -> String {
    format!(
        "replay with: {SEED_ENV}={seed} PGWARDEN_SIM_STEPS={steps} cargo test -p pgwarden-sim --test seeds replay -- --nocapture"
    )
}
