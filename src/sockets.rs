//! Sockets and descriptors that `endless` hands over at every reload
//! without serving them itself: a UDP socket (DNS, syslog, QUIC), a TCP
//! listener for a protocol that is not HTTP, a Unix datagram socket, any
//! descriptor (a memfd holding a cache).
//!
//! Each function returns the one the previous generation handed over under
//! the same name, if there is one and it is what is asked for (the right
//! type, family and address), or makes a new one; either way it is passed
//! on at every later reload. So a UDP socket keeps its port and its receive
//! queue, and a TCP listener its accept queue: nothing sent during a
//! reload is refused.
//!
//! The rules:
//! - Call them before [`Server::run`](crate::Server::run) (a call after,
//!   or a second call with one name, is an [`Error::Config`] naming it).
//! - The descriptor returned is close-on-exec: processes that your code
//!   spawns never inherit it; only the next generation does, during the
//!   hand-over.
//! - Stop using it when the generation drains ([`draining`]): the next
//!   generation reads the same socket from the moment it starts, so a
//!   datagram read by the draining one would be answered by a process
//!   about to exit. If the next generation dies within its probation, this
//!   one serves again: start over when [`serving`] resolves.
//! - A descriptor handed over under a name that this generation never asks
//!   for is closed when [`Server::run`](crate::Server::run) starts, as an
//!   inherited listener that no registration matches is.
//!
//! # Examples
//!
//! A UDP echo server next to the HTTP one:
//!
//! ```no_run
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! use hyper::service::service_fn;
//!
//! let udp = endless::sockets::udp("echo", "127.0.0.1:5353")?;
//! udp.set_nonblocking(true)?;
//! let udp = tokio::net::UdpSocket::from_std(udp)?;
//! tokio::spawn(async move {
//!     let mut buf = [0u8; 1500];
//!     loop {
//!         tokio::select! {
//!             // The next generation reads now; if it fails within its
//!             // probation, this one serves again.
//!             _ = endless::sockets::draining() => endless::sockets::serving().await,
//!             r = udp.recv_from(&mut buf) => if let Ok((n, peer)) = r {
//!                 let _ = udp.send_to(&buf[..n], peer).await;
//!             },
//!         }
//!     }
//! });
//! endless::Server::new()
//!     .register("127.0.0.1:8080", service_fn(|_req| async {
//!         Ok::<_, std::convert::Infallible>(hyper::Response::new("hi\n".to_string()))
//!     }))
//!     .run()
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;

use socket2::{Domain, SockRef, Socket, Type};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::handover;

/// The descriptors to hand over (our own copies, close-on-exec), by name,
/// kept for the life of the process; and whether `run` has started (then
/// the set is fixed).
static REGISTERED: Mutex<Registered> = Mutex::new(Registered {
    fixed: false,
    list: Vec::new(),
});

struct Registered {
    fixed: bool,
    list: Vec<(String, OwnedFd)>,
}

/// Resolves once this generation stops serving the sockets of this module
/// (its drain starts), at once (no spread): stop reading them then, as the
/// next generation reads them already. Resolves at once if it is draining
/// now.
///
/// If the next generation dies within its probation
/// ([`Server::probation`](crate::Server::probation)), this one serves
/// again: [`serving`] resolves then, and the sockets are this generation's
/// to read once more (see the example in the module docs).
///
/// # Cancellation safety
///
/// Cancellation safe: any number of tasks may wait, and a dropped future
/// loses nothing.
pub async fn draining() {
    let mut phase = crate::lifecycle::sockets_phase().subscribe();
    let _ = phase.wait_for(|draining| *draining).await;
}

/// Resolves while this generation serves the sockets of this module: at
/// once, unless it is draining; then when it serves again (its successor
/// died within its probation), or never.
///
/// # Cancellation safety
///
/// Cancellation safe, like [`draining`].
pub async fn serving() {
    let mut phase = crate::lifecycle::sockets_phase().subscribe();
    let _ = phase.wait_for(|draining| !*draining).await;
}

/// Whether this generation has stopped serving the sockets of this module
/// (it is draining).
pub fn is_draining() -> bool {
    *crate::lifecycle::sockets_phase().borrow()
}

