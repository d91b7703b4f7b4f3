use super::*;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

/// (client app end, backend app end, relay task).
fn start() -> (
    DuplexStream,
    DuplexStream,
    CancellationToken,
    tokio::task::JoinHandle<Relayed>,
) {
    let (client_app, client_side) = duplex(64);
    let (backend_app, backend_side) = duplex(64);
    let cut = CancellationToken::new();
    let task = {
        let cut = cut.clone();
        tokio::spawn(async move {
            relay(
                client_side,
                backend_side,
                &cut,
                &Traffic::default(),
                RelayMode::Copy,
            )
            .await
        })
    };
    (client_app, backend_app, cut, task)
}

async fn read_to_end(s: &mut DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn bytes_flow_both_ways_and_the_backend_closing_ends_it() {
    let (mut client, mut backend, _cut, task) = start();
    client.write_all(b"startup").await.unwrap();
    let mut got = [0u8; 7];
    backend.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"startup");
    backend.write_all(b"auth ok, bye").await.unwrap();
    drop(backend);
    assert_eq!(read_to_end(&mut client).await, b"auth ok, bye");
    assert_eq!(
        task.await.unwrap(),
        Relayed {
            ending: Ending::BackendClosed,
            to_backend: 7,
            to_client: 12
        }
    );
}

#[tokio::test]
async fn a_silent_client_does_not_keep_the_relay_alive_after_the_backend_closed() {
    // The client never sends a byte and never closes.
    let (mut client, backend, _cut, task) = start();
    drop(backend);
    let relayed = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("relay must end when the backend closes")
        .unwrap();
    assert_eq!(relayed.ending, Ending::BackendClosed);
    assert_eq!(read_to_end(&mut client).await, b"");
}

#[tokio::test]
async fn cutting_closes_both_sides_at_once() {
    let (mut client, mut backend, cut, task) = start();
    cut.cancel();
    let relayed = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("relay must end when cut")
        .unwrap();
    assert_eq!(
        relayed,
        Relayed {
            ending: Ending::Cut,
            to_backend: 0,
            to_client: 0
        }
    );
    assert_eq!(read_to_end(&mut client).await, b"");
    assert_eq!(read_to_end(&mut backend).await, b"");
}

#[tokio::test]
async fn client_close_is_passed_on_and_the_backend_answer_still_delivered() {
    let (mut client, mut backend, _cut, task) = start();
    client.write_all(b"X").await.unwrap();
    client.shutdown().await.unwrap();
    // The backend sees the request and then EOF.
    assert_eq!(read_to_end(&mut backend).await, b"X");
    backend.write_all(b"last words").await.unwrap();
    drop(backend);
    assert_eq!(read_to_end(&mut client).await, b"last words");
    assert_eq!(
        task.await.unwrap(),
        Relayed {
            ending: Ending::ClientClosed,
            to_backend: 1,
            to_client: 10
        }
    );
}

#[tokio::test]
async fn a_backend_that_stays_open_after_the_client_left_is_dropped_after_linger() {
    let (client, mut backend, _cut, task) = start();
    let started = tokio::time::Instant::now();
    drop(client);
    assert_eq!(read_to_end(&mut backend).await, b"");
    // The backend keeps its end open and silent.
    let relayed = tokio::time::timeout(LINGER * 3, task)
        .await
        .expect("relay must end after LINGER")
        .unwrap();
    assert_eq!(relayed.ending, Ending::ClientClosed);
    assert!(started.elapsed() >= LINGER);
    drop(backend);
}

#[tokio::test]
async fn traffic_is_counted_while_the_relay_runs_and_adds_up_to_its_totals() {
    let (mut client, client_side) = duplex(64);
    let (mut backend, backend_side) = duplex(64);
    let traffic = std::sync::Arc::new(Traffic::default());
    let cut = CancellationToken::new();
    let task = {
        let (cut, traffic) = (cut.clone(), traffic.clone());
        tokio::spawn(async move {
            relay(client_side, backend_side, &cut, &traffic, RelayMode::Copy).await
        })
    };
    client.write_all(b"query").await.unwrap();
    let mut got = [0u8; 5];
    backend.read_exact(&mut got).await.unwrap();
    backend.write_all(b"rows!!").await.unwrap();
    let mut got = [0u8; 6];
    client.read_exact(&mut got).await.unwrap();
    // Both sides still open: the counts are there already.
    assert!(!task.is_finished());
    assert_eq!(traffic.to_backend.load(Ordering::Relaxed), 5);
    assert_eq!(traffic.to_client.load(Ordering::Relaxed), 6);
    drop(backend);
    let relayed = task.await.unwrap();
    assert_eq!(
        (relayed.to_backend, relayed.to_client),
        (
            traffic.to_backend.load(Ordering::Relaxed),
            traffic.to_client.load(Ordering::Relaxed)
        )
    );
}

