//! End-to-end: the keeper's HTTP API on a real 3-node cluster, and real
//! haproxy running the config documented in docs/haproxy.md, through
//! failovers and a switchover; the keepers' and the proxy's metrics through
//! the same events.
//!
//! Load balancers trust these answers blindly, so every endpoint is checked on
//! every node and for every method haproxy may use, and the haproxy config is
//! taken from the documentation itself so the two cannot drift apart.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CONVERGE: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(60);
const API_PASSWORD: &str = "api-secret";
const UIDS: [&str; 3] = ["k1", "k2", "k3"];

/// A converged 3-node cluster whose keepers require `API_PASSWORD` for
/// state-changing requests; returns it and the primary's uid.
async fn cluster() -> (TestCluster, String) {
    let mut c = TestCluster::initialised().await;
    c.spawn_sentinel("sentinel1");
    let pw = c.secret_file("api-password", API_PASSWORD);
    let pw = pw.to_str().unwrap().to_string();
    for uid in UIDS {
        c.add_keeper(uid);
        c.start_keeper_with(uid, &["--api-password-file", &pw]);
    }
    let status = c.wait_converged(2, CONVERGE).await;
    let primary = status["primary"].as_str().unwrap().to_string();
    (c, primary)
}

fn api(c: &TestCluster, uid: &str) -> u16 {
    c.keepers[uid].api_port
}

/// The status code of one request, or 0 when nothing answers.
async fn code(port: u16, method: &str, path: &str) -> u16 {
    http(port, method, path, &[]).await.map_or(0, |r| r.status)
}

