//! End-to-end strict synchronous replication: commits survive one standby
//! loss, wait with none, resume when one returns; only a synchronous standby
//! is promoted.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CONVERGE: Duration = Duration::from_secs(90);

async fn strict_cluster() -> TestCluster {
    let c = TestCluster::new().await;
    let spec = c.path().join("spec.toml");
    std::fs::write(
        &spec,
        "sync_mode = 'strict'\nmin_sync_standbys = 1\nmax_sync_standbys = 1\n",
    )
    .unwrap();
    let out = c.ctl(&["init", "--spec", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    c
}

async fn wait_sync_standby(c: &TestCluster, want: Option<&str>) -> String {
    wait_for("a synchronous standby", CONVERGE, || {
        let s = c.status();
        let v = s["sync_standbys"]
            .as_array()?
            .first()?
            .as_str()?
            .to_string();
        want.is_none_or(|w| w == v).then_some(v)
    })
    .await
}

/// Runs an INSERT in the background; returns its handle.
fn insert(port: u16, v: i32) -> tokio::task::JoinHandle<Result<u64, tokio_postgres::Error>> {
    tokio::spawn(async move {
        connect(port)
            .await?
            .execute("INSERT INTO s VALUES ($1)", &[&v])
            .await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_never_acknowledges_a_commit_no_standby_holds() {
    let mut c = strict_cluster().await;
    c.spawn_sentinel("sentinel1");
    c.spawn_keepers(&["k1", "k2", "k3"]);
    let status = c.wait_converged(2, CONVERGE).await;
    let primary = status["primary"].as_str().unwrap().to_string();
    let pport = c.port_of(&primary);
    let sync = wait_sync_standby(&c, None).await;
    let other = ["k1", "k2", "k3"]
        .into_iter()
        .find(|u| *u != primary && *u != sync)
        .unwrap()
        .to_string();
    connect(pport)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE s (v int)")
        .await
        .unwrap();
    assert_eq!(
        query_strings(pport, "SHOW synchronous_standby_names")
            .await
            .unwrap(),
        vec![format!("ANY 1 (\"{sync}\")")]
    );

    // One standby (the synchronous one) dies: commits still succeed.
    c.stop(&sync, Signal::SIGKILL);
    let t = Instant::now();
    insert(pport, 1).await.unwrap().unwrap();
    eprintln!(
        "commit after losing the sync standby took {:?}",
        t.elapsed()
    );
    assert_eq!(wait_sync_standby(&c, Some(&other)).await, other);

    // Both gone: a commit waits, the status says so.
    c.stop(&other, Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pending = insert(pport, 2);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !pending.is_finished(),
        "a commit was acknowledged with no standby to hold it"
    );
    wait_for("writes_blocked in ctl status", CONVERGE, || {
        (c.status()["writes_blocked"] == true).then_some(())
    })
    .await;
    assert!(String::from_utf8_lossy(&c.ctl(&["status"]).stdout).contains("WRITES BLOCKED"));
    // The primary's API says so too: /cluster and /metrics.
    let api = c.keepers[&primary].api_port;
    wait_writes_blocked_metric(api, 1.0).await;
    let cluster = http(api, "GET", "/cluster", &[]).await.unwrap();
    assert_eq!(cluster.json()["writes_blocked"], true, "{}", cluster.body);
    // A standby returns: the waiting commit completes.
    c.start_keeper(&other);
    let done = tokio::time::timeout(CONVERGE, pending)
        .await
        .expect("the commit never completed");
    done.unwrap().unwrap();
    wait_for("writes flowing", CONVERGE, || {
        (c.status()["writes_blocked"] == false).then_some(())
    })
    .await;
    wait_writes_blocked_metric(api, 0.0).await;
}

/// Waits until the keeper API's `pgwarden_cluster_writes_blocked` is `want`
/// (the API caches the cluster for a second).
async fn wait_writes_blocked_metric(api: u16, want: f64) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let body = http(api, "GET", "/metrics", &[]).await.unwrap().body;
        let value = parse_prometheus(&body)
            .into_iter()
            .find(|(series, _)| series.starts_with("pgwarden_cluster_writes_blocked{"))
            .map(|(_, v)| v);
        if value == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pgwarden_cluster_writes_blocked is {value:?}, not {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_synchronous_standby_is_promoted() {
    let mut c = strict_cluster().await;
    c.spawn_sentinel("sentinel1");
    // k1 becomes primary; k3 arrives before k2 and becomes the synchronous
    // standby, so the async k2 wins every tie-break the sync rule overrides.
    c.spawn_keepers(&["k1"]);
    c.wait_converged(0, CONVERGE).await;
    c.spawn_keepers(&["k3"]);
    wait_sync_standby(&c, Some("k3")).await;
    c.spawn_keepers(&["k2"]);
    c.wait_converged(2, CONVERGE).await;
    let pport = c.port_of("k1");
    let cl = connect(pport).await.unwrap();
    cl.batch_execute("CREATE TABLE s (v int)").await.unwrap();
    assert_eq!(c.status()["sync_standbys"], serde_json::json!(["k3"]));
    // 100 rows acknowledged (k3 confirmed them). Then k3 stops receiving
    // and one more commit waits: its WAL reaches the async k2 only, which is
    // now the most advanced node, yet must not be promoted.
    cl.batch_execute("INSERT INTO s SELECT generate_series(1, 100)")
        .await
        .unwrap();
    let receiver = walreceiver_pid(&c, "k3");
    kill(Pid::from_raw(receiver), Signal::SIGSTOP).unwrap();
    let blocked = tokio::spawn(async move { cl.batch_execute("INSERT INTO s VALUES (0)").await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !blocked.is_finished(),
        "a commit k3 did not confirm was acknowledged"
    );
    c.kill_host("k1");
    // k3 must be able to finish its promotion.
    kill(Pid::from_raw(receiver), Signal::SIGCONT).unwrap();
    let new_primary = wait_for("a new primary", CONVERGE, || {
        let s = c.status();
        let p = s["primary"].as_str()?.to_string();
        (p != "k1").then_some(p)
    })
    .await;
    assert_eq!(
        new_primary, "k3",
        "a standby outside the sync set was promoted"
    );
    // Every acknowledged row is there (the unacknowledged one may or may not be).
    assert_eq!(
        count(c.port_of("k3")).await - i64::from(has_zero(c.port_of("k3")).await),
        100,
        "acknowledged commits lost"
    );
}

/// The pid of a node's WAL receiver process (a child of its postmaster).
fn walreceiver_pid(c: &TestCluster, uid: &str) -> i32 {
    let pm = c.postmaster_pid(uid);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid: Option<i32> = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(pm) && cmd.contains("walreceiver") {
            return pid;
        }
    }
    panic!("no walreceiver under {uid}'s postmaster {pm}");
}

async fn has_zero(port: u16) -> bool {
    let cl = connect(port).await.unwrap();
    cl.query_one("SELECT count(*) FROM s WHERE v = 0", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
}

async fn count(port: u16) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(cl) = connect(port).await {
            if let Ok(r) = cl.query_one("SELECT count(*) FROM s", &[]).await {
                return r.get(0);
            }
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
