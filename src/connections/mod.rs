//! Accept loops, connection tasks and the drain.
//!
//! The drain does not know how a restart happens: it is told to start, and it
//! reports when every connection is gone.
//!
//! What bounds a connection while serving (one sweep over the connections
//! now and then, see [`Connections::spawn_sweeper`], rather than a timer
//! per request):
//! - HTTP/1: a whole request head within the header read timeout, counted
//!   from its accept or from the end of its last response, that is once
//!   nothing of that response is left to send (a slow reader of a large
//!   body is busy, not idle: writes count as activity, as reads do while
//!   an upload goes on after its response, up to the end of its body);
//! - HTTP/2: no stream for the HTTP/2 idle timeout, then GOAWAY; a client
//!   that has not closed the connection an idle grace later (it never
//!   answered the PING sent with the GOAWAY, say) is cut;
//! - TCP keepalive on every accepted socket (set on the listeners), for
//!   peers that vanished;
//! - a connection cap, and file descriptors: the oldest idle connections
//!   make room for new clients (see [`Sockets::make_room`]).
//!
//! How a drain treats each connection:
//! - accepting stops at once, and each accept loop drops its listener;
//! - HTTP/1: a response written after the drain started carries
//!   `Connection: close`, so a busy keep-alive client learns of the drain from
//!   its own next response and reconnects (to the new generation) without an
//!   error. Closing an idle connection at once would race with a request the
//!   client is sending at that moment, so a connection is only closed
//!   - once it has had [`IDLE_GRACE`] to send something;
//!   - when a new generation serves (a reload, not a stop), once its client
//!     has been quiet for [`REVISIT`]: a client that used its connection
//!     moments ago is likely to use it again, and is then answered, with
//!     `Connection: close`, rather than met by a closed connection;
//!   - not while bytes of a request are still arriving (read since its last
//!     request head, or waiting in the kernel), up to the wait for quiet
//!     clients (or the header read timeout, if shorter) from the start of
//!     the drain: a head dribbled a byte at a time does not hold the drain
//!     until the stop timeout;
//!
//!   responses that hand the connection over (101, 2xx to CONNECT) keep
//!   the handler's `Connection` header;
//! - TLS: a connection still in its handshake gets [`IDLE_GRACE`] to finish
//!   it, not the whole handshake timeout;
//! - HTTP/2: GOAWAY at once; streams in flight finish; a connection left
//!   with no stream is cut an idle grace after (hyper would wait for ever
//!   for the answer to the PING it sends with the GOAWAY);
//! - at the deadline, whatever is left (long streams, upgraded connections
//!   such as WebSockets, silent clients) is cut: tasks are dropped and every
//!   socket still open is shut down.

mod conn_signal;
mod counted_io;
mod request;

use std::future::Future;
use std::io;
#[cfg(unix)]
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, trace, warn};

use crate::conn_info::{ConnInfo, Inherit};
#[cfg(not(unix))]
use crate::listener::RawFd;
use crate::listener::{is_connection_error, Listener, LocalAddr, Stream};
use crate::service::{BoxError, HttpBody, HttpService};

use conn_signal::{ConnSignal, Level, Seen};
use counted_io::{Plain, Tracked};
use request::ConnService;

/// How long an HTTP/1 connection may stay quiet after the drain starts before
/// it is closed. Busy clients are told by `Connection: close` well before.
const IDLE_GRACE: Duration = Duration::from_millis(1000);

/// How long after its last request (as the sweeper saw it) an HTTP/1
/// connection's client may still come back with another one: the drain
/// does not close an idle connection before that. Busy clients with many
/// connections (load generators, proxies' pools) reuse each one less often
/// than [`IDLE_GRACE`]: at 8,000 connections the benchmark's did so every
/// 1 to 1.5 s, and closing their connections under them failed hundreds of
/// requests per reload.
const REVISIT: Duration = Duration::from_secs(5);

/// The longest duration this module hands to hyper or to a timer. hyper adds
/// its timeouts to `Instant::now()`, which panics on overflow (with
/// `Duration::MAX`, say); a year is "never" for a connection.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `d`, or [`LONGEST`] if it is longer: safe to add to an `Instant`.
fn bounded(d: Duration) -> Duration {
    d.min(LONGEST)
}

/// After a hand-over, how far apart the open connections are told of the
/// drain (HTTP/1: `Connection: close` on their next response, and the
/// wait for quiet idle ones; HTTP/2: GOAWAY), so that their clients do not
/// all reconnect to the new generation in the same millisecond: 64
/// connections are told over 19 ms, 1,000 over 300 ms, 3,334 and more over
/// the cap of [`MAX_RECONNECT_SPREAD`]. A burst of reconnections is work
/// for both generations and the clients at once: measured with 1,000
/// keep-alive connections and 20 reloads, the lowest 100 ms of throughput
/// around a reload was 53% of the steady rate (median) when all were told
/// at once, 73% at 100 µs apart, 90% at 300 µs (89% without reloads).
const RECONNECT_SPACING: Duration = Duration::from_micros(300);

/// The longest the telling may be spread over (and never more than a
/// quarter of the stop timeout).
const MAX_RECONNECT_SPREAD: Duration = Duration::from_secs(1);

/// How long an HTTP/2 client may take to answer a keep-alive PING (hyper's
/// default), when those are on.
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// TCP keepalive probes before a silent peer is dropped (where the system
/// lets us say).
const TCP_KEEPALIVE_PROBES: u32 = 6;

/// Linux's largest TCP keepalive idle time and probe interval, in seconds.
const TCP_KEEPALIVE_MAX: Duration = Duration::from_secs(32_767);

/// Bytes an HTTP/2 connection must have written since the last sweep to
/// count as sending: more than its answers to a client's PINGs (17 bytes
/// each) and window updates, less than a slow reader takes.
const HTTP2_ACTIVE_BYTES: u64 = 1024;

/// How many of the oldest idle connections go when accepting fails for lack
/// of file descriptors: a few more than the one the next client needs, so
/// that the handlers' own files and sockets find some too.
const FD_ROOM: usize = 4;

/// What bounds the connections of a generation besides the header read
/// timeout: see the `Server` settings of the same names.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) http2_idle_timeout: Duration,
    pub(crate) http2_keep_alive_interval: Option<Duration>,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) max_connections: Option<usize>,
}

