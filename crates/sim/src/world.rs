//! The simulated cluster and its clock.
//!
//! Time moves in ticks of [`TICK_MS`]. A step is usually one tick; a fault
//! may stretch it ("advance time by a random amount"), in which case only
//! what runs on timers keeps going during the extra ticks (fencers, proxies'
//! routing deadlines, lease expiry in the store, postgres replicating and
//! clients writing) while every loop and lease-renewal task waits. Each tick:
//!
//! 1. timers: fencers and proxy deadlines, on each actor's own clock;
//! 2. the store expires leases whose time has come;
//! 3. postgres: standbys stream, clients commit on every writable node;
//! 4. the invariants are checked.
//!
//! At the end of the step every actor gets one scheduling slot, in an order
//! drawn from the seed (some are skipped: jitter), then the invariants are
//! checked again. Fencers run before expiry within a tick, so a fencer whose
//! deadline falls in the same tick as an expiry still wins; the fencing
//! margin (a third of the TTL) is many ticks anyway.

use std::collections::{BTreeMap, BTreeSet};

use pgwarden_core::spec::{OnPostgresCrash, RequestKind, RoleRequest, SyncMode};
use pgwarden_core::{keys, KeeperReport, Spec, Status};

use crate::config::{SimConfig, TICK_MS};
use crate::ctx::{Ctx, Stats, Trace};
use crate::events::{Event, Happening};
use crate::invariants::{self, Invariant};
use crate::keeper::Keeper;
use crate::network::{Cut, Network};
use crate::postgres::{Data, Dir, Host, RECORD_BYTES};
use crate::proxy::Proxy;
use crate::rng::Rng;
use crate::sentinel::Sentinel;
use crate::store::{MemStore, Value};
use crate::Violation;

/// Who acts in a slot.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Keeper(usize),
    Sentinel(usize),
    Proxy(usize),
}

/// The simulated cluster.
#[derive(Debug)]
pub struct World {
    pub(crate) cfg: SimConfig,
    pub(crate) seed: u64,
    pub(crate) rng: Rng,
    pub(crate) now: u64,
    pub(crate) step: u64,
    pub(crate) spec: Spec,
    pub(crate) store: MemStore,
    pub(crate) net: Network,
    pub(crate) hosts: BTreeMap<String, Host>,
    pub(crate) keepers: Vec<Keeper>,
    pub(crate) sentinels: Vec<Sentinel>,
    pub(crate) proxies: Vec<Proxy>,
    pub(crate) events: Vec<Event>,
    pub(crate) journal: Vec<(u64, Happening)>,
    pub(crate) trace: Trace,
    pub(crate) checkers: Vec<Box<dyn Invariant>>,
    pub(crate) stats: Stats,
    pub(crate) last_writer: Option<String>,
    pub(crate) writers: BTreeSet<String>,
    pub(crate) next_record: u64,
    pub(crate) acked: Vec<u64>,
    /// Commits waiting for synchronous standbys: (node, record id, index).
    pub(crate) waiting: Vec<(String, u64, usize)>,
    pub(crate) lost: BTreeSet<u64>,
}

