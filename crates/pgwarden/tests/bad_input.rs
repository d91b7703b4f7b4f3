//! End-to-end: every bad input gets a clear one-line error, a non-zero exit,
//! and loses nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Runs a keeper to completion (it is expected to refuse), as the postgres user.
fn run_keeper(c: &TestCluster, cmd: Command) -> std::process::Output {
    let mut cmd = cmd;
    cmd.uid(c.run_as.0).gid(c.run_as.1);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A keeper that does not refuse would run forever: bound it.
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    });
    let out = child.wait_with_output().unwrap();
    drop(watchdog);
    out
}

fn last_line(out: &std::process::Output) -> String {
    stderr(out).lines().last().unwrap_or_default().to_string()
}

#[tokio::test]
async fn ctl_reports_unreachable_etcd() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(bin())
        .args([
            "ctl",
            "status",
            "--cluster-name",
            "x",
            "--store-endpoints",
            &dead,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = last_line(&out);
    assert!(
        e.starts_with("error: ")
            && e.contains(&format!(
                "cannot reach etcd at {dead}: connection refused; check that etcd runs there"
            )),
        "the endpoint, the cause and what to check: {e}"
    );
    assert!(
        !e.contains("tonic") && !e.contains("grpc"),
        "no library chain: {e}"
    );
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one line: {}",
        stderr(&out)
    );
}

/// The line a role logs about `endpoint` being down, if it logged one.
fn unreachable_line(log: &str, endpoint: &str) -> Option<String> {
    let wanted = format!("cannot reach etcd at {endpoint}: connection refused; check");
    log.lines().find(|l| l.contains(&wanted)).map(str::to_owned)
}

