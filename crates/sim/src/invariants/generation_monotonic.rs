//! Invariant 2: generations never decrease, every role change bumps the
//! generation, and no keeper or proxy carries out an older generation than
//! one it already carried out (within one life of its process), nor one the
//! store never held.

use std::collections::BTreeMap;

use super::Invariant;
use crate::events::{Applier, Event};
use crate::world::World;

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct GenerationMonotonic {
    store: u64,
    applied: BTreeMap<(Applier, String), (u32, u64)>,
}

impl Invariant for GenerationMonotonic {
    fn name(&self) -> &'static str {
        "generation_monotonic"
    }

    fn check(&mut self, world: &World, events: &[Event]) -> Result<(), String> {
        let current = world.status().map_or(0, |s| s.generation);
        if current < self.store {
            return Err(format!(
                "the stored status went back from generation {} to {current}",
                self.store
            ));
        }
        self.store = current;
        for e in events {
            match e {
                Event::StatusWritten(w) => {
                    let (b, a) = (&w.before, &w.after);
                    if a.generation < b.generation {
                        return Err(format!(
                            "{} wrote generation {} over {}",
                            w.by, a.generation, b.generation
                        ));
                    }
                    let roles_changed =
                        a.primary != b.primary || a.members != b.members || a.deposed != b.deposed;
                    if roles_changed && a.generation == b.generation {
                        return Err(format!(
                            "{} changed roles without a new generation (still {}): {}",
                            w.by, a.generation, w.reason
                        ));
                    }
                }
                Event::Applied {
                    by,
                    id,
                    incarnation,
                    generation,
                } => {
                    if *generation > current {
                        return Err(format!(
                            "{by:?} {id} carried out generation {generation}, newer than the store's {current}"
                        ));
                    }
                    let key = (*by, id.clone());
                    if let Some((life, last)) = self.applied.get(&key) {
                        if life == incarnation && generation < last {
                            return Err(format!(
                                "{by:?} {id} carried out generation {generation} after {last}"
                            ));
                        }
                    }
                    self.applied.insert(key, (*incarnation, *generation));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
