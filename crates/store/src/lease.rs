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
//! Renewal sends one short request per interval (not a long-lived keep-alive
//! stream) to every endpoint at once, and the first answer counts, so a dead
//! or leaderless member costs no timeout. While renewals fail, the task asks
//! the members whether etcd is electing a leader; if a quorum proves it (see
//! [`crate::quorum`]), the lease cannot expire before a new leader takes
//! office, and `valid_until` is extended to the send time of that question +
//! the TTL. So an etcd leader election, which takes 1-2.7 s at etcd's default
//! timing, does not make a holder give up a lease that is still alive.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{LeaseId, Renewals, Store};

/// Wait before retrying a failed grant or renewal (capped by the renewal
/// interval).
const RETRY_DELAY: Duration = Duration::from_millis(50);
/// While renewals are overdue, how often the members are asked whether etcd
/// is electing a leader.
const ELECTION_PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How long the members get to answer that question.
const ELECTION_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// What a [`LeaseKeeper`] currently holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease id; `None` until the first grant, after the server reported
    /// the lease gone (until a new one is granted), and after release.
    pub id: Option<LeaseId>,
    /// Until when the lease is known to be valid (see the module docs).
    pub valid_until: Option<Instant>,
    /// True while `valid_until` rests on a quorum of members having no
    /// leader rather than on a renewal: etcd is electing a leader, and
    /// nothing can be written to it meanwhile.
    pub electing: bool,
}

impl LeaseState {
    const NONE: LeaseState = LeaseState {
        id: None,
        valid_until: None,
        electing: false,
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
    /// Spawns the renewal task, renewing every `ttl / 4` (callers that fence
    /// on the lease pass a shorter interval, see `spawn_with_interval`).
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

    /// [`LeaseKeeper::spawn_counted`] with an explicit renewal interval.
    pub fn spawn_counted_with_interval(
        store: Store,
        ttl: Duration,
        interval: Duration,
        cancel: CancellationToken,
        renewals: Renewals,
    ) -> LeaseKeeper {
        Self::start(store, ttl, interval, cancel, renewals)
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

/// The last successful renewal of one lease, shared by the renewal loop and
/// the election probe.
#[derive(Debug, Clone, Copy)]
struct Renewed {
    /// When the request that succeeded was sent.
    sent: Instant,
    /// The TTL the server granted.
    ttl: Duration,
    /// The raft term of the answer.
    term: u64,
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
            let (id, renewed) = self.grant().await;
            let last = Mutex::new(renewed);
            tokio::select! {
                _ = self.renew(id, &last) => {}
                never = self.probe_elections(id, &last) => match never {},
            }
            // The server no longer knows the lease.
            self.tx.send_replace(LeaseState::NONE);
        }
    }

    /// Grants a lease, retrying until it succeeds, and publishes it.
    async fn grant(&self) -> (LeaseId, Renewed) {
        let mut failures = 0u32;
        loop {
            let sent = Instant::now();
            match self.store.grant_with_ttl(self.ttl).await {
                Ok((id, granted, term)) => {
                    if failures > 0 {
                        info!(lease = id, failures, "lease granted after failures");
                    }
                    self.tx.send_replace(LeaseState {
                        id: Some(id),
                        valid_until: Some(sent + granted),
                        electing: false,
                    });
                    let renewed = Renewed {
                        sent,
                        ttl: granted,
                        term,
                    };
                    return (id, renewed);
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

    /// Renews `id` every interval until the server reports it gone.
    async fn renew(&self, id: LeaseId, last: &Mutex<Renewed>) {
        let mut next = Instant::now() + self.interval;
        let mut failures = 0u32;
        loop {
            tokio::time::sleep_until(next).await;
            let sent = Instant::now();
            match self.store.keep_alive_hedged(id).await {
                Ok(Some((granted, term))) => {
                    self.renewals.succeeded(sent.elapsed());
                    if failures > 0 {
                        info!(lease = id, failures, "lease renewed after failures");
                    }
                    failures = 0;
                    next = sent + self.interval;
                    *lock(last) = Renewed {
                        sent,
                        ttl: granted,
                        term,
                    };
                    self.extend(id, sent + granted, false);
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
                    next = Instant::now() + RETRY_DELAY.min(self.interval);
                }
            }
        }
    }

    /// While renewals of `id` are overdue, asks the members whether etcd is
    /// electing a leader, and extends the lease's local validity while a
    /// quorum proves it (see [`crate::quorum`]). Never returns.
    async fn probe_elections(
        &self,
        id: LeaseId,
        last: &Mutex<Renewed>,
    ) -> std::convert::Infallible {
        let mut in_election = None;
        loop {
            tokio::time::sleep(ELECTION_PROBE_INTERVAL).await;
            let renewed = *lock(last);
            if renewed.sent.elapsed() < self.interval * 2 {
                in_election = None;
                continue;
            }
            let asked = Instant::now();
            let Some(term) = self.store.leaderless_quorum(ELECTION_PROBE_TIMEOUT).await else {
                continue;
            };
            if term <= renewed.term {
                // Leaderless in the term of our last renewal: a member may
                // yet come to follow that term's leader, which could revoke.
                continue;
            }
            // The answers count only if they came while the lease was still
            // valid by the proof we had: no revocation could precede them.
            let still_valid = self
                .tx
                .borrow()
                .valid_at(Instant::now())
                .is_some_and(|held| held == id);
            if !still_valid {
                continue;
            }
            if self.extend(id, asked + renewed.ttl, true) && in_election != Some(term) {
                info!(
                    lease = id,
                    term,
                    "etcd is electing a leader (a quorum of members has none in term {term}): \
                     the lease cannot expire before a new leader, so it is still held"
                );
                in_election = Some(term);
            }
        }
    }

    /// Moves `id`'s local validity forward to `until` (never back), proven
    /// by a renewal or, with `electing`, by a leaderless quorum. True when
    /// it moved.
    fn extend(&self, id: LeaseId, until: Instant, electing: bool) -> bool {
        self.tx.send_if_modified(|state| {
            if state.id != Some(id) {
                return false;
            }
            if state.valid_until.is_none_or(|v| v < until) {
                state.valid_until = Some(until);
                state.electing = electing;
                true
            } else if state.electing && !electing {
                // A renewal ends the election, even when the proof reaches
                // further than the renewal.
                state.electing = false;
                true
            } else {
                false
            }
        })
    }
}

fn lock(last: &Mutex<Renewed>) -> std::sync::MutexGuard<'_, Renewed> {
    match last.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
