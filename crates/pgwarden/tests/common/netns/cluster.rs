//! A pgwarden cluster spread over network namespaces: etcd (one member, or
//! three at etcd's default timing for the scenarios about the store), two
//! sentinels, three keepers (each with its postgres) and a proxy, each on its
//! own host.
//!
//! Every process is started with `ip netns exec`; keepers and sentinels then
//! switch to the `postgres` OS user (postgres refuses root). Each host has
//! its own address, so etcd, the keepers' APIs and the proxy use fixed ports (2379,
//! 8008, 5432/5433); only postgres needs a free port (see `pg_ports`). The test's async code runs in the client host's namespace
//! (see [`super::Net::block_on`]), next to the proxy, so store reads and
//! client connections need nothing special. Everything started is killed,
//! and the namespaces deleted, on drop; logs are kept when a test panics or
//! when [`NsCluster::keep_logs`] was called.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgwarden_store::{Store, StoreOptions};
use serde_json::Value;

use super::Net;
use crate::common::{bin, postgres_user, REPL_PASSWORD, SU_PASSWORD};

/// The keepers' host names (and uids).
pub const KEEPERS: [&str; 3] = ["k1", "k2", "k3"];
/// The sentinels' host names (and ids).
pub const SENTINELS: [&str; 2] = ["s1", "s2"];
/// The host running etcd (its first member when it has three).
pub const ETCD: &str = "etcd";
/// The hosts of a 3-member etcd, in member order.
pub const ETCD_MEMBERS: [&str; 3] = [ETCD, "etcd2", "etcd3"];
/// The host running the proxy and the test's own client.
pub const CLIENT: &str = "client";
/// The proxy's id (and its process name here).
pub const PROXY: &str = "proxy";
/// Every host of the network.
pub const HOSTS: [&str; 9] = [ETCD, "etcd2", "etcd3", "s1", "s2", "k1", "k2", "k3", CLIENT];
/// The proxy's port on the client host.
pub const PROXY_PORT: u16 = 5432;
/// The proxy's read-only port.
pub const PROXY_RO_PORT: u16 = 5433;
const ETCD_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
const API_PORT: u16 = 8008;
const CONVERGE: Duration = Duration::from_secs(120);

/// A cluster under test; see the module docs.
pub struct NsCluster {
    pub net: Arc<Net>,
    pub dir: tempfile::TempDir,
    pub name: String,
    su_file: PathBuf,
    repl_file: PathBuf,
    /// Each keeper's postgres port. Addresses differ per host, but postgres
    /// also creates a Unix socket lock file named after its port in /tmp,
    /// which all namespaces share: so ports differ too (picked free, as
    /// other tests on this machine do).
    pub pg_ports: BTreeMap<String, u16>,
    children: BTreeMap<String, Child>,
    /// Processes stopped by [`NsCluster::freeze_host`], in stopping order.
    frozen: Vec<i32>,
    keep: bool,
    /// Whether the spec asks for synchronous replication.
    pub sync: bool,
    /// The etcd members' hosts: `[ETCD]`, or [`ETCD_MEMBERS`].
    pub etcd_hosts: Vec<&'static str>,
}

