//! The proxy's optional `--metrics-listen` endpoint: the counters of
//! [`super::stats`] and the routing table, served as `GET /metrics`
//! (Prometheus text format).
//!
//! Counting is a few relaxed atomic additions per connection and per buffer
//! written, so it is always on; only the endpoint is optional. The server
//! loop and the text writer are the keeper API's, so both endpoints behave
//! and format alike. Every sample carries `cluster` and `id` labels.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::accept::Shared;
use super::stats::{PortStats, Refusal, PORTS};
use super::table::Table;
use crate::exposition::{self, flag, Exposition, Kind};
use crate::http::{self, Body};

/// Renders every proxy metric.
pub fn render(cluster: &str, id: &str, shared: &Shared, table: &Table) -> String {
    let stats = &shared.stats;
    let me = [("cluster", cluster), ("id", id)];
    let mut e = Exposition::new();
    e.gauge(
        "pgwarden_proxy_routing",
        "1 while the proxy routes (it has heard from etcd in time and holds its lease), 0 while it closes every connection.",
        &me,
        Some(flag(table.routing())),
    );
    e.gauge(
        "pgwarden_proxy_generation",
        "The status generation the routing table carries out.",
        &me,
        Some(table.generation),
    );
    e.gauge(
        "pgwarden_proxy_max_connections",
        "Most client connections open at once, across both ports (--max-connections).",
        &me,
        Some(shared.max_connections()),
    );
    let per_port = |e: &mut Exposition, value: &dyn Fn(&PortStats) -> u64| {
        for port in PORTS {
            let name = port.to_string();
            e.sample(
                &[&me[..], &[("port", &name)]].concat(),
                value(stats.port(port)),
            );
        }
    };
    e.family(
        "pgwarden_proxy_connections_total",
        Kind::Counter,
        "Client connections accepted, by listening port (primary or read-only).",
    );
    per_port(&mut e, &|p| p.accepted.load(Ordering::Relaxed));
    e.family(
        "pgwarden_proxy_connections_active",
        Kind::Gauge,
        "Client connections open now, by listening port (relayed, or connecting to the backend).",
    );
    per_port(&mut e, &|p| p.active.load(Ordering::Relaxed));
    e.family(
        "pgwarden_proxy_connections_cut_total",
        Kind::Counter,
        "Connections closed by the proxy because their route was withdrawn (the backend stopped being primary, or routing stopped).",
    );
    per_port(&mut e, &|p| p.cut.load(Ordering::Relaxed));
    e.family(
        "pgwarden_proxy_connections_refused_total",
        Kind::Counter,
        "Client connections closed at once without being relayed, by port and reason.",
    );
    for port in PORTS {
        let name = port.to_string();
        for (i, why) in Refusal::ALL.iter().enumerate() {
            e.sample(
                &[&me[..], &[("port", &name), ("reason", why.label())]].concat(),
                stats.port(port).refused[i].load(Ordering::Relaxed),
            );
        }
    }
    e.family(
        "pgwarden_proxy_bytes_total",
        Kind::Counter,
        "Bytes relayed, by direction, counted as they are written.",
    );
    for (direction, n) in [
        ("client_to_server", &stats.traffic.to_backend),
        ("server_to_client", &stats.traffic.to_client),
    ] {
        e.sample(
            &[&me[..], &[("direction", direction)]].concat(),
            n.load(Ordering::Relaxed),
        );
    }
    e.finish()
}

/// Serves `GET /metrics` on `listener` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    cluster: String,
    id: String,
    shared: Arc<Shared>,
    table: watch::Receiver<Arc<Table>>,
    cancel: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    let labels = Arc::new((cluster, id));
    let handler = move |req: Request<Incoming>| {
        let answer = answer(&req, || {
            let table = table.borrow().clone();
            render(&labels.0, &labels.1, &shared, &table)
        });
        async move { answer }
    };
    http::serve(listener, "metrics endpoint", handler, cancel).await;
}

/// `GET`/`HEAD /metrics`; 404 for other paths, 405 for other methods.
fn answer(req: &Request<Incoming>, render: impl FnOnce() -> String) -> Response<Body> {
    let method = req.method();
    if req.uri().path() != "/metrics" {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics here\n".into(),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or HEAD only\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let body = if method == Method::GET {
        render()
    } else {
        String::new()
    };
    respond(StatusCode::OK, exposition::CONTENT_TYPE, body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests;
