//! Checking postgres parameters with postgres itself, before they reach any
//! node.
//!
//! `postgres -C NAME -c NAME=VALUE` parses the value exactly as the server
//! would and fails with the server's own message ("invalid value for
//! parameter ...", "unrecognized configuration parameter ..."). It needs a
//! directory with a postgresql.conf, not a cluster, so a throw-away directory
//! with an empty one serves.

use std::collections::BTreeMap;

use crate::{PgBins, PgError};

/// Checks every parameter; the first one postgres rejects is returned with
/// postgres' message.
pub async fn check_parameters(
    bins: &PgBins,
    parameters: &BTreeMap<String, String>,
) -> Result<(), PgError> {
    if parameters.is_empty() {
        return Ok(());
    }
    // A private directory (random name, mode 0700): a predictable path
    // under /tmp could be prepared by another local user.
    let dir = tempfile::Builder::new()
        .prefix("pgwarden-check-")
        .tempdir()
        .map_err(|source| PgError::Io {
            op: "create a private temporary directory in",
            path: std::env::temp_dir(),
            source,
        })?;
    check_in(bins, dir.path(), parameters).await
}

async fn check_in(
    bins: &PgBins,
    dir: &std::path::Path,
    parameters: &BTreeMap<String, String>,
) -> Result<(), PgError> {
    let conf = dir.join("postgresql.conf");
    std::fs::write(&conf, "").map_err(|source| PgError::Io {
        op: "write",
        path: conf.clone(),
        source,
    })?;
    if let Some(run_as) = bins.run_as {
        let (uid, gid) = (
            nix::unistd::Uid::from_raw(run_as.uid),
            nix::unistd::Gid::from_raw(run_as.gid),
        );
        for p in [dir, conf.as_path()] {
            nix::unistd::chown(p, Some(uid), Some(gid)).map_err(|e| PgError::Io {
                op: "chown",
                path: p.to_path_buf(),
                source: e.into(),
            })?;
        }
    }
    for (name, value) in parameters {
        let mut cmd = bins.command("postgres");
        cmd.arg("-D")
            .arg(dir)
            .arg("-C")
            .arg(name)
            .arg("-c")
            .arg(format!("{name}={value}"));
        let out = cmd.output().await.map_err(|source| PgError::Spawn {
            tool: "postgres".into(),
            source,
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // postgres prints "<time> [pid] FATAL:  <message>": keep the message.
            let message = stderr
                .lines()
                .find_map(|l| l.split_once("FATAL:").map(|(_, m)| m.trim().to_string()))
                .unwrap_or_else(|| stderr.trim().to_string());
            return Err(PgError::InvalidParameter {
                name: name.clone(),
                message,
            });
        }
    }
    Ok(())
}
