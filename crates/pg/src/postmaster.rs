//! The postmaster as a direct child of the keeper.
//!
//! `pg_ctl start` daemonizes postgres, after which the keeper can only poll to
//! learn that it died, and postgres outlives a crashed keeper: a primary whose
//! keeper is gone keeps accepting writes nobody fences. Running `postgres -D`
//! as our own child fixes both: its exit is noticed the moment `waitid`
//! returns, and `PR_SET_PDEATHSIG` kills it when the keeper dies.
//!
//! The parent-death signal fires when the *thread* that forked the child exits,
//! not the process. So the child is forked from a dedicated thread that then
//! waits for it and only ends when it has exited; a tokio blocking-pool thread
//! would be retired after a while and take postgres with it.
//!
//! Signals are sent only while the child is known not to be reaped (the waiter
//! first waits with `WNOWAIT`, then reaps under the same lock senders hold), so
//! a signal can never reach an unrelated process that reused the pid.

use std::fmt;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::bins::RunAs;
use crate::{PgBins, PgError};

/// How long each escalation step of [`Postmaster::stop`] after the first may take.
const ESCALATION_WAIT: Duration = Duration::from_secs(5);

/// How a postmaster ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with status {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
            (None, None) => write!(f, "exited (status unknown)"),
        }
    }
}

/// A running (or exited) postmaster that is a child of this process.
///
/// Dropping the handle does not stop postgres; it still dies with the keeper.
#[derive(Debug)]
pub struct Postmaster {
    pid: u32,
    data_dir: PathBuf,
    /// True once the child has been reaped and its pid may belong to someone else.
    reaped: Arc<Mutex<bool>>,
    exit: watch::Receiver<Option<ExitInfo>>,
    /// How many times its walreceiver was told the WAL it asked for is gone.
    wal_gone: Arc<AtomicU32>,
}

impl Postmaster {
    /// Starts `postgres -D data_dir` as a child that dies with this process, in
    /// its own process group (a Ctrl-C meant for the keeper must not shut
    /// postgres down behind the keeper's back).
    ///
    /// Its stdout and stderr are relayed line by line to tracing (target
    /// `postgres`; INFO, or WARN for WARNING/ERROR/FATAL/PANIC) and appended to
    /// `log_file` if given. Returns once the process exists, which is before it
    /// accepts connections.
    pub fn spawn(
        bins: &PgBins,
        data_dir: &Path,
        log_file: Option<&Path>,
    ) -> Result<Postmaster, PgError> {
        let log = log_file
            .map(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map(|f| Arc::new(Mutex::new(f)))
                    .map_err(|e| PgError::io("open postgres log file", path, e))
            })
            .transpose()?;

        let mut cmd = Command::new(bins.path("postgres"));
        cmd.arg("-D")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(RunAs { uid, gid }) = bins.run_as {
            cmd.uid(uid).gid(gid);
        }
        die_with_parent(&mut cmd, std::process::id());

