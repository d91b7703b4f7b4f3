//! pgwarden's store layer over etcd v3.
//!
//! Everything pgwarden shares between nodes (the cluster spec, the status the
//! sentinel decides, keeper reports, the primary key, election keys) lives in
//! etcd under `/pgwarden/<cluster>/`. This crate is the only place that talks
//! to etcd, and it offers just what the loops need to be safe:
//!
//! - reads that return the revisions a later compare-and-swap needs
//!   ([`Versioned`]), and writes that are compare-and-swap transactions
//!   ([`Store::cas`], [`Store::create`], [`Store::delete_if`]), optionally
//!   fenced by another key's create revision ([`Guard`]);
//! - leases, and a [`LeaseKeeper`] task that keeps one alive and publishes
//!   until when it is known to be valid (and, in [`Renewals`], how its
//!   renewals went);
//! - [`Store::watch_prefix`], a notification that something changed, which
//!   never silently stops;
//! - endpoint failover that keeps working with etcd members down (see
//!   `failover`).
//!
//! [`etcd_server`] starts a local etcd process, for the demo and for tests.

mod error;
pub mod etcd_server;
mod failover;
mod lease;
mod quorum;
mod renewals;
mod security;
mod store;
mod transport;
mod watch;

use std::time::Duration;

pub use error::StoreError;
pub use lease::{LeaseKeeper, LeaseState};
pub use renewals::{RenewalSummary, Renewals};
pub use security::{Credentials, SecurityProblem, TlsFiles};
pub use store::Store;
pub use transport::TransportCause;

/// An etcd lease id.
pub type LeaseId = i64;

/// Default per-request timeout (per endpoint attempt).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often every store re-reads etcd's member list, to use members added
/// to the cluster and drop removed ones without a restart.
pub const MEMBER_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Default TCP connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One value with the revisions a compare-and-swap needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Revision of the last write to the key; the token for [`Store::cas`].
    pub mod_revision: i64,
    /// Revision at which the key was (last) created; changes when the key is
    /// deleted and created again, which makes it a fencing token.
    pub create_revision: i64,
    /// The lease the key is attached to; 0 = none.
    pub lease: LeaseId,
}

/// An extra condition for [`Store::cas`].
#[derive(Debug, Clone)]
pub enum Guard {
    /// The key's create_revision equals `revision` (0 = the key is absent).
    ///
    /// Used as a fencing token: the sentinel that won the election key at
    /// create revision R writes only while that key still has create revision
    /// R, so a sentinel that lost its lease (and whose key was re-created by
    /// another) cannot overwrite the newer leader's decisions.
    CreateRevision {
        /// Key relative to the cluster prefix.
        key: String,
        /// Expected create revision.
        revision: i64,
    },
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was written at this store revision.
    Written {
        /// The store revision of the write (the key's new mod_revision).
        revision: i64,
    },
    /// A comparison failed; nothing was written. Re-read and decide again.
    Conflict,
}

/// Timeouts, TLS and credentials for talking to etcd.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long one attempt on one endpoint may take before the next endpoint
    /// is tried. An operation may take up to this times the endpoint count.
    pub request_timeout: Duration,
    /// TCP connect timeout per endpoint.
    pub connect_timeout: Duration,
    /// TLS towards etcd: required by `https://` endpoints, and makes bare
    /// `host:port` endpoints https. None = plaintext.
    pub tls: Option<TlsFiles>,
    /// etcd user and password. None with no etcd auth, or with auth by the
    /// client certificate's CN (etcd's `--client-cert-auth`).
    pub user: Option<Credentials>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: None,
            user: None,
        }
    }
}
