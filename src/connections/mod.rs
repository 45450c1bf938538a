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
//!
//! This file holds what a generation sees ([`Connections`], its settings
//! and the drain's verbs); the rest lives beside it, one concept a file:
//! - `serve`: the accept loop, and one connection's task from its TLS
//!   handshake to its end (the drain as a connection lives it);
//! - `request`: the wrapper every request goes through (`Connection:
//!   close`, and what a request tells the signal);
//! - `conn_signal`: what one connection tells the drain and the sweeper;
//! - `counted_io`: a connection's I/O, each read and write counted;
//! - `sweeper`: the generation's open sockets, and the sweeps over them
//!   (timeouts, the cap, the cut);
//! - `launch`: the registered services, each waiting for its listener;
//! - `protocol`: hyper's HTTP/1 and HTTP/2 settings the program set.

mod conn_signal;
mod counted_io;
mod http;
mod launch;
mod protocol;
mod request;
mod serve;
mod sweeper;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use hyper_util::rt::TokioTimer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::listener::{Listener, LocalAddr};
use crate::service::{HttpBody, HttpService};

use conn_signal::Level;
pub(crate) use launch::{register, Launch};
pub(crate) use protocol::Protocol;
use serve::accept_loop;
use sweeper::{Sockets, Timeouts};

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
    /// (connections are told through their own
    /// [`ConnSignal`](conn_signal::ConnSignal)).
    stop_accepting: Arc<StopAccepting>,
    /// Stops the sweeper when the generation's connections are dropped.
    stop_sweeping: CancellationToken,
    /// The UDP addresses HTTP/3 is served on, for the `Alt-Svc` header of
    /// HTTPS responses.
    alt_svc: Vec<std::net::SocketAddr>,
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
    pub(crate) protocol: Protocol,
}

/// A listener's TLS acceptor, if it serves HTTPS (never, without the `tls`
/// feature: the acceptor type then has no values).
pub(crate) type Tls = Option<crate::tls::Acceptor>;

/// What every connection of a generation shares. One `Arc` clone per
/// connection; nothing in here is written per request except by atomics.
#[derive(Debug)]
struct Shared {
    builders: http::Builders,
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
    /// connection's [`ConnInfo`](crate::conn_info::ConnInfo) starts from.
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
            &t.protocol,
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
        protocol: &Protocol,
    ) -> Self {
        // Whatever the caller checked, nothing here may overflow an Instant.
        let header_read_timeout = bounded(header_read_timeout);
        let idle_grace = bounded(idle_grace);
        let revisit = bounded(revisit);
        let tls_handshake_timeout = bounded(tls_handshake_timeout);
        let mut builders = http::Builders::new();
        // The program's settings first, endless's own after: those are not
        // the program's to set (`Protocol` has none of them).
        protocol.apply(&mut builders);
        // hyper's own header read timeout allocates and registers a timer
        // for every request head (measured: 11% more instructions per
        // keep-alive request); the sweeper enforces ours instead.
        builders
            .http1
            .timer(TokioTimer::new())
            .header_read_timeout(None);
        builders.http2.timer(TokioTimer::new());
        if let Some(interval) = limits.http2_keep_alive_interval {
            builders
                .http2
                .keep_alive_interval(bounded(interval).max(Duration::from_millis(1)))
                .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT);
        }
        let tracker = TaskTracker::new();
        Connections {
            shared: Arc::new(Shared {
                builders,
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
            alt_svc: Vec::new(),
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
        if let (Some(port), true) = (http3_port(&self.alt_svc, &local), tls.is_some()) {
            // A wrapper only where it is needed: the HTTPS listeners of a
            // server that also serves HTTP/3 on their address.
            let svc = request::AltSvc::new(svc, port);
            return self.spawn_listening(name, listener, local, svc, tls);
        }
        self.spawn_listening(name, listener, local, svc, tls);
    }

    /// Advertises HTTP/3, served on the UDP addresses `http3`, on the
    /// HTTPS listeners launched from now on that share an address with one
    /// of them.
    pub(crate) fn advertise(&mut self, http3: Vec<std::net::SocketAddr>) {
        self.alt_svc = http3;
    }

    fn spawn_listening<S, B>(
        &self,
        name: String,
        listener: Arc<Listener>,
        local: LocalAddr,
        svc: S,
        tls: Tls,
    ) where
        S: HttpService<B>,
        B: HttpBody,
    {
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
        move || sockets.open()
    }

    /// Connections open now, upgraded ones included.
    pub(crate) fn active(&self) -> usize {
        self.shared.sockets.open()
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

/// The UDP port that `Alt-Svc` names on the HTTPS listener at `local`:
/// that of the first HTTP/3 socket (of `http3`) on its IP address or on
/// every interface (clients take `h3=":PORT"` to mean the host they
/// asked); on a listener on every interface, the first HTTP/3 socket's.
/// None for a Unix socket: the proxy in front says what it serves.
fn http3_port(http3: &[std::net::SocketAddr], local: &LocalAddr) -> Option<u16> {
    let LocalAddr::Tcp(tcp) = local else {
        return None;
    };
    let same_host = |h3: &&std::net::SocketAddr| {
        tcp.ip().is_unspecified()
            || h3.ip().is_unspecified()
            || h3.ip().to_canonical() == tcp.ip().to_canonical()
    };
    Some(http3.iter().find(same_host)?.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn alt_svc_names_http3_on_the_listeners_address_only() {
        let tcp = |a: &str| LocalAddr::Tcp(a.parse().unwrap());
        let h3: Vec<std::net::SocketAddr> = vec![
            "127.0.0.1:4433".parse().unwrap(),
            "[::]:443".parse().unwrap(),
        ];
        assert_eq!(http3_port(&h3, &tcp("127.0.0.1:8443")), Some(4433));
        // Every interface covers any address, IPv4 (mapped) or IPv6.
        assert_eq!(http3_port(&h3, &tcp("[::1]:8443")), Some(443));
        assert_eq!(http3_port(&h3[..1], &tcp("[::1]:8443")), None);
        assert_eq!(
            http3_port(&h3[..1], &tcp("[::ffff:127.0.0.1]:8443")),
            Some(4433)
        );
        assert_eq!(http3_port(&h3[..1], &tcp("127.0.0.2:8443")), None);
        // A listener on every interface: the first HTTP/3 socket.
        assert_eq!(http3_port(&h3[..1], &tcp("0.0.0.0:443")), Some(4433));
        assert_eq!(http3_port(&h3[..1], &tcp("[::]:443")), Some(4433));
        assert_eq!(
            http3_port(&h3, &LocalAddr::Unix("/run/x.sock".into())),
            None
        );
        assert_eq!(http3_port(&[], &tcp("127.0.0.1:8443")), None);
    }

    use super::*;
    use hyper::Response;
    use std::convert::Infallible;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn durations_are_bounded_to_a_year() {
        assert_eq!(bounded(Duration::MAX), LONGEST);
        assert_eq!(bounded(Duration::from_secs(5)), Duration::from_secs(5));
        let _ = Instant::now() + bounded(Duration::MAX);
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
            &Protocol::default(),
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