impl World {
    /// A cluster as `seed` and `cfg` make it, at time zero: the spec
    /// written, every keeper started with an empty data directory (bar the
    /// odd operator mistake, see below), no status yet.
    pub fn new(seed: u64, cfg: SimConfig) -> World {
        let mut rng = Rng::new(seed ^ 0x5157_A12D_E4C0_0001);
        let n_keepers = cfg.keepers.unwrap_or(3 + rng.below(3) as usize);
        let n_proxies = cfg.proxies.unwrap_or(rng.below(3) as usize);
        let mut spec = cfg.spec.clone();
        let mut nofailover = None;
        let mut foreign = None;
        if cfg.vary_setup {
            if rng.chance(250) {
                spec.on_postgres_crash = OnPostgresCrash::Restart;
            }
            if rng.chance(200) {
                spec.max_lag_bytes = 4 * RECORD_BYTES;
            }
            if rng.chance(200) {
                spec.reclone_on_rewind_failure = false;
            }
            if rng.chance(250) {
                nofailover = Some(rng.below(n_keepers as u64) as usize);
            }
            spec.sync_mode = match rng.below(5) {
                0 => SyncMode::On,
                1 | 2 => SyncMode::Strict,
                _ => SyncMode::Off,
            };
            if spec.sync_mode != SyncMode::Off && n_keepers > 3 && rng.chance(500) {
                spec.max_sync_standbys = 2;
            }
            if rng.chance(200) {
                // An operator points one more keeper at a directory that is
                // not this cluster's; it is started later by the faults.
                foreign = Some(if rng.chance(500) {
                    Dir::Foreign
                } else {
                    Dir::Data(Data::initdb(rng.next_u64(), u64::MAX))
                });
            }
        }
        let drift = |rng: &mut Rng| {
            let m = cfg.max_drift_ppm;
            rng.between(0, 2 * m) as i64 - m as i64
        };
        let mut store = MemStore::new();
        let _ = store.put(keys::SPEC, Value::Spec(Box::new(spec.clone())), None);
        let mut keepers = Vec::new();
        let mut hosts = BTreeMap::new();
        for i in 0..n_keepers {
            let uid = format!("n{}", i + 1);
            let mut k = Keeper::new(&uid, nofailover == Some(i), drift(&mut rng));
            k.start(0, &spec);
            keepers.push(k);
            hosts.insert(uid.clone(), Host::new(&uid, Dir::Empty));
        }
        if let Some(dir) = foreign {
            let uid = format!("n{}", n_keepers + 1);
            keepers.push(Keeper::new(&uid, false, drift(&mut rng)));
            hosts.insert(uid.clone(), Host::new(&uid, dir));
        }
        let sentinels = (0..cfg.sentinels)
            .map(|i| {
                let offset = if cfg.max_drift_ppm > 0 {
                    rng.between(0, 1000) as i64 - 500
                } else {
                    0
                };
                Sentinel::new(&format!("s{}", i + 1), offset)
            })
            .collect();
        let proxies = (0..n_proxies)
            .map(|i| Proxy::new(&format!("p{}", i + 1), drift(&mut rng)))
            .collect();
        let checkers = invariants::all()
            .into_iter()
            .filter(|c| {
                cfg.only_invariants
                    .as_ref()
                    .is_none_or(|only| only.contains(&c.name()))
                    && !cfg.skip_invariants.contains(&c.name())
            })
            .collect();
        let mut trace = Trace::new(cfg.trace);
        trace.push(0, "SIM", || {
            format!(
                "seed {seed}: keepers {:?}, {} sentinels, {n_proxies} proxies; on_postgres_crash {:?}, max_lag_bytes {}, reclone_on_rewind_failure {}, sync_mode {:?} ({}..={})",
                keepers
                    .iter()
                    .map(|k| {
                        let mut s = k.uid.clone();
                        if k.nofailover {
                            s.push_str(" (nofailover)");
                        }
                        if !k.alive() {
                            s.push_str(" (foreign data, down)");
                        }
                        s
                    })
                    .collect::<Vec<_>>(),
                cfg.sentinels,
                spec.on_postgres_crash,
                spec.max_lag_bytes,
                spec.reclone_on_rewind_failure,
                spec.sync_mode,
                spec.min_sync_standbys,
                spec.max_sync_standbys
            )
        });
        World {
            trace,
            cfg,
            seed,
            rng,
            now: 0,
            step: 0,
            spec,
            store,
            net: Network::default(),
            hosts,
            keepers,
            sentinels,
            proxies,
            events: Vec::new(),
            journal: Vec::new(),
            checkers,
            stats: Stats::default(),
            last_writer: None,
            writers: BTreeSet::new(),
            next_record: 0,
            acked: Vec::new(),
            waiting: Vec::new(),
            lost: BTreeSet::new(),
        }
    }

    /// Runs one step; the first invariant violated, if any.
    pub fn step(&mut self) -> Result<(), Violation> {
        self.step += 1;
        let ticks = if self.cfg.random_faults {
            crate::faults::inject(self)
        } else {
            1
        };
        for _ in 0..ticks {
            self.now += TICK_MS;
            self.run_timers();
            for key in self.store.expire(self.now) {
                self.trace
                    .push(self.now, "etcd", || format!("lease expired: {key} deleted"));
            }
            self.run_postgres();
            self.bookkeep();
            self.check()?;
        }
        self.run_actors();
        self.bookkeep();
        self.check()
    }

    /// Steps until `done` holds (true) or `max_steps` ran (false).
    pub fn run_until(
        &mut self,
        max_steps: u64,
        mut done: impl FnMut(&World) -> bool,
    ) -> Result<bool, Violation> {
        for _ in 0..max_steps {
            if done(self) {
                return Ok(true);
            }
            self.step()?;
        }
        Ok(done(self))
    }

