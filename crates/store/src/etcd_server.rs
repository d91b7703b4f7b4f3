//! Starts etcd on loopback, for the demo and for end-to-end tests: a single
//! member ([`EtcdServer`], tuned to elect itself fast) or a real cluster of
//! several members at etcd's default timing ([`EtcdCluster`]), which is what
//! users run and what the tests about the store use.
//!
//! Tests share the machine with other etcd instances (one may well listen on
//! 2379), so every port is chosen by the caller, typically with
//! [`free_port`]. The process is owned: it is stopped when the
//! [`EtcdServer`] is dropped, so a failing test does not leak etcd processes.
//! Its output goes to `etcd.log` in the given directory, the first place to
//! look when it does not come up.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

/// How long [`EtcdServer::start`] waits for etcd to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// etcd's data directory, inside the directory given to `start`.
const DATA_DIR: &str = "data";
/// Heartbeat and election timeout (ms) of a lone member: it elects itself
/// fast on loopback.
const FAST_TIMING: (u32, u32) = (50, 500);
/// How long a stop waits after SIGTERM before sending SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS on etcd's client port, with client certificates required
/// (`--client-cert-auth`): what a secured deployment runs. Peers stay on
/// plaintext loopback in tests.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The CA that signs client certificates (`--trusted-ca-file`) and that
    /// the readiness check trusts for the server's.
    pub ca_file: PathBuf,
    /// The server certificate (valid for the member's loopback address).
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// A client certificate for the readiness checks; with etcd auth on, its
    /// CN should be `root`.
    pub client_cert_file: PathBuf,
    /// Its key.
    pub client_key_file: PathBuf,
}

impl ServerTls {
    /// Connect options with the readiness client's certificate.
    fn client_options(&self) -> etcd_client::ConnectOptions {
        let read = |p: &PathBuf| std::fs::read(p).unwrap_or_default();
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca_file)))
            .identity(etcd_client::Identity::from_pem(
                read(&self.client_cert_file),
                read(&self.client_key_file),
            ));
        etcd_client::ConnectOptions::new().with_tls(tls)
    }
}

/// Connect options for asking a member, with TLS when it has it.
fn probe_options(tls: Option<&ServerTls>) -> etcd_client::ConnectOptions {
    tls.map_or_else(etcd_client::ConnectOptions::new, ServerTls::client_options)
        .with_connect_timeout(Duration::from_millis(200))
        .with_timeout(Duration::from_millis(500))
}

/// An error starting etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    /// No `etcd` binary on PATH.
    #[error("etcd not found on PATH: install it with `apt-get install etcd-server`")]
    NotInstalled,
    /// Creating the directory or the log file failed.
    #[error("cannot prepare {path}")]
    Io {
        /// The path being created or opened.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The process could not be spawned.
    #[error("cannot start {binary}")]
    Spawn {
        /// The etcd binary.
        binary: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Something already listens on a port etcd was asked to use.
    #[error("port {port} on 127.0.0.1 is already in use")]
    PortInUse {
        /// The busy port.
        port: u16,
    },
    /// The process exited while starting.
    #[error("etcd exited while starting ({status}); see {log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
    },
    /// Another etcd answered on our client port.
    #[error("another etcd answers at {endpoint}; see {log}")]
    Foreign {
        /// The client endpoint.
        endpoint: String,
        /// Our process's log file.
        log: PathBuf,
    },
    /// The process did not answer within the start timeout.
    #[error("etcd at {endpoint} did not answer within {timeout:?}; see {log}")]
    NotReady {
        /// The client endpoint.
        endpoint: String,
        /// How long we waited.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
    },
}

/// A running (or stopped) etcd process; SIGTERMed and reaped on drop.
#[derive(Debug)]
pub struct EtcdServer {
    binary: PathBuf,
    dir: PathBuf,
    /// The loopback address it listens on (127.0.0.1, or another 127/8
    /// address so that a test can cut members apart with iptables).
    host: String,
    client_port: u16,
    peer_port: u16,
    /// The member name and `--initial-cluster`; for a single member, itself.
    name: String,
    initial_cluster: String,
    /// `--heartbeat-interval` and `--election-timeout` in ms; `None` for
    /// etcd's defaults (100, 1000), which members of a cluster run at unless
    /// asked otherwise. A lone member elects itself fast (50, 500).
    timing: Option<(u32, u32)>,
    /// TLS on the client port (boxed: most servers have none).
    tls: Option<Box<ServerTls>>,
    child: Option<Child>,
    /// Pid of the last process started, kept after it exits.
    pid: u32,
}

