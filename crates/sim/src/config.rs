//! What a simulation run is made of, and the knobs that break it on purpose.
//!
//! The defaults are the product as built: fencing on, the sentinel's election
//! guard on, random faults and scheduling jitter on. Scenario tests turn the
//! randomness off to script a story; the "checkers can fail" tests turn a
//! safety mechanism off (or model the keeper as it was before a fix) to
//! prove the invariant that depends on it is really checked.

use pgwarden_core::Spec;

/// One simulated step's length when nothing stalls, in milliseconds.
pub const TICK_MS: u64 = 100;

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Steps to run.
    pub steps: u64,
    /// Keepers (postgres nodes); `None`: 3 to 5, drawn from the seed.
    pub keepers: Option<usize>,
    /// Sentinels.
    pub sentinels: usize,
    /// Proxies; `None`: 0 to 2, drawn from the seed.
    pub proxies: Option<usize>,
    /// The spec written at time zero (varied from the seed when
    /// `vary_setup` is on).
    pub spec: Spec,
    /// Inject random faults each step.
    pub random_faults: bool,
    /// Delay actors' rounds at random (a round is skipped now and then).
    pub jitter: bool,
    /// Vary the spec (crash policy, max lag, re-clone) and tag keepers
    /// `nofailover` or give one foreign data, from the seed.
    pub vary_setup: bool,
    /// The keeper kills postgres when its primary lease cannot be proven
    /// valid (docs/failover.md mechanism 2). Off only to show the
    /// single-writer check can fail.
    pub fencing: bool,
    /// The sentinel's status write compares its election key's create
    /// revision. Off only to show the deposed-leader check can fail.
    pub sentinel_guard: bool,
    /// Models the keeper as it was before commit 9da7bee ("Fencing: no
    /// start past the fencing deadline"): `try_hold` accepts the lease
    /// until `valid_until` instead of the fencing deadline, and a fencer
    /// that fired disarms until the next renewal instead of killing any
    /// postmaster until then. Off (the product as built) except in the test
    /// that shows the checkers catch what that keeper did.
    pub old_fencing_window: bool,
    /// Models the keeper as it was before commit e40e966 ("Standbys make
    /// their peers' replication slots ahead of a promotion"): a standby
    /// makes no slots, so a new primary makes its standbys' slots only after
    /// promoting. Off except in the test that shows `peer_slots_ahead`
    /// catches it.
    pub old_standby_slots: bool,
    /// Largest clock-rate error of a keeper or proxy, parts per million.
    pub max_drift_ppm: u64,
    /// Largest delay between sending a store request and the store applying
    /// it, in ms (it moves lease expiries later than the sender believes).
    pub max_store_latency_ms: u64,
    /// Check only these invariants (by name); `None`: all of them.
    pub only_invariants: Option<Vec<&'static str>>,
    /// Do not check these invariants (by name).
    pub skip_invariants: Vec<&'static str>,
    /// Record a step-by-step trace (for replaying one seed).
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            steps: 300,
            keepers: None,
            sentinels: 2,
            proxies: None,
            spec: Spec::default(),
            random_faults: true,
            jitter: true,
            vary_setup: true,
            fencing: true,
            sentinel_guard: true,
            old_fencing_window: false,
            old_standby_slots: false,
            max_drift_ppm: 1000,
            max_store_latency_ms: 100,
            only_invariants: None,
            skip_invariants: Vec::new(),
            trace: false,
        }
    }
}

impl SimConfig {
    /// A quiet cluster for scripted scenarios: no random faults, no jitter,
    /// no setup variation, no latency or drift; `keepers` nodes, no proxies.
    pub fn scripted(keepers: usize) -> SimConfig {
        SimConfig {
            keepers: Some(keepers),
            proxies: Some(0),
            random_faults: false,
            jitter: false,
            vary_setup: false,
            max_drift_ppm: 0,
            max_store_latency_ms: 0,
            ..SimConfig::default()
        }
    }
}
