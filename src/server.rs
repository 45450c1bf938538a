//! The [`Server`] builder: listeners and settings, checked by [`Server::run`].

use std::future::Future;
#[cfg(unix)]
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Config, Registration, MAX_DURATION};
use crate::connections::{self, Launch};
use crate::error::Result;
use crate::events::Command;
use crate::generation::Generation;
use crate::handle::Handle;
use crate::lifecycle::{Lifecycle, Phase};
use crate::listener::Given;
#[cfg(unix)]
use crate::listener::UnixPermissions;
use crate::service::IntoHttpService;
use crate::signal::{Signal, SignalSet};
use crate::tls::TlsSource;

const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_DRAIN_NOTICE_SPREAD: Duration = Duration::from_secs(2);
const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough for most bad releases to show themselves (a crash on the
/// first real requests, a background task that exits, a native library
/// that aborts under load: seconds, not minutes), short enough that the
/// waiting old generation (an idle process holding its memory) is gone
/// soon after, and that an operator's next reload hardly ever meets one
/// (and if it does, the chain is followed: see `Server::probation`).
const DEFAULT_PROBATION: Duration = Duration::from_secs(10);
const DEFAULT_HTTP2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A server with one or more listeners that restarts itself without
/// dropping a connection.
///
/// Build it with [`Server::new`], add listeners with [`register`](Self::register),
/// adjust the settings, and [`run`](Self::run) it. Every setting is checked by
/// `run`, which returns the first problem as an [`Error`](crate::Error) naming it.
///
/// # Examples
///
/// Three listeners, each with its own service, and a shorter drain:
///
/// ```no_run
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use hyper::service::service_fn;
/// use hyper::{Request, Response, body::Incoming};
///
/// async fn api(_: Request<Incoming>) -> Result<Response<String>, Infallible> {
///     Ok(Response::new("api".into()))
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), endless::Error> {
///     endless::Server::new()
///         .stop_timeout(Duration::from_secs(5))
///         .register("127.0.0.1:8080", service_fn(api))
///         .register("127.0.0.1:8081", service_fn(api))
///         .register(":8082", service_fn(api))
///         .run()
///         .await
/// }
/// ```
///
/// # HTTP/1 and HTTP/2 settings
///
/// hyper's connection settings that matter in production have a method
/// each here, named after hyper's with the protocol in front
/// ([`http1_max_headers`](Self::http1_max_headers),
/// [`http2_max_concurrent_streams`](Self::http2_max_concurrent_streams),
/// …); those not set keep hyper's defaults. They apply to the TCP, Unix and
/// HTTPS listeners (HTTP/3 has its own), in every generation: a new
/// generation runs the program's code, so a reload applies the settings the
/// new binary sets.
///
/// They are mirrored rather than offered as a closure over hyper's
/// connection builders, on purpose:
/// - hyper panics on some values (an HTTP/1 buffer under 8 KiB, an HTTP/2
///   frame size out of range, a connection window over 2³¹−1), in the
///   middle of serving; here [`run`](Self::run) refuses them with an
///   [`Error::Config`](crate::Error::Config) naming the setting, before
///   anything serves (in a new generation: the reload fails, the old one
///   serves on);
/// - some builder settings are endless's: its timer, hyper's own header
///   read timeout (off: the sweeper enforces
///   [`header_read_timeout`](Self::header_read_timeout) at a fraction of
///   the cost), and HTTP/2 keep-alive PINGs
///   ([`http2_keep_alive_interval`](Self::http2_keep_alive_interval)). A
///   closure could set them again, or run before or after endless's own
///   and silently undo one or the other;
/// - conflicting settings (an adaptive window with fixed window sizes, of
///   which hyper keeps whichever was set last) are refused instead;
/// - hyper-util's builder is not in endless's public API, so its next
///   0.x release does not break endless's.
#[derive(Debug)]
pub struct Server {
    registrations: Vec<Registration>,
    config: Config,
    commands: mpsc::UnboundedReceiver<Command>,
    handle: Handle,
    life: Ends,
    /// Starts a graceful stop when it resolves.
    shutdown: Option<Shutdown>,
}

/// The future of [`Server::with_graceful_shutdown`].
struct Shutdown(Pin<Box<dyn Future<Output = ()> + Send>>);

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shutdown(..)")
    }
}

/// A task aborted when dropped.
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Ends the lifecycle when dropped: with the server, if it never runs, or
/// at the end of `run`. Handles then learn that nothing will serve.
#[derive(Debug)]
struct Ends(Arc<Lifecycle>);