#[tokio::test]
async fn large_transfers_in_both_directions_arrive_intact() {
    let (client, backend, _cut, task) = start();
    let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = (0..500_000u32).map(|i| (i % 241) as u8).collect();
    let (mut c_read, mut c_write) = tokio::io::split(client);
    let (mut b_read, mut b_write) = tokio::io::split(backend);
    let (up2, down2) = (up.clone(), down.clone());
    let writer_c = tokio::spawn(async move {
        c_write.write_all(&up2).await.unwrap();
        c_write
    });
    let writer_b = tokio::spawn(async move {
        b_write.write_all(&down2).await.unwrap();
        b_write
    });
    let mut got_up = vec![0u8; up.len()];
    b_read.read_exact(&mut got_up).await.unwrap();
    let mut got_down = vec![0u8; down.len()];
    c_read.read_exact(&mut got_down).await.unwrap();
    assert!(got_up == up && got_down == down);
    let (_c_write, b_write) = (writer_c.await.unwrap(), writer_b.await.unwrap());
    drop(b_write);
    drop(b_read);
    let relayed = task.await.unwrap();
    assert_eq!(
        (relayed.ending, relayed.to_backend, relayed.to_client),
        (Ending::BackendClosed, up.len() as u64, down.len() as u64)
    );
}

/// Two connected loopback sockets.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = TcpStream::connect(listener.local_addr().unwrap());
    let (connected, accepted) = tokio::join!(connect, listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

/// (client app end, backend app end, relay task) over real sockets, so
/// that the relay reads with the TCP short-read path or splices.
async fn start_tcp(
    mode: RelayMode,
) -> (
    TcpStream,
    TcpStream,
    CancellationToken,
    tokio::task::JoinHandle<Relayed>,
) {
    let (client_app, client_side) = tcp_pair().await;
    let (backend_side, backend_app) = tcp_pair().await;
    let cut = CancellationToken::new();
    let task = {
        let cut = cut.clone();
        tokio::spawn(async move {
            relay(client_side, backend_side, &cut, &Traffic::default(), mode).await
        })
    };
    (client_app, backend_app, cut, task)
}

/// Both ways of relaying, for every TCP test.
const MODES: [RelayMode; 2] = [RelayMode::Copy, RelayMode::Splice];

#[tokio::test]
async fn splicing_is_used_only_between_two_tcp_sockets() {
    let (a, b) = tcp_pair().await;
    let (d, _e) = duplex(64);
    assert!(splices(RelayMode::Splice, &a, &b));
    assert!(!splices(RelayMode::Copy, &a, &b));
    assert!(!splices(RelayMode::Splice, &a, &d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_many_small_round_trips_never_miss_a_wakeup() {
    for mode in MODES {
        small_round_trips(mode).await;
    }
}

async fn small_round_trips(mode: RelayMode) {
    let (mut client, mut backend, _cut, task) = start_tcp(mode).await;
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            let n = backend.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            backend.write_all(&buf[..n]).await.unwrap();
        }
    });
    for i in 0..2000u32 {
        let msg = i.to_be_bytes();
        client.write_all(&msg).await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .expect("each answer arrives")
            .unwrap();
        assert_eq!(got, msg);
    }
    client.shutdown().await.unwrap();
    server.await.unwrap();
    let relayed = task.await.unwrap();
    assert_eq!((relayed.to_backend, relayed.to_client), (8000, 8000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_large_transfers_both_ways_arrive_intact_and_eof_ends_it() {
    for mode in MODES {
        large_transfers(mode).await;
    }
}

async fn large_transfers(mode: RelayMode) {
    let (client, backend, _cut, task) = start_tcp(mode).await;
    let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = (0..5_000_000u32).map(|i| (i % 241) as u8).collect();
    let (mut c_read, mut c_write) = client.into_split();
    let (mut b_read, mut b_write) = backend.into_split();
    let (up2, down2) = (up.clone(), down.clone());
    // The client's write half is kept (not shut down) until the end.
    let writer_c = tokio::spawn(async move {
        c_write.write_all(&up2).await.unwrap();
        c_write
    });
    let writer_b = tokio::spawn(async move {
        b_write.write_all(&down2).await.unwrap();
        b_write
    });
    let reader_b = tokio::spawn(async move {
        let mut got = vec![0u8; 3_000_000];
        b_read.read_exact(&mut got).await.unwrap();
        got
    });
    let mut got_down = vec![0u8; down.len()];
    c_read.read_exact(&mut got_down).await.unwrap();
    assert!(got_down == down);
    assert!(reader_b.await.unwrap() == up);
    let _c_write = writer_c.await.unwrap();
    drop(writer_b.await.unwrap());
    let relayed = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the backend's close ends the relay")
        .unwrap();
    assert_eq!(
        (relayed.ending, relayed.to_backend, relayed.to_client),
        (Ending::BackendClosed, up.len() as u64, down.len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_the_client_closing_is_passed_on_and_a_cut_ends_it() {
    for mode in MODES {
        // The client closes: the backend sees EOF and its answer still
        // reaches the client before the relay ends.
        let (mut client, mut backend, _cut, task) = start_tcp(mode).await;
        client.write_all(b"bye").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_tcp_to_end(&mut backend).await, b"bye", "{mode:?}");
        backend.write_all(b"ok").await.unwrap();
        drop(backend);
        assert_eq!(read_tcp_to_end(&mut client).await, b"ok", "{mode:?}");
        let relayed = task.await.unwrap();
        assert_eq!((relayed.to_backend, relayed.to_client), (3, 2), "{mode:?}");

        // A cut ends it at once with both sides open.
        let (mut client, mut backend, cut, task) = start_tcp(mode).await;
        cut.cancel();
        let relayed = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a cut ends the relay")
            .unwrap();
        assert_eq!(relayed.ending, Ending::Cut, "{mode:?}");
        assert_eq!(read_tcp_to_end(&mut client).await, b"");
        assert_eq!(read_tcp_to_end(&mut backend).await, b"");
    }
}

async fn read_tcp_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}