impl Limits {
    /// Keepalive that probes every `idle / 6` (at least 1 s) after `idle`.
    fn tcp_keepalive(&self) -> Option<socket2::TcpKeepalive> {
        let idle = self
            .tcp_keepalive?
            .clamp(Duration::from_secs(1), TCP_KEEPALIVE_MAX);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval((idle / TCP_KEEPALIVE_PROBES).max(Duration::from_secs(1)));
        #[cfg(any(
            target_os = "linux",
            target_os = "android",
            target_os = "freebsd",
            target_os = "macos"
        ))]
        let keepalive = keepalive.with_retries(TCP_KEEPALIVE_PROBES);
        Some(keepalive)
    }
}

/// The connections of one generation.
#[derive(Debug)]
pub(crate) struct Connections {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    /// Set when the drain starts; watched by the accept loops only
    /// (connections are told through their own [`ConnSignal`]).
    stop_accepting: Arc<StopAccepting>,
    /// Stops the sweeper when the generation's connections are dropped.
    stop_sweeping: CancellationToken,
}

impl Drop for Connections {
    fn drop(&mut self) {
        self.stop_sweeping.cancel();
    }
}

/// Spawns tasks the drain of a generation waits for.
#[derive(Debug, Clone)]
pub(crate) struct Spawner(TaskTracker);

impl Spawner {
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.0.spawn(task);
    }
}

/// The builder's settings that the connections of a generation follow.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) header_read: Duration,
    pub(crate) stop: Duration,
    pub(crate) tls_handshake: Duration,
    pub(crate) limits: Limits,
}

/// A listener's TLS acceptor, if it serves HTTPS (never, without the `tls`
/// feature: the acceptor type then has no values).
pub(crate) type Tls = Option<crate::tls::Acceptor>;

/// What every connection of a generation shares. One `Arc` clone per
/// connection; nothing in here is written per request except by atomics.
#[derive(Debug)]
struct Shared {
    builder: auto::Builder<Inherit>,
    tracker: TaskTracker,
    sockets: Arc<Sockets>,
    idle_grace: Duration,
    /// How long a connection may take to send a whole request head, counted
    /// from its accept or the end of its previous response (enforced by the
    /// sweeper, see [`Connections::spawn_sweeper`]).
    header_read_timeout: Duration,
    tls_handshake_timeout: Duration,
    /// How long an HTTP/2 connection may go without a stream before its
    /// GOAWAY (enforced by the sweeper too).
    http2_idle_timeout: Duration,
    /// Set on every TCP listener, for the connections it accepts.
    tcp_keepalive: Option<socket2::TcpKeepalive>,
    /// The connection cap; `usize::MAX` for none.
    max_connections: usize,
    /// Whether the drain hands the listeners' clients to a successor (set
    /// before the drain starts).
    successor: AtomicBool,
    /// [`REVISIT`], bounded by the stop timeout.
    revisit: Duration,
    /// [`MAX_RECONNECT_SPREAD`], bounded by the stop timeout.
    max_reconnect_spread: Duration,
}

/// What the connections of one listener share: one `Arc` clone per
/// connection (each clone is an atomic on a line shared across cores).
struct Listening<S> {
    svc: S,
    /// The registered address, and where the listener is bound: what every
    /// connection's [`ConnInfo`] starts from.
    name: Arc<str>,
    local: LocalAddr,
    tls: Tls,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Listening<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Connections {
    /// The connections of a generation run with these timeouts: the idle grace
    /// and the wait for quiet clients ([`REVISIT`]) bounded by its stop
    /// timeout, well within it, so that a drain ends by itself.
    pub(crate) fn for_settings(t: &Settings) -> Self {
        Connections::new(
            t.header_read,
            IDLE_GRACE.min(t.stop),
            REVISIT.min(t.stop / 2),
            MAX_RECONNECT_SPREAD.min(t.stop / 4),
            t.tls_handshake,
            t.limits.clone(),
        )
    }

    /// `revisit`: see [`REVISIT`]; `max_reconnect_spread`: see
    /// [`MAX_RECONNECT_SPREAD`].
    fn new(
        header_read_timeout: Duration,
        idle_grace: Duration,
        revisit: Duration,
        max_reconnect_spread: Duration,
        tls_handshake_timeout: Duration,
        limits: Limits,
    ) -> Self {
        // Whatever the caller checked, nothing here may overflow an Instant.
        let header_read_timeout = bounded(header_read_timeout);
        let idle_grace = bounded(idle_grace);
        let revisit = bounded(revisit);
        let tls_handshake_timeout = bounded(tls_handshake_timeout);
        let mut builder = auto::Builder::new(Inherit);
        // hyper's own header read timeout allocates and registers a timer
        // for every request head (measured: 11% more instructions per
        // keep-alive request); the sweeper enforces ours instead.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None);
        builder.http2().timer(TokioTimer::new());
        if let Some(interval) = limits.http2_keep_alive_interval {
            builder
                .http2()
                .keep_alive_interval(bounded(interval).max(Duration::from_millis(1)))
                .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT);
        }
        let tracker = TaskTracker::new();
        Connections {
            shared: Arc::new(Shared {
                builder,
                tracker: tracker.clone(),
                sockets: Arc::default(),
                idle_grace,
                header_read_timeout,
                tls_handshake_timeout,
                http2_idle_timeout: bounded(limits.http2_idle_timeout),
                tcp_keepalive: limits.tcp_keepalive(),
                max_connections: limits.max_connections.unwrap_or(usize::MAX).max(1),
                successor: AtomicBool::new(false),
                revisit,
                max_reconnect_spread: bounded(max_reconnect_spread),
            }),
            tracker,
            stop_accepting: Arc::default(),
            stop_sweeping: CancellationToken::new(),
        }
    }