impl std::fmt::Debug for NsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsCluster")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl NsCluster {
    /// Starts etcd (`etcd_members`: 1, tuned for fast elections, or 3 at
    /// etcd's default timing), runs `ctl init` with `spec` (TOML), starts
    /// both sentinels, the three keepers and the proxy, and waits until a
    /// primary and two streaming standbys show and the proxy routes.
    pub async fn start(net: Arc<Net>, spec: &str, etcd_members: usize) -> NsCluster {
        let (uid, gid) = postgres_user();
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-faults-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = |name: &str, value: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("{value}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            chown(&p, Some(uid), Some(gid)).unwrap();
            p
        };
        let (su_file, repl_file) = (
            secret("su-password", SU_PASSWORD),
            secret("repl-password", REPL_PASSWORD),
        );
        for k in KEEPERS {
            let home = dir.path().join(k);
            std::fs::create_dir_all(&home).unwrap();
            chown(&home, Some(uid), Some(gid)).unwrap();
        }
        let mut c = NsCluster {
            net,
            dir,
            name: "faults".into(),
            su_file,
            repl_file,
            pg_ports: KEEPERS
                .iter()
                .map(|k| (k.to_string(), pgwarden_store::etcd_server::free_port()))
                .collect(),
            children: BTreeMap::new(),
            frozen: Vec::new(),
            keep: false,
            sync: spec.contains("sync_mode = 'strict'") || spec.contains("sync_mode = 'on'"),
            etcd_hosts: if etcd_members == 3 {
                ETCD_MEMBERS.to_vec()
            } else {
                vec![ETCD]
            },
        };
        c.start_etcd().await;
        let spec_file = c.path().join("spec.toml");
        std::fs::write(&spec_file, spec).unwrap();
        let out = c
            .ctl(&["init", "--spec", spec_file.to_str().unwrap()])
            .await;
        assert!(out.status.success(), "ctl init: {}", stderr(&out));
        for s in SENTINELS {
            c.start_sentinel(s);
        }
        for k in KEEPERS {
            c.start_keeper(k);
        }
        c.wait_converged(2, CONVERGE).await;
        c.start_proxy();
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the directory (logs, data) after the test, and says where.
    pub fn keep_logs(&mut self) -> PathBuf {
        self.keep = true;
        self.path().to_path_buf()
    }

    /// Every etcd member's client URL, comma-joined, as the roles take them.
    pub fn etcd_endpoint(&self) -> String {
        self.etcd_hosts
            .iter()
            .map(|h| self.etcd_member_endpoint(h))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of the etcd member on `host`.
    pub fn etcd_member_endpoint(&self, host: &str) -> String {
        format!("http://{}:{ETCD_PORT}", self.net.ip(host))
    }

    /// The host of the etcd member that is raft leader now, if any.
    pub async fn etcd_leader(&self) -> Option<&'static str> {
        let urls = self.store().etcd_leader(Duration::from_millis(500)).await;
        self.etcd_hosts
            .iter()
            .copied()
            .find(|h| urls.contains(&self.etcd_member_endpoint(h)))
    }

    /// A client of the cluster's store (the caller runs in the client host).
    pub fn store(&self) -> Store {
        let endpoints: Vec<String> = self.etcd_endpoint().split(',').map(String::from).collect();
        Store::new(
            &endpoints,
            &self.name,
            StoreOptions {
                request_timeout: Duration::from_millis(500),
                connect_timeout: Duration::from_millis(500),
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    /// `pgwarden ARGS...` in `host`, as root or as `postgres`, with the
    /// cluster's store flags in its environment.
    fn pgwarden(&self, host: &str, as_postgres: bool) -> Command {
        let program = bin().to_str().unwrap().to_string();
        let mut cmd = if as_postgres {
            self.net.command_as(host, "postgres", &program)
        } else {
            self.net.command(host, &program)
        };
        cmd.env("PGWARDEN_CLUSTER_NAME", &self.name)
            .env("PGWARDEN_STORE_ENDPOINTS", self.etcd_endpoint())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `pgwarden ctl ARGS` in the client host to completion (30 s at most).
    pub async fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = tokio::process::Command::from(self.pgwarden(CLIENT, false));
        cmd.arg("ctl").args(args).kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("ctl hung for 30 s")
            .unwrap()
    }

    /// `ctl status --output json`, or None when it fails (etcd away).
    pub async fn status(&self) -> Option<Value> {
        let out = self.ctl(&["status", "--output", "json"]).await;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log = self.path().join(format!("{name}.log"));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd.spawn().unwrap();
        self.children.insert(name.to_string(), child);
    }

    /// Starts every etcd member that is not running (again, on its data),
    /// and waits until the store answers.
    pub async fn start_etcd(&mut self) {
        for host in self.etcd_hosts.clone() {
            if !self.running(host) {
                self.kill(host);
                self.spawn_etcd_member(host);
            }
        }
        self.wait_etcd().await;
    }

    /// Starts the etcd member on `host` (again, on its data) and waits until
    /// the store answers.
    pub async fn start_etcd_member(&mut self, host: &str) {
        self.spawn_etcd_member(host);
        self.wait_etcd().await;
    }

    fn spawn_etcd_member(&mut self, host: &str) {
        let client = self.etcd_member_endpoint(host);
        let data = self.path().join(format!("{host}-data"));
        let mut cmd = self.net.command(host, "etcd");
        cmd.arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"));
        if self.etcd_hosts.len() == 1 {
            cmd.arg("--name=pgwarden")
                .arg("--listen-peer-urls=http://127.0.0.1:2380")
                .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
                .arg("--initial-cluster=pgwarden=http://127.0.0.1:2380")
                .arg("--heartbeat-interval=50")
                .arg("--election-timeout=500");
        } else {
            // etcd's default timing: what users run.
            let peer = |h: &str| format!("http://{}:{ETCD_PEER_PORT}", self.net.ip(h));
            let cluster = self
                .etcd_hosts
                .iter()
                .map(|h| format!("{h}={}", peer(h)))
                .collect::<Vec<_>>()
                .join(",");
            cmd.arg(format!("--name={host}"))
                .arg(format!("--listen-peer-urls={}", peer(host)))
                .arg(format!("--initial-advertise-peer-urls={}", peer(host)))
                .arg(format!("--initial-cluster={cluster}"));
        }
        cmd.arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null());
        self.spawn(host, cmd);
    }

    async fn wait_etcd(&mut self) {
        let store = self.store();
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.get("ready-check").await.is_err() {
            for host in self.etcd_hosts.clone() {
                assert!(
                    self.running(host),
                    "etcd on {host} exited; see {}",
                    self.path().display()
                );
            }
            assert!(Instant::now() < deadline, "etcd did not answer in 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn start_sentinel(&mut self, id: &str) {
        let mut cmd = self.pgwarden(id, true);
        cmd.args(["sentinel", "--id", id]);
        self.spawn(id, cmd);
    }

    pub fn start_keeper(&mut self, uid: &str) {
        let ip = self.net.ip(uid).to_string();
        let mut cmd = self.pgwarden(uid, true);
        cmd.args(["keeper", "--uid", uid, "--pg-listen-address", &ip])
            .args(["--pg-port", &self.pg_ports[uid].to_string()])
            .args(["--api-listen", &format!("{ip}:{API_PORT}")])
            .arg("--data-dir")
            .arg(self.path().join(uid).join("data"))
            .arg("--pg-su-password-file")
            .arg(&self.su_file)
            .args(["--pg-repl-username", "replicator"])
            .arg("--pg-repl-password-file")
            .arg(&self.repl_file);
        self.spawn(uid, cmd);
    }

    pub fn start_proxy(&mut self) {
        let ip = self.net.ip(CLIENT).to_string();
        let mut cmd = self.pgwarden(CLIENT, false);
        cmd.args(["proxy", "--id", PROXY, "--listen-address", &ip])
            .args(["--port", &PROXY_PORT.to_string()])
            .args(["--read-only-port", &PROXY_RO_PORT.to_string()]);
        self.spawn(PROXY, cmd);
    }

    /// Where clients reach the primary: the proxy.
    pub fn proxy_addr(&self) -> (std::net::Ipv4Addr, u16) {
        (self.net.ip(CLIENT), PROXY_PORT)
    }

    pub fn pid(&self, name: &str) -> Option<i32> {
        self.children.get(name).map(|c| c.id() as i32)
    }

    /// Whether the process `name` is running (stopped counts as running).
    pub fn running(&mut self, name: &str) -> bool {
        self.children
            .get_mut(name)
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends `signal` to the process `name` (if it runs).
    pub fn signal(&self, name: &str, signal: Signal) {
        if let Some(pid) = self.pid(name) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILLs the process `name` and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.children.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The postmaster of `uid`, from its postmaster.pid, if that process exists.
    pub fn postmaster_pid(&self, uid: &str) -> Option<i32> {
        let text =
            std::fs::read_to_string(self.path().join(uid).join("data/postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        kill(Pid::from_raw(pid), None).ok().map(|_| pid)
    }

    /// Every process of `uid`'s postgres: the postmaster and its children.
    /// Not its process group: each postgres backend calls setsid(), so a
    /// signal to the postmaster's group reaches the postmaster alone.
    pub fn postgres_pids(&self, uid: &str) -> Vec<i32> {
        let Some(pm) = self.postmaster_pid(uid) else {
            return Vec::new();
        };
        let mut pids = vec![pm];
        pids.extend(children_of(pm));
        pids
    }

    /// Sends `signal` to every process of `uid`'s postgres; the postmaster
    /// first (and last), so that it forks nothing new meanwhile.
    pub fn signal_postgres(&self, uid: &str, signal: Signal) {
        let Some(pm) = self.postmaster_pid(uid) else {
            return;
        };
        // A killed postmaster's children are re-parented at once: stop it
        // first so that they can still be found.
        let first = if signal == Signal::SIGKILL {
            Signal::SIGSTOP
        } else {
            signal
        };
        let _ = kill(Pid::from_raw(pm), first);
        for pid in children_of(pm) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        let _ = kill(Pid::from_raw(pm), signal);
    }

    /// The host dies: it drops off the network first (so that no peer gets a
    /// reset or a FIN, as with a power loss), then its keeper and postgres
    /// are SIGKILLed. [`NsCluster::reboot`] brings it back.
    pub async fn kill_host(&mut self, uid: &str) {
        self.net.cut_all(uid).await;
        self.signal_postgres(uid, Signal::SIGKILL);
        self.kill(uid);
        self.signal_postgres(uid, Signal::SIGKILL);
    }

    /// The host comes back: network healed, keeper started (once its old
    /// postmaster is gone).
    pub async fn reboot(&mut self, uid: &str) {
        self.net.heal(uid).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.postmaster_pid(uid).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.start_keeper(uid);
    }

    /// Stops (SIGSTOP) a keeper and every process of its postgres, or
    /// resumes exactly the processes stopped then (whatever happened to the
    /// postmaster meanwhile: its children may have been re-parented). On
    /// resume postgres gets SIGCONT first, the harsher order for fencing (a
    /// frozen host resumes all at once).
    pub fn freeze_host(&mut self, uid: &str, frozen: bool) {
        if frozen {
            let mut pids: Vec<i32> = self.pid(uid).into_iter().collect();
            if let Some(pm) = self.postmaster_pid(uid) {
                let _ = kill(Pid::from_raw(pm), Signal::SIGSTOP);
                pids.push(pm);
                pids.extend(children_of(pm));
            }
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
            }
            self.frozen.extend(pids);
        } else {
            self.thaw_all();
        }
    }

    /// Resumes every process [`NsCluster::freeze_host`] stopped, last
    /// stopped first.
    fn thaw_all(&mut self) {
        for pid in self.frozen.drain(..).rev() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }

    /// Brings everything back: network healed, every process resumed, dead
    /// ones restarted; then waits for a primary, two standbys and a routing
    /// proxy.
    pub async fn restore(&mut self) {
        self.net.heal_all().await;
        self.thaw_all();
        let names: Vec<String> = self.children.keys().cloned().collect();
        for name in &names {
            self.signal(name, Signal::SIGCONT);
        }
        for k in KEEPERS {
            self.signal_postgres(k, Signal::SIGCONT);
        }
        let etcd_hosts = self.etcd_hosts.clone();
        if etcd_hosts.iter().any(|h| !self.running(h)) {
            self.start_etcd().await;
        }
        for s in SENTINELS {
            if !self.running(s) {
                self.start_sentinel(s);
            }
        }
        if !self.running(PROXY) {
            self.start_proxy();
        }
        let deadline = Instant::now() + CONVERGE;
        loop {
            // A keeper may refuse to start while its dead postmaster lingers:
            // start it again until it stays up.
            for k in KEEPERS {
                if !self.running(k) && self.postmaster_pid(k).is_none() {
                    self.kill(k);
                    self.start_keeper(k);
                }
            }
            if self.converged(2).await.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not recover within {CONVERGE:?}: {:?}",
                self.status().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The status when one primary and `standbys` healthy streaming standbys
    /// show (and, in a synchronous mode, a synchronous standby is named and
    /// writes are not blocked).
    pub async fn converged(&self, standbys: usize) -> Option<Value> {
        let s = self.status().await?;
        let members = s["members"].as_array()?.clone();
        let primary = s["primary"].as_str()?.to_string();
        let p = members.iter().find(|m| m["uid"] == primary.as_str())?;
        (p["state"] == "primary" && p["healthy"] == true).then_some(())?;
        let ok = members
            .iter()
            .filter(|m| m["role"] == "standby" && m["state"] == "standby" && m["healthy"] == true)
            .count();
        (ok >= standbys).then_some(())?;
        (s["writes_blocked"] != true).then_some(())?;
        (!self.sync || s["sync_standbys"].as_array().is_some_and(|a| !a.is_empty())).then_some(s)
    }

    pub async fn wait_converged(&self, standbys: usize, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.converged(standbys).await {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no primary with {standbys} standbys within {timeout:?}: {:?}",
                self.status().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The primary named in the status (None while there is none or etcd is away).
    pub async fn primary(&self) -> Option<String> {
        Some(self.status().await?["primary"].as_str()?.to_string())
    }

    /// The id of the leader sentinel.
    pub async fn leader_sentinel(&self) -> Option<String> {
        let v = self
            .store()
            .get(pgwarden_core::keys::SENTINEL_LEADER)
            .await
            .ok()??;
        String::from_utf8(v.value).ok()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for NsCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
        }
        for child in self.children.values_mut() {
            let _ = child.wait();
        }
        for k in KEEPERS {
            self.signal_postgres(k, Signal::SIGKILL);
        }
        if self.keep || std::thread::panicking() {
            eprintln!("fault suite: logs kept in {}", self.dir.path().display());
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            let _ = dir.keep();
        }
    }
}

/// The pids whose parent is `parent` (from /proc).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // "pid (comm) state ppid ...": comm may hold anything, so
                // read after its closing parenthesis.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
