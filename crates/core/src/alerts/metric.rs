//! The values alerts can watch: what each measures, whether it is per
//! member or per cluster, and its Prometheus counterpart for
//! `ctl alerts prometheus-rules`. One list, used by validation, by the
//! measurement and by the rules file.

/// A measured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// 1 while the member's keeper reports and its postgres is up (or being
    /// created), 0 otherwise. Per member.
    MemberUp,
    /// A standby's replay position behind the primary's write position, in
    /// bytes. Per member (standbys).
    ReplicationLagBytes,
    /// The largest WAL a replication slot on the member holds back, in bytes.
    SlotRetainedWalBytes,
    /// Standbys the status counts as synchronous. Cluster.
    SyncStandbys,
    /// 1 when commits wait: strict mode and no synchronous standby. Cluster.
    WritesBlocked,
    /// Round trip of the primary's last lease renewal, in seconds. Per member.
    LeaseRenewalSeconds,
    /// Free space on the member's data directory's file system, in percent.
    DataDiskFreePercent,
    /// etcd members the leader sentinel cannot reach. Cluster.
    StoreUnreachableMembers,
    /// How far a standby cluster is behind its source, in seconds. Cluster;
    /// measured only on a standby cluster.
    RpoSeconds,
}

/// Whether a value exists once per member or once per cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One value per keeper uid.
    Member,
    /// One value.
    Cluster,
}

const ALL: [Metric; 9] = [
    Metric::MemberUp,
    Metric::ReplicationLagBytes,
    Metric::SlotRetainedWalBytes,
    Metric::SyncStandbys,
    Metric::WritesBlocked,
    Metric::LeaseRenewalSeconds,
    Metric::DataDiskFreePercent,
    Metric::StoreUnreachableMembers,
    Metric::RpoSeconds,
];

impl Metric {
    /// The name used in `metric = "..."`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::MemberUp => "member_up",
            Metric::ReplicationLagBytes => "replication_lag_bytes",
            Metric::SlotRetainedWalBytes => "slot_retained_wal_bytes",
            Metric::SyncStandbys => "sync_standbys",
            Metric::WritesBlocked => "writes_blocked",
            Metric::LeaseRenewalSeconds => "lease_renewal_seconds",
            Metric::DataDiskFreePercent => "data_disk_free_percent",
            Metric::StoreUnreachableMembers => "store_unreachable_members",
            Metric::RpoSeconds => "rpo_seconds",
        }
    }

    /// Every metric's name, for error messages.
    pub fn names() -> Vec<&'static str> {
        ALL.iter().map(|m| m.name()).collect()
    }

    /// The metric called `name`.
    pub fn from_name(name: &str) -> Option<Metric> {
        ALL.into_iter().find(|m| m.name() == name)
    }

    /// Per member or per cluster.
    pub fn scope(self) -> Scope {
        match self {
            Metric::MemberUp
            | Metric::ReplicationLagBytes
            | Metric::SlotRetainedWalBytes
            | Metric::LeaseRenewalSeconds
            | Metric::DataDiskFreePercent => Scope::Member,
            Metric::SyncStandbys
            | Metric::WritesBlocked
            | Metric::StoreUnreachableMembers
            | Metric::RpoSeconds => Scope::Cluster,
        }
    }

    /// The PromQL expression over the keepers' `/metrics` that measures the
    /// same thing, labelled by `cluster` (and `uid` per member); `None` when
    /// only the sentinel sees it. Every keeper exports the cluster metrics,
    /// hence the `max by`.
    pub fn promql(self, cluster: &str) -> Option<String> {
        let sel = format!(
            "{{cluster=\"{}\"}}",
            cluster.replace('\\', "\\\\").replace('"', "\\\"")
        );
        Some(match self {
            Metric::MemberUp => format!("min by (cluster, uid) (pgwarden_postgres_up{sel})"),
            Metric::ReplicationLagBytes => {
                format!("max by (cluster, uid) (pgwarden_standby_lag_bytes{sel})")
            }
            Metric::SlotRetainedWalBytes => {
                format!("max by (cluster, uid) (pgwarden_slot_retained_wal_bytes{sel})")
            }
            Metric::SyncStandbys => format!("max by (cluster) (pgwarden_cluster_sync_standbys{sel})"),
            Metric::WritesBlocked => format!("max by (cluster) (pgwarden_cluster_writes_blocked{sel})"),
            Metric::LeaseRenewalSeconds => {
                format!("max by (cluster, uid) (pgwarden_primary_lease_renewal_seconds{sel})")
            }
            Metric::DataDiskFreePercent => format!(
                "100 * min by (cluster, uid) (pgwarden_data_disk_free_bytes{sel} / pgwarden_data_disk_size_bytes{sel})"
            ),
            Metric::StoreUnreachableMembers | Metric::RpoSeconds => return None,
        })
    }
}