    /// Starts the task that enforces the header read timeout: it closes
    /// connections that have not sent a whole request head within the
    /// timeout of being accepted, or (HTTP/1 keep-alive) of the end of
    /// their previous response: silent clients, and slow ones (slowloris).
    /// A request in progress (its handler running, its response being
    /// written, to the last byte hyper and rustls hold) and an upgraded
    /// connection are not its business. The same sweeps send GOAWAY to
    /// HTTP/2 connections that have had no stream for the HTTP/2 idle
    /// timeout, and cut those still open, idle, an idle grace after
    /// theirs.
    ///
    /// hyper has a header read timeout of its own, but it allocates and
    /// registers a timer for every request head (about 11% of the
    /// instructions of a keep-alive request), and it starts only once a
    /// connection knows its protocol, which takes the client's first bytes.
    /// One sweep over the open connections now and then costs far less. The
    /// sweeps come every quarter of the timeout, or of the drain's wait for
    /// quiet clients ([`REVISIT`]) or of the HTTP/2 idle timeout if either
    /// is shorter, between 10 ms and 1 s apart, so a connection is closed
    /// up to two of them after the timeout, never before. While the generation has no connection open, the sweeper
    /// sleeps: an idle server wakes up for nothing.
    pub(crate) fn spawn_sweeper(&self) {
        let shared = self.shared.clone();
        let stop = self.stop_sweeping.clone();
        let timeouts = Timeouts {
            http1: shared.header_read_timeout,
            http2: shared.http2_idle_timeout,
            goaway: shared.idle_grace,
        };
        // Often enough for the drain's view of quiet clients too (`REVISIT`).
        let every = (timeouts.http1.min(timeouts.http2).min(shared.revisit) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stopped = stop.cancelled();
            tokio::pin!(stopped);
            loop {
                if shared.sockets.fall_asleep() {
                    // Nothing to sweep: sleep until a connection opens (a
                    // permit stored since the check counts), then sweep a
                    // whole interval later.
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = shared.sockets.opened.notified() => {}
                    }
                    tick.reset();
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tick.tick() => {}
                }
                let swept = shared.sockets.cut_idle(&timeouts);
                if swept.cut > 0 {
                    debug!(
                        connections = swept.cut,
                        timeout = ?timeouts.http1,
                        "closed connections that sent no request head in time"
                    );
                }
                if swept.goaway > 0 {
                    debug!(
                        connections = swept.goaway,
                        timeout = ?timeouts.http2,
                        "sent GOAWAY to idle HTTP/2 connections"
                    );
                }
                if swept.unanswered > 0 {
                    debug!(
                        connections = swept.unanswered,
                        grace = ?timeouts.goaway,
                        "closed idle HTTP/2 connections left open after their GOAWAY"
                    );
                }
            }
        });
    }

    /// Accepts on `listener` until the drain starts, serving each connection
    /// with `svc`. The task holds the listener; it is dropped, and with it
    /// this generation's copy of the socket, when accepting stops.
    pub(crate) fn spawn_accept_loop<S, B>(
        &self,
        name: String,
        listener: Arc<Listener>,
        svc: S,
        tls: Tls,
    ) where
        S: HttpService<B>,
        B: HttpBody,
    {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| LocalAddr::Unix("(unknown)".into()));
        if let Some(keepalive) = &self.shared.tcp_keepalive {
            if let Err(e) = listener.set_tcp_keepalive(keepalive) {
                warn!(addr = %name, cause = %e, "cannot turn TCP keepalive on");
            }
        }
        let listening = Arc::new(Listening {
            svc,
            name: Arc::from(name.as_str()),
            local,
            tls,
            shared: self.shared.clone(),
        });
        let task = accept_loop(name, listener, listening, self.stop_accepting.clone());
        // The accept loop is tracked like a connection: the drain is not done
        // until it has stopped, so a connection it accepted just as the drain
        // started is counted before the drain can see zero and let the
        // process exit (which would reset that connection).
        self.tracker.spawn(task);
    }

    /// Spawns tasks the drain waits for, as it waits for connections.
    pub(crate) fn spawner(&self) -> Spawner {
        Spawner(self.tracker.clone())
    }

    /// Runs `accept`, the accept loop of another protocol (the control
    /// socket), until accepting stops; tracked like an accept loop.
    pub(crate) fn spawn_other_accept_loop<F>(&self, accept: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop_accepting.clone();
        self.tracker.spawn(async move {
            let stopped = stop.wait();
            tokio::select! {
                _ = stopped => {}
                _ = accept => {}
            }
        });
    }

    /// Counts the connections open now, for whoever asks later (the
    /// handles' stats).
    pub(crate) fn counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let sockets = self.shared.sockets.clone();
        move || sockets.lock().open.len()
    }

    /// Connections open now, upgraded ones included.
    pub(crate) fn active(&self) -> usize {
        self.shared.sockets.lock().open.len()
    }

    /// Stops accepting and starts closing connections.
    /// `successor`: a new generation serves the same listeners, so an
    /// idle client is better answered on its next request (and told to
    /// reconnect) than closed under it (see [`REVISIT`]).
    pub(crate) fn start_drain(&self, successor: bool) {
        self.shared.successor.store(successor, Ordering::Relaxed);
        // After a stop there is nobody to reconnect to: everyone at once.
        let spacing = if successor {
            debug!(revisit = ?self.shared.revisit, "idle connections are kept until their client has been quiet this long");
            RECONNECT_SPACING
        } else {
            Duration::ZERO
        };
        self.stop_accepting.stop();
        self.shared.sockets.raise_spread(
            Level::Draining,
            spacing,
            self.shared.max_reconnect_spread,
        );
        self.tracker.close();
    }

    /// From now on, idle connections are closed after the idle grace only
    /// (see [`Connections::start_drain`]): nobody may serve them next.
    pub(crate) fn forget_successor(&self) {
        self.shared.successor.store(false, Ordering::Relaxed);
    }

    /// Resolves when every connection is closed (after `start_drain`).
    pub(crate) async fn drained(&self) {
        self.tracker.wait().await
    }

    /// Cuts every connection that is left and waits (briefly) for them to go.
    pub(crate) async fn cut_off(&self) {
        self.shared.sockets.raise(Level::Cut);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
    }
}

