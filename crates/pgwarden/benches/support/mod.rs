//! What the benchmarks share: a settled three-node cluster with a proxy,
//! pgbench and haproxy as child processes, a client writing through the
//! proxy, readings from `/proc`, and plain-text tables.
//!
//! The benchmarks print figures and never judge them: the only assertions are
//! about correctness (pgbench succeeded, no acknowledged write was lost),
//! because a timing threshold in a benchmark only teaches people to rerun it.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, TestCluster, SU_PASSWORD};
use pgwarden_store::etcd_server::free_port;

/// How long a fresh cluster may take to elect a primary and stream to both standbys.
pub const CONVERGE: Duration = Duration::from_secs(120);
/// The keepers every benchmark cluster has.
pub const KEEPERS: [&str; 3] = ["k1", "k2", "k3"];
/// The proxy's name in the cluster.
pub const PROXY: &str = "proxy1";

/// An unsigned integer from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The runtime every benchmark runs on: two workers, like the machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the async runtime")
}

/// A running cluster: three keepers, one sentinel, one proxy routing to the primary.
pub struct Bench {
    pub cluster: TestCluster,
    pub primary: String,
    pub proxy_port: u16,
}

impl Bench {
    /// A fresh cluster with the default spec, except for `sync_mode` when
    /// `PGWARDEN_BENCH_SYNC_MODE` is set (off, on or strict) and
    /// `primary_lease_ttl` when `PGWARDEN_BENCH_LEASE_TTL` is (e.g. `2s`),
    /// over a 3-member etcd at default timing, or with
    /// `PGWARDEN_BENCH_ETCD_TIMING=HEARTBEAT_MS,ELECTION_MS` at that timing,
    /// or with `PGWARDEN_BENCH_ETCD_MEMBERS=1` one member tuned for fast
    /// elections (as the figures before the 3-member store were taken).
    pub async fn start() -> Bench {
        let mode = std::env::var("PGWARDEN_BENCH_SYNC_MODE").unwrap_or_default();
        let members = match std::env::var("PGWARDEN_BENCH_ETCD_MEMBERS").as_deref() {
            Ok("1") => 1,
            _ => 3,
        };
        let timing = std::env::var("PGWARDEN_BENCH_ETCD_TIMING").ok().map(|t| {
            let (hb, el) = t
                .split_once(',')
                .expect("PGWARDEN_BENCH_ETCD_TIMING=HEARTBEAT_MS,ELECTION_MS");
            (
                hb.trim().parse().expect("heartbeat in ms"),
                el.trim().parse().expect("election timeout in ms"),
            )
        });
        let cluster = TestCluster::with_etcd(members, timing).await;
        eprintln!("etcd: {members} member(s), timing {timing:?} (None: etcd's defaults)");
        let mut spec_toml = String::new();
        if !mode.is_empty() && mode != "off" {
            spec_toml.push_str(&format!("sync_mode = '{mode}'\n"));
        }
        if let Ok(ttl) = std::env::var("PGWARDEN_BENCH_LEASE_TTL") {
            spec_toml.push_str(&format!("primary_lease_ttl = '{ttl}'\n"));
        }
        if spec_toml.is_empty() {
            let out = cluster.ctl(&["init"]);
            assert!(out.status.success(), "ctl init: {}", common::stderr(&out));
            return Bench::start_with(cluster).await;
        }
        let spec = cluster.path().join("spec.toml");
        std::fs::write(&spec, &spec_toml).expect("write spec.toml");
        let out = cluster.ctl(&["init", "--spec", &spec.to_string_lossy()]);
        assert!(
            out.status.success(),
            "ctl init with {spec_toml:?}: {}",
            common::stderr(&out)
        );
        eprintln!("cluster initialised with {spec_toml:?}");
        Bench::start_with(cluster).await
    }

