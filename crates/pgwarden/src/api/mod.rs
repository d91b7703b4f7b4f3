//! The keeper's HTTP API: Patroni-compatible health checks for load
//! balancers (`/primary`, `/replica`, ...), the cluster as JSON, Prometheus
//! metrics, and the dashboard (`/ui`).
//!
//! Load balancers route clients by these answers, so the API answers from
//! what the keeper loop last published ([`LocalState`]) and never waits on
//! postgres; only lag checks, `/cluster` and `/metrics` read the store, each
//! with a bound (a background task also follows the status, to count the
//! sentinel's decisions for `/metrics`: see `decisions`). The listener is bound before the keeper touches postgres so
//! that a port someone else holds stops start-up with a clear error instead
//! of a keeper nobody can route to. Nothing here changes state yet: requests
//! other than GET/HEAD/OPTIONS are refused, 401 without the password from
//! `--api-password-file` and 405 with it.
//!
//! The server loop ([`crate::http`]) and the Prometheus writer
//! ([`crate::exposition`]) are shared with the proxy's metrics endpoint.

mod alerts;
mod decisions;
mod health;
mod metrics;
mod routes;
pub mod tls;
mod ui;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden_core::lag_history::LagHistory;
use pgwarden_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use self::decisions::Decisions;
use crate::local_state::LocalState;
use crate::view::{self, Snapshot};

/// How long a store snapshot serves lag checks and metrics.
const SNAPSHOT_FRESH: Duration = Duration::from_secs(1);
/// How long a failed store read is remembered before the next attempt, so
/// that checks stay fast while etcd is down.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(2);
/// Bound on one store read made for a request.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// The API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("HTTP API address {addr} is already in use by another process: stop it or pass another --api-listen")]
    AddrInUse { addr: SocketAddr },
    #[error("listen on {addr} for the HTTP API (--api-listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the API's address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            ApiError::AddrInUse { addr }
        } else {
            ApiError::Bind { addr, source }
        }
    })
}

/// What the keeper last published, and when.
#[derive(Debug, Clone)]
struct Published {
    state: LocalState,
    at: Instant,
}

/// Everything a request handler reads.
#[derive(Debug)]
pub struct ApiContext {
    cluster: String,
    uid: String,
    store: Store,
    password: Option<String>,
    /// `--api-auth-reads`: every route but the health checks needs the
    /// password, reads included.
    auth_reads: bool,
    published: watch::Receiver<Option<Published>>,
    started_at: Instant,
    snapshots: SnapshotCache,
    /// The sentinel's decisions seen since start, for `/metrics`.
    decisions: Arc<Decisions>,
    /// The lag sampled every second, for the dashboard's chart.
    lag: Mutex<LagHistory>,
}

/// How the API is protected beyond the password for state changes.
#[derive(Clone, Default)]
pub struct ApiSecurity {
    /// HTTPS (`--api-cert-file`/`--api-key-file`, `--api-client-ca-file`).
    pub tls: Option<TlsAcceptor>,
    /// `--api-auth-reads`.
    pub auth_reads: bool,
}

impl std::fmt::Debug for ApiSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSecurity")
            .field("tls", &self.tls.is_some())
            .field("auth_reads", &self.auth_reads)
            .finish()
    }
}

/// Serves the API on `listener` until `cancel`, answering from what arrives
/// on `local` (the keeper's published state).
pub async fn serve(
    listener: TcpListener,
    store: Store,
    uid: String,
    password: Option<String>,
    security: ApiSecurity,
    local: watch::Receiver<Option<LocalState>>,
    cancel: CancellationToken,
) {
    let (published_tx, published) = watch::channel(None);
    let ctx = Arc::new(ApiContext {
        cluster: store.cluster().to_string(),
        uid,
        snapshots: SnapshotCache::new(store.clone()),
        store,
        password,
        auth_reads: security.auth_reads,
        published,
        started_at: Instant::now(),
        decisions: Arc::new(Decisions::default()),
        lag: Mutex::new(LagHistory::default()),
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    let handler = {
        let ctx = ctx.clone();
        move |req| {
            let ctx = ctx.clone();
            async move { routes::handle(&ctx, req).await }
        }
    };
    tokio::join!(
        follow(local, published_tx, cancel.clone()),
        decisions::follow(ctx.store.clone(), &ctx.decisions, cancel.clone()),
        ui::sample_lag(&ctx, cancel.clone()),
        crate::http::serve_tls(listener, "HTTP API", handler, security.tls, cancel),
    );
}

/// Stamps each publication of the keeper loop with its arrival time, which
/// `/liveness` needs and `LocalState` does not carry.
async fn follow(
    mut local: watch::Receiver<Option<LocalState>>,
    published: watch::Sender<Option<Published>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = local.changed() => {
                if changed.is_err() {
                    // The keeper loop is gone; liveness goes stale by itself.
                    return;
                }
            }
        }
        let state = local.borrow_and_update().clone();
        published.send_replace(state.map(|state| Published {
            state,
            at: Instant::now(),
        }));
    }
}

/// A store snapshot shared by requests for a short while: load balancers
/// check every node every second or so, and each check must not become a
/// read of the whole cluster.
#[derive(Debug)]
struct SnapshotCache {
    store: Store,
    last: tokio::sync::Mutex<Option<(Instant, Option<Arc<Snapshot>>)>>,
}

impl SnapshotCache {
    fn new(store: Store) -> Self {
        SnapshotCache {
            store,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// A recent snapshot, or `None` when the store cannot be read.
    async fn get(&self) -> Option<Arc<Snapshot>> {
        let mut last = self.last.lock().await;
        if let Some((at, snap)) = &*last {
            let ttl = if snap.is_some() {
                SNAPSHOT_FRESH
            } else {
                SNAPSHOT_RETRY
            };
            if at.elapsed() < ttl {
                return snap.clone();
            }
        }
        let snap = load(&self.store).await.ok().map(Arc::new);
        *last = Some((Instant::now(), snap.clone()));
        snap
    }
}

/// Reads the cluster within [`STORE_TIMEOUT`].
async fn load(store: &Store) -> Result<Snapshot, String> {
    match tokio::time::timeout(STORE_TIMEOUT, view::load(store)).await {
        Ok(Ok(snap)) => Ok(snap),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP API cannot read the cluster");
            Err(format!("cannot read the cluster from etcd: {e}"))
        }
        Err(_) => Err(format!(
            "cannot read the cluster from etcd within {}s",
            STORE_TIMEOUT.as_secs()
        )),
    }
}
