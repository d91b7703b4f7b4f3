//! What an actor may touch during its scheduling slot, and the run's
//! records.
//!
//! [`Ctx`] borrows the world's store, network, hosts and records for one
//! actor at a time; every store request goes through [`Ctx::call`], which is
//! where partitions, flaky links and latency apply. [`Stats`] and [`Trace`]
//! are what a run leaves behind for people.

use std::collections::BTreeMap;

use crate::events::{Event, Happening};
use crate::network::Network;
use crate::postgres::Host;
use crate::rng::Rng;
use crate::store::MemStore;

/// Counters over one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Writes clients saw acknowledged.
    pub acked_writes: u64,
    /// Acknowledged writes missing from the history of a later primary
    /// (allowed with asynchronous replication, the only mode there is).
    pub lost_writes: u64,
    /// Status writes the store accepted.
    pub status_writes: u64,
    /// Status writes refused because the writer was no longer the leader.
    pub refused_deposed_writes: u64,
    /// Standbys promoted.
    pub promotions: u64,
    /// Postgres killed by a fencer.
    pub fences: u64,
    /// Successful pg_rewinds.
    pub rewinds: u64,
    /// Base backups (first clones and re-clones).
    pub clones: u64,
    /// Sentinel elections.
    pub elections: u64,
    /// Faults injected.
    pub faults: u64,
    /// Keepers that exited on an error a human must fix.
    pub keeper_exits: u64,
}

impl Stats {
    /// Adds another run's counters.
    pub fn add(&mut self, o: &Stats) {
        self.acked_writes += o.acked_writes;
        self.lost_writes += o.lost_writes;
        self.status_writes += o.status_writes;
        self.refused_deposed_writes += o.refused_deposed_writes;
        self.promotions += o.promotions;
        self.fences += o.fences;
        self.rewinds += o.rewinds;
        self.clones += o.clones;
        self.elections += o.elections;
        self.faults += o.faults;
        self.keeper_exits += o.keeper_exits;
    }
}

/// A step trace, kept only when asked for (formatting costs time).
#[derive(Debug, Clone, Default)]
pub struct Trace {
    lines: Option<Vec<String>>,
}

impl Trace {
    pub(crate) fn new(on: bool) -> Trace {
        Trace {
            lines: on.then(Vec::new),
        }
    }

    /// The lines so far (empty when not tracing).
    pub fn lines(&self) -> &[String] {
        self.lines.as_deref().unwrap_or(&[])
    }

    pub(crate) fn push(&mut self, now: u64, who: &str, what: impl FnOnce() -> String) {
        if let Some(lines) = &mut self.lines {
            lines.push(format!(
                "{:>7}.{:01}s {who:<4} {}",
                now / 1000,
                (now % 1000) / 100,
                what()
            ));
        }
    }
}

/// A store request that did not come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError<T> {
    /// It never reached the store.
    Unreachable,
    /// The store applied it (with this result) but the answer was lost.
    LostReply(T),
}

/// What an actor may touch during its slot: the store (through the
/// network), the postgres hosts, and the world's records.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// Simulated time, ms.
    pub now: u64,
    /// The store.
    pub store: &'a mut MemStore,
    /// The network's faults.
    pub net: &'a Network,
    /// The run's randomness.
    pub rng: &'a mut Rng,
    /// Every node's postgres.
    pub hosts: &'a mut BTreeMap<String, Host>,
    /// Events for the checkers.
    pub events: &'a mut Vec<Event>,
    /// The run's story.
    pub journal: &'a mut Vec<(u64, Happening)>,
    /// Counters.
    pub stats: &'a mut Stats,
    /// The last node that accepted writes.
    pub last_writer: &'a Option<String>,
    /// See `SimConfig::fencing`.
    pub fencing: bool,
    /// See `SimConfig::old_fencing_window`.
    pub old_fencing_window: bool,
    /// See `SimConfig::old_standby_slots`.
    pub old_standby_slots: bool,
    pub(crate) max_latency_ms: u64,
    pub(crate) next_record: &'a mut u64,
    pub(crate) trace: &'a mut Trace,
}

impl Ctx<'_> {
    /// Sends one request from `actor` to the store. `op` gets the store and
    /// the instant the request arrives there.
    pub fn call<T>(
        &mut self,
        actor: &str,
        op: impl FnOnce(&mut MemStore, u64) -> T,
    ) -> Result<T, CallError<T>> {
        if !self.net.reaches_store(actor) {
            return Err(CallError::Unreachable);
        }
        let arrival = self.now + self.rng.below(self.max_latency_ms + 1);
        let fate = if self.net.is_flaky(actor) {
            self.rng.below(3)
        } else {
            2
        };
        match fate {
            0 => Err(CallError::Unreachable),
            1 => Err(CallError::LostReply(op(self.store, arrival))),
            _ => Ok(op(self.store, arrival)),
        }
    }

    /// A trace line (formatted only when tracing).
    pub fn note(&mut self, who: &str, what: impl FnOnce() -> String) {
        self.trace.push(self.now, who, what);
    }

    /// A journal entry.
    pub fn happen(&mut self, h: Happening) {
        match &h {
            Happening::Promoted(_) => self.stats.promotions += 1,
            Happening::Fenced(_) => self.stats.fences += 1,
            Happening::Rewound(_) => self.stats.rewinds += 1,
            Happening::Cloned(_) => self.stats.clones += 1,
            Happening::Elected(_) => self.stats.elections += 1,
            Happening::KeeperExited(_) => self.stats.keeper_exits += 1,
            _ => {}
        }
        self.journal.push((self.now, h));
    }

    /// A new, unique WAL record id.
    pub fn new_record(&mut self) -> u64 {
        *self.next_record += 1;
        *self.next_record
    }
}
