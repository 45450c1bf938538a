//! The socket pair between two generations: created by the old one just
//! before it spawns the new one, one end kept, the other handed over.
//!
//! A `SOCK_DGRAM` Unix socket pair: each message stays one datagram (no
//! framing to get wrong), the kernel never reorders or silently loses
//! them, and both ends are close-on-exec from birth (`SOCK_CLOEXEC`, as
//! std creates them), so only the child that is handed its end (by
//! `dup2` in the spawn, which clears the flag on the copy) inherits it.
//!
//! Buffers: each end's send buffer is set to [`BUFFER`] (Linux caps it at
//! `net.core.wmem_max`); a queue also holds at most
//! `net.unix.max_dgram_qlen` datagrams (512 by default) for its reader.
//! A full pair never blocks the router: the datagram is dropped and
//! counted (`dropped_pair_full`), as a congested path would drop it, and
//! QUIC's loss recovery sends it again. That happens only if the reading
//! generation is starved for longer than its queue lasts (512 datagrams
//! are about 700 KiB of QUIC traffic).

use std::io;
#[cfg(unix)]
use std::os::unix::net::UnixDatagram;

/// The send and receive buffer asked for on each end.
#[cfg(unix)]
pub(crate) const BUFFER: usize = 4 << 20;

/// A new pair, `(parent's end, child's end)`, both close-on-exec and
/// blocking (each side makes its end non-blocking when it attaches it).
///
/// The parent attaches its end with
/// [`Http3Listener::attach_successor`](super::Http3Listener::attach_successor)
/// before the spawn, hands the other to the child (which attaches it with
/// [`Http3Listener::attach_predecessor`](super::Http3Listener::attach_predecessor)),
/// and closes its own copy of the child's end once the child is spawned:
/// then a child that dies closes the last copy, and the parent's sends to
/// it fail at once (`ECONNREFUSED`), which detaches it.
///
/// # Errors
///
/// What `socketpair(2)` says (out of descriptors, say).
#[cfg(unix)]
pub(crate) fn socket_pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
    let (a, b) = UnixDatagram::pair()?;
    for end in [&a, &b] {
        let s = socket2::SockRef::from(end);
        // Best effort: a smaller buffer only drops sooner.
        let _ = s.set_send_buffer_size(BUFFER);
        let _ = s.set_recv_buffer_size(BUFFER);
    }
    Ok((a, b))
}

/// One generation's end of a pair, ready for the router: reads wait for
/// readiness through tokio; sends are plain non-blocking `send(2)` calls,
/// never waiting (tokio's `try_send` would refuse until its reactor had
/// seen the socket writable once, losing the first messages).
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct PairSocket(tokio::net::UnixDatagram);

#[cfg(unix)]
impl PairSocket {
    pub(crate) fn poll_recv_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.0.poll_recv_ready(cx)
    }
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_recv(buf)
    }
    pub(crate) fn try_send(&self, msg: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(&self.0).send(msg)
    }
    /// Copies the next message into `buf` (cut to its length) and leaves
    /// it queued; `WouldBlock` if there is none. Asks the socket, not
    /// tokio (whose reactor may not have seen the message yet).
    pub(crate) fn try_peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_now(buf, nix::sys::socket::MsgFlags::MSG_PEEK)
    }
    /// Takes the next message, as [`try_peek`](Self::try_peek) sees it.
    pub(crate) fn try_take(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_now(buf, nix::sys::socket::MsgFlags::empty())
    }
    fn recv_now(&self, buf: &mut [u8], flags: nix::sys::socket::MsgFlags) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let flags = flags | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        nix::sys::socket::recv(self.0.as_raw_fd(), buf, flags).map_err(io::Error::from)
    }
}

/// Makes `end` the router's: non-blocking, registered with tokio.
#[cfg(unix)]
pub(crate) fn adopt(end: UnixDatagram) -> io::Result<PairSocket> {
    end.set_nonblocking(true)?;
    tokio::net::UnixDatagram::from_std(end).map(PairSocket)
}

/// Without Unix sockets there are no pairs (and no reloads): a type with
/// no values, so the router's code for them is there but never runs.
#[cfg(not(unix))]
#[derive(Debug)]
pub(crate) enum PairSocket {}

#[cfg(not(unix))]
impl PairSocket {
    pub(crate) fn poll_recv_ready(
        &self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match *self {}
    }
    pub(crate) fn try_recv(&self, _: &mut [u8]) -> io::Result<usize> {
        match *self {}
    }
    pub(crate) fn try_send(&self, _: &[u8]) -> io::Result<usize> {
        match *self {}
    }
    pub(crate) fn try_peek(&self, _: &mut [u8]) -> io::Result<usize> {
        match *self {}
    }
    pub(crate) fn try_take(&self, _: &mut [u8]) -> io::Result<usize> {
        match *self {}
    }
}
