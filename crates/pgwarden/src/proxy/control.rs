//! The proxy's control loop: read the cluster, compute the routes, carry them
//! out, acknowledge them.
//!
//! It reads the whole cluster on every store change and at least once a
//! second, asks the pure [`route`] where connections go, and replaces the
//! routing [`Table`]; connections to a backend that lost its route are cut
//! and their relays waited for *before* the generation is acknowledged under
//! `proxies/<id>`, because the sentinel promotes a new primary only once
//! every live proxy acknowledged that it stopped routing to the old one.
//!
//! The acknowledgement key lives on this proxy's lease, so a proxy that dies
//! or is cut off stops being waited for once its lease expires. The loop
//! therefore routes only while both hold:
//!
//! - the last successful read of the store was *sent* less than `proxy_ttl`
//!   ago (if the store cannot be read, the sentinel may be promoting someone
//!   else);
//! - its lease is known valid, with a sixth of `proxy_ttl` to spare, and the
//!   key was written under it: once the lease may have expired, the sentinel
//!   no longer waits for this proxy. As in the keeper's primary lease, the
//!   renewals go through a client of their own with timeouts short enough to
//!   try another endpoint well within that margin.
//!
//! Past that deadline it stops routing and cuts every connection, even while
//! it is still waiting for an answer from the store. The lease's TTL is the
//! spec's `proxy_ttl` at start-up; a changed `proxy_ttl` takes effect on the
//! lease when the proxy restarts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use pgwarden_core::route::{route, Routes};
use pgwarden_core::timing;
use pgwarden_core::{keys, Status};
use pgwarden_store::{LeaseId, LeaseKeeper, LeaseState, Store, StoreOptions};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::table::{cut, Table};
use crate::view::{self, Snapshot, ViewError};

/// How often the cluster is read without a store event.
pub const TICK: Duration = Duration::from_secs(1);

/// The control loop's state.
#[derive(Debug)]
pub struct Control {
    store: Store,
    /// `proxies/<id>`.
    key: String,
    table: watch::Sender<Arc<Table>>,
    /// Parent of every target's cancellation token.
    root: CancellationToken,
    /// The newest status accepted; an older generation is ignored.
    status: Option<Status>,
    /// What the last successful read says to do, or why it says nothing.
    routes: Result<Routes, String>,
    /// When the last successful read was sent, plus `proxy_ttl`.
    read_until: Option<Instant>,
    proxy_ttl: Duration,
    /// The lease and generation last written under `proxies/<id>`.
    published: Option<(LeaseId, u64)>,
    read_failures: u32,
    publish_failures: u32,
    /// The older generation last warned about, to warn once per generation.
    ignored_generation: Option<u64>,
    /// The spec and status last read whole: routing carries on with them
    /// while the store holds copies that cannot be read.
    last_good: view::LastGood,
}

impl Control {
    /// A control loop for proxy `id`, publishing tables to `table`.
    pub fn new(
        store: Store,
        id: &str,
        table: watch::Sender<Arc<Table>>,
        root: CancellationToken,
    ) -> Control {
        Control {
            store,
            key: format!("{}{id}", keys::PROXIES_PREFIX),
            table,
            root,
            status: None,
            routes: Err("the cluster has not been read yet".into()),
            read_until: None,
            proxy_ttl: Duration::ZERO,
            published: None,
            read_failures: 0,
            publish_failures: 0,
            ignored_generation: None,
            last_good: view::LastGood::default(),
        }
    }

