//! Real postgres: initdb, a primary and a streaming standby run as children,
//! failover by promotion, pg_rewind of the crashed primary, and the
//! parent-death signal.
//!
//! The tests run as root, which postgres refuses, so every postgres program is
//! started as the `postgres` OS user (`PgBins::run_as`) and everything it must
//! read or write is chowned to that user.

// Helpers outside #[test] functions panic on failure too: that is how a test fails.
#![allow(clippy::unwrap_used)]

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};
use pgwarden_pg::{
    basebackup, controldata, initdb, inspect_data_dir, primary_conninfo, render_pg_hba,
    render_postgresql_conf, reset_managed_auto_conf, rewind, running_postmaster_pid,
    set_standby_signal, slot_name, write_file_atomic, ConnParams, DataDirState, PgBins, PgClient,
    PgConf, PgError, PgStatus, Postmaster, RunAs, StandbyConf,
};

const SUPERUSER: &str = "pgsuper";
const SU_PASSWORD: &str = "su-secret";
const REPL_USER: &str = "replicator";
/// Exercises conninfo quoting inside postgresql.conf quoting, for real.
const REPL_PASSWORD: &str = r"p@ss w'rd\1";
const DEADLINE: Duration = Duration::from_secs(60);

fn postgres_user() -> RunAs {
    let user = User::from_name("postgres")
        .unwrap()
        .expect("the tests need an OS user named postgres");
    RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }
}

fn bins() -> PgBins {
    let mut bins = PgBins::locate(None).unwrap();
    bins.run_as = Some(postgres_user());
    bins
}

fn chown(path: &Path) {
    let who = postgres_user();
    nix::unistd::chown(
        path,
        Some(Uid::from_raw(who.uid)),
        Some(Gid::from_raw(who.gid)),
    )
    .unwrap();
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A scratch directory the postgres user owns.
fn scratch() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    chown(tmp.path());
    tmp
}

/// Writes a file as the keeper would, then hands it to the postgres user.
fn write_owned(path: &Path, contents: &str) {
    write_file_atomic(path, contents, 0o600).unwrap();
    chown(path);
}

fn conf(port: u16, uid: &str, socket_dir: &Path, standby: Option<StandbyConf>) -> PgConf {
    PgConf {
        listen_addresses: "127.0.0.1".into(),
        port,
        application_name: uid.into(),
        socket_dir: socket_dir.display().to_string(),
        max_wal_senders: 10,
        max_replication_slots: 10,
        wal_keep_size_mb: 64,
        parameters: [("shared_buffers".to_string(), "16MB".to_string())].into(),
        standby,
    }
}

fn write_config(data_dir: &Path, conf: &PgConf) {
    write_owned(
        &data_dir.join("postgresql.conf"),
        &render_postgresql_conf(conf),
    );
    write_owned(
        &data_dir.join("pg_hba.conf"),
        &render_pg_hba(&[], SUPERUSER, REPL_USER),
    );
}

fn standby_of(primary_port: u16, uid: &str) -> StandbyConf {
    StandbyConf {
        primary_conninfo: primary_conninfo(
            "127.0.0.1",
            primary_port,
            REPL_USER,
            REPL_PASSWORD,
            uid,
        ),
        primary_slot_name: slot_name(uid),
    }
}

fn conn_params(port: u16) -> ConnParams {
    ConnParams {
        host: "127.0.0.1".into(),
        port,
        user: SUPERUSER.into(),
        password: SU_PASSWORD.into(),
        dbname: "postgres".into(),
        connect_timeout: Duration::from_secs(2),
        tls: None,
    }
}

/// Kills every postmaster it holds when dropped, so a failing test leaves no
/// postgres behind, and prints their logs if the test is failing.
#[derive(Default)]
struct Instances {
    running: Vec<Postmaster>,
    logs: Vec<PathBuf>,
}