/// A UDP socket bound to `addr` (a literal address such as
/// `"127.0.0.1:5353"` or `"[::1]:0"`, or `":5353"` for every interface,
/// IPv6 and IPv4), handed over as `name`.
///
/// With port 0, the kernel chooses the port once, in the first generation;
/// later generations get the same socket, so the port stays. `":PORT"` is
/// bound as TCP listeners on `:PORT` are: dual-stack IPv6 whatever
/// `net.ipv6.bindv6only` says, or IPv4 on a host without IPv6.
pub fn udp(name: &str, addr: &str) -> Result<std::net::UdpSocket> {
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| Error::Address {
            addr: addr.to_owned(),
            reason: "expected :PORT, a literal address such as 127.0.0.1:5353, or [::1]:0"
                .to_owned(),
        })?;
        return udp_any_interface(name, port);
    }
    let want = parse(addr)?;
    let fd = obtain(name, addr, Type::DGRAM, want_inet(want), || {
        let s = Socket::new(Domain::for_address(want), Type::DGRAM, None)?;
        s.bind(&want.into())?;
        Ok(s.into())
    })?;
    Ok(fd.into())
}

/// `udp(name, ":PORT")`: any inherited socket on every interface at `port`
/// fits, IPv6 or IPv4.
fn udp_any_interface(name: &str, port: u16) -> Result<std::net::UdpSocket> {
    let fits = move |s: &SockRef<'_>| {
        s.local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|have| have.ip().is_unspecified() && (port == 0 || have.port() == port))
    };
    let fd = obtain(name, &format!(":{port}"), Type::DGRAM, fits, || {
        Ok(crate::listener::bind_udp_any_interface(port)?.into())
    })?;
    Ok(fd.into())
}

/// A TCP listener bound to `addr`, for a protocol your code serves itself,
/// handed over as `name` with its accept queue, so no connection is
/// refused during a reload.
pub fn tcp_listener(name: &str, addr: &str) -> Result<std::net::TcpListener> {
    let want = parse(addr)?;
    let fd = obtain(name, addr, Type::STREAM, want_inet(want), || {
        let s = Socket::new(Domain::for_address(want), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&want.into())?;
        s.listen(crate::listener::DEFAULT_BACKLOG)?;
        Ok(s.into())
    })?;
    Ok(fd.into())
}

/// A Unix datagram socket bound at `path`, handed over as `name`. A stale
/// socket file at the path (nothing bound to it) is replaced.
pub fn unix_datagram(name: &str, path: impl AsRef<Path>) -> Result<UnixDatagram> {
    let path = path.as_ref().to_path_buf();
    let addr = format!("unix:{}", path.display());
    let want = path.clone();
    let check = move |s: &SockRef<'_>| {
        let local = s.local_addr().ok();
        local.as_ref().and_then(|a| a.as_pathname()) == Some(want.as_path())
    };
    let fd = obtain(name, &addr, Type::DGRAM, check, || {
        remove_stale_datagram(&path)?;
        let s = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
        s.bind(&socket2::SockAddr::unix(&path)?)?;
        Ok(s.into())
    })?;
    Ok(fd.into())
}

/// Any descriptor, handed over as `name`: the inherited one, or the one
/// `create` makes (make it close-on-exec, as `memfd_create` with
/// `MFD_CLOEXEC` or socket2 do; it is not checked). Nothing about it is
/// validated beyond its identity (device and inode), so the name must say
/// what it is.
pub fn fd(name: &str, create: impl FnOnce() -> io::Result<OwnedFd>) -> Result<OwnedFd> {
    take_or_make(name, &format!("fd {name:?}"), |_| true, create)
}

/// `addr` as a literal socket address.
fn parse(addr: &str) -> Result<SocketAddr> {
    addr.parse().map_err(|_| Error::Address {
        addr: addr.to_owned(),
        reason: "expected a literal address such as 127.0.0.1:5353 or [::1]:0".to_owned(),
    })
}

/// A check that an inherited socket is bound where `want` asks (any port
/// for port 0).
fn want_inet(want: SocketAddr) -> impl Fn(&SockRef<'_>) -> bool {
    move |s| match s.local_addr().ok().and_then(|a| a.as_socket()) {
        Some(have) => have.ip() == want.ip() && (want.port() == 0 || have.port() == want.port()),
        None => false,
    }
}

