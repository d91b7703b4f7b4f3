//! The keeper model: `crates/pgwarden/src/keeper/node.rs`'s loop over the
//! real [`plan()`], against a simulated postgres.
//!
//! Each tick reads the cluster and carries out what core's keeper step
//! ([`pgwarden_core::keeper`]) says: the same rules and constants as the
//! real keeper (when to take and give up the primary lease, the crash
//! verdict wait, the plan rounds, the slots), none copied here. It
//! publishes its report under its report lease. It ticks when the status changes (a watch),
//! when postgres exits, and a second after the last tick, as the real loop
//! does. Its two leases have their own tasks, and the primary lease has the
//! fencer ([`crate::primary_lease`]). Executing the actions on the simulated
//! postgres lives in [`crate::actions`].
//!
//! What the real keeper keeps in memory is here in [`Process`]; a crash
//! drops it and a restart starts from nothing, like a new process.

use std::collections::BTreeMap;

use pgwarden_core::keeper::{error_kind, FailureCause, Round, Tick, FAST_LOOP_MS, LOOP_MS};
use pgwarden_core::plan::DataState;
use pgwarden_core::{keys, Assignment, ErrorKind, KeeperReport, Lsn, Observed, ObservedRole, Spec};

use crate::config::TICK_MS;
use crate::ctx::Ctx;
use crate::events::{Applier, Event, Happening};
use crate::lease::LeaseTask;
use crate::postgres::{Host, PgConfig};
use crate::primary_lease::{Fire, PrimaryLease};
use crate::store::Value;
use crate::view::Snapshot;

/// What one probe of postgres answers.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    in_recovery: bool,
    timeline: u32,
    lsn: Lsn,
    streaming: bool,
    system_id: u64,
}

impl Probe {
    fn of(host: &Host) -> Option<Probe> {
        let data = host.data()?;
        host.running.then(|| Probe {
            in_recovery: host.in_recovery,
            timeline: data.timeline,
            lsn: data.lsn(),
            streaming: host.streaming,
            system_id: data.system_id,
        })
    }
}

/// What the keeper process holds in memory.
#[derive(Debug, Clone)]
pub struct Process {
    report_lease: LeaseTask,
    pub(crate) primary_lease: Option<PrimaryLease>,
    /// The keeper has a postmaster child (its pid is known to the fencer).
    pub(crate) postmaster: bool,
    pub(crate) role_ready: bool,
    /// The highest generation carried out.
    pub applied_generation: u64,
    pub(crate) system_id: Option<u64>,
    last_error: Option<String>,
    pub(crate) crashed_at: Option<u64>,
    pub(crate) last_position: Option<(Lsn, u32)>,
    next_tick_at: u64,
    seen_status_revision: i64,
    /// Until the next tick without an event ([`Tick::period_ms`]).
    period_ms: u64,
    /// pg_rewind said the data cannot be rewound (an observed fact that
    /// plan turns into a re-clone); cleared when the directory is replaced.
    pub(crate) unrewindable: bool,
    warned_store: bool,
    /// `synchronous_standby_names` the status asks of this node as primary.
    pub(crate) sync_names: String,
    /// On a writable primary: what synchronous replication is in effect.
    sync_observed: Option<SyncObserved>,
}

impl Process {
    fn new(now: u64, report_ttl_ms: u64) -> Process {
        Process {
            report_lease: LeaseTask::spawn(report_ttl_ms, now),
            primary_lease: None,
            postmaster: false,
            role_ready: false,
            applied_generation: 0,
            system_id: None,
            last_error: None,
            crashed_at: None,
            last_position: None,
            next_tick_at: now,
            seen_status_revision: -1,
            period_ms: LOOP_MS,
            unrewindable: false,
            warned_store: false,
            sync_names: String::new(),
            sync_observed: None,
        }
    }
}

/// A keeper: its identity, and its process when it runs.
#[derive(Debug, Clone)]
pub struct Keeper {
    /// Its uid, also its postgres' host name.
    pub uid: String,
    /// Tagged never to be promoted.
    pub nofailover: bool,
    /// Its clock's rate error, parts per million.
    pub drift_ppm: i64,
    /// Which life of the process this is (0: never started).
    pub incarnation: u32,
    /// Why it exited on its own, if it did (an error a human must fix).
    pub exited: Option<String>,
    /// The process, while it runs.
    pub process: Option<Process>,
}