impl Instances {
    fn spawn(&mut self, data_dir: &Path, log: PathBuf) -> usize {
        let pm = Postmaster::spawn(&bins(), data_dir, Some(&log)).unwrap();
        self.running.push(pm);
        self.logs.push(log);
        self.running.len() - 1
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for pm in &self.running {
            pm.kill();
        }
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                eprintln!("===== {}\n{text}", log.display());
            }
        }
    }
}

/// Polls `probe` until it yields a value or the deadline passes.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(port: u16) -> PgClient {
    eventually("postgres to accept connections", || async {
        PgClient::connect(&conn_params(port)).await.ok()
    })
    .await
}

async fn status(client: &PgClient) -> PgStatus {
    client.status().await.unwrap()
}

/// Whether any process of the process group `pgid` is still running (not a zombie).
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        // After the comm: state, ppid, pgrp.
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_standby_failover_and_rewind() {
    let bins = bins();
    let tmp = scratch();
    let dir = tmp.path();
    let mut pg = Instances::default();
    let (port_a, port_b) = (free_port(), free_port());
    let (data_a, data_b) = (dir.join("a"), dir.join("b"));

    // A fresh primary.
    let pwfile = dir.join("su.pw");
    write_owned(&pwfile, SU_PASSWORD);
    assert_eq!(inspect_data_dir(&data_a).unwrap(), DataDirState::Missing);
    initdb(&bins, &data_a, SUPERUSER, &pwfile).await.unwrap();
    let mode = std::fs::metadata(&data_a).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "initdb leaves the data directory private");
    write_config(&data_a, &conf(port_a, "keeper-a", dir, None));
    let a = pg.spawn(&data_a, dir.join("a.log"));
    let primary = connect(port_a).await;
    assert_eq!(running_postmaster_pid(&data_a), Some(pg.running[a].pid()));
    let log = std::fs::read_to_string(dir.join("a.log")).unwrap();
    assert!(
        log.contains("ready to accept connections"),
        "postgres output is relayed to the log file: {log}"
    );

    let st = status(&primary).await;
    assert!(!st.in_recovery);
    assert_eq!(st.timeline, 1);
    assert!(st.current_lsn.is_some() && st.flush_lsn.is_some());
    assert_eq!(
        (st.receive_lsn, st.replay_lsn, st.streaming),
        (None, None, false)
    );
    assert!(st.server_version_num >= 150000, "{st:?}");

    // Replication user and slot; both idempotent.
    for _ in 0..2 {
        primary
            .ensure_replication_role(REPL_USER, REPL_PASSWORD)
            .await
            .unwrap();
        primary
            .create_physical_slot(&slot_name("keeper-b"), true)
            .await
            .unwrap();
    }
    primary
        .create_physical_slot(&slot_name("keeper-a"), true)
        .await
        .unwrap();
    assert_eq!(
        primary.replication_slots().await.unwrap(),
        vec![slot_name("keeper-a"), slot_name("keeper-b")]
    );
    primary.drop_slot(&slot_name("keeper-a")).await.unwrap();
    primary.drop_slot(&slot_name("keeper-a")).await.unwrap();
    primary.execute("CREATE TABLE t (v text)").await.unwrap();
    let inserted = primary
        .execute("INSERT INTO t VALUES ('before-backup')")
        .await
        .unwrap();
    assert_eq!(inserted, 1);

    // A standby copied from it, streaming through the slot.
    basebackup(
        &bins,
        &data_b,
        "127.0.0.1",
        port_a,
        REPL_USER,
        REPL_PASSWORD,
    )
    .await
    .unwrap();
    write_config(
        &data_b,
        &conf(
            port_b,
            "keeper-b",
            dir,
            Some(standby_of(port_a, "keeper-b")),
        ),
    );
    set_standby_signal(&data_b, true).unwrap();
    let b = pg.spawn(&data_b, dir.join("b.log"));
    let standby = connect(port_b).await;
    let st_b = eventually("the standby to stream", || async {
        let st = standby.status().await.ok()?;
        st.streaming.then_some(st)
    })
    .await;
    assert!(st_b.in_recovery);
    assert_eq!(st_b.system_identifier, st.system_identifier);
    assert_eq!(st_b.timeline, 1);
    assert!(st_b.current_lsn.is_none() && st_b.receive_lsn.is_some() && st_b.replay_lsn.is_some());
    assert_eq!(st_b.primary_host.as_deref(), Some("127.0.0.1"));
    assert_eq!(st_b.primary_port, Some(port_a));
    let reported = st_b.primary_conninfo.clone().unwrap();
    assert!(!reported.contains("p@ss"), "password leaked: {reported}");

    primary
        .execute("INSERT INTO t VALUES ('after-standby')")
        .await
        .unwrap();
    eventually("the new row on the standby", || async {
        let n = standby
            .query_one_string("SELECT count(*) FROM t WHERE v = 'after-standby'")
            .await
            .ok()?;
        (n.as_deref() == Some("1")).then_some(())
    })
    .await;
    let peers = primary.replication_stats().await.unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        (peers[0].application_name.as_str(), peers[0].state.as_str()),
        ("keeper-b", "streaming")
    );
    assert_eq!(peers[0].sync_state, "async");
    assert!(peers[0].sent_lsn.is_some());
    let in_use = primary.drop_slot(&slot_name("keeper-b")).await.unwrap_err();
    assert!(matches!(in_use, PgError::SlotActive { .. }), "{in_use}");
    assert_eq!(primary.query_one_string("SELECT NULL").await.unwrap(), None);

    // The primary crashes: its exit is noticed at once.
    let pid_a = pg.running[a].pid();
    kill(Pid::from_raw(pid_a as i32), Signal::SIGKILL).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(1), pg.running[a].exited())
        .await
        .expect("postmaster exit noticed within 1 s");
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit}");
    assert_eq!(pg.running[a].has_exited(), Some(exit));
    assert_eq!(pg.running[a].exited().await, exit, "exited() is repeatable");
    assert!(matches!(
        pg.running[a].reload(),
        Err(PgError::NotRunning { .. })
    ));
    pg.running[a].stop(Duration::from_secs(1)).await.unwrap();
    assert_eq!(running_postmaster_pid(&data_a), None);

    // Failover: promote the standby; it checkpoints so pg_rewind sees its timeline.
    let before = status(&standby).await;
    assert_eq!(before.checkpoint_timeline, 1);
    // A standby can make a slot ahead of its promotion, holding no WAL.
    standby
        .create_physical_slot(&slot_name("keeper-c"), false)
        .await
        .unwrap();
    assert_eq!(
        standby.replication_slots().await.unwrap(),
        vec![slot_name("keeper-c")]
    );
    assert_eq!(
        standby
            .query_one_string(
                "SELECT coalesce(restart_lsn::text, 'none') FROM pg_replication_slots"
            )
            .await
            .unwrap()
            .as_deref(),
        Some("none")
    );
    assert_eq!(standby.timeline_history(1).await.unwrap(), None);
    standby.promote().await.unwrap();
    let st_b = status(&standby).await;
    assert!(!st_b.in_recovery);
    assert_eq!(st_b.timeline, 2);
    standby.execute("CHECKPOINT").await.unwrap();
    assert_eq!(status(&standby).await.checkpoint_timeline, 2);
    // Its history says where timeline 1 ended: where it had replayed to.
    let history = standby.timeline_history(2).await.unwrap().unwrap();
    let replayed = before.replay_lsn.unwrap();
    assert_eq!(
        pgwarden_core::timeline::fork_point(&history, 1),
        Some(replayed),
        "{history}"
    );
    assert!(!pgwarden_core::timeline::diverged(1, replayed, &history));
    assert!(pgwarden_core::timeline::diverged(
        1,
        pgwarden_core::Lsn(replayed.0 + 1),
        &history
    ));
    standby
        .execute("INSERT INTO t VALUES ('after-failover')")
        .await
        .unwrap();
    standby
        .ensure_replication_role(REPL_USER, REPL_PASSWORD)
        .await
        .unwrap();
    standby
        .create_physical_slot(&slot_name("keeper-a"), true)
        .await
        .unwrap();

    // The old primary is rewound and follows the new one. Its orphaned
    // backends must be gone first: they hold its shared memory.
    let start = Instant::now();
    while group_alive(pid_a) {
        assert!(start.elapsed() < DEADLINE, "old primary's backends linger");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let source = format!("host=127.0.0.1 port={port_b} user={SUPERUSER} dbname=postgres");
    rewind(&bins, &data_a, &source, SU_PASSWORD).await.unwrap();
    assert_eq!(controldata(&bins, &data_a).await.unwrap().timeline, 2);
    write_config(
        &data_a,
        &conf(
            port_a,
            "keeper-a",
            dir,
            Some(standby_of(port_b, "keeper-a")),
        ),
    );
    set_standby_signal(&data_a, true).unwrap();
    let a2 = pg.spawn(&data_a, dir.join("a2.log"));
    let old_primary = connect(port_a).await;
    eventually("the rewound primary to stream and catch up", || async {
        let st = old_primary.status().await.ok()?;
        let n = old_primary
            .query_one_string("SELECT count(*) FROM t WHERE v = 'after-failover'")
            .await
            .ok()?;
        (st.streaming && st.timeline == 2 && n.as_deref() == Some("1")).then_some(())
    })
    .await;

    // Orderly stops.
    for i in [a2, b] {
        pg.running[i].stop(Duration::from_secs(30)).await.unwrap();
        assert_eq!(pg.running[i].has_exited().map(|e| e.code), Some(Some(0)));
    }
    for data in [&data_a, &data_b] {
        assert_eq!(
            inspect_data_dir(data).unwrap(),
            DataDirState::Postgres { major_version: 15 }
        );
        assert_eq!(running_postmaster_pid(data), None);
    }
    let cd_a = controldata(&bins, &data_a).await.unwrap();
    let cd_b = controldata(&bins, &data_b).await.unwrap();
    assert_eq!(cd_a.system_identifier, st.system_identifier);
    assert_eq!(cd_b.system_identifier, st.system_identifier);
    assert_eq!(cd_a.cluster_state, "shut down in recovery");
    assert_eq!(cd_b.cluster_state, "shut down");
    assert_eq!((cd_a.timeline, cd_b.timeline), (2, 2));
    assert!(cd_a.data_checksums && cd_b.data_checksums);
    assert!(cd_b.checkpoint_lsn > st_b.current_lsn.unwrap_or_default());
}

