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
mod tests;
