//! The health checks load balancers and orchestrators ask, as pure functions
//! of what the keeper last published, the time, and (for standbys) the
//! primary's write position read from the store.
//!
//! A check never queries postgres or waits on the keeper loop: the loop has
//! just observed postgres and published a [`LocalState`], and a check that
//! blocked would turn a slow keeper into a flapping load balancer. The one
//! input that is not local, the primary's position for `?lag=`, is passed in
//! already loaded (or marked unreachable), so every rule here is testable
//! without IO.

use std::time::Duration;

use pgwarden_core::{Lsn, ObservedRole};
use serde::Serialize;
use tokio::time::Instant;

use crate::local_state::LocalState;

/// How long the keeper loop may go without publishing before `/liveness`
/// fails. The loop publishes about once a second.
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(10);

/// The checks, each answered 200 or 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The writable primary of the current generation.
    Primary,
    /// A healthy streaming standby (within `?lag=`).
    Replica,
    /// The writable primary or a replica.
    ReadOnly,
    /// Postgres answers queries.
    Health,
    /// The keeper loop is publishing.
    Liveness,
    /// Postgres is up and doing its assigned job.
    Readiness,
}

impl Check {
    /// The check a path names. `/` is the primary check, as in Patroni, so
    /// that `option httpchk` without a URI keeps working.
    pub fn from_path(path: &str) -> Option<Check> {
        Some(match path {
            "/" | "/primary" | "/leader" | "/master" | "/read-write" => Check::Primary,
            "/replica" => Check::Replica,
            "/read-only" => Check::ReadOnly,
            "/health" => Check::Health,
            "/liveness" => Check::Liveness,
            "/readiness" => Check::Readiness,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Check::Primary => "primary",
            Check::Replica => "replica",
            Check::ReadOnly => "read-only",
            Check::Health => "health",
            Check::Liveness => "liveness",
            Check::Readiness => "readiness",
        }
    }

    /// Whether the answer may depend on the primary's position in the store.
    pub fn uses_lag(self) -> bool {
        matches!(self, Check::Replica | Check::ReadOnly | Check::Readiness)
    }
}

/// The primary's write position, as far as the API could learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryPosition {
    /// The store answered; the primary's last published position, if any.
    Store(Option<Lsn>),
    /// The store could not be read.
    Unreachable,
    /// Not looked up: this node is not a standby, or no check needs it.
    NotLoaded,
}

/// Everything a check looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// What the keeper last published (`None` before its first tick).
    pub local: Option<&'a LocalState>,
    /// When it published it (`None` before its first tick).
    pub published_at: Option<Instant>,
    /// When the API started: liveness counts from here until the first publish.
    pub started_at: Instant,
    pub now: Instant,
    pub primary: PrimaryPosition,
    /// `?lag=`, in bytes.
    pub max_lag: Option<u64>,
}

/// The body of every health endpoint: the verdict, why, and the node's state.
#[derive(Debug, Clone, Serialize)]
pub struct NodeHealth {
    pub check: &'static str,
    pub ok: bool,
    /// Why the check failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub uid: Option<String>,
    /// What postgres is doing: primary, standby, stopped or initializing.
    pub role: Option<ObservedRole>,
    /// `running` when postgres answers queries.
    pub state: &'static str,
    /// This node passes `/primary`.
    pub writable_primary: bool,
    pub streaming: bool,
    pub timeline: u32,
    /// The status generation the keeper last saw.
    pub generation: u64,
    /// The generation it has carried out.
    pub applied_generation: u64,
    /// The write position on a primary, the replayed one on a standby.
    pub lsn: Option<Lsn>,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// On a standby: how far replay is behind the primary.
    pub lag_bytes: Option<u64>,
    /// What `lag_bytes` was measured against.
    pub lag_source: Option<&'static str>,
    pub max_lag_bytes: Option<u64>,
    /// On the primary: how long its lease is still known valid.
    pub lease_remaining_ms: Option<u64>,
    /// Since the keeper loop last published.
    pub published_ms_ago: Option<u64>,
    /// What the keeper last failed to do.
    pub error: Option<String>,
}

/// Answers `check`.
pub fn evaluate(check: Check, inputs: &Inputs<'_>) -> NodeHealth {
    let lag = inputs.local.and_then(|l| replay_lag(l, inputs.primary));
    let verdict = match inputs.local {
        _ if check == Check::Liveness => live(inputs),
        None => Err("the keeper has not observed postgres yet".to_string()),
        Some(local) => match check {
            Check::Primary => writable_primary(local, inputs.now),
            Check::Replica => replica(local, lag, inputs.max_lag),
            Check::ReadOnly if local.report.role == ObservedRole::Primary => {
                writable_primary(local, inputs.now)
            }
            Check::ReadOnly => replica(local, lag, inputs.max_lag),
            Check::Health => running(local),
            Check::Readiness => ready(local, inputs.now, lag, inputs.max_lag),
            Check::Liveness => Ok(()),
        },
    };
    let report = inputs.local.map(|l| &l.report);
    NodeHealth {
        check: check.name(),
        ok: verdict.is_ok(),
        reason: verdict.err(),
        uid: report.map(|r| r.uid.clone()),
        role: report.map(|r| r.role),
        state: match report {
            Some(r) if r.healthy => "running",
            Some(r) if r.role == ObservedRole::Initializing => "initializing",
            Some(_) => "stopped",
            None => "unknown",
        },
        writable_primary: inputs
            .local
            .is_some_and(|l| writable_primary(l, inputs.now).is_ok()),
        streaming: report.is_some_and(|r| r.streaming),
        timeline: report.map_or(0, |r| r.timeline),
        generation: inputs.local.map_or(0, |l| l.generation),
        applied_generation: report.map_or(0, |r| r.applied_generation),
        lsn: report.and_then(|r| r.lsn()),
        receive_lsn: report.and_then(|r| r.receive_lsn),
        replay_lsn: report.and_then(|r| r.replay_lsn),
        lag_bytes: lag.map(|l| l.bytes),
        lag_source: lag.map(|l| l.source),
        max_lag_bytes: inputs.max_lag,
        lease_remaining_ms: inputs
            .local
            .and_then(|l| lease_remaining(l, inputs.now))
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        published_ms_ago: inputs
            .published_at
            .map(|t| u64::try_from((inputs.now - t).as_millis()).unwrap_or(u64::MAX)),
        error: report.and_then(|r| r.error.clone()),
    }
}