impl Keeper {
    /// A keeper that has not started.
    pub fn new(uid: &str, nofailover: bool, drift_ppm: i64) -> Keeper {
        Keeper {
            uid: uid.to_string(),
            nofailover,
            drift_ppm,
            incarnation: 0,
            exited: None,
            process: None,
        }
    }

    /// Whether the process runs.
    pub fn alive(&self) -> bool {
        self.process.is_some()
    }

    /// Its local clock at simulated time `now`.
    pub fn local(&self, now: u64) -> u64 {
        drifted(now, self.drift_ppm)
    }

    /// Starts the process.
    pub fn start(&mut self, now: u64, spec: &Spec) {
        self.incarnation += 1;
        self.exited = None;
        self.process = Some(Process::new(now, spec.keeper_report_ttl.as_millis()));
    }

    /// SIGKILL: the process and its memory are gone; postgres, its child
    /// with a parent-death signal, dies with it. Its leases stay in the
    /// store until they expire.
    pub fn crash(&mut self, host: &mut Host) {
        self.process = None;
        host.kill();
    }

    /// The fencer's timer.
    pub fn fence(&mut self, ctx: &mut Ctx<'_>) {
        let local = self.local(ctx.now);
        let old = ctx.old_fencing_window;
        let Some(p) = &mut self.process else { return };
        let Some(lease) = &mut p.primary_lease else {
            return;
        };
        let Some(fire) = lease.fence_due(local, old) else {
            return;
        };
        if !ctx.fencing || !p.postmaster {
            return;
        }
        let Some(host) = ctx.hosts.get_mut(&self.uid) else {
            return;
        };
        if host.running {
            host.kill();
            ctx.note(&self.uid, || match fire {
                Fire::Deadline => {
                    "fenced: postgres killed, the primary lease could not be renewed in time".into()
                }
                Fire::StillNotRenewed => {
                    "fenced: postgres killed, the primary lease is still not renewed".into()
                }
            });
            ctx.happen(Happening::Fenced(self.uid.clone()));
        }
    }

    /// Whether a fired fencer waits for a renewal: a postmaster started now
    /// is killed within its 50 ms period, before it is up.
    pub(crate) fn fencer_fired(&self, ctx: &Ctx<'_>) -> bool {
        ctx.fencing
            && self
                .process
                .as_ref()
                .and_then(|p| p.primary_lease.as_ref())
                .is_some_and(|l| l.fired(ctx.old_fencing_window))
    }

    /// One scheduling slot: the lease tasks, the fencer, and the main loop
    /// if it is due.
    pub fn act(&mut self, ctx: &mut Ctx<'_>) {
        let local = self.local(ctx.now);
        let uid = self.uid.clone();
        let Some(p) = &mut self.process else { return };
        p.report_lease.poll(&uid, local, ctx);
        if let Some(lease) = &mut p.primary_lease {
            lease.task.poll(&uid, local, ctx);
        }
        self.fence(ctx);
        if self.due(ctx) {
            self.tick(ctx);
            if let Some(p) = &mut self.process {
                // The fast period (50 ms) is shorter than a simulated step:
                // the next step is the closest the model gets.
                p.next_tick_at = ctx.now + p.period_ms.max(TICK_MS);
            }
        }
    }

    fn due(&self, ctx: &Ctx<'_>) -> bool {
        let Some(p) = &self.process else { return false };
        let exited = p.postmaster && !ctx.hosts.get(&self.uid).is_some_and(|h| h.running);
        let status_changed = ctx.net.reaches_store(&self.uid)
            && ctx.store.get(keys::STATUS).map_or(0, |e| e.mod_revision) != p.seen_status_revision;
        ctx.now >= p.next_tick_at || exited || status_changed
    }

