//! End-to-end operator workflows: switchover, manual failover, pause/resume.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const CONVERGE: Duration = Duration::from_secs(90);

async fn cluster() -> (TestCluster, String, Vec<String>) {
    TestCluster::three_nodes().await
}

fn ctl_err(c: &TestCluster, args: &[&str]) -> String {
    let out = c.ctl(args);
    assert!(
        !out.status.success(),
        "ctl {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr(&out).lines().last().unwrap_or_default().to_string()
}

/// A client that writes unique rows to whichever node accepts them, like a
/// libpq client with target_session_attrs=read-write, recording every
/// acknowledged row and the longest gap between acknowledgements.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<Duration>,
}

impl Writer {
    async fn start(c: &TestCluster, primary: &str) -> Writer {
        connect(c.port_of(primary))
            .await
            .unwrap()
            .batch_execute("CREATE TABLE w (id bigint PRIMARY KEY)")
            .await
            .unwrap();
        let ports: Vec<u16> = c.keepers.values().map(|k| k.pg_port).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (stop2, acked2) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let mut next = 1i64;
            let mut last_ack = Instant::now();
            let mut worst = Duration::ZERO;
            let mut client: Option<tokio_postgres::Client> = None;
            while !stop2.load(Ordering::SeqCst) {
                if client.is_none() {
                    for p in &ports {
                        if let Ok(Ok(cl)) =
                            tokio::time::timeout(Duration::from_millis(300), connect(*p)).await
                        {
                            if let Ok(row) = cl.query_one("SELECT pg_is_in_recovery()", &[]).await {
                                if !row.get::<_, bool>(0) {
                                    client = Some(cl);
                                    break;
                                }
                            }
                        }
                    }
                }
                let Some(cl) = &client else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&next];
                let q = cl.execute("INSERT INTO w VALUES ($1)", &params);
                match tokio::time::timeout(Duration::from_secs(2), q).await {
                    Ok(Ok(_)) => {
                        acked2.lock().unwrap().push(next);
                        worst = worst.max(last_ack.elapsed());
                        last_ack = Instant::now();
                    }
                    _ => client = None,
                }
                next += 1;
            }
            worst
        });
        Writer { stop, acked, task }
    }

    /// Stops writing; the longest time without an acknowledged write.
    async fn finish(self) -> (Duration, Vec<i64>) {
        self.stop.store(true, Ordering::SeqCst);
        let worst = self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (worst, acked)
    }
}

