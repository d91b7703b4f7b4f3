//! End-to-end harness: a real etcd, the real pgwarden binary as separate
//! processes, real postgres run as the unprivileged `postgres` OS user.
//!
//! The tests run as root (CI does); postgres refuses root, so every keeper is
//! started with the uid/gid of `postgres` and every directory it needs is
//! handed to that user.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgwarden_store::etcd_server::{free_port, EtcdServer};
use serde_json::Value;

pub const SU_PASSWORD: &str = "su-secret";
pub const REPL_PASSWORD: &str = "repl-secret";
pub const BIN: &str = env!("CARGO_BIN_EXE_pgwarden");

/// The binary, copied where the `postgres` user can execute it: a checkout
/// under /root is not traversable by other users.
pub fn bin() -> &'static Path {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgwarden-e2e-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("pgwarden");
        std::fs::copy(BIN, &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    })
}

/// The unprivileged OS user postgres runs as.
pub fn postgres_user() -> (u32, u32) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests run as root (they start postgres as the `postgres` user)"
    );
    let u = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("OS user `postgres` missing: run .ci/setup");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// One keeper's fixed settings.
#[derive(Debug, Clone)]
pub struct KeeperInfo {
    pub uid: String,
    pub pg_port: u16,
    pub api_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// A cluster under test; everything it started is stopped on drop.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub etcd: EtcdServer,
    pub name: String,
    pub run_as: (u32, u32),
    pub su_file: PathBuf,
    pub repl_file: PathBuf,
    pub keepers: BTreeMap<String, KeeperInfo>,
    children: BTreeMap<String, Child>,
}

impl TestCluster {
    /// etcd running, cluster not initialised.
    pub async fn new() -> TestCluster {
        let run_as = postgres_user();
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-e2e-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let etcd_dir = dir.path().join("etcd");
        std::fs::create_dir(&etcd_dir).unwrap();
        let etcd = EtcdServer::start(&etcd_dir, free_port(), free_port())
            .await
            .unwrap();
        let su_file = secret(dir.path(), "su-password", SU_PASSWORD, run_as);
        let repl_file = secret(dir.path(), "repl-password", REPL_PASSWORD, run_as);
        TestCluster {
            dir,
            etcd,
            name: "e2e".into(),
            run_as,
            su_file,
            repl_file,
            keepers: BTreeMap::new(),
            children: BTreeMap::new(),
        }
    }

    /// etcd running and `ctl init` done.
    pub async fn initialised() -> TestCluster {
        let c = TestCluster::new().await;
        let out = c.ctl(&["init"]);
        assert!(out.status.success(), "ctl init failed: {}", stderr(&out));
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `pgwarden` command with the cluster's store flags in its environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.env("PGWARDEN_CLUSTER_NAME", &self.name)
            .env("PGWARDEN_STORE_ENDPOINTS", self.etcd.endpoint())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `pgwarden ctl ARGS` to completion.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.command().arg("ctl").args(args).output().unwrap()
    }

    /// `ctl status --output json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.ctl(&["status", "--output", "json"]);
        assert!(out.status.success(), "ctl status failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn spawn_sentinel(&mut self, id: &str) {
        let log = self.path().join(format!("{id}.log"));
        let mut cmd = self.command();
        cmd.args(["sentinel", "--id", id]);
        let child = spawn_logged(cmd, &log, Some(self.run_as));
        self.children.insert(id.to_string(), child);
    }

    /// Registers a keeper (ports, data dir) without starting it.
    pub fn add_keeper(&mut self, uid: &str) -> KeeperInfo {
        let home = self.path().join(uid);
        std::fs::create_dir_all(&home).unwrap();
        chown(&home, Some(self.run_as.0), Some(self.run_as.1)).unwrap();
        let info = KeeperInfo {
            uid: uid.to_string(),
            pg_port: free_port(),
            api_port: free_port(),
            data_dir: home.join("data"),
            log: self.path().join(format!("{uid}.log")),
        };
        self.keepers.insert(uid.to_string(), info.clone());
        info
    }