        let spawn_error = |source| PgError::Spawn {
            tool: "postgres".into(),
            source,
        };
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let (exit_tx, exit_rx) = watch::channel(None);
        let reaped = Arc::new(Mutex::new(false));
        let waiter_reaped = Arc::clone(&reaped);
        let wal_gone = Arc::new(AtomicU32::new(0));
        let relay_wal_gone = Arc::clone(&wal_gone);
        std::thread::Builder::new()
            .name("postmaster".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let pid = child.id();
                let _ = started_tx.send(Ok(pid));
                start_relays(&mut child, pid, log, &relay_wal_gone);
                let info = wait_for_exit(&mut child, &waiter_reaped);
                exit_tx.send_replace(Some(info));
            })
            .map_err(spawn_error)?;
        let pid = match started_rx.recv() {
            Ok(started) => started.map_err(spawn_error)?,
            Err(_) => {
                return Err(spawn_error(std::io::Error::other(
                    "the postmaster thread ended before starting postgres",
                )))
            }
        };
        tracing::debug!(pid, data_dir = %data_dir.display(), "postmaster started");
        Ok(Postmaster {
            pid,
            data_dir: data_dir.to_path_buf(),
            reaped,
            exit: exit_rx,
            wal_gone,
        })
    }

    /// How many times this postmaster's walreceiver was told by its upstream
    /// that the WAL it needs has been removed ("requested WAL segment ... has
    /// already been removed"): it cannot catch up by streaming.
    pub fn wal_gone_reports(&self) -> u32 {
        self.wal_gone.load(Ordering::Relaxed)
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves once the postmaster has exited. Cancel-safe; may be called any
    /// number of times, also after it resolved.
    pub async fn exited(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        let result = rx.wait_for(Option::is_some).await.map(|v| *v);
        match result {
            Ok(Some(info)) => info,
            // The waiter thread ended without reporting (it panicked): the child
            // cannot be waited for any more, so treat it as gone.
            _ => ExitInfo {
                code: None,
                signal: None,
            },
        }
    }

    /// How the postmaster ended, if it has.
    pub fn has_exited(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Fast shutdown (SIGINT), waiting up to `timeout`; then immediate shutdown
    /// (SIGQUIT), then SIGKILL to the process group. Succeeds at once if it has
    /// already exited.
    pub async fn stop(&self, timeout: Duration) -> Result<(), PgError> {
        let steps = [
            (Signal::SIGINT, timeout),
            (Signal::SIGQUIT, ESCALATION_WAIT),
            (Signal::SIGKILL, ESCALATION_WAIT),
        ];
        for (signal, wait) in steps {
            match self.signal(signal) {
                Ok(()) => {}
                Err(PgError::NotRunning { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
            if tokio::time::timeout(wait, self.exited()).await.is_ok() {
                return Ok(());
            }
            tracing::warn!(pid = self.pid, %signal, ?wait, "postmaster did not exit in time");
        }
        Err(PgError::StopFailed { pid: self.pid })
    }

    /// Makes postgres re-read its configuration files (SIGHUP).
    pub fn reload(&self) -> Result<(), PgError> {
        self.signal(Signal::SIGHUP)
    }

    /// SIGKILL, now, without waiting (self-fencing), to the postmaster and
    /// every process of its instance: backends would otherwise keep serving
    /// their clients until they notice the postmaster is gone (see
    /// [`crate::fence`]). Once the postmaster has exited, its orphaned
    /// backends are still looked for and killed.
    pub fn kill(&self) {
        let reaped = self.reaped.lock().unwrap_or_else(PoisonError::into_inner);
        // A reaped pid may belong to someone else by now.
        let pid = if *reaped { 0 } else { self.pid };
        let killed = crate::fence::kill_instance(&self.data_dir, pid);
        tracing::debug!(pid = self.pid, ?killed, "postgres killed");
    }

    /// Sends `signal` to the postmaster (SIGKILL: to its process group).
    ///
    /// The postmaster leads its own process group, and a process group id is
    /// not reused while the group has members, so signalling the group while
    /// the postmaster is unreaped is as safe as signalling the postmaster.
    fn signal(&self, signal: Signal) -> Result<(), PgError> {
        let reaped = self.reaped.lock().unwrap_or_else(PoisonError::into_inner);
        if *reaped {
            return Err(PgError::NotRunning { pid: self.pid });
        }
        let sent = if signal == Signal::SIGKILL {
            killpg(nix_pid(self.pid), signal)
        } else {
            kill(nix_pid(self.pid), signal)
        };
        sent.map_err(|source| PgError::Signal {
            signal: signal.as_str(),
            pid: self.pid,
            source,
        })
    }
}

fn nix_pid(pid: u32) -> Pid {
    // Linux pids are at most 2^22.
    Pid::from_raw(pid as i32)
}

/// Arranges for the child to get SIGKILL when the forking thread exits.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command, parent_pid: u32) {
    let parent = nix_pid(parent_pid);
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it calls prctl(2) and getppid(2) and
    // builds io::Errors from raw codes, none of which allocates or takes locks.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died between fork and prctl, in which case
            // no signal will come: give up rather than run unsupervised.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Blocks until the child exits, then reaps it under the lock signal senders take.
fn wait_for_exit(child: &mut Child, reaped: &Mutex<bool>) -> ExitInfo {
    let pid = nix_pid(child.id());
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "waitid on the postmaster failed; reaping directly");
                break;
            }
        }
    }
    let mut reaped = reaped.lock().unwrap_or_else(PoisonError::into_inner);
    let status = child.wait();
    *reaped = true;
    drop(reaped);
    match status {
        Ok(status) => ExitInfo {
            code: status.code(),
            signal: status.signal(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "could not reap the postmaster");
            ExitInfo {
                code: None,
                signal: None,
            }
        }
    }
}

