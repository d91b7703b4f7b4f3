//! The fault scenarios and what each run of one measures.
//!
//! A scenario runs on a fresh cluster (see [`super::cluster`]) with the
//! workload writing through the proxy and the watch polling every node from
//! start to end. Each run ("cycle") takes the current primary, injects the
//! fault, waits as the scenario says, undoes the fault, restores the cluster
//! to a primary with two streaming standbys (old primaries rejoin through
//! pg_rewind or a re-clone) and then checks every row acknowledged so far on
//! the current primary. A cycle's figures:
//!
//! - window: the longest time without an acknowledged write, from the fault
//!   to the end of the cycle;
//! - lost: acknowledged rows missing from the primary (new in this cycle);
//! - two writable: the overlaps of two nodes' writable stretches seen by the
//!   watch (see [`super::watch`]) since the previous cycle ended;
//! - violations: scenario-specific safety checks that failed (for example a
//!   promotion before a frozen proxy's acknowledgement key expired).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::cluster::{NsCluster, CLIENT, ETCD, ETCD_MEMBERS, HOSTS, KEEPERS, PROXY};
use super::watch::Watch;
use super::workload::Workload;
use super::Net;

/// How the cluster replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The default spec: asynchronous replication.
    Async,
    /// `sync_mode = 'strict'`, one synchronous standby.
    Strict,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::Strict => "strict",
        }
    }

    fn spec(self) -> &'static str {
        match self {
            Mode::Async => "",
            Mode::Strict => "sync_mode = 'strict'\nmin_sync_standbys = 1\nmax_sync_standbys = 1\n",
        }
    }
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The primary's host drops off the network and its processes die.
    HostKill,
    /// Only the primary's keeper is SIGKILLed (postgres dies with it).
    KeeperKill,
    /// The primary cannot reach etcd (both ways) for 10 s.
    CutFromEtcd,
    /// The primary cannot reach anybody for 10 s.
    CutFromAll,
    /// The primary cannot reach the other keepers for 10 s (etcd and the proxy it can).
    CutFromPeers,
    /// The primary's keeper and postgres are SIGSTOPped for 8 s.
    Freeze,
    /// The leader sentinel is killed, then 0.5 s later the primary's host.
    SentinelKill,
    /// The proxy is SIGSTOPped for 10 s and the primary's host is killed meanwhile.
    ProxyFreeze,
    /// etcd is SIGKILLed and comes back after 30 s.
    EtcdStop,
    /// The primary's host is killed, then the new primary's host.
    TwoFailovers,
    /// The primary's host is killed and comes back 3.4, 1, 2.6 or 1.8 s
    /// later (by run), around its lease's expiry.
    OldPrimaryReturns,
    /// Only the primary's keeper is SIGSTOPped for 8 s; its postgres runs on.
    KeeperFreeze,
    /// A CPU-bound write (8 s) runs on the primary over a direct connection
    /// when the primary is cut off from everything: does its commit get
    /// acknowledged after a standby was promoted?
    SlowWriteAtFence,
    /// The synchronous standby is cut off from the primary, which goes on
    /// streaming (commits waiting) to the other standby; 1.5 s later the
    /// primary's host is killed. Only the synchronous standby may be
    /// promoted, and the other one, which replayed WAL past the new
    /// timeline's fork point, must be rewound to follow it.
    SyncStandbyBehind,
    /// A 3-member etcd at default timing: the raft leader is SIGKILLed and
    /// comes back 8 s later. Nothing may move.
    EtcdLeaderKill,
    /// The same with a follower member.
    EtcdFollowerKill,
    /// The member every role lists first (the one they are connected to)
    /// is cut off from the other two members for 10 s: a minority member.
    EtcdMinority,
    /// Every member restarted (SIGTERM, back 1 s later), one at a time.
    EtcdRollingRestart,
    /// Two of three members (the leader among them) SIGKILLed for 10 s:
    /// quorum lost. The primary must stop being writable within its lease,
    /// and service resumes when quorum returns.
    EtcdQuorumLost,
}

