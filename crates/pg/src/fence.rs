//! Killing every process of one postgres instance, at once (self-fencing).
//!
//! Signalling the postmaster's process group is not enough: every backend
//! calls `setsid()` when it starts, so it leads a session and a process group
//! of its own. A backend busy on the CPU does not notice that its postmaster
//! died until it next waits, and meanwhile it can still commit and acknowledge
//! a write. Worse, once the postmaster is gone its backends are orphans, no
//! longer its children.
//!
//! So fencing finds the instance's processes two ways: the postmaster's
//! children (while it lives, frozen first with SIGSTOP so it cannot fork more
//! between the scan and the kill) and every `postgres` process whose working
//! directory is the data directory (postgres `chdir`s there, and orphans keep
//! it). Each gets SIGKILL.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How many times the process table is scanned at most: a later pass
/// catches a process that was being forked during the one before.
const PASSES: usize = 3;

/// SIGKILLs the postmaster `postmaster` (0: unknown or none) and every process
/// of the instance whose data directory is `data_dir`. Returns the pids that
/// were signalled (empty when nothing ran). Never signals the caller.
pub fn kill_instance(data_dir: &Path, postmaster: u32) -> Vec<u32> {
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let postmaster = i32::try_from(postmaster).unwrap_or(0);
    if postmaster > 0 {
        // Frozen, it forks no new backend while we look for the old ones.
        let _ = kill(Pid::from_raw(postmaster), Signal::SIGSTOP);
    }
    let me = std::process::id();
    let mut killed = BTreeSet::new();
    for pass in 0..PASSES {
        let found: Vec<u32> = instance_processes(&data_dir, postmaster)
            .into_iter()
            .filter(|&pid| pid != me && !killed.contains(&pid))
            .collect();
        // Done once a pass finds nothing new after the postmaster was dealt
        // with, or at once when nothing runs and no postmaster could fork.
        if found.is_empty() && (pass > 0 || postmaster <= 0) {
            break;
        }
        for pid in found {
            if let Ok(raw) = i32::try_from(pid) {
                if kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() {
                    killed.insert(pid);
                }
            }
        }
        if pass == 0 && postmaster > 0 {
            // Its process group too (helpers that did not setsid), then
            // itself; ESRCH when already gone.
            let _ = kill(Pid::from_raw(-postmaster), Signal::SIGKILL);
            if kill(Pid::from_raw(postmaster), Signal::SIGKILL).is_ok() {
                killed.insert(postmaster.unsigned_abs());
            }
        }
    }
    killed.into_iter().collect()
}

/// The pids of the instance: children of `postmaster`, and `postgres`
/// processes working in `data_dir`.
fn instance_processes(data_dir: &Path, postmaster: i32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let child = postmaster > 0 && parent_of(pid) == Some(postmaster.unsigned_abs());
            child || (is_postgres(pid) && cwd_of(pid).as_deref() == Some(data_dir))
        })
        .collect()
}

/// The parent pid, from `/proc/PID/stat` (the field after the command name,
/// which is in parentheses and may itself contain spaces or parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_parent(&stat)
}

fn parse_parent(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

fn cwd_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Whether the process runs the postgres server binary. Backends rename
/// themselves (`postgres: user db ...`), so the executable is what counts.
fn is_postgres(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| {
            exe.file_name()
                .map(|n| n == "postgres" || n == "postmaster")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_is_the_field_after_state() {
        assert_eq!(parse_parent("42 (postgres) S 17 42 42 0 -1"), Some(17));
        // A command name with spaces and parentheses.
        assert_eq!(
            parse_parent("43 (postgres: a (b) c) R 42 43 43 0"),
            Some(42)
        );
        assert_eq!(parse_parent("garbage"), None);
    }

    #[test]
    fn a_child_process_is_found_and_killed() {
        // A stand-in postmaster: a shell with a sleeping child. The child is
        // found through its parent, whatever its executable.
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let ppid = parent.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let child = loop {
            let dir = std::env::temp_dir();
            let kids: Vec<u32> = instance_processes(&dir, i32::try_from(ppid).unwrap());
            if let Some(&k) = kids.first() {
                break k;
            }
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let killed = kill_instance(Path::new("/nonexistent-data-dir"), ppid);
        assert!(killed.contains(&ppid), "{killed:?}");
        assert!(killed.contains(&child), "{killed:?}");
        let status = parent.wait().unwrap();
        assert!(!status.success());
        // The child is gone too (reaped by init once its parent died).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Path::new(&format!("/proc/{child}/cmdline")).exists()
            && std::fs::read_to_string(format!("/proc/{child}/stat"))
                .map(|s| !s.contains(") Z"))
                .unwrap_or(false)
        {
            assert!(std::time::Instant::now() < deadline, "child still alive");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
