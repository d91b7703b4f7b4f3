//! What the proxy counts: a few relaxed atomic additions per connection and
//! per buffer written, bumped by the accept loops and the relays and read by
//! the metrics endpoint ([`super::metrics`]), so counting is always on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::relay::Traffic;
use super::table::Port;

/// Why a client connection was closed without being relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The table routes nowhere for this port (no primary, not routing...).
    NoRoute,
    /// `--max-connections` client connections were already open.
    MaxConnections,
    /// The backend did not accept a connection.
    BackendUnreachable,
    /// The client sent no first packet within `--client-login-timeout`.
    LoginTimeout,
    /// The client's first packet broke the protocol.
    Malformed,
}

impl Refusal {
    pub(super) const ALL: [Refusal; 5] = [
        Refusal::NoRoute,
        Refusal::MaxConnections,
        Refusal::BackendUnreachable,
        Refusal::LoginTimeout,
        Refusal::Malformed,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Refusal::NoRoute => "no_route",
            Refusal::MaxConnections => "max_connections",
            Refusal::BackendUnreachable => "backend_unreachable",
            Refusal::LoginTimeout => "login_timeout",
            Refusal::Malformed => "malformed_first_packet",
        }
    }
}

/// Counts for one listening port.
#[derive(Debug, Default)]
pub(super) struct PortStats {
    pub(super) accepted: AtomicU64,
    /// Open connections: waiting for the first packet, connecting to the
    /// backend, or relaying.
    pub(super) active: AtomicU64,
    pub(super) refused: [AtomicU64; Refusal::ALL.len()],
    pub(super) cut: AtomicU64,
}

/// What the proxy counts, shared by the accept loops, the relays and the
/// metrics endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    ports: [PortStats; 2],
    /// Bytes relayed, counted as they are written.
    pub traffic: Traffic,
}

pub(super) const PORTS: [Port; 2] = [Port::Primary, Port::ReadOnly];

impl Stats {
    pub(super) fn port(&self, port: Port) -> &PortStats {
        &self.ports[match port {
            Port::Primary => 0,
            Port::ReadOnly => 1,
        }]
    }

    /// A client connection was accepted on `port`.
    pub fn accepted(&self, port: Port) {
        self.port(port).accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection on `port` was closed without being relayed.
    pub fn refused(&self, port: Port, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.port(port).refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection on `port` was closed because its route was withdrawn.
    pub fn cut(&self, port: Port) {
        self.port(port).cut.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections on `port` refused for `why` so far.
    #[cfg(test)]
    pub fn refusals(&self, port: Port, why: Refusal) -> u64 {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.port(port).refused[i].load(Ordering::Relaxed)
    }

    /// Connections on `port` cut so far.
    #[cfg(test)]
    pub fn cuts(&self, port: Port) -> u64 {
        self.port(port).cut.load(Ordering::Relaxed)
    }

    /// Counts a connection on `port` as open until the guard is dropped.
    pub fn open(self: &Arc<Self>, port: Port) -> Open {
        self.port(port).active.fetch_add(1, Ordering::Relaxed);
        Open {
            stats: self.clone(),
            port,
        }
    }
}

/// An open connection, counted in `pgwarden_proxy_connections_active`.
#[derive(Debug)]
pub struct Open {
    stats: Arc<Stats>,
    port: Port,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats
            .port(self.port)
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_connection_is_counted_until_its_guard_drops() {
        let stats = Arc::new(Stats::default());
        let open = stats.open(Port::ReadOnly);
        assert_eq!(stats.port(Port::ReadOnly).active.load(Ordering::Relaxed), 1);
        assert_eq!(stats.port(Port::Primary).active.load(Ordering::Relaxed), 0);
        drop(open);
        assert_eq!(stats.port(Port::ReadOnly).active.load(Ordering::Relaxed), 0);
    }
}
