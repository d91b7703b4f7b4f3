//! A simulated postgres: its data directory and the server process.
//!
//! The WAL is a list of record ids. Every record is created once (a client
//! commit, or the end-of-recovery record a promotion writes) and only ever
//! copied as part of a prefix (streaming, base backup, rewind), so two WALs
//! share history exactly when one's last record sits at the same index in
//! the other: divergence is an O(1) check. This is the ground truth the
//! invariants compare against.
//!
//! What postgres itself checks is modelled separately and the way postgres
//! does it, by timeline numbers and switch points
//! ([`Data::postgres_can_follow`]): a standby refuses to stream from a
//! server whose timeline history forked before its own position, but two
//! servers that each promoted themselves from the same timeline both call
//! their new timeline `tli + 1`, and postgres cannot tell them apart. The
//! gap between the two is what the split-brain invariants are about.

use std::collections::BTreeSet;

use pgwarden_core::plan::DataState;
use pgwarden_core::Lsn;

/// Bytes per simulated WAL record, so that LSNs and lag look like postgres'.
pub const RECORD_BYTES: u64 = 128;
/// The LSN of the first record, like a fresh initdb's.
const BASE_LSN: u64 = 0x0100_0000;

/// The configuration files the keeper wrote, reduced to what matters: whom
/// a standby streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgConfig {
    /// postgresql.conf without a standby section, with this
    /// `synchronous_standby_names` (empty: asynchronous).
    Primary {
        /// As rendered by `render_sync_names`.
        sync_names: String,
    },
    /// postgresql.conf with `primary_conninfo` pointing at this host.
    Standby {
        /// The upstream's host (the sim uses keeper uids as host names).
        host: String,
    },
}

/// A postgres data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// From initdb; copied by base backups.
    pub system_id: u64,
    /// The timeline the data is on.
    pub timeline: u32,
    /// Parent timelines and the record count at which each ended, oldest
    /// first (the content of the `.history` file).
    pub history: Vec<(u32, usize)>,
    /// Record ids, oldest first.
    pub wal: Vec<u64>,
    /// Replication slots (kept in `pg_replslot`, not copied by base backups).
    pub slots: BTreeSet<String>,
    /// postgresql.conf as last written by the keeper; `None` after a clone.
    pub config: Option<PgConfig>,
    /// `standby.signal` exists.
    pub standby_signal: bool,
}

impl Data {
    /// A fresh initdb.
    pub fn initdb(system_id: u64, first_record: u64) -> Data {
        Data {
            system_id,
            timeline: 1,
            history: Vec::new(),
            wal: vec![first_record],
            slots: BTreeSet::new(),
            config: None,
            standby_signal: false,
        }
    }

    /// The position after the last record.
    pub fn lsn(&self) -> Lsn {
        lsn_of(self.wal.len())
    }

    /// A copy of `source` as pg_basebackup (or pg_rewind) leaves it: the
    /// source's history, no slots, configuration to be written by the keeper.
    pub fn clone_of(source: &Data) -> Data {
        Data {
            system_id: source.system_id,
            timeline: source.timeline,
            history: source.history.clone(),
            wal: source.wal.clone(),
            slots: BTreeSet::new(),
            config: None,
            standby_signal: false,
        }
    }

    /// Ground truth: every record of `self` is in `other` at the same place.
    pub fn is_prefix_of(&self, other: &Data) -> bool {
        is_prefix(&self.wal, &other.wal)
    }

    /// Postgres' own check before streaming from `up`: same system, and
    /// either the same timeline with `up` not behind, or a timeline in `up`'s
    /// history that ended at or after this node's position.
    pub fn postgres_can_follow(&self, up: &Data) -> bool {
        if self.system_id != up.system_id {
            return false;
        }
        if self.timeline == up.timeline {
            return self.wal.len() <= up.wal.len();
        }
        up.history
            .iter()
            .any(|(tli, end)| *tli == self.timeline && self.wal.len() <= *end)
    }

    /// Promotion: a new timeline starting after the last record, with its
    /// end-of-recovery record.
    pub fn promote(&mut self, record: u64) {
        self.history.push((self.timeline, self.wal.len()));
        self.timeline += 1;
        self.wal.push(record);
        self.standby_signal = false;
    }
}

/// Parses `synchronous_standby_names` of the form pgwarden renders,
/// `ANY k ("a", "b")`: how many of which standbys must confirm a commit.
/// Empty or unparsable: asynchronous.
pub fn parse_sync_names(text: &str) -> Option<(usize, Vec<String>)> {
    let rest = text.trim().strip_prefix("ANY ")?;
    let (k, list) = rest.split_once(' ')?;
    let k = k.parse().ok()?;
    let list = list.trim().strip_prefix('(')?.strip_suffix(')')?;
    let names = list
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect();
    Some((k, names))
}

/// Ground truth on raw WALs, see the module docs.
pub fn is_prefix(short: &[u64], long: &[u64]) -> bool {
    match short.last() {
        None => true,
        Some(last) => long.get(short.len() - 1) == Some(last),
    }
}

/// The LSN after `records` records.
pub fn lsn_of(records: usize) -> Lsn {
    Lsn(BASE_LSN + records as u64 * RECORD_BYTES)
}