async fn accept_loop<S, B>(
    name: String,
    listener: Arc<Listener>,
    listening: Arc<Listening<S>>,
    stop: Arc<StopAccepting>,
) where
    S: HttpService<B>,
    B: HttpBody,
{
    const MIN_BACKOFF: Duration = Duration::from_millis(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let shared = &listening.shared;
    let mut backoff = MIN_BACKOFF;
    // One wait for the whole loop, polled at every accept.
    let stopped = stop.wait();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = MIN_BACKOFF;
                let info = ConnInfo::new(listening.name.clone(), listening.local.clone(), peer);
                let (io, signal, spare) =
                    shared
                        .sockets
                        .track(stream, shared.tracker.token(), listening.tls.is_some());
                // Over the cap: the oldest idle connection goes for this one,
                // or, if every other one is busy, this one waits (and the
                // clients after it wait in the listen queue) until one is
                // done. One relaxed load per accept below the cap.
                let mut draining = false;
                while shared.sockets.over(shared.max_connections) {
                    if shared.sockets.make_room(1, Some(spare)) == 0 {
                        trace!(addr = %name, "at the connection cap, every connection busy; waiting");
                    }
                    // Until a connection has closed, or 50 ms: one that was
                    // cut and is still open then (its socket held by an
                    // upgrade's task, say) is taken as gone, and another
                    // goes at the next turn.
                    tokio::select! {
                        biased;
                        _ = &mut stopped => {
                            // Accepted all the same: the drain serves it
                            // like the others.
                            draining = true;
                            break;
                        }
                        _ = shared.sockets.room() => {}
                    }
                }
                tokio::spawn(connection(io, signal, info, listening.clone()));
                if draining {
                    break;
                }
            }
            Err(e) if is_connection_error(&e) => {
                trace!(addr = %name, cause = %e, "accept: skipped")
            }
            // Out of file descriptors: the oldest idle connections go, so
            // that new clients are served rather than left unanswered.
            Err(e) if is_out_of_descriptors(&e) && shared.sockets.make_room(FD_ROOM, None) > 0 => {
                warn!(addr = %name, cause = %e, "accept failed; closing the oldest idle connections to make room");
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    _ = shared.sockets.room() => {}
                }
            }
            Err(e) => {
                // EMFILE and friends: retrying at once would spin the CPU.
                error!(addr = %name, cause = %e, backoff = ?backoff, "accept failed; backing off");
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    debug!(addr = %name, "stopped accepting");
}

/// Whether accepting failed for lack of file descriptors (the process's,
/// or the system's).
fn is_out_of_descriptors(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(nix::libc::EMFILE | nix::libc::ENFILE)
        )
    }
    #[cfg(not(unix))]
    {
        // WSAEMFILE
        e.raw_os_error() == Some(10024)
    }
}

/// Raises `signals` to `level` in up to 20 steps spread over `window`; at
/// once if the window is under 2 ms or there is only one. The steps run in
/// a task of their own.
fn raise_over(signals: Vec<Arc<ConnSignal>>, level: Level, window: Duration) {
    let steps = signals.len().min(20);
    if steps <= 1 || window < Duration::from_millis(2) {
        for signal in &signals {
            signal.raise(level);
        }
        return;
    }
    let per_step = signals.len().div_ceil(steps);
    let pause = window / steps as u32;
    debug!(
        connections = signals.len(),
        ?window,
        "telling the connections of the drain, spread out"
    );
    tokio::spawn(async move {
        let mut chunks = signals.chunks(per_step).peekable();
        while let Some(chunk) = chunks.next() {
            for signal in chunk {
                signal.raise(level);
            }
            if chunks.peek().is_some() {
                tokio::time::sleep(pause).await;
            }
        }
    });
}

/// Tells the accept loops to stop. A loop polls its wait at every wake-up,
/// that is for every connection it accepts: here that is one atomic load,
/// where a `CancellationToken`'s wait takes a mutex at each poll (measured:
/// about 170 instructions per connection).
#[derive(Debug, Default)]
struct StopAccepting {
    stopped: AtomicBool,
    /// One waker slot per accept loop.
    loops: Mutex<Vec<Arc<AtomicWaker>>>,
}

impl StopAccepting {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let loops = self.loops.lock().unwrap_or_else(|e| e.into_inner());
        for waker in loops.iter() {
            waker.wake();
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Resolves once [`stop`](Self::stop) has been called. For one task
    /// (see [`until`]).
    fn wait(&self) -> impl Future<Output = ()> + '_ {
        let slot = Arc::new(AtomicWaker::new());
        self.loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
        until(slot, move || self.is_stopped())
    }
}

