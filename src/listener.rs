//! Listening sockets: parse an address, bind it or adopt an inherited one,
//! and accept. Knows nothing of HTTP.

mod address;
mod given;
#[cfg(unix)]
mod permissions;
#[cfg(unix)]
mod socket_file;

use std::fmt;
use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
#[cfg(unix)]
use std::os::unix::ffi::OsStrExt;
#[cfg(unix)]
use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
#[cfg(unix)]
use std::time::Duration;

#[cfg(unix)]
use socket2::SockRef;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
#[cfg(unix)]
use crate::handover;
// Without Unix: the errors of Windows sockets, and its stand-in for a
// socket's descriptor.
#[cfg(not(unix))]
use crate::portable::is_pending_network_error;
#[cfg(not(unix))]
pub(crate) use crate::portable::{family_unavailable, RawFd};

pub(crate) use address::{parse, BindSpec};
pub(crate) use given::Given;
pub use given::StdListener;
#[cfg(unix)]
pub use permissions::UnixPermissions;
#[cfg(unix)]
pub(crate) use socket_file::SocketFile;

/// The accept queue length asked for by default (`Server::backlog`):
/// Linux's own default `net.core.somaxconn` since 5.4, which caps it. A
/// reload under thousands of connections reconnecting at once needs room.
pub(crate) const DEFAULT_BACKLOG: i32 = 4096;

/// How long the server at an existing socket file may take to answer the
/// probe that tells a live file from a stale one.
#[cfg(unix)]
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often `host:0` is tried again when the port the kernel chose for the
/// first address is taken on another.
const SHARED_PORT_ATTEMPTS: usize = 3;

/// The other end of an accepted connection.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(Option<PeerCredentials>),
}

/// The process at the other end of a Unix socket connection, as the kernel
/// reports it (`SO_PEERCRED` on Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCredentials {
    /// Its process ID, where the platform reports one.
    pub pid: Option<i32>,
    /// Its effective user ID.
    pub uid: u32,
    /// Its effective group ID.
    pub gid: u32,
}

/// Where a listener is bound, as reported once it is serving.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LocalAddr {
    /// A TCP socket.
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// A Unix stream socket in Linux's abstract namespace, by name (without
    /// the leading NUL byte).
    UnixAbstract(String),
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Tcp(addr) => addr.fmt(f),
            LocalAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            LocalAddr::UnixAbstract(name) => write!(f, "unix:@{name}"),
        }
    }
}

/// One listening socket of a registration. A registration has one, or one
/// per address for a host name that resolves to several; they are all
/// served alike and handed over under the registration's name.
#[derive(Debug)]
pub(crate) struct Bound {
    /// The registration it serves, by index.
    pub(crate) index: usize,
    /// The registered address.
    pub(crate) name: String,
    pub(crate) listener: Arc<Listener>,
}

#[cfg(unix)]
impl Bound {
    /// Whether this server may remove its socket file at the final stop
    /// (false for a socket systemd's activation passed in, and every later
    /// generation is told so; true for TCP, which has no file).
    pub(crate) fn owns_file(&self) -> bool {
        !matches!(&*self.listener, Listener::Unix(_, None))
    }
}

/// A socket handed over to us, with its name, and whether its file (for a
/// Unix socket) is ours to remove.
#[cfg(unix)]
struct Inherited {
    name: String,
    fd: OwnedFd,
    owns_file: bool,
}

/// One registration's listener as wanted: its name (the registered
/// address), how to bind it, and its socket file's permissions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted<'a> {
    pub(crate) name: &'a str,
    pub(crate) spec: &'a BindSpec,
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) perms: Option<&'a UnixPermissions>,
    /// The accept queue length a new socket asks for.
    pub(crate) backlog: i32,
    /// Makes the listener when nothing is inherited under its name
    /// (`BindSpec::Given`).
    pub(crate) given: Option<&'a Given>,
}