/// Set in the child process of `postmaster_dies_with_its_parent`.
const CHILD_DATA_DIR: &str = "PGWARDEN_TEST_POSTMASTER_DATA_DIR";

#[test]
fn postmaster_dies_with_its_parent() {
    if let Some(data_dir) = std::env::var_os(CHILD_DATA_DIR) {
        // Child: start postgres, say its pid, wait to be killed.
        let pm = Postmaster::spawn(&bins(), Path::new(&data_dir), None).unwrap();
        println!("POSTMASTER {}", pm.pid());
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = scratch();
    let data = tmp.path().join("data");
    let pwfile = tmp.path().join("su.pw");
    write_owned(&pwfile, SU_PASSWORD);
    rt.block_on(initdb(&bins(), &data, SUPERUSER, &pwfile))
        .unwrap();
    write_config(&data, &conf(free_port(), "keeper-x", tmp.path(), None));

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["postmaster_dies_with_its_parent", "--exact", "--nocapture"])
        .env(CHILD_DATA_DIR, &data)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let pid: u32 = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("POSTMASTER ").map(|p| p.parse().unwrap()))
        .expect("the child reports its postmaster");
    let postmaster = Pid::from_raw(pid as i32);
    assert!(kill(postmaster, None).is_ok());

    child.kill().unwrap();
    child.wait().unwrap();
    let start = Instant::now();
    while group_alive(pid) {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = nix::sys::signal::killpg(postmaster, Signal::SIGKILL);
            panic!("postmaster {pid} outlived its parent");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rfind(')').map(|i| stat[i + 1..].trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
        })
        .unwrap_or(false)
}