    /// Runs until `cancel`; fails only when the cluster is not initialised
    /// at start-up (an unreadable spec or status is waited out).
    pub async fn run(mut self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let mut changes = self.store.watch_prefix("", cancel.child_token());
        if !self.first_read(cancel).await? {
            return Ok(());
        }
        let lease_store = Store::new(
            self.store.endpoints(),
            self.store.cluster(),
            StoreOptions {
                request_timeout: timing::renewal_request_timeout(self.proxy_ttl),
                connect_timeout: timing::renewal_request_timeout(self.proxy_ttl),
                // The same TLS and credentials as the main client.
                ..self.store.options().clone()
            },
        )?;
        let lease = LeaseKeeper::spawn_with_interval(
            lease_store,
            self.proxy_ttl,
            timing::renewal_interval(self.proxy_ttl),
            cancel.child_token(),
        );
        let mut lease_state = lease.state();
        self.enforce(&lease_state).await;
        // Kept across iterations: lease renewals wake the loop more often
        // than TICK and must not postpone the periodic read.
        let mut next_read = Instant::now() + TICK;
        while !cancel.is_cancelled() {
            let wake = self.table.borrow().valid_until;
            let read = tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = changes.recv() => {
                    // Coalesce a burst of events into one read.
                    while changes.try_recv().is_ok() {}
                    true
                }
                _ = tokio::time::sleep_until(next_read) => true,
                // A renewal or a new lease: re-check, re-register if needed.
                Ok(()) = lease_state.changed() => false,
                _ = sleep_until(wake) => false,
            };
            if read {
                self.round(&lease_state).await;
                next_read = Instant::now() + TICK;
            } else {
                self.enforce(&lease_state).await;
            }
        }
        self.stop("shutting down".into()).await;
        lease.release().await;
        Ok(())
    }

    /// Reads the cluster until the store answers. `Ok(false)` when cancelled.
    async fn first_read(&mut self, cancel: &CancellationToken) -> anyhow::Result<bool> {
        loop {
            let sent = Instant::now();
            match view::load(&self.store).await {
                Ok(mut snap) => {
                    if !self.last_good.patch(&mut snap) {
                        // Unreadable, and no good copy yet: wait (patch
                        // logged why).
                        tokio::select! {
                            _ = cancel.cancelled() => return Ok(false),
                            _ = tokio::time::sleep(TICK) => {}
                        }
                        continue;
                    }
                    let Some(spec) = &snap.spec else {
                        bail!(
                            "cluster {:?} is not initialised in etcd at {}: run `pgwarden ctl init` first (or check --cluster-name)",
                            self.store.cluster(),
                            self.store.endpoints().join(",")
                        );
                    };
                    self.proxy_ttl = spec.proxy_ttl.0;
                    self.absorb(snap, sent);
                    return Ok(true);
                }
                Err(ViewError::Store(e)) => self.read_failed(&e),
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(false),
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Reads the cluster (giving up at the routing deadline) and enforces
    /// what it says.
    async fn round(&mut self, lease: &watch::Receiver<LeaseState>) {
        let bound = {
            let table = self.table.borrow();
            table.routing().then_some(table.valid_until).flatten()
        };
        let sent = Instant::now();
        match before(bound, view::load(&self.store)).await {
            Some(Ok(mut snap)) => {
                if !self.last_good.patch(&mut snap) {
                    // Not usable and no good copy: as if the read failed.
                    self.enforce(lease).await;
                    return;
                }
                if self.read_failures > 0 {
                    tracing::info!(
                        failures = self.read_failures,
                        "reading the cluster from etcd again"
                    );
                    self.read_failures = 0;
                }
                self.absorb(snap, sent);
            }
            Some(Err(e)) => self.read_failed(&e),
            // The deadline passed while waiting: enforce() stops routing.
            None => {}
        }
        self.enforce(lease).await;
    }

    fn read_failed(&mut self, e: &dyn std::error::Error) {
        self.read_failures += 1;
        let error = error_chain(e);
        if self.read_failures == 1 {
            tracing::warn!(%error, "cannot read the cluster from etcd; retrying (routing stops {:?} after the last successful read)", self.proxy_ttl);
        } else {
            tracing::debug!(%error, "cannot read the cluster from etcd; retrying");
        }
    }

    /// Takes in a successful read sent at `sent`.
    fn absorb(&mut self, snap: Snapshot, sent: Instant) {
        let Some(spec) = snap.spec else {
            self.routes = Err("the cluster spec is gone from etcd".into());
            return;
        };
        self.read_until = Some(Instant::from_std(timing::read_valid_until(
            sent.into_std(),
            spec.proxy_ttl.0,
        )));
        let status = match self.status.take() {
            Some(accepted) if snap.status.generation < accepted.generation => {
                if self.ignored_generation != Some(snap.status.generation) {
                    self.ignored_generation = Some(snap.status.generation);
                    tracing::warn!(
                        generation = snap.status.generation,
                        applied = accepted.generation,
                        "ignoring a status older than the one already applied"
                    );
                }
                accepted
            }
            _ => snap.status,
        };
        self.routes = Ok(route(
            &status,
            &snap.keepers,
            snap.primary_holder.as_deref(),
            &spec,
        ));
        self.status = Some(status);
    }

    /// Until when routing is allowed: core's [`timing::routing_deadline`].
    fn deadline(&self, lease: &LeaseState) -> Option<Instant> {
        timing::routing_deadline(
            self.read_until.map(Instant::into_std),
            lease.valid_until.map(Instant::into_std),
            lease.electing,
            self.proxy_ttl,
        )
        .map(Instant::from_std)
    }

    /// Brings the table in line with the routes, the deadline and the lease,
    /// and acknowledges the applied generation.
    async fn enforce(&mut self, lease: &watch::Receiver<LeaseState>) {
        let state = *lease.borrow();
        let now = Instant::now();
        let routes = match &self.routes {
            Ok(r) => r.clone(),
            Err(why) => return self.stop(why.clone()).await,
        };
        let (Some(deadline), Some(lease_id)) = (self.deadline(&state), state.id) else {
            return self
                .stop("waiting for this proxy's lease in etcd".into())
                .await;
        };
        if deadline <= now {
            let why = if self.read_until.is_some_and(|t| t <= now) {
                format!(
                    "no successful read of etcd for {:?}: the sentinel may be promoting another primary",
                    self.proxy_ttl
                )
            } else {
                "this proxy's lease in etcd may have expired: the sentinel no longer waits for it"
                    .to_string()
            };
            return self.stop(why).await;
        }
        if self.published.map(|(l, _)| l) != Some(lease_id) {
            // Until the key exists under this lease the sentinel does not
            // know this proxy: route nothing, so acknowledging is truthful.
            self.stop("registering in etcd".into()).await;
            if !self.publish(lease_id, routes.generation, deadline).await {
                return;
            }
        }
        self.apply(&routes, deadline).await;
        if self.published != Some((lease_id, routes.generation)) {
            self.publish(lease_id, routes.generation, deadline).await;
        }
    }

    /// Writes the applied generation under this proxy's lease.
    async fn publish(&mut self, lease: LeaseId, generation: u64, deadline: Instant) -> bool {
        let put = self
            .store
            .put(&self.key, generation.to_string().into_bytes(), Some(lease));
        match before(Some(deadline), put).await {
            Some(Ok(_)) => {
                if self.publish_failures > 0 {
                    tracing::info!(failures = self.publish_failures, "acknowledging again");
                    self.publish_failures = 0;
                }
                tracing::debug!(generation, "acknowledged generation");
                self.published = Some((lease, generation));
                true
            }
            Some(Err(e)) => {
                self.publish_failures += 1;
                let error = error_chain(&e);
                if self.publish_failures == 1 {
                    tracing::warn!(%error, generation, "cannot acknowledge the generation in etcd; retrying");
                } else {
                    tracing::debug!(%error, generation, "cannot acknowledge the generation in etcd; retrying");
                }
                false
            }
            None => false,
        }
    }

    /// Routes by `routes` until `valid_until`, cutting withdrawn routes.
    async fn apply(&mut self, routes: &Routes, valid_until: Instant) {
        let old = self.table.borrow().clone();
        let (next, to_cut) = old.follow(routes, valid_until, &self.root);
        log_change(&old, &next);
        self.table.send_replace(Arc::new(next));
        if to_cut.is_empty() {
            return;
        }
        let backends: Vec<String> = to_cut.iter().map(|t| t.backend.to_string()).collect();
        let closed = cut(to_cut).await;
        if closed > 0 {
            tracing::info!(
                closed,
                "closed the connections of withdrawn routes: {}",
                backends.join(", ")
            );
        }
    }

    /// Routes nothing, for `why`, and cuts every connection.
    async fn stop(&mut self, why: String) {
        let old = self.table.borrow().clone();
        if old.stopped.as_deref() == Some(why.as_str()) {
            return;
        }
        let (next, to_cut) = old.stop(why.clone());
        self.table.send_replace(Arc::new(next));
        let closed = cut(to_cut).await;
        if old.routing() {
            tracing::warn!(closed, "stopped routing: {why}");
        } else {
            tracing::debug!("not routing: {why}");
        }
    }
}

/// One INFO line when where new connections go changes.
fn log_change(old: &Table, next: &Table) {
    let primary = |t: &Table| t.primary.as_ref().map(|p| p.backend.clone());
    let read_only = |t: &Table| {
        t.read_only
            .iter()
            .map(|p| p.backend.clone())
            .collect::<Vec<_>>()
    };
    if old.routing() == next.routing()
        && primary(old) == primary(next)
        && old.no_primary == next.no_primary
        && read_only(old) == read_only(next)
    {
        return;
    }
    let primary = match (&next.primary, &next.no_primary) {
        (Some(t), _) => t.backend.to_string(),
        (None, Some(why)) => format!("nowhere ({why})"),
        (None, None) => "nowhere".to_string(),
    };
    let read_only = if next.read_only.is_empty() {
        "nowhere (no standby is healthy and within the maximum lag)".to_string()
    } else {
        read_only(next)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    tracing::info!(
        generation = next.generation,
        "routing: primary port to {primary}; read-only port to {read_only}"
    );
}

/// `f`'s output, or `None` if `deadline` passes first.
async fn before<F: Future>(deadline: Option<Instant>, f: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await.ok(),
        None => Some(f.await),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
