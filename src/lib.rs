//! Zero-downtime restarts and binary upgrades for hyper servers.
//!
//! `endless` serves any hyper service and, on a reload signal, starts a new
//! copy of the program (the binary now on disk, so an upgrade is a copy and a
//! signal) that takes over the listening sockets. Not one connection is
//! refused and not one request fails: the old generation finishes what it
//! started while the new one accepts. One process, no master.
//!
//! # Example
//!
//! ```no_run
//! use std::convert::Infallible;
//! use hyper::{body::Incoming, service::service_fn, Request, Response};
//!
//! async fn hello(_: Request<Incoming>) -> Result<Response<String>, Infallible> {
//!     Ok(Response::new(format!("hello from pid {}\n", std::process::id())))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), endless::Error> {
//!     endless::listen_and_serve("127.0.0.1:8080", service_fn(hello)).await
//! }
//! ```
//!
//! Then `kill -USR1 <pid>` (or `-HUP`) reloads it, and `kill -TERM <pid>` or
//! Ctrl-C stops it gracefully.
//!
//! Several listeners, settings and a [`Handle`] come with [`Server`]. This
//! one runs (as a doc test): it serves on a kernel-chosen port, answers a
//! request, and stops from code.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::{Read, Write};
//! use std::time::Duration;
//! use hyper::service::service_fn;
//!
//! let server = endless::Server::new()
//!     .stop_timeout(Duration::from_secs(5))
//!     .register("127.0.0.1:0", service_fn(|_req| async {
//!         Ok::<_, std::convert::Infallible>(hyper::Response::new("hi\n".to_string()))
//!     }));
//! let handle = server.handle();
//! let serving = tokio::spawn(server.run());
//!
//! let addr = handle.listening().await?[0].to_string();
//! let reply = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
//!     let mut conn = std::net::TcpStream::connect(addr)?;
//!     conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
//!     let mut reply = String::new();
//!     conn.read_to_string(&mut reply)?;
//!     Ok(reply)
//! })
//! .await??;
//! assert!(reply.starts_with("HTTP/1.1 200 OK") && reply.ends_with("hi\n"));
//!
//! handle.stop(); // as SIGTERM would: drain, then `run` returns
//! serving.await??;
//! # Ok(())
//! # }
//! ```
//!
//! # How a reload works
//!
//! 1. Generation N gets a reload signal, or [`Handle::reload`] is called.
//! 2. It spawns the program it was started from (argv\[0\] and the logical
//!    working directory, both captured when the process started and
//!    resolved again now, so a switched `current -> releases/vN` symlink
//!    runs the new release) with the same arguments, passing its listening
//!    sockets as FDs 3, 4, … and their addresses and identities (device and
//!    inode) in the environment. Only during that spawn are the sockets not
//!    close-on-exec, and only in that child.
//! 3. Generation N+1 installs its signal handlers (reload and stop signals
//!    stay blocked from before the exec until then, so none is lost and none
//!    kills it), adopts the inherited sockets (if each is the socket named:
//!    a process that merely inherited the variables adopts nothing) by
//!    address, binds any new address, starts accepting, and sends `SIGTERM`
//!    to N, if N is still its parent.
//! 4. N sees `SIGTERM` from its child, which means "ready" (from anyone else
//!    it means "stop"). N stops accepting and drops its copy of each socket;
//!    the sockets and their accept queues live on in N+1. HTTP/1 responses
//!    from N now carry `Connection: close`, connections that stay idle are
//!    closed after a short grace, HTTP/2 connections get GOAWAY.
//! 5. N exits (its [`Server::run`] returns `Ok`) once its connections are
//!    closed, or at the stop timeout, when the rest are cut off.
//!
//! If N+1 exits before it is ready, or is not ready within the ready
//! timeout, N kills and reaps it, logs why and keeps serving; the next reload
//! works as usual. If N dies while N+1 starts, N+1 serves on its sockets.
//! Reload signals that arrive while N+1 is starting are coalesced; a
//! draining generation starts none.
//!
//! # Signals
//!
//! | signal               | default meaning                                   |
//! |----------------------|---------------------------------------------------|
//! | `SIGHUP`, `SIGUSR1`  | reload ([`Server::reload_signals`])               |
//! | `SIGTERM`, `SIGINT`  | graceful stop ([`Server::stop_signals`]); a second one during the drain cuts it short; to a generation draining after a hand-over, the first one changes nothing |
//! | `SIGTERM` sent with `kill` by the new generation | "ready": the hand-over is done |
//!
//! Signals the process sends itself (a `SIGPIPE`, `raise`) are never
//! requests.
//!
//! # HTTPS, process managers, Unix sockets
//!
//! - [`listen_and_serve_tls`] and [`Server::register_tls`] serve HTTPS with
//!   rustls (feature `tls`: `hyper-endless = { version = "0.1", features =
//!   ["tls"] }`; off by default, so that a plain HTTP server builds no TLS
//!   stack). Certificates are read by each generation, so replacing the
//!   files and reloading rotates them.
//! - Under systemd, the notify protocol is spoken whenever `NOTIFY_SOCKET`
//!   is set (`READY=1`, `RELOADING=1`, `MAINPID=` from the new generation,
//!   `STOPPING=1`), and sockets from socket activation are adopted.
//! - [`Server::keep_pid`] keeps the process ID across reloads, for managers
//!   that follow one PID (supervisord, Docker); [`Server::pid_file`] keeps
//!   a PID file current.
//! - `register("unix:/run/app.sock", svc)` serves on a Unix stream socket,
//!   whose file [`Server::unix_permissions`] gives a mode, owner and group
//!   before the first client can connect; on Linux, `"unix:@name"` serves
//!   on an abstract socket (no file).
//! - [`Server::register_listener`] serves a listener the program makes
//!   itself (bound before dropping privileges, or with its own socket
//!   options): its closure runs only in a generation that inherited nothing
//!   under the listener's name, so later generations never bind twice.
//!
//! # Carrying more than the HTTP listeners
//!
//! [`sockets`] hands over what the program serves itself: a UDP socket, a
//! TCP listener for another protocol, a Unix datagram socket, any
//! descriptor (a memfd). Ask for them by name before [`Server::run`]; each
//! generation gets its predecessor's, and [`sockets::draining`] tells the
//! old one to stop reading them.
//!
//! # Carrying state
//!
//! [`Server::handoff_state`] hands the next generation a blob of bytes at
//! each reload (up to [`MAX_STATE`]), which it reads at start-up with
//! [`inherited_state`]. Servers from [`Server::register_tls`] use the same
//! hand-over for their TLS session ticket keys, so clients resume their
//! sessions across reloads.
//!
//! # Reloading without a signal
//!
//! [`Server::reload_on_binary_change`] reloads once a new executable is in
//! place (renamed over the old one), and [`Server::reload_on_file_change`]
//! when a certificate or configuration file changes; a new binary that
//! cannot start changes nothing.
//!
//! # Tracing
//!
//! Every step of a reload is a [`tracing`] event: requested, spawned, ready
//! (or exited, or timed out), draining with the number of connections,
//! drained or deadline reached.
//!
//! # Features
//!
//! None is on by default, so that a plain HTTP server builds nothing more
//! than it needs:
//!
//! - `tls`: HTTPS with rustls and ring ([`listen_and_serve_tls`],
//!   [`Server::register_tls`], session tickets that survive reloads);
//! - `metrics`: counters and gauges through the `metrics` facade, continued
//!   across reloads;
//! - `axum`: `axum::extract::ConnectInfo<SocketAddr>` in every request over
//!   TCP;
//! - `http3`: HTTP/3 over QUIC whose connections survive reloads (implies
//!   `tls`; builds quinn).
//!
//! # Platform support
//!
//! Linux (tested) and macOS (type-checked in CI, not run) have everything.
//!
//! Windows (type-checked in CI, and run there under wine, not on Windows
//! itself) serves with the same API, without reloads: they need fork/exec
//! and descriptor inheritance, which it lacks.
//! There [`Handle::reload`] returns [`Error::Unsupported`]; Ctrl-C and
//! Ctrl-Break arrive as `SIGINT`, and closing the console, logging off and
//! shutting down as `SIGTERM` (as in Go), so the default stop signals drain
//! gracefully, a second one cuts the drain short, and the stop timeout
//! applies; [`generation`] is 0 and [`started_by_reload`] false. The Unix
//! extras do not exist there: [`Server::keep_pid`], [`Server::pid_file`],
//! [`Server::unix_permissions`], the reloads on file changes, `sockets`,
//! and `unix:` addresses (an [`Error::Address`] at [`Server::run`]).
//!
//! # Limits
//!
//! - The process ID changes at every reload unless [`Server::keep_pid`] is
//!   on. systemd follows it (`Type=notify`, `NotifyAccess=all`).
//! - One [`Server`] per process takes over the inherited sockets.
//! - A new generation must register the same addresses (as strings) to adopt
//!   its predecessor's sockets; an address it does not register is closed.
//! - After [`Server::run`] returns, its signal handlers stay installed: the
//!   signals are caught and ignored from then on.

