//! A small HTTP/1 server loop shared by the keeper's API and the proxy's
//! metrics endpoint: bounded connections, a header timeout, and a graceful
//! stop on cancellation; optionally over TLS ([`serve_tls`]).
//!
//! Both serve a few short answers to load balancers and scrapers, so one
//! loop with one set of limits fits both; what they answer is the
//! `handler`'s business.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A response body: the whole answer at once.
pub type Body = Full<Bytes>;

/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long open connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed accept (out of file descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves HTTP/1 on `listener` until `cancel`, answering each request with
/// `handler`. `what` names the server in log lines.
pub async fn serve<H, F>(
    listener: TcpListener,
    what: &'static str,
    handler: H,
    cancel: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_tls(listener, what, handler, None, cancel).await;
}

/// [`serve`], over TLS when `tls` is given. The handshake must finish within
/// the header timeout, like the request headers.
pub async fn serve_tls<H, F>(
    listener: TcpListener,
    what: &'static str,
    handler: H,
    tls: Option<TlsAcceptor>,
    cancel: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
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
                tracing::warn!(error = %e, "{what} cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (handler, cancel, tls) = (handler.clone(), cancel.clone(), tls.clone());
        connections.spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                return connection(stream, handler, cancel, what, peer).await;
            };
            match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => connection(stream, handler, cancel, what, peer).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "{what} TLS handshake failed");
                }
                Err(_) => tracing::debug!(%peer, "{what} TLS handshake timed out"),
            }
        });
    }
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("{what} connections still open at shutdown: dropped");
    }
}

/// Serves one connection until it ends or `cancel`.
async fn connection<S, H, F>(
    stream: S,
    handler: H,
    cancel: CancellationToken,
    what: &'static str,
    peer: std::net::SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let answer = handler(req);
        async move { Ok::<_, Infallible>(answer.await) }
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
        tracing::debug!(%peer, error = %e, "{what} connection ended with an error");
    }
}
