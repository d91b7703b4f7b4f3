//! End-to-end harness: a real etcd, the real pgwarden binary as separate
//! processes, real postgres run as the unprivileged `postgres` OS user.
//!
//! The tests run as root (CI does); postgres refuses root, so every keeper is
//! started with the uid/gid of `postgres` and every directory it needs is
//! handed to that user.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgwarden_store::etcd_server::{EtcdCluster, EtcdServer, EtcdServerError};
use serde_json::Value;

pub const SU_PASSWORD: &str = "su-secret";
pub const REPL_PASSWORD: &str = "repl-secret";
pub const BIN: &str = env!("CARGO_BIN_EXE_pgwarden");

/// The binary under test: cargo's build, or the one `PGWARDEN_BIN` names
/// (e.g. the static binary out of the release tarball or the .deb), so the
/// same end-to-end tests check what ships.
pub fn bin_under_test() -> PathBuf {
    match std::env::var_os("PGWARDEN_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "PGWARDEN_BIN={} is not a file: point it at a pgwarden binary",
                path.display()
            );
            path
        }
        None => PathBuf::from(BIN),
    }
}

/// A free TCP port for a test server, below the kernel's ephemeral range
/// (32768+) so that no outgoing connection of any process is handed the same
/// port between our check and the server's bind; each test process walks its
/// own slice of the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 12_000 + (std::process::id() % 200) * 100;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 20_000;
        let port = u16::try_from(12_000 + (base - 12_000 + offset) % 20_000).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The binary, copied where the `postgres` user can execute it: a checkout
/// under /root is not traversable by other users.
pub fn bin() -> &'static Path {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgwarden-e2e-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("pgwarden");
        let source = bin_under_test();
        eprintln!("binary under test: {}", source.display());
        std::fs::copy(&source, &path).unwrap();
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

/// The store of a test cluster: one etcd member tuned for fast elections
/// (most tests), or three at etcd's default timing (tests and benchmarks
/// about the store: what users run).
pub enum TestEtcd {
    One(EtcdServer),
    Three(EtcdCluster),
}

impl TestEtcd {
    /// The client endpoints, comma-joined, as the roles take them.
    pub fn endpoint(&self) -> String {
        match self {
            TestEtcd::One(server) => server.endpoint(),
            TestEtcd::Three(cluster) => cluster.endpoints(),
        }
    }

    /// The pid of the (first) member.
    pub fn pid(&self) -> u32 {
        match self {
            TestEtcd::One(server) => server.pid(),
            TestEtcd::Three(cluster) => cluster.members()[0].pid(),
        }
    }

    /// Stops every member.
    pub fn stop(&mut self) {
        match self {
            TestEtcd::One(server) => server.stop(),
            TestEtcd::Three(cluster) => cluster.stop(),
        }
    }

    /// Starts every member again on its data.
    pub async fn restart(&mut self) -> Result<(), EtcdServerError> {
        match self {
            TestEtcd::One(server) => server.restart().await,
            TestEtcd::Three(cluster) => {
                for i in 0..cluster.members().len() {
                    cluster.member_mut(i).stop();
                }
                for i in 0..cluster.members().len() {
                    cluster.restart(i).await?;
                }
                Ok(())
            }
        }
    }

    /// The 3-member cluster, for tests that kill or cut members.
    ///
    /// # Panics
    /// On a single-member store.
    pub fn cluster_mut(&mut self) -> &mut EtcdCluster {
        match self {
            TestEtcd::Three(cluster) => cluster,
            TestEtcd::One(_) => panic!("this test cluster runs a single etcd member"),
        }
    }
}

/// A cluster under test; everything it started is stopped on drop.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub etcd: TestEtcd,
    pub name: String,
    pub run_as: (u32, u32),
    pub su_file: PathBuf,
    pub repl_file: PathBuf,
    pub keepers: BTreeMap<String, KeeperInfo>,
    children: BTreeMap<String, Child>,
    /// TLS and per-role etcd users, for [`TestCluster::secured`].
    pub secure: Option<secure::Secure>,
}

impl TestCluster {
    /// etcd running, cluster not initialised.
    pub async fn new() -> TestCluster {
        Self::with_etcd_members(1).await
    }

