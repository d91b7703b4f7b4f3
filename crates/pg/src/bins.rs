//! Where the postgres programs are, and how to start one.
//!
//! Distributions scatter them: Debian keeps each major version under
//! `/usr/lib/postgresql/<major>/bin` and puts only a few wrappers or symlinks on
//! `PATH`, so a `pg_ctl` found on `PATH` is followed through symlinks to the
//! directory holding the whole set (`pg_basebackup` and `pg_rewind` included).

use std::path::{Path, PathBuf};

use crate::PgError;

/// The OS user postgres programs are started as, when it differs from ours.
///
/// Production keepers run as the postgres OS user and leave this unset; tests
/// run as root, which postgres refuses to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Where the postgres binaries are (`--pg-bin-dir`, else the directory of
/// `pg_ctl` on `PATH`, else `/usr/lib/postgresql/<highest>/bin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBins {
    /// The directory holding `postgres`, `initdb`, `pg_basebackup`, …
    pub dir: PathBuf,
    /// Start every program as this user (see [`RunAs`]); `None` in production.
    pub run_as: Option<RunAs>,
    /// libpq settings every program gets in its environment (`PGSSLMODE`,
    /// `PGSSLROOTCERT`, ...): with postgres TLS on, pg_basebackup and
    /// pg_rewind check the server's certificate (verify-full).
    pub libpq_env: Vec<(String, String)>,
}

const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

impl PgBins {
    /// Finds the binaries; an explicit directory must hold them, it is not a hint.
    pub fn locate(explicit: Option<&Path>) -> Result<PgBins, PgError> {
        let found = |dir: PathBuf| PgBins {
            dir,
            run_as: None,
            libpq_env: Vec::new(),
        };
        if let Some(dir) = explicit {
            return if holds_postgres(dir) {
                Ok(found(dir.to_path_buf()))
            } else {
                Err(PgError::BinariesNotFound {
                    searched: dir.display().to_string(),
                })
            };
        }
        if let Some(dir) = pg_ctl_dir_on_path() {
            return Ok(found(dir));
        }
        if let Some(dir) = highest_debian_version() {
            return Ok(found(dir));
        }
        Err(PgError::BinariesNotFound {
            searched: format!("PATH and {DEBIAN_ROOT}/*/bin"),
        })
    }

    /// The full path of a program, e.g. `path("pg_rewind")`.
    pub fn path(&self, tool: &str) -> PathBuf {
        self.dir.join(tool)
    }

    /// A command for `tool`, run as [`Self::run_as`], with English messages (its
    /// output is parsed and its errors are logged).
    pub(crate) fn command(&self, tool: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.path(tool));
        // A `PGPASSWORD` the keeper inherited would beat the passfile and
        // show in the child's environment.
        cmd.env("LC_ALL", "C")
            .env_remove("PGPASSWORD")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(RunAs { uid, gid }) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.envs(self.libpq_env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

fn holds_postgres(dir: &Path) -> bool {
    dir.join("postgres").is_file() && dir.join("initdb").is_file()
}

fn pg_ctl_dir_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("pg_ctl"))
        .filter(|pg_ctl| pg_ctl.is_file())
        .filter_map(|pg_ctl| std::fs::canonicalize(pg_ctl).ok())
        .filter_map(|pg_ctl| pg_ctl.parent().map(Path::to_path_buf))
        .find(|dir| holds_postgres(dir))
}

fn highest_debian_version() -> Option<PathBuf> {
    std::fs::read_dir(DEBIAN_ROOT)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| holds_postgres(bin))
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_directory_must_hold_postgres() {
        let tmp = tempfile::tempdir().unwrap();
        let err = PgBins::locate(Some(tmp.path())).unwrap_err();
        assert!(err.to_string().contains("--pg-bin-dir"), "{err}");
        assert!(err.is_fatal());
    }

    #[test]
    fn finds_an_installed_postgres() {
        let bins = PgBins::locate(None).unwrap();
        assert!(bins.path("pg_basebackup").is_file(), "{bins:?}");
        assert!(bins.path("pg_controldata").is_file(), "{bins:?}");
    }
}
