//! Errors of the store layer.
//!
//! The split that matters to callers is "etcd could not be reached" (every
//! endpoint failed at the transport level or did not answer in time: retry on
//! the next tick, and tell the user which endpoints were tried) versus "etcd
//! answered and refused" (a server-side error: retrying the same request will
//! not help). [`StoreError::is_unreachable`] draws that line.

use std::time::Duration;

use std::path::PathBuf;

use crate::{LeaseId, SecurityProblem, TransportCause};

/// An error from a [`crate::Store`] operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Every endpoint failed at the transport level (connection refused, reset,
    /// no leader, ...). One line: the endpoints, the cause of the last one
    /// tried and what to check; the library's chain is in the debug log.
    #[error("cannot reach etcd at {endpoints}: {cause}")]
    Unreachable {
        /// The endpoints tried, comma-joined.
        endpoints: String,
        /// Why the last endpoint tried failed, and what to check.
        cause: TransportCause,
        /// The last endpoint's error chain, for debugging (not displayed).
        detail: String,
    },

    /// No endpoint answered within the request timeout (e.g. hosts that drop
    /// packets). Treated like [`StoreError::Unreachable`] by `is_unreachable`.
    #[error("cannot reach etcd at {endpoints}: {}", TransportCause::TimedOut(*timeout))]
    Timeout {
        /// The endpoints tried, comma-joined.
        endpoints: String,
        /// The per-endpoint request timeout that expired.
        timeout: Duration,
    },

    /// An endpoint string given to [`crate::Store::new`] is malformed.
    #[error("invalid etcd endpoint {value:?}: expected http://host:port, https://host:port or host:port")]
    InvalidEndpoint {
        /// The endpoint as given.
        value: String,
    },

    /// An `https://` endpoint without a CA to check etcd's certificate.
    #[error("etcd endpoint {value} is https:// but no CA was given: pass the CA that signed etcd's certificate as --store-ca-file")]
    HttpsWithoutCa {
        /// The endpoint as given.
        value: String,
    },

    /// An `http://` endpoint while TLS is configured: probably a typo that
    /// would send credentials in clear.
    #[error("etcd endpoint {value} is http:// but --store-ca-file is set: write https://")]
    HttpWithTls {
        /// The endpoint as given.
        value: String,
    },

    /// A TLS file could not be read.
    #[error("read etcd TLS file {path}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// A TLS file is not the PEM it should be.
    #[error("etcd TLS file {path} holds no PEM {expected}")]
    NotPem {
        /// The file.
        path: PathBuf,
        /// The PEM label expected.
        expected: &'static str,
    },

    /// A client certificate without its key, or a key without its certificate.
    #[error("--store-cert-file and --store-key-file go together: give both or neither")]
    HalfIdentity,

    /// etcd and we could not agree on TLS or authentication (see
    /// [`SecurityProblem`]). Not retryable by waiting: a file, a flag or an
    /// etcd role must change. The library's error chain is logged at debug.
    #[error("etcd at {endpoint}: {problem}")]
    Security {
        /// The endpoint that said so (the last one tried).
        endpoint: String,
        /// What is wrong, and what to check.
        problem: SecurityProblem,
    },

    /// A write named a lease that no longer exists on the server (it expired
    /// or was revoked). The caller should grant a new lease and write again.
    #[error("etcd lease {lease:x} not found (expired or revoked)")]
    LeaseNotFound {
        /// The lease the write named.
        lease: LeaseId,
    },

    /// etcd answered with an error for this operation; retrying it unchanged
    /// on another endpoint would not help.
    #[error("etcd refused {op}")]
    Etcd {
        /// The operation, e.g. `"compare-and-swap"`.
        op: &'static str,
        /// The error returned by the server or the client library.
        #[source]
        source: etcd_client::Error,
    },

    /// etcd answered without a field the protocol promises (e.g. a response
    /// header).
    #[error("malformed etcd answer to {op}: {detail}")]
    MalformedResponse {
        /// The operation.
        op: &'static str,
        /// What was missing or wrong.
        detail: &'static str,
    },
}

impl StoreError {
    /// True when no etcd endpoint could be reached (transport failure or
    /// timeout on every endpoint), as opposed to etcd answering with an error.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. } | StoreError::Timeout { .. }
        )
    }

    /// The TLS or authentication failure, when this is one.
    pub fn security_problem(&self) -> Option<&SecurityProblem> {
        match self {
            StoreError::Security { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// Names the key in a permission-denied error.
    pub(crate) fn on_key(mut self, key: &str) -> StoreError {
        if let StoreError::Security {
            problem: SecurityProblem::PermissionDenied { key: k, .. },
            ..
        } = &mut self
        {
            *k = Some(key.to_owned());
        }
        self
    }
}

/// gRPC status codes (stable wire numbers) that mean "this endpoint could not
/// serve the request", so another endpoint should be tried.
const GRPC_CANCELLED: i32 = 1;
const GRPC_UNKNOWN: i32 = 2;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_NOT_FOUND: i32 = 5;
const GRPC_UNAVAILABLE: i32 = 14;

/// Whether `err` is a transport-level failure of one endpoint (try the next
/// endpoint) rather than an answer from etcd.
///
/// `Unavailable` also covers etcd's own "no leader" and "request timed out"
/// answers from a member cut off from its quorum: another member may serve.
/// `Unknown` is what tonic reports for some broken HTTP/2 connections.
pub(crate) fn is_transport(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            i32::from(status.code()),
            GRPC_CANCELLED | GRPC_UNKNOWN | GRPC_DEADLINE_EXCEEDED | GRPC_UNAVAILABLE
        ),
        _ => false,
    }
}

/// Whether etcd answered "requested lease not found".
pub(crate) fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            i32::from(status.code()) == GRPC_NOT_FOUND
                && status.message().contains("lease not found")
        }
        // etcd-client's keep-alive helper reports a TTL of 0 this way.
        etcd_client::Error::LeaseKeepAliveError(msg) => msg.contains("lease not found"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_etcd_is_one_line_with_endpoints_cause_and_check() {
        let err = StoreError::Unreachable {
            endpoints: "http://127.0.0.1:1,http://10.0.0.2:2379".into(),
            cause: TransportCause::ConnectionRefused,
            detail: "grpc request error: tcp connect error: Connection refused".into(),
        };
        let line = err.to_string();
        assert_eq!(
            line,
            "cannot reach etcd at http://127.0.0.1:1,http://10.0.0.2:2379: connection refused; check that etcd runs there and that --store-endpoints names its --advertise-client-urls"
        );
        assert!(
            std::error::Error::source(&err).is_none(),
            "no chain after the line"
        );
        let timeout = StoreError::Timeout {
            endpoints: "http://10.0.0.9:2379".into(),
            timeout: Duration::from_millis(1500),
        };
        assert_eq!(
            timeout.to_string(),
            "cannot reach etcd at http://10.0.0.9:2379: timed out (no answer within 1.5s); check that the host is up and that no firewall blocks the etcd client port"
        );
    }
}
