//! The [`Server`] builder and the life of one generation.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};
use crate::handle::{Command, Handle};
use crate::handover;
use crate::handover::Origin;
use crate::listener::{self, LocalAddr};
use crate::pid_file::{remove_pid_file, write_pid_file};
use crate::restart::{self, Meaning, Outcome, Restarter};
use crate::serve::{Connections, Tls, IDLE_GRACE};
use crate::service::{self, BoxError, Launch};
use crate::signal::{SignalSet, Signals};
use crate::systemd;
#[cfg(feature = "tls")]
use crate::tls::TlsSource;
use crate::Signal;

const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
#[cfg(feature = "tls")]
const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server with one or more listeners that restarts itself without
/// dropping a connection.
///
/// Build it with [`Server::new`], add listeners with [`register`](Self::register),
/// adjust the settings, and [`run`](Self::run) it. Every setting is checked by
/// `run`, which returns the first problem as an [`Error`] naming it.
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
#[derive(Debug)]
pub struct Server {
    registrations: Vec<Registration>,
    stop_timeout: Duration,
    ready_timeout: Duration,
    header_read_timeout: Duration,
    #[cfg(feature = "tls")]
    tls_handshake_timeout: Duration,
    signals: SignalSet,
    pid_file: Option<PathBuf>,
    keep_pid: bool,
    commands: mpsc::UnboundedReceiver<Command>,
    handle: Handle,
    listening: watch::Sender<Option<Vec<LocalAddr>>>,
}

struct Registration {
    addr: String,
    svc: Box<dyn Launch>,
    #[cfg(feature = "tls")]
    tls: Option<TlsSource>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with no listeners and the default settings: stop timeout
    /// 20 s, ready timeout 60 s, reload on `SIGHUP` and `SIGUSR1`, stop on
    /// `SIGTERM` and `SIGINT`.
    pub fn new() -> Self {
        crate::init_process_state();
        let (tx, commands) = mpsc::unbounded_channel();
        let (listening, listening_rx) = watch::channel(None);
        Server {
            registrations: Vec::new(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            #[cfg(feature = "tls")]
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            signals: SignalSet::default(),
            pid_file: None,
            keep_pid: false,
            commands,
            handle: Handle {
                commands: tx,
                listening: listening_rx,
            },
            listening,
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
    /// [`hyper::service::service_fn`]; wrap a tower service (an axum `Router`)
    /// in [`TowerToHyperService`](crate::TowerToHyperService).
    pub fn register<S, B>(self, addr: &str, svc: S) -> Self
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.push(
            addr,
            service::register::<S, B>(svc),
            #[cfg(feature = "tls")]
            None,
        )
    }

    fn push(
        mut self,
        addr: &str,
        svc: Box<dyn Launch>,
        #[cfg(feature = "tls")] tls: Option<TlsSource>,
    ) -> Self {
        self.registrations.push(Registration {
            addr: addr.to_owned(),
            svc,
            #[cfg(feature = "tls")]
            tls,
        });
        self
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
    #[cfg(feature = "tls")]
    pub fn register_tls<S, B>(
        self,
        addr: &str,
        cert_pem: impl AsRef<std::path::Path>,
        key_pem: impl AsRef<std::path::Path>,
        svc: S,
    ) -> Self
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let source = TlsSource::Files {
            cert: cert_pem.as_ref().to_path_buf(),
            key: key_pem.as_ref().to_path_buf(),
        };
        self.push(addr, service::register::<S, B>(svc), Some(source))
    }

    /// Adds an HTTPS listener on `addr` with a rustls configuration you
    /// built (client authentication, a certificate resolver, …).
    ///
    /// It is used as it is: set its `alpn_protocols` to
    /// `[b"h2", b"http/1.1"]` to offer HTTP/2. Being built in code, it is
    /// rebuilt at every generation only if your code rebuilds it.
    #[cfg(feature = "tls")]
    pub fn register_tls_config<S, B>(
        self,
        addr: &str,
        config: std::sync::Arc<rustls::ServerConfig>,
        svc: S,
    ) -> Self
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.push(
            addr,
            service::register::<S, B>(svc),
            Some(TlsSource::Config(config)),
        )
    }

    /// How long a client may take to complete the TLS handshake (default
    /// 10 s). The handshake runs in the connection's own task, so a slow
    /// client never holds up accepting. Must not be zero.
    #[cfg(feature = "tls")]
    pub fn tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.tls_handshake_timeout = timeout;
        self
    }