/// Fencing must stop a backend that is busy on the CPU: backends lead process
/// groups of their own, so killing the postmaster's group alone leaves it
/// running (and able to commit) until it next waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_kills_a_busy_backend() {
    let tmp = scratch();
    let dir = tmp.path();
    let mut pg = Instances::default();
    let port = free_port();
    let data = dir.join("data");
    let pwfile = dir.join("su.pw");
    write_owned(&pwfile, SU_PASSWORD);
    initdb(&bins(), &data, SUPERUSER, &pwfile).await.unwrap();
    write_config(&data, &conf(port, "keeper-f", dir, None));
    let i = pg.spawn(&data, dir.join("f.log"));
    let postmaster = pg.running[i].pid();
    let observer = connect(port).await;
    let busy = connect(port).await;
    let query = tokio::spawn(async move {
        busy.execute("SELECT count(*) FROM generate_series(1, 4000000000)")
            .await
    });
    let backend: u32 = eventually("the busy query to run", || async {
        observer
            .query_one_string(
                "SELECT pid::text FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%generate_series(1, 4%' \
                 AND pid <> pg_backend_pid()",
            )
            .await
            .ok()
            .flatten()
            .and_then(|p| p.parse().ok())
    })
    .await;
    // The premise: the backend is not in the postmaster's process group.
    let pgid = nix::unistd::getpgid(Some(Pid::from_raw(backend as i32))).unwrap();
    assert_ne!(
        pgid.as_raw(),
        postmaster as i32,
        "backend {backend} shares the group"
    );

    pg.running[i].kill();
    let start = Instant::now();
    while process_alive(backend) || process_alive(postmaster) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "backend {backend} or postmaster {postmaster} survived fencing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        query.await.unwrap().is_err(),
        "the busy query cannot finish"
    );
    // Nothing of the instance is left: no process works in its data directory.
    assert!(pgwarden_pg::fence::kill_instance(&data, 0).is_empty());
}