impl EtcdServer {
    /// Starts `etcd` from PATH with its data and log in `dir`, clients on
    /// `127.0.0.1:client_port`, peers on `127.0.0.1:peer_port`, and waits (up
    /// to 10 s) until it answers a request.
    pub async fn start(
        dir: &Path,
        client_port: u16,
        peer_port: u16,
    ) -> Result<EtcdServer, EtcdServerError> {
        let binary = find_on_path("etcd").ok_or(EtcdServerError::NotInstalled)?;
        Self::start_with(&binary, dir, client_port, peer_port).await
    }

    /// Starts etcd on two ports picked with [`free_port`], retrying with other
    /// ports (up to 5 attempts) when another process grabbed one of them
    /// between picking and binding, as happens when tests run in parallel.
    /// Retries only when `dir` holds no etcd data yet, since a failed attempt's
    /// partial data is deleted.
    pub async fn start_on_free_ports(dir: &Path) -> Result<EtcdServer, EtcdServerError> {
        let fresh = !dir.join(DATA_DIR).exists();
        let mut attempt = 1;
        loop {
            let client_port = free_port();
            let peer_port = loop {
                let port = free_port();
                if port != client_port {
                    break port;
                }
            };
            match Self::start(dir, client_port, peer_port).await {
                Err(e @ (EtcdServerError::PortInUse { .. } | EtcdServerError::Exited { .. }))
                    if fresh && attempt < 5 =>
                {
                    debug!(error = %e, attempt, "etcd did not start; trying other ports");
                    let _ = std::fs::remove_dir_all(dir.join(DATA_DIR));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Like [`EtcdServer::start`] with an explicit etcd binary.
    pub async fn start_with(
        binary: &Path,
        dir: &Path,
        client_port: u16,
        peer_port: u16,
    ) -> Result<EtcdServer, EtcdServerError> {
        std::fs::create_dir_all(dir).map_err(|source| EtcdServerError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let host = "127.0.0.1".to_owned();
        let name = "pgwarden".to_owned();
        let initial_cluster = format!("{name}=http://{host}:{peer_port}");
        let mut server = EtcdServer {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            host,
            client_port,
            peer_port,
            name,
            initial_cluster,
            timing: Some(FAST_TIMING),
            tls: None,
            child: None,
            pid: 0,
        };
        server.launch().await?;
        Ok(server)
    }

    /// The client endpoint, `http://<host>:<client_port>` (`https://` with
    /// TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.client_port)
    }

    /// The peer URL, `http://<host>:<peer_port>`.
    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }

    /// The loopback address it listens on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The member name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the process is running (started and not stopped or killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The pid of the process (the last one started, if stopped).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log file etcd writes to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// SIGTERM, then wait (SIGKILL after 5 s). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => return,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            warn!(pid = child.id(), "etcd ignored SIGTERM; killing it");
            signal(&child, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGKILL, then wait. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same directory and ports (stopping it first
    /// if it is still running).
    pub async fn restart(&mut self) -> Result<(), EtcdServerError> {
        self.stop();
        self.launch().await
    }

    async fn launch(&mut self) -> Result<(), EtcdServerError> {
        self.spawn()?;
        if let Err(e) = self.wait_ready().await {
            self.kill();
            return Err(e);
        }
        Ok(())
    }

    /// Starts the process without waiting for it to answer.
    fn spawn(&mut self) -> Result<(), EtcdServerError> {
        // Fail clearly rather than let etcd exit with a bind error, or worse,
        // mistake another etcd on that port for ours.
        for port in [self.client_port, self.peer_port] {
            if TcpListener::bind((self.host.as_str(), port)).is_err() {
                return Err(EtcdServerError::PortInUse { port });
            }
        }
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| EtcdServerError::Io {
                path: log_path.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| EtcdServerError::Io {
            path: log_path.clone(),
            source,
        })?;
        let client_url = self.endpoint();
        let peer_url = self.peer_url();
        let mut command = Command::new(&self.binary);
        command
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.join(DATA_DIR).display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new");
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert_file.display()))
                .arg(format!("--key-file={}", tls.key_file.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
                .arg("--client-cert-auth");
        }
        if let Some((heartbeat, election)) = self.timing {
            command
                .arg(format!("--heartbeat-interval={heartbeat}"))
                .arg(format!("--election-timeout={election}"));
        }
        let child = command
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|source| EtcdServerError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        self.pid = child.id();
        self.child = Some(child);
        debug!(pid = self.pid, endpoint = %client_url, "etcd started");
        Ok(())
    }

    /// Polls until etcd serves a linearizable read (so it has a leader) and
    /// lists our peer URL among its members (so it is our process answering,
    /// not another etcd that took the port meanwhile).
    async fn wait_ready(&mut self) -> Result<(), EtcdServerError> {
        let endpoint = self.endpoint();
        let peer_url = self.peer_url();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let options = probe_options(self.tls.as_deref());
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(EtcdServerError::Exited {
                        status: status.to_string(),
                        log: self.log_path(),
                    });
                }
            }
            let attempt = async {
                let mut client =
                    etcd_client::Client::connect([endpoint.as_str()], Some(options.clone()))
                        .await?;
                client.get("/pgwarden-ready-check", None).await?;
                let members = client.member_list().await?;
                Ok::<bool, etcd_client::Error>(
                    members
                        .members()
                        .iter()
                        .any(|m| m.peer_urls().contains(&peer_url)),
                )
            };
            match tokio::time::timeout(Duration::from_secs(1), attempt).await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => {
                    return Err(EtcdServerError::Foreign {
                        endpoint,
                        log: self.log_path(),
                    })
                }
                Ok(Err(_)) | Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(EtcdServerError::NotReady {
                    endpoint,
                    timeout: READY_TIMEOUT,
                    log: self.log_path(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A cluster of etcd members on loopback at etcd's default timing (100 ms
/// heartbeat, 1000 ms election timeout): what users run.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `size` members on 127.0.0.1 under `dir` (one subdirectory
    /// each) on free ports, and waits until every member serves a
    /// linearizable read. Retries with other ports when another process took
    /// one meanwhile.
    pub async fn start(dir: &Path, size: usize) -> Result<EtcdCluster, EtcdServerError> {
        let hosts = vec!["127.0.0.1".to_owned(); size];
        Self::start_on(dir, &hosts).await
    }

    /// Like [`EtcdCluster::start`], member i listening on `hosts[i]` (each a
    /// loopback address, so that tests can cut members apart).
    pub async fn start_on(dir: &Path, hosts: &[String]) -> Result<EtcdCluster, EtcdServerError> {
        Self::start_with_timing(dir, hosts, None).await
    }

    /// Like [`EtcdCluster::start_on`] with `--heartbeat-interval` and
    /// `--election-timeout` (ms) set; `None` for etcd's defaults.
    pub async fn start_with_timing(
        dir: &Path,
        hosts: &[String],
        timing: Option<(u32, u32)>,
    ) -> Result<EtcdCluster, EtcdServerError> {
        Self::start_secured(dir, hosts, timing, None).await
    }

    /// Like [`EtcdCluster::start_with_timing`], with TLS and client
    /// certificates required on every member's client port when `tls` is
    /// given (the server certificate must be valid for every host).
    pub async fn start_secured(
        dir: &Path,
        hosts: &[String],
        timing: Option<(u32, u32)>,
        tls: Option<&ServerTls>,
    ) -> Result<EtcdCluster, EtcdServerError> {
        let binary = find_on_path("etcd").ok_or(EtcdServerError::NotInstalled)?;
        let mut attempt = 1;
        loop {
            match Self::try_start(&binary, dir, hosts, timing, tls).await {
                Err(e @ (EtcdServerError::PortInUse { .. } | EtcdServerError::Exited { .. }))
                    if attempt < 5 =>
                {
                    debug!(error = %e, attempt, "etcd cluster did not start; trying other ports");
                    let _ = std::fs::remove_dir_all(dir);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_start(
        binary: &Path,
        dir: &Path,
        hosts: &[String],
        timing: Option<(u32, u32)>,
        tls: Option<&ServerTls>,
    ) -> Result<EtcdCluster, EtcdServerError> {
        let mut taken = Vec::new();
        let mut port = |host: &str| loop {
            let port = TcpListener::bind((host, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or_else(|_| free_port());
            if !taken.contains(&port) {
                taken.push(port);
                break port;
            }
        };
        let ports: Vec<(u16, u16)> = hosts.iter().map(|h| (port(h), port(h))).collect();
        let initial_cluster = hosts
            .iter()
            .zip(&ports)
            .enumerate()
            .map(|(i, (host, (_, peer)))| format!("m{i}=http://{host}:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (host, (client_port, peer_port))) in hosts.iter().zip(&ports).enumerate() {
            let member_dir = dir.join(format!("m{i}"));
            std::fs::create_dir_all(&member_dir).map_err(|source| EtcdServerError::Io {
                path: member_dir.clone(),
                source,
            })?;
            members.push(EtcdServer {
                binary: binary.to_owned(),
                dir: member_dir,
                host: host.clone(),
                client_port: *client_port,
                peer_port: *peer_port,
                name: format!("m{i}"),
                initial_cluster: initial_cluster.clone(),
                timing,
                tls: tls.cloned().map(Box::new),
                child: None,
                pid: 0,
            });
        }
        // All processes first: none can serve before a quorum runs.
        for member in &mut members {
            member.spawn()?;
        }
        for member in &mut members {
            member.wait_ready().await?;
        }
        Ok(EtcdCluster { members })
    }

    /// The client endpoints, comma-joined, as the roles take them.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(EtcdServer::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The members, in order.
    pub fn members(&self) -> &[EtcdServer] {
        &self.members
    }

    /// Member `i`.
    ///
    /// # Panics
    /// If there is no member `i`.
    pub fn member_mut(&mut self, i: usize) -> &mut EtcdServer {
        &mut self.members[i]
    }

    /// The index of the member that is raft leader now, as the running
    /// members see it (asked within a second each); `None` when none has a
    /// leader.
    pub async fn leader(&self) -> Option<usize> {
        for member in self.members.iter().filter(|m| m.is_running()) {
            let endpoint = member.endpoint();
            let ask = async {
                let options = probe_options(member.tls.as_deref());
                let mut client =
                    etcd_client::Client::connect([endpoint.as_str()], Some(options)).await?;
                let status = client.status().await?;
                let members = client.member_list().await?;
                Ok::<_, etcd_client::Error>((status.leader(), members))
            };
            let Ok(Ok((leader, list))) = tokio::time::timeout(Duration::from_secs(1), ask).await
            else {
                continue;
            };
            if leader == 0 {
                continue;
            }
            let Some(leader) = list.members().iter().find(|m| m.id() == leader) else {
                continue;
            };
            let position = self
                .members
                .iter()
                .position(|m| leader.peer_urls().contains(&m.peer_url()));
            // A follower still names a leader that was just killed until its
            // election timeout: that is no leader.
            match position {
                Some(i) if self.members[i].is_running() => return Some(i),
                _ => continue,
            }
        }
        None
    }

    /// Waits (up to `timeout`) until the running members have a leader.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                return Some(leader);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every member (SIGTERM, then SIGKILL after 5 s). Idempotent.
    pub fn stop(&mut self) {
        for member in &mut self.members {
            member.stop();
        }
    }

    /// Starts member `i` again on its data (after a kill or stop) and waits
    /// until it answers.
    pub async fn restart(&mut self, i: usize) -> Result<(), EtcdServerError> {
        self.members[i].restart().await
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free on 127.0.0.1 a moment ago (bind to port 0, read the
/// port, release it).
///
/// # Panics
/// If the loopback interface cannot bind at all.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a port on 127.0.0.1")
}

fn signal(child: &Child, sig: Signal) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // ESRCH (already exited, not yet reaped) is fine: we wait next.
    let _ = kill(Pid::from_raw(pid), sig);
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