    /// One pass of the keeper loop (`Node::tick`): observe and carry out
    /// what [`Tick::step`] says, as the real keeper does.
    fn tick(&mut self, ctx: &mut Ctx<'_>) {
        let uid = self.uid.clone();
        let local = self.local(ctx.now);
        let Ok(snap) = ctx.call(&uid, |s, _| Snapshot::read(s)) else {
            if let Some(p) = self.process.as_mut().filter(|p| !p.warned_store) {
                p.warned_store = true;
                ctx.note(&uid, || {
                    "cannot read the cluster; postgres keeps its role".into()
                });
            }
            return;
        };
        let Some(p) = &mut self.process else { return };
        p.warned_store = false;
        p.seen_status_revision = snap.status_revision;
        let (spec, status) = (snap.spec, snap.status);
        // Operator restart / re-clone requests (`ctl restart`, `ctl
        // reinit`) are not simulated: none is ever pending.
        let mut tick = match Tick::new(&uid, &spec, &status, p.applied_generation, u64::MAX) {
            Ok(t) => t,
            Err(_) => {
                ctx.note(&uid, || {
                    "ignoring a status older than the one carried out".into()
                });
                return;
            }
        };
        let assignment = tick.assignment.cloned();
        p.period_ms = tick.period_ms;
        p.sync_names = tick.sync_names.clone();
        let holds_primary_lease = tick.takes_primary_lease() && {
            let lease = p.primary_lease.get_or_insert_with(|| {
                PrimaryLease::start(
                    spec.primary_lease_ttl.as_millis(),
                    ctx.now,
                    ctx.old_fencing_window,
                )
            });
            lease.try_hold(&uid, local, ctx)
        };
        let mut failed = None;
        let mut round = 0;
        let (step, probe) = loop {
            let (observed, probe) = self.observe(ctx, assignment.as_ref());
            let crashed_ms_ago = self
                .process
                .as_ref()
                .and_then(|p| p.crashed_at)
                .map(|t| ctx.now.saturating_sub(t));
            let step = match tick.step(&Round {
                observed: &observed,
                holds_primary_lease,
                crashed_ms_ago,
                round,
            }) {
                Ok(s) => s,
                Err(e) => return self.exit(ctx, e.to_string()),
            };
            if step.await_crash_verdict {
                ctx.note(&uid, || {
                    "postgres crashed: waiting for the sentinel's verdict".into()
                });
                self.publish(ctx, None);
                return;
            }
            if step.actions.is_empty() || failed.is_some() {
                break (step, probe);
            }
            ctx.note(&uid, || format!("plan: {:?}", step.actions));
            for action in &step.actions {
                if let Err(e) = self.execute(action, assignment.as_ref(), ctx) {
                    failed = Some(format!("postgres action {action:?}: {e}"));
                    break;
                }
                tick.carried_out(action);
            }
            round += 1;
        };
        let sync_observed = observe_sync(ctx, &uid, probe);
        let Some(p) = &mut self.process else { return };
        p.sync_observed = sync_observed;
        if failed.is_none() {
            p.applied_generation = status.generation;
            p.last_error = None;
            ctx.events.push(Event::Applied {
                by: Applier::Keeper,
                id: uid.clone(),
                incarnation: self.incarnation,
                generation: status.generation,
            });
        }
        if step.release_primary_lease {
            if let Some(lease) = p.primary_lease.take() {
                lease.release(&uid, ctx);
            }
        }
        self.publish(ctx, probe);
        if let (Some(e), Some(p)) = (failed, &mut self.process) {
            ctx.note(&uid, || e.clone());
            p.last_error = Some(e);
        }
    }