    /// A fresh cluster initialised with the spec `spec_toml` (e.g.
    /// `[pg_parameters]` for more connections), its proxy started with
    /// `proxy_args` on top of the usual flags.
    pub async fn start_custom(spec_toml: &str, proxy_args: &[&str]) -> Bench {
        let cluster = TestCluster::new().await;
        let spec = cluster.path().join("spec.toml");
        std::fs::write(&spec, spec_toml).expect("write spec.toml");
        let out = cluster.ctl(&["init", "--spec", &spec.to_string_lossy()]);
        assert!(
            out.status.success(),
            "ctl init with {spec_toml:?}: {}",
            common::stderr(&out)
        );
        Bench::start_proxied(cluster, proxy_args).await
    }

    /// Starts sentinel, keepers and proxy on an initialised `cluster` and
    /// waits until a session through the proxy lands on the primary.
    pub async fn start_with(cluster: TestCluster) -> Bench {
        Bench::start_proxied(cluster, &[]).await
    }

    async fn start_proxied(mut cluster: TestCluster, proxy_args: &[&str]) -> Bench {
        cluster.spawn_sentinel("sentinel1");
        cluster.spawn_keepers(&KEEPERS);
        let status = cluster.wait_converged(2, CONVERGE).await;
        let primary = status["primary"]
            .as_str()
            .expect("a converged cluster names its primary")
            .to_string();
        let proxy_port = free_port();
        cluster.spawn_proxy_with(PROXY, proxy_port, free_port(), proxy_args);
        let bench = Bench {
            cluster,
            primary,
            proxy_port,
        };
        bench.wait_proxy_routes().await;
        bench
    }

    /// Port of the current primary's postgres.
    pub fn primary_port(&self) -> u16 {
        self.cluster.port_of(&self.primary)
    }

    /// Waits until a session through the proxy lands on a writable node.
    pub async fn wait_proxy_routes(&self) {
        let port = self.proxy_port;
        common::poll(
            "the proxy to route to the primary",
            CONVERGE,
            || async move {
                let client = connect_within(port, Duration::from_secs(1)).await?;
                let row = client
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .ok()?;
                (!row.get::<_, bool>(0)).then_some(())
            },
        )
        .await;
    }

