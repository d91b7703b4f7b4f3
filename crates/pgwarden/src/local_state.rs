//! What a keeper publishes about itself, each tick, for its HTTP API.
//!
//! The keeper loop writes it and the API reads it (through a watch channel),
//! so it lives between the two: neither role module imports the other.

use std::collections::BTreeMap;

use pgwarden_core::KeeperReport;
use pgwarden_store::Renewals;

/// What this keeper knows of itself, for its HTTP API: the report it
/// publishes plus what only it can tell (whether its primary lease is still
/// locally valid).
#[derive(Debug, Clone)]
pub struct LocalState {
    /// The report as last published.
    pub report: KeeperReport,
    /// The status (of `generation`) assigns this node the primary role.
    pub assigned_primary: bool,
    /// The status generation the report was made under.
    pub generation: u64,
    /// Until when the primary lease is locally known valid (fencing deadline
    /// not included); `None` when this keeper holds no primary lease.
    pub lease_valid_until: Option<tokio::time::Instant>,
    /// The primary lease's renewals since this keeper started (live counts,
    /// shared by every primary lease it held).
    pub lease_renewals: Renewals,
    /// WAL bytes each replication slot on this node retains.
    pub slot_retained_bytes: BTreeMap<String, u64>,
}