/// Listening sockets for every registration in `wanted`: the inherited ones
/// of the same name (or, for systemd's sockets, the same address) if there
/// are any, else new ones (for a listener the program makes, whatever its
/// closure makes: called only here, so never while a predecessor holds the
/// socket). Unless `bind_new` is false: then a registration
/// with nothing inherited gets no socket, but its address is bound and
/// released again, to prove it can be (a `keep_pid` temporary generation,
/// whose parent binds it after its re-exec). Inherited sockets that match
/// nothing are closed.
#[cfg(unix)]
pub(crate) async fn take_all(wanted: &[Wanted<'_>], bind_new: bool) -> Result<Vec<Bound>> {
    let mut inherited: Vec<Inherited> = handover::take_listeners(Listener::check_inherited)?
        .into_iter()
        .map(|(name, owns_file, fd)| Inherited {
            name,
            fd,
            owns_file,
        })
        .collect();
    let mut bound = Vec::with_capacity(wanted.len());
    for (index, w) in wanted.iter().enumerate() {
        let (name, spec) = (w.name, w.spec);
        let mut found = take_by_name(&mut inherited, name, spec);
        // Resolve only if it can matter: nothing else needs DNS on a reload.
        let mut addrs = None;
        if found.is_empty() && !inherited.is_empty() && w.given.is_none() {
            let tcp = address::tcp_addrs(name, spec).await?;
            found = take_by_addr(&mut inherited, spec, tcp.as_deref());
            addrs = Some(tcp);
        }
        let listeners = if found.is_empty() {
            let new = match (w.given, addrs) {
                (Some(given), _) => vec![given.make(name)?],
                (None, Some(tcp)) => bind(name, spec, tcp, w.perms, w.backlog).await?,
                (None, None) => {
                    let tcp = address::tcp_addrs(name, spec).await?;
                    bind(name, spec, tcp, w.perms, w.backlog).await?
                }
            };
            if bind_new {
                new
            } else {
                info!(addr = %name, "new address: can be bound; left to the generation re-executing in place");
                for l in new {
                    if let Some(file) = l.socket_file() {
                        file.unlink_if_ours();
                    }
                }
                Vec::new()
            }
        } else {
            adopt_all(name, found, w.perms)?
        };
        bound.extend(listeners.into_iter().map(|l| Bound {
            index,
            name: name.to_owned(),
            listener: Arc::new(l),
        }));
    }
    for i in inherited {
        warn!(name = %i.name, fd = ?i.fd, "inherited socket matches no registration; closing it");
    }
    Ok(bound)
}

/// Adopts the inherited sockets `found` of registration `name`, giving a
/// socket file `perms` again (a setting changed since takes effect now).
#[cfg(unix)]
fn adopt_all(
    name: &str,
    found: Vec<Inherited>,
    perms: Option<&UnixPermissions>,
) -> Result<Vec<Listener>> {
    let mut adopted = Vec::with_capacity(found.len());
    for i in found {
        debug!(addr = %name, fd = i.fd.as_raw_fd(), "adopting inherited socket");
        let l = Listener::adopt(i.fd, i.owns_file)?;
        if let (Some(p), Some(file)) = (perms, l.socket_file()) {
            if let Err(e) = p.apply(file) {
                warn!(addr = %name, cause = %e, "cannot set the socket file's permissions");
            }
        }
        adopted.push(l);
    }
    Ok(adopted)
}

/// New listening sockets for every registration in `wanted`: without Unix
/// nothing is ever inherited.
#[cfg(not(unix))]
pub(crate) async fn take_all(wanted: &[Wanted<'_>], _bind_new: bool) -> Result<Vec<Bound>> {
    let mut bound = Vec::with_capacity(wanted.len());
    for (index, w) in wanted.iter().enumerate() {
        let listeners = match w.given {
            Some(given) => vec![given.make(w.name)?],
            None => {
                let tcp = address::tcp_addrs(w.name, w.spec).await?;
                bind(w.name, w.spec, tcp, None, w.backlog).await?
            }
        };
        bound.extend(listeners.into_iter().map(|l| Bound {
            index,
            name: w.name.to_owned(),
            listener: Arc::new(l),
        }));
    }
    Ok(bound)
}

/// No socket files without Unix: nothing to give permissions to.
#[cfg(not(unix))]
pub(crate) type UnixPermissions = std::convert::Infallible;

/// The first inherited socket named `name` and, for a host name, the later
/// ones of that name on the same port: the sockets one registration handed
/// over. Several registrations of one name (say `127.0.0.1:0` twice) thus
/// get their sockets back in order.
#[cfg(unix)]
fn take_by_name(inherited: &mut Vec<Inherited>, name: &str, spec: &BindSpec) -> Vec<Inherited> {
    let Some(first) = inherited.iter().position(|i| i.name == name) else {
        return Vec::new();
    };
    let first = inherited.remove(first);
    let mut group = vec![first];
    if let (BindSpec::Host(..), Some(LocalAddr::Tcp(a))) =
        (spec, Listener::inherited_addr(group[0].fd.as_fd()))
    {
        let mut seen = vec![a];
        let mut i = 0;
        while i < inherited.len() {
            let same = match Listener::inherited_addr(inherited[i].fd.as_fd()) {
                Some(LocalAddr::Tcp(b)) => {
                    inherited[i].name == name && b.port() == a.port() && !seen.contains(&b)
                }
                _ => false,
            };
            if same {
                let taken = inherited.remove(i);
                if let Some(LocalAddr::Tcp(b)) = Listener::inherited_addr(taken.fd.as_fd()) {
                    seen.push(b);
                }
                group.push(taken);
            } else {
                i += 1;
            }
        }
    }
    group
}

/// The inherited sockets bound where `spec` asks (systemd's socket units
/// have names like `app.socket`, which match no registration): the one at
/// that path, or every one at one of the TCP addresses `tcp` (a port of 0
/// asks for no particular socket).
#[cfg(unix)]
fn take_by_addr(
    inherited: &mut Vec<Inherited>,
    spec: &BindSpec,
    tcp: Option<&[SocketAddr]>,
) -> Vec<Inherited> {
    let wanted = |i: &Inherited| match (Listener::inherited_addr(i.fd.as_fd()), spec, tcp) {
        (Some(LocalAddr::Unix(p)), BindSpec::Unix(path), _) => p == *path,
        (Some(LocalAddr::UnixAbstract(n)), BindSpec::UnixAbstract(name), _) => n == *name,
        (Some(LocalAddr::Tcp(a)), _, Some(candidates)) => {
            candidates.iter().any(|c| c.port() != 0 && *c == a)
        }
        _ => false,
    };
    let mut taken = Vec::new();
    let mut i = 0;
    while i < inherited.len() {
        if wanted(&inherited[i]) {
            taken.push(inherited.remove(i));
            // `:port` asks for one socket, the first supported of two.
            if matches!(
                spec,
                BindSpec::Addr(_)
                    | BindSpec::AnyInterface(_)
                    | BindSpec::Unix(_)
                    | BindSpec::UnixAbstract(_)
            ) {
                break;
            }
        } else {
            i += 1;
        }
    }
    taken
}

/// Binds new sockets for `spec` (its TCP addresses already resolved into
/// `tcp`; a Unix socket file given `perms`); `name` is the registered
/// address, for errors.
async fn bind(
    name: &str,
    spec: &BindSpec,
    tcp: Option<Vec<SocketAddr>>,
    perms: Option<&UnixPermissions>,
    backlog: i32,
) -> Result<Vec<Listener>> {
    let bind_err = |source| Error::Bind {
        addr: name.to_owned(),
        source,
    };
    #[cfg(not(unix))]
    let _ = perms;
    let tcp = match (spec, tcp) {
        #[cfg(unix)]
        (BindSpec::Unix(path), _) => {
            let l = bind_unix(path, perms, backlog).await.map_err(bind_err)?;
            return Ok(vec![l]);
        }
        #[cfg(unix)]
        (BindSpec::UnixAbstract(abstract_name), _) => {
            let l = bind_unix_abstract(abstract_name, backlog).map_err(bind_err)?;
            return Ok(vec![l]);
        }
        (_, Some(tcp)) => tcp,
        (_, None) => return Err(bind_err(io::ErrorKind::AddrNotAvailable.into())),
    };
    let sockets = match spec {
        BindSpec::AnyInterface(_) => bind_first_supported(&tcp, backlog),
        BindSpec::Host(..) => bind_every(&tcp, backlog),
        // A literal address: the error is about it, no need to repeat it.
        _ => bind_tcp(tcp[0], backlog)
            .map(|l| vec![l])
            .map_err(|(_, e)| e),
    }
    .map_err(bind_err)?;
    sockets
        .into_iter()
        .map(|l| Listener::from_std_tcp(name, l))
        .collect()
}

/// Whether a bind failed only because the host lacks that address family
/// (no IPv6, say), as opposed to a real problem such as a busy port.
#[cfg(unix)]
fn family_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EAFNOSUPPORT | nix::libc::EADDRNOTAVAIL | nix::libc::EPROTONOSUPPORT)
    )
}

