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
