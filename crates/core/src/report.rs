//! What each keeper publishes about itself under `keepers/<uid>`.
//!
//! The report is attached to the keeper's lease, so it vanishes when the keeper
//! dies: the sentinel treats "no report" as "keeper gone" without any timeout
//! logic of its own.

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

/// The role postgres is actually in, as the keeper observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedRole {
    /// Running and accepting writes.
    Primary,
    /// Running in recovery.
    Standby,
    /// Not running, or not answering.
    Stopped,
    /// Being created (initdb or base backup in progress).
    Initializing,
}

/// One keeper's view of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperReport {
    /// The keeper's stable identity.
    pub uid: String,
    /// Address other nodes and proxies use to reach this postgres.
    pub pg_host: String,
    /// Port of this postgres.
    pub pg_port: u16,
    /// Base URL of this keeper's HTTP API.
    pub api_url: String,
    /// What postgres is doing now.
    pub role: ObservedRole,
    /// Postgres answers queries.
    pub healthy: bool,
    /// Timeline postgres is on (0 when unknown).
    pub timeline: u32,
    /// On a primary: the current write position.
    pub current_lsn: Option<Lsn>,
    /// On a standby: the last position received from the primary.
    pub receive_lsn: Option<Lsn>,
    /// On a standby: the last position replayed.
    pub replay_lsn: Option<Lsn>,
    /// On a standby: its WAL receiver is streaming.
    pub streaming: bool,
    /// System identifier of the data directory, once it exists.
    #[serde(with = "opt_u64_string")]
    pub system_id: Option<u64>,
    /// `server_version_num` of postgres, once known.
    pub pg_version: Option<u32>,
    /// The highest status generation this keeper has carried out.
    pub applied_generation: u64,
    /// Never promote this node.
    pub nofailover: bool,
    /// On a primary: the synchronous_standby_names in effect.
    #[serde(default)]
    pub sync_names_applied: Option<String>,
    /// On a primary: the standbys (application names) its WAL senders treat
    /// as synchronous candidates ("sync", "quorum" or "potential"), sorted.
    #[serde(default)]
    pub sync_confirmed: Vec<String>,
    /// On a primary: its write position read just *after* it showed
    /// `sync_names_applied`; every commit acknowledged under an older
    /// setting is at or before it.
    #[serde(default)]
    pub sync_lsn: Option<Lsn>,
    /// On a primary: how far each standby has flushed (pg_stat_replication),
    /// read after `sync_lsn`.
    #[serde(default)]
    pub replica_flush: std::collections::BTreeMap<String, Lsn>,
    /// On a primary: the standbys pg_stat_replication shows streaming, sorted.
    /// A standby that died is gone from here at once, long before its
    /// keeper's report expires.
    #[serde(default)]
    pub replicas_streaming: Vec<String>,
    /// Some parameter changed in the configuration needs a restart.
    #[serde(default)]
    pub pending_restart: bool,
    /// The id of the last node request (restart, reinit) carried out.
    #[serde(default)]
    pub handled_node_request: u64,
    /// Why the keeper cannot do what it was assigned, if it cannot.
    pub error: Option<String>,
    /// Whether `error` disqualifies this node (see [`ErrorKind`]).
    #[serde(default)]
    pub error_kind: ErrorKind,
    /// A token unique to this run of the keeper process: a report under
    /// the same uid with another token is another process (a second keeper
    /// given the same uid, or an earlier run whose lease has not expired).
    #[serde(default)]
    pub instance: String,
    /// Free bytes on the file system of the data directory (for the
    /// `data_disk_free` alert); `None` when it cannot be read.
    #[serde(default)]
    pub data_disk_free_bytes: Option<u64>,
    /// Size of that file system, in bytes.
    #[serde(default)]
    pub data_disk_size_bytes: Option<u64>,
    /// On a primary: round trip of its last primary lease renewal, in
    /// microseconds (for the `lease_renewal_slow` alert).
    #[serde(default)]
    pub lease_renewal_us: Option<u64>,
    /// The most WAL any replication slot on this node holds back, in bytes
    /// (for the `slot_wal_retained` alert).
    #[serde(default)]
    pub slot_retained_wal_bytes: Option<u64>,
}

