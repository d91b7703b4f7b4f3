//! Invariant 4: nobody rejoins by streaming from a diverged history.
//!
//! Postgres refuses to stream when timeline numbers show a fork before the
//! standby's position, but it cannot see a fork between two timelines that
//! got the same number (two nodes promoted from one parent). The check is on
//! ground truth: whenever a standby receives WAL, all it held must be part
//! of its upstream's history. A former primary that wrote past the fork
//! point must have been rewound (or re-cloned) first.

use super::Invariant;
use crate::events::Event;
use crate::world::World;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RewindBeforeRejoin;

impl Invariant for RewindBeforeRejoin {
    fn name(&self) -> &'static str {
        "rewind_before_rejoin"
    }

    fn check(&mut self, _: &World, events: &[Event]) -> Result<(), String> {
        for e in events {
            if let Event::Streamed {
                standby,
                upstream,
                diverged: true,
            } = e
            {
                return Err(format!(
                    "{standby} streams from {upstream} while holding WAL {upstream} never had: it rejoined without pg_rewind"
                ));
            }
        }
        Ok(())
    }
}