/// Waits until exactly `primary` answers 200 on /primary among `uids`.
async fn wait_api_primary(c: &TestCluster, uids: &[&str], primary: &str) {
    let deadline = Instant::now() + FAILOVER;
    loop {
        let mut winners = Vec::new();
        for uid in uids {
            if code(api(c, uid), "GET", "/primary").await == 200 {
                winners.push(uid.to_string());
            }
        }
        if winners == [primary] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/primary: 200 on {winners:?}, expected only {primary}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every health endpoint on every node, for GET and OPTIONS (and HEAD where
/// haproxy configs use it), against the roles `ctl status` shows.
async fn check_every_endpoint(c: &TestCluster, primary: &str) {
    // Which nodes answer 200: the primary, the standbys, or all.
    #[derive(PartialEq)]
    enum On {
        Primary,
        Standbys,
        All,
    }
    let expect = [
        ("/primary", On::Primary),
        ("/leader", On::Primary),
        ("/master", On::Primary),
        ("/read-write", On::Primary),
        ("/", On::Primary),
        ("/replica", On::Standbys),
        ("/read-only", On::All),
        ("/health", On::All),
        ("/liveness", On::All),
        ("/readiness", On::All),
    ];
    let mut ok_count: BTreeMap<&str, usize> = BTreeMap::new();
    for uid in UIDS {
        let is_primary = uid == primary;
        let port = api(c, uid);
        for (path, on) in &expect {
            let ok = *on == On::All || (*on == On::Primary) == is_primary;
            let want = if ok { 200 } else { 503 };
            let get = http(port, "GET", path, &[]).await.unwrap();
            assert_eq!(get.status, want, "GET {path} on {uid}: {}", get.body);
            assert_eq!(get.header("content-type"), Some("application/json"));
            let body = get.json();
            assert_eq!(body["uid"], uid, "GET {path} on {uid}: {body}");
            assert_eq!(body["ok"], want == 200);
            assert_eq!(body["role"], if is_primary { "primary" } else { "standby" });
            assert_eq!(body["state"], "running");
            assert!(body["timeline"].as_u64().unwrap() >= 1, "{body}");
            assert!(body["lsn"].is_string(), "{body}");
            if want != 200 {
                assert!(body["reason"].is_string(), "a 503 says why: {body}");
            }
            let mut methods = vec!["OPTIONS"];
            if *path == "/primary" || *path == "/replica" {
                methods.push("HEAD");
            }
            for method in methods {
                let r = http(port, method, path, &[]).await.unwrap();
                assert_eq!(r.status, want, "{method} {path} on {uid}");
                assert!(r.body.is_empty(), "{method} {path}: no body");
            }
            if want == 200 {
                *ok_count.entry(path).or_default() += 1;
            }
        }
        assert_eq!(code(port, "GET", "/nope").await, 404);
        assert_eq!(code(port, "GET", "/replicas").await, 404);
        assert_eq!(code(port, "OPTIONS", "/primaryx").await, 404);
    }
    assert_eq!(ok_count["/primary"], 1);
    assert_eq!(ok_count["/replica"], 2);
    assert_eq!(ok_count["/read-only"], 3);
    assert_eq!(ok_count["/health"], 3);
}

/// `/replica?lag=`: a standby whose replay is paused falls out of a tight
/// limit while it stays within a loose one, and comes back once it replays.
async fn check_lag(c: &TestCluster, primary: &str) {
    let standby = UIDS.iter().find(|u| **u != primary).unwrap();
    let (sp, pp) = (api(c, standby), api(c, primary));
    assert_eq!(code(sp, "GET", "/replica?lag=16MB").await, 200);
    assert_eq!(code(pp, "GET", "/replica?lag=16MB").await, 503);
    let bad = http(sp, "GET", "/replica?lag=lots", &[]).await.unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.json()["error"].as_str().unwrap().contains("lag"));

    let s = connect(c.port_of(standby)).await.unwrap();
    s.batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    connect(c.port_of(primary))
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE lagging AS SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    let body = poll(
        "a paused standby to fail /replica?lag=0",
        FAILOVER,
        || async {
            let r = http(sp, "GET", "/replica?lag=0", &[]).await.ok()?;
            let body = r.json();
            (r.status == 503 && body["lag_bytes"].as_u64()? > 0).then_some(body)
        },
    )
    .await;
    assert_eq!(
        body["lag_source"], "primary position in the store",
        "{body}"
    );
    assert_eq!(code(sp, "GET", "/replica?lag=1GB").await, 200);
    assert_eq!(code(sp, "GET", "/read-only?lag=0").await, 503);
    assert_eq!(code(sp, "GET", "/health").await, 200);

    s.batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    poll(
        "the standby to catch up: /replica?lag=0",
        FAILOVER,
        || async {
            let r = http(sp, "GET", "/replica?lag=0", &[]).await.ok()?;
            (r.status == 200 && r.json()["lag_bytes"] == 0).then_some(())
        },
    )
    .await;
}

async fn check_cluster_and_metrics(c: &TestCluster, primary: &str) {
    for uid in UIDS {
        let r = http(api(c, uid), "GET", "/cluster", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["cluster"], c.name.as_str());
        assert_eq!(v["primary"], primary);
        let members: BTreeSet<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["uid"].as_str().unwrap())
            .collect();
        assert_eq!(members, BTreeSet::from(UIDS));

        let r = http(api(c, uid), "GET", "/metrics", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        let m = parse_prometheus(&r.body);
        let node = |name: &str| {
            let key = format!("{name}{{cluster=\"{}\",uid=\"{uid}\"}}", c.name);
            *m.get(&key)
                .unwrap_or_else(|| panic!("{key} missing:\n{}", r.body))
        };
        let is_primary = f64::from(u8::from(uid == primary));
        assert_eq!(node("pgwarden_primary"), is_primary, "{uid}");
        assert_eq!(node("pgwarden_replica"), 1.0 - is_primary, "{uid}");
        assert_eq!(node("pgwarden_postgres_up"), 1.0);
        assert!(node("pgwarden_postgres_timeline") >= 1.0);
        assert!(node("pgwarden_applied_generation") >= 1.0);
        assert_eq!(node("pgwarden_store_up"), 1.0);
        let lease = node("pgwarden_primary_lease_remaining_seconds");
        assert_eq!(lease > 0.0, uid == primary, "{uid}: lease {lease}");
        if uid == primary {
            assert!(node("pgwarden_wal_current_lsn_bytes") > 0.0);
        } else {
            assert!(node("pgwarden_wal_replayed_lsn_bytes") > 0.0);
        }
        let cluster = |name: &str| m[&format!("{name}{{cluster=\"{}\"}}", c.name)];
        assert!(cluster("pgwarden_cluster_generation") >= 1.0);
        assert_eq!(cluster("pgwarden_cluster_members"), 3.0);
        let lags = m
            .keys()
            .filter(|k| k.starts_with("pgwarden_standby_lag_bytes{"))
            .count();
        assert_eq!(lags, 2, "one lag per standby:\n{}", r.body);
    }
}

/// Waits for ctl status to name a healthy primary other than `old`.
async fn wait_new_primary(c: &TestCluster, old: &str) -> String {
    wait_for("a new primary in ctl status", FAILOVER, || {
        let s = c.status();
        let p = s["primary"].as_str()?.to_string();
        let m = TestCluster::member(&s, &p)?;
        (p != old && m["state"] == "primary" && m["healthy"] == true).then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_right_on_every_node_and_follows_a_failover() {
    let (mut c, primary) = cluster().await;
    wait_api_primary(&c, &UIDS, &primary).await;
    check_every_endpoint(&c, &primary).await;
    check_lag(&c, &primary).await;
    check_cluster_and_metrics(&c, &primary).await;

    // State-changing requests: 401 without the password, 405 with it.
    let port = api(&c, &primary);
    let r = http(port, "POST", "/switchover", &[]).await.unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let wrong = format!("Basic {}", b64("admin:wrong"));
    let right = format!("Basic {}", b64(&format!("admin:{API_PASSWORD}")));
    let send = |method: &'static str, path: &'static str, auth: Option<String>| async move {
        let h: Vec<(&str, &str)> = auth.iter().map(|v| ("Authorization", v.as_str())).collect();
        http(port, method, path, &h).await.unwrap().status
    };
    assert_eq!(send("POST", "/switchover", Some(wrong)).await, 401);
    assert_eq!(send("DELETE", "/primary", None).await, 401);
    assert_eq!(send("POST", "/primary", Some(right.clone())).await, 405);
    assert_eq!(send("PUT", "/nope", Some(right)).await, 404);

    // Failover: the primary's keeper stops; a standby is promoted.
    let t0 = unix_ms();
    c.stop(&primary, Signal::SIGTERM);
    let new_primary = wait_new_primary(&c, &primary).await;
    let rest: Vec<&str> = UIDS.iter().copied().filter(|u| *u != primary).collect();
    wait_api_primary(&c, &rest, &new_primary).await;
    for uid in &rest {
        let want = if *uid == new_primary { 200 } else { 503 };
        for method in ["GET", "OPTIONS", "HEAD"] {
            assert_eq!(
                code(api(&c, uid), method, "/primary").await,
                want,
                "{method} on {uid}"
            );
        }
    }
    assert_eq!(
        code(api(&c, &primary), "GET", "/primary").await,
        0,
        "stopped keeper's API is gone"
    );

    // The keepers that saw it counted one failover, and its duration is
    // within what this test saw from outside.
    for uid in &rest {
        let m = poll(
            &format!("{uid} to count the failover"),
            FAILOVER,
            || async {
                let m = scrape(api(&c, uid)).await;
                // The cluster metrics come from a snapshot cached for up to a
                // second, so they may trail the counters.
                let timed = m.contains_key(&duration_key(&c, "failover"));
                (node_metric(&m, &c, uid, "pgwarden_failovers_total")? >= 1.0 && timed).then_some(m)
            },
        )
        .await;
        assert_eq!(
            node_metric(&m, &c, uid, "pgwarden_failovers_total"),
            Some(1.0)
        );
        assert_eq!(
            node_metric(&m, &c, uid, "pgwarden_switchovers_total"),
            Some(0.0)
        );
        assert_eq!(decided(&m, &c, uid, "promoted"), 1.0, "{uid}");
        assert_eq!(decided(&m, &c, uid, "role_change_started"), 0.0, "{uid}");
        // It runs to the moment the sentinel saw the new primary hold the
        // lease, which may trail what this test saw; it cannot be later than
        // this scrape.
        let took = m[&duration_key(&c, "failover")];
        let outside = (unix_ms() - t0) as f64 / 1000.0;
        assert!(
            took >= 0.0 && took <= outside + 0.05,
            "{took} s, seen in {outside} s"
        );
    }
}

#[tokio::test]
async fn an_occupied_api_port_fails_start_up_with_one_line() {
    let mut c = TestCluster::initialised().await;
    let k = c.add_keeper("k1");
    let _holder = std::net::TcpListener::bind(("127.0.0.1", k.api_port)).unwrap();
    let mut cmd = c.keeper_command("k1");
    let out = {
        use std::os::unix::process::CommandExt;
        cmd.uid(c.run_as.0).gid(c.run_as.1);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let guard = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        });
        let out = child.wait_with_output().unwrap();
        drop(guard);
        out
    };
    assert!(!out.status.success());
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "error: HTTP API address 127.0.0.1:{} is already in use by another process: stop it or pass another --api-listen",
            k.api_port
        ),
        "{err}"
    );
    assert!(
        !k.data_dir.join("PG_VERSION").exists(),
        "nothing was created"
    );
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// haproxy running the config block of docs/haproxy.md, rewritten to this
/// test's addresses and ports; killed on drop.
struct Haproxy {
    child: Child,
    primary: u16,
    replicas: u16,
    stats: u16,
}

impl Haproxy {
    fn start(c: &TestCluster) -> Haproxy {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/haproxy.md");
        let doc = std::fs::read_to_string(doc).unwrap();
        let block = doc
            .split("```haproxy\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("docs/haproxy.md has a ```haproxy block");
        let (primary, replicas, stats) = (free_port(), free_port(), free_port());
        let mut cfg = String::new();
        for line in block.lines() {
            let line = match line.trim_start().strip_prefix("server node") {
                // `server nodeN ADDRESS OPTIONS... port 8008`: this test's node N.
                Some(rest) => {
                    let (n, rest) = rest.split_once(' ').unwrap();
                    let uid = UIDS[n.parse::<usize>().unwrap() - 1];
                    let k = &c.keepers[uid];
                    let options = rest.split_once(' ').unwrap().1;
                    assert!(options.contains("port 8008"), "{line}");
                    let options = options.replace("port 8008", &format!("port {}", k.api_port));
                    format!("    server {uid} 127.0.0.1:{} {options}", k.pg_port)
                }
                None => line
                    .replace("*:5000", &format!("127.0.0.1:{primary}"))
                    .replace("*:5001", &format!("127.0.0.1:{replicas}"))
                    .replace("*:7000", &format!("127.0.0.1:{stats}")),
            };
            cfg.push_str(&line);
            cfg.push('\n');
        }
        for port in [primary, replicas, stats] {
            assert!(
                cfg.contains(&format!(":{port}\n")),
                "bind rewritten:\n{cfg}"
            );
        }
        let path = c.path().join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}\n{cfg}",
            stderr(&check)
        );
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&path).stdin(Stdio::null());
        let child = spawn_logged(cmd, &c.path().join("haproxy.log"), None);
        Haproxy {
            child,
            primary,
            replicas,
            stats,
        }
    }

    /// The servers haproxy has UP in `backend`, from the stats page's CSV.
    async fn up(&self, backend: &str) -> Option<BTreeSet<String>> {
        let r = http(self.stats, "GET", "/;csv", &[]).await.ok()?;
        let mut lines = r.body.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, st) = (col("pxname")?, col("svname")?, col("status")?);
        Some(
            lines
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f.len() > st && f[px] == backend && UIDS.contains(&f[sv]))
                // "UP", or "UP 1/2" while one check has failed.
                .filter(|f| f[st].starts_with("UP"))
                .map(|f| f[sv].to_string())
                .collect(),
        )
    }

    /// Waits until haproxy has exactly `uids` UP in `backend`.
    async fn wait_up(&self, backend: &str, uids: &[&str]) {
        let want: BTreeSet<String> = uids.iter().map(|u| u.to_string()).collect();
        poll(
            &format!("haproxy {backend} UP = {want:?}"),
            FAILOVER,
            || async { (self.up(backend).await? == want).then_some(()) },
        )
        .await;
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of the postgres a client reaches through `port`, and whether it
/// is in recovery. Bounded: haproxy may hold a client in its queue while no
/// server is up, and a poll must never hang on one attempt.
async fn reached(port: u16) -> Option<(u16, bool)> {
    let query = query_strings(
        port,
        "SELECT inet_server_port()::text || ',' || pg_is_in_recovery()::text",
    );
    let v = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .ok()?
        .ok()?;
    let (p, recovery) = v.first()?.split_once(',')?;
    Some((p.parse().ok()?, recovery == "true"))
}

/// Waits until a client through haproxy's primary port lands on `uid`, writable.
async fn wait_routed(c: &TestCluster, h: &Haproxy, uid: &str) -> Duration {
    let t0 = Instant::now();
    let want = c.port_of(uid);
    poll(&format!("haproxy to route to {uid}"), FAILOVER, || async {
        (reached(h.primary).await? == (want, false)).then_some(())
    })
    .await;
    t0.elapsed()
}

/// A converged cluster behind haproxy, checked to route writes to the
/// primary and reads to a standby, with the stats page up.
async fn cluster_behind_haproxy() -> (TestCluster, Haproxy, String) {
    let (c, primary) = cluster().await;
    let h = Haproxy::start(&c);
    let standbys: Vec<&str> = UIDS.iter().copied().filter(|u| *u != primary).collect();
    h.wait_up("primary", &[&primary]).await;
    h.wait_up("replicas", &standbys).await;
    wait_routed(&c, &h, &primary).await;
    let (port, recovery) = reached(h.replicas).await.unwrap();
    assert!(recovery && standbys.iter().any(|u| c.port_of(u) == port));
    let page = http(h.stats, "GET", "/", &[]).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("primary") && page.body.contains("replicas"));
    (c, h, primary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_the_documented_config_follows_a_failover() {
    let (mut c, h, primary) = cluster_behind_haproxy().await;
    let t0 = Instant::now();
    c.stop(&primary, Signal::SIGTERM);
    let new_primary = wait_new_primary(&c, &primary).await;
    wait_routed(&c, &h, &new_primary).await;
    eprintln!(
        "keeper stopped: haproxy routes writes to {new_primary} after {:?}",
        t0.elapsed()
    );
    h.wait_up("primary", &[&new_primary]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_the_documented_config_follows_a_host_loss() {
    let (mut c, h, primary) = cluster_behind_haproxy().await;
    // The host dies: keeper, postmaster and backends at once.
    let t0 = Instant::now();
    c.kill_host(&primary);
    let new_primary = wait_new_primary(&c, &primary).await;
    wait_routed(&c, &h, &new_primary).await;
    eprintln!(
        "host lost: haproxy routes writes to {new_primary} after {:?}",
        t0.elapsed()
    );
    h.wait_up("primary", &[&new_primary]).await;
}

/// The default spec's `primary_lease_ttl`: a renewal slower than this could
/// not have kept the lease.
const PRIMARY_LEASE_TTL_SECS: f64 = 3.0;

fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

/// `GET /metrics` on `port`, read by the strict parser.
async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let r = http(port, "GET", "/metrics", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        r.head
    );
    parse_prometheus(&r.body)
}

/// A keeper's node metric, `None` when left out.
fn node_metric(m: &BTreeMap<String, f64>, c: &TestCluster, uid: &str, name: &str) -> Option<f64> {
    m.get(&format!("{name}{{cluster=\"{}\",uid=\"{uid}\"}}", c.name))
        .copied()
}

/// The series of the last role change of `kind` (failover or switchover).
fn duration_key(c: &TestCluster, kind: &str) -> String {
    format!(
        "pgwarden_cluster_last_failover_duration_seconds{{cluster=\"{}\",kind=\"{kind}\"}}",
        c.name
    )
}

fn decided(m: &BTreeMap<String, f64>, c: &TestCluster, uid: &str, reason: &str) -> f64 {
    m[&format!(
        "pgwarden_decisions_total{{cluster=\"{}\",uid=\"{uid}\",reason=\"{reason}\"}}",
        c.name
    )]
}

/// `pgwarden proxy` with `--metrics-listen`; killed on drop.
struct MetricsProxy {
    child: Child,
    id: &'static str,
    port: u16,
    metrics: u16,
}

impl MetricsProxy {
    fn start(c: &TestCluster, id: &'static str) -> MetricsProxy {
        let (port, read_only, metrics) = (free_port(), free_port(), free_port());
        let mut cmd = c.proxy_command(id, port, read_only);
        cmd.args(["--metrics-listen", &format!("127.0.0.1:{metrics}")]);
        let child = spawn_logged(cmd, &c.path().join(format!("{id}.log")), None);
        MetricsProxy {
            child,
            id,
            port,
            metrics,
        }
    }

    fn series(&self, c: &TestCluster, name: &str, labels: &str) -> String {
        let sep = if labels.is_empty() { "" } else { "," };
        format!(
            "{name}{{cluster=\"{}\",id=\"{}\"{sep}{labels}}}",
            c.name, self.id
        )
    }
}

impl Drop for MetricsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a session through `port` lands on `uid`'s postgres, writable.
async fn wait_lands_on(c: &TestCluster, port: u16, uid: &str) {
    let want = (c.port_of(uid), false);
    poll(&format!("port {port} to reach {uid}"), FAILOVER, || async {
        (reached(port).await? == want).then_some(())
    })
    .await;
}

/// The primary-lease metrics agree with who holds the lease: a positive
/// round trip below the TTL on `primary`, none on a node that never held
/// it. Returns the primary's renewal count.
async fn check_lease_metrics(c: &TestCluster, primary: &str, never_primary: &[&str]) -> f64 {
    let m = poll(
        &format!("a renewal round trip in {primary}'s metrics"),
        FAILOVER,
        || async {
            let m = scrape(api(c, primary)).await;
            node_metric(&m, c, primary, "pgwarden_primary_lease_renewal_seconds").map(|_| m)
        },
    )
    .await;
    let get = |name: &str| node_metric(&m, c, primary, name).unwrap();
    let last = get("pgwarden_primary_lease_renewal_seconds");
    assert!(last > 0.0 && last < PRIMARY_LEASE_TTL_SECS, "{last}");
    let count = get("pgwarden_primary_lease_renewals_total");
    assert!(count >= 1.0, "{count}");
    assert!(get("pgwarden_primary_lease_renewals_seconds_total") >= last);
    assert!(get("pgwarden_primary_lease_renewal_failures_total") >= 0.0);
    for uid in never_primary {
        let m = scrape(api(c, uid)).await;
        assert_eq!(
            node_metric(&m, c, uid, "pgwarden_primary_lease_renewal_seconds"),
            None,
            "{uid} holds no lease"
        );
        assert_eq!(
            node_metric(&m, c, uid, "pgwarden_primary_lease_renewals_total"),
            Some(0.0),
            "{uid} never renewed a primary lease"
        );
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_is_followed_by_haproxy_and_the_proxy_and_counted_in_the_metrics() {
    let (c, h, primary) = cluster_behind_haproxy().await;
    let standbys: Vec<&str> = UIDS.iter().copied().filter(|u| *u != primary).collect();
    let to = standbys[0].to_string();
    let proxy = MetricsProxy::start(&c, "p1");
    wait_lands_on(&c, proxy.port, &primary).await;
    let renewed = check_lease_metrics(&c, &primary, &standbys).await;

    // Bytes through the proxy are counted while the session is open.
    let bytes = |m: &BTreeMap<String, f64>, direction: &str| {
        m[&proxy.series(
            &c,
            "pgwarden_proxy_bytes_total",
            &format!("direction=\"{direction}\""),
        )]
    };
    let on_primary_port =
        |m: &BTreeMap<String, f64>, name: &str| m[&proxy.series(&c, name, "port=\"primary\"")];
    let held = connect(proxy.port).await.unwrap();
    let before = scrape(proxy.metrics).await;
    let rows = held
        .query("SELECT repeat('x', 100000) FROM generate_series(1, 3)", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let after = scrape(proxy.metrics).await;
    assert!(
        bytes(&after, "server_to_client") >= bytes(&before, "server_to_client") + 300_000.0,
        "{before:?}\n{after:?}"
    );
    assert!(bytes(&after, "client_to_server") > bytes(&before, "client_to_server"));
    assert!(on_primary_port(&after, "pgwarden_proxy_connections_active") >= 1.0);
    assert!(on_primary_port(&after, "pgwarden_proxy_connections_total") >= 1.0);
    assert_eq!(
        on_primary_port(&after, "pgwarden_proxy_connections_cut_total"),
        0.0
    );
    assert_eq!(after[&proxy.series(&c, "pgwarden_proxy_routing", "")], 1.0);
    let generation = after[&proxy.series(&c, "pgwarden_proxy_generation", "")];

    let t0 = unix_ms();
    let out = c.ctl_ok(&["switchover", "--to", &to, "--yes"]);
    assert!(
        out.contains(&format!("switchover done: {to} is the primary")),
        "{out}"
    );

    // haproxy: once its checks have marked the old primary down (until
    // then it may still hand it new clients, which find it read-only), every
    // new client through the documented config reaches the new primary and
    // writes there.
    h.wait_up("primary", &[&to]).await;
    for _ in 0..5 {
        assert_eq!(reached(h.primary).await, Some((c.port_of(&to), false)));
    }
    let through = connect(h.primary).await.unwrap();
    through
        .batch_execute(
            "CREATE TABLE after_switchover (id int); INSERT INTO after_switchover VALUES (1)",
        )
        .await
        .unwrap();
    assert_eq!(
        query_strings(
            c.port_of(&to),
            "SELECT count(*)::text FROM after_switchover"
        )
        .await
        .unwrap(),
        ["1"]
    );

    // The proxy cut the session to the old primary, counted it, and routes
    // new sessions to the new one.
    let dead = tokio::time::timeout(Duration::from_secs(10), held.simple_query("SELECT 1")).await;
    assert!(
        matches!(dead, Ok(Err(_))),
        "the session to the old primary is closed"
    );
    poll("the proxy to count the cut", FAILOVER, || async {
        let m = scrape(proxy.metrics).await;
        (on_primary_port(&m, "pgwarden_proxy_connections_cut_total") >= 1.0).then_some(())
    })
    .await;
    wait_lands_on(&c, proxy.port, &to).await;
    let m = scrape(proxy.metrics).await;
    assert!(m[&proxy.series(&c, "pgwarden_proxy_generation", "")] > generation);
    assert!(bytes(&m, "server_to_client") > bytes(&after, "server_to_client"));

    // Every keeper counted exactly this one switchover and no failover.
    for uid in UIDS {
        let m = poll(
            &format!("{uid} to count the switchover"),
            FAILOVER,
            || async {
                let m = scrape(api(&c, uid)).await;
                let timed = m.contains_key(&duration_key(&c, "switchover"));
                (node_metric(&m, &c, uid, "pgwarden_switchovers_total")? >= 1.0 && timed)
                    .then_some(m)
            },
        )
        .await;
        assert_eq!(
            node_metric(&m, &c, uid, "pgwarden_switchovers_total"),
            Some(1.0)
        );
        assert_eq!(
            node_metric(&m, &c, uid, "pgwarden_failovers_total"),
            Some(0.0)
        );
        assert_eq!(decided(&m, &c, uid, "role_change_started"), 1.0, "{uid}");
        assert_eq!(decided(&m, &c, uid, "promoted"), 1.0, "{uid}");
        assert_eq!(decided(&m, &c, uid, "deposed"), 0.0, "{uid}");
        // Deposal to promotion, within what this test saw from outside.
        let took = m[&duration_key(&c, "switchover")];
        let outside = (unix_ms() - t0) as f64 / 1000.0;
        assert!(
            took > 0.0 && took <= outside + 0.05,
            "{took} s, {outside} s since ctl started"
        );
        assert!(!m.contains_key(&duration_key(&c, "failover")));
    }

    // The lease moved with the role; the old primary's counts stay.
    let old = primary.as_str();
    poll(&format!("{old} to show no lease"), FAILOVER, || async {
        let m = scrape(api(&c, old)).await;
        node_metric(&m, &c, old, "pgwarden_primary_lease_renewal_seconds")
            .is_none()
            .then_some(())
    })
    .await;
    let m = scrape(api(&c, old)).await;
    assert!(node_metric(&m, &c, old, "pgwarden_primary_lease_renewals_total").unwrap() >= renewed);
    let never: Vec<&str> = standbys.iter().copied().filter(|u| *u != to).collect();
    check_lease_metrics(&c, &to, &never).await;
}

#[tokio::test]
async fn the_proxy_metrics_endpoint_is_off_by_default_and_an_occupied_port_fails_start_up() {
    let help = std::process::Command::new(bin())
        .args(["proxy", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--metrics-listen <ADDR:PORT>"), "{help}");
    assert!(help.contains("off when absent"), "{help}");

    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["proxy", "--cluster-name", "x"])
        .args(["--store-endpoints", "http://127.0.0.1:1"])
        .args(["--listen-address", "127.0.0.1", "--port", "0"])
        .args(["--metrics-listen", &format!("127.0.0.1:{taken}")])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Bounded: a proxy that started anyway would wait for etcd forever.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(
        err.lines().last().unwrap_or_default(),
        format!(
            "error: proxy address 127.0.0.1:{taken} is already in use by another process: stop it or pass another --metrics-listen"
        ),
        "{err}"
    );
}
