//! The accept loops: one per listening port, each handing a new connection
//! to the target the current [`Table`] names, or closing it at once.
//!
//! A client is never left waiting: without a route, over the connection
//! limit, or when the backend does not answer within [`CONNECT_TIMEOUT`], its
//! connection is closed and the reason is logged (at warn, at most once per
//! [`WARN_INTERVAL`] per cause, so a client retry loop cannot flood the log).
//! Everything about a single healthy connection logs at debug.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden_core::route::Backend;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::metrics::{Refusal, Stats};
use super::relay::{relay, Ending};
use super::table::{Port, Table};

/// How long connecting to a backend may take before the client is let go.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one warning per cause in this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Allows a log line at most once per interval and counts what it held back;
/// a line with a different reason than the last one is always allowed, so
/// that a change of reason is never hidden.
#[derive(Debug)]
pub struct RateLimited {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64, String)>,
}

impl RateLimited {
    /// A limiter allowing one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        RateLimited {
            interval,
            state: Mutex::new((None, 0, String::new())),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_for("")
    }

    /// Like [`RateLimited::allow`], for a line about `reason`.
    pub fn allow_for(&self, reason: &str) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval && state.2 == reason => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = state.1;
                *state = (Some(now), 0, reason.to_string());
                Some(held_back)
            }
        }
    }
}

/// What the accept loops and relays share.
#[derive(Debug)]
pub struct Shared {
    /// One permit per open client connection, across both ports.
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// Rotation over the read-only targets.
    turn: AtomicUsize,
    full: RateLimited,
    unreachable: RateLimited,
    /// Counts for the metrics endpoint.
    pub stats: Arc<Stats>,
}

impl Shared {
    /// Limits open client connections to `max_connections`.
    pub fn new(max_connections: usize) -> Self {
        Shared {
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            turn: AtomicUsize::new(0),
            full: RateLimited::new(WARN_INTERVAL),
            unreachable: RateLimited::new(WARN_INTERVAL),
            stats: Arc::default(),
        }
    }

    /// The limit of open client connections.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Client connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }
}

/// Accepts connections on `listener` until `cancel`, routing each by the
/// current table.
pub async fn serve(
    listener: TcpListener,
    port: Port,
    table: watch::Receiver<std::sync::Arc<Table>>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let refused = RateLimited::new(WARN_INTERVAL);
    let failed = RateLimited::new(WARN_INTERVAL);
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(held_back) = failed.allow() {
                    tracing::warn!(port = %port, error = %e, held_back, "cannot accept a connection");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        shared.stats.accepted(port);
        let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
            shared.stats.refused(port, Refusal::MaxConnections);
            if let Some(held_back) = shared.full.allow() {
                tracing::warn!(
                    port = %port,
                    %peer,
                    held_back,
                    "{} client connections open, the maximum: closing new ones; raise --max-connections if the backends can take more",
                    shared.max_connections
                );
            }
            continue;
        };
        let pick = table.borrow().pick(port, &shared.turn, Instant::now());
        let target = match pick {
            Ok(t) => t,
            Err(why) => {
                shared.stats.refused(port, Refusal::NoRoute);
                if let Some(held_back) = refused.allow_for(&why.to_string()) {
                    tracing::warn!(port = %port, %peer, held_back, "closing a new client connection: {why}");
                }
                continue;
            }
        };
        if let Err(e) = client.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY on the client connection");
        }
        let shared = shared.clone();
        target.relays.spawn(
            handle(
                client,
                peer,
                port,
                target.backend,
                target.cut,
                permit,
                shared,
            )
            .in_current_span(),
        );
    }
}

/// Connects to `backend` and relays until the relay ends or `cut` fires.
async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    port: Port,
    backend: Backend,
    cut: CancellationToken,
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
) {
    let _open = shared.stats.open(port);
    let connect = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((backend.host.as_str(), backend.port)),
    );
    let server = tokio::select! {
        _ = cut.cancelled() => {
            shared.stats.cut(port);
            tracing::debug!(%peer, %backend, "route withdrawn while connecting");
            return;
        }
        server = connect => server,
    };
    let server = match server {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.stats.refused(port, Refusal::BackendUnreachable);
            if let Some(held_back) = shared.unreachable.allow() {
                tracing::warn!(port = %port, %peer, held_back, error = %e, "cannot connect to {backend}: closing the client connection");
            }
            return;
        }
        Err(_) => {
            shared.stats.refused(port, Refusal::BackendUnreachable);
            if let Some(held_back) = shared.unreachable.allow() {
                tracing::warn!(port = %port, %peer, held_back, "{backend} did not accept a connection within {CONNECT_TIMEOUT:?}: closing the client connection");
            }
            return;
        }
    };
    if let Err(e) = server.set_nodelay(true) {
        tracing::debug!(%backend, error = %e, "cannot set TCP_NODELAY on the backend connection");
    }
    tracing::debug!(port = %port, %peer, %backend, "relaying");
    let relayed = relay(client, server, &cut, &shared.stats.traffic).await;
    if relayed.ending == Ending::Cut {
        shared.stats.cut(port);
    }
    tracing::debug!(
        port = %port,
        %peer,
        %backend,
        ending = ?relayed.ending,
        to_backend = relayed.to_backend,
        to_client = relayed.to_client,
        "connection closed"
    );
}

#[cfg(test)]
mod tests;