impl Scenario {
    pub const ALL: [Scenario; 19] = [
        Scenario::HostKill,
        Scenario::KeeperKill,
        Scenario::CutFromEtcd,
        Scenario::CutFromAll,
        Scenario::CutFromPeers,
        Scenario::Freeze,
        Scenario::SentinelKill,
        Scenario::ProxyFreeze,
        Scenario::EtcdStop,
        Scenario::TwoFailovers,
        Scenario::OldPrimaryReturns,
        Scenario::KeeperFreeze,
        Scenario::SlowWriteAtFence,
        Scenario::SyncStandbyBehind,
        Scenario::EtcdLeaderKill,
        Scenario::EtcdFollowerKill,
        Scenario::EtcdMinority,
        Scenario::EtcdRollingRestart,
        Scenario::EtcdQuorumLost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::HostKill => "primary-host-killed",
            Scenario::KeeperKill => "primary-keeper-killed",
            Scenario::CutFromEtcd => "primary-cut-from-etcd",
            Scenario::CutFromAll => "primary-cut-from-all",
            Scenario::CutFromPeers => "primary-cut-from-peers",
            Scenario::Freeze => "primary-frozen",
            Scenario::SentinelKill => "leader-sentinel-killed",
            Scenario::ProxyFreeze => "proxy-frozen",
            Scenario::EtcdStop => "etcd-stopped-30s",
            Scenario::TwoFailovers => "two-failovers",
            Scenario::OldPrimaryReturns => "old-primary-returns",
            Scenario::KeeperFreeze => "primary-keeper-frozen",
            Scenario::SlowWriteAtFence => "slow-write-at-fence",
            Scenario::SyncStandbyBehind => "sync-standby-behind",
            Scenario::EtcdLeaderKill => "etcd-leader-killed",
            Scenario::EtcdFollowerKill => "etcd-follower-killed",
            Scenario::EtcdMinority => "etcd-minority-member",
            Scenario::EtcdRollingRestart => "etcd-rolling-restart",
            Scenario::EtcdQuorumLost => "etcd-quorum-lost",
        }
    }

    /// How many etcd members the scenario's cluster has: three at etcd's
    /// default timing for the scenarios about the store, else one.
    pub fn etcd_members(self) -> usize {
        match self {
            Scenario::EtcdLeaderKill
            | Scenario::EtcdFollowerKill
            | Scenario::EtcdMinority
            | Scenario::EtcdRollingRestart
            | Scenario::EtcdQuorumLost => 3,
            _ => 1,
        }
    }

    /// Whether the primary must stay where it is through the fault.
    fn primary_stays(self) -> bool {
        matches!(
            self,
            Scenario::EtcdLeaderKill
                | Scenario::EtcdFollowerKill
                | Scenario::EtcdMinority
                | Scenario::EtcdRollingRestart
        )
    }

    /// A generous bound on the unavailability window.
    pub fn window_bound(self) -> Duration {
        // Routine store trouble: no write gap over 2 s through the proxy.
        if self.primary_stays() {
            return Duration::from_secs(2);
        }
        Duration::from_secs(match self {
            Scenario::EtcdStop | Scenario::EtcdQuorumLost => 60,
            Scenario::CutFromPeers
            | Scenario::SyncStandbyBehind
            | Scenario::SentinelKill
            | Scenario::ProxyFreeze
            | Scenario::OldPrimaryReturns => 25,
            _ => 15,
        })
    }

    fn extra_spec(self) -> &'static str {
        match self {
            // A proxy TTL well above the primary lease's, so that a promotion
            // held up by the frozen proxy is told apart from one held up by
            // the lease.
            Scenario::ProxyFreeze => "proxy_ttl = '6s'\n",
            _ => "",
        }
    }
}

/// What one cycle measured.
#[derive(Debug, Clone, Default)]
pub struct Cycle {
    pub window: Duration,
    pub acked: usize,
    pub lost: Vec<i64>,
    pub phantom: Vec<i64>,
    pub indeterminate: usize,
    pub two_writable: Duration,
    /// Whether another node than the primary at the fault became writable.
    pub failed_over: bool,
    pub overlaps: Vec<String>,
    pub violations: Vec<String>,
    pub notes: Vec<String>,
}

/// Every cycle of one scenario.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: Scenario,
    pub mode: Mode,
    pub cycles: Vec<Cycle>,
    /// Where the logs were kept (when something was wrong or writes were lost).
    pub logs: Option<PathBuf>,
}