/// How bad a keeper's error is, for the decisions about it.
///
/// Only a fatal error takes a node out of the running for promotion (and for
/// being the first primary): its data or its installation cannot serve,
/// whatever the next tick does (another system identifier, foreign data,
/// unusable postgres binaries). Everything else (a config write that failed,
/// a connection refused, a timeout, a parameter postgres rejected) is
/// transient: reported for operators, and the node stays eligible, so that
/// one bad value or one slow disk never disables failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The next tick may succeed; never blocks a failover.
    #[default]
    Transient,
    /// A human must act; the node is not promoted.
    Fatal,
}

impl KeeperReport {
    /// The node reports an error that no retry can fix: it must not be
    /// promoted or chosen as the first primary.
    pub fn disqualified(&self) -> bool {
        self.error.is_some() && self.error_kind == ErrorKind::Fatal
    }

    /// A report for a keeper that has not observed postgres yet.
    pub fn new(uid: &str, pg_host: &str, pg_port: u16, api_url: &str) -> Self {
        KeeperReport {
            uid: uid.to_string(),
            pg_host: pg_host.to_string(),
            pg_port,
            api_url: api_url.to_string(),
            role: ObservedRole::Stopped,
            healthy: false,
            timeline: 0,
            current_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            streaming: false,
            system_id: None,
            pg_version: None,
            applied_generation: 0,
            nofailover: false,
            sync_names_applied: None,
            sync_confirmed: Vec::new(),
            sync_lsn: None,
            replica_flush: std::collections::BTreeMap::new(),
            replicas_streaming: Vec::new(),
            pending_restart: false,
            handled_node_request: 0,
            error: None,
            error_kind: ErrorKind::Transient,
            instance: String::new(),
            data_disk_free_bytes: None,
            data_disk_size_bytes: None,
            lease_renewal_us: None,
            slot_retained_wal_bytes: None,
        }
    }

    /// The position that shows how much of the history this node holds:
    /// the write position on a primary, the replayed one on a standby.
    pub fn lsn(&self) -> Option<Lsn> {
        match self.role {
            ObservedRole::Primary => self.current_lsn,
            _ => self.replay_lsn.or(self.receive_lsn),
        }
    }

    /// The furthest position this node has durably received; what failover
    /// candidates are ranked by.
    pub fn received_lsn(&self) -> Option<Lsn> {
        match (self.receive_lsn, self.replay_lsn) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b).or(self.current_lsn),
        }
    }

    /// JSON for the store.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a report read from the store.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// System identifiers are 64-bit and JSON readers (jq, JavaScript) lose
/// precision past 2^53, so they travel as strings.
pub(crate) mod opt_u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| t.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_with_string_system_id() {
        let mut r = KeeperReport::new("a", "127.0.0.1", 5432, "http://127.0.0.1:8008");
        r.system_id = Some(7_300_000_000_000_000_001);
        r.current_lsn = Some(Lsn(0x3000060));
        let json = String::from_utf8(r.to_json()).unwrap();
        assert!(
            json.contains("\"system_id\":\"7300000000000000001\""),
            "{json}"
        );
        assert!(json.contains("\"current_lsn\":\"0/3000060\""), "{json}");
        assert_eq!(KeeperReport::from_json(json.as_bytes()).unwrap(), r);
    }

    #[test]
    fn lsn_depends_on_role() {
        let mut r = KeeperReport::new("a", "h", 1, "u");
        r.role = ObservedRole::Standby;
        r.receive_lsn = Some(Lsn(20));
        r.replay_lsn = Some(Lsn(10));
        assert_eq!(r.lsn(), Some(Lsn(10)));
        assert_eq!(r.received_lsn(), Some(Lsn(20)));
        r.role = ObservedRole::Primary;
        r.current_lsn = Some(Lsn(30));
        assert_eq!(r.lsn(), Some(Lsn(30)));
    }
}