    fn ctx(
        &mut self,
    ) -> (
        Ctx<'_>,
        &mut Vec<Keeper>,
        &mut Vec<Sentinel>,
        &mut Vec<Proxy>,
    ) {
        let ctx = Ctx {
            now: self.now,
            store: &mut self.store,
            net: &self.net,
            rng: &mut self.rng,
            hosts: &mut self.hosts,
            events: &mut self.events,
            journal: &mut self.journal,
            stats: &mut self.stats,
            last_writer: &self.last_writer,
            fencing: self.cfg.fencing,
            old_fencing_window: self.cfg.old_fencing_window,
            old_standby_slots: self.cfg.old_standby_slots,
            max_latency_ms: self.cfg.max_store_latency_ms,
            next_record: &mut self.next_record,
            trace: &mut self.trace,
        };
        (
            ctx,
            &mut self.keepers,
            &mut self.sentinels,
            &mut self.proxies,
        )
    }

    fn run_timers(&mut self) {
        let (mut ctx, keepers, _, proxies) = self.ctx();
        for k in keepers.iter_mut() {
            k.fence(&mut ctx);
        }
        for p in proxies.iter_mut() {
            p.timer(&mut ctx);
        }
    }

    fn run_actors(&mut self) {
        let mut slots: Vec<Slot> = (0..self.keepers.len())
            .map(Slot::Keeper)
            .chain((0..self.sentinels.len()).map(Slot::Sentinel))
            .chain((0..self.proxies.len()).map(Slot::Proxy))
            .collect();
        self.rng.shuffle(&mut slots);
        let (guard, jitter) = (self.cfg.sentinel_guard, self.cfg.jitter);
        let sentinel_ttl = self.spec.sentinel_lease_ttl.as_millis();
        for slot in slots {
            if jitter && self.rng.chance(150) {
                continue;
            }
            let (mut ctx, keepers, sentinels, proxies) = self.ctx();
            match slot {
                Slot::Keeper(i) => keepers[i].act(&mut ctx),
                Slot::Sentinel(i) => sentinels[i].act(&mut ctx, guard, sentinel_ttl),
                Slot::Proxy(i) => proxies[i].act(&mut ctx),
            }
        }
    }

    fn check(&mut self) -> Result<(), Violation> {
        let events = std::mem::take(&mut self.events);
        let mut checkers = std::mem::take(&mut self.checkers);
        let mut result = Ok(());
        for c in checkers.iter_mut() {
            if let Err(message) = c.check(self, &events) {
                result = Err(Violation {
                    seed: self.seed,
                    step: self.step,
                    at_ms: self.now,
                    invariant: c.name(),
                    message,
                });
                break;
            }
        }
        self.checkers = checkers;
        result
    }

    // ---- faults and scripted interventions ----

    /// Adds a trace line and a journal entry for a fault.
    pub(crate) fn fault(&mut self, what: String) {
        self.stats.faults += 1;
        self.trace
            .push(self.now, "SIM", || format!("fault: {what}"));
        self.journal.push((self.now, Happening::Fault(what)));
    }

    /// Adds a keeper, not started, whose directory holds `dir` (an operator
    /// pointing it at something that is already there).
    pub fn add_keeper(&mut self, uid: &str, dir: Dir) {
        self.keepers.push(Keeper::new(uid, false, 0));
        self.hosts.insert(uid.to_string(), Host::new(uid, dir));
    }

    /// `ctl switchover [--to UID]` or `ctl failover --to UID`: writes a
    /// request into the spec (ctl reaches the store whatever the faults).
    pub fn request(&mut self, kind: RequestKind, to: Option<&str>, force: bool) {
        self.spec.request = Some(RoleRequest {
            id: self.now + 1,
            kind,
            to: to.map(str::to_string),
            force,
        });
        self.write_spec();
        self.fault(format!("operator requests {kind:?} to {to:?}"));
    }

    /// `ctl pause` / `ctl resume`.
    pub fn set_paused(&mut self, paused: bool) {
        self.spec.paused = paused;
        self.write_spec();
        self.fault(format!(
            "operator {}",
            if paused { "pauses" } else { "resumes" }
        ));
    }

    fn write_spec(&mut self) {
        let _ = self
            .store
            .put(keys::SPEC, Value::Spec(Box::new(self.spec.clone())), None);
    }