#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The crate docs link to items of the features (`tls`, `http3`, ...), which
// exist only with them: docs.rs builds with all of them.
#![cfg_attr(
    not(all(
        feature = "tls",
        feature = "http3",
        feature = "metrics",
        feature = "axum"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]
// Without Unix the shared modules (events, drain, connections) keep what
// only the reload machinery uses; dead code is checked on Unix, where all
// of it is used.
#![cfg_attr(not(unix), allow(dead_code))]

mod accepting;
#[cfg(unix)]
mod children;
mod config;
mod conn_info;
mod connections;
#[cfg(unix)]
mod control;
mod counters;
mod drain;
mod error;
mod events;
#[cfg(unix)]
#[allow(unsafe_code)]
mod exe;
#[cfg(unix)]
mod generation;
// Without Unix there are no reloads: one generation that serves and stops.
#[cfg(not(unix))]
#[path = "portable/generation.rs"]
mod generation;
mod handle;
#[cfg(unix)]
#[allow(unsafe_code)]
mod handover;
#[cfg(feature = "http3")]
pub mod http3;
#[cfg(unix)]
mod keep_pid;
mod lifecycle;
#[cfg(unix)]
mod link;
mod listener;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(unix)]
mod pid_file;
#[cfg(not(unix))]
mod portable;
#[cfg(unix)]
mod probation;
mod quic;
mod ready;
#[cfg(unix)]
mod restart;
mod server;
mod service;
mod signal;
#[cfg(unix)]
pub mod sockets;
#[cfg(unix)]
mod state;
mod succession;
#[cfg(unix)]
mod systemd;
#[cfg(feature = "tls")]
mod tickets;
#[cfg(feature = "tls")]
mod tls;
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
mod tls;
#[cfg(unix)]
mod watch;

