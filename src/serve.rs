//! Accept loops, connection tasks and the drain.
//!
//! The drain does not know how a restart happens: it is told to start, and it
//! reports when every connection is gone.
//!
//! How a drain treats each connection:
//! - accepting stops at once, and each accept loop drops its listener;
//! - HTTP/1: a response written after the drain started carries
//!   `Connection: close`, so a busy keep-alive client learns of the drain from
//!   its own next response and reconnects (to the new generation) without an
//!   error. Closing an idle connection at once would race with a request the
//!   client is sending at that moment, so a connection is only closed once
//!   it has had [`IDLE_GRACE`] to send something;
//! - HTTP/2: GOAWAY at once; streams in flight finish;
//! - at the deadline, whatever is left (long streams, upgraded connections
//!   such as WebSockets, silent clients) is cut: tasks are dropped and every
//!   socket still open is shut down.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, trace};

use crate::listener::{is_connection_error, Listener, Stream};
use crate::service::{BoxError, HttpBody, HttpService};

/// How long an HTTP/1 connection may stay quiet after the drain starts before
/// it is closed. Busy clients are told by `Connection: close` well before.
pub(crate) const IDLE_GRACE: Duration = Duration::from_millis(1000);

/// The connections of one generation.
#[derive(Debug)]
pub(crate) struct Connections {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    /// Cancelled when the drain starts; watched by the accept loops only
    /// (connections are told through their own [`ConnSignal`]).
    stop_accepting: CancellationToken,
    /// Stops the sweeper when the generation's connections are dropped.
    stop_sweeping: CancellationToken,
}

impl Drop for Connections {
    fn drop(&mut self) {
        self.stop_sweeping.cancel();
    }
}

/// A listener's TLS acceptor, if it serves HTTPS.
#[cfg(feature = "tls")]
pub(crate) type Tls = Option<tokio_rustls::TlsAcceptor>;
/// Without the `tls` feature no listener serves HTTPS.
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = Option<NoTls>;

/// Uninhabited: without the `tls` feature there is no acceptor.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub(crate) enum NoTls {}

/// What every connection of a generation shares. One `Arc` clone per
/// connection; nothing in here is written per request except by atomics.
#[derive(Debug)]
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    tracker: TaskTracker,
    sockets: Arc<Sockets>,
    idle_grace: Duration,
    first_request_timeout: Duration,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls_handshake_timeout: Duration,
}

