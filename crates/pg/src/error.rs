//! The one error type of postgres control.
//!
//! Everything this crate does is an operation on one postgres instance, and the
//! keeper handles the failures alike (log, report, retry on the next tick), so a
//! single enum is enough. `is_fatal` separates the few failures that no retry can
//! fix and that a human must look at.

use std::path::PathBuf;
use std::process::ExitStatus;

/// A failure to control or inspect postgres.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// No usable postgres installation was found.
    #[error("postgres binaries not found: install postgresql-15 or pass --pg-bin-dir (looked in {searched})")]
    BinariesNotFound {
        /// The places that were looked at, for the operator.
        searched: String,
    },

    /// A postgres program could not be started at all.
    #[error("start {tool}")]
    Spawn {
        /// The program, e.g. `initdb`.
        tool: String,
        #[source]
        source: std::io::Error,
    },

    /// A postgres program ran and failed.
    #[error("{tool} failed ({status}): {stderr_tail}")]
    Tool {
        /// The program, e.g. `pg_basebackup`.
        tool: String,
        /// How it ended.
        status: ExitStatus,
        /// The last lines it wrote to stderr.
        stderr_tail: String,
    },

    /// Postgres rejected a parameter value.
    #[error("postgres rejects parameter {name}: {message}")]
    InvalidParameter {
        /// The parameter.
        name: String,
        /// Postgres' own message.
        message: String,
    },

    /// A file system operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done, e.g. "read postmaster.pid".
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A SQL request failed (including connecting).
    #[error("{op}")]
    Sql {
        /// What was being done, e.g. "create replication slot".
        op: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// Text from postgres (a tool's output or a query result) did not have the expected form.
    #[error("parse {what}: unexpected value {value:?}")]
    Parse {
        /// What was being parsed, e.g. "pg_controldata: Database system identifier".
        what: &'static str,
        /// The offending text.
        value: String,
    },

    /// pg_basebackup was asked to fill a directory that already holds something.
    #[error("refuse to base-backup into {}: it is not empty", path.display())]
    NotEmpty {
        /// The data directory.
        path: PathBuf,
    },

    /// Sending a signal to the postmaster failed.
    #[error("send {signal} to postmaster {pid}")]
    Signal {
        /// The signal's name.
        signal: &'static str,
        /// The postmaster's pid.
        pid: u32,
        #[source]
        source: nix::Error,
    },

    /// The postmaster is not running (it has exited), so it cannot be signalled.
    #[error("postmaster {pid} has already exited")]
    NotRunning {
        /// The pid it had.
        pid: u32,
    },

    /// The postmaster survived SIGINT, SIGQUIT and SIGKILL.
    #[error("postmaster {pid} did not exit after SIGKILL")]
    StopFailed {
        /// Its pid.
        pid: u32,
    },

    /// A replication slot could not be dropped because a standby is using it.
    #[error("replication slot {name:?} is in use by a connected standby")]
    SlotActive {
        /// The slot.
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// `pg_promote` did not finish within its wait time.
    #[error("promotion did not complete within 30 s")]
    PromoteTimedOut,
}

impl PgError {
    /// True when retrying cannot help and a human must act (missing binaries, a
    /// non-empty directory where a fresh copy was to go).
    pub fn is_fatal(&self) -> bool {
        pgwarden_core::keeper::error_kind(self.cause()) == pgwarden_core::ErrorKind::Fatal
    }

    /// What this failure is, for core's rule on which failures disqualify a
    /// node ([`pgwarden_core::keeper::error_kind`]).
    pub fn cause(&self) -> pgwarden_core::keeper::FailureCause {
        use pgwarden_core::keeper::FailureCause;
        match self {
            PgError::BinariesNotFound { .. } => FailureCause::UnusableBinaries,
            PgError::NotEmpty { .. } => FailureCause::DirectoryNotEmpty,
            _ => FailureCause::Other,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PgError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sql(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        move |source| PgError::Sql { op, source }
    }
}
