//! A lease kept alive by its own task, as `pgwarden_store::LeaseKeeper` does.
//!
//! The task grants a lease, then renews it every `ttl / 4`; after a failed
//! request it retries sooner (500 ms at most). Each success publishes
//! `valid_until` = the *local* instant the request was sent + the TTL; a
//! failure publishes nothing (the last `valid_until` stands, and lapses on its
//! own); a renewal answered "no such lease" publishes "no lease" and grants a
//! new one at once. `version` counts publications, like a watch channel's, so
//! the fencer can tell that something changed.
//!
//! Times: `now` is simulated real time; `local` is the owner's clock, which
//! may run fast or slow. The store counts the TTL from when the request
//! *arrived*, which is never earlier than when it was sent.

use std::time::Duration;

use crate::ctx::Ctx;
use crate::store::LeaseId;

/// Wait before retrying a failed grant or renewal (capped by the interval).
const RETRY_MS: u64 = 500;

/// One lease and its renewal task.
#[derive(Debug, Clone)]
pub struct LeaseTask {
    ttl_ms: u64,
    pub(crate) interval_ms: u64,
    /// The lease, once granted; `None` again after the store reported it gone.
    pub id: Option<LeaseId>,
    /// Local time until which the lease is known valid.
    pub valid_until: Option<u64>,
    /// Bumped on every publication.
    pub version: u64,
    next_at: u64,
}

impl LeaseTask {
    /// A task spawned at `now`; its first grant is attempted on its next run.
    pub fn spawn(ttl_ms: u64, now: u64) -> LeaseTask {
        LeaseTask {
            ttl_ms,
            interval_ms: ms(pgwarden_core::timing::renewal_interval(
                Duration::from_millis(ttl_ms),
            ))
            .max(10),
            id: None,
            valid_until: None,
            version: 0,
            next_at: now + 1,
        }
    }

    /// The TTL.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// The lease id if it is known valid at local time `local`.
    pub fn valid_at(&self, local: u64) -> Option<LeaseId> {
        match (self.id, self.valid_until) {
            (Some(id), Some(until)) if local < until => Some(id),
            _ => None,
        }
    }

    /// Runs the task if it is due: a grant or a renewal. True when it
    /// published a new state.
    pub fn poll(&mut self, owner: &str, local: u64, ctx: &mut Ctx<'_>) -> bool {
        if ctx.now < self.next_at {
            return false;
        }
        let retry = ctx.now + RETRY_MS.min(self.interval_ms);
        let Some(id) = self.id else {
            return self.grant(owner, local, ctx);
        };
        let ttl = self.ttl_ms;
        match ctx.call(owner, |s, arrival| s.keep_alive(id, arrival)) {
            Ok(true) => {
                self.valid_until = Some(local + ttl);
                self.version += 1;
                self.next_at = ctx.now + self.interval_ms;
                true
            }
            Ok(false) => {
                ctx.note(owner, || format!("lease {id} expired on the server"));
                self.id = None;
                self.valid_until = None;
                self.version += 1;
                self.grant(owner, local, ctx);
                true
            }
            Err(_) => {
                self.next_at = retry;
                false
            }
        }
    }

    fn grant(&mut self, owner: &str, local: u64, ctx: &mut Ctx<'_>) -> bool {
        let ttl = self.ttl_ms;
        match ctx.call(owner, |s, arrival| s.grant(ttl, arrival)) {
            Ok(id) => {
                self.id = Some(id);
                self.valid_until = Some(local + ttl);
                self.version += 1;
                self.next_at = ctx.now + self.interval_ms;
                true
            }
            Err(_) => {
                self.next_at = ctx.now + RETRY_MS.min(self.interval_ms);
                false
            }
        }
    }

    /// Stops the task and revokes the lease (best effort: if the store is
    /// unreachable the lease expires on its own).
    pub fn release(&mut self, owner: &str, ctx: &mut Ctx<'_>) {
        if let Some(id) = self.id.take() {
            let _ = ctx.call(owner, |s, _| s.revoke(id));
        }
        self.valid_until = None;
        self.version += 1;
    }
}

/// Whole milliseconds of `d`, the simulation's unit of time.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
