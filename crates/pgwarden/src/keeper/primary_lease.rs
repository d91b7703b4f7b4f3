//! The primary lease: the proof that this node may accept writes, and the
//! self-fencing that keeps that proof honest.
//!
//! A keeper starts or promotes postgres as primary only while it holds the
//! `primary` key under a lease of its own. A dedicated task renews the lease;
//! a second task, the fencer, watches the locally computed validity
//! (`valid_until` = send time of the last successful renewal + TTL) and, if no
//! renewal succeeded by `valid_until - margin`, kills postgres (every
//! process of the instance) *before* etcd can expire the lease and the sentinel can
//! promote anyone else. The margin absorbs clock-rate drift and scheduling
//! delay; etcd starts the TTL when it receives the renewal, which is later than
//! when we sent it, so our deadline is always the earlier one.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwarden_core::{keys, timing};
use pgwarden_store::{LeaseKeeper, LeaseState, Renewals, Store, StoreOptions};

use super::uid_claim::UidClaim;
use super::watchdog::Watchdog;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long try_hold waits for a new lease's grant.
const GRANT_WAIT: Duration = Duration::from_secs(1);

/// While fenced, how often the fencer checks for (and kills) a postmaster.
const REFENCE_INTERVAL: Duration = Duration::from_millis(50);

/// The pid of the running postmaster (0 when none), shared with the fencer.
pub type PostmasterPid = Arc<AtomicU32>;

/// This keeper's claim on the primary role.
#[derive(Debug)]
pub struct PrimaryLease {
    store: Store,
    uid: String,
    lease: LeaseKeeper,
    fencer: CancellationToken,
    /// How long before `valid_until` the fencer kills postgres.
    margin: Duration,
    /// The out-of-process fencer, told every deadline.
    watchdog: Watchdog,
}

impl PrimaryLease {
    /// Starts renewing a lease of `ttl` and fencing on its behalf. The key is
    /// not written until [`PrimaryLease::try_hold`]. Renewals are counted
    /// into `renewals`, for the API's metrics.
    pub fn start(
        watchdog: Watchdog,
        store: &Store,
        uid: &str,
        ttl: Duration,
        postmaster: PostmasterPid,
        renewals: Renewals,
    ) -> anyhow::Result<Self> {
        // A renewal must not wait on a hung member for long, so this lease
        // gets its own client with short timeouts.
        let options = StoreOptions {
            request_timeout: timing::renewal_request_timeout(ttl),
            connect_timeout: timing::renewal_request_timeout(ttl),
            // The same TLS and credentials as the main client.
            ..store.options().clone()
        };
        let store = Store::new(store.endpoints(), store.cluster(), options)?;
        let lease = LeaseKeeper::spawn_counted_with_interval(
            store.clone(),
            ttl,
            timing::renewal_interval(ttl),
            CancellationToken::new(),
            renewals,
        );
        let fencer = CancellationToken::new();
        let margin = timing::fencing_margin(ttl);
        let (arm, kill) = (watchdog.clone(), watchdog.clone());
        tokio::spawn(fence(
            lease.state(),
            margin,
            timing::watchdog_margin(ttl),
            move |d| arm.arm(d),
            move |why| kill_postmaster(&postmaster, kill.data_dir(), why),
            fencer.clone(),
        ));
        Ok(PrimaryLease {
            store,
            uid: uid.to_string(),
            lease,
            fencer,
            margin,
            watchdog,
        })
    }

