//! Operator requests: `ctl switchover` and `ctl failover --to` only write a
//! request into the spec; this is the one code path that carries them out,
//! through the same two steps as an automatic failover (depose, then
//! promote), with the chosen node as the target.

use super::eligibility::{best_candidate, eligible};
use super::*;
use crate::spec::{RequestKind, RoleRequest};
use crate::status::RequestOutcome;

/// Starts (or refuses) a new request; `None` when there is none.
pub(super) fn handle_request(next: &mut Status, view: &ClusterView) -> Option<Reason> {
    let req = view.spec.request.as_ref()?;
    if req.id <= next.handled_request {
        return None;
    }
    next.handled_request = req.id;
    let target = match check(next, view, req) {
        Ok(t) => t,
        Err(why) => {
            next.request_outcome = Some(RequestOutcome::Refused { why: why.clone() });
            return Some(Reason::RequestRefused { id: req.id, why });
        }
    };
    if let Err(e) = next.new_term(view.now_ms) {
        return Some(e.into());
    }
    let from = next.primary.take();
    if let Some(old) = &from {
        next.deposed = Some(old.clone());
        if let Some(r) = view.keepers.get(&target) {
            next.members.insert(
                old.clone(),
                Assignment::Standby {
                    follow: target.clone(),
                    host: r.pg_host.clone(),
                    port: r.pg_port,
                },
            );
        }
    }
    next.target = Some(target.clone());
    next.target_forced = req.force;
    let kind = kind_name(req.kind);
    next.request_outcome = Some(RequestOutcome::InProgress {
        kind: kind.to_string(),
        target: target.clone(),
    });
    Some(Reason::RoleChangeStarted {
        kind: kind.to_string(),
        from: from.or(next.deposed.clone()),
        to: target,
    })
}

fn kind_name(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Switchover => "switchover",
        RequestKind::Failover => "failover",
    }
}

/// Validates a request; the target to promote, or why not.
fn check(next: &Status, view: &ClusterView, req: &RoleRequest) -> Result<String, String> {
    if next.system_id.is_none() {
        return Err("the cluster has no data yet".into());
    }
    let primary = next.primary.as_deref();
    let primary_healthy = primary.is_some_and(|p| {
        next.primary_confirmed
            && view.primary_lease_holder.as_deref() == Some(p)
            && view
                .keepers
                .get(p)
                .is_some_and(|r| r.healthy && r.role == ObservedRole::Primary)
    });
    match req.kind {
        RequestKind::Switchover => {
            if next.deposed.is_some() || next.target.is_some() {
                return Err("a failover is in progress".into());
            }
            if !primary_healthy {
                return Err(
                    "the cluster has no healthy primary: use `pgwarden ctl failover --to UID`"
                        .into(),
                );
            }
        }
        RequestKind::Failover => {
            if primary_healthy && !req.force {
                return Err(format!(
                    "primary {} is healthy: use `pgwarden ctl switchover` (no write is lost that way)",
                    primary.unwrap_or_default()
                ));
            }
        }
    }
    let exclude = primary.or(next.deposed.as_deref()).unwrap_or_default();
    let Some(to) = req.to.clone() else {
        return best_candidate(next, view, exclude)
            .map(|c| c.uid)
            .ok_or_else(|| {
                "no standby is eligible (healthy, streaming, on the timeline, within max_lag_bytes)"
                    .into()
            });
    };
    eligible(next, view, &to, req.force).map(|_| to)
}
