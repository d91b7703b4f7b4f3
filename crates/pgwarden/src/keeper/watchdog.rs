//! The fencing watchdog: a separate process that kills postgres when the
//! keeper cannot.
//!
//! The keeper fences postgres itself when its lease renewals stop (see
//! `primary_lease`), but a keeper that is *frozen* (SIGSTOP, a stuck
//! hypervisor vCPU, a debugger) runs no code at all, while its postgres,
//! in its own process group, goes on accepting writes on connections that
//! are already open. So the keeper tells this small process, after every
//! renewal, the monotonic-clock instant by which it must have renewed again;
//! the watchdog, in a process group of its own, kills postgres' group when
//! that instant passes without news. If the keeper dies, its pipe closes and
//! the watchdog kills a primary's postgres at once. Killing means every
//! process of the instance, found by parent and by working directory
//! (`pgwarden_pg::fence`): backends outlive a killed postmaster.
//!
//! Protocol on stdin, one command per line: `datadir PATH` (the instance's
//! data directory), `pid N` (postmaster, 0 for none), `deadline NS`
//! (CLOCK_MONOTONIC nanoseconds), `clear` (no deadline: not primary).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Nanoseconds on CLOCK_MONOTONIC, which both processes share.
pub fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct State {
    data_dir: PathBuf,
    pid: u32,
    deadline_ns: Option<u64>,
    keeper_gone: bool,
}

/// Runs the watchdog (`pgwarden fence-watchdog`) until its stdin closes.
pub fn run() -> anyhow::Result<()> {
    let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
    let reader = shared.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let (lock, cv) = &*reader;
            let Ok(mut s) = lock.lock() else { return };
            if let Some(dir) = line.strip_prefix("datadir ") {
                s.data_dir = PathBuf::from(dir);
                continue;
            }
            let mut words = line.split_whitespace();
            match (
                words.next(),
                words.next().and_then(|w| w.parse::<u64>().ok()),
            ) {
                (Some("pid"), Some(p)) => s.pid = u32::try_from(p).unwrap_or(0),
                (Some("deadline"), Some(ns)) => s.deadline_ns = Some(ns),
                (Some("clear"), _) => s.deadline_ns = None,
                _ => eprintln!("fence-watchdog: ignoring {line:?}"),
            }
            cv.notify_all();
        }
        let (lock, cv) = &*reader;
        if let Ok(mut s) = lock.lock() {
            s.keeper_gone = true;
        }
        cv.notify_all();
    });
    let (lock, cv) = &*shared;
    let mut s = lock
        .lock()
        .map_err(|_| anyhow::anyhow!("watchdog state poisoned"))?;
    loop {
        let now = monotonic_ns();
        match next(&s, now) {
            Next::Exit { fence: kill } => {
                if kill {
                    fence(&s, "its keeper is gone");
                }
                return Ok(());
            }
            Next::Fence { rearm_ns } => {
                fence(
                    &s,
                    "its keeper did not renew the primary lease in time (frozen or stuck)",
                );
                s.deadline_ns = Some(rearm_ns);
            }
            Next::Wait(wait) => {
                s = cv
                    .wait_timeout(s, wait)
                    .map_err(|_| anyhow::anyhow!("watchdog state poisoned"))?
                    .0;
            }
            Next::Sleep => {
                s = cv
                    .wait(s)
                    .map_err(|_| anyhow::anyhow!("watchdog state poisoned"))?;
            }
        }
    }
}

/// While fenced, how often the watchdog kills anything started again.
const REFENCE_NS: u64 = 50_000_000;

/// What the watchdog does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The keeper is gone: exit, killing postgres first if it was primary
    /// (nothing will renew its lease).
    Exit { fence: bool },
    /// The deadline passed: kill postgres, and again at `rearm_ns` unless
    /// the keeper renews first.
    Fence { rearm_ns: u64 },
    /// Until the deadline, unless the keeper says something first.
    Wait(Duration),
    /// No deadline (not primary): until the keeper says something.
    Sleep,
}

/// The watchdog's rule, at `now` (CLOCK_MONOTONIC nanoseconds).
fn next(s: &State, now: u64) -> Next {
    if s.keeper_gone {
        return Next::Exit {
            fence: s.deadline_ns.is_some(),
        };
    }
    match s.deadline_ns {
        Some(d) if now >= d => Next::Fence {
            rearm_ns: now.saturating_add(REFENCE_NS),
        },
        Some(d) => Next::Wait(Duration::from_nanos(d - now)),
        None => Next::Sleep,
    }
}

