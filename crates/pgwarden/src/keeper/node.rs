//! The keeper's node: the postmaster it owns, what it observes of it, and the
//! execution of [`PgAction`]s. This file holds the loop (a tick: read the
//! cluster, observe, plan, act, publish); `observe` looks at postgres and
//! `actions` carries the plan out.
//!
//! The node keeps as little state as it can: the postmaster handle, a cached
//! SQL connection, and the last generation it carried out. Everything else is
//! observed afresh each tick.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pgwarden_core::keeper::{self, FailureCause};
use pgwarden_core::{
    keys, Assignment, ErrorKind, KeeperReport, Observed, ObservedRole, Spec, Status,
};
use pgwarden_pg::{ConnParams, PgBins, PgClient, PgConf, PgStatus, Postmaster, StandbyConf};
use pgwarden_store::{LeaseKeeper, LeaseState, Renewals, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::KeeperConfig;
use super::divergence::DivergenceCheck;
use super::primary_lease::{PostmasterPid, PrimaryLease};
use super::uid_claim::{self, UidClaim};
use super::watchdog::Watchdog;
use super::TICK;
use crate::local_state::LocalState;
use crate::view;

mod actions;
mod observe;

use observe::SyncObserved;

/// How long a fast shutdown may take before it escalates.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a started postgres to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The `max_slot_wal_keep_size` every node runs with unless the spec's
/// pg_parameters set another (`-1` turns the guard off).
pub const DEFAULT_MAX_SLOT_WAL_KEEP_SIZE: &str = "8GB";

pub struct Node {
    local: watch::Sender<Option<LocalState>>,
    /// TLS of the keeper's own connections (`--pg-ssl-ca-file`), if any.
    pg_tls: Option<pgwarden_pg::PgTls>,
    /// Kills postgres if this process cannot (frozen).
    watchdog: Watchdog,
    /// The last node request (restart, reinit) carried out.
    handled_node_request: u64,
    /// The pg_parameters postgres last accepted: the last good set.
    checked_parameters: Option<std::collections::BTreeMap<String, String>>,
    /// The spec's pg_parameters postgres rejected, and why: while the spec
    /// carries them, the last good set is rendered instead and the report
    /// says so.
    rejected_parameters: Option<(std::collections::BTreeMap<String, String>, String)>,
    /// Whether `last_error` disqualifies this node from promotion.
    last_error_kind: ErrorKind,
    /// WAL bytes each replication slot retains, as last observed.
    slot_retained: std::collections::BTreeMap<String, u64>,
    /// Retryable pg_rewind failures in a row.
    rewind_failures: u32,
    /// No pg_rewind before this instant, and why.
    rewind_retry: Option<(tokio::time::Instant, String)>,
    /// Postgres reports parameters waiting for a restart.
    pending_restart: bool,
    /// synchronous_standby_names the status asks of this node as primary.
    sync_names: String,
    /// On a primary: the synchronous_standby_names in effect and the
    /// standbys pg_stat_replication shows synchronous.
    sync_observed: Option<SyncObserved>,
    /// Until the next tick without an event: short while a failover or
    /// switchover is between its two steps (the sentinel waits on our
    /// positions).
    period: Duration,
    /// pg_rewind said the data directory cannot be rewound (an observed
    /// fact for plan, which turns it into a re-clone); cleared when the
    /// directory is replaced.
    unrewindable: bool,
    assigned_primary: bool,
    generation: u64,
    cfg: KeeperConfig,
    store: Store,
    bins: PgBins,
    postmaster: Option<Postmaster>,
    client: Option<PgClient>,
    /// The replication role was ensured since postgres last started as primary.
    role_ready: bool,
    applied_generation: u64,
    system_id: Option<u64>,
    /// Last thing that went wrong, for the report and to log each error once.
    last_error: Option<String>,
    /// A long action is running (initdb, base backup, rewind).
    initializing: bool,
    primary_lease: Option<PrimaryLease>,
    /// Renewals of every primary lease this keeper held, for the API.
    lease_renewals: Renewals,
    /// When postgres last died without being asked to.
    crashed_at: Option<tokio::time::Instant>,
    /// The last position and timeline postgres reported, kept for the report
    /// while it is down: the sentinel compares standbys against it.
    last_position: Option<(pgwarden_core::Lsn, u32)>,
    /// The running postmaster's pid, for the fencer (0 when none).
    postmaster_pid: PostmasterPid,
    warned_store: bool,
    /// Watches a standby that stopped streaming for a fork it cannot follow.
    divergence: DivergenceCheck,
    /// This run's instance token, in every report.
    instance: String,
    /// This process's hold on `keepers/<uid>`; `None` until claimed.
    claim: Option<UidClaim>,
    /// Another keeper took this uid: the keeper stops.
    uid_lost: Option<uid_claim::ClaimError>,
    /// The spec and status last read whole, used while the store holds
    /// copies that cannot be read.
    last_good: view::LastGood,
}

/// What one observation found, beyond what `plan` needs.
struct Observation {
    plan_input: Observed,
    pg: Option<PgStatus>,
}

impl Node {
    pub fn new(
        watchdog: Watchdog,
        cfg: KeeperConfig,
        store: Store,
        bins: PgBins,
        pg_tls: Option<pgwarden_pg::PgTls>,
        local: watch::Sender<Option<LocalState>>,
    ) -> Self {
        Node {
            watchdog,
            local,
            pg_tls,
            handled_node_request: 0,
            checked_parameters: None,
            rejected_parameters: None,
            last_error_kind: ErrorKind::Transient,
            slot_retained: std::collections::BTreeMap::new(),
            rewind_failures: 0,
            rewind_retry: None,
            pending_restart: false,
            sync_names: String::new(),
            sync_observed: None,
            period: TICK,
            unrewindable: false,
            assigned_primary: false,
            generation: 0,
            cfg,
            store,
            bins,
            postmaster: None,
            client: None,
            role_ready: false,
            applied_generation: 0,
            system_id: None,
            last_error: None,
            initializing: false,
            primary_lease: None,
            lease_renewals: Renewals::default(),
            crashed_at: None,
            last_position: None,
            postmaster_pid: PostmasterPid::default(),
            warned_store: false,
            divergence: DivergenceCheck::default(),
            instance: uid_claim::new_instance(),
            claim: None,
            uid_lost: None,
            last_good: view::LastGood::default(),
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let report_ttl = self.initial_spec().await.keeper_report_ttl.0;
        let report_lease = LeaseKeeper::spawn(self.store.clone(), report_ttl, cancel.child_token());
        let mut lease_state = report_lease.state();
        if let Ok(snap) = view::load(&self.store).await {
            let others = snap.status.members.keys().chain(snap.keepers.keys());
            if let Some(why) = uid_claim::slot_collision(&self.cfg.uid, others.map(String::as_str))
            {
                report_lease.release().await;
                anyhow::bail!(why);
            }
        }
        // Claim the uid before touching postgres: a second keeper with a
        // live keeper's uid must not clone, start or promote anything.
        let claimed = async {
            let id = loop {
                if let Some(id) = lease_state.borrow().id {
                    break id;
                }
                if lease_state.changed().await.is_err() {
                    anyhow::bail!("the report lease task stopped");
                }
            };
            Ok(UidClaim::claim(&self.store, &self.report(None), id, report_ttl).await?)
        };
        let claim = tokio::select! {
            _ = cancel.cancelled() => {
                report_lease.release().await;
                return Ok(());
            }
            c = claimed => c,
        };
        match claim {
            Ok(c) => {
                self.claim = Some(c);
                self.handled_node_request = self.load_handled_request().await;
            }
            Err(e) => {
                report_lease.release().await;
                return Err(e);
            }
        }
        let mut status_changes = self.store.watch_prefix(keys::STATUS, cancel.child_token());
        tracing::info!(data_dir = %self.cfg.data_dir.display(), "keeper started");
        let result = loop {
            if let Err(e) = self.tick(&lease_state).await {
                if e.downcast_ref::<pgwarden_core::PlanError>().is_some() {
                    break Err(e);
                }
                let kind = error_kind(&e);
                self.note_error(format!("{e:#}"));
                self.last_error_kind = kind;
            }
            if let Some(lost) = self.uid_lost.take() {
                break Err(anyhow::Error::new(lost)
                    .context("another keeper took this keeper's uid; stopping"));
            }
            let exited = async {
                match &self.postmaster {
                    Some(pm) => pm.exited().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                _ = status_changes.recv() => {}
                info = exited => tracing::warn!("postgres exited: {info}"),
                _ = tokio::time::sleep(self.period) => {}
            }
        };
        self.shutdown().await;
        report_lease.release().await;
        result
    }

    async fn initial_spec(&mut self) -> Spec {
        loop {
            match view::load(&self.store).await {
                Ok(mut snap) => {
                    // An unreadable spec: wait (patch logs why, once).
                    if self.last_good.patch(&mut snap) {
                        return snap.spec.unwrap_or_default();
                    }
                }
                Err(e) => {
                    if !self.warned_store {
                        tracing::warn!(error = %e, "cannot read the cluster from etcd; retrying");
                        self.warned_store = true;
                    }
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// Records a transient error for the report, logging it once.
    fn note_error(&mut self, message: String) {
        if self.last_error.as_deref() != Some(&message) {
            tracing::warn!("{message}");
        }
        self.last_error = Some(message);
        self.last_error_kind = ErrorKind::Transient;
    }

    async fn tick(&mut self, lease: &watch::Receiver<LeaseState>) -> anyhow::Result<()> {
        let mut snap = match view::load(&self.store).await {
            Ok(s) => {
                if self.warned_store {
                    tracing::info!("etcd reachable again");
                    self.warned_store = false;
                }
                s
            }
            Err(e) => {
                if !self.warned_store {
                    tracing::warn!(error = %e, "cannot read the cluster from etcd; postgres keeps its current role; retrying");
                    self.warned_store = true;
                }
                return Ok(());
            }
        };
        if !self.last_good.patch(&mut snap) {
            // Unreadable and no good copy yet: postgres keeps its role.
            let problem = snap.spec_problem.as_ref().or(snap.status_problem.as_ref());
            if let Some(p) = problem {
                self.last_error = Some(format!("{p}; waiting"));
            }
            self.publish(lease, None).await;
            return Ok(());
        }
        let Some(spec) = snap.spec else {
            self.note_error(format!(
                "cluster {} is not initialised: run `pgwarden ctl init`; waiting",
                self.store.cluster()
            ));
            self.publish(lease, None).await;
            return Ok(());
        };
        let status = snap.status;
        let uid = self.cfg.uid.clone();
        let mut tick = match keeper::Tick::new(
            &uid,
            &spec,
            &status,
            self.applied_generation,
            self.handled_node_request,
        ) {
            Ok(t) => t,
            Err(stale) => {
                tracing::warn!(
                    generation = stale.generation,
                    applied = stale.applied,
                    "ignoring a status older than the one already carried out"
                );
                return Ok(());
            }
        };
        let assignment = tick.assignment.cloned();
        self.assigned_primary = tick.wants_primary();
        self.period = Duration::from_millis(tick.period_ms);
        self.sync_names = tick.sync_names.clone();
        self.generation = status.generation;
        let wal_gone = self
            .postmaster
            .as_ref()
            .map_or(0, pgwarden_pg::Postmaster::wal_gone_reports);
        if tick.reclone_for_lost_wal(wal_gone) {
            tracing::warn!(
                reports = wal_gone,
                "the primary no longer has the WAL this standby needs (its slot was dropped while it was away?): re-cloning from the primary"
            );
        }
        let holds_primary_lease =
            tick.takes_primary_lease() && self.hold_primary_lease(&spec).await;
        let mut failed = None;
        let mut round = 0;
        let step = loop {
            let obs = self.observe(&spec, &status, assignment.as_ref()).await?;
            let step = tick.step(&keeper::Round {
                observed: &obs.plan_input,
                holds_primary_lease,
                crashed_ms_ago: self.crashed_at.map(|t| millis(t.elapsed())),
                round,
            })?;
            if step.await_crash_verdict {
                // Let the sentinel see postgres down and fail over to a
                // caught-up standby if there is one; restart in place otherwise.
                self.publish(lease, None).await;
                return Ok(());
            }
            if step.actions.is_empty() || failed.is_some() {
                break (step, obs.pg);
            }
            for action in &step.actions {
                let what = format!("{action:?}");
                if let Err(e) = self.execute(action, &spec, assignment.as_ref()).await {
                    failed = Some(e.context(format!("postgres action {what}")));
                    break;
                }
                if let Some(r) = tick.carried_out(action) {
                    tracing::info!(id = r.id, action = ?r.action, "operator request carried out");
                    self.handled_node_request = r.id;
                    self.record_handled_request(r.id).await;
                }
            }
            round += 1;
        };
        let (step, pg) = step;
        self.sync_observed = self.observe_sync(pg.as_ref()).await;
        self.slot_retained = match (&self.client, &pg) {
            (Some(c), Some(_)) => c
                .slot_retained_wal()
                .await
                .map(|v| v.into_iter().collect())
                .unwrap_or_default(),
            _ => std::collections::BTreeMap::new(),
        };
        self.pending_restart = match (&self.client, &pg) {
            (Some(c), Some(_)) => c
                .query_one_string(
                    "SELECT coalesce(bool_or(pending_restart), false)::text FROM pg_settings",
                )
                .await
                .ok()
                .flatten()
                .is_some_and(|v| v == "true"),
            _ => false,
        };
        if failed.is_none() {
            self.applied_generation = status.generation;
            self.last_error = None;
        }
        if step.release_primary_lease {
            if let Some(lease) = self.primary_lease.take() {
                lease.release().await;
            }
        }
        self.publish(lease, pg.as_ref()).await;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The last node request a previous run of this keeper carried out.
    async fn load_handled_request(&self) -> u64 {
        match self.store.get(&keys::handled(&self.cfg.uid)).await {
            Ok(Some(v)) => std::str::from_utf8(&v.value)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0),
            Ok(None) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which node request was last carried out; a pending one may be repeated");
                0
            }
        }
    }

    /// Records in the store that node request `id` was carried out, so that
    /// a restarted keeper does not repeat it (a reinit would wipe again).
    async fn record_handled_request(&self, id: u64) {
        let key = keys::handled(&self.cfg.uid);
        if let Err(e) = self
            .store
            .put(&key, id.to_string().into_bytes(), None)
            .await
        {
            tracing::warn!(error = %e, id, "cannot record the carried-out node request in etcd; a restart of this keeper may repeat it");
        }
    }

    fn conn_params(&self, host: &str, port: u16) -> ConnParams {
        ConnParams {
            host: host.to_string(),
            port,
            user: self.cfg.su_username.clone(),
            password: self.cfg.su_password.clone(),
            dbname: "postgres".into(),
            connect_timeout: Duration::from_secs(2),
            tls: self.pg_tls.clone(),
        }
    }

    fn pg_conf(&self, spec: &Spec, assignment: Option<&Assignment>) -> PgConf {
        let standby = match assignment {
            Some(Assignment::Standby { host, port, .. }) => Some(StandbyConf {
                primary_conninfo: pgwarden_pg::primary_conninfo_tls(
                    host,
                    *port,
                    &self.cfg.repl_username,
                    &self.cfg.repl_password,
                    &self.cfg.uid,
                    self.cfg.pg_ssl.as_ref().and_then(|s| {
                        Some(pgwarden_pg::ConnTls {
                            root_cert: s.ca_file.to_str()?,
                            cert: s.cert_file.to_str()?,
                            key: s.key_file.to_str()?,
                        })
                    }),
                ),
                primary_slot_name: pgwarden_pg::slot_name(&self.cfg.uid),
            }),
            _ => None,
        };
        PgConf {
            listen_addresses: self.cfg.pg_listen_address.clone(),
            port: self.cfg.pg_port,
            application_name: self.cfg.uid.clone(),
            socket_dir: "/tmp".into(),
            max_wal_senders: 10,
            max_replication_slots: 10,
            wal_keep_size_mb: 128,
            parameters: {
                let mut p = self.effective_parameters(spec);
                // A standby confirms its flush position at least every
                // second, so commits waiting for a synchronous standby are
                // released promptly when the sync set changes (postgres'
                // default is 10 s).
                // A standby re-pointed before its slot exists on the new
                // primary retries after this (postgres' default is 5 s).
                p.entry("wal_retrieve_retry_interval".into())
                    .or_insert_with(|| "1s".into());
                p.entry("wal_receiver_status_interval".into())
                    .or_insert_with(|| "1s".into());
                // A slot of a member that never comes back must not fill the
                // disk: past this, postgres invalidates the slot (the member
                // then re-clones) instead of keeping WAL for ever.
                p.entry("max_slot_wal_keep_size".into())
                    .or_insert_with(|| DEFAULT_MAX_SLOT_WAL_KEEP_SIZE.into());
                // The node's TLS files are the keeper's flags, not the spec's.
                if let Some(ssl) = &self.cfg.pg_ssl {
                    p.insert("ssl".into(), "on".into());
                    for (name, path) in [
                        ("ssl_cert_file", &ssl.cert_file),
                        ("ssl_key_file", &ssl.key_file),
                        ("ssl_ca_file", &ssl.ca_file),
                    ] {
                        p.insert(name.into(), path.to_string_lossy().into_owned());
                    }
                }
                if matches!(assignment, Some(Assignment::Primary)) && !self.sync_names.is_empty() {
                    p.insert("synchronous_standby_names".into(), self.sync_names.clone());
                }
                p
            },
            standby,
        }
    }

    fn hba(&self, spec: &Spec) -> String {
        use pgwarden_pg::HbaTls;
        let tls = match (self.cfg.pg_ssl.is_some(), spec.pg_require_ssl) {
            (true, true) => HbaTls::All,
            (true, false) => HbaTls::Replication,
            // pg_require_ssl without TLS files: see `require_ssl_unmet`.
            (false, _) => HbaTls::Off,
        };
        pgwarden_pg::render_pg_hba_tls(
            &spec.pg_hba,
            &self.cfg.su_username,
            &self.cfg.repl_username,
            tls,
        )
    }

    /// The spec asks for TLS-only clients, but this keeper has no TLS files:
    /// postgres runs without TLS, so `hostssl` lines would stop it from
    /// starting. The node stays available with `host` lines and says why.
    fn require_ssl_unmet(&self, spec: &Spec) -> bool {
        spec.pg_require_ssl && self.cfg.pg_ssl.is_none()
    }

    fn config_matches(
        &self,
        spec: &Spec,
        _status: &Status,
        assignment: Option<&Assignment>,
    ) -> bool {
        let read = |name: &str| std::fs::read_to_string(self.cfg.data_dir.join(name)).ok();
        let want_standby = matches!(assignment, Some(Assignment::Standby { .. }));
        let standby_ok = !want_standby || self.cfg.data_dir.join("standby.signal").exists();
        read("postgresql.conf").as_deref()
            == Some(pgwarden_pg::render_postgresql_conf(&self.pg_conf(spec, assignment)).as_str())
            && read("pg_hba.conf").as_deref() == Some(self.hba(spec).as_str())
            && standby_ok
    }

    /// Lets postgres itself check the spec's parameters before they are
    /// written, once per distinct set: a value postgres rejects would stop
    /// it from starting at its next restart.
    ///
    /// A rejected set is not an error of the node: postgres is configured
    /// (and started) with the last good set, and the report says so, so that
    /// one bad value never stops a node or a failover.
    async fn check_parameters(&mut self, spec: &Spec) {
        let set = &spec.pg_parameters;
        if self.checked_parameters.as_ref() == Some(set)
            || self
                .rejected_parameters
                .as_ref()
                .is_some_and(|(r, _)| r == set)
        {
            return;
        }
        match pgwarden_pg::check_parameters(&self.bins, set).await {
            Ok(()) => {
                self.checked_parameters = Some(set.clone());
                self.rejected_parameters = None;
            }
            Err(e) => {
                let why = format!(
                    "postgres rejects the spec's pg_parameters ({:#}): running with the last good configuration; fix them with `pgwarden ctl spec set pg_parameters.NAME=VALUE`",
                    anyhow::Error::new(e)
                );
                tracing::error!("{why}");
                self.rejected_parameters = Some((set.clone(), why));
            }
        }
    }

    /// The pg_parameters to render: the spec's, unless postgres rejected
    /// them; then the last set it accepted (none, if it accepted none since
    /// this keeper started).
    fn effective_parameters(&self, spec: &Spec) -> std::collections::BTreeMap<String, String> {
        match &self.rejected_parameters {
            Some((rejected, _)) if *rejected == spec.pg_parameters => {
                self.checked_parameters.clone().unwrap_or_default()
            }
            _ => spec.pg_parameters.clone(),
        }
    }

    /// Records the running postmaster for the fencer and the watchdog.
    fn set_postmaster_pid(&self, pid: u32) {
        self.postmaster_pid.store(pid, Ordering::SeqCst);
        self.watchdog.set_postmaster(pid);
    }

    /// Starts the primary lease if needed and tries to hold the key.
    async fn hold_primary_lease(&mut self, spec: &Spec) -> bool {
        if self.primary_lease.is_none() {
            match PrimaryLease::start(
                self.watchdog.clone(),
                &self.store,
                &self.cfg.uid,
                spec.primary_lease_ttl.0,
                self.postmaster_pid.clone(),
                self.lease_renewals.clone(),
            ) {
                Ok(l) => self.primary_lease = Some(l),
                Err(e) => {
                    self.note_error(format!("start the primary lease: {e:#}"));
                    return false;
                }
            }
        }
        match &self.primary_lease {
            Some(l) => l.try_hold(self.claim.as_ref()).await,
            None => false,
        }
    }

    async fn publish(&mut self, lease: &watch::Receiver<LeaseState>, pg: Option<&PgStatus>) {
        let report = self.report(pg);
        let lease_valid_until = self.primary_lease.as_ref().and_then(|l| l.valid_until());
        self.local.send_replace(Some(LocalState {
            report: report.clone(),
            assigned_primary: self.assigned_primary,
            generation: self.generation,
            lease_valid_until,
            lease_renewals: self.lease_renewals.clone(),
            slot_retained_bytes: self.slot_retained.clone(),
        }));
        let Some(id) = lease.borrow().id else { return };
        let Some(claim) = self.claim.as_mut() else {
            return;
        };
        match claim.publish(&self.store, &report, id).await {
            Ok(()) => {}
            Err(e @ uid_claim::ClaimError::Taken { .. }) => self.uid_lost = Some(e),
            Err(e) => tracing::debug!(error = %e, "cannot publish the report"),
        }
    }

    fn report(&self, pg: Option<&PgStatus>) -> KeeperReport {
        let api_url = format!(
            "http://{}:{}",
            self.cfg.pg_advertise_address,
            self.cfg.api_listen.port()
        );
        let mut r = KeeperReport::new(
            &self.cfg.uid,
            &self.cfg.pg_advertise_address,
            self.cfg.pg_port,
            &api_url,
        );
        r.applied_generation = self.applied_generation;
        r.nofailover = self.cfg.nofailover;
        r.pending_restart = self.pending_restart;
        r.handled_node_request = self.handled_node_request;
        if let Some(o) = &self.sync_observed {
            r.sync_names_applied = Some(o.applied.clone());
            r.sync_confirmed = o.candidates.clone();
            r.replicas_streaming = o.streaming.clone();
            r.sync_lsn = Some(o.lsn);
            r.replica_flush = o.flush.clone();
        }
        r.system_id = self.system_id;
        r.error = self.last_error.clone().or_else(|| {
            self.rejected_parameters
                .as_ref()
                .map(|(_, why)| why.clone())
        });
        r.error_kind = if self.last_error.is_some() {
            self.last_error_kind
        } else {
            ErrorKind::Transient
        };
        r.instance = self.instance.clone();
        r.role = if self.initializing {
            ObservedRole::Initializing
        } else {
            ObservedRole::Stopped
        };
        if let Some((lsn, timeline)) = self.last_position {
            r.current_lsn = Some(lsn);
            r.timeline = timeline;
        }
        if let Some(s) = pg {
            r.healthy = true;
            r.role = if s.in_recovery {
                ObservedRole::Standby
            } else {
                ObservedRole::Primary
            };
            r.timeline = s.timeline;
            r.current_lsn = s.current_lsn;
            r.receive_lsn = s.receive_lsn;
            r.replay_lsn = s.replay_lsn;
            r.streaming = s.streaming;
            r.pg_version = Some(s.server_version_num);
            r.system_id = Some(s.system_identifier);
        }
        // Facts for the sentinel's alerts (docs/alerts.md).
        if let Some((free, size)) = disk_space(&self.cfg.data_dir) {
            r.data_disk_free_bytes = Some(free);
            r.data_disk_size_bytes = Some(size);
        }
        if self.primary_lease.is_some() {
            r.lease_renewal_us = self
                .lease_renewals
                .summary()
                .last
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        }
        r.slot_retained_wal_bytes = self.slot_retained.values().max().copied();
        r
    }

    async fn shutdown(&mut self) {
        if let Some(pm) = self.postmaster.take() {
            tracing::info!("postgres: stopping (keeper shutting down)");
            if let Err(e) = pm.stop(STOP_TIMEOUT).await {
                tracing::warn!(error = %e, "postgres did not stop cleanly");
            }
        }
        if let Some(lease) = self.primary_lease.take() {
            lease.release().await;
        }
    }
}

/// Free and total bytes of the file system holding `data_dir` (or, before
/// initdb created it, its parent), for the `data_disk_free` alert.
fn disk_space(data_dir: &std::path::Path) -> Option<(u64, u64)> {
    let dir = if data_dir.exists() {
        data_dir
    } else {
        data_dir.parent()?
    };
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = st.fragment_size() as u64;
    Some((
        (st.blocks_available() as u64).saturating_mul(frag),
        (st.blocks() as u64).saturating_mul(frag),
    ))
}

/// Whether an error disqualifies the node: the rule is core's
/// [`keeper::error_kind`]; this only finds the cause in the chain.
fn error_kind(e: &anyhow::Error) -> ErrorKind {
    let cause = e
        .chain()
        .find_map(|c| c.downcast_ref::<pgwarden_pg::PgError>())
        .map_or(FailureCause::Other, pgwarden_pg::PgError::cause);
    keeper::error_kind(cause)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