/// Resolves once `done()` holds; whoever makes it hold wakes `slot` after.
/// Only one task waits, so its waker is registered once, at the first poll
/// (a task's waker stays valid for the task's life): each later poll, one
/// per wake-up of the task, is `done()` alone. A wake takes the registered
/// waker, so a task must not keep two of these on one slot alive at once.
fn until<'a>(
    slot: impl std::ops::Deref<Target = AtomicWaker> + 'a,
    done: impl Fn() -> bool + 'a,
) -> impl Future<Output = ()> + 'a {
    let mut registered = false;
    std::future::poll_fn(move |cx| {
        if done() {
            return Poll::Ready(());
        }
        if !registered {
            slot.register(cx.waker());
            registered = true;
            if done() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
}

/// One accepted connection, from the TLS handshake (if any) to its end.
///
/// Neither an `async fn` nor an `async` block: those keep their arguments
/// in the future for its whole life, even once moved on (an `async fn`
/// keeps them twice: rust-lang/rust#62958), and tokio copies a
/// connection's whole future three times as it spawns it. For the same
/// reason [`serve_connection`] returns an `async` block rather than being
/// an `async fn`. (Measured: the future went from 1,968 to 1,752 bytes,
/// against 1,560 for a plain hyper-util connection's.)
fn connection<S, B>(
    io: Tracked<Stream>,
    signal: Arc<ConnSignal>,
    info: ConnInfo,
    listening: Arc<Listening<S>>,
) -> impl Future<Output = ()>
where
    S: HttpService<B>,
    B: HttpBody,
{
    let fd = io.raw_fd();
    if let Some(acceptor) = listening.tls.clone() {
        // Boxed: rustls's state would otherwise make every connection's
        // future, plain ones included, several KiB larger.
        return Either::Left(Box::pin(tls_connection(
            acceptor, io, fd, signal, info, listening,
        )));
    }
    // The info is the task's, for handlers to find (`ConnInfo::current`).
    Either::Right(info.scope(serve_connection(io, fd, signal, listening)))
}

async fn tls_connection<S, B>(
    acceptor: crate::tls::Acceptor,
    io: Tracked<Stream>,
    fd: RawFd,
    signal: Arc<ConnSignal>,
    info: ConnInfo,
    listening: Arc<Listening<S>>,
) where
    S: HttpService<B>,
    B: HttpBody,
{
    // In the connection's task, never the accept loop: a slow or silent
    // client delays nobody but itself.
    let shared = &listening.shared;
    let grace = shared.idle_grace;
    // Once the drain starts, a handshake gets no more than the idle grace to
    // finish: a client that never completes it must not keep this generation
    // alive until the handshake timeout.
    // One signal future alive at a time: each registers the task's waker
    // only at its first poll, and a wake-up takes the registered waker.
    let handshake = crate::tls::handshake(&acceptor, io, shared.tls_handshake_timeout);
    tokio::pin!(handshake);
    let stream = tokio::select! {
        s = &mut handshake => s,
        _ = signal.reached(Level::Draining) => {
            if signal.level() >= Level::Cut {
                return;
            }
            tokio::select! {
                s = &mut handshake => s,
                _ = signal.reached(Level::Cut) => return,
                _ = tokio::time::sleep(grace) => {
                    debug!(?grace, "TLS handshake unfinished at the end of the drain's idle grace; closing");
                    return;
                }
            }
        }
    };
    if let Some(stream) = stream {
        let info = crate::tls::attach_info(&info, &stream);
        let stream = Plain {
            signal: signal.clone(),
            io: stream,
        };
        info.scope(serve_connection(stream, fd, signal, listening))
            .await;
    }
}

// Not an `async fn`: see `connection`.
#[allow(clippy::manual_async_fn)]
fn serve_connection<IO, S, B>(
    io: IO,
    fd: RawFd,
    signal: Arc<ConnSignal>,
    listening: Arc<Listening<S>>,
) -> impl Future<Output = ()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    async move {
        let svc = ConnService {
            svc: listening.svc.clone(),
            signal: signal.clone(),
        };
        let shared = &listening.shared;
        let conn = shared
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);

        // A connection that sends no request in time is cut by the sweeper
        // (`Connections::spawn_sweeper`), through its signal.
        // Polled on every wake-up of the connection, so one signal future, not
        // two, and no random branch order (`biased`).
        tokio::select! {
            biased;
            r = conn.as_mut() => return log_end(r),
            _ = signal.reached(Level::Draining) => {}
        }
        if signal.level() >= Level::Cut {
            return;
        }
        // Draining. HTTP/1: let the client learn of it from a response
        // (`Connection: close`) for up to the idle grace, then close. hyper
        // would close a connection whose next request is half received as if
        // it were idle, so while bytes of one keep arriving, it gets another
        // grace (the deadline cuts it in any case).
        if !signal.seen().contains(Seen::HTTP2) {
            let mut graces = 0u32;
            let mut wait = shared.idle_grace;
            // A request head still arriving gets more graces, but only up to
            // the header read timeout counted from the start of the drain,
            // and no longer than the wait for quiet clients (or one grace,
            // if longer): a client that dribbles a head a byte at a time
            // must not hold the drain until the stop timeout.
            // Milliseconds waited since the drain started (timers never fire
            // early, so never more than the truth): a `u32` beside `graces`,
            // not an `Instant`, to keep every connection's future small.
            let mut waited_ms = 0u32;
            loop {
                tokio::select! {
                    r = conn.as_mut() => return log_end(r),
                    _ = signal.reached(Level::Cut) => return,
                    // Boxed: only a draining connection needs it, and every
                    // connection's future would otherwise be this much larger
                    // (tokio copies the whole future when it spawns the task).
                    _ = Box::pin(tokio::time::sleep(wait)) => {}
                }
                waited_ms =
                    waited_ms.saturating_add(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX));
                let arriving = signal.request_arriving(fd);
                let head_limit = shared
                    .revisit
                    .max(shared.idle_grace)
                    .min(shared.header_read_timeout);
                if arriving && Duration::from_millis(u64::from(waited_ms)) >= head_limit {
                    debug!(
                        ?head_limit,
                        "a request head still unfinished this long into the drain; closing"
                    );
                    break;
                }
                let quiet = shared.sockets.quiet_for(&signal);
                // Read at every grace: a stop may have come since.
                let revisit = if shared.successor.load(Ordering::Relaxed) {
                    shared.revisit
                } else {
                    Duration::ZERO
                };
                if !arriving && quiet >= revisit {
                    break;
                }
                // A request arriving gets a whole grace more; a quiet client,
                // until it has been quiet long enough.
                wait = if arriving {
                    shared.idle_grace
                } else {
                    // Not `clamp`: the idle grace may be under 10 ms (it is at
                    // most the stop timeout), and `clamp` panics then.
                    revisit
                        .saturating_sub(quiet)
                        .max(Duration::from_millis(10))
                        .min(shared.idle_grace)
                };
                graces += 1;
                trace!(
                    graces,
                    arriving,
                    ?quiet,
                    "the client may be sending; not closing the connection yet"
                );
            }
        }
        // HTTP/2 GOAWAY; HTTP/1 close once idle, or after the request in flight.
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            r = conn.as_mut() => log_end(r),
            _ = signal.reached(Level::Cut) => {}
        }
    }
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(e) = result {
        // Clients hanging up mid-request, and idle connections closed by the
        // drain, are part of normal life: debug, not error.
        debug!(cause = %e, "connection ended with an error");
    }
}

/// Every connection this generation has open, so the drain can reach each
/// one and the deadline can shut down even sockets whose I/O an upgrade has
/// handed to user code.
#[derive(Debug)]
struct Sockets {
    inner: Mutex<SocketsInner>,
    /// What [`ConnSignal`]'s `active_ms` counts from.
    epoch: Instant,
    /// Told when a connection opens while the sweeper sleeps (it sleeps
    /// while there is none: an idle server wakes up for nothing).
    opened: tokio::sync::Notify,
    /// How many connections are open: `open.len()`, written under the lock,
    /// for the accept loops to read without it.
    count: AtomicUsize,
    /// Told when a connection closes while an accept loop waits for room
    /// (at the cap, or out of file descriptors).
    room: tokio::sync::Notify,
}

impl Default for Sockets {
    fn default() -> Self {
        Sockets {
            inner: Mutex::default(),
            epoch: Instant::now(),
            opened: tokio::sync::Notify::new(),
            count: AtomicUsize::new(0),
            room: tokio::sync::Notify::new(),
        }
    }
}

/// The sweeper's timeouts: for a whole HTTP/1 request head, for an HTTP/2
/// connection with no stream, and for an HTTP/2 client to close its
/// connection after a GOAWAY.
#[derive(Debug)]
struct Timeouts {
    http1: Duration,
    http2: Duration,
    goaway: Duration,
}

/// What one sweep did: connections cut for their request head, idle HTTP/2
/// connections sent a GOAWAY, and ones cut after theirs.
#[derive(Debug, Default)]
struct Swept {
    cut: usize,
    goaway: usize,
    unanswered: usize,
}

