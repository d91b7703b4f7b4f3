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
//!
//! Reads go through [`Side::poll_read_drained`]. For a TCP socket a read
//! that returned less than the buffer emptied the socket, so it clears the
//! socket's readiness at once instead of asking the kernel again only to be
//! told `EAGAIN`: with postgres' small request/response messages that saves
//! one `recvfrom` of three syscalls per message and direction. Any other
//! stream (`tokio::io::duplex` in the tests) reads as usual.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::unistd::pipe2;
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
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

/// One end of a relay: a byte stream that may know when a read drained it.
pub trait Side: AsyncRead + AsyncWrite + Unpin {
    /// The TCP socket underneath, which splice(2) can move bytes from and to.
    fn as_tcp(&self) -> Option<&TcpStream> {
        None
    }

    /// Reads like `poll_read`; a stream that can tell that the read left
    /// nothing behind marks itself not readable, saving the next read.
    fn poll_read_drained(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self).poll_read(cx, buf)
    }
}

impl Side for tokio::io::DuplexStream {}

impl Side for TcpStream {
    fn as_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }

    fn poll_read_drained(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            let room = buf.remaining();
            let mut short = None;
            // The readiness tokio clears on WouldBlock is the one it saw
            // before the closure ran: data that arrives during the read
            // raises it again (edge-triggered epoll), so no wakeup is lost.
            let read = self.try_io(Interest::READABLE, || {
                let n = self.try_read(buf.initialize_unfilled())?;
                if n > 0 && n < room {
                    short = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (read, short) {
                (_, Some(n)) | (Ok(n), None) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Relays bytes between `client` and `backend` until one of the endings in
/// the module docs, adding them to `traffic` as they are written.
pub async fn relay<C, B>(
    mut client: C,
    mut backend: B,
    cut: &CancellationToken,
    traffic: &Traffic,
    mode: RelayMode,
) -> Relayed
where
    C: Side,
    B: Side,
{
    let splice = splices(mode, &client, &backend);
    let mut up = Pump::new(&traffic.to_backend, splice);
    let mut down = Pump::new(&traffic.to_client, splice);
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
            Poll::Ready(Ok(())) if up.done() => return Poll::Ready(Ending::ClientClosed),
            Poll::Ready(Ok(())) => return Poll::Ready(Ending::BackendClosed),
            Poll::Ready(Err(e)) => return Poll::Ready(Ending::Error(e.kind())),
            Poll::Pending => {}
        }
        if !up.done() {
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
        to_backend: up.bytes(),
        to_client: down.bytes(),
    }
}

/// Whether a relay between `client` and `backend` splices: when asked to,
/// and only between two TCP sockets.
fn splices<C: Side, B: Side>(mode: RelayMode, client: &C, backend: &B) -> bool {
    mode == RelayMode::Splice && client.as_tcp().is_some() && backend.as_tcp().is_some()
}

/// How a relay moves bytes between two TCP sockets (`--relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RelayMode {
    /// read(2) into a buffer of ours, write(2) it out.
    #[default]
    Copy,
    /// splice(2) through a pipe per direction: the bytes never enter user
    /// space, at the price of a pipe (two more descriptors) per direction.
    Splice,
}

impl RelayMode {
    /// File descriptors a relayed connection holds: its two sockets, plus
    /// the pipes when splicing.
    pub fn files_per_connection(self) -> u64 {
        match self {
            RelayMode::Copy => 2,
            RelayMode::Splice => 6,
        }
    }
}

/// One direction of the relay.
enum Pump<'a> {
    Copy(CopyPump<'a>),
    Splice(SplicePump<'a>),
}

impl<'a> Pump<'a> {
    /// A splicing pump when asked for and a pipe can be had (else copying:
    /// the relay works either way).
    fn new(counted: &'a AtomicU64, splice: bool) -> Self {
        if splice {
            match SplicePump::new(counted) {
                Ok(p) => return Pump::Splice(p),
                Err(e) => tracing::debug!(error = %e, "no pipe for splice(2): copying instead"),
            }
        }
        Pump::Copy(CopyPump::new(counted))
    }

    fn done(&self) -> bool {
        match self {
            Pump::Copy(p) => p.done,
            Pump::Splice(p) => p.done,
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Pump::Copy(p) => p.bytes,
            Pump::Splice(p) => p.bytes,
        }
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: Side,
        W: Side,
    {
        match self {
            Pump::Copy(p) => p.poll(cx, reader, writer),
            Pump::Splice(p) => match (reader.as_tcp(), writer.as_tcp()) {
                (Some(r), Some(w)) => p.poll(cx, r, w),
                _ => Poll::Ready(Err(io::ErrorKind::Unsupported.into())),
            },
        }
    }
}

/// One direction of the relay: read into the buffer, write it all out, repeat;
/// on EOF shut the writer down.
struct CopyPump<'a> {
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

impl<'a> CopyPump<'a> {
    fn new(counted: &'a AtomicU64) -> Self {
        CopyPump {
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
        R: Side,
        W: Side,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.start == self.end && !self.eof {
                let mut rb = ReadBuf::new(&mut self.buf);
                match reader.poll_read_drained(cx, &mut rb) {
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

/// Most bytes one splice(2) moves into the pipe: its default capacity, so
/// that a splice into the (empty) pipe never blocks on the pipe itself.
const PIPE_CHUNK: usize = 64 * 1024;

/// One direction relayed with splice(2): socket to pipe, pipe to socket,
/// inside the kernel. The pipe is filled only when empty, so `EAGAIN` from
/// the first splice always means the socket had nothing, and from the second
/// that the peer's socket is full.
struct SplicePump<'a> {
    counted: &'a AtomicU64,
    pipe_read: OwnedFd,
    pipe_write: OwnedFd,
    /// Bytes in the pipe, not yet written out.
    in_pipe: usize,
    eof: bool,
    done: bool,
    bytes: u64,
}

impl<'a> SplicePump<'a> {
    fn new(counted: &'a AtomicU64) -> io::Result<Self> {
        let (pipe_read, pipe_write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(SplicePump {
            counted,
            pipe_read,
            pipe_write,
            in_pipe: 0,
            eof: false,
            done: false,
            bytes: 0,
        })
    }

    /// Ready(Ok) once the reader hit EOF, everything was written and the
    /// writer was shut down.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        reader: &TcpStream,
        writer: &TcpStream,
    ) -> Poll<io::Result<()>> {
        const FLAGS: SpliceFFlags =
            SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.in_pipe == 0 && !self.eof {
                ready!(reader.poll_read_ready(cx))?;
                let moved = reader.try_io(Interest::READABLE, || {
                    Ok(splice(
                        reader,
                        None,
                        &self.pipe_write,
                        None,
                        PIPE_CHUNK,
                        FLAGS,
                    )?)
                });
                match moved {
                    Ok(0) => self.eof = true,
                    Ok(n) => self.in_pipe = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            while self.in_pipe > 0 {
                ready!(writer.poll_write_ready(cx))?;
                let moved = writer.try_io(Interest::WRITABLE, || {
                    Ok(splice(
                        &self.pipe_read,
                        None,
                        writer,
                        None,
                        self.in_pipe,
                        FLAGS,
                    )?)
                });
                match moved {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.bytes += n as u64;
                        self.counted.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if self.eof {
                nix::sys::socket::shutdown(writer.as_raw_fd(), nix::sys::socket::Shutdown::Write)
                    .or_else(|e| {
                    if e == nix::errno::Errno::ENOTCONN {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
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
}