impl Drop for Ends {
    fn drop(&mut self) {
        self.0.ended();
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with no listeners and the default settings: stop timeout
    /// 20 s, ready timeout 60 s, probation 10 s, reload on `SIGHUP` and
    /// `SIGUSR1`, stop on `SIGTERM` and `SIGINT`.
    pub fn new() -> Self {
        crate::init_process_state();
        let (requests, commands) = crate::events::requests();
        let life = Arc::new(Lifecycle::new(
            DEFAULT_DRAIN_NOTICE_SPREAD,
            crate::generation(),
        ));
        Server {
            registrations: Vec::new(),
            config: Config {
                http3: Vec::new(),
                stop_timeout: DEFAULT_STOP_TIMEOUT,
                ready_timeout: DEFAULT_READY_TIMEOUT,
                header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
                tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
                limits: connections::Limits {
                    http2_idle_timeout: DEFAULT_HTTP2_IDLE_TIMEOUT,
                    http2_keep_alive_interval: None,
                    tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
                    max_connections: None,
                },
                protocol: connections::Protocol::default(),
                signals: SignalSet::default(),
                drain_notice_spread: DEFAULT_DRAIN_NOTICE_SPREAD,
                probation: DEFAULT_PROBATION,
                ready_checks: Vec::new(),
                backlog: crate::listener::DEFAULT_BACKLOG,
                #[cfg(unix)]
                pid_file: None,
                #[cfg(unix)]
                keep_pid: false,
                #[cfg(unix)]
                unix_permissions: Vec::new(),
                #[cfg(unix)]
                watch_binary: false,
                #[cfg(unix)]
                watch_files: Vec::new(),
                #[cfg(unix)]
                handoff: None,
                #[cfg(unix)]
                control: None,
            },
            commands,
            handle: Handle::new(requests, life.clone()),
            life: Ends(life),
            shutdown: None,
        }
    }

    /// Adds a listener on `addr` served by `svc`.
    ///
    /// `addr` is `"host:port"`, `"[ipv6]:port"` or `":port"` (every
    /// interface). It is also the listener's name across reloads: a new
    /// generation adopts the socket registered under the same address, so
    /// `"127.0.0.1:0"` keeps its kernel-chosen port across reloads.
    ///
    /// `svc` is any hyper service, such as one made with
    /// [`hyper::service::service_fn`], or a tower service such as an axum
    /// `Router`, as it is (see [`IntoHttpService`](crate::IntoHttpService)).
    pub fn register<S, M>(self, addr: &str, svc: S) -> Self
    where
        S: IntoHttpService<M>,
    {
        self.push(addr, connections::register(svc.into_http_service()), None)
    }

    fn push(self, addr: &str, svc: Box<dyn Launch>, tls: Option<TlsSource>) -> Self {
        self.push_given(addr, svc, tls, None)
    }

    fn push_given(
        mut self,
        addr: &str,
        svc: Box<dyn Launch>,
        tls: Option<TlsSource>,
        given: Option<Given>,
    ) -> Self {
        self.registrations.push(Registration {
            addr: addr.to_owned(),
            svc,
            tls,
            given,
        });
        self
    }

    /// Adds a listener that the program makes itself, named `name`, served
    /// by `svc`: one bound before the program drops its privileges, one
    /// with socket options endless does not set (`IP_FREEBIND`, a device,
    /// a deferred accept), one that a library hands out. It is served and
    /// handed over at every reload exactly as a listener of
    /// [`register`](Self::register) is: its accept queue never closes.
    ///
    /// **`listener` is called only when nothing was handed over under
    /// `name`**: in the first generation (or the first whose release
    /// registers `name`). A later generation serves the socket it
    /// inherited and never calls it. That is the point of taking a closure
    /// rather than a listener: each generation runs `main` again while the
    /// old one still holds the socket, so a listener made in `main` would
    /// be bound twice (`EADDRINUSE`, or with `SO_REUSEPORT` a second
    /// socket with an accept queue of its own, whose connections the old
    /// generation's exit would reset). So bind inside the closure, never
    /// before. It is called by [`run`](Self::run), before the ready checks.
    ///
    /// `name` is the listener's name across reloads, as a registered
    /// address is for [`register`](Self::register) (the two share one
    /// namespace): any non-empty string. Keep it from release to release:
    /// under a new name, a new generation calls its closure, which cannot
    /// bind the address the old generation still holds, so the reload
    /// fails (and the old generation serves on).
    ///
    /// What the closure returns must be a listening stream socket, TCP or
    /// Unix (`std::net::TcpListener` or `std::os::unix::net::UnixListener`,
    /// as they are, see [`StdListener`](crate::StdListener)); `run`
    /// returns [`Error::Bind`](crate::Error::Bind) naming `name` (and the
    /// descriptor) otherwise, or when the closure fails. endless then
    /// treats it as its own: close-on-exec (only the next generation
    /// inherits it, during the hand-over), non-blocking,
    /// [`tcp_keepalive`](Self::tcp_keepalive) on; a Unix socket's file is
    /// removed at the final stop if it is still that file, as for
    /// `register("unix:/path")`. [`backlog`](Self::backlog) and
    /// [`unix_permissions`](Self::unix_permissions) do not apply: the
    /// program set the queue (`TcpListener::bind` asks for 128; a reload
    /// under thousands of connections wants more, see `backlog`) and the
    /// file's mode itself.
    ///
    /// # Examples
    ///
    /// A TCP listener and a Unix one, each made once and then handed over:
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// use std::net::TcpListener;
    /// use std::os::unix::net::UnixListener;
    /// use hyper::service::service_fn;
    ///
    /// let svc = service_fn(|_req| async {
    ///     Ok::<_, std::convert::Infallible>(hyper::Response::new("hi\n".to_string()))
    /// });
    /// endless::Server::new()
    ///     .register_listener("web", || TcpListener::bind("127.0.0.1:8080"), svc)
    ///     .register_listener("admin", || {
    ///         // A file left by a crash would make bind fail.
    ///         let _ = std::fs::remove_file("/run/app/admin.sock");
    ///         UnixListener::bind("/run/app/admin.sock")
    ///     }, svc)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    ///
    /// For a socket that endless should hand over but the program serves
    /// itself (another protocol), see
    /// [`sockets::tcp_listener`](crate::sockets::tcp_listener).
    pub fn register_listener<F, L, S, M>(self, name: &str, listener: F, svc: S) -> Self
    where
        F: FnOnce() -> std::io::Result<L> + Send + 'static,
        L: Into<crate::StdListener>,
        S: IntoHttpService<M>,
    {
        let svc = connections::register(svc.into_http_service());
        self.push_given(name, svc, None, Some(Given::new(listener)))
    }

    /// [`register_listener`](Self::register_listener) for HTTPS: a listener
    /// the program makes itself (called only when nothing was handed over
    /// under `name`), served with the certificate chain and key in the PEM
    /// files `cert_pem` and `key_pem`, read at the start of every
    /// generation as [`register_tls`](Self::register_tls) reads them
    /// (session tickets that survive reloads included).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// use hyper::service::service_fn;
    ///
    /// let svc = service_fn(|_req| async {
    ///     Ok::<_, std::convert::Infallible>(hyper::Response::new("hi\n".to_string()))
    /// });
    /// endless::Server::new()
    ///     .register_listener_tls(
    ///         "https",
    ///         || std::net::TcpListener::bind("0.0.0.0:8443"),
    ///         "cert.pem",
    ///         "key.pem",
    ///         svc,
    ///     )
    ///     .run()
    ///     .await
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn register_listener_tls<F, L, S, M>(
        self,
        name: &str,
        listener: F,
        cert_pem: impl AsRef<std::path::Path>,
        key_pem: impl AsRef<std::path::Path>,
        svc: S,
    ) -> Self
    where
        F: FnOnce() -> std::io::Result<L> + Send + 'static,
        L: Into<crate::StdListener>,
        S: IntoHttpService<M>,
    {
        let source = TlsSource::Files {
            listener: name.to_owned(),
            cert: cert_pem.as_ref().to_path_buf(),
            key: key_pem.as_ref().to_path_buf(),
        };
        let svc = connections::register(svc.into_http_service());
        self.push_given(name, svc, Some(source), Some(Given::new(listener)))
    }

    /// Adds an HTTPS listener on `addr` served by `svc`, with the certificate
    /// chain and private key in the PEM files `cert_pem` and `key_pem`.
    ///
    /// The files are read by [`run`](Self::run) at the start of every
    /// generation: replace them and reload to rotate the certificate
    /// (connections already open keep their session). If a new generation
    /// cannot load them, it fails to start and the old one keeps serving.
    /// ALPN offers `h2` and `http/1.1`. Plain and HTTPS listeners can be
    /// mixed in one server.
    ///
    /// Session tickets (TLS 1.3 and 1.2) are encrypted with keys that each
    /// generation hands to the next, so clients resume their sessions
    /// across reloads instead of doing a full handshake after each one. A
    /// ticket is good on this listener only, and only while the certificate
    /// chain is the same: replacing the certificate and reloading means one
    /// full handshake per client.
    #[cfg(feature = "tls")]
    pub fn register_tls<S, M>(
        self,
        addr: &str,
        cert_pem: impl AsRef<std::path::Path>,
        key_pem: impl AsRef<std::path::Path>,
        svc: S,
    ) -> Self
    where
        S: IntoHttpService<M>,
    {
        let source = TlsSource::Files {
            listener: addr.to_owned(),
            cert: cert_pem.as_ref().to_path_buf(),
            key: key_pem.as_ref().to_path_buf(),
        };
        self.push(
            addr,
            connections::register(svc.into_http_service()),
            Some(source),
        )
    }

    /// Serves `svc` over HTTP/3 (QUIC) on the UDP address `addr` (a literal
    /// address such as `"0.0.0.0:8443"`, or `":8443"` for every interface),
    /// with the certificate chain and key in `cert_pem` and `key_pem`, read
    /// at the start of every generation as [`register_tls`](Self::register_tls)
    /// reads them (feature `http3`).
    ///
    /// The connections survive reloads: each generation's connection IDs
    /// name it, the newest generation reads the shared UDP socket and
    /// passes the packets of older generations' connections to them, which
    /// finish their requests and leave (see the [`http3`](crate::http3)
    /// module for how). Responses of this server's HTTPS listeners carry an
    /// `Alt-Svc` header pointing at the first HTTP/3 address, so that
    /// browsers find it.
    ///
    /// `svc` takes requests whose body is an [`endless::RequestBody`](crate::RequestBody):
    /// an axum `Router` as it is (it serves HTTPS too, unchanged), or a
    /// `service_fn(|req: Request<endless::RequestBody>| …)`, served over
    /// HTTPS as [`endless::WithRequestBody::new(svc)`](crate::WithRequestBody).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use hyper::{Request, Response};
    ///
    /// async fn hello(
    ///     req: Request<endless::RequestBody>,
    /// ) -> Result<Response<String>, std::convert::Infallible> {
    ///     Ok(Response::new(format!("hello over {:?}\n", req.version())))
    /// }
    ///
    /// # async fn doc() -> Result<(), endless::Error> {
    /// let svc = hyper::service::service_fn(hello);
    /// endless::Server::new()
    ///     .register_tls("0.0.0.0:8443", "cert.pem", "key.pem", endless::WithRequestBody::new(svc))
    ///     .register_http3("0.0.0.0:8443", "cert.pem", "key.pem", svc)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    #[cfg(feature = "http3")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http3")))]
    pub fn register_http3<S, M>(
        mut self,
        addr: &str,
        cert_pem: impl AsRef<std::path::Path>,
        key_pem: impl AsRef<std::path::Path>,
        svc: S,
    ) -> Self
    where
        S: crate::http3::IntoHttp3Service<M>,
    {
        self.config.http3.push(crate::quic::Registration::new(
            addr,
            cert_pem.as_ref().to_path_buf(),
            key_pem.as_ref().to_path_buf(),
            svc.into_http3_service(),
        ));
        self
    }

    /// Adds an HTTPS listener on `addr` with a rustls configuration you
    /// built (client authentication, a certificate resolver, …).
    ///
    /// It is used as it is: set its `alpn_protocols` to
    /// `[b"h2", b"http/1.1"]` to offer HTTP/2. Being built in code, it is
    /// rebuilt at every generation only if your code rebuilds it.
    ///
    /// Its session tickets are yours to set up: set `config.ticketer` to
    /// [`tls_ticketer(scope)`](crate::tls_ticketer) for tickets that stay
    /// valid across reloads, as [`register_tls`](Self::register_tls) does,
    /// with a scope that changes whenever who may get in does. Whatever
    /// ticketer the configuration has, endless binds its tickets to this
    /// listener: a session made on another listener is never resumed here
    /// (a copy of the configuration is served, with that ticketer around
    /// yours). Sessions cached by ID (TLS 1.2 clients that take no tickets)
    /// live in the configuration's `session_storage`: give each
    /// configuration its own (rustls's builder does).
    #[cfg(feature = "tls")]
    pub fn register_tls_config<S, M>(
        self,
        addr: &str,
        config: std::sync::Arc<rustls::ServerConfig>,
        svc: S,
    ) -> Self
    where
        S: IntoHttpService<M>,
    {
        self.push(
            addr,
            connections::register(svc.into_http_service()),
            Some(TlsSource::Config {
                listener: addr.to_owned(),
                config,
            }),
        )
    }

    /// How long a client may take to complete the TLS handshake (default
    /// 10 s). The handshake runs in the connection's own task, so a slow
    /// client never holds up accepting. Must not be zero.
    #[cfg(feature = "tls")]
    pub fn tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.tls_handshake_timeout = timeout.min(MAX_DURATION);
        self
    }

