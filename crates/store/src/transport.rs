//! The one-line diagnosis of an etcd that cannot be reached.
//!
//! A refused or timed-out connection reaches us as a tonic and hyper error
//! chain ("grpc request error: code: 'The service is currently unavailable',
//! message: \"tcp connect error\", source: ..."). An operator needs three
//! things from it: which endpoints were tried, why they failed (connection
//! refused, timed out, a name that does not resolve, etcd without a leader)
//! and what to check. [`TransportCause::of`] reads the chain once; the raw
//! chain stays in the debug log (see failover.rs). As in security.rs, the
//! libraries only expose these as text, so the unit tests pin the wordings of
//! the locked versions.

use std::fmt;
use std::time::Duration;

/// Why no etcd endpoint could be reached, in an operator's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportCause {
    /// Nothing listens at the address (the host answered with a reset).
    ConnectionRefused,
    /// The connection or the request got no answer in time (host down, or a
    /// firewall dropping packets).
    TimedOut(Duration),
    /// The host name in the endpoint does not resolve.
    Dns,
    /// No route to the host or the network is down.
    NoRoute,
    /// The connection was established, then dropped or reset.
    ConnectionReset,
    /// etcd answered that it has no leader (it lost its quorum).
    NoLeader,
    /// Anything else: the innermost cause, as the library words it.
    Other(String),
}

impl TransportCause {
    /// Reads the cause from an error chain (see `security::chain_text`).
    pub(crate) fn of(chain: &str) -> TransportCause {
        let has = |needle: &str| chain.contains(needle);
        if has("Connection refused") || has("ConnectionRefused") {
            TransportCause::ConnectionRefused
        } else if has("dns error")
            || has("failed to lookup address")
            || has("Name or service not known")
            || has("nodename nor servname")
        {
            TransportCause::Dns
        } else if has("No route to host") || has("Network is unreachable") {
            TransportCause::NoRoute
        } else if has("etcdserver: no leader") || has("leader changed") {
            TransportCause::NoLeader
        } else if has("Connection reset") || has("broken pipe") || has("connection closed") {
            TransportCause::ConnectionReset
        } else if has("timed out") || has("deadline has elapsed") || has("Timeout expired") {
            TransportCause::TimedOut(Duration::ZERO)
        } else {
            let innermost = chain.rsplit(": ").next().unwrap_or(chain).trim();
            TransportCause::Other(innermost.chars().take(120).collect())
        }
    }

    /// What the operator should check for this cause.
    fn check(&self) -> &'static str {
        match self {
            TransportCause::ConnectionRefused => {
                "check that etcd runs there and that --store-endpoints names its --advertise-client-urls"
            }
            TransportCause::TimedOut(_) | TransportCause::NoRoute => {
                "check that the host is up and that no firewall blocks the etcd client port"
            }
            TransportCause::Dns => "check the host name in --store-endpoints and this host's DNS",
            TransportCause::ConnectionReset | TransportCause::Other(_) => {
                "check that etcd runs there and is healthy (etcdctl endpoint health)"
            }
            TransportCause::NoLeader => {
                "check that a majority of etcd members run and reach each other (etcdctl endpoint status --cluster)"
            }
        }
    }
}

impl fmt::Display for TransportCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportCause::ConnectionRefused => f.write_str("connection refused")?,
            TransportCause::TimedOut(d) if d.is_zero() => f.write_str("timed out")?,
            TransportCause::TimedOut(d) => write!(f, "timed out (no answer within {d:?})")?,
            TransportCause::Dns => f.write_str("host name does not resolve (DNS)")?,
            TransportCause::NoRoute => f.write_str("no route to host")?,
            TransportCause::ConnectionReset => f.write_str("connection reset")?,
            TransportCause::NoLeader => f.write_str("etcd has no leader")?,
            TransportCause::Other(text) => f.write_str(text)?,
        }
        write!(f, "; {}", self.check())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(chain: &str) -> String {
        TransportCause::of(chain).to_string()
    }

    #[test]
    fn tonic_wordings_name_the_cause_and_what_to_check() {
        // The chain of etcd-client 0.x against a closed port, as logged.
        let refused = "grpc request error: code: 'The service is currently unavailable', message: \"tcp connect error\", source: tonic::transport::Error(Transport, ConnectError(ConnectError(\"tcp connect error\", 127.0.0.1:1, Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" })))";
        assert_eq!(
            line(refused),
            "connection refused; check that etcd runs there and that --store-endpoints names its --advertise-client-urls"
        );
        assert_eq!(
            TransportCause::of("transport error: dns error: failed to lookup address information: Name or service not known"),
            TransportCause::Dns
        );
        assert_eq!(
            TransportCause::of(
                "transport error: tcp connect error: No route to host (os error 113)"
            ),
            TransportCause::NoRoute
        );
        assert_eq!(
            TransportCause::of("grpc request error: status: Unavailable: etcdserver: no leader"),
            TransportCause::NoLeader
        );
        assert_eq!(
            TransportCause::of("transport error: tcp connect error: connection timed out"),
            TransportCause::TimedOut(Duration::ZERO)
        );
        assert!(line("transport error: h2 protocol error: connection reset")
            .starts_with("connection reset; "));
    }

    #[test]
    fn an_unknown_cause_keeps_only_its_innermost_words() {
        let cause = TransportCause::of("grpc request error: transport error: something new");
        assert_eq!(cause, TransportCause::Other("something new".into()));
        assert!(!cause.to_string().contains("grpc"));
    }

    #[test]
    fn a_request_timeout_says_how_long_we_waited() {
        assert_eq!(
            TransportCause::TimedOut(Duration::from_secs(2)).to_string(),
            "timed out (no answer within 2s); check that the host is up and that no firewall blocks the etcd client port"
        );
    }
}