    /// Like [`TestCluster::new`] over a 3-member etcd at default timing when
    /// `members` is 3 (else one tuned member).
    pub async fn with_etcd_members(members: usize) -> TestCluster {
        Self::with_etcd(members, None).await
    }

    /// Like [`TestCluster::with_etcd_members`], a 3-member etcd with
    /// `--heartbeat-interval` and `--election-timeout` (ms) set to `timing`.
    pub async fn with_etcd(members: usize, timing: Option<(u32, u32)>) -> TestCluster {
        let run_as = postgres_user();
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-e2e-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let etcd_dir = dir.path().join("etcd");
        std::fs::create_dir(&etcd_dir).unwrap();
        // Retries on other ports when another process took one first.
        let etcd = if members == 3 {
            let hosts = vec!["127.0.0.1".to_string(); 3];
            TestEtcd::Three(
                EtcdCluster::start_with_timing(&etcd_dir, &hosts, timing)
                    .await
                    .unwrap(),
            )
        } else {
            TestEtcd::One(EtcdServer::start_on_free_ports(&etcd_dir).await.unwrap())
        };
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
            secure: None,
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

    /// [`TestCluster::command`] for one process (`ctl`, `sentinel`, a keeper
    /// uid, a proxy id): on a secured cluster, with its own etcd identity.
    pub fn role_command(&self, name: &str) -> Command {
        let mut cmd = self.command();
        if let Some(secure) = &self.secure {
            cmd.envs(secure.env[name].iter().map(|(k, v)| (k, v)));
        }
        cmd
    }

    /// Runs `pgwarden ctl ARGS` to completion.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.role_command("ctl")
            .arg("ctl")
            .args(args)
            .output()
            .unwrap()
    }

