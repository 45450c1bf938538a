//! Listening sockets: parse an address, bind it or adopt an inherited one,
//! and accept. Knows nothing of HTTP.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{Domain, SockRef, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

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
    /// A Unix stream socket at this path.
    Unix(PathBuf),
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Tcp(addr) => addr.fmt(f),
            LocalAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A parsed registration address.
#[derive(Debug, Clone)]
pub(crate) enum BindSpec {
    /// Candidates to try in order, like `std::net::TcpListener::bind`.
    Tcp(Vec<SocketAddr>),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
}

impl BindSpec {
    /// Whether an inherited socket bound at `addr` is the one this spec
    /// asks for (a port of 0 asks for no particular socket).
    pub(crate) fn matches(&self, addr: &LocalAddr) -> bool {
        match (self, addr) {
            (BindSpec::Tcp(candidates), LocalAddr::Tcp(a)) => {
                candidates.iter().any(|c| c.port() != 0 && c == a)
            }
            (BindSpec::Unix(path), LocalAddr::Unix(p)) => path == p,
            _ => false,
        }
    }
}

/// Parses `"127.0.0.1:8080"`, `"[::1]:8080"`, `"localhost:8080"`,
/// `":8080"` (every interface, as in Go) or `"unix:/path/to.sock"`.
pub(crate) fn parse(addr: &str) -> Result<BindSpec> {
    let invalid = |reason: String| Error::Address {
        addr: addr.to_owned(),
        reason,
    };
    if let Some(path) = addr.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(invalid("expected unix:/path/to.sock".to_owned()));
        }
        return Ok(BindSpec::Unix(PathBuf::from(path)));
    }
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
    Unix(UnixListener),
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
            BindSpec::Unix(path) => {
                let l = bind_unix(path).map_err(|source| Error::Bind {
                    addr: name.to_owned(),
                    source,
                })?;
                l.set_nonblocking(true).map_err(|source| Error::Bind {
                    addr: name.to_owned(),
                    source,
                })?;
                let l = UnixListener::from_std(l).map_err(|source| Error::Bind {
                    addr: name.to_owned(),
                    source,
                })?;
                Ok(Listener::Unix(l))
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
        // The family of the address it is bound to: SO_DOMAIN, which
        // `Socket::domain` reads, exists only on some systems (not macOS).
        let domain = socket
            .local_addr()
            .map_err(|e| err(format!("unknown socket family ({e})")))?
            .domain();
        if domain != Domain::IPV4 && domain != Domain::IPV6 && domain != Domain::UNIX {
            return Err(err(format!("unsupported socket family {domain:?}")));
        }
        Ok(())
    }

    /// Where an inherited socket (one that passed the check) is bound.
    pub(crate) fn inherited_addr(fd: BorrowedFd<'_>) -> Option<LocalAddr> {
        let addr = SockRef::from(&fd).local_addr().ok()?;
        if let Some(sa) = addr.as_socket() {
            return Some(LocalAddr::Tcp(sa));
        }
        addr.as_pathname().map(|p| LocalAddr::Unix(p.to_path_buf()))
    }

    /// Adopts an inherited socket that passed [`Listener::check_inherited`].
    pub(crate) fn adopt(fd: OwnedFd) -> Result<Listener> {
        let raw = fd.as_raw_fd();
        let socket = Socket::from(fd);
        let err = |e: io::Error| Error::Inherit {
            fd: raw,
            reason: format!("cannot prepare it ({e})"),
        };
        socket.set_cloexec(true).map_err(err)?;
        if socket.local_addr().map_err(err)?.domain() == Domain::UNIX {
            socket.set_nonblocking(true).map_err(err)?;
            let l = std::os::unix::net::UnixListener::from(OwnedFd::from(socket));
            return Ok(Listener::Unix(UnixListener::from_std(l).map_err(err)?));
        }
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
            Listener::Unix(l) => {
                let addr = l.local_addr()?;
                let path = addr.as_pathname().unwrap_or(Path::new("(unnamed)"));
                Ok(LocalAddr::Unix(path.to_path_buf()))
            }
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
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
            Listener::Unix(l) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

/// Binds a Unix stream socket at `path`. A socket file left by a crashed
/// run is replaced, but only if nothing answers on it; anything else at the
/// path (a listening server, a regular file) is an error.
fn bind_unix(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on it",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale socket file");
                std::fs::remove_file(path)?;
            }
            Err(_) => {}
        }
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    socket.listen(BACKLOG)?;
    Ok(std::os::unix::net::UnixListener::from(OwnedFd::from(
        socket,
    )))
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
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
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
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
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
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let tcp = |addr: &str| match parse(addr).unwrap() {
            BindSpec::Tcp(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            tcp("127.0.0.1:8080"),
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
        let a = tcp(":9000");
        assert_eq!(a[0], "[::]:9000".parse().unwrap());
        assert_eq!(a[1], "0.0.0.0:9000".parse().unwrap());
        assert_eq!(tcp("[::1]:0"), vec!["[::1]:0".parse().unwrap()]);
        assert!(tcp("localhost:80")
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 80));
        assert!(
            matches!(parse("unix:/run/app.sock").unwrap(), BindSpec::Unix(p) if p == Path::new("/run/app.sock"))
        );
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
        let Listener::Tcp(tcp) = &l else {
            unreachable!()
        };
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