type SharedLog = Option<Arc<Mutex<File>>>;

fn start_relays(child: &mut Child, pid: u32, log: SharedLog, wal_gone: &Arc<AtomicU32>) {
    let pipes: [(&str, Option<Box<dyn Read + Send>>); 2] = [
        ("stdout", child.stdout.take().map(|p| Box::new(p) as _)),
        ("stderr", child.stderr.take().map(|p| Box::new(p) as _)),
    ];
    for (name, pipe) in pipes {
        let Some(pipe) = pipe else { continue };
        let log = log.clone();
        let wal_gone = Arc::clone(wal_gone);
        let started = std::thread::Builder::new()
            .name(format!("postgres-{name}"))
            .spawn(move || relay(pipe, pid, log, &wal_gone));
        if let Err(e) = started {
            // postgres ignores write errors on a closed pipe; only its log is lost.
            tracing::warn!(pid, error = %e, "cannot relay postgres {name}");
        }
    }
}

/// Whether a postgres log line is worth attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    Info,
    Warn,
}

/// Classifies a postgres log line by the first severity tag in it (`LOG:  `,
/// `ERROR:  `, …). Lines that continue a message (`DETAIL:  `, wrapped
/// statements) keep the severity of the message they belong to.
fn classify(line: &str, previous: Severity) -> Severity {
    const TAGS: &[(&str, Option<Severity>)] = &[
        ("PANIC:  ", Some(Severity::Warn)),
        ("FATAL:  ", Some(Severity::Warn)),
        ("ERROR:  ", Some(Severity::Warn)),
        ("WARNING:  ", Some(Severity::Warn)),
        ("LOG:  ", Some(Severity::Info)),
        ("INFO:  ", Some(Severity::Info)),
        ("NOTICE:  ", Some(Severity::Info)),
        ("DEBUG", Some(Severity::Info)),
        ("DETAIL:  ", None),
        ("HINT:  ", None),
        ("CONTEXT:  ", None),
        ("STATEMENT:  ", None),
        ("LOCATION:  ", None),
    ];
    TAGS.iter()
        .filter_map(|(tag, severity)| line.find(tag).map(|at| (at, *severity)))
        .min_by_key(|(at, _)| *at)
        .map_or(previous, |(_, severity)| severity.unwrap_or(previous))
}

/// Whether a postgres log line is the walreceiver hearing that its upstream
/// removed the WAL it asked for.
fn says_wal_gone(line: &str) -> bool {
    line.contains("requested WAL segment") && line.contains("has already been removed")
}

fn relay(pipe: impl Read, pid: u32, log: SharedLog, wal_gone: &AtomicU32) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    let mut severity = Severity::Info;
    let mut log_failed = false;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(pid, error = %e, "stopped reading postgres output");
                return;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        severity = classify(line, severity);
        if says_wal_gone(line) {
            wal_gone.fetch_add(1, Ordering::Relaxed);
        }
        match severity {
            Severity::Info => tracing::info!(target: "postgres", pid, "{line}"),
            Severity::Warn => tracing::warn!(target: "postgres", pid, "{line}"),
        }
        if let Some(log) = &log {
            let mut file = log.lock().unwrap_or_else(PoisonError::into_inner);
            let written = file
                .write_all(line.as_bytes())
                .and_then(|()| file.write_all(b"\n"));
            if let Err(e) = written {
                if !log_failed {
                    tracing::warn!(pid, error = %e, "cannot append to the postgres log file");
                    log_failed = true;
                }
            }
        }
    }
}

