//! [`LeaseKeeper`]: one etcd lease kept alive by a dedicated task.
//!
//! Keeper reports, the primary key and election keys are attached to leases
//! so that they vanish when their owner stops renewing. The owner must also
//! know, locally, until when its lease is certainly still valid: a keeper must
//! stop acting as primary before etcd could have handed the primary key to
//! someone else. The task therefore publishes `valid_until` = the instant the
//! successful renewal request was *sent* + the TTL granted. etcd restarts the
//! TTL when it *receives* the request, which is later, so `valid_until` never
//! overstates the lease.
//!
//! Renewal uses one short request per interval (not a long-lived keep-alive
//! stream) so that it goes through the same endpoint failover as every other
//! request.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{LeaseId, Renewals, Store};

/// Wait before retrying a failed grant or renewal (capped by the renewal
/// interval).
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// What a [`LeaseKeeper`] currently holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease id; `None` until the first grant, after the server reported
    /// the lease gone (until a new one is granted), and after release.
    pub id: Option<LeaseId>,
    /// Until when the lease is known to be valid (see the module docs).
    pub valid_until: Option<Instant>,
}

impl LeaseState {
    const NONE: LeaseState = LeaseState {
        id: None,
        valid_until: None,
    };

    /// The lease id if the lease is known to be valid at `now`.
    pub fn valid_at(&self, now: Instant) -> Option<LeaseId> {
        match (self.id, self.valid_until) {
            (Some(id), Some(until)) if now < until => Some(id),
            _ => None,
        }
    }
}

/// A lease kept alive by a dedicated task, spawned on creation.
///
/// When the `cancel` token given to [`LeaseKeeper::spawn`] fires, or the
/// keeper is dropped, the task stops and the lease is left to expire;
/// [`LeaseKeeper::release`] revokes it at once instead.
#[derive(Debug)]
pub struct LeaseKeeper {
    store: Store,
    state: watch::Receiver<LeaseState>,
    renewals: Renewals,
    /// Stops the task (child of the caller's token; also fired on drop).
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Spawns the renewal task, renewing every `ttl / 4`.
    ///
    /// The task grants a lease of `ttl` (retrying until it succeeds or
    /// `cancel` fires), then renews it; if the server reports the lease gone
    /// it grants a new one and publishes the new id, and users re-put their
    /// keys when the id changes. Must be called within a tokio runtime.
    pub fn spawn(store: Store, ttl: Duration, cancel: CancellationToken) -> LeaseKeeper {
        Self::spawn_with_interval(store, ttl, ttl / 4, cancel)
    }

    /// Like [`LeaseKeeper::spawn`], counting renewals into `renewals` (which
    /// may be shared with earlier and later keepers, so that its counts
    /// outlive one lease).
    pub fn spawn_counted(
        store: Store,
        ttl: Duration,
        cancel: CancellationToken,
        renewals: Renewals,
    ) -> LeaseKeeper {
        Self::start(store, ttl, ttl / 4, cancel, renewals)
    }

    /// Like [`LeaseKeeper::spawn`] with an explicit renewal interval.
    pub fn spawn_with_interval(
        store: Store,
        ttl: Duration,
        interval: Duration,
        cancel: CancellationToken,
    ) -> LeaseKeeper {
        Self::start(store, ttl, interval, cancel, Renewals::default())
    }

    fn start(
        store: Store,
        ttl: Duration,
        interval: Duration,
        cancel: CancellationToken,
        renewals: Renewals,
    ) -> LeaseKeeper {
        let (tx, rx) = watch::channel(LeaseState::NONE);
        let stop = cancel.child_token();
        let renewer = Renewer {
            store: store.clone(),
            ttl,
            interval: interval.max(Duration::from_millis(10)),
            tx,
            renewals: renewals.clone(),
        };
        let task = tokio::spawn(renewer.run(stop.clone()));
        LeaseKeeper {
            store,
            state: rx,
            renewals,
            stop,
            task: Some(task),
        }
    }

    /// The current state; `id` is `None` until the first grant.
    pub fn state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// How the renewals went (round trips, failures).
    pub fn renewals(&self) -> &Renewals {
        &self.renewals
    }

    /// Stops the task and revokes the lease (best effort: a failure is logged
    /// and the lease then expires on its own).
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                warn!(error = %e, "lease renewal task failed");
            }
        }
        let id = self.state.borrow().id;
        if let Some(id) = id {
            match self.store.revoke(id).await {
                Ok(()) => debug!(lease = id, "lease revoked"),
                Err(e) => warn!(lease = id, error = %e, "could not revoke lease; it will expire"),
            }
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The state of the renewal task.
struct Renewer {
    store: Store,
    ttl: Duration,
    interval: Duration,
    tx: watch::Sender<LeaseState>,
    renewals: Renewals,
}

impl Renewer {
    async fn run(self, stop: CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = self.renew_forever() => {}
        }
    }

    async fn renew_forever(&self) {
        loop {
            let id = self.grant().await;
            self.renew(id).await;
            // The server no longer knows the lease.
            self.tx.send_replace(LeaseState::NONE);
        }
    }

    /// Grants a lease, retrying until it succeeds, and publishes it.
    async fn grant(&self) -> LeaseId {
        let mut failures = 0u32;
        loop {
            let sent = Instant::now();
            match self.store.grant_with_ttl(self.ttl).await {
                Ok((id, granted)) => {
                    if failures > 0 {
                        info!(lease = id, failures, "lease granted after failures");
                    }
                    self.tx.send_replace(LeaseState {
                        id: Some(id),
                        valid_until: Some(sent + granted),
                    });
                    return id;
                }
                Err(e) => {
                    if failures == 0 {
                        warn!(error = %e, "cannot grant lease; retrying");
                    } else {
                        debug!(error = %e, "cannot grant lease; retrying");
                    }
                    failures += 1;
                    tokio::time::sleep(RETRY_DELAY.min(self.interval)).await;
                }
            }
        }
    }

    /// Renews `id` until the server reports it gone.
    async fn renew(&self, id: LeaseId) {
        let mut wait = self.interval;
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(wait).await;
            let sent = Instant::now();
            match self.store.keep_alive_once(id).await {
                Ok(Some(granted)) => {
                    self.renewals.succeeded(sent.elapsed());
                    if failures > 0 {
                        info!(lease = id, failures, "lease renewed after failures");
                    }
                    failures = 0;
                    wait = self.interval;
                    self.tx.send_replace(LeaseState {
                        id: Some(id),
                        valid_until: Some(sent + granted),
                    });
                }
                Ok(None) => {
                    self.renewals.failed();
                    warn!(
                        lease = id,
                        "lease expired on the server; granting a new one"
                    );
                    return;
                }
                Err(e) => {
                    self.renewals.failed();
                    if failures == 0 {
                        warn!(lease = id, error = %e, "cannot renew lease; retrying");
                    } else {
                        debug!(lease = id, error = %e, "cannot renew lease; retrying");
                    }
                    failures += 1;
                    wait = RETRY_DELAY.min(self.interval);
                }
            }
        }
    }
}