/// `:port`: the first address the host supports (dual-stack IPv6, then
/// IPv4). Any other error, a busy port above all, is the answer.
fn bind_first_supported(
    addrs: &[SocketAddr],
    backlog: i32,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut last = None;
    for addr in addrs {
        match bind_tcp(*addr, backlog) {
            Ok(l) => return Ok(vec![l]),
            Err((a, e)) if family_unavailable(&e) => {
                info!(addr = %a, cause = %e, "address family unavailable; trying the next");
                last = Some(named(a, e));
            }
            Err((a, e)) => return Err(named(a, e)),
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into()))
}

/// A host name: one socket on every address it resolved to, skipping those
/// of a family the host lacks. With port 0 they all share the port the
/// kernel picks for the first, so that the name means one port.
fn bind_every(addrs: &[SocketAddr], backlog: i32) -> io::Result<Vec<std::net::TcpListener>> {
    let shared_port = addrs.len() > 1 && addrs.iter().all(|a| a.port() == 0);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut port = None;
        let mut bound = Vec::with_capacity(addrs.len());
        let mut last = None;
        let mut retry = false;
        for addr in addrs {
            let mut addr = *addr;
            if let Some(p) = port {
                addr.set_port(p);
            }
            match bind_tcp(addr, backlog) {
                Ok(l) => {
                    if shared_port && port.is_none() {
                        port = l.local_addr().ok().map(|a| a.port());
                    }
                    bound.push(l);
                }
                Err((a, e)) if family_unavailable(&e) => {
                    warn!(addr = %a, cause = %e, "cannot bind this address of the host name; serving the others");
                    last = Some(named(a, e));
                }
                Err((_, e))
                    if shared_port
                        && e.kind() == io::ErrorKind::AddrInUse
                        && attempt < SHARED_PORT_ATTEMPTS =>
                {
                    retry = true;
                    break;
                }
                Err((a, e)) => return Err(named(a, e)),
            }
        }
        if retry {
            debug!(
                attempt,
                "the chosen port is taken on another address; trying again"
            );
            continue;
        }
        if bound.is_empty() {
            return Err(last.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into()));
        }
        return Ok(bound);
    }
}