#[derive(Debug, Default)]
struct SocketsInner {
    /// The level every connection has been raised to; a connection
    /// registered later starts at it, so none misses the drain.
    level: Level,
    /// A slab, not a hash map: one insert and one remove per connection,
    /// with no hashing (SipHash cost about 300 instructions per connection).
    open: Slab<Entry>,
    /// The sweeper found no connection and sleeps until told of one: set
    /// by the sweeper, cleared by the connection that tells it. (Telling it
    /// of every first connection instead would wake it for each one on a
    /// server whose clients come one at a time.)
    sweeper_asleep: bool,
    /// An accept loop waits for a connection to close.
    room_wanted: bool,
    /// Connections registered so far: each entry's order of arrival.
    registered: u64,
}

#[derive(Debug)]
struct Entry {
    fd: RawFd,
    /// Without Unix, the handle the deadline shuts the socket down with.
    #[cfg(not(unix))]
    socket: crate::portable::SocketHandle,
    signal: Arc<ConnSignal>,
    /// Since when the connection has been waiting for a request head, as far
    /// as the sweeper knows (never earlier than the truth), and what it had
    /// counted at the last sweep: request heads, reads, and whether a
    /// request was in progress.
    /// `None` until the sweeper first sees the connection.
    waiting_since: Option<Instant>,
    heads: u32,
    reads: u64,
    written: u64,
    busy: bool,
    /// When the sweeper first saw this HTTP/2 connection draining (told
    /// GOAWAY).
    goaway_at: Option<Instant>,
    /// Its order of arrival, to tell the older of two idle connections.
    seq: u64,
}

impl Sockets {
    /// `tls`: whether the connection speaks TLS (its reads are then
    /// counted above the TLS layer, by [`Plain`]). Returns its I/O, its
    /// signal and its order of arrival.
    fn track(
        self: &Arc<Self>,
        stream: Stream,
        token: TaskTrackerToken,
        tls: bool,
    ) -> (Tracked<Stream>, Arc<ConnSignal>, u64) {
        // No clock read per connection: the sweeper's first sight of it
        // counts instead (see `ActiveMs`).
        let signal = Arc::new(ConnSignal::new(!tls));
        let (id, seq, wake_sweeper) = {
            let mut inner = self.lock();
            signal.raise(inner.level);
            let wake_sweeper = std::mem::take(&mut inner.sweeper_asleep);
            inner.registered += 1;
            let entry = Entry {
                fd: stream.raw_fd(),
                #[cfg(not(unix))]
                socket: stream.handle(),
                signal: signal.clone(),
                waiting_since: None,
                heads: 0,
                reads: 0,
                written: 0,
                busy: false,
                goaway_at: None,
                seq: inner.registered,
            };
            let id = inner.open.insert(entry);
            self.count.store(inner.open.len(), Ordering::Relaxed);
            (id, inner.registered, wake_sweeper)
        };
        if wake_sweeper {
            // Stores a permit if the sweeper is not waiting yet.
            self.opened.notify_one();
        }
        let io = Tracked {
            guard: SocketGuard {
                id,
                sockets: self.clone(),
                _token: token,
            },
            signal: signal.clone(),
            io: stream,
        };
        (io, signal, seq)
    }

    /// Raises every connection to `level`; at [`Level::Cut`] also shuts
    /// every socket down, which wakes whoever reads or writes it.
    fn raise(&self, level: Level) {
        let mut inner = self.lock();
        inner.level = inner.level.max(level);
        for (_, entry) in inner.open.iter() {
            entry.cut_or_raise(level);
        }
    }

    /// Raises every connection to `level` (and with it any connection
    /// registered from now on), spread over time: `spacing` per open
    /// connection, at most `max` in all, in up to 20 steps. A later
    /// [`raise`](Self::raise) to a higher level reaches every connection at
    /// once as usual.
    fn raise_spread(&self, level: Level, spacing: Duration, max: Duration) {
        let pending: Vec<Arc<ConnSignal>> = {
            let mut inner = self.lock();
            inner.level = inner.level.max(level);
            inner
                .open
                .iter()
                .map(|(_, entry)| entry.signal.clone())
                .collect()
        };
        let window = spacing
            .saturating_mul(u32::try_from(pending.len()).unwrap_or(u32::MAX))
            .min(max);
        raise_over(pending, level, window);
    }

    /// Cuts the HTTP/1 connections that have waited `timeouts.http1` or
    /// more for a whole request head (since being accepted, or since the end
    /// of their last response, as far as the sweeps that call this can
    /// tell); tells HTTP/2 connections that have had no stream for
    /// `timeouts.http2` to go away (GOAWAY); cuts HTTP/2 connections still
    /// open, and idle, `timeouts.goaway` after they were told.
    fn cut_idle(&self, timeouts: &Timeouts) -> Swept {
        let mut inner = self.lock();
        // Read under the lock: a connection registered before it is then
        // accepted before `now`, so no count starts earlier than the truth.
        let now = Instant::now();
        let now_ms = self.millis(now);
        let mut swept = Swept::default();
        for (_, entry) in inner.open.iter_mut() {
            let seen = entry.signal.seen();
            let level = entry.signal.level();
            // An upgraded connection is the application's.
            if seen.contains(Seen::UPGRADED) || level >= Level::Cut {
                continue;
            }
            let http2 = seen.contains(Seen::HTTP2);
            if http2 && level >= Level::Draining && entry.goaway_at.is_none() {
                entry.goaway_at = Some(now);
            }
            let progress = entry.note_progress(http2);
            if progress == Progress::Busy {
                entry.signal.active_ms.0.store(now_ms, Ordering::Relaxed);
                continue;
            }
            let heads = entry.signal.requests().0;
            if progress == Progress::Sent
                || entry.busy
                || heads != entry.heads
                || entry.waiting_since.is_none()
            {
                // It went idle (or was accepted) at some moment since the
                // last sweep: count from now, later than the truth, never
                // earlier.
                entry.busy = false;
                entry.heads = heads;
                entry.waiting_since = Some(now);
                entry.signal.active_ms.0.store(now_ms, Ordering::Relaxed);
                continue;
            }
            let waited = entry
                .waiting_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
            if !http2 {
                if waited >= timeouts.http1 {
                    entry.cut_or_raise(Level::Cut);
                    swept.cut += 1;
                }
            } else if level == Level::Serving {
                if waited >= timeouts.http2 {
                    // GOAWAY, through the connection's own task (as in a
                    // drain); streams the client opened meanwhile finish.
                    entry.signal.raise(Level::Draining);
                    swept.goaway += 1;
                }
            } else {
                // Told to go away, and idle since: hyper closes the
                // connection once its client answers the PING sent with
                // the GOAWAY; one that never does is closed here.
                let told = entry
                    .goaway_at
                    .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                if waited.min(told) >= timeouts.goaway {
                    entry.cut_or_raise(Level::Cut);
                    swept.unanswered += 1;
                }
            }
        }
        swept
    }