#[tokio::test]
async fn keeper_and_sentinel_keep_retrying_while_etcd_is_down() {
    let mut c = TestCluster::initialised().await;
    let dead = c.etcd.endpoint();
    c.etcd.stop();
    c.spawn_sentinel("sentinel1");
    c.spawn_keepers(&["k1"]);
    c.spawn_proxy("proxy1", free_port(), free_port());
    let roles = ["k1", "sentinel1", "proxy1"];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(c.log("k1").contains("cannot read the cluster from etcd")
        && c.log("sentinel1").contains("retrying")
        && roles
            .iter()
            .all(|r| unreachable_line(&c.log(r), &dead).is_some()))
    {
        assert!(
            Instant::now() < deadline,
            "no warning naming {dead} and the cause: keeper: {} sentinel: {} proxy: {}",
            c.log("k1"),
            c.log("sentinel1"),
            c.log("proxy1")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for role in roles {
        let log = c.log(role);
        let line = unreachable_line(&log, &dead).unwrap();
        assert!(
            !line.contains("tonic") && !line.contains("grpc"),
            "{role}: one human line, the chain only at debug: {line}"
        );
        assert!(
            !log.contains("tonic::transport"),
            "{role}: the library chain leaked at info: {log}"
        );
    }
    assert!(
        c.running("k1") && c.running("sentinel1") && c.running("proxy1"),
        "they must keep running"
    );
    // When etcd comes back, the cluster comes up.
    c.etcd.restart().await.unwrap();
    c.wait_converged(0, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn ctl_refuses_unknown_cluster_and_malformed_spec() {
    let c = TestCluster::new().await;
    let out = c.ctl(&["status"]);
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("is not initialised"),
        "{}",
        stderr(&out)
    );

    let bad = c.path().join("bad.toml");
    std::fs::write(&bad, "max_lag_bytes = 'lots'\n").unwrap();
    let out = c.ctl(&["init", "--spec", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("max_lag_bytes"),
        "{}",
        stderr(&out)
    );
    // Nothing was written.
    assert!(!c.ctl(&["status"]).status.success());

    let good = c.path().join("good.toml");
    std::fs::write(
        &good,
        "max_lag_bytes = 4096\n[pg_parameters]\nwork_mem = '8MB'\n",
    )
    .unwrap();
    assert!(c
        .ctl(&["init", "--spec", good.to_str().unwrap()])
        .status
        .success());
    let shown = String::from_utf8(c.ctl(&["spec", "show"]).stdout).unwrap();
    assert!(
        shown.contains("max_lag_bytes = 4096") && shown.contains("work_mem = \"8MB\""),
        "{shown}"
    );
    // Re-initialising needs --force, and --yes without a terminal.
    let out = c.ctl(&["init"]);
    assert!(
        !out.status.success() && last_line(&out).contains("already exists"),
        "{}",
        stderr(&out)
    );
    let out = c.ctl(&["init", "--force"]);
    assert!(
        !out.status.success() && last_line(&out).contains("pass --yes"),
        "{}",
        stderr(&out)
    );
    let out = c.ctl(&["init", "--force", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8(c.ctl(&["spec", "show"]).stdout).unwrap();
    assert!(
        shown.contains("max_lag_bytes = 16777216"),
        "the spec was not replaced: {shown}"
    );
    assert_eq!(
        c.status()["generation"],
        1,
        "the reset status must have a higher generation"
    );
    let out = c.ctl(&["spec", "set", "pg_parameters.port=1"]);
    assert!(
        !out.status.success() && last_line(&out).contains("managed by pgwarden"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn keeper_refuses_bad_directories_ports_and_password_files() {
    let mut c = TestCluster::initialised().await;
    let k = c.add_keeper("k1");

    // A non-empty directory that is not a data directory.
    std::fs::create_dir(&k.data_dir).unwrap();
    chown(&k.data_dir, Some(c.run_as.0), Some(c.run_as.1)).unwrap();
    std::fs::write(k.data_dir.join("precious.txt"), "keep me").unwrap();
    let out = run_keeper(&c, c.keeper_command("k1"));
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("is not a postgres data directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(k.data_dir.join("precious.txt")).unwrap(),
        "keep me"
    );
    std::fs::remove_dir_all(&k.data_dir).unwrap();

    // The postgres port already taken.
    let _holder = std::net::TcpListener::bind(("127.0.0.1", k.pg_port)).unwrap();
    let out = run_keeper(&c, c.keeper_command("k1"));
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("already in use"),
        "{}",
        stderr(&out)
    );
    drop(_holder);

    // A password file others can read, and a missing one.
    std::fs::set_permissions(&c.su_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_keeper(&c, c.keeper_command("k1"));
    assert!(!out.status.success());
    assert!(last_line(&out).contains("chmod 600"), "{}", stderr(&out));
    std::fs::set_permissions(&c.su_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let moved = c.path().join("moved-away");
    std::fs::rename(&c.repl_file, &moved).unwrap();
    let out = run_keeper(&c, c.keeper_command("k1"));
    std::fs::rename(&moved, &c.repl_file).unwrap();
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("cannot be read"),
        "{}",
        stderr(&out)
    );

    // Root.
    let out = c.keeper_command("k1").output().unwrap();
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("must not run as root"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeper_refuses_the_data_directory_of_another_cluster() {
    let mut c = TestCluster::initialised().await;
    c.spawn_sentinel("sentinel1");
    c.spawn_keepers(&["k1"]);
    let status = c.wait_converged(0, Duration::from_secs(60)).await;
    assert_eq!(status["primary"], "k1");

    // Another cluster's data directory, made by initdb directly.
    let k = c.add_keeper("stranger");
    let pwfile = c.su_file.clone();
    let init = Command::new("/usr/lib/postgresql/15/bin/initdb")
        .arg("-D")
        .arg(&k.data_dir)
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["-U", "postgres", "--auth=scram-sha-256"])
        .uid(c.run_as.0)
        .gid(c.run_as.1)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let before = std::fs::read(k.data_dir.join("global/pg_control")).unwrap();
    let out = run_keeper(&c, c.keeper_command("stranger"));
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("belongs to another cluster"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(k.data_dir.join("global/pg_control")).unwrap(),
        before,
        "pg_control changed"
    );
    assert!(!k.data_dir.join("standby.signal").exists());
    assert_eq!(c.status()["primary"], "k1");
}
