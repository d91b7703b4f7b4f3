//! Invariant 1, the mechanism behind it: a writable postgres's node holds
//! the `primary` key in the store.
//!
//! The key is the mutex on writability: a keeper starts or promotes postgres
//! only while it holds the key, gives the key up only once postgres no
//! longer accepts writes, and its fencer kills postgres a third of the TTL
//! before the lease could expire. So the moment the store lets the key go
//! (and a sentinel could name someone else) the old postgres must already
//! be dead. This fails as soon as fencing comes too late, before a second
//! writer even exists, which makes it a sharper check than single-writer.

use super::Invariant;
use crate::events::Event;
use crate::world::World;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct WritableHoldsLease;

impl Invariant for WritableHoldsLease {
    fn name(&self) -> &'static str {
        "writable_holds_lease"
    }

    fn check(&mut self, world: &World, _: &[Event]) -> Result<(), String> {
        let holder = world.primary_holder();
        for uid in world.writable() {
            if holder != Some(uid) {
                return Err(format!(
                    "{uid} accepts writes but the primary key is {}: its lease lapsed before it was fenced",
                    holder.map_or("absent".to_string(), |h| format!("held by {h}"))
                ));
            }
        }
        Ok(())
    }
}