    /// Observes postgres for `plan` (`Node::observe`).
    fn observe(
        &mut self,
        ctx: &mut Ctx<'_>,
        assignment: Option<&Assignment>,
    ) -> (Observed, Option<Probe>) {
        let uid = self.uid.clone();
        let Some(p) = &mut self.process else {
            return (dead_observation(), None);
        };
        let exited = p.postmaster && !ctx.hosts.get(&uid).is_some_and(|h| h.running);
        if exited {
            p.crashed_at = Some(ctx.now);
            p.postmaster = false;
            p.role_ready = false;
            ctx.note(&uid, || "postgres is not running".into());
        }
        let Some(host) = ctx.hosts.get(&uid) else {
            return (dead_observation(), None);
        };
        let data = match host.data_state() {
            DataState::Postgres { system_id } => {
                let sid = *p.system_id.get_or_insert(system_id);
                DataState::Postgres { system_id: sid }
            }
            other => {
                if matches!(other, DataState::Missing | DataState::Empty) {
                    p.system_id = None;
                    p.last_position = None;
                    p.unrewindable = false;
                }
                other
            }
        };
        let probe = if p.postmaster { Probe::of(host) } else { None };
        if let Some(s) = probe {
            p.last_position = Some((s.lsn, s.timeline));
        }
        let in_recovery = probe.map(|s| s.in_recovery);
        // Slots are queried on any running node: a standby makes its peers'
        // ahead of a promotion. The keeper before e40e966 made none there
        // (`SimConfig::old_standby_slots`).
        let slots = match (in_recovery, host.data()) {
            (Some(true), _) if ctx.old_standby_slots => None,
            (Some(_), Some(d)) => Some(d.slots.clone()),
            _ => None,
        };
        let want_standby = matches!(assignment, Some(Assignment::Standby { .. }));
        let config_current = host.data().is_some_and(|d| {
            d.config.as_ref() == Some(&wanted_config(assignment, &p.sync_names))
                && (!want_standby || d.standby_signal)
        });
        let observed = Observed {
            data,
            running: p.postmaster,
            in_recovery,
            standby_signal: host.data().is_some_and(|d| d.standby_signal),
            config_current,
            slots,
            replication_role_ready: p.role_ready,
            // The model's standbys never replay past a fork point: WAL is
            // not modelled at that grain.
            diverged: false,
            unrewindable: p.unrewindable,
        };
        (observed, probe)
    }

    /// A `PlanError`: the real keeper's loop ends, it stops postgres,
    /// releases its leases and exits non-zero.
    fn exit(&mut self, ctx: &mut Ctx<'_>, why: String) {
        let uid = self.uid.clone();
        if let Some(host) = ctx.hosts.get_mut(&uid) {
            host.kill();
        }
        if let Some(mut p) = self.process.take() {
            if let Some(lease) = p.primary_lease.take() {
                lease.release(&uid, ctx);
            }
            p.report_lease.release(&uid, ctx);
        }
        ctx.note(&uid, || format!("keeper exits: {why}"));
        ctx.happen(Happening::KeeperExited(uid));
        self.exited = Some(why);
    }

    fn publish(&mut self, ctx: &mut Ctx<'_>, probe: Option<Probe>) {
        let report = self.report(probe);
        let Some(id) = self.process.as_ref().and_then(|p| p.report_lease.id) else {
            return;
        };
        let key = keys::keeper(&self.uid);
        let _ = ctx.call(&self.uid, |s, _| {
            s.put(&key, Value::Report(Box::new(report)), Some(id))
        });
    }

    /// The report (`Node::report`).
    fn report(&self, probe: Option<Probe>) -> KeeperReport {
        let mut r = KeeperReport::new(
            &self.uid,
            &self.uid,
            5432,
            &format!("http://{}:8008", self.uid),
        );
        r.nofailover = self.nofailover;
        let Some(p) = &self.process else { return r };
        r.applied_generation = p.applied_generation;
        if let Some(o) = &p.sync_observed {
            r.sync_names_applied = Some(o.applied.clone());
            r.sync_confirmed = o.candidates.clone();
            r.replicas_streaming = o.streaming.clone();
            r.sync_lsn = Some(o.lsn);
            r.replica_flush = o.flush.clone();
        }
        r.system_id = p.system_id;
        r.error = p.last_error.clone();
        r.error_kind = p
            .last_error
            .as_deref()
            .map_or(ErrorKind::Transient, |m| error_kind(failure_cause(m)));
        r.role = ObservedRole::Stopped;
        if let Some((lsn, timeline)) = p.last_position {
            r.current_lsn = Some(lsn);
            r.timeline = timeline;
        }
        if let Some(s) = probe {
            r.healthy = true;
            r.role = if s.in_recovery {
                ObservedRole::Standby
            } else {
                ObservedRole::Primary
            };
            r.timeline = s.timeline;
            r.current_lsn = (!s.in_recovery).then_some(s.lsn);
            r.receive_lsn = s.in_recovery.then_some(s.lsn);
            r.replay_lsn = s.in_recovery.then_some(s.lsn);
            r.streaming = s.streaming;
            r.pg_version = Some(150_000);
            r.system_id = Some(s.system_id);
        }
        r
    }
}