/// The error `e` about `addr`, saying which address it was.
fn named(addr: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{addr}: {e}"))
}

/// A listening socket ready to accept.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// With its file, if the file is ours to remove at the final stop.
    #[cfg(unix)]
    Unix(UnixListener, Option<SocketFile>),
}

impl Listener {
    /// Binds new sockets for `spec`, resolving a host name first: one
    /// listener, or one per address of a host name. `name` is the registered
    /// address, for errors.
    #[cfg(test)]
    pub(crate) async fn bind(name: &str, spec: &BindSpec) -> Result<Vec<Listener>> {
        let tcp = address::tcp_addrs(name, spec).await?;
        bind(name, spec, tcp, None, DEFAULT_BACKLOG).await
    }

    /// Checks that an inherited FD is what it claims to be, a listening stream
    /// socket of a family we serve, without taking ownership of it: an FD
    /// that fails the check is left alone, never closed.
    #[cfg(unix)]
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
    #[cfg(unix)]
    pub(crate) fn inherited_addr(fd: BorrowedFd<'_>) -> Option<LocalAddr> {
        let addr = SockRef::from(&fd).local_addr().ok()?;
        unix_or_tcp(&addr)
    }

    /// Adopts an inherited socket that passed [`Listener::check_inherited`].
    /// `owns_file`: a Unix socket's file was created by this server (a
    /// predecessor bound it), not by systemd.
    #[cfg(unix)]
    pub(crate) fn adopt(fd: OwnedFd, owns_file: bool) -> Result<Listener> {
        let raw = fd.as_raw_fd();
        Listener::prepare(Socket::from(fd), owns_file).map_err(|e| Error::Inherit {
            fd: raw,
            reason: format!("cannot prepare it ({e})"),
        })
    }