/// `ALTER SYSTEM` plus a reload must not keep a managed parameter changed
/// behind the keeper's back; the operator's other `ALTER SYSTEM` settings stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_system_of_a_managed_parameter_is_undone() {
    let tmp = scratch();
    let dir = tmp.path();
    let mut pg = Instances::default();
    let port = free_port();
    let data = dir.join("data");
    let pwfile = dir.join("su.pw");
    write_owned(&pwfile, SU_PASSWORD);
    initdb(&bins(), &data, SUPERUSER, &pwfile).await.unwrap();
    write_config(&data, &conf(port, "keeper-s", dir, None));
    pg.spawn(&data, dir.join("s.log"));
    let client = connect(port).await;
    assert!(
        reset_managed_auto_conf(&client).await.unwrap().is_empty(),
        "nothing to undo on a fresh instance"
    );
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
        "ALTER SYSTEM SET work_mem = '7MB'",
        "SELECT pg_reload_conf()",
    ] {
        client.query_one_string(sql).await.unwrap();
    }
    let show = |name: &'static str| {
        let client = &client;
        async move {
            client
                .query_one_string(&format!("SHOW {name}"))
                .await
                .unwrap()
                .unwrap()
        }
    };
    eventually("the ALTER SYSTEM to apply", || async {
        (show("synchronous_standby_names").await == "nobody").then_some(())
    })
    .await;

    assert_eq!(
        reset_managed_auto_conf(&client).await.unwrap(),
        vec!["synchronous_standby_names".to_string()]
    );
    eventually("the managed parameter to be back", || async {
        show("synchronous_standby_names")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(
        show("work_mem").await,
        "7MB",
        "the operator's own setting stays"
    );
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("synchronous_standby_names"), "{auto}");
    assert!(auto.contains("work_mem"), "{auto}");
    assert!(reset_managed_auto_conf(&client).await.unwrap().is_empty());
}
