//! Invariant 3, strict synchronous mode: zero acknowledged writes lost.
//!
//! In `sync_mode = strict` the primary acknowledges a commit only once the
//! synchronous standbys it lists have it, and only a standby the sentinel
//! knows to hold every acknowledged commit may be promoted. So whenever a
//! node becomes the writer, every write a client saw acknowledged must be in
//! its WAL. In the other modes the loss is counted (`Stats::lost_writes`),
//! not forbidden.

use pgwarden_core::spec::SyncMode;

use super::Invariant;
use crate::events::Event;
use crate::world::World;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct StrictZeroLoss;

impl Invariant for StrictZeroLoss {
    fn name(&self) -> &'static str {
        "strict_zero_loss"
    }

    fn check(&mut self, world: &World, events: &[Event]) -> Result<(), String> {
        if world.spec().sync_mode != SyncMode::Strict {
            return Ok(());
        }
        for e in events {
            if let Event::WritesLost { uid, ids } = e {
                return Err(format!(
                    "{uid} became the writer without {} acknowledged write(s) (first: record {}) in strict synchronous mode",
                    ids.len(),
                    ids.first().copied().unwrap_or_default()
                ));
            }
        }
        Ok(())
    }
}