    /// Whether more than `max` connections are open (one relaxed load).
    fn over(&self, max: usize) -> bool {
        self.count.load(Ordering::Relaxed) > max
    }

    /// Cuts up to `n` idle connections, those that have waited longest for
    /// a request first, so that new clients can be accepted; returns how
    /// many. Connections with a request in progress, a response being sent
    /// or an upgrade are never taken, nor the one numbered `spare` (the
    /// newcomer that room is made for). Only at the cap, or out of file
    /// descriptors: a walk over every connection.
    fn make_room(&self, n: usize, spare: Option<u64>) -> usize {
        let inner = self.lock();
        let mut idle: Vec<(Age, usize)> = inner
            .open
            .iter()
            .filter(|(_, e)| e.idle() && Some(e.seq) != spare)
            .map(|(key, e)| (e.age(), key))
            .collect();
        // The `n` oldest first, in no order among themselves: one pass,
        // not a sort.
        let cut = idle.len().min(n);
        if cut > 0 && cut < idle.len() {
            idle.select_nth_unstable(cut - 1);
        }
        for &(_, key) in &idle[..cut] {
            inner.open[key].cut_or_raise(Level::Cut);
        }
        if cut > 0 {
            debug!(
                connections = cut,
                "closed the oldest idle connections to make room"
            );
        }
        cut
    }

    /// Resolves once a connection has closed since the call (or after 50 ms,
    /// whichever is first: a wake-up lost to a race costs no more).
    async fn room(&self) {
        let closed = self.room.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        self.lock().room_wanted = true;
        tokio::select! {
            _ = closed => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }

    /// Whether the sweeper may sleep: no connection is open. If so, the
    /// next one to open wakes it.
    fn fall_asleep(&self) -> bool {
        let mut inner = self.lock();
        inner.sweeper_asleep = inner.open.is_empty();
        inner.sweeper_asleep
    }

    /// `at`, in milliseconds since the epoch.
    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// How long the connection of `signal` has been quiet: since the
    /// sweeper first saw it, last saw it busy, or first saw it idle again
    /// (so never longer than the truth; up to two sweep intervals shorter;
    /// no time at all before the sweeper has seen it).
    fn quiet_for(&self, signal: &ConnSignal) -> Duration {
        let active = signal.active_ms.0.load(Ordering::Relaxed);
        // Both ends are rounded down to the millisecond, so their difference
        // can be up to 1 ms more than the truth: take it off.
        let ms = self.millis(Instant::now()).saturating_sub(active);
        Duration::from_millis(ms.saturating_sub(1))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SocketsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// See [`Entry::age`].
type Age = (bool, Option<Instant>, u64);

/// What a connection did since the last sweep: see [`Entry::note_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Busy,
    Sent,
    None,
}

impl Entry {
    /// What the connection did since the last sweep, which then notes what
    /// it counted. Busy: a request in progress (its head parsed, its
    /// response not yet done with), an upload going on after its response
    /// (bytes read, up to the end of its body), or a write waiting for the
    /// client (hyper is done with a body once it holds all of it, long
    /// before a slow client has read it). Sent: bytes went out since, and
    /// none wait: the connection may have gone idle since, so its wait
    /// counts from now (as after a busy sweep, but without a sweep more).
    /// (A client could trickle a body, which no timeout bounds, in hyper
    /// neither.)
    fn note_progress(&mut self, http2: bool) -> Progress {
        let (heads, in_progress) = self.signal.requests();
        let reads = self.signal.reads();
        let uploading = reads != self.reads && self.signal.may_be_uploading(reads);
        self.reads = reads;
        let (written, write_blocked) = self.signal.written();
        // HTTP/2: hyper is done with a stream's body once h2 has queued it
        // (h2 sends it as flow control allows), so a stream can still be
        // sending with none in progress by our count; but a few bytes
        // written with no stream open (answers to the client's PINGs, say)
        // do not make a connection busy.
        let least = if http2 { HTTP2_ACTIVE_BYTES } else { 1 };
        let sent = written.wrapping_sub(self.written) >= least;
        self.written = written;
        if in_progress || uploading || write_blocked {
            self.busy = true;
            self.heads = heads;
            Progress::Busy
        } else if sent {
            Progress::Sent
        } else {
            Progress::None
        }
    }

    /// Whether the connection waits for a request now, as its counters
    /// say: no request in progress, nothing waiting to be sent, no upload
    /// since the last sweep, not upgraded, not cut.
    fn idle(&self) -> bool {
        let (_, in_progress) = self.signal.requests();
        let reads = self.signal.reads();
        let uploading = reads != self.reads && self.signal.may_be_uploading(reads);
        let busy = in_progress || uploading || self.signal.written().1;
        !busy && !self.signal.seen().contains(Seen::UPGRADED) && self.signal.level() < Level::Cut
    }

    /// Which of two idle connections goes first (the lesser): the one the
    /// sweeper has seen waiting longest; then those it saw busy last (their
    /// wait has started since) or has not seen yet, oldest first.
    fn age(&self) -> Age {
        let unknown = self.busy || self.waiting_since.is_none();
        (unknown, self.waiting_since.filter(|_| !unknown), self.seq)
    }

    /// Raises the connection to `level`; at [`Level::Cut`] also shuts
    /// its socket down, which wakes whoever reads or writes it.
    fn cut_or_raise(&self, level: Level) {
        self.signal.raise(level);
        if level >= Level::Cut {
            // The FD is open: it leaves the map (under the lock our caller
            // holds) before its owner closes it.
            #[cfg(unix)]
            let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both);
            #[cfg(not(unix))]
            self.socket.shutdown();
        }
    }
}

/// Keeps a socket counted (by the task tracker) and listed (for the drain
/// and the deadline) for exactly as long as it is open, wherever hyper or an
/// upgrade moves it.
struct SocketGuard {
    id: usize,
    sockets: Arc<Sockets>,
    _token: TaskTrackerToken,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let mut inner = self.sockets.lock();
        // Its own key: a key is reused only once removed.
        inner.open.try_remove(self.id);
        self.sockets
            .count
            .store(inner.open.len(), Ordering::Relaxed);
        if std::mem::take(&mut inner.room_wanted) {
            drop(inner);
            self.sockets.room.notify_waiters();
        }
    }
}

