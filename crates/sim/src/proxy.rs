//! The proxy model: `crates/pgwarden/src/proxy/control.rs` around the real
//! [`route`].
//!
//! A proxy reads the cluster, keeps the newest status it has seen (an older
//! generation is ignored), computes routes, and routes only until the
//! deadline core's [`timing::routing_deadline`] gives (the earlier of
//! the read's and the lease's), on its own clock. It acknowledges a generation under
//! its lease only after routing by it, so the sentinel's wait for proxies is
//! truthful. A frozen proxy passes no traffic; when it thaws, its overdue
//! deadline timer runs before anything else (the world runs timers first).

use std::time::Duration;

use pgwarden_core::route::{route, Routes};
use pgwarden_core::timing;
use pgwarden_core::{keys, Status};

use crate::ctx::Ctx;
use crate::events::{Applier, Event};
use crate::keeper::drifted;
use crate::lease::LeaseTask;
use crate::store::{LeaseId, Value};
use crate::view::Snapshot;

/// Where new primary-port connections go, and until when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Local time until which the table may be used; `None`: not routing.
    pub routing_until: Option<u64>,
    /// The primary port's backend (a keeper uid).
    pub primary: Option<String>,
    /// The generation the table carries out.
    pub generation: u64,
}

/// One proxy.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Its id, `proxies/<id>`.
    pub id: String,
    /// Stopped (SIGSTOP): no traffic, no loop, no renewals.
    pub frozen: bool,
    /// Its clock's rate error, parts per million.
    pub drift_ppm: i64,
    /// The routing table.
    pub table: Table,
    lease: Option<LeaseTask>,
    seen_lease_version: u64,
    status: Option<Status>,
    routes: Result<Routes, String>,
    read_until: Option<u64>,
    proxy_ttl_ms: u64,
    published: Option<(LeaseId, u64)>,
}

impl Proxy {
    /// A proxy that has not read the cluster yet.
    pub fn new(id: &str, drift_ppm: i64) -> Proxy {
        Proxy {
            id: id.to_string(),
            frozen: false,
            drift_ppm,
            table: Table::default(),
            lease: None,
            seen_lease_version: 0,
            status: None,
            routes: Err("the cluster has not been read yet".into()),
            read_until: None,
            proxy_ttl_ms: 0,
            published: None,
        }
    }

    /// The backend the primary port sends new connections to at `now`, if
    /// any (a frozen proxy passes nothing).
    pub fn routes_primary_to(&self, now: u64) -> Option<&str> {
        let local = drifted(now, self.drift_ppm);
        if self.frozen || self.table.routing_until.is_none_or(|u| local >= u) {
            return None;
        }
        self.table.primary.as_deref()
    }

    /// The routing deadline's timer.
    pub fn timer(&mut self, ctx: &mut Ctx<'_>) {
        let local = drifted(ctx.now, self.drift_ppm);
        if !self.frozen && self.table.routing_until.is_some_and(|u| local >= u) {
            self.enforce(ctx);
        }
    }

    /// One scheduling slot: the lease task, then a read of the cluster.
    pub fn act(&mut self, ctx: &mut Ctx<'_>) {
        if self.frozen {
            return;
        }
        let local = drifted(ctx.now, self.drift_ppm);
        let id = self.id.clone();
        if let Some(lease) = &mut self.lease {
            lease.poll(&id, local, ctx);
            if lease.version != self.seen_lease_version {
                self.seen_lease_version = lease.version;
                self.enforce(ctx);
            }
        }
        match ctx.call(&id, |s, _| Snapshot::read(s)) {
            Ok(snap) => {
                if self.lease.is_none() {
                    self.proxy_ttl_ms = snap.spec.proxy_ttl.as_millis();
                    self.lease = Some(LeaseTask::spawn(self.proxy_ttl_ms, ctx.now));
                }
                self.absorb(snap, local, ctx);
            }
            Err(_) => ctx.note(&id, || "cannot read the cluster".into()),
        }
        if self.lease.is_some() {
            self.enforce(ctx);
        }
    }

    fn absorb(&mut self, snap: Snapshot, sent_local: u64, ctx: &mut Ctx<'_>) {
        self.read_until = Some(timing::read_valid_until(sent_local, snap.spec.proxy_ttl.0));
        let status = match self.status.take() {
            Some(accepted) if snap.status.generation < accepted.generation => {
                ctx.note(&self.id, || "ignoring an older status".into());
                accepted
            }
            _ => snap.status,
        };
        self.routes = Ok(route(
            &status,
            &snap.keepers,
            snap.primary_holder.as_deref(),
            &snap.spec,
        ));
        self.status = Some(status);
    }

    /// Core's [`timing::routing_deadline`]; the model's store has no leader
    /// elections, so the lease is never proven alive while reads fail.
    fn deadline(&self) -> Option<u64> {
        timing::routing_deadline(
            self.read_until,
            self.lease.as_ref()?.valid_until,
            false,
            Duration::from_millis(self.proxy_ttl_ms),
        )
    }

    /// `Control::enforce`.
    fn enforce(&mut self, ctx: &mut Ctx<'_>) {
        let local = drifted(ctx.now, self.drift_ppm);
        let routes = match &self.routes {
            Ok(r) => r.clone(),
            Err(_) => return self.stop(),
        };
        let lease_id = self.lease.as_ref().and_then(|l| l.id);
        let (Some(deadline), Some(lease_id)) = (self.deadline(), lease_id) else {
            return self.stop();
        };
        if deadline <= local {
            return self.stop();
        }
        if self.published.map(|(l, _)| l) != Some(lease_id) {
            self.stop();
            if !self.publish(ctx, lease_id, routes.generation) {
                return;
            }
        }
        self.table = Table {
            routing_until: Some(deadline),
            primary: routes.primary.as_ref().map(|b| b.uid.clone()),
            generation: routes.generation,
        };
        ctx.events.push(Event::Applied {
            by: Applier::Proxy,
            id: self.id.clone(),
            incarnation: 1,
            generation: routes.generation,
        });
        if self.published != Some((lease_id, routes.generation)) {
            self.publish(ctx, lease_id, routes.generation);
        }
    }

    fn publish(&mut self, ctx: &mut Ctx<'_>, lease: LeaseId, generation: u64) -> bool {
        let key = format!("{}{}", keys::PROXIES_PREFIX, self.id);
        let value = Value::Text(generation.to_string());
        match ctx.call(&self.id, |s, _| s.put(&key, value, Some(lease))) {
            Ok(Ok(_)) => {
                self.published = Some((lease, generation));
                true
            }
            _ => false,
        }
    }

    fn stop(&mut self) {
        self.table.routing_until = None;
        self.table.primary = None;
    }
}