    /// How long a drain may take before the connections left are cut off
    /// (default 20 s). Must not be zero.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.config.stop_timeout = timeout.min(MAX_DURATION);
        self
    }

    /// Spreads the drain notice over `window` (default 2 s, and at most half
    /// the stop timeout): each [`Handle::draining`] future resolves at a
    /// random moment within it after the drain starts, so that clients told
    /// to reconnect (WebSockets closed with 1001 or 1012, server-sent-event
    /// streams ended) do not all reconnect in the same millisecond.
    /// `Duration::ZERO` tells everyone at once.
    pub fn drain_notice_spread(mut self, window: Duration) -> Self {
        self.config.drain_notice_spread = window.min(MAX_DURATION);
        self
    }

    /// How long this generation keeps its sockets after a new one took over
    /// (default 10 s; `Duration::ZERO` turns probation off).
    ///
    /// During the window this generation drains its connections as usual
    /// but keeps its own copy of every listener and every socket of
    /// [`sockets`](crate::sockets), not accepting, and watches the new
    /// generation. If the new generation exits within the window, for any
    /// reason (a crash, a signal, an abort, `exit`), this one **serves
    /// again** on the same sockets: connections that queued meanwhile are
    /// answered, it takes the PID file back and tells systemd it is the
    /// main process again, logs why the new one died, and counts a failed
    /// (rolled back) reload; the next reload works as usual. If the new
    /// generation lives through the window, this one lets go and exits once
    /// drained.
    ///
    /// - A new generation that hands over to a newer one itself has not
    ///   failed: its predecessor lets go then, so only the newest
    ///   generation's predecessor ever holds the sockets.
    /// - A new generation that is stopped (a stop signal, `Handle::stop`)
    ///   has not failed either: its predecessor does not serve again.
    /// - A stop that reaches this generation during the window is passed on
    ///   to the new one (it ends the probation), and this one waits for it
    ///   to exit before exiting itself, so a service manager that waits for
    ///   its main process waits for both.
    /// - Under systemd, the main PID stays with this generation during the
    ///   window and moves to the new one when this one lets go, so systemd
    ///   never sees its main process die while an older one could serve.
    /// - With [`keep_pid`](Self::keep_pid) the process ID is the service
    ///   itself: there is no probation after the re-exec in place (a
    ///   process manager that follows the PID sees it die and restarts the
    ///   program); the temporary generation proves the new binary first
    ///   (see `keep_pid`).
    ///
    /// The cost is one more process for the window: the old generation,
    /// idle, holding its memory.
    pub fn probation(mut self, window: Duration) -> Self {
        self.config.probation = window.min(MAX_DURATION);
        self
    }

    /// Adds a check that a new generation must pass before it says it is
    /// ready (and so before the old one stops accepting): say, that its
    /// database answers, or its configuration makes sense.
    ///
    /// Checks run in order, after the listeners are bound or adopted and
    /// before any connection is accepted; each gets the rest of the ready
    /// timeout. A check that fails (or does not finish in time) makes the
    /// new generation exit with the check's reason: the old generation
    /// keeps serving, and the reason reaches
    /// [`Handle::reload`](crate::Handle::reload) (in
    /// [`Error::ChildExited`](crate::Error::ChildExited)), its log and its
    /// stats. In the first generation a failed check makes
    /// [`run`](Self::run) return [`Error::ReadyCheck`](crate::Error::ReadyCheck).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// use hyper::service::service_fn;
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", service_fn(|_req| async {
    ///         Ok::<_, std::convert::Infallible>(hyper::Response::new("hi\n".to_string()))
    ///     }))
    ///     .ready_check(|| async {
    ///         // e.g. connect to the database
    ///         Ok::<(), String>(())
    ///     })
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn ready_check<F, Fut, E>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.config
            .ready_checks
            .push(crate::ready::ReadyCheck::custom(check));
        self
    }

    /// Adds a ready check that sends a real request through a registered
    /// listener's service, in-process (no socket: the listeners are shared
    /// with the old generation, which could answer a request sent to
    /// them), and expects a status. See [`ready_check`](Self::ready_check)
    /// for when checks run and what a failure does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// use endless::Probe;
    /// use hyper::service::service_fn;
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", service_fn(|_req| async {
    ///         Ok::<_, std::convert::Infallible>(hyper::Response::new("ok\n".to_string()))
    ///     }))
    ///     .ready_probe(Probe::get("/healthz").expect_status(200))
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn ready_probe(mut self, probe: crate::ready::Probe) -> Self {
        self.config
            .ready_checks
            .push(crate::ready::ReadyCheck::Probe(probe));
        self
    }

    /// The accept queue length each new listening socket asks for (default
    /// 4096; the kernel caps it, at `net.core.somaxconn` on Linux, 4096 by
    /// default since 5.4). During a reload under many connections their
    /// clients reconnect to the new generation at about the same time; the
    /// queue holds them until they are accepted. Values are kept between 1
    /// and 65,535. An adopted socket keeps the queue it was made with.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.config.backlog =
            i32::try_from(backlog.clamp(1, 65_535)).unwrap_or(crate::listener::DEFAULT_BACKLOG);
        self
    }

    /// How long a new generation may take from spawn to serving before it is
    /// killed and the reload abandoned (default 60 s). Must not be zero.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.config.ready_timeout = timeout.min(MAX_DURATION);
        self
    }

    /// How long a client may take to send a request's headers, including
    /// the first request of a connection (default 30 s), so that a silent
    /// client cannot hold a connection forever. Counted from the accept, or
    /// from the end of the previous response once all of it is sent (a slow
    /// reader of a large response is never cut by it); bytes that arrive
    /// past the end of a request body (as its `Content-Length` places it;
    /// after a chunked body, any) count as the next head's. Also bounds an
    /// idle HTTP/1 keep-alive connection; HTTP/2 has
    /// [`http2_idle_timeout`](Self::http2_idle_timeout) from its preface on
    /// (the header read timeout bounds a client slow to send that). Must not
    /// be zero.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_read_timeout = timeout.min(MAX_DURATION);
        self
    }

    /// How long an HTTP/2 connection may stay open with no stream in
    /// progress (default 60 s), before its first stream (counted from the
    /// accept) as after its last.
    /// Then it is sent a GOAWAY, and closed once
    /// its client has had the idle grace (1 s) to close it: a client that
    /// answers nothing (not even the PING that comes with the GOAWAY) is
    /// closed then too. A stream whose response is still being sent counts
    /// as in progress. Must not be zero.
    ///
    /// (HTTP/1 connections are bounded by the
    /// [`header_read_timeout`](Self::header_read_timeout) between requests.)
    pub fn http2_idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.limits.http2_idle_timeout = timeout.min(MAX_DURATION);
        self
    }

    /// Sends an HTTP/2 PING every `interval` (default `None`: none) on each
    /// HTTP/2 connection, and closes a connection whose client has not
    /// answered within 20 s: dead peers of long streams are found at the
    /// HTTP level. `Some(interval)` must not be zero.
    ///
    /// Off by default because hyper then takes a lock and reads the clock
    /// for every frame it receives; TCP keepalive
    /// ([`tcp_keepalive`](Self::tcp_keepalive), on by default) finds dead
    /// peers at no cost per request, and idle HTTP/2 connections are closed
    /// by [`http2_idle_timeout`](Self::http2_idle_timeout) in any case.
    pub fn http2_keep_alive_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.limits.http2_keep_alive_interval = interval.map(|d| d.min(MAX_DURATION));
        self
    }

    /// TCP keepalive on every accepted TCP connection (default 60 s): once a
    /// connection has been silent for `idle`, the kernel probes its peer
    /// every `idle / 6` (at least 1 s) and drops the connection after 6
    /// probes go unanswered (Linux; elsewhere the system's count), so a
    /// peer that vanished without closing (a crash, a cable, a NAT that
    /// forgot it) is found in about twice `idle`. Set on the listening
    /// sockets, which accepted ones inherit: no system call per connection.
    /// `idle` is at most 32,767 s (Linux's limit); `None` turns it off;
    /// `Some(idle)` must not be zero.
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.config.limits.tcp_keepalive = idle;
        self
    }

    /// At most `max` connections open at once in this generation, over
    /// all its listeners (default: no cap but the open-files limit). At
    /// the cap, the connection that has waited longest for a request (an
    /// idle keep-alive or HTTP/2 connection, or a client that sent
    /// nothing) is closed for each new one; if every connection is busy,
    /// accepting pauses until one closes, and new clients wait in the
    /// listen queue (they are not refused). A draining generation's
    /// connections do not count against its successor's cap.
    ///
    /// Whatever the cap, when accepting fails for lack of file descriptors
    /// (`EMFILE`, `ENFILE`), the oldest idle connections are closed the same
    /// way before new clients wait. Must not be zero.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.limits.max_connections = Some(max);
        self
    }

    /// Whether HTTP/1 connections are kept alive between requests (default
    /// `true`, hyper's). With `false` every response carries `Connection:
    /// close` and the connection closes after it: each request pays a
    /// connection, and a reload has no idle connections to move. See
    /// [HTTP/1 and HTTP/2 settings](Self#http1-and-http2-settings).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// # let svc = hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
    /// # });
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", svc)
    ///     .http1_keep_alive(false)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn http1_keep_alive(mut self, keep_alive: bool) -> Self {
        self.config.protocol.http1_keep_alive = Some(keep_alive);
        self
    }

    /// The most headers an HTTP/1 request may have (default 100, hyper's):
    /// a request with more is answered `431 Request Header Fields Too
    /// Large` and its connection closed. From 1 to 100,000; a value other
    /// than the default makes hyper allocate the room for each request
    /// head on the heap (about 5% slower, hyper says). See
    /// [HTTP/1 and HTTP/2 settings](Self#http1-and-http2-settings).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// # let svc = hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
    /// # });
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", svc)
    ///     .http1_max_headers(200)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn http1_max_headers(mut self, max: usize) -> Self {
        self.config.protocol.http1_max_headers = Some(max);
        self
    }

    /// The largest an HTTP/1 connection's read buffer may grow, in bytes
    /// (default 417,792, hyper's: 8 KiB + 100 × 4 KiB). It bounds a
    /// request head: a longer one is answered `431 Request Header Fields
    /// Too Large`. At least 8,192 (hyper's minimum). See
    /// [HTTP/1 and HTTP/2 settings](Self#http1-and-http2-settings).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// # let svc = hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
    /// # });
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", svc)
    ///     .http1_max_buf_size(64 * 1024)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn http1_max_buf_size(mut self, max: usize) -> Self {
        self.config.protocol.http1_max_buf_size = Some(max);
        self
    }

    /// The most streams (requests) an HTTP/2 client may have open at once
    /// on one connection, sent to it as `SETTINGS_MAX_CONCURRENT_STREAMS`
    /// (default `Some(200)`, hyper's; `None`: no limit). A client at the
    /// limit waits for a stream to finish before it opens another (a
    /// stream opened past it is refused with `REFUSED_STREAM`, which
    /// clients retry). Not 0. See
    /// [HTTP/1 and HTTP/2 settings](Self#http1-and-http2-settings).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// # let svc = hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
    /// # });
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", svc)
    ///     .http2_max_concurrent_streams(Some(100))
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn http2_max_concurrent_streams(mut self, max: Option<u32>) -> Self {
        self.config.protocol.http2_max_concurrent_streams = Some(max);
        self
    }

    /// How many bytes of a request body an HTTP/2 client may send on one
    /// stream before the server reads them (default 1 MiB, hyper's; from 1
    /// to 2³¹−1): `SETTINGS_INITIAL_WINDOW_SIZE`. Not together with
    /// [`http2_adaptive_window`](Self::http2_adaptive_window). See
    /// [HTTP/1 and HTTP/2 settings](Self#http1-and-http2-settings).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// # let svc = hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
    /// # });
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", svc)
    ///     .http2_initial_stream_window_size(256 * 1024)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn http2_initial_stream_window_size(mut self, size: u32) -> Self {
        self.config.protocol.http2_initial_stream_window_size = Some(size);
        self
    }

    /// How many bytes of request bodies an HTTP/2 client may send on one
    /// connection, all streams together, before the server reads them
    /// (default 1 MiB, hyper's; from 65,535 to 2³¹−1). Not together with
    /// [`http2_adaptive_window`](Self::http2_adaptive_window). See
    /// [HTTP/1 and HTTP/2 settings](Self#http1-and-http2-settings).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// # let svc = hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
    /// # });
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", svc)
    ///     .http2_initial_connection_window_size(4 * 1024 * 1024)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn http2_initial_connection_window_size(mut self, size: u32) -> Self {
        self.config.protocol.http2_initial_connection_window_size = Some(size);
        self
    }

    /// Whether HTTP/2 flow-control windows adapt to each connection's
    /// bandwidth-delay product, measured with PINGs (default `false`,
    /// hyper's). They start at HTTP/2's 64 KiB and grow for fast uploads
    /// over long paths. Not together with the initial window sizes, which
    /// it replaces ([`run`](Self::run) refuses both). See
    /// [HTTP/1 and HTTP/2 settings](Self#http1-and-http2-settings).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// # let svc = hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
    /// # });
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", svc)
    ///     .http2_adaptive_window(true)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn http2_adaptive_window(mut self, adaptive: bool) -> Self {
        self.config.protocol.http2_adaptive_window = Some(adaptive);
        self
    }

    /// The largest HTTP/2 frame payload the server accepts,
    /// `SETTINGS_MAX_FRAME_SIZE` (default 16,384, hyper's and HTTP/2's;
    /// from 16,384 to 16,777,215). See
    /// [HTTP/1 and HTTP/2 settings](Self#http1-and-http2-settings).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// # let svc = hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
    /// # });
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", svc)
    ///     .http2_max_frame_size(64 * 1024)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn http2_max_frame_size(mut self, size: u32) -> Self {
        self.config.protocol.http2_max_frame_size = Some(size);
        self
    }

    /// The largest header list an HTTP/2 request may have, in bytes as
    /// HTTP/2 counts them (names, values and 32 per field),
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` (default 16 KiB, hyper's). A larger
    /// one is answered `431 Request Header Fields Too Large`. Not 0. See
    /// [HTTP/1 and HTTP/2 settings](Self#http1-and-http2-settings).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// # let svc = hyper::service::service_fn(|_req| async {
    /// #     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
    /// # });
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", svc)
    ///     .http2_max_header_list_size(64 * 1024)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn http2_max_header_list_size(mut self, size: u32) -> Self {
        self.config.protocol.http2_max_header_list_size = Some(size);
        self
    }

    /// The signals that start a reload (default `SIGHUP`, `SIGUSR1`).
    ///
    /// An empty set is allowed: reloads then come only from
    /// [`Handle::reload`]. `SIGTERM` cannot be one (it is how a new
    /// generation reports that it is ready). Without Unix (Windows) the
    /// setting is checked the same way, but no reload signal ever arrives.
    pub fn reload_signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Self {
        self.config.signals.reload = signals.into_iter().collect();
        self
    }

    /// The signals that start a graceful stop (default `SIGTERM`, `SIGINT`).
    /// A second stop signal during the drain cuts it short. On Windows,
    /// Ctrl-C and Ctrl-Break arrive as `SIGINT`, and closing the console,
    /// logging off and shutting down as `SIGTERM` (Windows then ends the
    /// process within seconds, whatever the stop timeout).
    pub fn stop_signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Self {
        self.config.signals.stop = signals.into_iter().collect();
        self
    }

    /// Keeps the serving generation's PID in the file at `path`.
    ///
    /// Each generation writes it atomically (a temporary file renamed over
    /// `path`) once it is serving, and a new generation does so before its
    /// predecessor exits, so the file always names a live, serving process.
    /// A final stop removes it (if it still holds our PID).
    ///
    /// Unix only.
    #[cfg(unix)]
    pub fn pid_file(mut self, path: impl AsRef<Path>) -> Self {
        self.config.pid_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// Keeps the process ID across reloads (default off), for managers that
    /// follow one PID: supervisord, Docker (as PID 1 or under tini), scripts.
    ///
    /// A reload then hands over twice, with no master process: this process
    /// starts a temporary generation with the listeners; once it serves,
    /// this one drains and re-executes itself in place (same PID, the binary
    /// now on disk) with the listeners; once that serves, the temporary one
    /// drains and exits, and this process reaps it. Only this PID writes the
    /// PID file and talks to systemd.
    ///
    /// The temporary generation proves what the re-executed image will
    /// need: it runs the ready checks and binds (then releases) every
    /// address that the new version adds, and the re-exec runs exactly the
    /// file it ran (held open since its spawn), whatever was renamed over
    /// the path since. If the re-exec fails, this process serves again on
    /// its listeners and the temporary generation drains: the PID and the
    /// service survive, and [`Handle::reload`](crate::Handle::reload)
    /// returns [`Error::Exec`](crate::Error::Exec). If the re-executed image
    /// then fails to start, the temporary generation, which still holds the
    /// listeners, serves on (as the main generation, taking the PID file),
    /// so something always serves. (On success the process image is
    /// replaced, so a `reload()` awaited in this process never returns; do
    /// not await it inside a request handler, whose request the drain waits
    /// for.)
    ///
    /// Unix only.
    #[cfg(unix)]
    pub fn keep_pid(mut self, keep: bool) -> Self {
        self.config.keep_pid = keep;
        self
    }

    /// Gives the file of the Unix socket registered as `addr`
    /// (`"unix:/run/app.sock"`) a mode, an owner and a group, as systemd's
    /// `SocketMode=`, `SocketUser=` and `SocketGroup=` do. Unix only.
    ///
    /// They are set after the socket is bound and before it listens, so no
    /// client ever connects while the file has other permissions; a
    /// generation that adopts the socket sets them again (a changed setting
    /// takes effect at the next reload). `addr` must be registered, with
    /// [`register`](Self::register) or [`register_tls`](Self::register_tls),
    /// and name a socket file: [`run`](Self::run) returns
    /// [`Error::Config`](crate::Error::Config) otherwise. A later call for the same address
    /// replaces an earlier one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// use endless::UnixPermissions;
    /// use hyper::service::service_fn;
    ///
    /// endless::Server::new()
    ///     .register("unix:/run/app/app.sock", service_fn(|_req| async {
    ///         Ok::<_, std::convert::Infallible>(hyper::Response::new("hi\n".to_string()))
    ///     }))
    ///     .unix_permissions(
    ///         "unix:/run/app/app.sock",
    ///         UnixPermissions::new().mode(0o660).group("www-data"),
    ///     )
    ///     .run()
    ///     .await
    /// # }
    /// ```
    #[cfg(unix)]
    pub fn unix_permissions(mut self, addr: &str, permissions: UnixPermissions) -> Self {
        self.config.unix_permissions.retain(|(a, _)| a != addr);
        self.config
            .unix_permissions
            .push((addr.to_owned(), permissions));
        self
    }

    /// Serves a control socket at `path` (a Unix socket file, default off),
    /// on which a deploy script, or systemd's `ExecReload=`, asks for a
    /// reload and **waits** for its outcome, or asks for the status.
    /// Unix only.
    ///
    /// One command per line, one answer line each:
    ///
    /// | command  | answer                                                        |
    /// |----------|---------------------------------------------------------------|
    /// | `reload` | `ok pid=P generation=G executable=PATH identity=DEV:INODE same-executable=BOOL probation=MS`, once the new generation serves; or `error REASON` |
    /// | `status` | `ok pid=P generation=G draining=BOOL in-probation=BOOL connections=N reloads-requested=… reloads-succeeded=… reloads-failed=… reloads-rolled-back=… last-error=…` |
    ///
    /// Anything else is answered `error unknown command …`, and a line
    /// longer than 1 KiB or a client that says nothing for 10 s is
    /// disconnected. Like a listener, the socket is handed to each new
    /// generation, so its path stays. Its file gets `permissions` (mode
    /// `0o600` by default: only this user), and a client whose user is
    /// neither this process's nor root is refused, whatever the file's mode
    /// (its credentials are checked on the connection). The crate ships
    /// `endlessctl`, a small client whose exit status is the outcome (0: it
    /// worked), for `ExecReload=` and deploy scripts.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// use hyper::service::service_fn;
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", service_fn(|_req| async {
    ///         Ok::<_, std::convert::Infallible>(hyper::Response::new("hi\n".to_string()))
    ///     }))
    ///     .control_socket("/run/app/control.sock", endless::UnixPermissions::new())
    ///     .run()
    ///     .await
    /// # }
    /// ```
    /// ```text
    /// $ endlessctl reload /run/app/control.sock && echo deployed
    /// ```
    #[cfg(unix)]
    pub fn control_socket(mut self, path: impl AsRef<Path>, permissions: UnixPermissions) -> Self {
        let permissions = match permissions.get_mode() {
            Some(_) => permissions,
            None => permissions.mode(0o600),
        };
        self.config.control = Some((path.as_ref().to_path_buf(), permissions));
        self
    }

    /// Reloads when the executable is replaced (default off), like
    /// overseer's file fetcher: copy a new release into place and it serves
    /// within a second or so, with no signal to send. Unix only, as are
    /// reloads.
    ///
    /// The path watched is the one the next generation is started from
    /// (argv\[0\], resolved when this generation started). The reload starts
    /// once the file has stayed the same for 300 ms after its last change
    /// (it is checked every 200 ms), so a file renamed over the old one, or
    /// written in place and closed, starts whole. A new binary that cannot
    /// start (a broken copy, one that exits or is not ready in time) is
    /// handled as any failed reload: the old generation keeps serving, and
    /// the next change is tried again. Deploy by renaming a complete file
    /// over the old one (`install`, `mv`): a running binary cannot be
    /// written in place on Linux (`ETXTBSY`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// use hyper::service::service_fn;
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", service_fn(|_req| async {
    ///         Ok::<_, std::convert::Infallible>(hyper::Response::new("hi\n".to_string()))
    ///     }))
    ///     .reload_on_binary_change(true)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    #[cfg(unix)]
    pub fn reload_on_binary_change(mut self, watch: bool) -> Self {
        self.config.watch_binary = watch;
        self
    }

    /// Reloads when the file at `path` changes: a TLS certificate or key
    /// (each generation reads them again), a configuration file. Changes
    /// are noticed as with
    /// [`reload_on_binary_change`](Self::reload_on_binary_change); changes
    /// to several files within 300 ms make one reload. May be called for
    /// several files.
    ///
    /// Unix only.
    #[cfg(unix)]
    pub fn reload_on_file_change(mut self, path: impl AsRef<Path>) -> Self {
        // The version this process starts with, as of now (before a
        // generation's start-up, during which a new one may land).
        let path = path.as_ref().to_path_buf();
        let known = crate::watch::identity(&path);
        self.config.watch_files.push((path, known));
        self
    }

    /// Unix only (there are no reloads elsewhere).
    ///
    /// Hands a blob of bytes to the next generation at each reload (a cache
    /// snapshot, counters, session keys), which it reads at start-up with
    /// [`inherited_state`](crate::inherited_state).
    ///
    /// `state` is called in this generation just before it spawns the next
    /// one (with [`keep_pid`](Self::keep_pid), once for the temporary
    /// generation and once more, after the drain, for the re-executed
    /// image), on the runtime's thread: keep it quick. What it returns is
    /// written in full to a memfd (an unlinked temporary file where there
    /// is none) that only the next generation inherits, never a process
    /// your handlers spawn.
    ///
    /// At most [`MAX_STATE`](crate::MAX_STATE) bytes (64 MiB). If it returns
    /// more, or panics, the reload still happens, without the state: this
    /// generation logs a warning saying why, and the next one's
    /// `inherited_state()` is `None`. So is it if the next generation
    /// cannot read what it was handed (it starts anyway and logs a
    /// warning). A failed reload costs nothing: the next one calls `state`
    /// again.
    ///
    /// # Examples
    ///
    /// A request counter that survives reloads:
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use hyper::service::service_fn;
    ///
    /// let start = endless::inherited_state()
    ///     .and_then(|b| Some(u64::from_le_bytes(b.try_into().ok()?)))
    ///     .unwrap_or(0);
    /// let count = Arc::new(AtomicU64::new(start));
    /// let (c, saved) = (count.clone(), count.clone());
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", service_fn(move |_req| {
    ///         let n = c.fetch_add(1, Ordering::Relaxed) + 1;
    ///         async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(format!("{n}\n"))) }
    ///     }))
    ///     .handoff_state(move || saved.load(Ordering::Relaxed).to_le_bytes().to_vec())
    ///     .run()
    ///     .await
    /// # }
    /// ```
    #[cfg(unix)]
    pub fn handoff_state<F>(mut self, state: F) -> Self
    where
        F: Fn() -> Vec<u8> + Send + Sync + 'static,
    {
        self.config.handoff = Some(crate::state::Producer(Arc::new(state)));
        self
    }

    /// Starts a graceful stop when `signal` resolves, as a stop signal or
    /// [`Handle::stop`] would (the name is hyper-util's and axum's). The
    /// future is polled from the moment [`run`](Self::run) serves; a later
    /// call replaces an earlier one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc() -> Result<(), endless::Error> {
    /// use hyper::service::service_fn;
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// # drop(stop);
    /// endless::Server::new()
    ///     .register("127.0.0.1:8080", service_fn(|_req| async {
    ///         Ok::<_, std::convert::Infallible>(hyper::Response::new("hi\n".to_string()))
    ///     }))
    ///     .with_graceful_shutdown(async move {
    ///         let _ = stopped.await;
    ///     })
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shutdown = Some(Shutdown(Box::pin(signal)));
        self
    }

    /// A handle to reload or stop this server from code, or to learn its
    /// addresses. Call it before [`run`](Self::run).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Serves until a stop, or until a new generation has taken over (and
    /// lived through its probation), and this generation's connections are
    /// drained.
    ///
    /// Returns `Ok(())` after a graceful stop or hand-over, including one
    /// whose stop timeout cut connections off; `Err` if the server cannot
    /// start (a bad setting, address or signal, a busy port, an unusable
    /// inherited socket, a failed ready check).
    ///
    /// The signal handlers it installs stay installed after it returns (the
    /// signal-hook crate cannot restore what was there before): a reload or
    /// stop signal that arrives then is caught and ignored rather than, say,
    /// terminating the process. A program that goes on after `run` and wants
    /// those signals must handle them itself (with `tokio::signal`, say).
    /// (On Windows nothing stays: once `run` returns, Ctrl-C ends the
    /// process again.)
    pub async fn run(self) -> Result<()> {
        // The serving future is several kilobytes: on the heap, once, it is
        // not copied across the caller's stack (`block_on`, the caller's
        // own future), whose pages would stay resident (measured: 28 KiB
        // more stack than a plain hyper-util server).
        Box::pin(self.serve()).await
    }

    async fn serve(self) -> Result<()> {
        let Server {
            registrations,
            config,
            commands,
            handle,
            life,
            shutdown,
        } = self;
        // Polled from the moment the server serves; gone with `run`.
        let _shutdown = shutdown.map(|signal| {
            let (life, requests) = (life.0.clone(), handle.requests().clone());
            Aborting(tokio::spawn(async move {
                let mut phase = life.subscribe();
                let _ = phase.wait_for(|p| *p != Phase::Starting).await;
                signal.0.await;
                requests.stop();
            }))
        });
        // The generation keeps its own requests sender (for the file
        // watcher and the control socket); ours goes, so that the events
        // learn when no user handle is left.
        let requests = handle.requests().clone();
        drop(handle);
        let started = match crate::config::check(registrations, &config) {
            Ok(endpoints) => {
                Generation::start(config, endpoints, commands, life.0.clone(), requests).await
            }
            Err(e) => Err(e),
        };
        let generation = match started {
            Ok(g) => g,
            Err(e) => {
                // A generation started by a reload tells its parent why.
                #[cfg(unix)]
                crate::link::failed(&e);
                return Err(e);
            }
        };
        generation.run().await;
        Ok(())
    }
}