use std::sync::OnceLock;
use std::time::SystemTime;

/// The README's snippets, compiled (and run, unless marked `no_run`) as
/// doc tests, so the first program a newcomer copies builds: with no
/// feature, as a newcomer's `Cargo.toml` has it (plain `cargo test`), and
/// with `tls`, `axum` and `metrics` (`tests/suite.rs`).
#[cfg(all(doctest, unix))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use conn_info::ConnInfo;
#[cfg(feature = "tls")]
pub use conn_info::TlsInfo;
pub use error::{Error, Result};
pub use handle::Handle;
#[cfg(feature = "http3")]
pub use http3::{RequestBody, WithRequestBody};
/// Serves a tower service (an axum `Router`, a tonic server's routes) as a
/// hyper service: `endless::listen_and_serve(addr,
/// endless::TowerToHyperService::new(router))`.
///
/// This is hyper-util's own adapter, re-exported rather than wrapped: it is
/// what hyper and axum document, and the re-export guarantees the version
/// that matches endless's hyper. hyper-util is a 0.x crate, so endless takes
/// a new hyper-util only in a release whose CHANGELOG says so. (The public
/// [`Signal`] type, by contrast, is endless's own: `nix`, where the signal
/// type would come from, makes breaking releases often.)
pub use hyper_util::service::TowerToHyperService;
pub use lifecycle::Stats;
#[cfg(unix)]
pub use listener::UnixPermissions;
pub use listener::{LocalAddr, PeerCredentials, StdListener};
pub use ready::Probe;
/// The rustls this crate serves HTTPS with, for building the configuration
/// that [`Server::register_tls_config`] takes with the same version.
#[cfg(feature = "tls")]
pub use rustls;
pub use server::Server;
pub use service::{HttpBody, HttpService, IntoHttpService};
pub use signal::{ParseSignalError, Signal};
#[cfg(unix)]
pub use state::MAX_STATE;

