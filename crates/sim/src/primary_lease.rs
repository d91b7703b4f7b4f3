//! The keeper's primary lease and its fencer, modelled on
//! `crates/pgwarden/src/keeper/primary_lease.rs`.
//!
//! The renewal task is a [`LeaseTask`] of `primary_lease_ttl`. The fencer is
//! a timer: with `valid_until` published, it fires at `valid_until` less
//! `timing::fencing_margin` (local clock); with the lease reported gone after having been valid, at
//! once. Firing kills postgres if the keeper has a postmaster; from then on
//! the fencer stays armed until the lease task publishes again, killing any
//! postmaster it finds (every 50 ms in the product: here at every tick, and
//! at once when the keeper starts one, see [`PrimaryLease::fired`]). The
//! world runs fencers at every tick, before leases expire in the store, and
//! also right after the renewal task ran, so the kill lands at the first
//! instant the real timer could fire.
//!
//! `try_hold` mirrors the real one: it takes the `primary` key only under a
//! lease that is valid up to the fencing deadline (`valid_until` less
//! `timing::fencing_margin`):
//! past it the fencer kills postgres, so a postgres started then would be
//! writable with nothing left to fence it.
//!
//! `SimConfig::old_fencing_window` models the keeper before both fixes
//! (lease held until `valid_until`, fencer disarmed after firing until the
//! next renewal), only to show that the checkers catch what it did.

use std::time::Duration;

use pgwarden_core::keys;

use crate::ctx::Ctx;
use crate::lease::{ms, LeaseTask};
use crate::store::{Cas, Value};

/// The fencer's memory between firings.
#[derive(Debug, Clone, Default)]
struct Fencer {
    /// The lease task's last publication the fencer has seen.
    seen_version: u64,
    /// A lease was published valid once.
    ever_valid: bool,
    /// Fired, and no publication since.
    fired: bool,
}

/// Why the fencer kills postgres now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fire {
    /// The fencing deadline passed (or the lease was reported gone).
    Deadline,
    /// Fired before and still no renewal: any postmaster is killed.
    StillNotRenewed,
}

/// A keeper's claim on the primary role.
#[derive(Debug, Clone)]
pub struct PrimaryLease {
    /// The renewal task.
    pub task: LeaseTask,
    fencer: Fencer,
}

impl PrimaryLease {
    /// Starts the renewal task and the fencer; the key is not written yet.
    /// `old`: the keeper before the fencing-window fix, which also renewed
    /// only every quarter of the TTL.
    pub fn start(ttl_ms: u64, now: u64, old: bool) -> PrimaryLease {
        let mut task = LeaseTask::spawn(ttl_ms, now);
        if old {
            task.interval_ms = ttl_ms / 4;
        }
        PrimaryLease {
            task,
            fencer: Fencer::default(),
        }
    }

    /// How long before `valid_until` the fencer fires; `old`: the keeper of
    /// that time, which fenced a third of the TTL before.
    fn margin(&self, old: bool) -> u64 {
        if old {
            return self.task.ttl_ms() / 3;
        }
        ms(pgwarden_core::timing::fencing_margin(
            Duration::from_millis(self.task.ttl_ms()),
        ))
    }

    /// Whether the fencer kills postgres now (local time `local`), and why.
    /// With `old` (the keeper before the fix) a fired fencer disarms until
    /// the lease task publishes again.
    pub fn fence_due(&mut self, local: u64, old: bool) -> Option<Fire> {
        if self.task.version != self.fencer.seen_version {
            self.fencer.seen_version = self.task.version;
            self.fencer.fired = false;
        }
        if self.fencer.fired {
            return (!old).then_some(Fire::StillNotRenewed);
        }
        let deadline = match self.task.valid_until {
            Some(until) => {
                self.fencer.ever_valid = true;
                Some(until.saturating_sub(self.margin(old)))
            }
            None if self.fencer.ever_valid => Some(local),
            None => None,
        };
        if deadline.is_some_and(|d| local >= d) {
            self.fencer.fired = true;
            return Some(Fire::Deadline);
        }
        None
    }

    /// Whether the fencer fired and still waits for a renewal: it kills
    /// any postmaster started meanwhile (`old`: it does not).
    pub fn fired(&self, old: bool) -> bool {
        !old && self.fencer.fired && self.task.version == self.fencer.seen_version
    }

    /// Makes sure the `primary` key names `uid` under the current, locally
    /// valid lease. True when it does.
    pub fn try_hold(&self, uid: &str, local: u64, ctx: &mut Ctx<'_>) -> bool {
        // Only before the fencing deadline (the old keeper: until
        // `valid_until`).
        let margin = if ctx.old_fencing_window {
            0
        } else {
            self.margin(false)
        };
        let Some(id) = self.task.valid_at(local + margin) else {
            return false;
        };
        let me = Value::Text(uid.to_string());
        let created = ctx.call(uid, |s, _| s.create(keys::PRIMARY, me.clone(), Some(id)));
        match created {
            Ok(Ok(Some(_))) => {
                ctx.note(uid, || "holding the primary lease".into());
                true
            }
            Ok(Ok(None)) => {
                let current = ctx.call(uid, |s, _| s.get(keys::PRIMARY).cloned());
                match current {
                    Ok(Some(e)) if e.value == me && e.lease == Some(id) => true,
                    Ok(Some(e)) if e.value == me => {
                        // Ours under a previous run's lease: move it over.
                        let moved = ctx.call(uid, |s, _| {
                            s.cas(keys::PRIMARY, me.clone(), e.mod_revision, &[], Some(id))
                        });
                        matches!(moved, Ok(Ok(Cas::Written(_))))
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// Gives the role up: deletes the key if it is ours, revokes the lease.
    pub fn release(mut self, uid: &str, ctx: &mut Ctx<'_>) {
        if let Some(id) = self.task.id {
            let _ = ctx.call(uid, |s, _| s.delete_if_lease(keys::PRIMARY, id));
        }
        self.task.release(uid, ctx);
        ctx.note(uid, || "primary lease released".into());
    }
}
