//! Failover: deposing a failed primary (step 1) and promoting the best
//! standby once the old primary is proven gone (step 2). See the module docs
//! of `decide` and docs/failover.md.

use super::eligibility::{best_candidate, eligible, Candidate};
use super::*;
use crate::status::{GenerationExhausted, RequestOutcome};

/// Whether the primary has failed; if so, deposes it (step 1).
///
/// Nothing happens before the cluster's data exists (the first primary is
/// still being created) or while the operator has paused the cluster.
pub(super) fn check_primary(
    next: &mut Status,
    view: &ClusterView,
    primary: &str,
) -> Option<Reason> {
    next.system_id?;
    if view.spec.paused {
        return None;
    }
    let report = view.keepers.get(primary);
    let lease_held = view.primary_lease_holder.as_deref() == Some(primary);
    let settling = !next.primary_confirmed
        && view.now_ms.saturating_sub(next.primary_since_ms)
            < view.spec.promotion_timeout.as_millis();
    if settling {
        // Named but not yet holding the lease (initdb, crash recovery or
        // promotion under way): it has promotion_timeout to get there.
        return None;
    }
    // Postgres not answering under a live keeper that still holds the lease
    // (a promotion in progress answers, as a standby, and is not "down").
    let postgres_down = lease_held && report.is_some_and(|r| !r.healthy);
    let why = if !lease_held {
        "its primary lease is gone".to_string()
    } else if postgres_down && view.spec.on_postgres_crash == OnPostgresCrash::Failover {
        // Fail over only to a standby that is caught up; otherwise the
        // keeper restarts postgres in place.
        let candidate = best_candidate(next, view, primary)?;
        if candidate.lag > 0 {
            return None;
        }
        "its postgres is down and a caught-up standby exists".to_string()
    } else {
        return None;
    };
    let Some(candidate) = best_candidate(next, view, primary) else {
        return Some(Reason::NoCandidate {
            uid: primary.to_string(),
        });
    };
    if let Err(e) = next.new_term(view.now_ms) {
        return Some(e.into());
    }
    next.primary = None;
    next.deposed = Some(primary.to_string());
    next.members.insert(
        primary.to_string(),
        Assignment::Standby {
            follow: candidate.uid.clone(),
            host: candidate.host,
            port: candidate.port,
        },
    );
    Some(Reason::Deposed {
        uid: primary.to_string(),
        why,
    })
}

/// Step 2: promotes once the deposed primary is proven gone: nobody holds
/// the primary lease and every live proxy has applied the current (deposing)
/// generation. The node promoted is the request's target when there is one
/// (a switchover also waits until the target has received everything the old
/// primary wrote), else the best candidate. When nobody can take over but the
/// deposed primary's keeper is alive, the deposed primary is reinstated: a
/// cluster is never left without a primary that could have one.
pub(super) fn promote(next: &mut Status, view: &ClusterView) -> Reason {
    let deposed = next.deposed.clone().unwrap_or_default();
    if let Some(holder) = &view.primary_lease_holder {
        return Reason::WaitingForLease {
            holder: holder.clone(),
        };
    }
    let lagging: Vec<String> = view
        .proxies
        .iter()
        .filter(|(_, g)| **g < next.generation)
        .map(|(id, _)| id.clone())
        .collect();
    if !lagging.is_empty() {
        return Reason::WaitingForProxies { ids: lagging };
    }
    if super::sync::awaiting_fresh_positions(next, view)
        && view.now_ms.saturating_sub(next.primary_since_ms)
            < view.spec.promotion_timeout.as_millis()
    {
        return Reason::WaitingForPositions;
    }
    let chosen = match next.target.clone() {
        Some(t) if eligible(next, view, &t, next.target_forced).is_ok() => {
            let r = &view.keepers[&t];
            // The old primary's last report (after its clean shutdown, the
            // shutdown checkpoint) must be covered by what the target received.
            let old_end = view
                .keepers
                .get(&deposed)
                .filter(|d| d.role == ObservedRole::Stopped)
                .and_then(|d| d.current_lsn);
            let old_running = view.keepers.get(&deposed).is_some_and(|d| d.healthy);
            if !next.target_forced
                && (old_running
                    || old_end.is_some_and(|end| r.received_lsn().unwrap_or_default() <= end))
            {
                if view.now_ms.saturating_sub(next.primary_since_ms)
                    < view.spec.promotion_timeout.as_millis()
                {
                    return Reason::WaitingForCatchUp { uid: t };
                }
                None
            } else {
                Some(Candidate {
                    uid: t.clone(),
                    host: r.pg_host.clone(),
                    port: r.pg_port,
                    lag: 0,
                })
            }
        }
        _ => None,
    };
    let chosen = chosen.or_else(|| best_candidate(next, view, &deposed));
    let Some(c) = chosen else {
        if view
            .keepers
            .get(&deposed)
            .is_some_and(|r| usable(r) && r.system_id == next.system_id)
        {
            if let Some(t) = next.target.take() {
                next.request_outcome = Some(RequestOutcome::Failed {
                    why: format!("{t} could not take over; {deposed} stays primary"),
                });
            }
            if let Err(e) = name_primary(next, view, &deposed) {
                return e.into();
            }
            return Reason::Reinstated { uid: deposed };
        }
        return Reason::NoCandidate { uid: deposed };
    };
    let outcome = next.target.take().map(|_| RequestOutcome::Done {
        primary: c.uid.clone(),
        was: deposed.clone(),
    });
    if let Err(e) = name_primary(next, view, &c.uid) {
        return e.into();
    }
    if outcome.is_some() {
        next.request_outcome = outcome;
    }
    Reason::Promoted {
        uid: c.uid,
        from: deposed,
    }
}

/// Names `uid` primary in a new generation; every other member follows it.
fn name_primary(
    next: &mut Status,
    view: &ClusterView,
    uid: &str,
) -> Result<(), GenerationExhausted> {
    let (host, port) = view
        .keepers
        .get(uid)
        .map(|r| (r.pg_host.clone(), r.pg_port))
        .unwrap_or_default();
    next.new_term(view.now_ms)?;
    next.primary = Some(uid.to_string());
    next.deposed = None;
    next.target = None;
    next.target_forced = false;
    super::sync::after_promotion(next, &view.spec, uid);
    for (member, a) in next.members.iter_mut() {
        *a = if member == uid {
            Assignment::Primary
        } else {
            Assignment::Standby {
                follow: uid.to_string(),
                host: host.clone(),
                port,
            }
        };
    }
    Ok(())
}