    /// How long a drain may take before the connections left are cut off
    /// (default 20 s). Must not be zero.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// How long a new generation may take from spawn to serving before it is
    /// killed and the reload abandoned (default 60 s). Must not be zero.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a client may take to send a request's headers, including
    /// the first request of a connection (default 30 s), so that a silent
    /// client cannot hold a connection forever. Must not be zero.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The signals that start a reload (default `SIGHUP`, `SIGUSR1`).
    ///
    /// An empty set is allowed: reloads then come only from
    /// [`Handle::reload`]. `SIGTERM` cannot be one (it is how a new
    /// generation reports that it is ready).
    pub fn reload_signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Self {
        self.signals.reload = signals.into_iter().collect();
        self
    }

    /// The signals that start a graceful stop (default `SIGTERM`, `SIGINT`).
    /// A second stop signal during the drain cuts it short.
    pub fn stop_signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Self {
        self.signals.stop = signals.into_iter().collect();
        self
    }

    /// Keeps the serving generation's PID in the file at `path`.
    ///
    /// Each generation writes it atomically (a temporary file renamed over
    /// `path`) once it is serving, and a new generation does so before its
    /// predecessor exits, so the file always names a live, serving process.
    /// A final stop removes it (if it still holds our PID).
    pub fn pid_file(mut self, path: impl AsRef<Path>) -> Self {
        self.pid_file = Some(path.as_ref().to_path_buf());
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
    /// If the re-exec fails, this process serves again on its listeners and
    /// the temporary generation drains: the PID and the service survive, and
    /// [`Handle::reload`] returns [`Error::Exec`]. (On success the process
    /// image is replaced, so a `reload()` awaited in this process never
    /// returns; do not await it inside a request handler, whose request the
    /// drain waits for.)
    pub fn keep_pid(mut self, keep: bool) -> Self {
        self.keep_pid = keep;
        self
    }

    /// A handle to reload or stop this server from code, or to learn its
    /// addresses. Call it before [`run`](Self::run).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Serves until a stop, or until a new generation has taken over, and
    /// this generation's connections are drained.
    ///
    /// Returns `Ok(())` after a graceful stop or hand-over, including one
    /// whose stop timeout cut connections off; `Err` if the server cannot
    /// start (a bad setting, address or signal, a busy port, an unusable
    /// inherited socket).
    pub async fn run(self) -> Result<()> {
        let Server {
            registrations,
            stop_timeout,
            ready_timeout,
            header_read_timeout,
            #[cfg(feature = "tls")]
            tls_handshake_timeout,
            signals: signal_set,
            pid_file,
            keep_pid,
            mut commands,
            handle,
            listening,
        } = self;
        // Keep our own sender alive only as long as a user handle might be;
        // dropping it lets `commands.recv()` report "no handles left".
        drop(handle);

        // Validate what needs no system call, then install the signal
        // handlers before anything else can fail slowly or be interrupted.
        #[cfg(not(feature = "tls"))]
        let tls_handshake_timeout = Duration::from_secs(1);
        let specs = check(
            &registrations,
            &signal_set,
            [
                ("stop_timeout", stop_timeout),
                ("ready_timeout", ready_timeout),
                ("header_read_timeout", header_read_timeout),
                ("tls_handshake_timeout", tls_handshake_timeout),
            ],
        )?;
        let mut signals = Signals::install(&signal_set)?;

        // Certificates are read by every generation, before it binds or
        // adopts anything: one that cannot load them never takes over.
        #[cfg(feature = "tls")]
        let acceptors: Vec<Tls> = registrations
            .iter()
            .map(|r| r.tls.as_ref().map(TlsSource::acceptor).transpose())
            .collect::<Result<Vec<_>>>()?;
        #[cfg(not(feature = "tls"))]
        let acceptors: Vec<Tls> = registrations.iter().map(|_| None).collect();

        let started = Instant::now();
        let origin = handover::origin();
        // A temporary generation (keep_pid) serves quietly: the process
        // manager, the PID file and the socket files belong to the PID that
        // re-executes itself meanwhile.
        let quiet = handover::is_temporary();
        let leftovers = match origin {
            Some(Origin::SelfExec { .. }) => restart::current_children(),
            _ => Vec::new(),
        };
        let names: Vec<&str> = registrations.iter().map(|r| r.addr.as_str()).collect();
        let bound = listener::take_all(&names, &specs).await?;

        let mut addrs = Vec::with_capacity(bound.len());
        for b in &bound {
            let addr = b.listener.local_addr().map_err(|source| Error::Io {
                context: format!("cannot read the local address of {}", b.name),
                source,
            })?;
            let tls = acceptors[b.index].is_some();
            info!(addr = %addr, name = %b.name, tls, "listening");
            addrs.push(addr);
        }
        // Starts (or, after a failed in-place re-exec, restarts) accepting.
        let serve = || {
            let conns = Connections::new(
                header_read_timeout,
                IDLE_GRACE.min(stop_timeout),
                tls_handshake_timeout,
            );
            conns.spawn_sweeper();
            for b in &bound {
                let (svc, tls) = (&registrations[b.index].svc, &acceptors[b.index]);
                svc.launch(&conns, b.name.clone(), b.listener.clone(), tls.clone());
            }
            conns
        };
        let mut conns = serve();
        let socket_files: Vec<listener::SocketFile> = bound
            .iter()
            .filter_map(|b| b.listener.socket_file().cloned())
            .collect();
        let handover_names: Vec<String> = bound.iter().map(|b| b.handover_name()).collect();
        // The PID file first: whoever learns that we serve (from `listening`,
        // or our parent from our signal) finds the file already current.
        if let (Some(path), false) = (&pid_file, quiet) {
            write_pid_file(path)?;
        }
        let _ = listening.send(Some(addrs));

        announce(origin, quiet, started, leftovers);

        let mut restarter =
            Restarter::new(signal_set.clone(), ready_timeout).keep_pid(keep_pid, quiet);
        let outcome = loop {
            let fds: Vec<(&str, RawFd)> = bound
                .iter()
                .zip(&handover_names)
                .map(|(b, n)| (n.as_str(), b.listener.raw_fd()))
                .collect();
            match restarter.serve(&mut signals, &mut commands, &fds).await {
                Outcome::HandedOver { pid, waiter } if keep_pid && !quiet => {
                    // The temporary generation serves; drain ours, keeping the
                    // listeners, then become the new binary under our PID.
                    conns.start_drain();
                    info!(connections = conns.active(), timeout = ?stop_timeout, "draining before re-executing in place");
                    let temporary = nix::unistd::Pid::from_raw(pid as i32);
                    if drain(
                        &conns,
                        stop_timeout,
                        &mut signals,
                        &restarter,
                        &mut commands,
                    )
                    .await
                        == Drained::StopRequested
                    {
                        info!(pid, "stop requested; stopping the temporary generation too");
                        let _ =
                            nix::sys::signal::kill(temporary, nix::sys::signal::Signal::SIGTERM);
                        if let Some(w) = waiter {
                            let _ = w.send(Err(Error::Draining));
                        }
                        break Outcome::Stop;
                    }
                    let exe = restart::Exe::get();
                    info!(path = %exe.path().display(), "re-executing in place");
                    let source = handover::exec_in_place(
                        exe.path(),
                        exe.args(),
                        &fds,
                        signal_set.handled(),
                        Some(temporary),
                    );
                    // Still here: the exec failed. Serve again and send the
                    // temporary generation away; the PID and service survive.
                    error!(path = %exe.path().display(), cause = %source, "re-executing in place failed; serving again");
                    conns = serve();
                    systemd::ready();
                    let _ = nix::sys::signal::kill(temporary, nix::sys::signal::Signal::SIGTERM);
                    if let Some(w) = waiter {
                        let _ = w.send(Err(Error::Exec {
                            path: exe.path().to_path_buf(),
                            source,
                        }));
                    }
                }
                Outcome::HandedOver { pid, waiter } => {
                    if let Some(w) = waiter {
                        let _ = w.send(Ok(()));
                    }
                    break Outcome::HandedOver { pid, waiter: None };
                }
                Outcome::Stop => break Outcome::Stop,
            }
        };
        let stop = matches!(outcome, Outcome::Stop);
        if stop && !quiet {
            systemd::stopping();
        }

        // Stop accepting: the accept loops drop their listeners, and we drop
        // ours. After a hand-over the sockets live on in the new generation.
        conns.start_drain();
        drop(bound);
        info!(connections = conns.active(), ?outcome, timeout = ?stop_timeout, "draining");
        if drain(
            &conns,
            stop_timeout,
            &mut signals,
            &restarter,
            &mut commands,
        )
        .await
            == Drained::StopRequested
        {
            warn!(
                connections = conns.active(),
                "second stop signal; cutting off the connections left"
            );
            conns.cut_off().await;
        }
        if stop && !quiet {
            final_cleanup(&socket_files, pid_file.as_deref());
        }
        Ok(())
    }
}

/// Checks every setting that needs no system call; returns the parsed
/// addresses.
fn check(
    registrations: &[Registration],
    signals: &SignalSet,
    timeouts: [(&'static str, Duration); 4],
) -> Result<Vec<listener::BindSpec>> {
    signals.validate()?;
    for (setting, value) in timeouts {
        if value.is_zero() {
            return Err(Error::Config {
                setting,
                reason: "must be greater than zero".to_owned(),
            });
        }
    }
    if registrations.is_empty() {
        return Err(Error::Config {
            setting: "listeners",
            reason: "no address registered".to_owned(),
        });
    }
    registrations
        .iter()
        .map(|r| listener::parse(&r.addr))
        .collect()
}

/// Tells whoever waits for it that this generation serves: the previous
/// generation (by signal), the service manager, and, after an in-place
/// re-exec, the temporary generation (which then drains).
fn announce(
    origin: Option<Origin>,
    quiet: bool,
    started: Instant,
    leftovers: Vec<nix::unistd::Pid>,
) {
    match origin {
        Some(Origin::Parent(parent)) => {
            // The service manager learns the new main PID before the old one
            // exits, or it would take that exit for the service's.
            if !quiet {
                systemd::ready_as_main_pid();
            }
            let pid = parent.as_raw();
            match handover::notify_parent_ready(parent) {
                Ok(true) => {
                    info!(parent = pid, elapsed = ?started.elapsed(), "serving; told the previous generation")
                }
                Ok(false) => info!(parent = pid, "serving; the previous generation is gone"),
                Err(e) => {
                    warn!(parent = pid, cause = %e, "serving; could not signal the previous generation")
                }
            }
        }
        Some(Origin::SelfExec { temporary }) => {
            systemd::ready_as_main_pid();
            info!(elapsed = ?started.elapsed(), "serving again under the same PID");
            let mut leftovers = leftovers;
            if let Some(t) = temporary {
                // Our child (we have not reaped it, so the PID is still its):
                // a stop from its parent makes it drain and exit.
                info!(pid = t.as_raw(), "stopping the temporary generation");
                let _ = nix::sys::signal::kill(t, nix::sys::signal::Signal::SIGTERM);
                // Known from the hand-over even where /proc cannot list it.
                if !leftovers.contains(&t) {
                    leftovers.push(t);
                }
            }
            restart::reap_leftovers(leftovers);
        }
        Some(Origin::Systemd) | None => {
            info!(pid = std::process::id(), "serving");
            systemd::ready();
        }
    }
}

/// After the final stop nothing serves after us: our socket files and the
/// PID file go. (A generation that handed over leaves both alone: they are
/// its successor's now.)
fn final_cleanup(socket_files: &[listener::SocketFile], pid_file: Option<&Path>) {
    for file in socket_files {
        file.unlink_if_ours();
    }
    if let Some(path) = pid_file {
        remove_pid_file(path);
    }
}

/// How a drain ended.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// Every connection closed, or the stop timeout cut off the rest.
    Done,
    /// A stop signal arrived first; the connections are still draining.
    StopRequested,
}

/// Waits for `conns` (already draining) to close, cutting off what is left
/// at `timeout`, while answering signals and handles: reloads are refused,
/// and a stop signal ends the wait early.
async fn drain(
    conns: &Connections,
    timeout: Duration,
    signals: &mut Signals,
    restarter: &Restarter,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Drained {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut commands_open = true;
    loop {
        tokio::select! {
            _ = conns.drained() => {
                info!("drained; all connections closed");
                return Drained::Done;
            }
            _ = &mut deadline => {
                warn!(connections = conns.active(), "stop timeout reached; cutting off the connections left");
                conns.cut_off().await;
                return Drained::Done;
            }
            r = signals.recv() => match restarter.classify(r, None) {
                Meaning::Stop(signal) => {
                    info!(%signal, "stop signal while draining");
                    return Drained::StopRequested;
                }
                Meaning::Reload(signal) => info!(%signal, "draining; reload ignored"),
                other => debug!(?other, "draining; signal ignored"),
            },
            c = commands.recv(), if commands_open => match c {
                Some(Command::Reload(tx)) => { let _ = tx.send(Err(Error::Draining)); }
                Some(Command::Shutdown) => {}
                None => commands_open = false,
            },
        }
    }
}