/// What the connections of one listener share: one `Arc` clone per
/// connection (each clone is an atomic on a line shared across cores).
struct Listening<S> {
    svc: S,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
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
    pub(crate) fn new(
        header_read_timeout: Duration,
        idle_grace: Duration,
        tls_handshake_timeout: Duration,
    ) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let tracker = TaskTracker::new();
        Connections {
            shared: Arc::new(Shared {
                builder,
                tracker: tracker.clone(),
                sockets: Arc::default(),
                idle_grace,
                first_request_timeout: header_read_timeout,
                tls_handshake_timeout,
            }),
            tracker,
            stop_accepting: CancellationToken::new(),
            stop_sweeping: CancellationToken::new(),
        }
    }

    /// Starts the task that closes connections on which no request arrived
    /// within the header read timeout.
    ///
    /// hyper's own header-read timeout starts only once a connection knows
    /// its protocol, which takes the client's first bytes, so a client that
    /// sends nothing would otherwise hold its connection forever. One sweep
    /// over the open connections now and then costs far less than a timer
    /// per connection (measured: about 7% of the CPU time per request with
    /// `Connection: close`).
    pub(crate) fn spawn_sweeper(&self) {
        let shared = self.shared.clone();
        let stop = self.stop_sweeping.clone();
        let timeout = shared.first_request_timeout;
        let every = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let cut = shared.sockets.cut_silent(timeout);
                if cut > 0 {
                    debug!(
                        connections = cut,
                        ?timeout,
                        "closed connections that sent no request in time"
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
        let listening = Arc::new(Listening {
            svc,
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

    /// Connections open now, upgraded ones included.
    pub(crate) fn active(&self) -> usize {
        self.shared.sockets.lock().open.len()
    }

    /// Stops accepting and starts closing connections.
    pub(crate) fn start_drain(&self) {
        self.stop_accepting.cancel();
        self.shared.sockets.raise(Level::Draining);
        self.tracker.close();
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
    stop: CancellationToken,
) where
    S: HttpService<B>,
    B: HttpBody,
{
    const MIN_BACKOFF: Duration = Duration::from_millis(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let shared = &listening.shared;
    let mut backoff = MIN_BACKOFF;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(stream) => {
                backoff = MIN_BACKOFF;
                let (io, signal) = shared.sockets.track(stream, shared.tracker.token());
                tokio::spawn(connection(io, signal, listening.clone()));
            }
            Err(e) if is_connection_error(&e) => {
                trace!(addr = %name, cause = %e, "accept: skipped")
            }
            Err(e) => {
                // EMFILE and friends: retrying at once would spin the CPU.
                error!(addr = %name, cause = %e, backoff = ?backoff, "accept failed; backing off");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    debug!(addr = %name, "stopped accepting");
}

/// One accepted connection, from the TLS handshake (if any) to its end.
async fn connection<S, B>(
    io: Tracked<Stream>,
    signal: Arc<ConnSignal>,
    listening: Arc<Listening<S>>,
) where
    S: HttpService<B>,
    B: HttpBody,
{
    #[cfg(feature = "tls")]
    if let Some(acceptor) = listening.tls.clone() {
        // Boxed: rustls's state would otherwise make every connection's
        // future, plain ones included, several KiB larger (tokio allocates
        // and moves the whole future for each connection).
        return Box::pin(tls_connection(acceptor, io, signal, listening)).await;
    }
    serve_connection(io, &signal, &listening).await
}

#[cfg(feature = "tls")]
async fn tls_connection<S, B>(
    acceptor: tokio_rustls::TlsAcceptor,
    io: Tracked<Stream>,
    signal: Arc<ConnSignal>,
    listening: Arc<Listening<S>>,
) where
    S: HttpService<B>,
    B: HttpBody,
{
    // In the connection's task, never the accept loop: a slow or silent
    // client delays nobody but itself.
    let timeout = listening.shared.tls_handshake_timeout;
    let stream = tokio::select! {
        s = crate::tls::handshake(&acceptor, io, timeout) => s,
        _ = signal.reached(Level::Cut) => return,
    };
    if let Some(stream) = stream {
        serve_connection(stream, &signal, &listening).await;
    }
}

async fn serve_connection<IO, S, B>(io: IO, signal: &Arc<ConnSignal>, listening: &Listening<S>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
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
    tokio::select! {
        r = conn.as_mut() => return log_end(r),
        _ = signal.reached(Level::Cut) => return,
        _ = signal.reached(Level::Draining) => {}
    }
    // Draining. HTTP/1: let the client learn of it from a response
    // (`Connection: close`) for up to the idle grace, then close.
    if !signal.seen().contains(Seen::HTTP2) {
        tokio::select! {
            r = conn.as_mut() => return log_end(r),
            _ = signal.reached(Level::Cut) => return,
            _ = tokio::time::sleep(shared.idle_grace) => {}
        }
    }
    // HTTP/2 GOAWAY; HTTP/1 close once idle, or after the request in flight.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        r = conn.as_mut() => log_end(r),
        _ = signal.reached(Level::Cut) => {}
    }
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(e) = result {
        // Clients hanging up mid-request, and idle connections closed by the
        // drain, are part of normal life: debug, not error.
        debug!(cause = %e, "connection ended with an error");
    }
}

/// How the drain reaches one connection: a [`Level`] that only rises, and
/// the connection task's waker.
///
/// A `CancellationToken` shared by every connection would do the same, but
/// each poll of its `cancelled()` future takes the token's mutex, and a
/// connection task polls it on every wake-up: with many connections on
/// several threads that lock is contended on the hot path (it cost 13% of
/// HTTP/2 throughput). This is an uncontended atomic load per poll.
///
/// It also carries what the connection has shown of itself ([`Seen`]).
/// Each is its own atomic with its own type, read and written only through the
/// accessors below, so a level can never be tested as a flag.
#[derive(Debug, Default)]
pub(crate) struct ConnSignal {
    /// A [`Level`], as its `u8`.
    level: AtomicU8,
    waker: AtomicWaker,
    /// [`Seen`] bits.
    seen: AtomicU8,
}

/// How far the drain has gone for one connection. It only rises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[repr(u8)]
pub(crate) enum Level {
    /// Serving as usual.
    #[default]
    Serving = 0,
    /// The drain has started.
    Draining = 1,
    /// The deadline has passed, or the connection stayed silent too long:
    /// cut it.
    Cut = 2,
}

impl Level {
    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Serving,
            1 => Level::Draining,
            _ => Level::Cut,
        }
    }
}

/// What a connection has shown of itself: a set of bits that are only ever
/// added.
///
/// | bit | constant          | set when                              |
/// |-----|-------------------|---------------------------------------|
/// | 0   | [`Seen::REQUEST`] | a request head was parsed             |
/// | 1   | [`Seen::HTTP2`]   | that request came over HTTP/2         |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Seen(u8);

impl Seen {
    /// At least one request arrived.
    const REQUEST: Seen = Seen(1 << 0);
    /// The connection speaks HTTP/2.
    const HTTP2: Seen = Seen(1 << 1);

    fn contains(self, other: Seen) -> bool {
        self.0 & other.0 == other.0
    }

    fn with(self, other: Seen) -> Seen {
        Seen(self.0 | other.0)
    }
}

impl ConnSignal {
    fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Acquire))
    }

    fn seen(&self) -> Seen {
        Seen(self.seen.load(Ordering::Relaxed))
    }

    /// Adds `seen`; one load and no write when nothing is new (the case
    /// for every request after a connection's first).
    fn note(&self, seen: Seen) {
        if !self.seen().contains(seen) {
            self.seen.fetch_or(seen.0, Ordering::Relaxed);
        }
    }

    fn draining(&self) -> bool {
        self.level() >= Level::Draining
    }

    fn raise(&self, level: Level) {
        if self.level.fetch_max(level as u8, Ordering::AcqRel) < level as u8 {
            self.waker.wake();
        }
    }

    /// Resolves once the level is at least `level`. Only the connection's
    /// own task waits on it.
    fn reached(&self, level: Level) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.level() >= level {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.level() >= level {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// Wraps the registered service for one connection: notes what the
/// connection is, and marks HTTP/1 responses `Connection: close` once the
/// drain has started.
#[derive(Clone)]
struct ConnService<S> {
    svc: S,
    signal: Arc<ConnSignal>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = CloseWhenDraining<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        self.signal.note(if http1 {
            Seen::REQUEST
        } else {
            Seen::REQUEST.with(Seen::HTTP2)
        });
        CloseWhenDraining {
            inner: self.svc.call(req),
            // HTTP/2 forbids the header; its drain is GOAWAY.
            signal: http1.then(|| self.signal.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ConnService`].
    struct CloseWhenDraining<F> {
        #[pin]
        inner: F,
        signal: Option<Arc<ConnSignal>>,
    }
}

impl<F, B, E> Future for CloseWhenDraining<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx));
        if let (Ok(res), Some(signal)) = (&mut res, this.signal.as_ref()) {
            if signal.draining() {
                res.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        Poll::Ready(res)
    }
}

/// Every connection this generation has open, so the drain can reach each
/// one and the deadline can shut down even sockets whose I/O an upgrade has
/// handed to user code.
#[derive(Debug, Default)]
struct Sockets {
    next: AtomicU64,
    inner: Mutex<SocketsInner>,
}

#[derive(Debug, Default)]
struct SocketsInner {
    /// The level every connection has been raised to; a connection
    /// registered later starts at it, so none misses the drain.
    level: Level,
    open: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    fd: RawFd,
    signal: Arc<ConnSignal>,
    accepted: Instant,
}

impl Sockets {
    fn track(
        self: &Arc<Self>,
        stream: Stream,
        token: TaskTrackerToken,
    ) -> (Tracked<Stream>, Arc<ConnSignal>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(ConnSignal::default());
        {
            let mut inner = self.lock();
            signal.raise(inner.level);
            let entry = Entry {
                fd: stream.raw_fd(),
                signal: signal.clone(),
                accepted: Instant::now(),
            };
            inner.open.insert(id, entry);
        }
        let io = Tracked {
            guard: SocketGuard {
                id,
                sockets: self.clone(),
                _token: token,
            },
            io: stream,
        };
        (io, signal)
    }

    /// Raises every connection to `level`; at [`Level::Cut`] also shuts
    /// every socket down, which wakes whoever reads or writes it.
    fn raise(&self, level: Level) {
        let mut inner = self.lock();
        inner.level = inner.level.max(level);
        for entry in inner.open.values() {
            entry.cut_or_raise(level);
        }
    }

    /// Cuts the connections that have sent no request within `timeout` of
    /// being accepted; returns how many.
    fn cut_silent(&self, timeout: Duration) -> usize {
        let inner = self.lock();
        let mut cut = 0;
        for entry in inner.open.values() {
            if !entry.signal.seen().contains(Seen::REQUEST)
                && entry.signal.level() < Level::Cut
                && entry.accepted.elapsed() >= timeout
            {
                entry.cut_or_raise(Level::Cut);
                cut += 1;
            }
        }
        cut
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SocketsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entry {
    /// Raises the connection to `level`; at [`Level::Cut`] also shuts
    /// its socket down, which wakes whoever reads or writes it.
    fn cut_or_raise(&self, level: Level) {
        self.signal.raise(level);
        if level >= Level::Cut {
            // The FD is open: it leaves the map (under the lock our caller
            // holds) before its owner closes it.
            let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both);
        }
    }
}

/// Keeps a socket counted (by the task tracker) and listed (for the drain
/// and the deadline) for exactly as long as it is open, wherever hyper or an
/// upgrade moves it.
struct SocketGuard {
    id: u64,
    sockets: Arc<Sockets>,
    _token: TaskTrackerToken,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.sockets.lock().open.remove(&self.id);
    }
}

/// A connection's I/O with its guard. Fields drop in order: the guard first,
/// so the FD leaves the list before it is closed and can be reused.
struct Tracked<IO> {
    guard: SocketGuard,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO> std::fmt::Debug for Tracked<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("id", &self.guard.id)
            .finish_non_exhaustive()
    }
}
