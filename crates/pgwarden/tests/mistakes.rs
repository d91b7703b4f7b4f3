//! End-to-end operator mistakes: a second keeper given a live keeper's uid,
//! garbage in the store, a bad parameter past ctl. None of them may split
//! the brain or disable failover. Real etcd, postgres and processes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const CONVERGE: Duration = Duration::from_secs(90);

/// Polls the writability of every port at 20 Hz and records each instant
/// with more than one writable node.
struct Writable {
    stop: Arc<AtomicBool>,
    doubles: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<u64>,
}

impl Writable {
    fn watch(ports: BTreeMap<String, u16>) -> Writable {
        let stop = Arc::new(AtomicBool::new(false));
        let doubles = Arc::new(Mutex::new(Vec::new()));
        let (stop2, doubles2) = (stop.clone(), doubles.clone());
        let task = tokio::spawn(async move {
            let mut clients: BTreeMap<String, tokio_postgres::Client> = BTreeMap::new();
            let mut polls = 0;
            while !stop2.load(Ordering::SeqCst) {
                let tick = Instant::now();
                let mut writable = Vec::new();
                for (name, port) in &ports {
                    if !clients.contains_key(name) {
                        if let Ok(Ok(cl)) =
                            tokio::time::timeout(Duration::from_millis(200), connect(*port)).await
                        {
                            clients.insert(name.clone(), cl);
                        }
                    }
                    let Some(cl) = clients.get(name) else {
                        continue;
                    };
                    let q = cl.query_one("SELECT NOT pg_is_in_recovery()", &[]);
                    match tokio::time::timeout(Duration::from_millis(200), q).await {
                        Ok(Ok(row)) if row.get::<_, bool>(0) => writable.push(name.clone()),
                        Ok(Ok(_)) => {}
                        _ => {
                            clients.remove(name);
                        }
                    }
                }
                polls += 1;
                if writable.len() > 1 {
                    doubles2.lock().unwrap().push(format!("{writable:?}"));
                }
                tokio::time::sleep_until((tick + Duration::from_millis(50)).into()).await;
            }
            polls
        });
        Writable {
            stop,
            doubles,
            task,
        }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let polls = self.task.await.unwrap();
        assert!(polls > 20, "the watch barely ran ({polls} polls)");
        let seen = self.doubles.lock().unwrap().clone();
        assert!(
            seen.is_empty(),
            "two writable nodes at {} polls: {seen:?}",
            seen.len()
        );
    }
}

fn ports(c: &TestCluster) -> BTreeMap<String, u16> {
    c.keepers
        .iter()
        .map(|(u, k)| (u.clone(), k.pg_port))
        .collect()
}