/// What the data directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dir {
    /// Empty (or missing).
    Empty,
    /// Files that are not a postgres data directory, given by the operator.
    Foreign,
    /// A postgres data directory.
    Data(Data),
}

/// One node's postgres.
#[derive(Debug, Clone)]
pub struct Host {
    /// The keeper's uid, also the host name.
    pub uid: String,
    /// The data directory.
    pub dir: Dir,
    /// The postmaster runs.
    pub running: bool,
    /// Running in recovery (as a standby).
    pub in_recovery: bool,
    /// The host `primary_conninfo` pointed at when postgres last started or
    /// reloaded.
    pub upstream: Option<String>,
    /// The WAL receiver streams from `upstream`.
    pub streaming: bool,
    /// `synchronous_standby_names` in effect (set at start and reload).
    pub sync_applied: String,
    /// Writing postgresql.conf fails (a full disk, a read-only mount): a
    /// transient error, reported but not disqualifying.
    pub config_writes_fail: bool,
}

impl Host {
    /// A host with the given data directory and postgres stopped.
    pub fn new(uid: &str, dir: Dir) -> Host {
        Host {
            uid: uid.to_string(),
            dir,
            running: false,
            in_recovery: false,
            upstream: None,
            streaming: false,
            sync_applied: String::new(),
            config_writes_fail: false,
        }
    }

    /// Accepts writes now.
    pub fn writable(&self) -> bool {
        self.running && !self.in_recovery
    }

    /// The data, if the directory holds postgres data.
    pub fn data(&self) -> Option<&Data> {
        match &self.dir {
            Dir::Data(d) => Some(d),
            _ => None,
        }
    }

    /// Mutable data.
    pub fn data_mut(&mut self) -> Option<&mut Data> {
        match &mut self.dir {
            Dir::Data(d) => Some(d),
            _ => None,
        }
    }

    /// What `plan` is told about the directory.
    pub fn data_state(&self) -> DataState {
        match &self.dir {
            Dir::Empty => DataState::Empty,
            Dir::Foreign => DataState::Foreign,
            Dir::Data(d) => DataState::Postgres {
                system_id: d.system_id,
            },
        }
    }

    /// Re-reads the configuration files, as a start or reload does.
    pub fn load_config(&mut self) {
        let config = self.data().and_then(|d| d.config.clone());
        match config {
            Some(PgConfig::Standby { host }) if self.in_recovery => {
                self.upstream = Some(host);
                self.sync_applied.clear();
            }
            Some(PgConfig::Primary { sync_names }) => {
                self.upstream = None;
                self.sync_applied = sync_names;
            }
            _ => {
                self.upstream = None;
                self.sync_applied.clear();
            }
        }
    }

    /// The postmaster dies (crash, kill, or its keeper's death).
    pub fn kill(&mut self) {
        self.running = false;
        self.streaming = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(wal: &[u64], timeline: u32, history: &[(u32, usize)]) -> Data {
        Data {
            timeline,
            history: history.to_vec(),
            wal: wal.to_vec(),
            ..Data::initdb(7, 0)
        }
    }

    #[test]
    fn prefix_is_decided_by_the_last_record() {
        assert!(is_prefix(&[], &[1]));
        assert!(is_prefix(&[1, 2], &[1, 2, 3]));
        assert!(!is_prefix(&[1, 2, 9], &[1, 2, 3]));
        assert!(!is_prefix(&[1, 2, 3, 4], &[1, 2, 3]));
    }

    #[test]
    fn postgres_follows_by_timeline_history() {
        let old = data(&[1, 2, 3], 1, &[]);
        let mut new = data(&[1, 2], 1, &[]);
        new.promote(10);
        assert_eq!(new.timeline, 2);
        assert_eq!(new.history, vec![(1, 2)]);
        // The old primary wrote past the fork point: refused.
        assert!(!old.postgres_can_follow(&new));
        // A standby at the fork point follows across the switch.
        assert!(data(&[1, 2], 1, &[]).postgres_can_follow(&new));
        // A standby ahead on the same timeline is refused too.
        assert!(!old.postgres_can_follow(&data(&[1, 2], 1, &[])));
        // Two independent promotions from one timeline look compatible to
        // postgres, though their WALs diverged: the gap the invariants watch.
        let mut twin = data(&[1, 2], 1, &[]);
        twin.promote(11);
        assert!(twin.postgres_can_follow(&new));
        assert!(!twin.is_prefix_of(&new));
    }

    #[test]
    fn sync_names_parse_as_rendered() {
        use pgwarden_core::decide::sync::render_sync_names;
        use pgwarden_core::spec::SyncMode;
        let names = vec!["n2".to_string(), "n3".to_string()];
        let text = render_sync_names(&names, 1, SyncMode::Strict);
        assert_eq!(parse_sync_names(&text), Some((1, names)));
        assert_eq!(parse_sync_names(""), None);
    }

    #[test]
    fn lsn_grows_with_records() {
        assert!(lsn_of(2) > lsn_of(1));
        assert_eq!(lsn_of(3).0 - lsn_of(1).0, 2 * RECORD_BYTES);
    }
}