impl Outcome {
    /// Every broken promise: two writable nodes, acknowledged writes lost
    /// where that is not legitimate, phantom rows, a window over the bound,
    /// a failed scenario check.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let bound = self.scenario.window_bound();
        for (i, c) in self.cycles.iter().enumerate() {
            let run = i + 1;
            if !c.overlaps.is_empty() {
                out.push(format!("run {run}: two writable nodes: {:?}", c.overlaps));
            }
            // With asynchronous replication, commits the old primary had
            // acknowledged but not streamed are lost when a standby is
            // promoted: that, and only that, is within the contract.
            let loss_ok = self.mode == Mode::Async && c.failed_over;
            if !c.lost.is_empty() && !loss_ok {
                out.push(format!(
                    "run {run}: {} acknowledged writes lost: {:?}",
                    c.lost.len(),
                    c.lost
                ));
            }
            if !c.phantom.is_empty() {
                out.push(format!("run {run}: failed writes present: {:?}", c.phantom));
            }
            if c.window > bound {
                out.push(format!(
                    "run {run}: unavailable for {:?} (bound {bound:?})",
                    c.window
                ));
            }
            for v in &c.violations {
                out.push(format!("run {run}: {v}"));
            }
        }
        out
    }
}

/// Runs `runs` cycles of `scenario` on a fresh cluster in its own network.
pub fn run(scenario: Scenario, mode: Mode, runs: usize) -> Outcome {
    let net = Arc::new(Net::new(&HOSTS));
    let inner = net.clone();
    net.block_on(CLIENT, run_cycles(inner, scenario, mode, runs))
}

async fn run_cycles(net: Arc<Net>, scenario: Scenario, mode: Mode, runs: usize) -> Outcome {
    let spec = format!("{}{}", mode.spec(), scenario.extra_spec());
    let mut c = NsCluster::start(net.clone(), &spec, scenario.etcd_members()).await;
    let watch = Watch::start(&net, &c.pg_ports);
    let w = Workload::start(c.proxy_addr()).await;
    w.wait_flowing(Duration::from_secs(2), Duration::from_secs(60))
        .await;
    let mut outcome = Outcome {
        scenario,
        mode,
        cycles: Vec::new(),
        logs: None,
    };
    let mut lost_before: BTreeSet<i64> = BTreeSet::new();
    let mut from = Instant::now();
    for i in 0..runs {
        // Generous: on a loaded machine the cluster may still be settling.
        let primary = c.wait_converged(2, Duration::from_secs(120)).await["primary"]
            .as_str()
            .unwrap()
            .to_string();
        let before = w.outcomes();
        let fenced_before = c.log(&primary).matches("fenced: postgres killed").count();
        let t0 = Instant::now();
        let mut cycle = Cycle::default();
        let mut f = Fault {
            c: &mut c,
            w: &w,
            watch: &watch,
            cycle: &mut cycle,
            t0,
        };
        f.inject(scenario, &primary, i).await;
        if scenario.primary_stays() {
            if let Some((uid, t)) = watch.first_writable_other(&primary, t0) {
                cycle.violations.push(format!(
                    "the primary moved: {uid} writable {:.2} s after the fault",
                    t.duration_since(t0).as_secs_f64()
                ));
            }
            let fenced = c.log(&primary).matches("fenced: postgres killed").count();
            if fenced > fenced_before {
                cycle.violations.push(format!(
                    "{primary} fenced itself {} times",
                    fenced - fenced_before
                ));
            }
        }
        c.restore().await;
        w.wait_flowing(Duration::from_secs(2), Duration::from_secs(120))
            .await;
        let verdict = w.verify(c.proxy_addr()).await;
        let t1 = Instant::now();
        let after = w.outcomes();
        cycle.window = w.longest_gap(t0, t1);
        cycle.acked = after.acked.len() - before.acked.len();
        cycle.indeterminate = after.indeterminate.len() - before.indeterminate.len();
        cycle.lost = verdict
            .lost
            .iter()
            .copied()
            .filter(|id| !lost_before.contains(id))
            .collect();
        lost_before.extend(verdict.lost.iter().copied());
        cycle.phantom = verdict.phantom;
        cycle.failed_over = watch
            .first_writable_other(&primary, t0)
            .is_some_and(|(_, t)| t <= t1);
        let overlaps = watch.overlaps(from, t1);
        cycle.two_writable = overlaps.iter().map(|o| o.to.duration_since(o.from)).sum();
        cycle.overlaps = overlaps
            .iter()
            .map(|o| {
                format!(
                    "{} and {} for {:?} from {:.2} s after the fault",
                    o.nodes.0,
                    o.nodes.1,
                    o.to.duration_since(o.from),
                    o.from.saturating_duration_since(t0).as_secs_f64()
                )
            })
            .collect();
        eprintln!(
            "[{} {} run {}] window {:.2} s, acked {}, lost {}, indeterminate {}, two writable {:.3} s; {}",
            scenario.name(),
            mode.name(),
            i + 1,
            cycle.window.as_secs_f64(),
            cycle.acked,
            cycle.lost.len(),
            cycle.indeterminate,
            cycle.two_writable.as_secs_f64(),
            cycle.notes.join("; ")
        );
        outcome.cycles.push(cycle);
        from = t1;
    }
    let counts = watch.answer_counts();
    assert!(
        counts.len() == KEEPERS.len() && counts.values().all(|n| *n > 40),
        "the watch barely ran: {counts:?}"
    );
    let lost_any = outcome.cycles.iter().any(|c| !c.lost.is_empty());
    if lost_any || !outcome.problems().is_empty() {
        outcome.logs = Some(c.keep_logs());
    }
    w.stop().await;
    watch.stop().await;
    outcome
}

