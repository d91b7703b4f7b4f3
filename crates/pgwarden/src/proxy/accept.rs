//! The accept loops: one per listening port, each handing a new connection
//! to the target the current [`Table`] names, or closing it at once.
//!
//! A client is never left waiting: without a route, over the connection
//! limit, or when the backend does not answer within [`CONNECT_TIMEOUT`], its
//! connection is closed and the reason is logged (at warn, at most once per
//! [`WARN_INTERVAL`] per cause, so a client retry loop cannot flood the log).
//! Everything about a single healthy connection logs at debug.
//!
//! The backend is connected only once the client has sent its first packet
//! (see `login`): a client that says nothing within `--client-login-timeout`
//! is dropped, and one that sends garbage is answered with an
//! `ErrorResponse`, both without postgres ever seeing them.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden_core::route::Backend;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::login::{self, NoPacket};
use super::relay::{relay, Ending, RelayMode};
use super::stats::{Refusal, Stats};
use super::table::{Port, Table};

/// How long connecting to a backend may take before the client is let go.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one warning per cause in this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(5);
/// Default of `--client-login-timeout`: how long a client may take to send
/// its first packet.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on both sides: first probe after this much silence...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// ...then one probe per interval, and the connection is dropped after
/// [`KEEPALIVE_PROBES`] unanswered ones (two minutes in all).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;
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
    /// How long a client may take to send its first packet.
    login_timeout: Duration,
    silent: RateLimited,
    malformed: RateLimited,
    /// Counts for the metrics endpoint.
    pub stats: Arc<Stats>,
    /// How relays move bytes.
    relay: RelayMode,
}

impl Shared {
    /// Limits open client connections to `max_connections`, each allowed
    /// `login_timeout` to send its first packet.
    pub fn new(max_connections: usize, login_timeout: Duration) -> Self {
        Shared {
            login_timeout,
            silent: RateLimited::new(WARN_INTERVAL),
            malformed: RateLimited::new(WARN_INTERVAL),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            turn: AtomicUsize::new(0),
            full: RateLimited::new(WARN_INTERVAL),
            unreachable: RateLimited::new(WARN_INTERVAL),
            stats: Arc::default(),
            relay: RelayMode::Copy,
        }
    }

    /// Relays with `mode` (copying by default).
    pub fn relaying(mut self, mode: RelayMode) -> Self {
        self.relay = mode;
        self
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
        tune(&client, "client");
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

/// Waits for the client's first packet, connects to `backend`, hands the
/// packet on and relays until the relay ends or `cut` fires.
async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    port: Port,
    backend: Backend,
    cut: CancellationToken,
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
) {
    let _open = shared.stats.open(port);
    let first = tokio::select! {
        _ = cut.cancelled() => {
            shared.stats.cut(port);
            tracing::debug!(%peer, %backend, "route withdrawn before the client's first packet");
            return;
        }
        first = tokio::time::timeout(shared.login_timeout, login::first_packet(&mut client)) => first,
    };
    let packet = match first {
        Ok(Ok(packet)) => packet,
        Ok(Err(NoPacket::Refused(why))) => {
            shared.stats.refused(port, Refusal::Malformed);
            if let Some(held_back) = shared.malformed.allow() {
                tracing::warn!(port = %port, %peer, held_back, "refused a client's first packet, without contacting postgres: {why}");
            }
            return;
        }
        Ok(Err(NoPacket::Closed)) => {
            tracing::debug!(port = %port, %peer, "the client closed before its first packet");
            return;
        }
        Ok(Err(NoPacket::Io(e))) => {
            tracing::debug!(port = %port, %peer, error = %e, "reading the client's first packet failed");
            return;
        }
        Err(_) => {
            shared.stats.refused(port, Refusal::LoginTimeout);
            if let Some(held_back) = shared.silent.allow() {
                tracing::warn!(
                    port = %port,
                    %peer,
                    held_back,
                    "a client sent no first packet within {:?}: closing it without contacting postgres (--client-login-timeout)",
                    shared.login_timeout
                );
            }
            return;
        }
    };
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
    let mut server = server;
    tune(&server, "backend");
    if let Err(e) = server.write_all(&packet.bytes).await {
        tracing::debug!(port = %port, %peer, %backend, error = %e, "sending the first packet to the backend failed");
        return;
    }
    tracing::debug!(port = %port, %peer, %backend, first = %packet.header.kind, "relaying");
    drop(packet);
    let relayed = relay(client, server, &cut, &shared.stats.traffic, shared.relay).await;
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

/// TCP_NODELAY (postgres messages are small and latency-bound) and
/// keepalive, so that a peer that vanished without a FIN or RST does not
/// hold a connection slot forever.
fn tune(stream: &TcpStream, side: &str) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(side, error = %e, "cannot set TCP_NODELAY");
    }
    let keepalive = setsockopt(stream, sockopt::KeepAlive, &true)
        .and_then(|()| {
            setsockopt(
                stream,
                sockopt::TcpKeepIdle,
                &(KEEPALIVE_IDLE.as_secs() as u32),
            )
        })
        .and_then(|()| {
            setsockopt(
                stream,
                sockopt::TcpKeepInterval,
                &(KEEPALIVE_INTERVAL.as_secs() as u32),
            )
        })
        .and_then(|()| setsockopt(stream, sockopt::TcpKeepCount, &KEEPALIVE_PROBES));
    if let Err(e) = keepalive {
        tracing::debug!(side, error = %e, "cannot set TCP keepalive");
    }
}

#[cfg(test)]
mod tests;
