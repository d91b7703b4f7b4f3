//! The proxy's routing decision: where new client connections go.
//!
//! [`route`] is a pure function of one store snapshot, so the proxy loop only
//! carries it out (open, keep or cut connections) and every rule is a unit
//! test. The rules lean towards refusing: a client whose connection is closed
//! retries, a client routed to a node that is no longer primary may write
//! where nobody will ever read it.
//!
//! - The primary port routes to `status.primary` only while that keeper holds
//!   the primary lease and reports postgres serving as a healthy primary. The
//!   lease, not the status, proves that the node may accept writes (its
//!   keeper releases the lease when it steps down, and loses it when it dies
//!   or is cut off); the report says it actually does: the keeper takes the
//!   lease *before* it starts or promotes postgres.
//! - The read-only port balances over assigned standbys that report
//!   themselves running in recovery, healthy, and no further behind than
//!   `spec.max_lag_bytes`. It never falls back to the primary.

use std::collections::BTreeMap;
use std::fmt;

use crate::lsn::Lsn;
use crate::report::{KeeperReport, ObservedRole};
use crate::spec::Spec;
use crate::status::{Assignment, Status};

/// A postgres node a client connection can be relayed to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// The keeper's uid.
    pub uid: String,
    /// The address its postgres listens on.
    pub host: String,
    /// Its postgres port.
    pub port: u16,
}

impl Backend {
    fn of(report: &KeeperReport) -> Backend {
        Backend {
            uid: report.uid.clone(),
            host: report.pg_host.clone(),
            port: report.pg_port,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{} at [{}]:{}", self.uid, self.host, self.port)
        } else {
            write!(f, "{} at {}:{}", self.uid, self.host, self.port)
        }
    }
}

/// Why the primary port has nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPrimary {
    /// The sentinel has not assigned a primary (bring-up, or a failover in
    /// progress).
    NotAssigned,
    /// The assigned primary does not hold the primary lease (it is starting,
    /// stepping down, or dead).
    LeaseNotHeld {
        /// The assigned primary.
        assigned: String,
    },
    /// Another keeper holds the primary lease than the one assigned.
    LeaseHeldByOther {
        /// The assigned primary.
        assigned: String,
        /// The lease holder.
        holder: String,
    },
    /// The assigned primary holds the lease but its report, which carries
    /// its address, is missing.
    NoReport {
        /// The assigned primary.
        assigned: String,
    },
    /// The assigned primary holds the lease but does not report postgres
    /// running, healthy, as a primary: it takes the lease before it starts
    /// or promotes postgres, and a session opened meanwhile would fail or be
    /// read-only.
    NotServing {
        /// The assigned primary.
        assigned: String,
        /// What its keeper reports postgres doing.
        role: ObservedRole,
        /// Whether postgres answers.
        healthy: bool,
    },
}

impl fmt::Display for NoPrimary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoPrimary::NotAssigned => write!(f, "no primary is assigned"),
            NoPrimary::LeaseNotHeld { assigned } => write!(
                f,
                "primary {assigned} does not hold the primary lease: starting, stepping down or gone"
            ),
            NoPrimary::LeaseHeldByOther { assigned, holder } => write!(
                f,
                "primary {assigned} is assigned but {holder} holds the primary lease"
            ),
            NoPrimary::NoReport { assigned } => {
                write!(f, "primary {assigned} has no report: its address is unknown")
            }
            NoPrimary::NotServing {
                assigned,
                role,
                healthy,
            } => write!(
                f,
                "primary {assigned} holds the lease but its postgres is not serving as primary yet (reported {}, {})",
                match role {
                    ObservedRole::Primary => "primary",
                    ObservedRole::Standby => "standby",
                    ObservedRole::Stopped => "stopped",
                    ObservedRole::Initializing => "initializing",
                },
                if *healthy { "healthy" } else { "unhealthy" }
            ),
        }
    }
}

/// Where new connections go, for one status generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    /// The status generation these routes carry out.
    pub generation: u64,
    /// Target of the primary port.
    pub primary: Option<Backend>,
    /// Why `primary` is `None` (always `Some` exactly when it is), for the
    /// proxy's log.
    pub no_primary: Option<NoPrimary>,
    /// Targets of the read-only port, ordered by uid.
    pub read_only: Vec<Backend>,
}

/// Computes the routes from one snapshot of the store.
///
/// `primary_holder` is the uid stored under the primary lease key, if any.
pub fn route(
    status: &Status,
    keepers: &BTreeMap<String, KeeperReport>,
    primary_holder: Option<&str>,
    spec: &Spec,
) -> Routes {
    let (primary, no_primary) = match primary(status, keepers, primary_holder) {
        Ok(backend) => (Some(backend), None),
        Err(why) => (None, Some(why)),
    };
    Routes {
        generation: status.generation,
        primary,
        no_primary,
        read_only: read_only(status, keepers, spec),
    }
}

fn primary(
    status: &Status,
    keepers: &BTreeMap<String, KeeperReport>,
    holder: Option<&str>,
) -> Result<Backend, NoPrimary> {
    let assigned = status.primary.as_deref().ok_or(NoPrimary::NotAssigned)?;
    match holder {
        None => Err(NoPrimary::LeaseNotHeld {
            assigned: assigned.to_string(),
        }),
        Some(h) if h != assigned => Err(NoPrimary::LeaseHeldByOther {
            assigned: assigned.to_string(),
            holder: h.to_string(),
        }),
        Some(_) => match keepers.get(assigned) {
            None => Err(NoPrimary::NoReport {
                assigned: assigned.to_string(),
            }),
            Some(r) if r.role == ObservedRole::Primary && r.healthy => Ok(Backend::of(r)),
            Some(r) => Err(NoPrimary::NotServing {
                assigned: assigned.to_string(),
                role: r.role,
                healthy: r.healthy,
            }),
        },
    }
}

/// The position read-only lag is measured against: the primary's write
/// position when it reports one; otherwise (no primary, as during a failover)
/// the most advanced position any standby has received, so that caught-up
/// standbys keep serving reads while there is no primary to compare with.
fn reference_lsn(status: &Status, keepers: &BTreeMap<String, KeeperReport>) -> Option<Lsn> {
    let from_primary = status
        .primary
        .as_deref()
        .and_then(|p| keepers.get(p))
        .filter(|r| r.role == ObservedRole::Primary)
        .and_then(|r| r.current_lsn);
    from_primary.or_else(|| {
        keepers
            .values()
            .filter(|r| r.role == ObservedRole::Standby)
            .filter_map(KeeperReport::received_lsn)
            .max()
    })
}

fn read_only(
    status: &Status,
    keepers: &BTreeMap<String, KeeperReport>,
    spec: &Spec,
) -> Vec<Backend> {
    let Some(reference) = reference_lsn(status, keepers) else {
        return Vec::new();
    };
    status
        .members
        .iter()
        .filter(|(uid, a)| {
            matches!(a, Assignment::Standby { .. }) && status.primary.as_deref() != Some(uid)
        })
        .filter_map(|(uid, _)| keepers.get(uid))
        .filter(|r| r.role == ObservedRole::Standby && r.healthy)
        .filter(|r| {
            r.replay_lsn
                .is_some_and(|l| l.lag_behind(reference) <= spec.max_lag_bytes)
        })
        .map(Backend::of)
        .collect()
}

#[cfg(test)]
mod tests;