/// A socket of type `ty` that passes `check`: inherited, or made.
fn obtain(
    name: &str,
    what: &str,
    ty: Type,
    check: impl Fn(&SockRef<'_>) -> bool,
    make: impl FnOnce() -> io::Result<OwnedFd>,
) -> Result<OwnedFd> {
    let fits = |fd: &OwnedFd| {
        let s = SockRef::from(fd);
        // SO_ACCEPTCONN, which `is_listener` reads, is not everywhere.
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        let listening = ty != Type::STREAM || s.is_listener().unwrap_or(false);
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        let listening = true;
        s.r#type().is_ok_and(|t| t == ty) && listening && check(&s)
    };
    take_or_make(name, what, fits, make)
}

fn take_or_make(
    name: &str,
    what: &str,
    fits: impl Fn(&OwnedFd) -> bool,
    make: impl FnOnce() -> io::Result<OwnedFd>,
) -> Result<OwnedFd> {
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if registered.fixed {
        return Err(config(format!(
            "{name:?} asked for after Server::run started; ask for it before"
        )));
    }
    let list = &mut registered.list;
    if list.iter().any(|(n, _)| n == name) {
        return Err(config(format!("{name:?} asked for twice")));
    }
    let fd = match handover::take(handover::Kind::Extra, Some(name)).map(handover::Inherited::take)
    {
        Some(fd) if fits(&fd) => {
            info!(
                name,
                what,
                fd = fd.as_raw_fd(),
                "adopted the handed-over descriptor"
            );
            fd
        }
        other => {
            if let Some(fd) = other {
                warn!(name, what, fd = fd.as_raw_fd(), "the handed-over descriptor is not what is asked for; closing it and making a new one");
            }
            let fd = make().map_err(|source| Error::Bind {
                addr: what.to_owned(),
                source,
            })?;
            debug!(name, what, fd = fd.as_raw_fd(), "made a new descriptor");
            fd
        }
    };
    // Our own copy, close-on-exec (F_DUPFD_CLOEXEC), for the hand-over:
    // the caller may close theirs at any time.
    let copy = fd
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| Error::Io {
            context: format!("cannot keep a copy of {what} ({name:?}) for the hand-over"),
            source,
        })?;
    list.push((name.to_owned(), copy));
    Ok(fd)
}

fn config(reason: String) -> Error {
    Error::Config {
        setting: "sockets",
        reason,
    }
}

/// Removes a socket file at `path` that nothing is bound to (a crashed
/// run's): a datagram sent to it is refused.
fn remove_stale_datagram(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    let probe = UnixDatagram::unbound()?;
    match probe.connect(path) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "replacing a stale socket file");
            std::fs::remove_file(path)
        }
        _ => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is bound to it",
        )),
    }
}

/// Fixes the set when `run` starts: closes what was handed over and not
/// asked for, and returns the names and FDs of what was.
pub(crate) fn freeze() -> Vec<(String, RawFd)> {
    for name in handover::close_unclaimed_extras() {
        warn!(
            name,
            "handed-over descriptor not asked for by this generation; closed"
        );
    }
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    registered.fixed = true;
    registered
        .list
        .iter()
        .map(|(name, fd)| (name.clone(), fd.as_raw_fd()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_datagram_socket_replaces_a_stale_file_and_is_kept_for_the_hand_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        // A crashed run's file: nothing bound to it any more.
        drop(UnixDatagram::bind(&path).unwrap());
        let d = unix_datagram("test-dgram", &path).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.send_to(b"x", &path).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(d.recv(&mut buf).unwrap(), 1);
        // A live one is not taken over.
        let err = unix_datagram("test-dgram-2", &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("another process is bound to it"), "{err}");
        let kept = REGISTERED.lock().unwrap();
        assert!(kept.list.iter().any(|(n, _)| n == "test-dgram"));
        assert!(!kept.list.iter().any(|(n, _)| n == "test-dgram-2"));
    }

    #[test]
    fn addresses_must_be_literal() {
        let err = udp("test-bad", "localhost:53").unwrap_err().to_string();
        assert!(err.starts_with("invalid address \"localhost:53\""), "{err}");
    }
}