    /// `pgwarden ctl ARGS`, which must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.cluster.ctl(args);
        assert!(
            out.status.success(),
            "ctl {args:?} failed: {}",
            common::stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Bench {
    /// With `PGWARDEN_BENCH_KEEP_LOGS` set, the cluster's directory (every
    /// process's log) is kept for a look afterwards.
    fn drop(&mut self) {
        if std::env::var_os("PGWARDEN_BENCH_KEEP_LOGS").is_none() {
            return;
        }
        if let Ok(fresh) = tempfile::tempdir() {
            let dir = std::mem::replace(&mut self.cluster.dir, fresh);
            eprintln!("logs kept in {}", dir.keep().display());
        }
    }
}

/// Waits until `primary` is the primary and every other keeper is a healthy
/// standby on the cluster's current timeline, i.e. streaming from it (a
/// standby still on the old timeline cannot be promoted); returns when.
pub async fn wait_settled(cluster: &TestCluster, primary: &str) -> Instant {
    common::wait_for(
        &format!("{primary} primary, every standby on its timeline"),
        CONVERGE,
        || {
            let s = cluster.status();
            let timeline = s["timeline"].as_u64()?;
            (s["primary"].as_str()? == primary).then_some(())?;
            let settled = KEEPERS.iter().all(|uid| {
                let Some(m) = TestCluster::member(&s, uid) else {
                    return false;
                };
                let state = if *uid == primary {
                    "primary"
                } else {
                    "standby"
                };
                m["healthy"] == true
                    && m["state"] == state
                    && m["timeline"].as_u64() == Some(timeline)
            });
            settled.then(Instant::now)
        },
    )
    .await
}

/// A superuser session on 127.0.0.1:`port`, or None when it is not open within `limit`.
pub async fn connect_within(port: u16, limit: Duration) -> Option<tokio_postgres::Client> {
    tokio::time::timeout(limit, common::connect(port))
        .await
        .ok()?
        .ok()
}

/// Runs SQL on 127.0.0.1:`port`, which must succeed.
pub async fn sql(port: u16, statements: &str) {
    let client = common::connect(port)
        .await
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    client
        .batch_execute(statements)
        .await
        .unwrap_or_else(|e| panic!("{statements}: {e}"));
}

/// Waits until every standby has replayed what the primary had written when called.
pub async fn wait_replayed(bench: &Bench) {
    let primary = common::query_strings(bench.primary_port(), "SELECT pg_current_wal_lsn()::text")
        .await
        .expect("read the primary's LSN")
        .remove(0);
    for uid in KEEPERS.iter().filter(|u| **u != bench.primary) {
        let port = bench.cluster.port_of(uid);
        let check = format!("SELECT (pg_last_wal_replay_lsn() >= '{primary}'::pg_lsn)::text");
        let check = check.as_str();
        common::poll(
            &format!("{uid} to replay {primary}"),
            CONVERGE,
            || async move {
                let v = common::query_strings(port, check).await.ok()?;
                (v.first().map(String::as_str) == Some("true")).then_some(())
            },
        )
        .await;
    }
}

/// What one pgbench run reported.
#[derive(Debug, Clone, Copy)]
pub struct PgbenchRun {
    /// Transactions per second, without the initial connection time.
    pub tps: f64,
    /// Mean latency in milliseconds.
    pub latency_ms: f64,
}

/// A pgbench command against 127.0.0.1:`port` as the superuser.
fn pgbench_command(port: u16) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("pgbench");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .env("PGPASSWORD", SU_PASSWORD)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// `pgbench -i -s SCALE` on the node at `port`.
pub async fn pgbench_init(port: u16, scale: u32) {
    let out = pgbench_command(port)
        .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
        .output()
        .await
        .expect("run pgbench (is postgresql-client installed?)");
    assert!(
        out.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Share of transactions pgbench logs for the latency percentiles.
pub const LATENCY_SAMPLING: f64 = 0.05;

/// A pgbench run with what its transaction log shows.
#[derive(Debug, Clone, Copy)]
pub struct PgbenchDetail {
    pub run: PgbenchRun,
    /// Transactions processed.
    pub transactions: u64,
    /// Median and 99th percentile latency of the sampled transactions, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// [`pgbench`], also logging a sample of the transactions (into a
/// temporary directory) for their latency percentiles.
pub async fn pgbench_detailed(
    port: u16,
    select_only: bool,
    clients: u32,
    seconds: u64,
) -> PgbenchDetail {
    let dir = tempfile::tempdir().expect("create a directory for pgbench's log");
    let prefix = dir.path().join("tx");
    let sampling = LATENCY_SAMPLING.to_string();
    let prefix_arg = format!("--log-prefix={}", prefix.display());
    let (run, stdout) = pgbench_run(
        port,
        select_only,
        clients,
        seconds,
        &["-l", "--sampling-rate", &sampling, &prefix_arg],
    )
    .await;
    let transactions = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in pgbench's output:\n{stdout}"));
    // Each line: client, transaction number, latency in microseconds, ...
    let mut latencies: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("read pgbench's log directory") {
        let text =
            std::fs::read_to_string(entry.expect("a log file").path()).expect("read a pgbench log");
        latencies.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    assert!(!latencies.is_empty(), "pgbench logged no transactions");
    latencies.sort_unstable();
    let at =
        |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    PgbenchDetail {
        run,
        transactions,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

/// One timed pgbench run: select-only (`-S`) or the default TPC-B-like script.
pub async fn pgbench(port: u16, select_only: bool, clients: u32, seconds: u64) -> PgbenchRun {
    pgbench_run(port, select_only, clients, seconds, &[])
        .await
        .0
}

/// One timed pgbench run of the custom script `script` (`-f`).
pub async fn pgbench_script(
    port: u16,
    script: &std::path::Path,
    clients: u32,
    seconds: u64,
) -> PgbenchRun {
    let script = script.to_string_lossy();
    pgbench_run(port, false, clients, seconds, &["-f", &script])
        .await
        .0
}

async fn pgbench_run(
    port: u16,
    select_only: bool,
    clients: u32,
    seconds: u64,
    extra: &[&str],
) -> (PgbenchRun, String) {
    let mut cmd = pgbench_command(port);
    cmd.args(extra);
    if select_only {
        cmd.arg("-S");
    }
    cmd.args(["-c", &clients.to_string(), "-j", "2"]).args([
        "-T",
        &seconds.to_string(),
        "postgres",
    ]);
    let out = cmd.output().await.expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench on port {port} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figure = |prefix: &str| -> f64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in pgbench's output:\n{stdout}"))
    };
    if let Some(failed) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
    {
        assert!(
            failed.starts_with("0 "),
            "pgbench on port {port}: failed transactions: {failed}\n{stdout}"
        );
    }
    let run = PgbenchRun {
        tps: figure("tps = "),
        latency_ms: figure("latency average = "),
    };
    (run, stdout.into_owned())
}

/// haproxy in TCP mode in front of one backend, in the foreground; stopped on drop.
pub struct Haproxy {
    child: std::process::Child,
    pub port: u16,
}

impl Haproxy {
    /// Writes a configuration into `dir` and starts haproxy on a free port.
    pub async fn start(dir: &Path, backend_port: u16) -> Haproxy {
        let port = free_port();
        let config = dir.join("haproxy.cfg");
        // The usual TCP-mode front for postgres: no health checks (the backend
        // is fixed for the benchmark), long idle timeouts so pgbench's
        // sessions are never cut.
        std::fs::write(
            &config,
            format!(
                "global\n    maxconn 1000\n\n\
                 defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n\
                 listen postgres\n    bind 127.0.0.1:{port}\n    server primary 127.0.0.1:{backend_port}\n"
            ),
        )
        .expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("create haproxy.log");
        let child = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a file handle"))
            .stderr(log)
            .spawn()
            .expect("start haproxy (is it installed? see scripts/setup.sh)");
        let haproxy = Haproxy { child, port };
        common::poll(
            "haproxy to listen",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(drop)
            },
        )
        .await;
        haproxy
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One acknowledged write.
#[derive(Debug, Clone, Copy)]
struct Ack {
    /// When the acknowledgement arrived.
    at: Instant,
    id: i64,
    /// The postgres port of the node that acknowledged it.
    server_port: u16,
}

/// Everything the writer saw.
#[derive(Debug, Default)]
struct WriteLog {
    acked: Vec<Ack>,
    /// Writes that failed or timed out: they may or may not have committed.
    indeterminate: u64,
}

/// A client inserting unique rows through the proxy one after the other, as
/// fast as they are acknowledged; on any error it drops the session and
/// reconnects, like an application with a retry loop. It notes which node
/// each session landed on, so that an acknowledgement can be told apart from
/// one the old primary sent just before it died.
pub struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriteLog>>,
    thread: std::thread::JoinHandle<()>,
}

/// The table the writer fills.
pub const WRITER_TABLE: &str = "bench_writes";

impl Writer {
    /// Creates the table on the primary and starts writing through `port`.
    pub async fn start(primary_port: u16, port: u16) -> Writer {
        sql(
            primary_port,
            &format!("CREATE TABLE {WRITER_TABLE} (id bigint PRIMARY KEY)"),
        )
        .await;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(WriteLog::default()));
        // A thread and runtime of its own: the benchmark's own waiting (ctl
        // runs to completion, blocking) must never delay a write and show up
        // as a gap.
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("start the writer's runtime")
                .block_on(write_loop(port, stop2, log2));
        });
        Writer { stop, log, thread }
    }

    /// When each acknowledged write was acknowledged, in order.
    pub fn ack_times(&self) -> Vec<Instant> {
        let log = self.log.lock().expect("writer log");
        log.acked.iter().map(|a| a.at).collect()
    }

    /// Waits until the node at `server_port` acknowledges a write after
    /// `since`; when it did.
    pub async fn first_ack_from(
        &self,
        server_port: u16,
        since: Instant,
        limit: Duration,
    ) -> Instant {
        let log = self.log.clone();
        let what = format!("a write acknowledged by port {server_port} through the proxy");
        common::poll(&what, limit, || {
            let found = log
                .lock()
                .expect("writer log")
                .acked
                .iter()
                .rev()
                .take_while(|a| a.at > since)
                .filter(|a| a.server_port == server_port)
                .last()
                .map(|a| a.at);
            async move { found }
        })
        .await
    }

    /// Stops writing: (acknowledged ids, indeterminate writes).
    pub async fn finish(self) -> (Vec<i64>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join the writer thread")
            .expect("the writer panicked");
        let log = self.log.lock().expect("writer log");
        (log.acked.iter().map(|a| a.id).collect(), log.indeterminate)
    }
}

/// A session through `port` and the port of the node it landed on.
async fn open_session(port: u16) -> Option<(tokio_postgres::Client, u16)> {
    let client = connect_within(port, Duration::from_secs(1)).await?;
    let row = tokio::time::timeout(
        Duration::from_secs(1),
        client.query_one("SELECT inet_server_port()", &[]),
    )
    .await
    .ok()?
    .ok()?;
    let server_port = u16::try_from(row.get::<_, i32>(0)).ok()?;
    Some((client, server_port))
}

async fn write_loop(port: u16, stop: Arc<AtomicBool>, log: Arc<Mutex<WriteLog>>) {
    let insert = format!("INSERT INTO {WRITER_TABLE} VALUES ($1)");
    let mut session: Option<(tokio_postgres::Client, u16)> = None;
    let mut id = 0i64;
    while !stop.load(Ordering::SeqCst) {
        let Some((client, server_port)) = &session else {
            session = open_session(port).await;
            if session.is_none() {
                // The proxy closes at once when it has no primary: retry soon.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            continue;
        };
        id += 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let write = client.execute(insert.as_str(), &params);
        match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(Ok(_)) => log.lock().expect("writer log").acked.push(Ack {
                at: Instant::now(),
                id,
                server_port: *server_port,
            }),
            _ => {
                log.lock().expect("writer log").indeterminate += 1;
                session = None;
            }
        }
    }
}

/// The ids in the writer's table on the node at `port`.
pub async fn written_rows(port: u16) -> BTreeSet<i64> {
    let client = common::connect(port)
        .await
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    client
        .query(&format!("SELECT id FROM {WRITER_TABLE}"), &[])
        .await
        .expect("read the written rows")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The longest time without an acknowledgement around the window
/// `[from, to]`: between consecutive acknowledgements where the later one
/// comes after `from` and the earlier one before `to`.
pub fn longest_gap(acks: &[Instant], from: Instant, to: Instant) -> Duration {
    acks.windows(2)
        .filter(|w| w[1] > from && w[0] < to)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// (median, min, max); the median of an even count is the mean of the middle two.
pub fn summary(values: &[Duration]) -> (Duration, Duration, Duration) {
    assert!(!values.is_empty(), "no values to summarise");
    let mut v = values.to_vec();
    v.sort();
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    (median, v[0], v[n - 1])
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Fields of `/proc/<pid>/status`, e.g. `VmRSS`, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time a process has used, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The command name (field 2) may hold spaces; the fields after it start
    // with the state (field 3), so utime and stime (14, 15) are at 11 and 12.
    let after_name = &text[text.rfind(')').expect("a stat line names the command") + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields[i].parse().expect("a tick count") };
    field(11) + field(12)
}

/// Clock ticks per second, as `/proc` counts them.
pub fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Prints rows as a table; the first row is the header, numbers right-aligned.
pub fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                let numeric = cell.starts_with(|c: char| c.is_ascii_digit());
                if i > 0 && numeric {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("{}", rule.join("  "));
        }
    }
}
