//! The standby-slot path: a standby promoted already holds the replication
//! slots of its peers, so they stream from it the moment it is primary.
//!
//! Not a safety property but the speed one behind DESIGN.md's switchover
//! target: before commit e40e966 a new primary made its standbys' slots only
//! after promoting, their first connection failed ("replication slot does
//! not exist") and in strict mode commits waited a retry interval for them.
//!
//! The check: when a keeper promotes its postgres, every member that was a
//! standby beside it in the last generation that keeper carried out as a
//! standby, and still is one, has its slot there. A generation carried out
//! means its plan ran to the end without a failure, so the slots it wanted
//! were made.

use std::collections::BTreeMap;

use pgwarden_core::plan::slot_name;
use pgwarden_core::{Assignment, Status};

use super::Invariant;
use crate::events::{Applier, Event};
use crate::world::World;

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct PeerSlotsAhead {
    /// Each status the store accepted, by generation.
    statuses: BTreeMap<u64, Status>,
    /// The last generation each keeper carried out.
    applied: BTreeMap<String, u64>,
}

impl Invariant for PeerSlotsAhead {
    fn name(&self) -> &'static str {
        "peer_slots_ahead"
    }

    fn check(&mut self, world: &World, events: &[Event]) -> Result<(), String> {
        for e in events {
            match e {
                Event::StatusWritten(w) => {
                    self.statuses.insert(w.after.generation, w.after.clone());
                }
                Event::Applied {
                    by: Applier::Keeper,
                    id,
                    generation,
                    ..
                } => {
                    self.applied.insert(id.clone(), *generation);
                }
                Event::Promoted { uid, slots, .. } => {
                    let Some(before) = self
                        .applied
                        .get(uid)
                        .and_then(|g| self.statuses.get(g))
                        .filter(|s| matches!(s.members.get(uid), Some(Assignment::Standby { .. })))
                    else {
                        continue;
                    };
                    let now = world.status();
                    let still_standby = |peer: &str| {
                        now.is_some_and(|s| {
                            s.standbys().any(|u| u == peer)
                                && !s.slots_released.iter().any(|r| r == peer)
                        })
                    };
                    let missing: Vec<&str> = before
                        .slot_holders(uid)
                        .filter(|peer| still_standby(peer))
                        .filter(|peer| !slots.contains(&slot_name(peer)))
                        .collect();
                    if !missing.is_empty() {
                        return Err(format!(
                            "{uid} was promoted without the replication slots of {} (standbys beside it in generation {}): they cannot stream from it until it makes them",
                            missing.join(", "),
                            before.generation
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