    /// Makes sure the `primary` key names this keeper under the current,
    /// locally valid lease. True when it does.
    ///
    /// The key may name this uid under another lease: an earlier run of this
    /// keeper that died, or a second process given the same uid. It is taken
    /// over only while `claim` proves that this process alone runs under the
    /// uid (see [`UidClaim`]): then the other lease's holder is dead and the
    /// lease merely not expired yet.
    pub async fn try_hold(&self, claim: Option<&UidClaim>) -> bool {
        // Only before the fencing deadline: past it the fencer kills postgres,
        // so starting it would make a writable node nothing fences any more.
        let mut rx = self.lease.state();
        if rx.borrow().id.is_none() {
            // Just started: wait (briefly) for the grant rather than a whole
            // keeper tick; a promotion is waiting on it.
            let _ = tokio::time::timeout(GRANT_WAIT, rx.wait_for(|s| s.id.is_some())).await;
        }
        let state = *rx.borrow();
        let Some(id) = state.valid_at(Instant::now() + self.margin) else {
            return false;
        };
        let me = self.uid.as_bytes().to_vec();
        match self.store.create(keys::PRIMARY, me.clone(), Some(id)).await {
            Ok(Some(_)) => {
                tracing::info!("holding the primary lease");
                true
            }
            Ok(None) => match self.store.get(keys::PRIMARY).await {
                Ok(Some(v)) if v.value == me && v.lease == id => true,
                Ok(Some(v)) if v.value == me => {
                    // Ours under an older lease of a previous run of this
                    // keeper: move it to the current lease, atomically. Only
                    // with proof that the previous run is gone: otherwise
                    // wait for its lease to expire.
                    let proven = match claim {
                        Some(c) => c.still_ours(&self.store).await,
                        None => false,
                    };
                    if !proven {
                        tracing::debug!("the primary key names this uid under a lease of another process: waiting for it to expire");
                        return false;
                    }
                    matches!(
                        self.store
                            .cas(keys::PRIMARY, me, v.mod_revision, &[], Some(id))
                            .await,
                        Ok(pgwarden_store::CasOutcome::Written { .. })
                    )
                }
                Ok(Some(v)) => {
                    tracing::debug!(holder = %String::from_utf8_lossy(&v.value), "primary lease held by another keeper");
                    false
                }
                _ => false,
            },
            Err(e) => {
                tracing::debug!(error = %e, "cannot write the primary key");
                false
            }
        }
    }

    /// Until when the lease is locally known to be valid.
    pub fn valid_until(&self) -> Option<Instant> {
        let state = *self.lease.state().borrow();
        state.valid_at(Instant::now()).and(state.valid_until)
    }

    /// Gives the role up: deletes the key if it is ours and revokes the lease.
    /// Call only once postgres no longer accepts writes.
    pub async fn release(self) {
        self.fencer.cancel();
        self.watchdog.disarm();
        // Copied out first: a watch borrow held across the await below
        // would block the renewal task's next publication, and with it a
        // runtime worker.
        let id = self.lease.state().borrow().id;
        if let Some(id) = id {
            let _ = self.store.delete_if_lease(keys::PRIMARY, id).await;
        }
        self.lease.release().await;
        tracing::info!("primary lease released");
    }
}

/// Kills postgres (`kill`, with the reason) when the lease can no longer be
/// proven valid `margin` before it could expire on the server, and tells the
/// watchdog (`arm`) by when it must hear again, `watchdog_margin` before.
async fn fence(
    mut state: watch::Receiver<LeaseState>,
    margin: Duration,
    watchdog_margin: Duration,
    arm: impl Fn(Duration),
    kill: impl Fn(&str),
    stop: CancellationToken,
) {
    let mut ever_valid = false;
    loop {
        let current = *state.borrow_and_update();
        let deadline = match current.valid_until {
            Some(until) => {
                ever_valid = true;
                let deadline = until.checked_sub(margin).unwrap_or(until);
                // The watchdog acts even if this process is frozen. It is the
                // backstop, so it fires later (see timing::watchdog_margin).
                let backstop = until.checked_sub(watchdog_margin).unwrap_or(until);
                arm(backstop.saturating_duration_since(Instant::now()));
                Some(deadline)
            }
            // Lost after having held it: the deadline has passed.
            None if ever_valid => Some(Instant::now()),
            None => None,
        };
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = state.changed() => {
                if changed.is_err() {
                    // The renewal task is gone: nothing renews any more.
                    kill("the lease renewal task stopped");
                    return;
                }
            }
            _ = expired => {
                kill("the primary lease could not be renewed in time");
                // Stay armed until a renewal: any postmaster started meanwhile
                // is killed too.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = state.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            break;
                        }
                        _ = tokio::time::sleep(REFENCE_INTERVAL) => {
                            kill("the primary lease is still not renewed");
                        }
                    }
                }
            }
        }
    }
}

fn kill_postmaster(postmaster: &PostmasterPid, data_dir: &Path, why: &str) {
    let pid = postmaster.load(Ordering::SeqCst);
    // Backends lead process groups of their own and outlive the postmaster
    // when busy: kill every process of the instance, orphans included.
    let killed = pgwarden_pg::fence::kill_instance(data_dir, pid);
    if !killed.is_empty() {
        tracing::error!(
            ?killed,
            "fenced: postgres killed because {why}; it must not accept writes without the lease"
        );
    }
}

#[cfg(test)]
mod tests;