    /// A listening socket made ready to serve: close-on-exec, non-blocking,
    /// and (`owns_file`) its socket file recorded as ours.
    #[cfg(unix)]
    pub(crate) fn prepare(socket: Socket, owns_file: bool) -> io::Result<Listener> {
        socket.set_cloexec(true)?;
        let local = socket.local_addr()?;
        socket.set_nonblocking(true)?;
        if local.domain() == Domain::UNIX {
            // The socket file at the path now is taken for the one our
            // predecessor bound. Someone who can write to its directory could
            // have replaced it meanwhile (a live socket is never replaced as
            // stale by endless, but anyone may unlink it): a symlink or a
            // regular file there is not taken (`SocketFile::at`), and
            // permissions are only ever set on the file recorded here, never
            // through a symlink (`UnixPermissions::apply`).
            let file = match local.as_pathname() {
                Some(path) if owns_file => SocketFile::at(path)
                    .inspect_err(|e| {
                        info!(path = %path.display(), cause = %e, "no socket file of ours at the path")
                    })
                    .ok(),
                _ => None,
            };
            let l = std::os::unix::net::UnixListener::from(OwnedFd::from(socket));
            return Ok(Listener::Unix(UnixListener::from_std(l)?, file));
        }
        Ok(Listener::Tcp(TcpListener::from_std(socket.into())?))
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
            #[cfg(unix)]
            Listener::Unix(l, _) => {
                let addr = SockRef::from(l).local_addr()?;
                Ok(unix_or_tcp(&addr)
                    .unwrap_or_else(|| LocalAddr::Unix(PathBuf::from("(unnamed)"))))
            }
        }
    }

    /// The socket file to remove at the final stop, if it is ours.
    #[cfg(unix)]
    pub(crate) fn socket_file(&self) -> Option<&SocketFile> {
        match self {
            Listener::Unix(_, file) => file.as_ref(),
            Listener::Tcp(_) => None,
        }
    }

    #[cfg(unix)]
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    /// Turns TCP keepalive on, as `keepalive` says, for the connections this
    /// listener accepts from now on: they inherit it from the listening
    /// socket (Linux, the BSDs, macOS and Windows alike), so no connection
    /// pays a system call for it. A Unix socket has none.
    pub(crate) fn set_tcp_keepalive(&self, keepalive: &socket2::TcpKeepalive) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => socket2::SockRef::from(l).set_tcp_keepalive(keepalive),
            #[cfg(unix)]
            Listener::Unix(..) => Ok(()),
        }
    }

    /// Accepts one connection.
    pub(crate) async fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                // Responses are written whole; waiting for more data only adds latency.
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), Peer::Tcp(addr)))
            }
            #[cfg(unix)]
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                let creds = s.peer_cred().ok().map(|c| PeerCredentials {
                    pid: c.pid(),
                    uid: c.uid(),
                    gid: c.gid(),
                });
                Ok((Stream::Unix(s), Peer::Unix(creds)))
            }
        }
    }
}