// ---- The registered services ----
//
// Type erasure happens once per listener, not once per request: a
// registration keeps a [`Launch`], which starts an accept loop compiled for
// its own service type. Requests then reach the user's service, and its
// futures and bodies reach hyper, without a box or an indirection. (Boxing
// per request cost measurable CPU time per request against plain hyper.)

/// Starts the accept loop of one registration, with its service's own type.
/// Callable again (a generation that serves again after a failed successor,
/// or a failed `keep_pid` re-exec, resumes).
pub(crate) trait Launch: Send + Sync {
    fn launch(&self, conns: &Connections, name: String, listener: Arc<Listener>, tls: Tls);

    /// Sends `request` through the service, in-process, as if it came on
    /// the listener `name` bound at `local`: its status, or why there is
    /// none (see `ready`).
    fn probe(
        &self,
        name: String,
        local: LocalAddr,
        request: Request<http_body_util::Empty<bytes::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<StatusCode, String>> + Send>>;
}

/// A registered service, waiting for its listener.
struct Registered<S, B> {
    svc: S,
    _body: std::marker::PhantomData<fn() -> B>,
}

/// Keeps `svc` until `run` has its listener.
pub(crate) fn register<S, B>(svc: S) -> Box<dyn Launch>
where
    S: HttpService<B>,
    B: HttpBody,
{
    Box::new(Registered {
        svc,
        _body: std::marker::PhantomData,
    })
}

impl<S, B> Launch for Registered<S, B>
where
    S: HttpService<B>,
    B: HttpBody,
{
    fn launch(&self, conns: &Connections, name: String, listener: Arc<Listener>, tls: Tls) {
        conns.spawn_accept_loop(name, listener, self.svc.clone(), tls);
    }

    fn probe(
        &self,
        name: String,
        local: LocalAddr,
        request: Request<http_body_util::Empty<bytes::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<StatusCode, String>> + Send>> {
        // Through the wrapper every connection gets, so the handler finds
        // its ConnInfo (and, with the `axum` feature, ConnectInfo): the
        // probe's peer is the listener's own address.
        let svc = ConnService {
            svc: self.svc.clone(),
            signal: Arc::new(ConnSignal::default()),
        };
        let peer = match &local {
            LocalAddr::Tcp(a) => crate::listener::Peer::Tcp(*a),
            #[cfg(unix)]
            _ => crate::listener::Peer::Unix(None),
            #[cfg(not(unix))]
            _ => crate::listener::Peer::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        };
        let info = ConnInfo::new(Arc::from(name.as_str()), local, peer);
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), svc);
            tokio::spawn(info.scope(conn));
            let (mut sender, client_conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(client))
                    .await
                    .map_err(|e| format!("cannot talk to the service: {e}"))?;
            tokio::spawn(client_conn);
            let res = sender
                .send_request(request)
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            Ok(res.status())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Response;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn durations_are_bounded_to_a_year() {
        assert_eq!(bounded(Duration::MAX), LONGEST);
        assert_eq!(bounded(Duration::from_secs(5)), Duration::from_secs(5));
        let _ = Instant::now() + bounded(Duration::MAX);
    }

    #[tokio::test]
    async fn a_spread_raise_reaches_every_signal_in_steps() {
        let signals: Vec<Arc<ConnSignal>> = (0..40).map(|_| Arc::default()).collect();
        let window = Duration::from_millis(400);
        let started = Instant::now();
        raise_over(signals.clone(), Level::Draining, window);
        let raised = || signals.iter().filter(|s| s.draining()).count();
        // The first step (2 of the 40) comes at once, the last about 380 ms
        // later: not everyone in the same moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let early = raised();
        assert!(early < 40, "{early} told within 50 ms of a 400 ms spread");
        // A cut reaches every connection at once, spread or not.
        signals[39].raise(Level::Cut);
        assert_eq!(signals[39].level(), Level::Cut);
        while raised() < 40 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{} told",
                raised()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(started.elapsed() >= window / 2, "{:?}", started.elapsed());
        assert_eq!(signals[39].level(), Level::Cut, "levels only rise");
    }

    #[test]
    fn a_short_spread_or_one_connection_is_told_at_once() {
        // No runtime here: nothing may be spawned.
        let signals: Vec<Arc<ConnSignal>> = (0..40).map(|_| Arc::default()).collect();
        raise_over(signals.clone(), Level::Draining, Duration::from_millis(1));
        assert!(signals.iter().all(|s| s.draining()));
        let one = vec![Arc::new(ConnSignal::default())];
        raise_over(one.clone(), Level::Draining, Duration::from_secs(1));
        assert!(one[0].draining());
    }

    /// `Duration::MAX` settings used to reach hyper unchanged, which then
    /// panicked in every connection's task (`Instant + Duration` overflow).
    #[tokio::test]
    async fn endless_settings_still_serve() {
        let conns = Connections::new(
            Duration::MAX,
            Duration::MAX,
            Duration::MAX,
            Duration::MAX,
            Duration::MAX,
            Limits {
                http2_idle_timeout: Duration::MAX,
                http2_keep_alive_interval: Some(Duration::MAX),
                tcp_keepalive: Some(Duration::MAX),
                max_connections: Some(usize::MAX),
            },
        );
        conns.spawn_sweeper();
        let spec = crate::listener::parse("127.0.0.1:0").unwrap();
        let listener = Listener::bind("127.0.0.1:0", &spec).await.unwrap();
        let listener = Arc::new(listener.into_iter().next().unwrap());
        let addr = listener.local_addr().unwrap().to_string();
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(Response::new(String::from("served")))
        });
        conns.spawn_accept_loop("127.0.0.1:0".into(), listener, svc, None);

        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
            .await
            .expect("an answer in time")
            .expect("an answer, not a reset");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(answer.ends_with("served"), "{answer:?}");

        conns.start_drain(false);
        tokio::time::timeout(Duration::from_secs(10), conns.drained())
            .await
            .expect("drained");
    }
}
