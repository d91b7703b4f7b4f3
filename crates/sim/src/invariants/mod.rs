//! The DESIGN.md safety invariants, one per file, checked after every tick
//! and every step.
//!
//! A checker sees the whole world (ground truth: every postgres, the store)
//! and the events of the last tick (transitions the state no longer shows).
//! It returns the first problem it finds as one line a person can act on.
//!
//! | file | DESIGN.md |
//! |---|---|
//! | `single_writer` | 1: at most one node accepts writes |
//! | `writable_holds_lease` | 1: fencing happens before the lease can expire |
//! | `proxy_single_route` | 1: clients are never sent to two primaries |
//! | `generation_monotonic` | 2: generations never decrease, nobody applies an older one |
//! | `leader_writes` | 2: a deposed sentinel's write is refused |
//! | `promote_rules` | 3: only the best eligible standby is promoted |
//! | `strict_zero_loss` | 3: strict synchronous mode loses no acknowledged write |
//! | `rewind_before_rejoin` | 4: nobody streams from a diverged history |
//! | `no_foreign_overwrite` | 5: other clusters' data is never overwritten |
//! | `peer_slots_ahead` | speed: a promoted standby already holds its peers' slots |
//!
//! Outside strict synchronous mode, acknowledged writes lost to a failover
//! are counted (`Stats::lost_writes`), not forbidden: asynchronous
//! replication (and `sync_mode = on`, which falls back to it) promises no
//! more.

use std::fmt;

use crate::events::Event;
use crate::world::World;

mod generation_monotonic;
mod leader_writes;
mod no_foreign_overwrite;
mod peer_slots_ahead;
mod promote_rules;
mod proxy_single_route;
mod rewind_before_rejoin;
mod single_writer;
mod strict_zero_loss;
mod writable_holds_lease;

pub use generation_monotonic::GenerationMonotonic;
pub use leader_writes::LeaderWrites;
pub use no_foreign_overwrite::NoForeignOverwrite;
pub use peer_slots_ahead::PeerSlotsAhead;
pub use promote_rules::PromoteRules;
pub use proxy_single_route::ProxySingleRoute;
pub use rewind_before_rejoin::RewindBeforeRejoin;
pub use single_writer::SingleWriter;
pub use strict_zero_loss::StrictZeroLoss;
pub use writable_holds_lease::WritableHoldsLease;

/// One safety property.
pub trait Invariant: fmt::Debug + Send {
    /// Its name, as the failure message and `SimConfig::only_invariants` use it.
    fn name(&self) -> &'static str;
    /// Checks the world after a tick, given that tick's events.
    fn check(&mut self, world: &World, events: &[Event]) -> Result<(), String>;
}

/// Every invariant, fresh.
pub fn all() -> Vec<Box<dyn Invariant>> {
    vec![
        Box::new(SingleWriter),
        Box::new(WritableHoldsLease),
        Box::new(ProxySingleRoute),
        Box::new(GenerationMonotonic::default()),
        Box::new(LeaderWrites),
        Box::new(PromoteRules),
        Box::new(StrictZeroLoss),
        Box::new(RewindBeforeRejoin),
        Box::new(NoForeignOverwrite),
        Box::new(PeerSlotsAhead::default()),
    ]
}
