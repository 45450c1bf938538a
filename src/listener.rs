//! Listening sockets: parse an address, bind it or adopt an inherited one,
//! and accept. Knows nothing of HTTP.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{Domain, SockRef, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};

/// The kernel's accept queue length we ask for; Linux caps it at
/// `net.core.somaxconn`.
const BACKLOG: i32 = 1024;

/// Where a listener is bound, as reported once it is serving.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LocalAddr {
    /// A TCP socket.
    Tcp(SocketAddr),
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Tcp(addr) => addr.fmt(f),
        }
    }
}

/// A parsed registration address.
#[derive(Debug, Clone)]
pub(crate) enum BindSpec {
    /// Candidates to try in order, like `std::net::TcpListener::bind`.
    Tcp(Vec<SocketAddr>),
}

/// Parses `"127.0.0.1:8080"`, `"[::1]:8080"`, `"localhost:8080"` or
/// `":8080"` (every interface, as in Go).
pub(crate) fn parse(addr: &str) -> Result<BindSpec> {
    let invalid = |reason: String| Error::Address {
        addr: addr.to_owned(),
        reason,
    };
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(format!("{port:?} is not a port number from 0 to 65535")))?;
        // Dual-stack first; hosts without IPv6 fall back to IPv4.
        return Ok(BindSpec::Tcp(vec![
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        ]));
    }
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(BindSpec::Tcp(vec![sa]));
    }
    if !addr.contains(':') {
        return Err(invalid(
            "expected host:port, [ipv6]:port or :port".to_owned(),
        ));
    }
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| invalid(format!("cannot resolve: {e}")))?
        .collect();
    if resolved.is_empty() {
        return Err(invalid("resolves to no address".to_owned()));
    }
    Ok(BindSpec::Tcp(resolved))
}

/// A listening socket ready to accept.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
}

impl Listener {
    /// Binds a new socket for `spec`; `name` is the registered address, for errors.
    pub(crate) fn bind(name: &str, spec: &BindSpec) -> Result<Listener> {
        match spec {
            BindSpec::Tcp(candidates) => {
                let mut last = None;
                for addr in candidates {
                    match bind_tcp(*addr) {
                        Ok(l) => return Listener::from_std_tcp(name, l),
                        Err(e) => last = Some(e),
                    }
                }
                Err(Error::Bind {
                    addr: name.to_owned(),
                    source: last.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into()),
                })
            }
        }
    }

    /// Checks that an inherited FD is what it claims to be, a listening stream
    /// socket of a family we serve, without taking ownership of it: an FD
    /// that fails the check is left alone, never closed.
    pub(crate) fn check_inherited(fd: BorrowedFd<'_>) -> Result<()> {
        let raw = fd.as_raw_fd();
        let err = |reason: String| Error::Inherit { fd: raw, reason };
        let socket = SockRef::from(&fd);
        let ty = socket
            .r#type()
            .map_err(|e| err(format!("not a socket ({e})")))?;
        if ty != Type::STREAM {
            return Err(err("not a stream socket".to_owned()));
        }
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        if !socket.is_listener().unwrap_or(false) {
            return Err(err("not a listening socket".to_owned()));
        }
        let domain = socket
            .domain()
            .map_err(|e| err(format!("unknown socket family ({e})")))?;
        if domain != Domain::IPV4 && domain != Domain::IPV6 {
            return Err(err(format!("unsupported socket family {domain:?}")));
        }
        Ok(())
    }

    /// Adopts an inherited socket that passed [`Listener::check_inherited`].
    pub(crate) fn adopt(fd: OwnedFd) -> Result<Listener> {
        let raw = fd.as_raw_fd();
        let socket = Socket::from(fd);
        socket.set_cloexec(true).map_err(|e| Error::Inherit {
            fd: raw,
            reason: format!("cannot set close-on-exec ({e})"),
        })?;
        Listener::from_std_tcp(&format!("fd {raw}"), socket.into())
    }

    fn from_std_tcp(name: &str, l: std::net::TcpListener) -> Result<Listener> {
        let io_err = |source| Error::Io {
            context: format!("cannot prepare listener {name}"),
            source,
        };
        l.set_nonblocking(true).map_err(io_err)?;
        Ok(Listener::Tcp(TcpListener::from_std(l).map_err(io_err)?))
    }

    pub(crate) fn local_addr(&self) -> io::Result<LocalAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(LocalAddr::Tcp),
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    /// Accepts one connection.
    pub(crate) async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Responses are written whole; waiting for more data only adds latency.
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    // socket2 creates sockets close-on-exec: a listener crosses an exec only
    // through the hand-over.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Rebinding right after a restart must not fail on old connections in
    // TIME_WAIT.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Whether an accept error concerns only the one connection being accepted