/// Starts a keeper under `uid` with the ports and data directory registered
/// for `slot` (another name), like a config file copied to a new host with
/// its uid left unchanged.
fn spawn_keeper_as(c: &TestCluster, slot: &str, uid: &str) -> Child {
    let k = &c.keepers[slot];
    let mut cmd = c.command();
    cmd.arg("keeper")
        .args(["--uid", uid, "--pg-listen-address", "127.0.0.1"])
        .args(["--pg-port", &k.pg_port.to_string()])
        .args(["--api-listen", &format!("127.0.0.1:{}", k.api_port)])
        .arg("--data-dir")
        .arg(&k.data_dir)
        .arg("--pg-su-password-file")
        .arg(&c.su_file)
        .args(["--pg-repl-username", "replicator"])
        .arg("--pg-repl-password-file")
        .arg(&c.repl_file);
    spawn_logged(cmd, &k.log, Some(c.run_as))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_keeper_with_the_primarys_uid_is_refused_and_nothing_moves() {
    let (mut c, primary, _standbys) = TestCluster::three_nodes().await;
    let generation = c.status()["generation"].as_u64().unwrap();
    c.add_keeper("copy");
    let watch = Writable::watch(ports(&c));
    let t0 = Instant::now();
    let mut copy = spawn_keeper_as(&c, "copy", &primary);
    let exit = wait_for("the second keeper to exit", Duration::from_secs(30), || {
        copy.try_wait().unwrap()
    })
    .await;
    eprintln!(
        "second keeper with uid {primary} exited after {:?}: {exit}",
        t0.elapsed()
    );
    assert!(!exit.success(), "the second keeper exited with success");
    let log = c.log("copy");
    let line = log
        .lines()
        .find(|l| l.contains("already used by a live keeper"))
        .unwrap_or_else(|| panic!("no refusal in the second keeper's log:\n{log}"));
    eprintln!("refusal: {line}");
    assert!(line.contains(&format!("uid {primary} ")), "{line}");
    let port = c.port_of(&primary).to_string();
    assert!(
        line.contains(&port),
        "the line names where the other runs: {line}"
    );
    assert!(
        !c.keepers["copy"].data_dir.join("PG_VERSION").exists(),
        "the second keeper cloned a data directory"
    );
    // Nothing moved: the primary keeps its role, its lease and its generation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.finish().await;
    let s = c.status();
    assert_eq!(s["primary"], primary.as_str());
    assert_eq!(s["generation"].as_u64().unwrap(), generation, "{s}");
    assert!(c.running(&primary), "the primary's keeper stopped");
    assert_eq!(
        query_strings(
            c.port_of(&primary),
            "SELECT (NOT pg_is_in_recovery())::text"
        )
        .await
        .unwrap(),
        ["true"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_keeper_waits_out_its_old_report_and_rejoins() {
    let (mut c, _primary, standbys) = TestCluster::three_nodes().await;
    let standby = standbys[0].clone();
    // A killed keeper leaves its report in etcd until the report lease
    // expires; the restarted one must wait that out, not be refused.
    c.kill_host(&standby);
    let t0 = Instant::now();
    c.start_keeper(&standby);
    wait_for("the restarted keeper to start", CONVERGE, || {
        (c.log(&standby).matches("keeper started").count() == 2).then_some(())
    })
    .await;
    eprintln!(
        "restarted keeper {standby} claimed its uid after {:?}",
        t0.elapsed()
    );
    c.wait_converged(2, CONVERGE).await;
    eprintln!(
        "restarted keeper {standby} streaming again after {:?}",
        t0.elapsed()
    );
    assert!(c.running(&standby), "the restarted keeper was refused");
    assert!(
        !c.log(&standby).contains("already used by a live keeper"),
        "{}",
        c.log(&standby)
    );
}

/// Writes `value` under the cluster's `key` with etcdctl, past ctl.
fn etcdctl_put(c: &TestCluster, key: &str, value: &str) {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.etcd.endpoint()))
        .args(["put", &format!("/pgwarden/{}/{key}", c.name), value])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl put: {}", stderr(&out));
}

/// Inserts a row through `port` every 50 ms on one connection (reconnecting
/// after a failure) and records when each insert was acknowledged.
struct ProxyWriter {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ProxyWriter {
    async fn start(port: u16) -> ProxyWriter {
        connect(port)
            .await
            .unwrap()
            .batch_execute("CREATE TABLE IF NOT EXISTS w (id bigserial PRIMARY KEY)")
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (stop2, acks2) = (stop.clone(), acks.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            while !stop2.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = tokio::time::timeout(Duration::from_millis(500), connect(port))
                        .await
                        .ok()
                        .and_then(Result::ok);
                }
                if let Some(cl) = &client {
                    let q = cl.batch_execute("INSERT INTO w DEFAULT VALUES");
                    match tokio::time::timeout(Duration::from_secs(1), q).await {
                        Ok(Ok(())) => acks2.lock().unwrap().push(Instant::now()),
                        _ => client = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        ProxyWriter { stop, acks, task }
    }

    /// The longest time without an acknowledged write in `[from, to]`.
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let acks = self.acks.lock().unwrap();
        let mut last = from;
        let mut worst = Duration::ZERO;
        for t in acks.iter().filter(|t| **t >= from && **t <= to) {
            worst = worst.max(t.duration_since(last));
            last = *t;
        }
        worst.max(to.saturating_duration_since(last))
    }

    fn acked_after(&self, t: Instant) -> usize {
        self.acks.lock().unwrap().iter().filter(|a| **a > t).count()
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
    }
}

/// Kills the primary's host and waits until writes through the proxy are
/// acknowledged by another node; returns it.
async fn host_loss_fails_over(c: &mut TestCluster, primary: &str, writer: &ProxyWriter) -> String {
    let t0 = Instant::now();
    c.kill_host(primary);
    let new_primary = wait_for("a new primary", Duration::from_secs(60), || {
        let s = c.status();
        let p = s["primary"].as_str()?.to_string();
        let m = TestCluster::member(&s, &p)?;
        (p != primary && m["state"] == "primary").then_some(p)
    })
    .await;
    let promoted = Instant::now();
    wait_for(
        "a write through the proxy after the failover",
        Duration::from_secs(30),
        || (writer.acked_after(promoted) > 0).then_some(()),
    )
    .await;
    eprintln!(
        "host loss of {primary}: {new_primary} promoted and writable through the proxy after {:?}",
        t0.elapsed()
    );
    new_primary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_spec_key_stops_nothing_and_failover_still_works() {
    let (mut c, primary, _standbys) = TestCluster::three_nodes().await;
    let (port, ro_port) = (free_port(), free_port());
    c.spawn_proxy("proxy1", port, ro_port);
    wait_for("the proxy to route", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    let writer = ProxyWriter::start(port).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    etcdctl_put(&c, "spec", "{not json");
    let broken = Instant::now();
    // Three proxy TTLs: a proxy that stopped reading would stop routing.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let gap = writer.longest_gap(broken, Instant::now());
    eprintln!(
        "garbage spec: {} writes through the proxy in 9 s, longest gap {gap:?}",
        writer.acked_after(broken)
    );
    assert!(
        gap < Duration::from_secs(2),
        "writes through the proxy stalled for {gap:?}"
    );

    // ctl status works and says what is wrong.
    let s = c.status();
    let problems = s["store_problems"].as_array().unwrap().clone();
    eprintln!("ctl status store_problems: {problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("key spec")),
        "{s}"
    );
    let table = c.ctl_ok(&["status"]);
    assert!(table.contains("PROBLEM"), "{table}");
    for role in [primary.as_str(), "sentinel1", "proxy1"] {
        let n = c.log(role).matches("(key spec) cannot be used").count();
        assert_eq!(
            n,
            1,
            "{role} logs the problem once, not {n} times:\n{}",
            c.log(role)
        );
    }

    host_loss_fails_over(&mut c, &primary, &writer).await;

    // A keeper started while the spec is unreadable waits, saying why.
    c.start_keeper(&primary);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(c.running(&primary), "a keeper started on a bad spec exited");
    let n = c.log(&primary).matches("(key spec) cannot be used").count();
    assert_eq!(n, 2, "the restarted keeper says why it waits");

    // ctl spec set repairs it, and the old primary rejoins.
    let out = c.ctl_ok(&["spec", "set", "max_lag_bytes=16777216"]);
    eprintln!("ctl spec set: {}", out.trim());
    let s = c.status();
    assert_eq!(s["store_problems"], serde_json::json!([]), "{s}");
    c.wait_converged(2, CONVERGE).await;
    writer.finish().await;
}

/// The cluster's spec as JSON, read past ctl.
fn etcdctl_get_spec(c: &TestCluster) -> serde_json::Value {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.etcd.endpoint()))
        .args([
            "get",
            "--print-value-only",
            &format!("/pgwarden/{}/spec", c.name),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl get: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_parameter_past_ctl_never_disables_failover() {
    let (mut c, primary, standbys) = TestCluster::three_nodes().await;
    let mut spec = etcdctl_get_spec(&c);
    spec["pg_parameters"]["work_mem"] = "lots".into();
    etcdctl_put(&c, "spec", &spec.to_string());
    // Every keeper says it runs on its last good configuration.
    let s = wait_for(
        "the keepers to report the rejected parameter",
        CONVERGE,
        || {
            let s = c.status();
            let all = ["k1", "k2", "k3"].iter().all(|u| {
                TestCluster::member(&s, u).is_some_and(|m| {
                    m["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("last good configuration"))
                })
            });
            all.then_some(s)
        },
    )
    .await;
    eprintln!(
        "ctl status error of {}: {}",
        standbys[0],
        TestCluster::member(&s, &standbys[0]).unwrap()["error"]
    );
    let t0 = Instant::now();
    c.kill_host(&primary);
    let new_primary = wait_for("a new primary", Duration::from_secs(60), || {
        let s = c.status();
        let p = s["primary"].as_str()?.to_string();
        let m = TestCluster::member(&s, &p)?;
        (p != primary && m["state"] == "primary").then_some(p)
    })
    .await;
    eprintln!(
        "bad parameter: host loss of {primary} failed over to {new_primary} in {:?}",
        t0.elapsed()
    );
    assert_eq!(
        query_strings(
            c.port_of(&new_primary),
            "SELECT current_setting('work_mem')"
        )
        .await
        .unwrap(),
        ["4MB"],
        "the new primary runs without the rejected value"
    );
    // A keeper started afresh on the bad spec starts postgres too.
    c.start_keeper(&primary);
    c.wait_converged(2, CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_whose_source_is_briefly_unreachable_keeps_the_data_directory() {
    let (mut c, primary, standbys) = TestCluster::three_nodes().await;
    connect(c.port_of(&primary))
        .await
        .unwrap()
        .batch_execute("CREATE TABLE kept AS SELECT generate_series(1, 1000) AS id")
        .await
        .unwrap();
    for s in &standbys {
        let port = c.port_of(s);
        poll(
            "the table on every standby",
            Duration::from_secs(30),
            || async move {
                query_strings(port, "SELECT count(*)::text FROM kept")
                    .await
                    .ok()
                    .filter(|v| v == &["1000"])
            },
        )
        .await;
    }
    c.kill_host(&primary);
    let new_primary = wait_for("a new primary", Duration::from_secs(60), || {
        let s = c.status();
        let p = s["primary"].as_str()?.to_string();
        let m = TestCluster::member(&s, &p)?;
        (p != primary && m["state"] == "primary").then_some(p)
    })
    .await;
    // Written on the new timeline: the old primary must be rewound.
    connect(c.port_of(&new_primary))
        .await
        .unwrap()
        .batch_execute("INSERT INTO kept VALUES (1001)")
        .await
        .unwrap();
    // The source stops accepting connections (its postmaster is stopped;
    // established sessions, its keeper's included, carry on).
    let pm = nix::unistd::Pid::from_raw(c.postmaster_pid(&new_primary));
    nix::sys::signal::kill(pm, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let data = c.keepers[&primary].data_dir.clone();
    let aside = data.with_file_name("data.pgwarden-old");
    c.start_keeper(&primary);
    let line = wait_for("a failed rewind attempt", Duration::from_secs(60), || {
        c.log(&primary)
            .lines()
            .find(|l| l.contains("the data directory is untouched"))
            .map(str::to_string)
    })
    .await;
    eprintln!("while the source is unreachable: {line}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let intact = data.join("PG_VERSION").exists() && data.join("global/pg_control").exists();
    nix::sys::signal::kill(pm, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(
        intact,
        "the data directory was wiped while the source was unreachable"
    );
    assert!(
        !aside.exists(),
        "the data directory was moved aside for a re-clone"
    );
    // Reachable again: rewound, not re-cloned.
    c.wait_converged(2, CONVERGE).await;
    let log = c.log(&primary);
    assert!(log.contains("rewinding onto"), "{log}");
    assert!(!log.contains("re-cloning"), "{log}");
    assert!(!aside.exists());
    eprintln!(
        "{primary} rewound and streaming from {new_primary}; {} failed attempts logged",
        log.matches("the data directory is untouched").count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_remove_forgets_a_killed_standby_and_refuses_live_members() {
    let (mut c, primary, standbys) = TestCluster::three_nodes().await;
    let (gone, live) = (standbys[0].clone(), standbys[1].clone());
    let slot = format!("pgwarden_{gone}");
    let slots = |port: u16| async move {
        query_strings(port, "SELECT slot_name::text FROM pg_replication_slots")
            .await
            .unwrap_or_default()
    };
    assert!(slots(c.port_of(&primary)).await.contains(&slot));
    // The primary's metrics show the WAL each slot holds back, and the
    // guard that bounds it.
    let api = c.keepers[&primary].api_port;
    let metric = poll("the slot metric", Duration::from_secs(10), || async move {
        let body = http(api, "GET", "/metrics", &[]).await.ok()?.body;
        body.lines()
            .find(|l| {
                l.starts_with("pgwarden_slot_retained_wal_bytes") && l.contains("slot=\"pgwarden_")
            })
            .map(str::to_string)
    })
    .await;
    eprintln!("primary /metrics: {metric}");
    assert_eq!(
        query_strings(
            c.port_of(&primary),
            "SELECT current_setting('max_slot_wal_keep_size')"
        )
        .await
        .unwrap(),
        ["8GB"]
    );
    c.kill_host(&gone);
    wait_for(
        "the killed standby's report to expire",
        Duration::from_secs(30),
        || {
            let s = c.status();
            TestCluster::member(&s, &gone)
                .filter(|m| m["state"].is_null())
                .map(|_| ())
        },
    )
    .await;
    let before = c.status();
    for (uid, why) in [(&live, "is live"), (&primary, "is the primary")] {
        let out = c.ctl(&["remove", uid, "--yes"]);
        let err = stderr(&out);
        eprintln!("ctl remove {uid}: {}", err.trim());
        assert!(!out.status.success(), "ctl remove {uid} succeeded");
        assert!(
            err.contains(why) && err.contains("nothing changed"),
            "{err}"
        );
    }
    let after = c.status();
    assert_eq!(after["members"].as_array().unwrap().len(), 3);
    assert_eq!(after["generation"], before["generation"]);

    let t0 = Instant::now();
    let out = c.ctl_ok(&["remove", &gone, "--yes"]);
    eprintln!("ctl remove {gone}: {}", out.trim());
    for uid in [&primary, &live] {
        let port = c.port_of(uid);
        let slot = slot.clone();
        poll(
            "the removed member's slot to be dropped",
            Duration::from_secs(10),
            || {
                let slot = slot.clone();
                async move { (!slots(port).await.contains(&slot)).then_some(()) }
            },
        )
        .await;
    }
    eprintln!(
        "slot {slot} gone from the primary and the other standby after {:?}",
        t0.elapsed()
    );
    let s = c.status();
    assert!(TestCluster::member(&s, &gone).is_none(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_gone_past_member_slots_ttl_loses_its_slot_and_rejoins() {
    let (mut c, primary, standbys) = TestCluster::three_nodes().await;
    c.ctl_ok(&["spec", "set", "member_slots_ttl=3s"]);
    let gone = standbys[0].clone();
    let slot = format!("pgwarden_{gone}");
    let port = c.port_of(&primary);
    let has_slot = |slot: String| async move {
        query_strings(port, "SELECT slot_name::text FROM pg_replication_slots")
            .await
            .unwrap_or_default()
            .contains(&slot)
    };
    c.kill_host(&gone);
    let t0 = Instant::now();
    poll(
        "the gone member's slot to be dropped",
        Duration::from_secs(30),
        || {
            let slot = slot.clone();
            async move { (!has_slot(slot).await).then_some(()) }
        },
    )
    .await;
    eprintln!(
        "slot {slot} dropped {:?} after the host loss (member_slots_ttl 3s)",
        t0.elapsed()
    );
    let s = c.status();
    let m = TestCluster::member(&s, &gone).expect("the member stays listed");
    assert!(m["state"].is_null(), "listed as gone: {m}");
    // It comes back: its slot is made again and it streams.
    c.start_keeper(&gone);
    poll(
        "the returning member's slot",
        Duration::from_secs(30),
        || {
            let slot = slot.clone();
            async move { has_slot(slot).await.then_some(()) }
        },
    )
    .await;
    let gone_port = c.port_of(&gone);
    poll("the returning member to stream", CONVERGE, || async move {
        query_strings(gone_port, "SELECT status FROM pg_stat_wal_receiver")
            .await
            .ok()
            .filter(|v| v == &["streaming"])
    })
    .await;
    eprintln!(
        "{gone} back, streaming through its slot again after {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_keeper_never_repeats_a_reinit_still_in_the_spec() {
    let (mut c, _primary, standbys) = TestCluster::three_nodes().await;
    let s = standbys[0].clone();
    // A reinit request left in the spec (ctl died before removing it).
    let mut spec = etcdctl_get_spec(&c);
    spec["node_requests"][&s] = serde_json::json!({"id": 5, "action": "reinit"});
    etcdctl_put(&c, "spec", &spec.to_string());
    let wiped = "emptying the data directory";
    wait_for("the reinit", CONVERGE, || {
        c.log(&s)
            .contains("operator request carried out")
            .then_some(())
    })
    .await;
    c.wait_converged(2, CONVERGE).await;
    assert_eq!(c.log(&s).matches(wiped).count(), 1);
    // Restarted with the request still there: not carried out again.
    assert!(c.stop(&s, nix::sys::signal::Signal::SIGTERM).success());
    c.start_keeper(&s);
    wait_for("the restarted keeper", CONVERGE, || {
        (c.log(&s).matches("keeper started").count() == 2).then_some(())
    })
    .await;
    c.wait_converged(2, CONVERGE).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = c.log(&s);
    eprintln!(
        "after the restart: wiped {} time(s), requests carried out {}",
        log.matches(wiped).count(),
        log.matches("operator request carried out").count()
    );
    assert_eq!(log.matches(wiped).count(), 1, "the reinit was repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_system_cannot_override_what_pgwarden_manages() {
    let (c, primary, _standbys) = TestCluster::three_nodes().await;
    let pg = connect(c.port_of(&primary)).await.unwrap();
    for sql in [
        "ALTER SYSTEM SET port = 1",
        "ALTER SYSTEM SET work_mem = '5MB'",
    ] {
        pg.batch_execute(sql).await.unwrap();
    }
    let auto = c.keepers[&primary].data_dir.join("postgresql.auto.conf");
    assert!(std::fs::read_to_string(&auto).unwrap().contains("port"));
    // The keeper cleans it: each tick while postgres runs, and before every
    // start.
    c.ctl_ok(&["spec", "set", "pg_parameters.maintenance_work_mem=80MB"]);
    let text = wait_for(
        "postgresql.auto.conf cleaned",
        Duration::from_secs(30),
        || {
            let t = std::fs::read_to_string(&auto).ok()?;
            (!t.contains("port")).then_some(t)
        },
    )
    .await;
    eprintln!("postgresql.auto.conf after the keeper's write: {text:?}");
    assert!(
        text.contains("work_mem = '5MB'"),
        "unmanaged settings stay: {text}"
    );
    // Reset by the per-tick check or removed by the configuration write,
    // whichever came first: the keeper says which.
    assert!(c.log(&primary).contains("parameters pgwarden manages"));
}

/// `ALTER SYSTEM` plus a reload must not change a managed parameter while
/// postgres runs either: here a `synchronous_standby_names` no standby
/// matches, which would block every commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_system_and_reload_of_a_managed_parameter_is_undone_at_once() {
    let (c, primary, _standbys) = TestCluster::three_nodes().await;
    let pg = connect(c.port_of(&primary)).await.unwrap();
    pg.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        .await
        .unwrap();
    pg.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = pg
            .query_one("SHOW synchronous_standby_names", &[])
            .await
            .unwrap();
        if row.get::<_, String>(0).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the keeper did not undo ALTER SYSTEM of synchronous_standby_names"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let auto = c.keepers[&primary].data_dir.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).unwrap();
    assert!(!text.contains("synchronous_standby_names"), "{text}");
    assert!(c.log(&primary).contains("ALTER SYSTEM had set"));
    let pg = connect(c.port_of(&primary)).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        pg.batch_execute(
            "CREATE TABLE after_alter_system (v int); INSERT INTO after_alter_system VALUES (1)",
        ),
    )
    .await
    .expect("commits do not wait for a standby named nobody")
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_after_its_wal_was_recycled_re_clones_by_itself() {
    let (mut c, primary, standbys) = TestCluster::three_nodes().await;
    c.ctl_ok(&["spec", "set", "member_slots_ttl=3s"]);
    let gone = standbys[0].clone();
    let slot = format!("pgwarden_{gone}");
    let port = c.port_of(&primary);
    c.kill_host(&gone);
    poll(
        "the gone member's slot to be dropped",
        Duration::from_secs(30),
        || {
            let slot = slot.clone();
            async move {
                let slots = query_strings(port, "SELECT slot_name::text FROM pg_replication_slots")
                    .await
                    .ok()?;
                (!slots.contains(&slot)).then_some(())
            }
        },
    )
    .await;
    // The primary moves past wal_keep_size (128MB, 8 segments) and recycles
    // the segments the gone member would need.
    let pg = connect(port).await.unwrap();
    pg.batch_execute("CREATE TABLE lost_wal (i int)")
        .await
        .unwrap();
    for i in 0..12 {
        pg.batch_execute(&format!(
            "INSERT INTO lost_wal VALUES ({i}); SELECT pg_switch_wal();"
        ))
        .await
        .unwrap();
    }
    pg.batch_execute("CHECKPOINT; CHECKPOINT").await.unwrap();
    let t0 = Instant::now();
    c.start_keeper(&gone);
    let gone_port = c.port_of(&gone);
    // Caught up: it has the writes made while it was away, and streams.
    poll(
        "the returning member to catch up and stream",
        CONVERGE,
        || async move {
            let rows = query_strings(gone_port, "SELECT count(*)::text FROM lost_wal")
                .await
                .ok()?;
            let receiver = query_strings(gone_port, "SELECT status FROM pg_stat_wal_receiver")
                .await
                .ok()?;
            (rows == ["12"] && receiver == ["streaming"]).then_some(())
        },
    )
    .await;
    let log = c.log(&gone);
    assert!(
        log.contains("has already been removed") && log.contains("re-cloning from the primary"),
        "it caught up because it re-cloned, not because its WAL was still there: {log}"
    );
    eprintln!(
        "{gone} re-cloned by itself and streams {:?} after its start",
        t0.elapsed()
    );
}
