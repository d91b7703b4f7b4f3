//! `/metrics`: the node and the cluster in the Prometheus text format.
//!
//! Rendering is a pure function of what the keeper published, of the
//! decisions it counted and of a store snapshot, like the health checks, so
//! it is tested without a server. Node metrics carry `cluster` and `uid`
//! labels; cluster metrics (the same on every keeper, read from the store)
//! carry `cluster`. Values the keeper does not know (an LSN before postgres
//! ran) are left out rather than reported as zero, so a graph shows a gap
//! instead of a false drop. The list, with what each means, is in
//! docs/metrics.md.

use pgwarden_core::ObservedRole;

use super::decisions::{self, Counts, RoleChange, RECORDED_REASONS};
use super::health::{self, Check, Inputs};
use crate::exposition::{flag, Exposition, Kind};
use crate::view::Snapshot;

/// Renders every metric. `snapshot` is `None` when the store could not be read.
pub fn render(
    cluster: &str,
    uid: &str,
    inputs: &Inputs<'_>,
    decisions: &Counts,
    snapshot: Option<&Snapshot>,
) -> String {
    let mut e = Exposition::new();
    let node = [("cluster", cluster), ("uid", uid)];
    node_metrics(&mut e, &node, inputs);
    lease_metrics(&mut e, &node, inputs);
    decision_metrics(&mut e, &node, decisions);
    e.gauge(
        "pgwarden_store_up",
        "1 when this keeper's API could read the cluster from etcd.",
        &node,
        Some(flag(snapshot.is_some())),
    );
    if let Some(snap) = snapshot {
        cluster_metrics(&mut e, cluster, snap);
    }
    e.finish()
}

fn node_metrics(e: &mut Exposition, node: &[(&str, &str)], inputs: &Inputs<'_>) {
    let local = inputs.local;
    let report = local.map(|l| &l.report);
    e.gauge(
        "pgwarden_info",
        "Constant 1, labelled with the pgwarden version.",
        &[node, &[("version", env!("CARGO_PKG_VERSION"))]].concat(),
        Some(1),
    );
    e.family(
        "pgwarden_role",
        Kind::Gauge,
        "1 for the role postgres is observed in, 0 for the others.",
    );
    for (role, name) in [
        (ObservedRole::Primary, "primary"),
        (ObservedRole::Standby, "standby"),
        (ObservedRole::Stopped, "stopped"),
        (ObservedRole::Initializing, "initializing"),
    ] {
        let on = report.is_some_and(|r| r.role == role);
        e.sample(&[node, &[("role", name)]].concat(), flag(on));
    }
    e.family(
        "pgwarden_slot_retained_wal_bytes",
        Kind::Gauge,
        "WAL bytes each replication slot on this node holds back (bounded by max_slot_wal_keep_size).",
    );
    for (slot, bytes) in local.map(|l| &l.slot_retained_bytes).into_iter().flatten() {
        e.sample(&[node, &[("slot", slot.as_str())]].concat(), bytes);
    }
    let passes = |check| health::evaluate(check, inputs).ok;
    e.gauge(
        "pgwarden_primary",
        "1 when this node is the writable primary of the current generation (/primary answers 200).",
        node,
        Some(flag(passes(Check::Primary))),
    );
    e.gauge(
        "pgwarden_replica",
        "1 when this node is a healthy streaming standby (/replica answers 200).",
        node,
        Some(flag(passes(Check::Replica))),
    );
    e.gauge(
        "pgwarden_postgres_up",
        "1 when postgres answers queries.",
        node,
        Some(flag(report.is_some_and(|r| r.healthy))),
    );
    e.gauge(
        "pgwarden_postgres_streaming",
        "1 when this standby's WAL receiver is streaming.",
        node,
        Some(flag(report.is_some_and(|r| r.streaming))),
    );
    e.gauge(
        "pgwarden_postgres_timeline",
        "Timeline postgres is on.",
        node,
        report.map(|r| r.timeline).filter(|t| *t > 0),
    );
    e.gauge(
        "pgwarden_wal_current_lsn_bytes",
        "Primary: current WAL write position, in bytes.",
        node,
        report
            .filter(|r| r.role == ObservedRole::Primary)
            .and_then(|r| r.current_lsn)
            .map(|l| l.0),
    );
    e.gauge(
        "pgwarden_wal_received_lsn_bytes",
        "Standby: last WAL position received, in bytes.",
        node,
        report.and_then(|r| r.receive_lsn).map(|l| l.0),
    );
    e.gauge(
        "pgwarden_wal_replayed_lsn_bytes",
        "Standby: last WAL position replayed, in bytes.",
        node,
        report.and_then(|r| r.replay_lsn).map(|l| l.0),
    );
    e.gauge(
        "pgwarden_replay_lag_bytes",
        "Standby: how far replay is behind the primary's position, in bytes.",
        node,
        local
            .and_then(|l| health::replay_lag(l, inputs.primary))
            .map(|l| l.bytes),
    );
    e.gauge(
        "pgwarden_generation",
        "The status generation this keeper last saw.",
        node,
        local.map(|l| l.generation),
    );
    e.gauge(
        "pgwarden_applied_generation",
        "The status generation this keeper has carried out.",
        node,
        report.map(|r| r.applied_generation),
    );
    e.gauge(
        "pgwarden_primary_lease_remaining_seconds",
        "How long this keeper's primary lease is still known valid (0 without one).",
        node,
        local.map(|l| {
            health::lease_remaining(l, inputs.now)
                .unwrap_or_default()
                .as_secs_f64()
        }),
    );
    e.gauge(
        "pgwarden_keeper_publish_age_seconds",
        "Seconds since the keeper loop last published its state.",
        node,
        inputs
            .published_at
            .map(|t| inputs.now.saturating_duration_since(t).as_secs_f64()),
    );
}

