//! What happened during a step, for the invariant checkers and for people.
//!
//! [`Event`]s carry what a checker needs to judge a transition that the
//! state after the step no longer shows (the view a sentinel decided on, the
//! WAL a node had when it was promoted). [`Happening`]s are the coarse story
//! of a run, kept in the world's journal for scenario tests and statistics.

use pgwarden_core::{ClusterView, Reason, Status};

/// A status write the store accepted.
#[derive(Debug, Clone)]
pub struct StatusWrite {
    /// The sentinel that wrote it.
    pub by: String,
    /// The create revision of the election key that sentinel believed its own.
    pub election_revision: i64,
    /// The election key at the instant of the write: holder and create revision.
    pub leader_key: Option<(String, i64)>,
    /// The view the decision was made on.
    pub view: ClusterView,
    /// The status before.
    pub before: Status,
    /// The status written.
    pub after: Status,
    /// Why.
    pub reason: Reason,
}

/// Who applied a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Applier {
    /// A keeper carried out a status.
    Keeper,
    /// A proxy routed by a status.
    Proxy,
}

/// A transition the checkers look at.
#[derive(Debug, Clone)]
pub enum Event {
    /// The store accepted a status write.
    StatusWritten(Box<StatusWrite>),
    /// A keeper or proxy carried out a status generation.
    Applied {
        /// Keeper or proxy.
        by: Applier,
        /// Its id.
        id: String,
        /// Which life of the process (a restart starts from nothing).
        incarnation: u32,
        /// The generation.
        generation: u64,
    },
    /// A keeper promoted its postgres.
    Promoted {
        /// The node.
        uid: String,
        /// It is tagged nofailover.
        nofailover: bool,
        /// Its WAL just before promotion.
        wal: Vec<u64>,
        /// The last node that was writable before, and its WAL now.
        last_writer: Option<(String, Vec<u64>)>,
        /// The replication slots it held when promoted.
        slots: std::collections::BTreeSet<String>,
    },
    /// A standby received WAL from its upstream.
    Streamed {
        /// The standby.
        standby: String,
        /// The upstream.
        upstream: String,
        /// The standby held records the upstream does not (ground truth).
        diverged: bool,
    },
    /// A node became the only writer without some acknowledged writes.
    WritesLost {
        /// The new writer.
        uid: String,
        /// The writes (record ids) it lacks.
        ids: Vec<u64>,
    },
    /// A data directory's content was replaced (initdb, base backup, rewind,
    /// clearing before a re-clone).
    DataReplaced {
        /// The node.
        uid: String,
        /// What was there.
        before: DirKind,
        /// The system identifier now there (`None`: empty).
        after: Option<u64>,
        /// The cluster's system identifier in the store at that instant.
        cluster_system_id: Option<u64>,
        /// Which operation.
        by: &'static str,
    },
}

/// A data directory's kind, for [`Event::DataReplaced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// Empty or missing.
    Empty,
    /// Not a postgres data directory.
    Foreign,
    /// Postgres data of this system.
    Data(u64),
}

/// The coarse story of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    /// A keeper's fencer killed its postgres.
    Fenced(String),
    /// A keeper promoted its postgres.
    Promoted(String),
    /// A node's postgres started accepting writes.
    BecameWritable(String),
    /// A node's postgres stopped accepting writes.
    StoppedWriting(String),
    /// A keeper rewound its data.
    Rewound(String),
    /// A keeper cloned its data.
    Cloned(String),
    /// A sentinel became leader.
    Elected(String),
    /// A fault was injected (description).
    Fault(String),
    /// A keeper exited on an error a human must fix.
    KeeperExited(String),
    /// Acknowledged writes were lost when this node became the writer.
    WritesLost {
        /// The new writer.
        uid: String,
        /// How many.
        count: u64,
    },
}