    /// SIGKILL a keeper (its postgres dies with it).
    pub fn crash_keeper(&mut self, uid: &str) {
        if let Some(k) = self.keepers.iter_mut().find(|k| k.uid == uid) {
            if let Some(h) = self.hosts.get_mut(uid) {
                k.crash(h);
            }
        }
        self.fault(format!("keeper {uid} killed"));
    }

    /// Makes writes of `uid`'s postgresql.conf fail (or work again), and,
    /// when failing, makes its configuration stale, as a spec change would:
    /// its keeper then tries, fails and reports the error every tick.
    pub fn fail_config_writes(&mut self, uid: &str, fail: bool) {
        if let Some(h) = self.hosts.get_mut(uid) {
            h.config_writes_fail = fail;
            if fail {
                if let Some(d) = h.data_mut() {
                    d.config = None;
                }
            }
        }
        self.fault(format!(
            "config writes on {uid} {}",
            if fail { "fail" } else { "work again" }
        ));
    }

    /// Starts a keeper that is not running.
    pub fn restart_keeper(&mut self, uid: &str) {
        let (now, spec) = (self.now, self.spec.clone());
        if let Some(k) = self.keepers.iter_mut().find(|k| k.uid == uid && !k.alive()) {
            k.start(now, &spec);
        }
        self.fault(format!("keeper {uid} started"));
    }

    /// SIGKILL a node's postgres only.
    pub fn crash_postgres(&mut self, uid: &str) {
        if let Some(h) = self.hosts.get_mut(uid) {
            h.kill();
        }
        self.fault(format!("postgres on {uid} killed"));
    }

    /// Cuts an actor off.
    pub fn cut(&mut self, actor: &str, how: Cut) {
        self.net.cut(actor, how);
        self.fault(format!("{actor} cut off ({how:?})"));
    }

    /// Restores an actor's links.
    pub fn heal(&mut self, actor: &str) {
        self.net.heal(actor);
        self.fault(format!("{actor} healed"));
    }

    /// Freezes (SIGSTOP) or thaws a sentinel.
    pub fn freeze_sentinel(&mut self, id: &str, frozen: bool) {
        if let Some(s) = self.sentinels.iter_mut().find(|s| s.id == id) {
            s.frozen = frozen;
        }
        self.fault(format!(
            "sentinel {id} {}",
            if frozen { "frozen" } else { "thawed" }
        ));
    }

    /// Freezes or thaws a proxy.
    pub fn freeze_proxy(&mut self, id: &str, frozen: bool) {
        if let Some(p) = self.proxies.iter_mut().find(|p| p.id == id) {
            p.frozen = frozen;
        }
        self.fault(format!(
            "proxy {id} {}",
            if frozen { "frozen" } else { "thawed" }
        ));
    }

    // ---- what checkers and tests look at ----

    /// Simulated time, ms.
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// The step number.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The spec in force.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Every node's postgres, by uid.
    pub fn hosts(&self) -> &BTreeMap<String, Host> {
        &self.hosts
    }

    /// The keepers.
    pub fn keepers(&self) -> &[Keeper] {
        &self.keepers
    }

    /// The sentinels.
    pub fn sentinels(&self) -> &[Sentinel] {
        &self.sentinels
    }

    /// The proxies.
    pub fn proxies(&self) -> &[Proxy] {
        &self.proxies
    }

    /// The store.
    pub fn store(&self) -> &MemStore {
        &self.store
    }

    /// The status in the store.
    pub fn status(&self) -> Option<&Status> {
        match self.store.get(keys::STATUS).map(|e| &e.value) {
            Some(Value::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// The report `uid`'s keeper has in the store, while its lease holds.
    pub fn report(&self, uid: &str) -> Option<&KeeperReport> {
        match self.store.get(&keys::keeper(uid)).map(|e| &e.value) {
            Some(Value::Report(r)) => Some(r),
            _ => None,
        }
    }

    /// The uid under the primary key.
    pub fn primary_holder(&self) -> Option<&str> {
        match self.store.get(keys::PRIMARY).map(|e| &e.value) {
            Some(Value::Text(uid)) => Some(uid),
            _ => None,
        }
    }

    /// Nodes accepting writes now.
    pub fn writable(&self) -> Vec<&str> {
        self.hosts
            .values()
            .filter(|h| h.writable())
            .map(|h| h.uid.as_str())
            .collect()
    }

    /// The run's story so far.
    pub fn journal(&self) -> &[(u64, Happening)] {
        &self.journal
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The trace, when tracing.
    pub fn trace(&self) -> &[String] {
        self.trace.lines()
    }
}