/// (skip it) rather than the process (back off: EMFILE, ENFILE, ENOMEM …).
pub(crate) fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        // accept(2): "already-pending network errors" to treat like EAGAIN.
        Some(
            nix::libc::EPROTO
                | nix::libc::EPERM
                | nix::libc::ENETDOWN
                | nix::libc::ENOPROTOOPT
                | nix::libc::EHOSTDOWN
                | nix::libc::EHOSTUNREACH
                | nix::libc::ENETUNREACH
                | nix::libc::EOPNOTSUPP
        )
    )
}

/// An accepted connection.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
}

impl Stream {
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let BindSpec::Tcp(a) = parse("127.0.0.1:8080").unwrap();
        assert_eq!(a, vec!["127.0.0.1:8080".parse().unwrap()]);
        let BindSpec::Tcp(a) = parse(":9000").unwrap();
        assert_eq!(a[0], "[::]:9000".parse().unwrap());
        assert_eq!(a[1], "0.0.0.0:9000".parse().unwrap());
        let BindSpec::Tcp(a) = parse("[::1]:0").unwrap();
        assert_eq!(a, vec!["[::1]:0".parse().unwrap()]);
        let BindSpec::Tcp(a) = parse("localhost:80").unwrap();
        assert!(a.iter().all(|a| a.ip().is_loopback() && a.port() == 80));
    }

    #[test]
    fn bad_addresses_name_themselves() {
        for (addr, msg) in [
            (
                ":http",
                "invalid address \":http\": \"http\" is not a port number from 0 to 65535",
            ),
            (
                ":70000",
                "invalid address \":70000\": \"70000\" is not a port number from 0 to 65535",
            ),
            (
                "8080",
                "invalid address \"8080\": expected host:port, [ipv6]:port or :port",
            ),
            (
                "",
                "invalid address \"\": expected host:port, [ipv6]:port or :port",
            ),
        ] {
            assert_eq!(parse(addr).unwrap_err().to_string(), msg);
        }
        let err = parse("no such host.invalid:80").unwrap_err().to_string();
        assert!(
            err.starts_with("invalid address \"no such host.invalid:80\": cannot resolve"),
            "{err}"
        );
    }

    #[test]
    fn a_busy_port_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = Listener::bind(&addr, &parse(&addr).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bound_listeners_are_close_on_exec() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let l = Listener::bind("127.0.0.1:0", &parse("127.0.0.1:0").unwrap()).unwrap();
        let Listener::Tcp(tcp) = &l;
        let flags = FdFlag::from_bits_truncate(fcntl(tcp, FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC));
    }

    #[tokio::test]
    async fn inherited_fds_are_checked_and_left_open_when_wrong() {
        use std::os::fd::AsFd;
        let check =
            |fd: &dyn AsFd| Listener::check_inherited(fd.as_fd()).map_err(|e| e.to_string());

        let file = std::fs::File::open("/dev/null").unwrap();
        let raw = file.as_raw_fd();
        let err = check(&file).unwrap_err();
        assert!(
            err.starts_with(&format!("cannot adopt inherited fd {raw}: not a socket")),
            "{err}"
        );
        // Still open: the check only borrowed it.
        assert!(file.metadata().is_ok());

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let raw = udp.as_raw_fd();
        assert_eq!(
            check(&udp).unwrap_err(),
            format!("cannot adopt inherited fd {raw}: not a stream socket")
        );

        let conn = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let raw = conn.as_raw_fd();
        assert_eq!(
            check(&conn).unwrap_err(),
            format!("cannot adopt inherited fd {raw}: not a listening socket")
        );

        let good = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        check(&good).unwrap();
        let addr = good.local_addr().unwrap();
        let l = Listener::adopt(OwnedFd::from(good)).unwrap();
        assert_eq!(l.local_addr().unwrap(), LocalAddr::Tcp(addr));
    }
}
