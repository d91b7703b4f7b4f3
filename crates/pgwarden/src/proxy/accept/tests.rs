//! The accept loop over real loopback sockets: routing, prompt refusals, the
//! connection limit, and cuts.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pgwarden_core::route::{NoPrimary, Routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::proxy::stats::Refusal;
use crate::proxy::table;

/// A backend that reads the first packet of each connection, greets it
/// with its name, then echoes.
async fn backend(name: &'static str) -> Backend {
    counting_backend(name).await.0
}

/// [`backend`], and how many connections it accepted.
async fn counting_backend(name: &'static str) -> (Backend, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut length = [0u8; 4];
                s.read_exact(&mut length).await.unwrap();
                let mut rest = vec![0u8; u32::from_be_bytes(length) as usize - 4];
                s.read_exact(&mut rest).await.unwrap();
                assert_eq!([&length[..], &rest[..]].concat(), startup_message());
                s.write_all(name.as_bytes()).await.unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let backend = Backend {
        uid: name.into(),
        host: "127.0.0.1".into(),
        port,
    };
    (backend, accepted)
}

/// The StartupMessage the test clients send.
fn startup_message() -> Vec<u8> {
    let params = b"user\0app\0\0";
    let mut p = ((8 + params.len()) as u32).to_be_bytes().to_vec();
    p.extend((3u32 << 16).to_be_bytes());
    p.extend(params);
    p
}

/// A backend address nobody listens on.
async fn dead_backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    Backend {
        uid: "dead".into(),
        host: "127.0.0.1".into(),
        port,
    }
}

struct Proxy {
    addr: SocketAddr,
    table: watch::Sender<Arc<Table>>,
    shared: Arc<Shared>,
    root: CancellationToken,
}

impl Proxy {
    async fn start(port: Port, max_connections: usize) -> Proxy {
        Proxy::start_with(port, max_connections, DEFAULT_LOGIN_TIMEOUT).await
    }

    async fn start_with(port: Port, max_connections: usize, login_timeout: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (table, rx) = watch::channel(Arc::new(Table::stopped(0, "starting")));
        let shared = Arc::new(Shared::new(max_connections, login_timeout));
        let root = CancellationToken::new();
        tokio::spawn(serve(listener, port, rx, shared.clone(), root.clone()));
        Proxy {
            addr,
            table,
            shared,
            root,
        }
    }

    /// Routes as given; returns the targets the change cut.
    fn route(&self, primary: Option<&Backend>, read_only: &[&Backend]) -> Vec<table::Target> {
        let routes = Routes {
            generation: 1,
            primary: primary.cloned(),
            no_primary: primary.is_none().then_some(NoPrimary::NotAssigned),
            read_only: read_only.iter().map(|b| (*b).clone()).collect(),
        };
        let old = self.table.borrow().clone();
        let (next, cut) = old.follow(
            &routes,
            Instant::now() + Duration::from_secs(60),
            &self.root,
        );
        self.table.send_replace(Arc::new(next));
        cut
    }

    fn current(&self) -> Arc<Table> {
        self.table.borrow().clone()
    }

    /// A connection that has sent nothing yet.
    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// A connection that has sent its StartupMessage.
    async fn login(&self) -> TcpStream {
        let mut s = self.connect().await;
        s.write_all(&startup_message()).await.unwrap();
        s
    }
}

/// Reads the greeting of `len` bytes.
async fn greeting(s: &mut TcpStream, len: usize) -> String {
    let mut buf = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("greeting in time")
        .unwrap();
    String::from_utf8(buf).unwrap()
}

/// Asserts that the proxy closes `s` within a second without sending anything.
async fn assert_closed_promptly(s: &mut TcpStream) {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("expected a close, got {n} bytes"),
        Err(_) => panic!("the connection was left hanging"),
    }
}

async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(buf, msg);
}

#[tokio::test]
async fn connections_reach_the_primary_and_bytes_flow() {
    let p = Proxy::start(Port::Primary, 10).await;
    let a = backend("aaaa").await;
    p.route(Some(&a), &[]);
    let mut s = p.login().await;
    assert_eq!(greeting(&mut s, 4).await, "aaaa");
    echo(&mut s, b"SELECT 1").await;
    assert_eq!(p.shared.open(), 1);
}

#[tokio::test]
async fn without_a_route_the_client_is_closed_at_once() {
    let p = Proxy::start(Port::Primary, 10).await;
    // Not routing at all.
    let mut s = p.connect().await;
    assert_closed_promptly(&mut s).await;
    // Routing, but no primary.
    p.route(None, &[]);
    let mut s = p.connect().await;
    assert_closed_promptly(&mut s).await;
    // A read-only port without standbys.
    let ro = Proxy::start(Port::ReadOnly, 10).await;
    ro.route(None, &[]);
    let mut s = ro.connect().await;
    assert_closed_promptly(&mut s).await;
    let refused = |p: &Proxy, port| p.shared.stats.refusals(port, Refusal::NoRoute);
    assert_eq!(refused(&p, Port::Primary), 2);
    assert_eq!(refused(&ro, Port::ReadOnly), 1);
}

#[tokio::test]
async fn an_unreachable_backend_closes_the_client_at_once() {
    let p = Proxy::start(Port::Primary, 10).await;
    p.route(Some(&dead_backend().await), &[]);
    let mut s = p.login().await;
    assert_closed_promptly(&mut s).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(p.shared.open(), 0, "the slot is given back");
    assert_eq!(
        p.shared
            .stats
            .refusals(Port::Primary, Refusal::BackendUnreachable),
        1
    );
}

