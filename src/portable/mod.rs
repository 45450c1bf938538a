//! What the shared serving path needs from the platform, where it is not
//! Unix (Windows): socket errors by number, and what stands in for a
//! socket's descriptor.
//!
//! The rest of the non-Unix build lives beside this file, `generation.rs`
//! (one generation: bind, serve, drain; no reloads), and with the signals,
//! `../signal/console.rs` (Ctrl-C as `SIGINT`).

use std::io;

/// Windows Sockets error numbers (`winsock2.h`), as
/// [`io::Error::raw_os_error`] reports them.
mod wsa {
    pub(super) const ENETDOWN: i32 = 10050;
    pub(super) const ENETUNREACH: i32 = 10051;
    pub(super) const ENETRESET: i32 = 10052;
    pub(super) const EHOSTUNREACH: i32 = 10065;
    pub(super) const EAFNOSUPPORT: i32 = 10047;
    pub(super) const EADDRNOTAVAIL: i32 = 10049;
    pub(super) const EPROTONOSUPPORT: i32 = 10043;
}

/// Whether a bind failed only because the host lacks that address family
/// (no IPv6, say), as opposed to a real problem such as a busy port.
pub(crate) fn family_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(wsa::EAFNOSUPPORT | wsa::EADDRNOTAVAIL | wsa::EPROTONOSUPPORT)
    )
}

/// Whether an accept error (by its number) is a network error of the one
/// connection being accepted, to skip like a reset.
pub(crate) fn is_pending_network_error(code: i32) -> bool {
    matches!(
        code,
        wsa::ENETDOWN | wsa::ENETUNREACH | wsa::ENETRESET | wsa::EHOSTUNREACH
    )
}

/// A socket's handle, where the shared code names a descriptor: only
/// passed around and logged.
pub(crate) type RawFd = std::os::windows::io::RawSocket;

/// A second handle to a connection's socket, through which the stop timeout
/// shuts the socket down (which wakes whoever reads or writes it, an
/// upgraded connection's user task included), without the unsafe code that
/// using the raw handle would take.
///
/// Dropping it does not close the connection: the socket lives until its
/// last handle is closed.
#[derive(Debug)]
pub(crate) struct SocketHandle(Option<socket2::Socket>);

impl SocketHandle {
    /// A second handle to `stream`'s socket; none if the system refuses one
    /// (then the stop timeout ends the connection by ending its task only).
    pub(crate) fn of(stream: &tokio::net::TcpStream) -> SocketHandle {
        let socket = socket2::SockRef::from(stream).try_clone();
        if let Err(e) = &socket {
            tracing::debug!(cause = %e, "cannot duplicate a connection's socket handle");
        }
        SocketHandle(socket.ok())
    }

    /// Shuts the socket down in both directions.
    pub(crate) fn shutdown(&self) {
        if let Some(socket) = &self.0 {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}