/// The primary lease's renewals: how close they run to its fencing margin.
fn lease_metrics(e: &mut Exposition, node: &[(&str, &str)], inputs: &Inputs<'_>) {
    let local = inputs.local;
    let renewals = local
        .map(|l| l.lease_renewals.summary())
        .unwrap_or_default();
    e.gauge(
        "pgwarden_primary_lease_renewal_seconds",
        "Round trip of the last successful renewal of this keeper's primary lease (present while it holds one and has renewed it).",
        node,
        local
            .filter(|l| l.lease_valid_until.is_some())
            .and(renewals.last)
            .map(|d| d.as_secs_f64()),
    );
    e.counter(
        "pgwarden_primary_lease_renewals_total",
        "Successful renewals of this keeper's primary lease.",
        node,
        renewals.succeeded,
    );
    e.counter(
        "pgwarden_primary_lease_renewals_seconds_total",
        "Sum of the round trips of the successful renewals counted by pgwarden_primary_lease_renewals_total.",
        node,
        renewals.total.as_secs_f64(),
    );
    e.counter(
        "pgwarden_primary_lease_renewal_failures_total",
        "Renewals of this keeper's primary lease that did not extend it (request failed, or etcd no longer knew the lease).",
        node,
        renewals.failed,
    );
}

/// What this keeper saw the sentinel decide since it started.
fn decision_metrics(e: &mut Exposition, node: &[(&str, &str)], counts: &Counts) {
    e.family(
        "pgwarden_decisions_total",
        Kind::Counter,
        "Sentinel decisions that changed the generation, by reason, counted from the status history as this keeper saw it since it started.",
    );
    let mut reasons = counts.by_reason.clone();
    for r in RECORDED_REASONS {
        reasons.entry(r).or_default();
    }
    for (reason, n) in reasons {
        e.sample(&[node, &[("reason", reason)]].concat(), n);
    }
    e.counter(
        "pgwarden_failovers_total",
        "Failovers (a standby promoted after the primary was deposed, not by ctl switchover) this keeper saw completed since it started.",
        node,
        counts.failovers,
    );
    e.counter(
        "pgwarden_switchovers_total",
        "Switchovers (ctl switchover) this keeper saw completed, with the target promoted, since it started.",
        node,
        counts.switchovers,
    );
}