#[tokio::test]
async fn a_primary_change_cuts_open_connections_including_silent_ones() {
    let p = Proxy::start(Port::Primary, 10).await;
    let (a, b) = (backend("aaaa").await, backend("bbbb").await);
    p.route(Some(&a), &[]);
    let mut busy = p.login().await;
    assert_eq!(greeting(&mut busy, 4).await, "aaaa");
    // A client that never sends a byte.
    let mut silent = p.login().await;
    assert_eq!(greeting(&mut silent, 4).await, "aaaa");
    let old = p.current().primary.clone().unwrap();
    assert_eq!(old.relays.len(), 2);

    let to_cut = p.route(Some(&b), &[]);
    assert_eq!(table::cut(to_cut).await, 2);
    assert!(old.relays.is_empty(), "no relay task is left behind");
    assert_eq!(p.shared.stats.cuts(Port::Primary), 2);
    assert_closed_promptly(&mut busy).await;
    assert_closed_promptly(&mut silent).await;
    // New connections go to the new primary.
    let mut s = p.login().await;
    assert_eq!(greeting(&mut s, 4).await, "bbbb");
    echo(&mut s, b"after").await;
}

#[tokio::test]
async fn an_unchanged_primary_keeps_its_connections_across_generations() {
    let p = Proxy::start(Port::Primary, 10).await;
    let a = backend("aaaa").await;
    p.route(Some(&a), &[]);
    let mut s = p.login().await;
    assert_eq!(greeting(&mut s, 4).await, "aaaa");
    assert!(p.route(Some(&a), &[]).is_empty());
    echo(&mut s, b"still here").await;
}

#[tokio::test]
async fn the_connection_limit_closes_new_clients_and_frees_slots() {
    let p = Proxy::start(Port::Primary, 1).await;
    let a = backend("aaaa").await;
    p.route(Some(&a), &[]);
    let mut first = p.login().await;
    assert_eq!(greeting(&mut first, 4).await, "aaaa");
    let mut second = p.connect().await;
    assert_closed_promptly(&mut second).await;
    assert_eq!(
        p.shared
            .stats
            .refusals(Port::Primary, Refusal::MaxConnections),
        1
    );
    echo(&mut first, b"unaffected").await;
    drop(first);
    // The slot comes back once the relay noticed the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.shared.open() > 0 {
        assert!(Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = p.login().await;
    assert_eq!(greeting(&mut third, 4).await, "aaaa");
}

#[tokio::test]
async fn the_read_only_port_rotates_over_standbys_and_cuts_one_that_leaves() {
    let p = Proxy::start(Port::ReadOnly, 10).await;
    let (b, c) = (backend("bbbb").await, backend("cccc").await);
    p.route(None, &[&b, &c]);
    let mut seen = Vec::new();
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = p.login().await;
        seen.push(greeting(&mut s, 4).await);
        open.push(s);
    }
    assert_eq!(seen, ["bbbb", "cccc", "bbbb", "cccc"]);
    // c falls behind: its two sessions are cut, b's stay.
    assert_eq!(table::cut(p.route(None, &[&b])).await, 2);
    assert_closed_promptly(&mut open[1]).await;
    assert_closed_promptly(&mut open[3]).await;
    echo(&mut open[0], b"b stays").await;
    echo(&mut open[2], b"b stays").await;
}

#[tokio::test]
async fn a_silent_client_never_reaches_the_backend_and_is_dropped_after_the_login_timeout() {
    let login_timeout = Duration::from_millis(300);
    let p = Proxy::start_with(Port::Primary, 10, login_timeout).await;
    let (a, accepted) = counting_backend("aaaa").await;
    p.route(Some(&a), &[]);
    let started = Instant::now();
    let mut silent = p.connect().await;
    // Half a header counts as silence too.
    let mut half = p.connect().await;
    half.write_all(&startup_message()[..5]).await.unwrap();
    tokio::time::sleep(login_timeout / 2).await;
    assert_eq!(p.shared.open(), 2);
    assert_closed_promptly(&mut silent).await;
    assert_closed_promptly(&mut half).await;
    assert!(started.elapsed() >= login_timeout);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the backend was contacted"
    );
    assert_eq!(
        p.shared
            .stats
            .refusals(Port::Primary, Refusal::LoginTimeout),
        2
    );
    // A client that speaks in time is relayed.
    let mut s = p.login().await;
    assert_eq!(greeting(&mut s, 4).await, "aaaa");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_malformed_first_packet_gets_an_error_response_and_never_reaches_the_backend() {
    let p = Proxy::start(Port::Primary, 10).await;
    let (a, accepted) = counting_backend("aaaa").await;
    p.route(Some(&a), &[]);
    let mut s = p.connect().await;
    s.write_all(b"\x00\x00\x00\x08\x00\x02\x00\x00")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("answered and closed in time")
        .unwrap();
    assert_eq!(answer.first(), Some(&b'E'));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("unsupported frontend protocol 2.0"), "{text}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    assert_eq!(
        p.shared.stats.refusals(Port::Primary, Refusal::Malformed),
        1
    );
}

#[tokio::test]
async fn a_client_still_silent_when_its_route_goes_is_cut() {
    let p = Proxy::start(Port::Primary, 10).await;
    let (a, b) = (backend("aaaa").await, backend("bbbb").await);
    p.route(Some(&a), &[]);
    let mut silent = p.connect().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(table::cut(p.route(Some(&b), &[])).await, 1);
    assert_closed_promptly(&mut silent).await;
}

#[test]
fn rate_limited_lines_count_what_they_held_back() {
    let limiter = RateLimited::new(Duration::from_secs(3600));
    assert_eq!(limiter.allow(), Some(0));
    assert_eq!(limiter.allow(), None);
    assert_eq!(limiter.allow(), None);
    let limiter = RateLimited {
        interval: Duration::ZERO,
        ..limiter
    };
    assert_eq!(limiter.allow(), Some(2));
}