async fn rows_on(port: u16) -> std::collections::BTreeSet<i64> {
    let cl = connect(port).await.unwrap();
    cl.query("SELECT id FROM w", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_hands_over_without_losing_a_write_and_the_old_primary_follows() {
    let (c, primary, standbys) = cluster().await;
    let to = standbys[0].clone();
    // Refusals first: each clear, each changing nothing.
    assert!(ctl_err(&c, &["switchover", "--to", "nobody", "--yes"])
        .contains("unknown member \"nobody\""));
    assert!(ctl_err(&c, &["switchover", "--to", &primary, "--yes"]).contains("already the primary"));
    assert!(
        ctl_err(&c, &["switchover", "--to", &to]).contains("pass --yes"),
        "no terminal, no --yes: refuse"
    );
    assert!(ctl_err(&c, &["failover", "--to", &to, "--yes"])
        .contains("is healthy: use `pgwarden ctl switchover`"));
    assert_eq!(c.status()["primary"], primary.as_str());

    let writer = Writer::start(&c, &primary).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = c.ctl_ok(&["switchover", "--to", &to, "--yes"]);
    assert!(
        out.contains(&format!("switchover done: {to} is the primary")),
        "{out}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (gap, acked) = writer.finish().await;
    eprintln!(
        "switchover write gap: {gap:?}, {} writes acknowledged",
        acked.len()
    );
    assert!(acked.len() > 10);
    let status = c.wait_converged(2, CONVERGE).await;
    assert_eq!(status["primary"], to.as_str());
    // Every acknowledged write is on the new primary, and on the old one,
    // which now streams from it.
    let on_new = rows_on(c.port_of(&to)).await;
    let lost: Vec<_> = acked.iter().filter(|id| !on_new.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows_on(c.port_of(&primary)).await.len() < on_new.len() {
        assert!(Instant::now() < deadline, "old primary does not follow");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status["history"].as_array().unwrap().last().unwrap()["new_primary"],
        to.as_str()
    );
    let table = c.ctl_ok(&["status"]);
    assert!(table.contains("last request: done:"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_cluster_does_not_fail_over_until_the_operator_says_so() {
    let (mut c, primary, standbys) = cluster().await;
    assert!(c.ctl_ok(&["pause"]).contains("paused"));
    assert_eq!(c.status()["paused"], true);
    assert!(c.ctl_ok(&["status"]).contains("PAUSED"));
    c.kill_host(&primary);
    // Well past the lease TTL: still no promotion, the keepers keep running.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let s = c.status();
    assert_eq!(s["primary"], primary.as_str());
    for sb in &standbys {
        assert_eq!(TestCluster::member(&s, sb).unwrap()["state"], "standby");
    }
    // The operator promotes a standby by hand.
    let to = standbys[1].clone();
    let out = c.ctl_ok(&["failover", "--to", &to, "--yes"]);
    assert!(
        out.contains(&format!("failover done: {to} is the primary")),
        "{out}"
    );
    connect(c.port_of(&to))
        .await
        .unwrap()
        .batch_execute("CREATE TABLE after_failover (x int)")
        .await
        .unwrap();
    assert!(c.ctl_ok(&["resume"]).contains("resumed"));
    assert_eq!(c.status()["paused"], false);
}

async fn show(port: u16, name: &str) -> String {
    query_strings(port, &format!("SHOW {name}"))
        .await
        .unwrap()
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_parameters_rolling_restart_and_reinit() {
    let (c, primary, standbys) = cluster().await;
    // Invalid values and unknown parameters never reach a node.
    let e = ctl_err(&c, &["spec", "set", "pg_parameters.work_mem=lots"]);
    assert!(
        e.contains("invalid value for parameter \"work_mem\""),
        "{e}"
    );
    let e = ctl_err(&c, &["spec", "set", "pg_parameters.no_such_setting=1"]);
    assert!(e.contains("unrecognized configuration parameter"), "{e}");
    // A reload parameter is applied on every node.
    c.ctl_ok(&["spec", "set", "pg_parameters.work_mem=12MB"]);
    for uid in c.keepers.keys() {
        let port = c.port_of(uid);
        let deadline = Instant::now() + Duration::from_secs(30);
        while show(port, "work_mem").await != "12MB" {
            assert!(Instant::now() < deadline, "work_mem not applied on {uid}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // A restart parameter shows as pending until a rolling restart.
    c.ctl_ok(&["spec", "set", "pg_parameters.max_connections=120"]);
    wait_for("pending restart on every node", CONVERGE, || {
        let s = c.status();
        s["members"]
            .as_array()?
            .iter()
            .all(|m| m["pending_restart"] == true)
            .then_some(())
    })
    .await;
    assert!(c.ctl_ok(&["status"]).contains("pending restart"));
    let out = c.ctl_ok(&["restart", "--pending", "--yes"]);
    assert!(out.contains(&format!("{primary} restarted")), "{out}");
    let s = c.wait_converged(2, CONVERGE).await;
    assert_ne!(
        s["primary"],
        primary.as_str(),
        "the primary role moves away before its restart"
    );
    for uid in c.keepers.keys() {
        assert_eq!(
            show(c.port_of(uid), "max_connections").await,
            "120",
            "{uid}"
        );
    }
    wait_for("no restart pending", CONVERGE, || {
        let s = c.status();
        s["members"]
            .as_array()?
            .iter()
            .all(|m| m["pending_restart"] == false)
            .then_some(())
    })
    .await;
    // Re-cloning a standby replaces its data and it streams again.
    let new_primary = s["primary"].as_str().unwrap().to_string();
    assert!(
        ctl_err(&c, &["reinit", &new_primary, "--yes"]).contains("only a standby can be re-cloned")
    );
    let victim = standbys
        .iter()
        .chain(std::iter::once(&primary))
        .find(|u| **u != new_primary)
        .unwrap()
        .clone();
    let marker = c.keepers[&victim].data_dir.join("pgwarden-e2e-marker");
    std::fs::write(&marker, "old data").unwrap();
    c.ctl_ok(&["reinit", &victim, "--yes"]);
    assert!(!marker.exists(), "reinit kept the old data");
    assert!(c.log(&victim).contains("emptying the data directory"));
    c.wait_converged(2, CONVERGE).await;
}
