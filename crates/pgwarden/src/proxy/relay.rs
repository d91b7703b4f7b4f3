//! The byte relay between a client and a postgres backend.
//!
//! It is generic over `AsyncRead + AsyncWrite` so that it is tested over
//! `tokio::io::duplex`, and it is a small poll loop of our own rather than
//! `tokio::io::copy_bidirectional` because of when it ends. A relay must
//! never outlive its reason to exist:
//!
//! - the backend closed: everything it sent is flushed to the client, the
//!   client's side is shut down, and the relay ends at once, even if the client
//!   never sends another byte (copy_bidirectional would wait for the client's
//!   EOF forever);
//! - the client closed: the backend's side is shut down and whatever the
//!   backend still sends is relayed, for at most [`LINGER`];
//! - the routing changed (`cut` fired): it ends at once, dropping both sides;
//! - an IO error on either side ends it.
//!
//! Postgres has no use for a half-open connection, so none of this loses
//! anything a client could still read.
//!
//! Bytes are also added to a shared [`Traffic`] as they are written, so the
//! proxy's metrics show a long session's traffic while it runs, not only
//! once it ends.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Bytes buffered per direction: as large as postgres' own send buffer
/// twice over, small enough for a thousand idle connections.
const BUFFER_SIZE: usize = 16 * 1024;
/// How long the backend may keep sending after the client closed.
pub const LINGER: Duration = Duration::from_secs(2);

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The backend closed its side.
    BackendClosed,
    /// The client closed its side (and the backend followed, or lingered too long).
    ClientClosed,
    /// The route was withdrawn.
    Cut,
    /// Reading or writing failed on either side.
    Error(io::ErrorKind),
}

/// What a relay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Why it ended.
    pub ending: Ending,
    /// Bytes from the client to the backend.
    pub to_backend: u64,
    /// Bytes from the backend to the client.
    pub to_client: u64,
}

/// Bytes relayed so far, by direction, across every relay that shares it.
#[derive(Debug, Default)]
pub struct Traffic {
    /// From clients to backends.
    pub to_backend: AtomicU64,
    /// From backends to clients.
    pub to_client: AtomicU64,
}

/// Relays bytes between `client` and `backend` until one of the endings in
/// the module docs, adding them to `traffic` as they are written.
pub async fn relay<C, B>(
    mut client: C,
    mut backend: B,
    cut: &CancellationToken,
    traffic: &Traffic,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pump::new(&traffic.to_backend);
    let mut down = Pump::new(&traffic.to_client);
    let cancelled = cut.cancelled();
    tokio::pin!(cancelled);
    // Armed once the client has closed.
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let ending = poll_fn(|cx| {
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ending::Cut);
        }
        // Backend to client first: when the backend closed, that is the end.
        match down.poll(cx, &mut backend, &mut client) {
            Poll::Ready(Ok(())) if up.done => return Poll::Ready(Ending::ClientClosed),
            Poll::Ready(Ok(())) => return Poll::Ready(Ending::BackendClosed),
            Poll::Ready(Err(e)) => return Poll::Ready(Ending::Error(e.kind())),
            Poll::Pending => {}
        }
        if !up.done {
            match up.poll(cx, &mut client, &mut backend) {
                Poll::Ready(Ok(())) => linger = Some(Box::pin(tokio::time::sleep(LINGER))),
                Poll::Ready(Err(e)) => return Poll::Ready(Ending::Error(e.kind())),
                Poll::Pending => {}
            }
        }
        if let Some(timer) = linger.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ending::ClientClosed);
            }
        }
        Poll::Pending
    })
    .await;
    Relayed {
        ending,
        to_backend: up.bytes,
        to_client: down.bytes,
    }
}

/// One direction of the relay: read into the buffer, write it all out, repeat;
/// on EOF shut the writer down.
struct Pump<'a> {
    /// The shared count of this direction.
    counted: &'a AtomicU64,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    unflushed: bool,
    done: bool,
    bytes: u64,
}

impl<'a> Pump<'a> {
    fn new(counted: &'a AtomicU64) -> Self {
        Pump {
            counted,
            buf: vec![0; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            unflushed: false,
            done: false,
            bytes: 0,
        }
    }

    /// Ready(Ok) once the reader hit EOF, everything was written and the
    /// writer was shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.start == self.end && !self.eof {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            self.start = 0;
                            self.end = n;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.unflushed {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.start < self.end {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.bytes += n as u64;
                self.counted.fetch_add(n as u64, Ordering::Relaxed);
                self.unflushed = true;
            }
            if self.eof {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
                relay(client_side, backend_side, &cut, &Traffic::default()).await
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
            tokio::spawn(async move { relay(client_side, backend_side, &cut, &traffic).await })
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
}
