//! Invariant 2: a deposed sentinel's write is refused by the store.
//!
//! Every status write the store accepted must have come from the sentinel
//! whose election key was current at that instant, under the very key it
//! won (its create revision), not an earlier term of the same sentinel.

use super::Invariant;
use crate::events::Event;
use crate::world::World;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeaderWrites;

impl Invariant for LeaderWrites {
    fn name(&self) -> &'static str {
        "leader_writes"
    }

    fn check(&mut self, _: &World, events: &[Event]) -> Result<(), String> {
        for e in events {
            let Event::StatusWritten(w) = e else { continue };
            let term = Some((w.by.clone(), w.election_revision));
            if w.leader_key != term {
                return Err(format!(
                    "the store accepted generation {} from {} (elected at revision {}) while the election key was {}",
                    w.after.generation,
                    w.by,
                    w.election_revision,
                    match &w.leader_key {
                        Some((who, rev)) => format!("{who}'s, created at revision {rev}"),
                        None => "absent".into(),
                    }
                ));
            }
        }
        Ok(())
    }
}
