//! End-to-end: the keeper's HTTP API on a real 3-node cluster, and real
//! haproxy running the config documented in docs/haproxy.md, through
//! failovers.
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
    let pid_file = c.keepers[&primary].data_dir.join("postmaster.pid");
    let pm: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    kill(Pid::from_raw(-pm), Signal::SIGKILL).unwrap();
    c.stop(&primary, Signal::SIGKILL);
    let new_primary = wait_new_primary(&c, &primary).await;
    wait_routed(&c, &h, &new_primary).await;
    eprintln!(
        "host lost: haproxy routes writes to {new_primary} after {:?}",
        t0.elapsed()
    );
    h.wait_up("primary", &[&new_primary]).await;
}