    /// `ctl` that must succeed; its standard output.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "ctl {args:?} failed: {}",
            stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctl status --output json`, parsed.
    /// A store read can time out when the shared machine is overloaded
    /// (etcd's fsyncs stall): a few attempts before failing the test.
    pub fn status(&self) -> Value {
        let mut attempts = 0;
        loop {
            let out = self.ctl(&["status", "--output", "json"]);
            if out.status.success() {
                return serde_json::from_slice(&out.stdout).unwrap();
            }
            attempts += 1;
            assert!(attempts < 5, "ctl status failed: {}", stderr(&out));
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn spawn_sentinel(&mut self, id: &str) {
        let log = self.path().join(format!("{id}.log"));
        let mut cmd = self.role_command("sentinel");
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
        let mut cmd = self.role_command(uid);
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

    /// The postmaster pid from a node's postmaster.pid.
    pub fn postmaster_pid(&self, uid: &str) -> i32 {
        let text =
            std::fs::read_to_string(self.keepers[uid].data_dir.join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }

    /// The host dies: its postgres (every process, backends included: they
    /// do not share the postmaster's process group) and its keeper at once.
    pub fn kill_host(&mut self, uid: &str) {
        let pm = u32::try_from(self.postmaster_pid(uid)).unwrap();
        pgwarden_pg::fence::kill_instance(&self.keepers[uid].data_dir, pm);
        self.stop(uid, Signal::SIGKILL);
    }

    /// Initialised cluster, one sentinel, keepers k1..k3 converged; returns
    /// it with the primary and the standbys.
    pub async fn three_nodes() -> (TestCluster, String, Vec<String>) {
        TestCluster::three_nodes_with(&["sentinel1"]).await
    }

    /// Like [`TestCluster::three_nodes`], with these sentinels.
    pub async fn three_nodes_with(sentinels: &[&str]) -> (TestCluster, String, Vec<String>) {
        let mut c = TestCluster::initialised().await;
        for s in sentinels {
            c.spawn_sentinel(s);
        }
        c.spawn_keepers(&["k1", "k2", "k3"]);
        let s = c.wait_converged(2, Duration::from_secs(90)).await;
        let primary = s["primary"].as_str().unwrap().to_string();
        let standbys = ["k1", "k2", "k3"]
            .iter()
            .filter(|u| **u != primary)
            .map(|u| u.to_string())
            .collect();
        (c, primary, standbys)
    }

    /// The command line of `pgwarden proxy` listening on 127.0.0.1.
    pub fn proxy_command(&self, id: &str, port: u16, read_only_port: u16) -> Command {
        let mut cmd = self.role_command(id);
        cmd.args(["proxy", "--id", id, "--listen-address", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--read-only-port", &read_only_port.to_string()]);
        cmd
    }

    /// Starts a proxy (as the test's user: it runs no postgres), logging to
    /// `<id>.log`; stop it with [`TestCluster::stop`].
    pub fn spawn_proxy(&mut self, id: &str, port: u16, read_only_port: u16) {
        self.spawn_proxy_with(id, port, read_only_port, &[]);
    }

    /// [`TestCluster::spawn_proxy`] with more flags.
    pub fn spawn_proxy_with(&mut self, id: &str, port: u16, read_only_port: u16, extra: &[&str]) {
        let mut cmd = self.proxy_command(id, port, read_only_port);
        cmd.args(extra);
        let child = spawn_logged(cmd, &self.path().join(format!("{id}.log")), None);
        self.children.insert(id.to_string(), child);
    }

    /// Sends `signal` to a child without waiting (SIGSTOP, SIGCONT).
    pub fn signal(&self, name: &str, signal: Signal) {
        kill(Pid::from_raw(self.children[name].id() as i32), signal).unwrap();
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
/// Bounded to 10 s: a test's polling loop must never hang on one attempt
/// (a frozen or fenced backend can accept a connection and never answer).
pub async fn query_strings(
    port: u16,
    sql: &str,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let attempt = async {
        let c = connect(port).await?;
        let rows = c.query(sql, &[]).await?;
        Ok::<_, tokio_postgres::Error>(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    };
    Ok(tokio::time::timeout(Duration::from_secs(10), attempt).await??)
}

/// Helpers for the keeper's HTTP API and for extra keeper flags.
impl TestCluster {
    /// Writes a secret file (mode 600) that keepers, running as the postgres
    /// user, can read.
    pub fn secret_file(&self, name: &str, value: &str) -> PathBuf {
        secret(self.path(), name, value, self.run_as)
    }

    /// Starts a registered keeper with extra flags (appending to its log).
    pub fn start_keeper_with(&mut self, uid: &str, extra: &[&str]) {
        let mut cmd = self.keeper_command(uid);
        cmd.args(extra);
        let log = self.keepers[uid].log.clone();
        let child = spawn_logged(cmd, &log, Some(self.run_as));
        self.children.insert(uid.to_string(), child);
    }
}

/// One HTTP/1.1 answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// The header lines, as received.
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Sends one request to 127.0.0.1:`port` over a fresh connection and reads
/// the whole answer (the server closes: `Connection: close`). Errors when
/// nothing listens or no answer comes within 5 s.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no HTTP answer"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad answer: {text}"),
            )
        })?;
    let mut response = HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body = dechunk(body);
    }
    Ok(response)
}

/// Decodes a chunked body (sizes in hex, each chunk followed by CRLF).
fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = raw.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        let (Some(chunk), Some(next)) = (rest.get(..size), rest.get(size..)) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(chunk);
        raw = next.trim_start_matches("\r\n");
    }
    out
}

/// Polls the async `f` every 100 ms until it returns Some, or panics after `timeout`.
pub async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A strict reading of the Prometheus text format: every family has HELP and
/// TYPE before its samples, every sample is `name{labels} value` with valid
/// names, quoted label values and a finite number. Returns series → value.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let valid_name = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let (mut typed, mut helped) = (BTreeSet::new(), BTreeSet::new());
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            assert!(helped.insert(name.to_string()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(typed.insert(name.to_string()), "TYPE twice: {line}");
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line: {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, Some(rest.strip_suffix('}').expect(line))),
            None => (series, None),
        };
        assert!(valid_name(name), "{line}");
        assert!(
            typed.contains(name) && helped.contains(name),
            "no TYPE/HELP before: {line}"
        );
        if let Some(labels) = labels {
            for pair in split_labels(labels) {
                let (k, v) = pair.split_once('=').expect(line);
                assert!(valid_name(k) && !k.contains(':'), "{line}");
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "{line}"
                );
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        assert!(v.is_finite(), "{line}");
        assert!(
            samples.insert(series.to_string(), v).is_none(),
            "duplicate: {line}"
        );
    }
    samples
}

/// Splits `a="x",b="y,z"` on the commas between pairs.
fn split_labels(labels: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for ch in labels.chars() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    assert!(!quoted, "unterminated label value: {labels}");
    out.push(cur);
    out
}

pub mod netns;
pub mod secure;
