//! The alerts every cluster has unless the spec turns them off, with their
//! defaults. docs/alerts.md explains each choice.

use super::config::{Alert, AlertKind, Condition, Severity};
use super::metric::Metric;
use crate::spec::{Spec, SyncMode};

/// Names of the built-in alerts, in the order they are listed.
pub const BUILTIN_NAMES: [&str; 10] = [
    "member_gone",
    "no_sync_standby",
    "writes_blocked",
    "replication_lag",
    "failover",
    "rpo_exceeded",
    "slot_wal_retained",
    "store_unreachable",
    "lease_renewal_slow",
    "data_disk_free",
];

/// Default `rpo_exceeded` threshold until standby clusters carry their own
/// `rpo_target`.
pub const DEFAULT_RPO_SECONDS: f64 = 300.0;
/// `slot_wal_retained` fires at half of pgwarden's default
/// `max_slot_wal_keep_size` (8GB): half way to the slot being invalidated.
pub const SLOT_WAL_RETAINED_BYTES: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn threshold(
    name: &str,
    metric: Metric,
    condition: Condition,
    for_ms: u64,
    severity: Severity,
) -> Alert {
    Alert {
        name: name.to_string(),
        kind: AlertKind::Threshold { metric, condition },
        for_ms,
        severity,
        receivers: None,
        enabled: true,
    }
}

/// The built-in alerts for `spec`, before the operator's overrides.
pub fn builtins(spec: &Spec) -> Vec<Alert> {
    // The primary fences itself a third of the TTL before its lease
    // expires, renewing every quarter: a round trip of a sixth of the TTL
    // eats half of that margin.
    let lease_slow = spec.primary_lease_ttl.0.as_secs_f64() / 6.0;
    let lag = spec.max_lag_bytes as f64;
    let mut no_sync = threshold(
        "no_sync_standby",
        Metric::SyncStandbys,
        Condition::Below {
            fire: 1.0,
            clear: 1.0,
        },
        10_000,
        Severity::Critical,
    );
    no_sync.enabled = spec.sync_mode != SyncMode::Off;
    vec![
        threshold(
            "member_gone",
            Metric::MemberUp,
            Condition::Below {
                fire: 1.0,
                clear: 1.0,
            },
            30_000,
            Severity::Warning,
        ),
        no_sync,
        threshold(
            "writes_blocked",
            Metric::WritesBlocked,
            Condition::Above {
                fire: 0.0,
                clear: 0.0,
            },
            0,
            Severity::Critical,
        ),
        threshold(
            "replication_lag",
            Metric::ReplicationLagBytes,
            Condition::Above {
                fire: lag,
                clear: lag / 2.0,
            },
            30_000,
            Severity::Warning,
        ),
        Alert {
            name: "failover".into(),
            kind: AlertKind::Failover,
            for_ms: 0,
            severity: Severity::Warning,
            receivers: None,
            enabled: true,
        },
        threshold(
            "rpo_exceeded",
            Metric::RpoSeconds,
            Condition::Above {
                fire: DEFAULT_RPO_SECONDS,
                clear: DEFAULT_RPO_SECONDS * 0.8,
            },
            0,
            Severity::Critical,
        ),
        threshold(
            "slot_wal_retained",
            Metric::SlotRetainedWalBytes,
            Condition::Above {
                fire: SLOT_WAL_RETAINED_BYTES,
                clear: SLOT_WAL_RETAINED_BYTES - GIB,
            },
            60_000,
            Severity::Warning,
        ),
        threshold(
            "store_unreachable",
            Metric::StoreUnreachableMembers,
            Condition::Above {
                fire: 0.0,
                clear: 0.0,
            },
            30_000,
            Severity::Warning,
        ),
        threshold(
            "lease_renewal_slow",
            Metric::LeaseRenewalSeconds,
            Condition::Above {
                fire: lease_slow,
                clear: lease_slow / 2.0,
            },
            10_000,
            Severity::Warning,
        ),
        threshold(
            "data_disk_free",
            Metric::DataDiskFreePercent,
            Condition::Below {
                fire: 10.0,
                clear: 15.0,
            },
            60_000,
            Severity::Critical,
        ),
    ]
}
