//! The keeper's HTTP API: Patroni-compatible health checks for load
//! balancers (`/primary`, `/replica`, ...), the cluster as JSON, Prometheus
//! metrics.
//!
//! Load balancers route clients by these answers, so the API answers from
//! what the keeper loop last published ([`LocalState`]) and never waits on
//! postgres; only lag checks, `/cluster` and `/metrics` read the store, each
//! with a bound. The listener is bound before the keeper touches postgres so
//! that a port someone else holds stops start-up with a clear error instead
//! of a keeper nobody can route to. Nothing here changes state yet: requests
//! other than GET/HEAD/OPTIONS are refused, 401 without the password from
//! `--api-password-file` and 405 with it.

mod health;
mod metrics;
mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pgwarden_store::Store;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::keeper::LocalState;
use crate::view::{self, Snapshot};

/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long open connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
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
    published: watch::Receiver<Option<Published>>,
    started_at: Instant,
    snapshots: SnapshotCache,
}

/// Serves the API on `listener` until `cancel`, answering from what arrives
/// on `local` (the keeper's published state).
pub async fn serve(
    listener: TcpListener,
    store: Store,
    uid: String,
    password: Option<String>,
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
        published,
        started_at: Instant::now(),
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    tokio::join!(
        follow(local, published_tx, cancel.clone()),
        accept(listener, ctx, cancel),
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

async fn accept(listener: TcpListener, ctx: Arc<ApiContext>, cancel: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => tokio::select! {
                    _ = cancel.cancelled() => break,
                    a = listener.accept() => a.map(|a| (a, permit)),
                },
                Err(_) => break,
            },
        };
        let ((stream, peer), permit) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, carry on.
                tracing::warn!(error = %e, "HTTP API cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        connections.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(routes::handle(&ctx, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP API connection ended with an error");
            }
        });
    }
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("HTTP API connections still open at shutdown: dropped");
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
