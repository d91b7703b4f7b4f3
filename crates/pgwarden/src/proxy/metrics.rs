//! The proxy's metrics: counters the accept loops and relays bump, and the
//! optional `--metrics-listen` endpoint that serves them (`GET /metrics`,
//! Prometheus text format).
//!
//! Counting is a few relaxed atomic additions per connection and per buffer
//! written, so it is always on; only the endpoint is optional. The server
//! loop and the text writer are the keeper API's, so both endpoints behave
//! and format alike. Every sample carries `cluster` and `id` labels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::accept::Shared;
use super::relay::Traffic;
use super::table::{Port, Table};
use crate::api::exposition::{self, flag, Exposition, Kind};
use crate::api::http::{self, Body};

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
    const ALL: [Refusal; 5] = [
        Refusal::NoRoute,
        Refusal::MaxConnections,
        Refusal::BackendUnreachable,
        Refusal::LoginTimeout,
        Refusal::Malformed,
    ];

    fn label(self) -> &'static str {
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
struct PortStats {
    accepted: AtomicU64,
    /// Open connections: waiting for the first packet, connecting to the
    /// backend, or relaying.
    active: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    cut: AtomicU64,
}

/// What the proxy counts, shared by the accept loops, the relays and the
/// metrics endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    ports: [PortStats; 2],
    /// Bytes relayed, counted as they are written.
    pub traffic: Traffic,
}

const PORTS: [Port; 2] = [Port::Primary, Port::ReadOnly];

impl Stats {
    fn port(&self, port: Port) -> &PortStats {
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