/// Where a socket is bound, if it is a TCP or a named Unix socket.
#[cfg(unix)]
fn unix_or_tcp(addr: &socket2::SockAddr) -> Option<LocalAddr> {
    if let Some(sa) = addr.as_socket() {
        return Some(LocalAddr::Tcp(sa));
    }
    if let Some(p) = addr.as_pathname() {
        return Some(LocalAddr::Unix(p.to_path_buf()));
    }
    addr.as_abstract_namespace()
        .map(|n| LocalAddr::UnixAbstract(String::from_utf8_lossy(n).into_owned()))
}

/// Binds a Unix stream socket at `path`, gives its file `perms` before it
/// listens (so no client connects while the file has other permissions),
/// and records the file as ours. A socket file left by a crashed run is
/// replaced, but only if nothing answers on it; anything else at the path
/// (a listening server, a regular file) is an error. The probe runs on the
/// runtime, with a timeout.
#[cfg(unix)]
async fn bind_unix(
    path: &Path,
    perms: Option<&UnixPermissions>,
    backlog: i32,
) -> io::Result<Listener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        let live = || {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process is listening on it",
            )
        };
        match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the socket file did not answer within {PROBE_TIMEOUT:?}"),
                ))
            }
            // A full accept queue is a live server too.
            Ok(Ok(_)) => return Err(live()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Err(live()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                info!(path = %path.display(), "replacing a stale socket file");
                std::fs::remove_file(path)?;
            }
            Ok(Err(_)) => {}
        }
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    // Right after the bind the file at the path is the one we created.
    let file = SocketFile::at(path)?;
    if let Some(perms) = perms {
        if let Err(e) = perms.apply(&file) {
            file.unlink_if_ours();
            return Err(e);
        }
    }
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    let l = std::os::unix::net::UnixListener::from(OwnedFd::from(socket));
    Ok(Listener::Unix(UnixListener::from_std(l)?, Some(file)))
}

/// Binds a Unix stream socket in Linux's abstract namespace. There is no
/// file: the name is free again once every copy of the socket is closed,
/// and a live server on it makes the bind fail with `EADDRINUSE`.
#[cfg(unix)]
fn bind_unix_abstract(name: &str, backlog: i32) -> io::Result<Listener> {
    // socket2 takes a path whose first byte is NUL as an abstract name.
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(name.as_bytes());
    let addr = socket2::SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&addr)?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    let l = std::os::unix::net::UnixListener::from(OwnedFd::from(socket));
    Ok(Listener::Unix(UnixListener::from_std(l)?, None))
}

/// Binds one TCP socket; on error, also says which address failed.
fn bind_tcp(
    addr: SocketAddr,
    backlog: i32,
) -> Result<std::net::TcpListener, (SocketAddr, io::Error)> {
    let fail = |e| (addr, e);
    // socket2 creates sockets close-on-exec: a listener crosses an exec only
    // through the hand-over.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    // Rebinding right after a restart must not fail on old connections in
    // TIME_WAIT. (Windows binds over TIME_WAIT anyway, and there the option
    // would let a second server bind a port that is in use.)
    #[cfg(unix)]
    socket.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false).map_err(fail)?;
    }
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(backlog).map_err(fail)?;
    Ok(socket.into())
}