/// Serves `svc` on `addr` with the default settings, reloading on `SIGHUP`
/// or `SIGUSR1` and stopping gracefully on `SIGTERM` or `SIGINT`.
///
/// The drop-in for serving a hyper service; see [`Server`] for settings and
/// several listeners. Returns when this generation has stopped or handed over
/// and drained.
///
/// # Examples
///
/// ```no_run
/// # async fn doc() -> Result<(), endless::Error> {
/// use hyper::service::service_fn;
/// endless::listen_and_serve(":8080", service_fn(|_req| async {
///     Ok::<_, std::convert::Infallible>(hyper::Response::new("hi\n".to_string()))
/// }))
/// .await
/// # }
/// ```
pub async fn listen_and_serve<S, M>(addr: &str, svc: S) -> Result<()>
where
    S: IntoHttpService<M>,
{
    Server::new().register(addr, svc).run().await
}

/// Serves `svc` over HTTPS on `addr`, like Go's `ListenAndServeTLS`: the
/// certificate chain and private key are read from PEM files at the start of
/// every generation, so replacing the files and reloading rotates the
/// certificate. HTTP/2 and HTTP/1.1 are offered by ALPN.
///
/// A missing, unreadable or malformed file, or a key that does not match the
/// certificate, is an [`Error::Tls`] naming the file. See
/// [`Server::register_tls`] to mix HTTPS and plain listeners.
///
/// # Examples
///
/// ```no_run
/// # async fn doc() -> Result<(), endless::Error> {
/// use hyper::service::service_fn;
/// endless::listen_and_serve_tls(":8443", "cert.pem", "key.pem", service_fn(|_req| async {
///     Ok::<_, std::convert::Infallible>(hyper::Response::new("secure\n".to_string()))
/// }))
/// .await
/// # }
/// ```
#[cfg(feature = "tls")]
pub async fn listen_and_serve_tls<S, M>(
    addr: &str,
    cert_pem: impl AsRef<std::path::Path>,
    key_pem: impl AsRef<std::path::Path>,
    svc: S,
) -> Result<()>
where
    S: IntoHttpService<M>,
{
    Server::new()
        .register_tls(addr, cert_pem, key_pem, svc)
        .run()
        .await
}

static STARTED_AT: OnceLock<SystemTime> = OnceLock::new();

/// Records what must be known about this process before anything changes
/// it: when it started, how it was started, and where its binary is. Runs
/// before `main` on Unix (see `exe`), and again, cheaply, at every call
/// into `endless`.
fn init_process_state() {
    init_before_main();
    #[cfg(unix)]
    exe::init();
}

/// What is done before `main` (a constructor in `exe`): the hand-over is
/// read and every inherited descriptor made close-on-exec, the link to the
/// previous generation taken, the state read, so that nothing the program
/// spawns before its first call into `endless` inherits any of them.
pub(crate) fn init_before_main() {
    STARTED_AT.get_or_init(SystemTime::now);
    #[cfg(unix)]
    {
        handover::init();
        static LINK: std::sync::Once = std::sync::Once::new();
        LINK.call_once(link::init);
        state::init();
    }
}

/// The state the previous generation handed over with
/// [`Server::handoff_state`], if this generation was started by a reload
/// and could read it; `None` otherwise (a first start, no callback, a
/// callback that failed or returned more than [`MAX_STATE`] bytes, a state
/// that could not be read: each logged).
///
/// Readable at start-up, before [`Server::run`] (it is read, and its file
/// closed, at the first call into `endless`), and as often as needed: it
/// stays in memory for the life of the process.
///
/// # Examples
///
/// ```
/// // A process that no reload started inherited nothing.
/// assert_eq!(endless::inherited_state(), None);
/// ```
pub fn inherited_state() -> Option<&'static [u8]> {
    init_process_state();
    #[cfg(unix)]
    {
        state::user()
    }
    // No reloads, so nothing is ever handed over.
    #[cfg(not(unix))]
    {
        None
    }
}