/// How long the primary lease is still known valid (`None` without one).
pub fn lease_remaining(local: &LocalState, now: Instant) -> Option<Duration> {
    local
        .lease_valid_until
        .map(|t| t.saturating_duration_since(now))
}

/// A standby's replay lag and what it was measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    pub bytes: u64,
    pub source: &'static str,
}

/// Replay lag against the furthest position known to exist on the primary:
/// its published write position, or what this standby already received
/// (which the primary has too, and which is fresher than the store when the
/// primary's report is a tick old). Without the store only the second is
/// left, and the body says so.
pub fn replay_lag(local: &LocalState, primary: PrimaryPosition) -> Option<Lag> {
    let r = &local.report;
    if r.role != ObservedRole::Standby {
        return None;
    }
    let replayed = r.replay_lsn?;
    let (reference, source) = match primary {
        PrimaryPosition::Store(Some(p)) => (
            Some(r.receive_lsn.map_or(p, |rx| rx.max(p))),
            "primary position in the store",
        ),
        PrimaryPosition::Store(None) => (
            r.receive_lsn,
            "received WAL only: no primary position in the store",
        ),
        PrimaryPosition::Unreachable => {
            (r.receive_lsn, "received WAL only: the store is unreachable")
        }
        PrimaryPosition::NotLoaded => (r.receive_lsn, "received WAL only"),
    };
    Some(Lag {
        bytes: replayed.lag_behind(reference.unwrap_or(replayed)),
        source,
    })
}

fn writable_primary(local: &LocalState, now: Instant) -> Result<(), String> {
    let r = &local.report;
    if !local.assigned_primary {
        return Err(format!(
            "not the assigned primary of generation {}",
            local.generation
        ));
    }
    if r.role != ObservedRole::Primary || !r.healthy {
        return Err("assigned primary, but postgres is not running as primary yet".into());
    }
    match local.lease_valid_until {
        Some(until) if until > now => Ok(()),
        Some(_) => Err("the primary lease could not be renewed in time".into()),
        None => Err("the primary lease is not held".into()),
    }
}

fn running(local: &LocalState) -> Result<(), String> {
    if local.report.healthy {
        Ok(())
    } else {
        Err(match &local.report.error {
            Some(e) => format!("postgres is not running: {e}"),
            None => "postgres is not running".into(),
        })
    }
}

fn streaming_standby(local: &LocalState) -> Result<(), String> {
    running(local)?;
    if local.report.role != ObservedRole::Standby {
        return Err("not a standby".into());
    }
    if !local.report.streaming {
        return Err("standby is not streaming from the primary".into());
    }
    Ok(())
}

fn within(lag: Option<Lag>, max_lag: Option<u64>) -> Result<(), String> {
    let Some(max) = max_lag else { return Ok(()) };
    match lag {
        Some(l) if l.bytes <= max => Ok(()),
        Some(l) => Err(format!("replay lag {} bytes exceeds {max}", l.bytes)),
        None => Err("replay position unknown".into()),
    }
}

fn replica(local: &LocalState, lag: Option<Lag>, max_lag: Option<u64>) -> Result<(), String> {
    streaming_standby(local)?;
    within(lag, max_lag)
}

/// Up and doing the assigned job: the writable primary, or a streaming
/// standby that has carried out the current generation.
fn ready(
    local: &LocalState,
    now: Instant,
    lag: Option<Lag>,
    max_lag: Option<u64>,
) -> Result<(), String> {
    running(local)?;
    if local.assigned_primary || local.report.role == ObservedRole::Primary {
        return writable_primary(local, now);
    }
    replica(local, lag, max_lag)?;
    if local.report.applied_generation < local.generation {
        return Err(format!(
            "generation {} not carried out yet (applied {})",
            local.generation, local.report.applied_generation
        ));
    }
    Ok(())
}

fn live(inputs: &Inputs<'_>) -> Result<(), String> {
    let since = inputs.published_at.unwrap_or(inputs.started_at);
    let quiet = inputs.now.saturating_duration_since(since);
    if quiet <= LIVENESS_WINDOW {
        Ok(())
    } else {
        Err(format!(
            "the keeper loop has not published for {}s",
            quiet.as_secs()
        ))
    }
}

/// Parses `?lag=`: bytes, or a number with a unit as postgres writes them
/// (`B`, `kB`, `MB`, `GB`, `TB`; powers of 1024, case-insensitive).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests;
