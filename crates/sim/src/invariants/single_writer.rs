//! Invariant 1: at no instant do two postgres accept writes.
//!
//! Checked on the simulated servers themselves, not on what anyone reports:
//! a client connected straight to a node writes wherever postgres lets it.

use super::Invariant;
use crate::events::Event;
use crate::world::World;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleWriter;

impl Invariant for SingleWriter {
    fn name(&self) -> &'static str {
        "single_writer"
    }

    fn check(&mut self, world: &World, _: &[Event]) -> Result<(), String> {
        let writers = world.writable();
        if writers.len() > 1 {
            return Err(format!(
                "{} accept writes at the same time (split brain)",
                writers.join(" and ")
            ));
        }
        Ok(())
    }
}