/// One fault being injected: the cluster and the instruments.
struct Fault<'a> {
    c: &'a mut NsCluster,
    w: &'a Workload,
    watch: &'a Watch,
    cycle: &'a mut Cycle,
    t0: Instant,
}

/// How long a failover may take before the cycle is declared failed.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

impl Fault<'_> {
    fn note(&mut self, text: String) {
        self.cycle.notes.push(text);
    }

    async fn sleep_until(&self, after_fault: Duration) {
        tokio::time::sleep_until((self.t0 + after_fault).into()).await;
    }

    /// Waits until a node other than `old` answers writable (seen by the
    /// watch, not through the proxy); returns it and when.
    async fn wait_new_primary(&mut self, old: &str, since: Instant) -> (String, Instant) {
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            if let Some((uid, t)) = self.watch.first_writable_other(old, since) {
                let secs = t.duration_since(since).as_secs_f64();
                self.note(format!("{uid} writable {secs:.2} s after {old} failed"));
                return (uid, t);
            }
            assert!(
                Instant::now() < deadline,
                "no new primary within {FAILOVER_TIMEOUT:?} after {old} failed; status {:?}; last answers {}",
                self.c.status().await,
                self.watch.recent(5)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a row written on `primary` now shows on every other
    /// node: each one follows it (a standby stuck on an older timeline can
    /// still look "streaming" for a moment at each retry).
    async fn wait_replicated(&mut self, primary: &str, run: usize) {
        let marker = -1_000_000 - i64::try_from(run).unwrap();
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            let port = self.c.pg_ports[primary];
            let written = match super::watch::connect_in(&self.c.net, primary, port).await {
                Some(c) => tokio::time::timeout(
                    Duration::from_secs(5),
                    c.execute("INSERT INTO fault_rows VALUES ($1)", &[&marker]),
                )
                .await
                .is_ok_and(|r| r.is_ok()),
                None => false,
            };
            if written {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cannot write a marker on {primary}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for k in KEEPERS.iter().filter(|k| **k != primary) {
            loop {
                let port = self.c.pg_ports[*k];
                let seen = match super::watch::connect_in(&self.c.net, k, port).await {
                    Some(c) => c
                        .query_opt("SELECT 1 FROM fault_rows WHERE id = $1", &[&marker])
                        .await
                        .is_ok_and(|r| r.is_some()),
                    None => false,
                };
                if seen {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{k} does not follow {primary}: the marker row never reached it"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Waits until a standby streams from `primary`.
    async fn wait_streaming(&mut self, primary: &str) {
        let port = self.c.pg_ports[primary];
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            let streaming = match super::watch::connect_in(&self.c.net, primary, port).await {
                Some(client) => client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                        &[],
                    )
                    .await
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(0),
                None => 0,
            };
            if streaming >= 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no standby streams from {primary}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn inject(&mut self, scenario: Scenario, p: &str, run: usize) {
        let others: Vec<&str> = KEEPERS.iter().copied().filter(|k| *k != p).collect();
        match scenario {
            Scenario::HostKill => {
                self.c.kill_host(p).await;
                self.wait_new_primary(p, self.t0).await;
                self.c.reboot(p).await;
            }
            Scenario::KeeperKill => {
                self.c.kill(p);
                self.wait_new_primary(p, self.t0).await;
            }
            Scenario::CutFromEtcd => {
                self.c.net.cut(p, &[ETCD]).await;
                self.wait_new_primary(p, self.t0).await;
                self.sleep_until(Duration::from_secs(10)).await;
                self.c.net.heal(p).await;
            }
            Scenario::CutFromAll => {
                self.c.net.cut_all(p).await;
                self.wait_new_primary(p, self.t0).await;
                self.sleep_until(Duration::from_secs(10)).await;
                self.c.net.heal(p).await;
            }
            Scenario::CutFromPeers => {
                self.c.net.cut(p, &others).await;
                self.sleep_until(Duration::from_secs(10)).await;
                self.c.net.heal(p).await;
                match self.watch.first_writable_other(p, self.t0) {
                    Some((uid, t)) => {
                        let secs = t.duration_since(self.t0).as_secs_f64();
                        self.note(format!("failed over to {uid} after {secs:.2} s"));
                    }
                    None => self.note(format!("{p} stayed primary")),
                }
            }
            Scenario::Freeze => {
                self.c.freeze_host(p, true);
                self.wait_new_primary(p, self.t0).await;
                self.sleep_until(Duration::from_secs(8)).await;
                self.c.freeze_host(p, false);
            }
            Scenario::SentinelKill => {
                let leader = self.c.leader_sentinel().await.expect("a leader sentinel");
                self.c.kill(&leader);
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.c.kill_host(p).await;
                self.wait_new_primary(p, self.t0).await;
                let now = self.c.leader_sentinel().await;
                self.note(format!("leader {leader} killed, now {now:?}"));
                self.c.reboot(p).await;
            }
            Scenario::ProxyFreeze => self.proxy_freeze(p).await,
            Scenario::EtcdStop => self.etcd_stop(p).await,
            Scenario::TwoFailovers => {
                self.c.kill_host(p).await;
                let (second, _) = self.wait_new_primary(p, self.t0).await;
                // The last standby must stream from the new primary (and,
                // in strict mode, be its synchronous standby) before the
                // second blow: a standby still on the old timeline is
                // rightly not promoted.
                self.c.wait_converged(1, FAILOVER_TIMEOUT).await;
                self.wait_streaming(&second).await;
                self.w
                    .wait_flowing(Duration::from_secs(1), FAILOVER_TIMEOUT)
                    .await;
                let t = Instant::now();
                self.c.kill_host(&second).await;
                self.wait_new_primary(&second, t).await;
                self.c.reboot(p).await;
                self.c.reboot(&second).await;
            }
            Scenario::OldPrimaryReturns => {
                // Around the lease's expiry first (3 s), then earlier and later.
                let delay = Duration::from_millis([3400, 1000, 2600, 1800][run % 4]);
                self.c.kill_host(p).await;
                self.sleep_until(delay).await;
                self.c.reboot(p).await;
                self.w
                    .wait_flowing(Duration::from_secs(1), FAILOVER_TIMEOUT)
                    .await;
                let now = self.c.primary().await;
                self.note(format!(
                    "{p} back after {:.1} s; primary now {now:?}",
                    delay.as_secs_f64()
                ));
            }
            Scenario::SlowWriteAtFence => self.slow_write_at_fence(p, run).await,
            Scenario::EtcdLeaderKill | Scenario::EtcdFollowerKill => {
                let leader = self.c.etcd_leader().await.expect("an etcd leader");
                let victim = if scenario == Scenario::EtcdLeaderKill {
                    leader
                } else {
                    ETCD_MEMBERS
                        .into_iter()
                        .find(|m| *m != leader)
                        .expect("a follower")
                };
                self.c.kill(victim);
                self.note(format!("killed etcd member {victim} (leader: {leader})"));
                self.sleep_until(Duration::from_secs(8)).await;
                self.c.start_etcd_member(victim).await;
                let now = self.c.etcd_leader().await;
                self.note(format!("leader now {now:?}"));
            }
            Scenario::EtcdMinority => {
                let leader = self.c.etcd_leader().await;
                self.c.net.cut(ETCD, &ETCD_MEMBERS[1..]).await;
                self.note(format!("cut {ETCD} off its peers (leader was {leader:?})"));
                self.sleep_until(Duration::from_secs(10)).await;
                self.c.net.heal(ETCD).await;
            }
            Scenario::EtcdRollingRestart => {
                for member in ETCD_MEMBERS {
                    self.c.signal(member, Signal::SIGTERM);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.c.kill(member);
                    self.c.start_etcd_member(member).await;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                self.note("restarted etcd, etcd2, etcd3 in turn".into());
            }
            Scenario::EtcdQuorumLost => self.etcd_quorum_lost(p).await,
            Scenario::SyncStandbyBehind => self.sync_standby_behind(p, run).await,
            Scenario::KeeperFreeze => {
                self.c.signal(p, Signal::SIGSTOP);
                self.wait_new_primary(p, self.t0).await;
                self.sleep_until(Duration::from_secs(8)).await;
                self.c.signal(p, Signal::SIGCONT);
            }
        }
    }

    /// The proxy frozen, then the primary's host killed: the sentinel must
    /// not promote before the frozen proxy's acknowledgement key expired
    /// (it might still route to the old primary).
    async fn proxy_freeze(&mut self, p: &str) {
        self.c.signal(PROXY, Signal::SIGSTOP);
        self.c.kill_host(p).await;
        let store = self.c.store();
        let key = format!("{}{PROXY}", pgwarden_core::keys::PROXIES_PREFIX);
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        let gone = loop {
            if let Ok(None) = store.get(&key).await {
                break Instant::now();
            }
            assert!(Instant::now() < deadline, "the frozen proxy's key stayed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (_, promoted) = self.wait_new_primary(p, self.t0).await;
        let key_gone = gone.duration_since(self.t0).as_secs_f64();
        self.note(format!("proxy key gone after {key_gone:.2} s"));
        // `gone` is when we saw the key gone, up to one poll (50 ms) late.
        if promoted + Duration::from_millis(60) < gone {
            self.cycle.violations.push(format!(
                "promoted {:.2} s after the fault, before the frozen proxy's key expired ({key_gone:.2} s)",
                promoted.duration_since(self.t0).as_secs_f64()
            ));
        }
        self.sleep_until(Duration::from_secs(10)).await;
        self.c.signal(PROXY, Signal::SIGCONT);
        self.c.reboot(p).await;
    }

    /// See [`Scenario::SyncStandbyBehind`]. In asynchronous mode there is no
    /// synchronous standby: the first other keeper is cut instead.
    async fn sync_standby_behind(&mut self, p: &str, run: usize) {
        let status = self.c.status().await.expect("the status");
        let sync = status["sync_standbys"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| KEEPERS.iter().find(|k| **k != p).unwrap().to_string());
        self.c.net.cut(&sync, &[p]).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.c.kill_host(p).await;
        let (new, _) = self.wait_new_primary(p, self.t0).await;
        self.note(format!("{sync} was synchronous, {new} promoted"));
        if self.c.sync && new != sync {
            self.cycle.violations.push(format!(
                "{new} promoted, but only {sync} was a synchronous standby"
            ));
        }
        self.c.net.heal(&sync).await;
        self.c.reboot(p).await;
        self.wait_replicated(&new, run).await;
        for k in KEEPERS.iter().filter(|k| **k != p && **k != new) {
            let log = self.c.log(k);
            if log.contains("replayed past the point where its upstream's timeline forked off") {
                self.note(format!(
                    "{k} had replayed past the fork point and was rewound"
                ));
            }
        }
    }

    /// A write that keeps a backend busy (no wait, so no check for
    /// postmaster death) for 8 s, sent 1 s before the primary is cut off
    /// from everything, over a connection made inside the primary's
    /// namespace (a client that does not go through the proxy). Its commit
    /// must not be acknowledged once another node accepts writes.
    async fn slow_write_at_fence(&mut self, p: &str, run: usize) {
        let port = self.c.pg_ports[p];
        let client = super::watch::connect_in(&self.c.net, p, port)
            .await
            .expect("a direct connection to the primary");
        client
            .batch_execute(
                "CREATE OR REPLACE FUNCTION fault_burn(secs float8) RETURNS bigint \
                 LANGUAGE plpgsql AS $$ DECLARE n bigint := 0; \
                 t timestamptz := clock_timestamp(); BEGIN \
                 WHILE clock_timestamp() < t + secs * interval '1 second' LOOP n := n + 1; \
                 END LOOP; RETURN n; END $$",
            )
            .await
            .unwrap();
        let id = -(run as i64) - 1;
        let write = tokio::spawn(async move {
            let r = client
                .execute(
                    "INSERT INTO fault_rows SELECT $1 FROM (SELECT fault_burn(8)) b",
                    &[&id],
                )
                .await;
            (r.map(|_| ()), Instant::now())
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.c.net.cut_all(p).await;
        let (new, promoted) = self.wait_new_primary(p, self.t0).await;
        let (result, at) = tokio::time::timeout(Duration::from_secs(30), write)
            .await
            .expect("the slow write never ended")
            .unwrap();
        let at_s = at.duration_since(self.t0).as_secs_f64();
        match result {
            Ok(()) if at > promoted => self.cycle.violations.push(format!(
                "{p} acknowledged a commit {at_s:.2} s after the fault, {:.2} s after {new} became writable",
                at.duration_since(promoted).as_secs_f64()
            )),
            Ok(()) => self.note(format!("slow write acknowledged at {at_s:.2} s")),
            Err(e) => self.note(format!("slow write failed at {at_s:.2} s: {e}")),
        }
        self.sleep_until(Duration::from_secs(10)).await;
        self.c.net.heal(p).await;
    }

    /// Two of three etcd members die for 10 s: the survivor has no quorum, so
    /// the primary's lease cannot be renewed nor proven alive, and it must
    /// stop accepting writes within its TTL; service resumes with quorum.
    async fn etcd_quorum_lost(&mut self, p: &str) {
        let ttl = Duration::from_secs(3);
        let leader = self.c.etcd_leader().await.expect("an etcd leader");
        let other = ETCD_MEMBERS
            .into_iter()
            .find(|m| *m != leader)
            .expect("a follower");
        self.c.kill(leader);
        self.c.kill(other);
        self.note(format!("killed etcd members {leader} and {other}"));
        self.sleep_until(Duration::from_secs(10)).await;
        self.check_fenced_within(p, ttl, "etcd lost quorum");
        self.restart_etcd("quorum returned").await;
    }

    /// Starts every etcd member that is down and notes how long writes took
    /// to resume after `what`.
    async fn restart_etcd(&mut self, what: &str) {
        let t = Instant::now();
        self.c.start_etcd().await;
        self.w
            .wait_flowing(Duration::from_secs(1), Duration::from_secs(60))
            .await;
        let secs = t.elapsed().as_secs_f64();
        self.note(format!("writes resumed {secs:.2} s after {what}"));
    }

    /// A violation unless `p` was last writable within `ttl` of the fault.
    fn check_fenced_within(&mut self, p: &str, ttl: Duration, what: &str) {
        let last = self
            .watch
            .last_writable(p, self.t0, Instant::now())
            .map(|t| t.duration_since(self.t0));
        let fenced = last.map_or(0.0, |d| d.as_secs_f64());
        self.note(format!("{p} last writable {fenced:.2} s after {what}"));
        // One polling period of slack: the answer is timed when it arrived.
        if last.is_some_and(|d| d > ttl + Duration::from_millis(100)) {
            self.cycle.violations.push(format!(
                "{p} still writable {fenced:.2} s after {what} (lease TTL {ttl:?})"
            ));
        }
    }

    /// etcd dies for 30 s: nobody can be promoted, and the primary must stop
    /// accepting writes once its lease can have expired (its TTL after the
    /// fault at the latest); service resumes when etcd is back.
    async fn etcd_stop(&mut self, p: &str) {
        let ttl = Duration::from_secs(3);
        self.c.kill(ETCD);
        self.sleep_until(Duration::from_secs(30)).await;
        self.check_fenced_within(p, ttl, "etcd died");
        self.restart_etcd("etcd returned").await;
    }
}