/// A TLS session ticketer for a configuration of your own
/// ([`Server::register_tls_config`], whose tickets are yours to set up),
/// with the keys [`Server::register_tls`] uses: they are handed to the
/// next generation at each reload, so a client resumes its session across
/// reloads. ChaCha20-Poly1305, keys rotated every 6 hours (the previous one
/// still decrypts, so a ticket lives at most 12 hours).
///
/// A resumed session skips the handshake's checks, the client certificate
/// among them, so a ticket is only accepted where the handshake that made
/// it would pass. Every ticket is bound to `scope`: a ticketer made with
/// another scope, in this generation or a later one, refuses it, and the
/// client does a full handshake. Name everything that decides who may get
/// in: whether client certificates are required, the CA they are checked
/// against (its bytes), your certificate chain. Change any of it and
/// reload, and sessions from before are not resumed. endless also binds
/// every ticket to the listener that issued it, so one configuration
/// registered on two listeners still resumes on each alone.
///
/// # Examples
///
/// ```no_run
/// # fn doc(mut config: endless::rustls::ServerConfig) -> std::io::Result<()> {
/// // Client certificates required, checked against the CA in this file.
/// let ca = std::fs::read("/etc/app/client-ca.pem")?;
/// config.ticketer = endless::tls_ticketer([&b"mtls, required"[..], &ca].concat());
/// # Ok(())
/// # }
/// ```
///
/// # Panics
///
/// Never; if the system's random number generator fails, the ticketer
/// returned issues no tickets (full handshakes, as with none).
#[cfg(feature = "tls")]
pub fn tls_ticketer(
    scope: impl AsRef<[u8]>,
) -> std::sync::Arc<dyn rustls::server::ProducesTickets> {
    init_process_state();
    match tickets::bound(tickets::scope(&[b"tls_ticketer", scope.as_ref()])) {
        Some(t) => t,
        None => std::sync::Arc::new(tickets::Disabled),
    }
}

/// Tells the generation that started this one (by a reload) why this one
/// cannot start, for a program that gives up on its own before
/// [`Server::run`] serves: say, a configuration error it prints and then
/// `exit(2)`s on. The reason reaches the old generation's log, the error of
/// its [`Handle::reload`] ([`Error::ChildExited`]) and its stats. `run`'s
/// own errors and panics are reported without it. Does nothing in a
/// generation that no reload started.
///
/// # Examples
///
/// ```no_run
/// let config = std::fs::read_to_string("app.toml").unwrap_or_else(|e| {
///     let reason = format!("cannot read app.toml: {e}");
///     endless::report_start_failure(&reason);
///     eprintln!("{reason}");
///     std::process::exit(2);
/// });
/// # let _ = config;
/// ```
pub fn report_start_failure(reason: impl std::fmt::Display) {
    init_process_state();
    #[cfg(unix)]
    link::report(link::Up::Failed(reason.to_string()));
    #[cfg(not(unix))]
    let _ = reason;
}

/// When this generation started: just before `main` (on Unix; elsewhere
/// at the first call into `endless`, normally [`Server::new`]), like Go
/// graceful's `StartedAt`.
pub fn started_at() -> SystemTime {
    init_process_state();
    *STARTED_AT.get().expect("initialised above")
}

/// This generation's number: 0 for a process started by a person or a
/// process manager, one more for each reload since. Kept across a
/// [`keep_pid`](Server::keep_pid) re-exec (which is a reload too).
///
/// # Examples
///
/// ```
/// // A process that no reload started is generation 0.
/// assert_eq!(endless::generation(), 0);
/// ```
pub fn generation() -> u64 {
    init_process_state();
    #[cfg(unix)]
    {
        handover::generation()
    }
    // No reloads, so every process is the first generation.
    #[cfg(not(unix))]
    {
        0
    }
}

/// Whether this process is a generation started by a reload (as opposed to
/// the first one, started by a person or a process manager).
///
/// Decided at the first call into `endless`, while the previous generation
/// is still waiting for this one, so it stays true after that one exits.
pub fn started_by_reload() -> bool {
    init_process_state();
    #[cfg(unix)]
    {
        matches!(
            handover::origin(),
            Some(handover::Origin::Parent { .. } | handover::Origin::SelfExec { .. })
        )
    }
    #[cfg(not(unix))]
    {
        false
    }
}
