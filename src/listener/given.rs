//! Listeners the program makes itself (`Server::register_listener`): the
//! program's own closure, called only by a generation that inherited
//! nothing under the listener's name, and the checks its socket passes
//! before it is served and handed over like one endless bound.

use std::io;
use std::sync::Mutex;

use socket2::{Domain, Socket, Type};

use super::Listener;
use crate::error::{Error, Result};

/// A listening socket the program made itself, as
/// [`Server::register_listener`](crate::Server::register_listener)'s
/// closure returns it (through `From`: return a
/// `std::net::TcpListener` or a `std::os::unix::net::UnixListener` as it
/// is).
///
/// # Examples
///
/// A closure that returns one or the other, as configured:
///
/// ```no_run
/// use endless::StdListener;
///
/// fn make(unix: Option<&str>) -> std::io::Result<StdListener> {
///     Ok(match unix {
///         Some(path) => std::os::unix::net::UnixListener::bind(path)?.into(),
///         None => std::net::TcpListener::bind("127.0.0.1:8080")?.into(),
///     })
/// }
/// # async fn doc() -> Result<(), endless::Error> {
/// # let svc = hyper::service::service_fn(|_req| async {
/// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
/// # });
/// endless::Server::new()
///     .register_listener("web", || make(None), svc)
///     .run()
///     .await
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum StdListener {
    /// A TCP listener.
    Tcp(std::net::TcpListener),
    /// A Unix stream socket listener (Unix only).
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixListener),
}

impl From<std::net::TcpListener> for StdListener {
    fn from(l: std::net::TcpListener) -> Self {
        StdListener::Tcp(l)
    }
}

#[cfg(unix)]
impl From<std::os::unix::net::UnixListener> for StdListener {
    fn from(l: std::os::unix::net::UnixListener) -> Self {
        StdListener::Unix(l)
    }
}

/// The program's closure that makes a listener.
type Make = Box<dyn FnOnce() -> io::Result<StdListener> + Send>;

/// The closure, until a generation calls it (at most once).
pub(crate) struct Given(Mutex<Option<Make>>);

impl std::fmt::Debug for Given {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Given(..)")
    }
}

impl Given {
    pub(crate) fn new<F, L>(make: F) -> Given
    where
        F: FnOnce() -> io::Result<L> + Send + 'static,
        L: Into<StdListener>,
    {
        Given(Mutex::new(Some(Box::new(move || make().map(Into::into)))))
    }

    /// Calls the closure and checks what it returns: a listening stream
    /// socket, TCP or Unix. `name`: the registered name, for errors. The
    /// socket becomes close-on-exec and non-blocking (and a Unix socket's
    /// file this server's, removed at the final stop if it is still that
    /// file).
    pub(crate) fn make(&self, name: &str) -> Result<Listener> {
        let make = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let err = |what: String, source: io::Error| Error::Bind { addr: what, source };
        let Some(make) = make else {
            // A generation takes its listeners once.
            return Err(err(
                name.to_owned(),
                io::Error::other("the listener was already made"),
            ));
        };
        let socket = match make().map_err(|e| err(name.to_owned(), e))? {
            StdListener::Tcp(l) => Socket::from(l),
            #[cfg(unix)]
            StdListener::Unix(l) => Socket::from(l),
        };
        let what = format!("{name} (the listener given, {})", describe(&socket));
        check(&socket).map_err(|e| err(what.clone(), e))?;
        adopt(socket).map_err(|e| err(what, e))
    }
}

/// The descriptor, for errors.
fn describe(socket: &Socket) -> String {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        format!("fd {}", socket.as_raw_fd())
    }
    #[cfg(not(unix))]
    {
        use std::os::windows::io::AsRawSocket;
        format!("socket {}", socket.as_raw_socket())
    }
}

/// A stream socket that listens (where the system says), of a family
/// endless serves.
fn check(socket: &Socket) -> io::Result<()> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    if socket.r#type()? != Type::STREAM {
        return Err(invalid("not a stream socket".to_owned()));
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    if !socket.is_listener()? {
        return Err(invalid(
            "not listening (call listen, as TcpListener::bind does)".to_owned(),
        ));
    }
    let domain = socket.local_addr()?.domain();
    let served = domain == Domain::IPV4 || domain == Domain::IPV6;
    #[cfg(unix)]
    let served = served || domain == Domain::UNIX;
    if !served {
        return Err(invalid(format!("unsupported socket family {domain:?}")));
    }
    Ok(())
}

#[cfg(unix)]
fn adopt(socket: Socket) -> io::Result<Listener> {
    // As an inherited socket is adopted: close-on-exec, non-blocking, and a
    // Unix socket's file recorded as ours.
    Listener::prepare(socket, true)
}

#[cfg(not(unix))]
fn adopt(socket: Socket) -> io::Result<Listener> {
    socket.set_nonblocking(true)?;
    let l = tokio::net::TcpListener::from_std(socket.into())?;
    Ok(Listener::Tcp(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(given: Given) -> String {
        match given.make("web") {
            Ok(l) => panic!("made {l:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_socket_that_does_not_listen_is_refused_naming_it() {
        let msg = message(Given::new(|| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )?;
            Ok(std::net::TcpListener::from(s))
        }));
        assert!(
            msg.starts_with("cannot listen on web (the listener given, fd "),
            "{msg}"
        );
        assert!(msg.contains("not listening"), "{msg}");
    }

    #[test]
    fn the_closure_s_error_names_the_listener() {
        let msg = message(Given::new(|| {
            Err::<std::net::TcpListener, _>(io::Error::other("no such device"))
        }));
        assert_eq!(msg, "cannot listen on web: no such device");
    }

    #[test]
    fn a_listener_is_made_once() {
        let given = Given::new(|| Err::<std::net::TcpListener, _>(io::Error::other("first")));
        let _ = given.make("web");
        let msg = message(given);
        assert!(msg.contains("already made"), "{msg}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_listener_made_is_close_on_exec_and_serves() {
        let given = Given::new(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            // A program may hand over a descriptor without close-on-exec.
            socket2::SockRef::from(&l).set_cloexec(false)?;
            Ok(l)
        });
        let l = given.make("web").unwrap();
        let Listener::Tcp(tcp) = &l else {
            panic!("{l:?}")
        };
        let fd = std::os::fd::AsFd::as_fd(tcp);
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
        let addr = match l.local_addr().unwrap() {
            crate::listener::LocalAddr::Tcp(a) => a,
            other => panic!("{other}"),
        };
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        l.accept().await.unwrap();
    }
}