fn cluster_metrics(e: &mut Exposition, cluster: &str, snap: &Snapshot) {
    let c = [("cluster", cluster)];
    let status = &snap.status;
    e.gauge(
        "pgwarden_cluster_generation",
        "The cluster status generation (bumped on every role change).",
        &c,
        Some(status.generation),
    );
    e.gauge(
        "pgwarden_cluster_members",
        "Keepers the status assigns a role.",
        &c,
        Some(status.members.len()),
    );
    e.gauge(
        "pgwarden_cluster_keepers_reporting",
        "Keepers with a live report in the store.",
        &c,
        Some(snap.keepers.len()),
    );
    e.gauge(
        "pgwarden_cluster_members_healthy",
        "Keepers reporting postgres up.",
        &c,
        Some(snap.keepers.values().filter(|r| r.healthy).count()),
    );
    e.gauge(
        "pgwarden_cluster_has_primary",
        "1 when a primary is assigned and holds the primary lease.",
        &c,
        Some(flag(
            status.primary.is_some() && snap.primary_holder == status.primary,
        )),
    );
    e.gauge(
        "pgwarden_cluster_paused",
        "1 when automatic failover is paused.",
        &c,
        Some(flag(snap.spec.as_ref().is_some_and(|s| s.paused))),
    );
    e.gauge(
        "pgwarden_cluster_timeline",
        "The primary's timeline as the status records it.",
        &c,
        Some(status.timeline),
    );
    e.gauge(
        "pgwarden_cluster_proxies",
        "Proxies with a live registration.",
        &c,
        Some(snap.proxies.len()),
    );
    let json = crate::read_model::to_json(cluster, snap);
    e.gauge(
        "pgwarden_cluster_sync_standbys",
        "Standbys the status counts as synchronous (sync_mode on or strict).",
        &c,
        Some(json.sync_standbys.len()),
    );
    e.gauge(
        "pgwarden_cluster_writes_blocked",
        "1 when commits wait: strict synchronous mode with no synchronous standby.",
        &c,
        Some(flag(json.writes_blocked)),
    );
    e.family(
        "pgwarden_standby_lag_bytes",
        Kind::Gauge,
        "Per standby: replayed position behind the primary's, in bytes.",
    );
    for m in json.members.iter().filter(|m| m.role == "standby") {
        if let Some(lag) = m.lag_bytes {
            e.sample(&[("cluster", cluster), ("uid", m.uid.as_str())], lag);
        }
    }
    // The history keeps the last decisions only, so these are gauges over
    // what it holds; the generation is the monotonic count of role changes.
    e.family(
        "pgwarden_cluster_recent_decisions",
        Kind::Gauge,
        "Role changes in the status history, by what they did to the primary.",
    );
    let mut kinds = [
        ("initial", 0u64),
        ("promotion", 0),
        ("deposal", 0),
        ("reassignment", 0),
    ];
    for h in &status.history {
        let kind = match (&h.old_primary, &h.new_primary) {
            (None, Some(_)) => 0,
            (Some(a), Some(b)) if a != b => 1,
            (Some(_), None) => 2,
            _ => 3,
        };
        kinds[kind].1 += 1;
    }
    for (kind, n) in kinds {
        e.sample(&[("cluster", cluster), ("kind", kind)], n);
    }
    e.gauge(
        "pgwarden_cluster_last_decision_timestamp_seconds",
        "When the sentinel last changed a role (Unix time).",
        &c,
        status.history.last().map(|h| h.at_ms as f64 / 1000.0),
    );
    e.family(
        "pgwarden_cluster_last_failover_duration_seconds",
        Kind::Gauge,
        "Seconds from the decision that deposed the old primary to the new primary holding the primary lease (for an older one: to its promotion decision), for the last failover and the last switchover in the status history (sentinel's clock).",
    );
    for (kind, took) in decisions::last_durations(status) {
        let kind = match kind {
            RoleChange::Failover => "failover",
            RoleChange::Switchover => "switchover",
        };
        e.sample(&[("cluster", cluster), ("kind", kind)], took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests;