/// A UDP socket on every interface at `port` (an address `:PORT`), as TCP
/// listeners on `:PORT` are bound: dual-stack IPv6 whatever
/// `net.ipv6.bindv6only` says, or IPv4 on a host without IPv6.
#[cfg(any(unix, feature = "http3"))]
pub(crate) fn bind_udp_any_interface(port: u16) -> io::Result<Socket> {
    let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let dual = Socket::new(Domain::IPV6, Type::DGRAM, None).and_then(|s| {
        s.set_only_v6(false)?;
        s.bind(&v6.into())?;
        Ok(s)
    });
    match dual {
        Err(e) if family_unavailable(&e) => {
            info!(addr = %v6, cause = %e, "address family unavailable; binding IPv4 only");
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
            let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
            s.bind(&v4.into())?;
            Ok(s)
        }
        other => other,
    }
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
    ) || e.raw_os_error().is_some_and(is_pending_network_error)
}

/// accept(2): the "already-pending network errors" to treat like EAGAIN.
#[cfg(unix)]
fn is_pending_network_error(code: i32) -> bool {
    matches!(
        code,
        nix::libc::EPROTO
            | nix::libc::EPERM
            | nix::libc::ENETDOWN
            | nix::libc::ENOPROTOOPT
            | nix::libc::EHOSTDOWN
            | nix::libc::EHOSTUNREACH
            | nix::libc::ENETUNREACH
            | nix::libc::EOPNOTSUPP
    )
}