fn fence(s: &State, why: &str) {
    if s.data_dir.as_os_str().is_empty() && s.pid == 0 {
        return;
    }
    let killed = pgwarden_pg::fence::kill_instance(&s.data_dir, s.pid);
    if !killed.is_empty() {
        eprintln!("fence-watchdog: killed postgres {killed:?} because {why}");
    }
}

/// The keeper's handle on its watchdog process.
#[derive(Debug, Clone)]
pub struct Watchdog {
    inner: Arc<Mutex<Option<(Child, ChildStdin)>>>,
    pgid: Arc<Mutex<u32>>,
    data_dir: Arc<PathBuf>,
}

impl Watchdog {
    /// Starts the watchdog process, in a process group of its own so that a
    /// stop signal sent to the keeper's group does not freeze it too.
    /// `data_dir` is the data directory of the postgres it guards.
    pub fn start(data_dir: &Path) -> anyhow::Result<Watchdog> {
        let data_dir = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_path_buf());
        let w = Watchdog {
            inner: Arc::new(Mutex::new(None)),
            pgid: Arc::new(Mutex::new(0)),
            data_dir: Arc::new(data_dir),
        };
        w.spawn()?;
        Ok(w)
    }

    fn spawn(&self) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("fence-watchdog")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("watchdog stdin"))?;
        if let Ok(mut g) = self.inner.lock() {
            *g = Some((child, stdin));
        }
        self.send(&format!("datadir {}", self.data_dir.display()));
        let pgid = self.pgid.lock().map(|p| *p).unwrap_or(0);
        self.send(&format!("pid {pgid}"));
        Ok(())
    }

    /// The data directory of the guarded postgres (canonical when it existed
    /// at start).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn send(&self, line: &str) {
        let failed = match self.inner.lock() {
            Ok(mut g) => match g.as_mut() {
                Some((_, stdin)) => writeln!(stdin, "{line}")
                    .and_then(|()| stdin.flush())
                    .is_err(),
                None => true,
            },
            Err(_) => true,
        };
        if failed {
            tracing::error!("the fencing watchdog is gone: starting it again");
            if let Err(e) = self.spawn() {
                tracing::error!(error = %e, "cannot start the fencing watchdog");
            }
        }
    }

    /// The running postmaster (0: none).
    pub fn set_postmaster(&self, pgid: u32) {
        if let Ok(mut p) = self.pgid.lock() {
            *p = pgid;
        }
        self.send(&format!("pid {pgid}"));
    }

    /// Postgres must die if nothing is heard by `deadline` (from now).
    pub fn arm(&self, in_: Duration) {
        let ns = monotonic_ns() + u64::try_from(in_.as_nanos()).unwrap_or(u64::MAX / 2);
        self.send(&format!("deadline {ns}"));
    }

    /// Not primary any more: no deadline.
    pub fn disarm(&self) {
        self.send("clear");
    }
}

#[cfg(test)]
mod tests {
    //! The watchdog runs on a std thread and CLOCK_MONOTONIC, not on tokio:
    //! its rule is a pure function of the state and the instant, tested here
    //! at exact instants.
    use super::*;

    fn armed(deadline_ns: u64) -> State {
        State {
            deadline_ns: Some(deadline_ns),
            ..State::default()
        }
    }

    #[test]
    fn it_waits_for_the_deadline_then_fences_until_a_renewal() {
        let s = armed(1_000);
        assert_eq!(next(&s, 400), Next::Wait(Duration::from_nanos(600)));
        assert_eq!(
            next(&s, 1_000),
            Next::Fence {
                rearm_ns: 1_000 + REFENCE_NS
            }
        );
        // Not primary: nothing to do until told.
        assert_eq!(next(&State::default(), 5), Next::Sleep);
    }

    #[test]
    fn a_dead_keeper_fences_only_a_primary() {
        let gone = State {
            keeper_gone: true,
            ..armed(u64::MAX)
        };
        assert_eq!(next(&gone, 0), Next::Exit { fence: true });
        let standby = State {
            keeper_gone: true,
            ..State::default()
        };
        assert_eq!(next(&standby, 0), Next::Exit { fence: false });
    }
}