/// The pid of a postmaster left running in `data_dir` by an earlier run: the
/// one `postmaster.pid` names, if that process is alive and is a postgres (a pid
/// from before a reboot may have been reused by something else).
pub fn running_postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    if pid == 0 || i32::try_from(pid).is_err() {
        return None;
    }
    match kill(nix_pid(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return None,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => is_live_postgres(&stat).then_some(pid),
        // No procfs: trust the liveness check.
        Err(_) => Some(pid),
    }
}

/// Reads `/proc/<pid>/stat`: `pid (comm) state …`. A zombie is not running.
fn is_live_postgres(stat: &str) -> bool {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = stat.get(open + 1..close).unwrap_or_default();
    let state = stat.get(close + 1..).unwrap_or_default().trim_start();
    (comm == "postgres" || comm == "postmaster") && !state.starts_with(['Z', 'X'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walreceiver_hearing_its_wal_is_gone_is_recognised() {
        assert!(says_wal_gone("2026-01-01 00:00:00 UTC [42] FATAL:  could not receive data from WAL stream: ERROR:  requested WAL segment 000000010000000000000003 has already been removed"));
        assert!(!says_wal_gone(
            "LOG:  started streaming WAL from primary at 0/3000000 on timeline 1"
        ));
    }

    #[test]
    fn classifies_postgres_log_lines() {
        use Severity::*;
        let prefix = "2024-05-01 10:00:00.000 UTC [4242] ";
        let cases = [
            (
                "LOG:  database system is ready to accept connections",
                Info,
                Info,
            ),
            ("FATAL:  the database system is starting up", Info, Warn),
            (
                "WARNING:  archive_mode enabled, yet archiving is not configured",
                Info,
                Warn,
            ),
            ("PANIC:  could not write", Info, Warn),
            ("ERROR:  relation \"x\" does not exist", Info, Warn),
            ("DETAIL:  Key (id)=(1) already exists.", Warn, Warn),
            ("DETAIL:  fine", Info, Info),
            ("LOG:  statement: SELECT 'ERROR:  not really'", Warn, Info),
        ];
        for (text, previous, expected) in cases {
            assert_eq!(
                classify(&format!("{prefix}{text}"), previous),
                expected,
                "{text}"
            );
        }
        assert_eq!(classify("\tcontinued statement text", Warn), Warn);
    }

    #[test]
    fn exit_info_reads_well() {
        let code = ExitInfo {
            code: Some(1),
            signal: None,
        };
        assert_eq!(code.to_string(), "exited with status 1");
        let killed = ExitInfo {
            code: None,
            signal: Some(9),
        };
        assert_eq!(killed.to_string(), "killed by SIGKILL");
    }

    #[test]
    fn stat_lines_identify_live_postgres() {
        assert!(is_live_postgres("123 (postgres) S 1 123 123 0"));
        assert!(!is_live_postgres("123 (postgres) Z 1 123 123 0"));
        assert!(!is_live_postgres("123 (bash) S 1 123 123 0"));
        assert!(!is_live_postgres("garbage"));
    }

    #[test]
    fn no_pid_file_means_no_postmaster() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(running_postmaster_pid(tmp.path()), None);
        std::fs::write(tmp.path().join("postmaster.pid"), "not a pid\n").unwrap();
        assert_eq!(running_postmaster_pid(tmp.path()), None);
        // Our own pid is alive but is not a postgres.
        let me = std::process::id();
        std::fs::write(tmp.path().join("postmaster.pid"), format!("{me}\n/data\n")).unwrap();
        assert_eq!(running_postmaster_pid(tmp.path()), None);
    }
}