/// What a simulated tool's failure is (`PgError::cause`), for core's rule
/// on which failures disqualify a node: the simulated binaries are always
/// usable, so only a directory that is not ours to fill is beyond a retry.
fn failure_cause(message: &str) -> FailureCause {
    if message.contains("directory is not empty") {
        FailureCause::DirectoryNotEmpty
    } else {
        FailureCause::Other
    }
}

/// The configuration the assignment needs (`Node::pg_conf`): the sync
/// names go into a primary's configuration only.
pub fn wanted_config(assignment: Option<&Assignment>, sync_names: &str) -> PgConfig {
    match assignment {
        Some(Assignment::Standby { host, .. }) => PgConfig::Standby { host: host.clone() },
        Some(Assignment::Primary) => PgConfig::Primary {
            sync_names: sync_names.to_string(),
        },
        None => PgConfig::Primary {
            sync_names: String::new(),
        },
    }
}

/// What a primary shows of synchronous replication (`SyncObserved`).
#[derive(Debug, Clone)]
struct SyncObserved {
    /// `synchronous_standby_names` in effect.
    applied: String,
    /// Write position, read after `applied`.
    lsn: Lsn,
    /// Standbys the WAL senders treat as synchronous candidates.
    candidates: Vec<String>,
    /// Standbys streaming.
    streaming: Vec<String>,
    /// Each connected standby's flush position, read after `lsn`.
    flush: BTreeMap<String, Lsn>,
}

/// On a writable primary: `SHOW synchronous_standby_names`, then
/// `pg_current_wal_lsn()`, then `pg_stat_replication`
/// (`Node::observe_sync`). A slot is atomic here, so the order the product
/// needs (see `decide::sync`) holds by construction.
///
/// A WAL sender exists for each standby connected and streaming from this
/// node (the simulated receiver has no separate catch-up state); its
/// `sync_state` is `quorum` when its name is listed in the setting in
/// effect, `async` otherwise, so the candidates are the connected listed
/// ones.
fn observe_sync(ctx: &Ctx<'_>, uid: &str, probe: Option<Probe>) -> Option<SyncObserved> {
    if probe.is_none_or(|s| s.in_recovery) {
        return None;
    }
    let primary = ctx.hosts.get(uid)?;
    let applied = primary.sync_applied.clone();
    let lsn = primary.data()?.lsn();
    let listed = crate::postgres::parse_sync_names(&applied).map_or(Vec::new(), |(_, n)| n);
    let senders: Vec<&Host> = ctx
        .hosts
        .values()
        .filter(|h| h.running && h.streaming && h.upstream.as_deref() == Some(uid))
        .collect();
    let streaming: Vec<String> = senders.iter().map(|h| h.uid.clone()).collect();
    let candidates = streaming
        .iter()
        .filter(|u| listed.contains(u))
        .cloned()
        .collect();
    let flush = senders
        .iter()
        .filter_map(|h| Some((h.uid.clone(), h.data()?.lsn())))
        .collect();
    Some(SyncObserved {
        applied,
        lsn,
        candidates,
        streaming,
        flush,
    })
}

fn dead_observation() -> Observed {
    Observed {
        data: DataState::Missing,
        running: false,
        in_recovery: None,
        standby_signal: false,
        config_current: false,
        slots: None,
        replication_role_ready: false,
        diverged: false,
        unrewindable: false,
    }
}

/// A clock running `ppm` parts per million fast (negative: slow).
pub fn drifted(now: u64, ppm: i64) -> u64 {
    let skew = i128::from(now) * i128::from(ppm) / 1_000_000;
    u64::try_from(i128::from(now) + skew).unwrap_or(0)
}

const _: () = assert!(LOOP_MS % TICK_MS == 0);
const _: () = assert!(FAST_LOOP_MS <= TICK_MS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_scales_with_time() {
        assert_eq!(drifted(1_000_000, 1000), 1_001_000);
        assert_eq!(drifted(1_000_000, -1000), 999_000);
        assert_eq!(drifted(5, 0), 5);
    }
}
