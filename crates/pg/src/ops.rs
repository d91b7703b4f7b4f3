//! One-shot postgres programs (`initdb`, `pg_basebackup`, `pg_rewind`,
//! `pg_controldata`) and the few files the keeper writes into a data directory.
//!
//! Each program runs to completion as a child; a failure carries the program's
//! name, exit status and the end of its stderr, which is what an operator needs
//! to see in the keeper's log. Passwords reach programs through a passfile
//! (`PGPASSFILE`, mode 0600, removed when the program ends), never argv or the
//! environment: any local user can read argv in `ps`, and on some systems the
//! environment too (libpq's own documentation discourages `PGPASSWORD`).
//! Dropping one of these futures kills the program.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use crate::datadir::{inspect_data_dir, parse_controldata, ControlData, DataDirState};
use crate::{PgBins, PgError};

/// How many lines of a failed program's stderr go into the error.
const STDERR_TAIL_LINES: usize = 10;

/// A server that does not answer should fail a basebackup or rewind, not hang it.
const CONNECT_TIMEOUT_SECS: &str = "10";

/// Runs `tool` to completion; returns its stdout, or an error with the end of its stderr.
///
/// With a `password`, the tool finds it in a passfile that lives as long as
/// this call.
async fn run_tool(
    bins: &PgBins,
    tool: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    password: Option<&str>,
) -> Result<String, PgError> {
    let mut cmd = bins.command(tool);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Bound to this scope: the file is removed when the tool has ended (or
    // when this future is dropped, which kills the tool).
    let _passfile = match password {
        Some(password) => {
            let file = write_passfile(bins, password)?;
            cmd.env("PGPASSFILE", file.path());
            Some(file)
        }
        None => None,
    };
    tracing::debug!(tool, ?args, "run postgres program");
    let output = cmd.output().await.map_err(|source| PgError::Spawn {
        tool: tool.to_string(),
        source,
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(PgError::Tool {
            tool: tool.to_string(),
            status: output.status,
            stderr_tail: tail(&stderr, STDERR_TAIL_LINES),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A passfile matching every host, port, database and user with `password`,
/// mode 0600 and owned by the user the tool runs as: libpq ignores a passfile
/// that others may read.
fn write_passfile(bins: &PgBins, password: &str) -> Result<tempfile::NamedTempFile, PgError> {
    let dir = std::env::temp_dir();
    let mut file = tempfile::Builder::new()
        .prefix("pgwarden-pgpass-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(&dir)
        .map_err(|e| PgError::io("create a passfile in", &dir, e))?;
    let line = format!("*:*:*:*:{}\n", passfile_escape(password));
    file.write_all(line.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|e| PgError::io("write", file.path(), e))?;
    if let Some(run_as) = bins.run_as {
        std::os::unix::fs::chown(file.path(), Some(run_as.uid), Some(run_as.gid))
            .map_err(|e| PgError::io("hand over", file.path(), e))?;
    }
    Ok(file)
}

/// Escapes `\` and `:`, the two characters a passfile field cannot hold bare.
fn passfile_escape(field: &str) -> String {
    field.replace('\\', "\\\\").replace(':', "\\:")
}

/// The last `n` non-empty lines of `text`, joined by " | " so they fit one log line.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Runs `pg_controldata` on a (running or stopped) data directory.
pub async fn controldata(bins: &PgBins, data_dir: &Path) -> Result<ControlData, PgError> {
    let out = run_tool(
        bins,
        "pg_controldata",
        &["-D".as_ref(), data_dir.as_os_str()],
        &[],
        None,
    )
    .await?;
    parse_controldata(&out)
}

/// Creates a new cluster: data checksums on, `superuser` with the password in
/// `su_password_file`, SCRAM authentication, UTF8 and the C locale (so that
/// collation never differs between members).
pub async fn initdb(
    bins: &PgBins,
    data_dir: &Path,
    superuser: &str,
    su_password_file: &Path,
) -> Result<(), PgError> {
    let pwfile = format!("--pwfile={}", su_password_file.display());
    let args: [&std::ffi::OsStr; 10] = [
        "-D".as_ref(),
        data_dir.as_os_str(),
        "--data-checksums".as_ref(),
        "-U".as_ref(),
        superuser.as_ref(),
        pwfile.as_ref(),
        "--auth=scram-sha-256".as_ref(),
        "--encoding=UTF8".as_ref(),
        "--locale=C".as_ref(),
        "--no-instructions".as_ref(),
    ];
    run_tool(bins, "initdb", &args, &[], None).await?;
    Ok(())
}

/// Copies a running primary into `data_dir` with `pg_basebackup -X stream`.
///
/// `data_dir` must be missing or empty (anything else is refused). On failure
/// whatever was written is removed, so a retry starts clean: the directory itself
/// too if this call created it, otherwise only its contents.
pub async fn basebackup(
    bins: &PgBins,
    data_dir: &Path,
    host: &str,
    port: u16,
    repl_user: &str,
    repl_password: &str,
) -> Result<(), PgError> {
    let created = match inspect_data_dir(data_dir)? {
        DataDirState::Missing => true,
        DataDirState::Empty => false,
        DataDirState::Postgres { .. } | DataDirState::Foreign => {
            return Err(PgError::NotEmpty {
                path: data_dir.to_path_buf(),
            })
        }
    };
    let port = port.to_string();
    let args: [&std::ffi::OsStr; 12] = [
        "-D".as_ref(),
        data_dir.as_os_str(),
        "-X".as_ref(),
        "stream".as_ref(),
        "--checkpoint=fast".as_ref(),
        "-h".as_ref(),
        host.as_ref(),
        "-p".as_ref(),
        port.as_ref(),
        "-U".as_ref(),
        repl_user.as_ref(),
        "-w".as_ref(),
    ];
    let env = [("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS)];
    let result = run_tool(bins, "pg_basebackup", &args, &env, Some(repl_password)).await;
    if result.is_err() {
        // pg_basebackup cleans up after itself too, unless it was killed.
        if let Err(e) = remove_backup_leftovers(data_dir, created) {
            tracing::warn!(error = %e, "could not clean up after a failed pg_basebackup");
        }
    }
    result.map(drop)
}

fn remove_backup_leftovers(data_dir: &Path, created: bool) -> Result<(), PgError> {
    if created {
        return match std::fs::remove_dir_all(data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(PgError::io("remove", data_dir, e))
            }
            _ => Ok(()),
        };
    }
    let entries = std::fs::read_dir(data_dir).map_err(|e| PgError::io("list", data_dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| PgError::io("list", data_dir, e))?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| PgError::io("remove", &path, e))?;
    }
    Ok(())
}

/// Rewinds a stopped former primary onto the timeline of `source_conninfo`'s
/// server (connected to as superuser). pg_rewind copies the source's config
/// files, so the caller must render its own again afterwards.
pub async fn rewind(
    bins: &PgBins,
    data_dir: &Path,
    source_conninfo: &str,
    su_password: &str,
) -> Result<(), PgError> {
    let args: [&std::ffi::OsStr; 4] = [
        "--target-pgdata".as_ref(),
        data_dir.as_os_str(),
        "--source-server".as_ref(),
        source_conninfo.as_ref(),
    ];
    let env = [("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS)];
    run_tool(bins, "pg_rewind", &args, &env, Some(su_password))
        .await
        .map(drop)
}

/// Replaces `path` with `contents` so that a crash leaves the old file or the
/// new one, never half of one: write a temporary file, fsync, rename, fsync
/// the directory.
pub fn write_file_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), PgError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".pgwarden-tmp");
    let tmp = dir.join(tmp_name);
    // A leftover from a crash may have another mode; start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| PgError::io("create", &tmp, e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| PgError::io("write", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| PgError::io("rename into place", path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PgError::io("sync directory", dir, e))
}

/// Creates (`standby = true`) or removes `standby.signal`, which makes postgres
/// start as a standby.
pub fn set_standby_signal(data_dir: &Path, standby: bool) -> Result<(), PgError> {
    let signal = data_dir.join("standby.signal");
    if standby {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&signal)
            .map(drop)
            .map_err(|e| PgError::io("create", signal, e))
    } else {
        match std::fs::remove_file(&signal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(PgError::io("remove", signal, e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 3), "");
    }

    /// The password reaches a tool through a 0600 passfile that is gone once
    /// the tool has ended, and never through `PGPASSWORD`.
    #[test]
    fn tools_get_the_password_in_a_private_passfile() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let tool = tmp.path().join("fake_tool");
        std::fs::write(
            &tool,
            "#!/bin/sh\necho \"pgpassword=${PGPASSWORD-unset}\"\necho \"passfile=$PGPASSFILE\"\n\
             echo \"mode=$(stat -c %a \"$PGPASSFILE\")\"\ncat \"$PGPASSFILE\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bins = PgBins {
            dir: tmp.path().to_path_buf(),
            run_as: None,
            libpq_env: Vec::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt
            .block_on(run_tool(&bins, "fake_tool", &[], &[], Some("s3:cr\\et")))
            .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "pgpassword=unset", "{out}");
        let passfile = lines[1].strip_prefix("passfile=").unwrap();
        assert_eq!(lines[2], "mode=600", "{out}");
        assert_eq!(lines[3], "*:*:*:*:s3\\:cr\\\\et", "{out}");
        assert!(!Path::new(passfile).exists(), "{passfile} left behind");
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("postgresql.conf");
        std::fs::write(&path, "old").unwrap();
        write_file_atomic(&path, "new\n", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn standby_signal_comes_and_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let signal = tmp.path().join("standby.signal");
        set_standby_signal(tmp.path(), true).unwrap();
        set_standby_signal(tmp.path(), true).unwrap();
        assert!(signal.exists());
        set_standby_signal(tmp.path(), false).unwrap();
        set_standby_signal(tmp.path(), false).unwrap();
        assert!(!signal.exists());
    }

    #[test]
    fn basebackup_refuses_a_non_empty_directory() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("keep.txt"), "precious").unwrap();
        let bins = PgBins {
            dir: "/nonexistent".into(),
            run_as: None,
            libpq_env: Vec::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(basebackup(&bins, tmp.path(), "127.0.0.1", 1, "r", "p"))
            .unwrap_err();
        assert!(matches!(err, PgError::NotEmpty { .. }), "{err}");
        assert!(tmp.path().join("keep.txt").exists());
    }

    #[test]
    fn failed_basebackup_removes_only_what_it_created() {
        let tmp = tempfile::tempdir().unwrap();
        let bins = PgBins::locate(None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Nothing listens on port 1: the backup fails at once.
        let fresh = tmp.path().join("fresh");
        let err = rt
            .block_on(basebackup(&bins, &fresh, "127.0.0.1", 1, "r", "p"))
            .unwrap_err();
        assert!(
            matches!(&err, PgError::Tool { tool, .. } if tool == "pg_basebackup"),
            "{err}"
        );
        assert!(!fresh.exists());
        let existing = tmp.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        rt.block_on(basebackup(&bins, &existing, "127.0.0.1", 1, "r", "p"))
            .unwrap_err();
        assert!(existing.is_dir());
    }
}