    /// The keeper command line for a registered keeper.
    pub fn keeper_command(&self, uid: &str) -> Command {
        let k = &self.keepers[uid];
        let mut cmd = self.command();
        cmd.arg("keeper")
            .args(["--uid", uid, "--pg-listen-address", "127.0.0.1"])
            .args([
                "--pg-port",
                &k.pg_port.to_string(),
                "--api-listen",
                &format!("127.0.0.1:{}", k.api_port),
            ])
            .arg("--data-dir")
            .arg(&k.data_dir)
            .arg("--pg-su-password-file")
            .arg(&self.su_file)
            .args(["--pg-repl-username", "replicator"])
            .arg("--pg-repl-password-file")
            .arg(&self.repl_file);
        cmd
    }

    /// Starts a registered keeper (appending to its log).
    pub fn start_keeper(&mut self, uid: &str) {
        let cmd = self.keeper_command(uid);
        let log = self.keepers[uid].log.clone();
        let child = spawn_logged(cmd, &log, Some(self.run_as));
        self.children.insert(uid.to_string(), child);
    }

    /// Registers and starts keepers.
    pub fn spawn_keepers(&mut self, uids: &[&str]) {
        for uid in uids {
            self.add_keeper(uid);
            self.start_keeper(uid);
        }
    }

    pub fn pid(&self, name: &str) -> u32 {
        self.children[name].id()
    }

    /// Sends `signal` to a child and waits for it to exit.
    pub fn stop(&mut self, name: &str, signal: Signal) -> std::process::ExitStatus {
        let mut child = self.children.remove(name).unwrap();
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        child.wait().unwrap()
    }

    /// Whether a child is still running.
    pub fn running(&mut self, name: &str) -> bool {
        self.children
            .get_mut(name)
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The member entry of `uid` in `ctl status --output json`.
    pub fn member(status: &Value, uid: &str) -> Option<Value> {
        status["members"]
            .as_array()?
            .iter()
            .find(|m| m["uid"] == uid)
            .cloned()
    }

    /// Waits until one primary and `standbys` healthy streaming standbys show in ctl status.
    pub async fn wait_converged(&self, standbys: usize, timeout: Duration) -> Value {
        wait_for(
            &format!("a primary and {standbys} standbys"),
            timeout,
            || {
                let s = self.status();
                let members = s["members"].as_array()?.clone();
                let primary = s["primary"].as_str()?.to_string();
                let p = members.iter().find(|m| m["uid"] == primary.as_str())?;
                (p["state"] == "primary" && p["healthy"] == true).then_some(())?;
                let ok = members
                    .iter()
                    .filter(|m| {
                        m["role"] == "standby" && m["state"] == "standby" && m["healthy"] == true
                    })
                    .count();
                (ok == standbys).then_some(s)
            },
        )
        .await
    }

    pub fn port_of(&self, uid: &str) -> u16 {
        self.keepers[uid].pg_port
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.children.values() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for child in self.children.values_mut() {
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if std::thread::panicking() {
            eprintln!("test failed: logs kept in {}", self.dir.path().display());
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            let _ = dir.keep();
        }
    }
}

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn secret(dir: &Path, name: &str, value: &str, run_as: (u32, u32)) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown(&p, Some(run_as.0), Some(run_as.1)).unwrap();
    p
}

pub fn spawn_logged(mut cmd: Command, log: &Path, run_as: Option<(u32, u32)>) -> Child {
    let file = File::options().create(true).append(true).open(log).unwrap();
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd.spawn().unwrap()
}

/// A superuser connection to one node.
pub async fn connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(SU_PASSWORD)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(3))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Runs a query returning one text column, all rows.
pub async fn query_strings(port: u16, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let c = connect(port).await?;
    let rows = c.query(sql, &[]).await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}
