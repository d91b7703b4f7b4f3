//! End-to-end failover: the primary's host lost, only its keeper killed, only
//! its postgres killed, and the leader sentinel killed mid-failover. Real
//! etcd, postgres and processes; every node is polled directly for
//! writability so that two writable nodes at any instant fail the test.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CONVERGE: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(60);

/// Writes `n` rows on the primary and waits until every standby replayed them.
async fn write_and_sync(c: &TestCluster, primary: &str, standbys: &[String], from: i32, n: i32) {
    let p = connect(c.port_of(primary)).await.unwrap();
    p.batch_execute("CREATE TABLE IF NOT EXISTS acked (id int PRIMARY KEY)")
        .await
        .unwrap();
    p.execute(
        "INSERT INTO acked SELECT generate_series($1::int, $2::int)",
        &[&from, &(from + n - 1)],
    )
    .await
    .unwrap();
    let target = p
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    for s in standbys {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let caught = query_strings(
                c.port_of(s),
                &format!("SELECT (pg_last_wal_replay_lsn() >= '{target}'::pg_lsn)::text"),
            )
            .await
            .map(|v| v == ["true"])
            .unwrap_or(false);
            if caught {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{s} did not replay up to {target}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits for a new writable primary other than `old`; returns it and the time taken.
async fn wait_new_primary(c: &TestCluster, old: &str, since: Instant) -> (String, Duration) {
    let deadline = Instant::now() + FAILOVER;
    loop {
        for uid in c.keepers.keys().filter(|u| u.as_str() != old) {
            if let Ok(v) =
                query_strings(c.port_of(uid), "SELECT (NOT pg_is_in_recovery())::text").await
            {
                if v == ["true"] {
                    return (uid.clone(), since.elapsed());
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new primary within {FAILOVER:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls every node's writability at 20 Hz on persistent connections and
/// records the longest run of instants with two writable nodes.
struct SplitBrainWatch {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<u64>,
}

impl SplitBrainWatch {
    fn start(c: &TestCluster) -> Self {
        let ports: BTreeMap<String, u16> = c
            .keepers
            .iter()
            .map(|(u, k)| (u.clone(), k.pg_port))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new(Vec::new()));
        let (stop2, worst2) = (stop.clone(), worst.clone());
        let task = tokio::spawn(async move {
            let mut clients: BTreeMap<String, tokio_postgres::Client> = BTreeMap::new();
            let mut polls = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                let tick = Instant::now();
                let mut writable = Vec::new();
                for (uid, port) in &ports {
                    if !clients.contains_key(uid) {
                        if let Ok(Ok(cl)) =
                            tokio::time::timeout(Duration::from_millis(200), connect(*port)).await
                        {
                            clients.insert(uid.clone(), cl);
                        }
                    }
                    let Some(cl) = clients.get(uid) else { continue };
                    let q = cl.query_one("SELECT NOT pg_is_in_recovery()", &[]);
                    match tokio::time::timeout(Duration::from_millis(200), q).await {
                        Ok(Ok(row)) if row.get::<_, bool>(0) => writable.push(uid.clone()),
                        Ok(Ok(_)) => {}
                        _ => {
                            clients.remove(uid);
                        }
                    }
                }
                polls += 1;
                if writable.len() > 1 {
                    worst2.lock().unwrap().push(format!("{:?}", writable));
                }
                let next = tick + Duration::from_millis(50);
                tokio::time::sleep_until(next.into()).await;
            }
            polls
        });
        SplitBrainWatch { stop, worst, task }
    }

    /// Keeps watching two more seconds (past the event), then checks.
    async fn finish(self) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.stop.store(true, Ordering::SeqCst);
        let polls = self.task.await.unwrap();
        assert!(polls > 20, "the watch barely ran ({polls} polls)");
        let seen = self.worst.lock().unwrap().clone();
        assert!(
            seen.is_empty(),
            "two writable nodes seen at {} polls: {seen:?}",
            seen.len()
        );
    }
}

async fn count_acked(port: u16) -> i64 {
    let c = connect(port).await.unwrap();
    c.query_one("SELECT count(*) FROM acked", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_loss_promotes_a_caught_up_standby_and_the_old_primary_rejoins_with_pg_rewind() {
    let (mut c, primary, standbys) = TestCluster::three_nodes().await;
    write_and_sync(&c, &primary, &standbys, 1, 1000).await;
    let watch = SplitBrainWatch::start(&c);
    // The host dies: keeper and postmaster (and its backends) at once.
    let t0 = Instant::now();
    c.kill_host(&primary);
    let (new_primary, took) = wait_new_primary(&c, &primary, t0).await;
    eprintln!("host-loss failover: {new_primary} writable after {took:?}");
    assert!(standbys.contains(&new_primary));
    assert_eq!(
        count_acked(c.port_of(&new_primary)).await,
        1000,
        "acknowledged rows lost"
    );
    // Written on the new timeline, then the old node comes back.
    connect(c.port_of(&new_primary))
        .await
        .unwrap()
        .batch_execute("INSERT INTO acked VALUES (1001)")
        .await
        .unwrap();
    c.start_keeper(&primary);
    let status = c.wait_converged(2, CONVERGE).await;
    assert_eq!(status["primary"], new_primary.as_str());
    assert!(
        c.log(&primary).contains("pg_rewind"),
        "the old primary must rejoin through pg_rewind"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while query_strings(
        c.port_of(&new_primary),
        &format!("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' AND application_name = '{primary}'"),
    )
    .await
    .unwrap()
    .is_empty()
    {
        assert!(Instant::now() < deadline, "the old primary does not stream from {new_primary}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_acked(c.port_of(&primary)).await != 1001 {
        assert!(
            Instant::now() < deadline,
            "the old primary did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_only_the_primary_keeper_never_leaves_two_writable_nodes() {
    let (mut c, primary, standbys) = TestCluster::three_nodes().await;
    write_and_sync(&c, &primary, &standbys, 1, 100).await;
    let watch = SplitBrainWatch::start(&c);
    let pm = c.postmaster_pid(&primary);
    let t0 = Instant::now();
    c.stop(&primary, Signal::SIGKILL);
    // The postmaster dies with its keeper (parent-death signal).
    let deadline = Instant::now() + Duration::from_secs(10);
    while kill(Pid::from_raw(pm), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pm}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(
            Instant::now() < deadline,
            "postmaster {pm} outlived its keeper"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (new_primary, took) = wait_new_primary(&c, &primary, t0).await;
    eprintln!("keeper-kill failover: {new_primary} writable after {took:?}");
    assert_eq!(count_acked(c.port_of(&new_primary)).await, 100);
    watch.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_only_postgres_on_the_primary_fails_over_to_a_caught_up_standby() {
    let (c, primary, standbys) = TestCluster::three_nodes().await;
    write_and_sync(&c, &primary, &standbys, 1, 100).await;
    let watch = SplitBrainWatch::start(&c);
    let pm = c.postmaster_pid(&primary);
    let t0 = Instant::now();
    kill(Pid::from_raw(-pm), Signal::SIGKILL).unwrap();
    let (new_primary, took) = wait_new_primary(&c, &primary, t0).await;
    eprintln!("postgres-kill failover: {new_primary} writable after {took:?}");
    assert!(
        c.log(&primary).contains("postgres exited"),
        "the keeper must notice the exit itself"
    );
    assert_eq!(count_acked(c.port_of(&new_primary)).await, 100);
    // The old node follows the new primary (its keeper is alive).
    let status = c.wait_converged(2, CONVERGE).await;
    assert_eq!(status["primary"], new_primary.as_str());
    watch.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_completes_when_the_leader_sentinel_dies_in_the_middle() {
    let (mut c, primary, standbys) =
        TestCluster::three_nodes_with(&["sentinel1", "sentinel2"]).await;
    write_and_sync(&c, &primary, &standbys, 1, 100).await;
    let store =
        pgwarden_store::Store::new(&[c.etcd.endpoint()], &c.name, Default::default()).unwrap();
    let leader =
        String::from_utf8(store.get("sentinels/leader").await.unwrap().unwrap().value).unwrap();
    let t0 = Instant::now();
    c.kill_host(&primary);
    c.stop(&leader, Signal::SIGKILL);
    let (new_primary, took) = wait_new_primary(&c, &primary, t0).await;
    eprintln!("failover with the leader sentinel killed: {new_primary} writable after {took:?}");
    let now_leader =
        String::from_utf8(store.get("sentinels/leader").await.unwrap().unwrap().value).unwrap();
    assert_ne!(now_leader, leader);
    assert_eq!(count_acked(c.port_of(&new_primary)).await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failovers_in_a_row() {
    let (mut c, first, standbys) = TestCluster::three_nodes().await;
    write_and_sync(&c, &first, &standbys, 1, 100).await;
    c.kill_host(&first);
    let (second, _) = wait_new_primary(&c, &first, Instant::now()).await;
    let last = standbys.iter().find(|u| **u != second).unwrap().clone();
    // The remaining standby follows the new primary and catches up.
    write_and_sync(&c, &second, std::slice::from_ref(&last), 101, 100).await;
    c.kill_host(&second);
    let t0 = Instant::now();
    let deadline = Instant::now() + FAILOVER;
    loop {
        if query_strings(c.port_of(&last), "SELECT (NOT pg_is_in_recovery())::text")
            .await
            .is_ok_and(|v| v == ["true"])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last standby was not promoted: {}",
            c.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("second failover: {last} writable after {:?}", t0.elapsed());
    assert_eq!(count_acked(c.port_of(&last)).await, 200);
    wait_for("the cluster on timeline 3", CONVERGE, || {
        (c.status()["timeline"] == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_keeper_is_fenced_before_a_standby_is_promoted() {
    let (c, primary, standbys) = TestCluster::three_nodes().await;
    write_and_sync(&c, &primary, &standbys, 1, 100).await;
    // A client that stays connected to the old primary, as an application
    // with a connection pool would.
    let stuck = connect(c.port_of(&primary)).await.unwrap();
    let watch = SplitBrainWatch::start(&c);
    let t0 = Instant::now();
    // The keeper freezes (it runs no code), its postgres does not.
    c.signal(&primary, Signal::SIGSTOP);
    let (new_primary, took) = wait_new_primary(&c, &primary, t0).await;
    eprintln!("frozen-keeper failover: {new_primary} writable after {took:?}");
    assert!(
        stuck
            .batch_execute("INSERT INTO acked VALUES (-1)")
            .await
            .is_err(),
        "the frozen keeper's postgres still accepted a write"
    );
    watch.finish().await;
    // Thawed, the old keeper finds itself deposed and rejoins as a standby.
    c.signal(&primary, Signal::SIGCONT);
    let s = c.wait_converged(2, CONVERGE).await;
    assert_eq!(s["primary"], new_primary.as_str());
    assert_eq!(count_acked(c.port_of(&new_primary)).await, 100);
}