/// An accepted connection.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    #[cfg(unix)]
    pub(crate) fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    #[cfg(not(unix))]
    pub(crate) fn raw_fd(&self) -> RawFd {
        use std::os::windows::io::AsRawSocket;
        match self {
            Stream::Tcp(s) => s.as_raw_socket(),
        }
    }

    /// A second handle to the socket, for the stop timeout to shut it down.
    #[cfg(not(unix))]
    pub(crate) fn handle(&self) -> crate::portable::SocketHandle {
        match self {
            Stream::Tcp(s) => crate::portable::SocketHandle::of(s),
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
            #[cfg(unix)]
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
            #[cfg(unix)]
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
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `:PORT` over UDP takes IPv4 too where `net.ipv6.bindv6only` is 1,
    /// where a plain `[::]` bind (what HTTP/3 did before) takes only IPv6.
    /// In a network namespace of this test's own thread (root only: it is
    /// skipped otherwise), so the machine's setting is never touched.
    #[cfg(target_os = "linux")]
    #[test]
    fn udp_on_any_interface_takes_ipv4_whatever_bindv6only_says() {
        let run = std::thread::spawn(|| {
            let own = |p: &str| std::fs::read_link(p).ok();
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err()
                || own("/proc/thread-self/ns/net") == own("/proc/self/ns/net")
            {
                return None;
            }
            // A child forked from this thread lives in its namespace.
            let set = std::process::Command::new("sh")
                .args([
                    "-c",
                    "ip link set lo up && sysctl -qw net.ipv6.bindv6only=1",
                ])
                .status();
            if !set.is_ok_and(|s| s.success()) {
                return None;
            }
            let gets_ipv4 = |s: &std::net::UdpSocket| {
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let port = s.local_addr().unwrap().port();
                let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                client.send_to(b"ping", ("127.0.0.1", port)).unwrap();
                s.recv_from(&mut [0u8; 8]).is_ok()
            };
            let plain = std::net::UdpSocket::bind("[::]:0").unwrap();
            let ours: std::net::UdpSocket = bind_udp_any_interface(0).unwrap().into();
            Some((gets_ipv4(&plain), gets_ipv4(&ours)))
        });
        match run.join().unwrap() {
            None => eprintln!("skipped: needs root for a network namespace"),
            Some((plain, ours)) => {
                assert!(
                    !plain,
                    "the control: a plain [::] bind took IPv4 with bindv6only=1"
                );
                assert!(ours, "`:PORT` over UDP took no IPv4 with bindv6only=1");
            }
        }
    }

    async fn bind_one(addr: &str) -> Result<Listener> {
        let mut v = Listener::bind(addr, &parse(addr)?).await?;
        assert_eq!(v.len(), 1);
        Ok(v.remove(0))
    }

    #[tokio::test]
    async fn a_busy_port_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = bind_one(&addr).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_host_name_binds_every_address_it_resolves_to() {
        // As if `localhost` resolved to both loopback addresses, IPv6 first
        // (as glibc orders them): both must answer, on one port.
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = v6.local_addr().unwrap().port();
        drop(v6);
        let addrs: Vec<SocketAddr> = vec![
            format!("[::1]:{port}").parse().unwrap(),
            format!("127.0.0.1:{port}").parse().unwrap(),
        ];
        let spec = BindSpec::Host("localhost".into(), port);
        let ls = bind(
            "localhost:P",
            &spec,
            Some(addrs.clone()),
            None,
            DEFAULT_BACKLOG,
        )
        .await
        .unwrap();
        let got: Vec<LocalAddr> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_eq!(
            got,
            addrs.iter().map(|a| LocalAddr::Tcp(*a)).collect::<Vec<_>>()
        );
        for a in &addrs {
            std::net::TcpStream::connect(a).unwrap();
        }

        // Port 0: every address gets the port the kernel chose for the first.
        let zero: Vec<SocketAddr> =
            vec!["[::1]:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()];
        let spec = BindSpec::Host("localhost".into(), 0);
        let ls = bind("localhost:0", &spec, Some(zero), None, DEFAULT_BACKLOG)
            .await
            .unwrap();
        let ports: Vec<u16> = ls
            .iter()
            .map(|l| match l.local_addr().unwrap() {
                LocalAddr::Tcp(a) => a.port(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ports.len(), 2);
        assert_ne!(ports[0], 0);
        assert_eq!(ports[0], ports[1]);
    }

    #[tokio::test]
    async fn a_host_name_with_one_address_taken_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let addrs: Vec<SocketAddr> = vec![
            format!("[::1]:{port}").parse().unwrap(),
            format!("127.0.0.1:{port}").parse().unwrap(),
        ];
        let spec = BindSpec::Host("localhost".into(), port);
        let err = bind("localhost:P", &spec, Some(addrs), None, DEFAULT_BACKLOG)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot listen on localhost:P: 127.0.0.1:{port}: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bound_listeners_are_close_on_exec() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let l = bind_one("127.0.0.1:0").await.unwrap();
        let Listener::Tcp(tcp) = &l else {
            unreachable!()
        };
        let flags = FdFlag::from_bits_truncate(fcntl(tcp, FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC));
    }

    #[tokio::test]
    async fn unix_socket_files_are_ours_only_when_we_bound_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let addr = format!("unix:{}", path.display());
        let l = bind_one(&addr).await.unwrap();
        assert_eq!(l.socket_file().unwrap().path(), path);
        let b = Bound {
            index: 0,
            name: addr.clone(),
            listener: Arc::new(l),
        };
        assert!(b.owns_file());

        // Adopted from systemd: not ours, and every successor is told so.
        let other = dir.path().join("b.sock");
        let unit = std::os::unix::net::UnixListener::bind(&other).unwrap();
        let l = Listener::adopt(OwnedFd::from(unit), false).unwrap();
        assert!(l.socket_file().is_none());
        let b = Bound {
            index: 0,
            name: format!("unix:{}", other.display()),
            listener: Arc::new(l),
        };
        assert!(!b.owns_file(), "handed over as unowned");
    }

    #[tokio::test]
    async fn inherited_fds_are_checked_and_left_open_when_wrong() {
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
        let l = Listener::adopt(OwnedFd::from(good), true).unwrap();
        assert_eq!(l.local_addr().unwrap(), LocalAddr::Tcp(addr));
    }
}
