//! A connection's I/O, counted: [`Tracked`] around the accepted socket,
//! [`Plain`] around the plaintext of a TLS stream.
//!
//! Every read and write is told to the connection's [`ConnSignal`] (a
//! relaxed load and store on the hot path), so that the drain can tell a
//! request arriving from an idle connection, and the sweeper a response
//! still on its way from a connection that waits for its next request. The
//! guard inside [`Tracked`] keeps the socket counted and listed for exactly
//! as long as it is open.

use std::io;
#[cfg(unix)]
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn_signal::ConnSignal;
use super::http::writes_through;
use super::sweeper::SocketGuard;
#[cfg(not(unix))]
use crate::listener::RawFd;
use crate::listener::Stream;

/// A connection's I/O with its guard. Fields drop in order: the guard first,
/// so the FD leaves the list before it is closed and can be reused.
pub(super) struct Tracked<IO> {
    pub(super) guard: SocketGuard,
    /// Told of every read, so the drain can tell a request arriving from an
    /// idle connection, and of every write, so the sweeper can tell a
    /// response still on its way from an idle connection.
    pub(super) signal: Arc<ConnSignal>,
    pub(super) io: IO,
}

/// Counts the bytes read from a TLS stream (the HTTP bytes), as [`Tracked`]
/// does for a plain one; writes go straight through (they are seen, as
/// TLS records, by the [`Tracked`] beneath).
pub(super) struct Plain<IO> {
    pub(super) signal: Arc<ConnSignal>,
    pub(super) io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Plain<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (polled, n) = poll_read_counted(&mut this.io, cx, buf);
        if n > 0 {
            this.signal.note_read(n);
        }
        polled
    }
}

/// Polls `io` to read into `buf`: what the poll says, and how many bytes
/// it brought.
fn poll_read_counted<IO: AsyncRead + Unpin>(
    io: &mut IO,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> (Poll<io::Result<()>>, usize) {
    let before = buf.filled().len();
    let polled = Pin::new(io).poll_read(cx, buf);
    (polled, buf.filled().len() - before)
}

writes_through!(Plain);

impl Tracked<Stream> {
    pub(super) fn raw_fd(&self) -> RawFd {
        self.io.raw_fd()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (polled, n) = poll_read_counted(&mut this.io, cx, buf);
        if n > 0 {
            if this.signal.count_reads {
                this.signal.note_read(n);
            } else {
                // Under TLS: a record still partial is a request arriving
                // too, for the drain.
                this.signal.note_arrival();
            }
        }
        polled
    }
}

/// What a write's poll says of the connection's progress: bytes went out,
/// or it waits for the client.
#[inline]
fn note_written(signal: &ConnSignal, polled: &Poll<io::Result<usize>>) {
    match polled {
        Poll::Ready(Ok(n)) if *n > 0 => signal.note_write(*n),
        Poll::Pending => signal.note_write_blocked(),
        _ => {}
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        note_written(&this.signal, &polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        note_written(&this.signal, &polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        // A flush that is done leaves nothing waiting (it sent nothing new);
        // one that waits, waits for the client.
        match polled {
            Poll::Pending => this.signal.note_write_blocked(),
            Poll::Ready(Ok(())) => this.signal.note_flushed(),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO> std::fmt::Debug for Tracked<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("id", &self.guard.id)
            .finish_non_exhaustive()
    }
}
