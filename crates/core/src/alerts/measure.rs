//! The values alerts watch, taken from what the leader sentinel already
//! reads each round: the keepers' reports, the status and the spec, plus
//! the one fact only the sentinel sees (how many etcd members it reaches).

use std::collections::BTreeMap;

use super::metric::{Metric, Scope};
use crate::report::{KeeperReport, ObservedRole};
use crate::spec::{Spec, SyncMode};
use crate::status::Status;

/// What one round measured: for each metric, the value per member (key
/// `Some(uid)`) or for the cluster (key `None`). A member that is listed
/// with `None` has no value this round (a standby whose position is not
/// known yet): its alerts hold their state. A member that is not listed at
/// all is no longer part of the cluster: its alerts resolve.
pub type Measured = BTreeMap<(Metric, Option<String>), Option<f64>>;

/// The inputs of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The spec.
    pub spec: &'a Spec,
    /// The status the round read.
    pub status: &'a Status,
    /// Live keepers' reports.
    pub keepers: &'a BTreeMap<String, KeeperReport>,
    /// etcd members the sentinel could not reach (`None`: not probed yet).
    pub store_unreachable_members: Option<u64>,
    /// On a standby cluster: seconds behind its source. Always `None` until
    /// standby clusters exist, which keeps `rpo_exceeded` inert.
    pub rpo_seconds: Option<f64>,
}

/// Measures every metric.
pub fn measure(f: &Facts<'_>) -> Measured {
    let mut m = Measured::new();
    // Members are the keepers the status assigns a role: a keeper that
    // reports but was not given one yet is not part of the cluster.
    let members: std::collections::BTreeSet<&String> = f.status.members.keys().collect();
    let primary_lsn = f
        .status
        .primary
        .as_ref()
        .and_then(|p| f.keepers.get(p))
        .filter(|r| r.role == ObservedRole::Primary)
        .and_then(|r| r.current_lsn);
    for uid in members {
        let report = f.keepers.get(uid);
        // Up: postgres answers, or it is still being created (initdb or a
        // base backup running, no data directory yet). Gone: no report (the
        // keeper or its host is down), or postgres down on existing data.
        let up = report.is_some_and(|r| {
            r.healthy
                || r.role == ObservedRole::Initializing
                || (r.role == ObservedRole::Stopped && r.system_id.is_none())
        });
        let mut put = |metric: Metric, v: Option<f64>| {
            m.insert((metric, Some(uid.clone())), v);
        };
        put(Metric::MemberUp, Some(if up { 1.0 } else { 0.0 }));
        let is_primary = f.status.primary.as_ref() == Some(uid);
        let lag = match (report, primary_lsn) {
            _ if is_primary => None,
            (Some(r), Some(p)) if r.role == ObservedRole::Standby => r
                .replay_lsn
                .or(r.receive_lsn)
                .map(|l| p.0.saturating_sub(l.0) as f64),
            _ => None,
        };
        put(Metric::ReplicationLagBytes, lag);
        put(
            Metric::SlotRetainedWalBytes,
            report
                .and_then(|r| r.slot_retained_wal_bytes)
                .map(|b| b as f64),
        );
        put(
            Metric::LeaseRenewalSeconds,
            report
                .filter(|_| is_primary)
                .and_then(|r| r.lease_renewal_us)
                .map(|us| us as f64 / 1e6),
        );
        put(
            Metric::DataDiskFreePercent,
            report.and_then(|r| match (r.data_disk_free_bytes, r.data_disk_size_bytes) {
                (Some(free), Some(size)) if size > 0 => Some(100.0 * free as f64 / size as f64),
                _ => None,
            }),
        );
    }
    let cluster = |metric: Metric, v: Option<f64>, m: &mut Measured| {
        debug_assert_eq!(metric.scope(), Scope::Cluster);
        m.insert((metric, None), v);
    };
    let sync = f.status.sync_standbys.len() as f64;
    cluster(
        Metric::SyncStandbys,
        (f.spec.sync_mode != SyncMode::Off).then_some(sync),
        &mut m,
    );
    let blocked = f.spec.sync_mode == SyncMode::Strict
        && f.status.primary.is_some()
        && f.status.sync_standbys.is_empty();
    cluster(
        Metric::WritesBlocked,
        Some(if blocked { 1.0 } else { 0.0 }),
        &mut m,
    );
    cluster(
        Metric::StoreUnreachableMembers,
        f.store_unreachable_members.map(|n| n as f64),
        &mut m,
    );
    if let Some(rpo) = f.rpo_seconds {
        cluster(Metric::RpoSeconds, Some(rpo), &mut m);
    }
    m
}
