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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

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
use crate::service::{BoxBody, BoxError, BoxFuture, BoxService};

/// How long an HTTP/1 connection may stay quiet after the drain starts before
/// it is closed. Busy clients are told by `Connection: close` well before.
pub(crate) const IDLE_GRACE: Duration = Duration::from_millis(1000);

/// The connections of one generation.
#[derive(Debug)]
pub(crate) struct Connections {
    builder: Arc<auto::Builder<TokioExecutor>>,
    tracker: TaskTracker,
    /// Cancelled when the drain starts.
    draining: CancellationToken,
    /// The same fact as `draining`, as a plain flag for the per-response check.
    draining_flag: Arc<AtomicBool>,
    /// Cancelled at the deadline.
    cut: CancellationToken,
    sockets: Arc<Sockets>,
    idle_grace: Duration,
    first_request_timeout: Duration,
    tls_handshake_timeout: Duration,
}

/// A listener's TLS acceptor, if it serves HTTPS.
#[cfg(feature = "tls")]
pub(crate) type Tls = Option<tokio_rustls::TlsAcceptor>;
/// Without the `tls` feature no listener serves HTTPS.
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = Option<std::convert::Infallible>;

impl Connections {
    pub(crate) fn new(header_read_timeout: Duration, idle_grace: Duration) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        Connections {
            builder: Arc::new(builder),
            tracker: TaskTracker::new(),
            draining: CancellationToken::new(),
            draining_flag: Arc::new(AtomicBool::new(false)),
            cut: CancellationToken::new(),
            sockets: Arc::default(),
            idle_grace,
            first_request_timeout: header_read_timeout,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }

    #[cfg(feature = "tls")]
    pub(crate) fn with_tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.tls_handshake_timeout = timeout;
        self
    }

    /// Accepts on `listener` until the drain starts, serving each connection
    /// with `svc`. The task holds the listener; it is dropped, and with it
    /// this generation's copy of the socket, when accepting stops.
    pub(crate) fn spawn_accept_loop(
        &self,
        name: String,
        listener: Arc<Listener>,
        svc: BoxService,
        tls: Tls,
    ) {
        let ctx = ConnContext {
            builder: self.builder.clone(),
            tracker: self.tracker.clone(),
            draining: self.draining.clone(),
            draining_flag: self.draining_flag.clone(),
            cut: self.cut.clone(),
            sockets: self.sockets.clone(),
            idle_grace: self.idle_grace,
            first_request_timeout: self.first_request_timeout,
            tls_handshake_timeout: self.tls_handshake_timeout,
            tls,
        };
        // The accept loop is tracked like a connection: the drain is not done
        // until it has stopped, so a connection it accepted just as the drain
        // started is counted before the drain can see zero and let the
        // process exit (which would reset that connection).
        self.tracker.spawn(accept_loop(name, listener, svc, ctx));
    }

    /// Connections open now, upgraded ones included.
    pub(crate) fn active(&self) -> usize {
        self.sockets.lock().len()
    }

    /// Stops accepting and starts closing connections.
    pub(crate) fn start_drain(&self) {
        self.draining_flag.store(true, Ordering::Release);
        self.draining.cancel();
        self.tracker.close();
    }

    /// Resolves when every connection is closed (after `start_drain`).
    pub(crate) async fn drained(&self) {
        self.tracker.wait().await
    }

    /// Cuts every connection that is left and waits (briefly) for them to go.
    pub(crate) async fn cut_off(&self) {
        self.cut.cancel();
        self.sockets.shutdown_all();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
    }
}

/// What each connection task shares with its generation.
#[derive(Clone)]
struct ConnContext {
    builder: Arc<auto::Builder<TokioExecutor>>,
    tracker: TaskTracker,
    draining: CancellationToken,
    draining_flag: Arc<AtomicBool>,
    cut: CancellationToken,
    sockets: Arc<Sockets>,
    idle_grace: Duration,
    first_request_timeout: Duration,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls_handshake_timeout: Duration,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls: Tls,
}

async fn accept_loop(name: String, listener: Arc<Listener>, svc: BoxService, ctx: ConnContext) {
    const MIN_BACKOFF: Duration = Duration::from_millis(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let mut backoff = MIN_BACKOFF;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = ctx.draining.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(stream) => {
                backoff = MIN_BACKOFF;
                let io = ctx.sockets.track(stream, ctx.tracker.token());
                tokio::spawn(connection(io, svc.clone(), ctx.clone()));
            }
            Err(e) if is_connection_error(&e) => {
                trace!(addr = %name, cause = %e, "accept: skipped")
            }
            Err(e) => {
                // EMFILE and friends: retrying at once would spin the CPU.
                error!(addr = %name, cause = %e, backoff = ?backoff, "accept failed; backing off");
                tokio::select! {
                    _ = ctx.draining.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    debug!(addr = %name, "stopped accepting");
}

/// One accepted connection, from the TLS handshake (if any) to its end.
async fn connection(io: Tracked<Stream>, svc: BoxService, ctx: ConnContext) {
    #[cfg(feature = "tls")]
    if let Some(acceptor) = &ctx.tls {
        // In the connection's task, never the accept loop: a slow or silent
        // client delays nobody but itself.
        let handshake = crate::tls::handshake(acceptor, io, ctx.tls_handshake_timeout);
        let stream = tokio::select! {
            s = handshake => s,
            _ = ctx.cut.cancelled() => return,
        };
        if let Some(stream) = stream {
            serve_connection(stream, svc, ctx).await;
        }
        return;
    }
    serve_connection(io, svc, ctx).await
}

async fn serve_connection<IO>(io: IO, svc: BoxService, ctx: ConnContext)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let svc = ConnService {
        svc,
        draining: ctx.draining_flag.clone(),
        state: state.clone(),
    };
    let conn = ctx
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);

    // hyper's header-read timeout starts only once the connection knows its
    // protocol, which takes the client's first bytes: a client that sends
    // nothing would hold the connection forever. Bound the wait for the
    // first request with the same setting.
    let first_request = tokio::time::sleep(ctx.first_request_timeout);
    tokio::pin!(first_request);
    let mut waiting_first = true;

    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = &mut first_request, if waiting_first => {
                if !state.has(ConnState::REQUEST) {
                    debug!(timeout = ?ctx.first_request_timeout, "no request on a new connection in time; closing it");
                    return;
                }
                waiting_first = false;
            }
            _ = ctx.draining.cancelled() => {
                if !state.has(ConnState::HTTP2) {
                    tokio::select! {
                        r = conn.as_mut() => return log_end(r),
                        _ = ctx.cut.cancelled() => return,
                        _ = tokio::time::sleep(ctx.idle_grace) => {}
                    }
                }
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => break r,
                    _ = ctx.cut.cancelled() => return,
                }
            }
            _ = ctx.cut.cancelled() => return,
        }
    };
    log_end(result)
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(e) = result {
        // Clients hanging up mid-request, and idle connections closed by the
        // drain, are part of normal life: debug, not error.
        debug!(cause = %e, "connection ended with an error");
    }
}

/// What a connection task learns from its requests.
#[derive(Debug, Default)]
struct ConnState(AtomicU8);

impl ConnState {
    /// At least one request arrived.
    const REQUEST: u8 = 1;
    /// The connection speaks HTTP/2.
    const HTTP2: u8 = 2;

    fn has(&self, flag: u8) -> bool {
        self.0.load(Ordering::Relaxed) & flag != 0
    }
}

/// Wraps the registered service for one connection: notes what the
/// connection is, and marks HTTP/1 responses `Connection: close` once the
/// drain has started.
#[derive(Clone)]
struct ConnService {
    svc: BoxService,
    draining: Arc<AtomicBool>,
    state: Arc<ConnState>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = CloseWhenDraining;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        let flags = if http1 {
            ConnState::REQUEST
        } else {
            ConnState::REQUEST | ConnState::HTTP2
        };
        if self.state.0.load(Ordering::Relaxed) != flags {
            self.state.0.fetch_or(flags, Ordering::Relaxed);
        }
        CloseWhenDraining {
            inner: self.svc.call(req),
            draining: http1.then(|| self.draining.clone()),
        }
    }
}

/// The response future of [`ConnService`].
struct CloseWhenDraining {
    inner: BoxFuture,
    /// `Some` for HTTP/1 requests only: HTTP/2 forbids the header.
    draining: Option<Arc<AtomicBool>>,
}

impl Future for CloseWhenDraining {
    type Output = Result<Response<BoxBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut res = std::task::ready!(self.inner.as_mut().poll(cx))?;
        if let Some(flag) = &self.draining {
            if flag.load(Ordering::Acquire) {
                res.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        Poll::Ready(Ok(res))
    }
}

/// Every socket this generation has open, so the deadline can shut down even
/// those whose I/O has been handed to user code by an upgrade.
#[derive(Debug, Default)]
struct Sockets {
    next: AtomicU64,
    open: Mutex<HashMap<u64, RawFd>>,
}

impl Sockets {
    fn track(self: &Arc<Self>, stream: Stream, token: TaskTrackerToken) -> Tracked<Stream> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, stream.raw_fd());
        Tracked {
            guard: SocketGuard {
                id,
                sockets: self.clone(),
                _token: token,
            },
            io: stream,
        }
    }

    fn shutdown_all(&self) {
        let open = self.lock();
        for fd in open.values() {
            // The FD is open: it leaves the map (under this lock) before its
            // owner closes it. Shutting it down wakes every reader and writer.
            let _ = nix::sys::socket::shutdown(*fd, nix::sys::socket::Shutdown::Both);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, RawFd>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a socket counted (by the task tracker) and listed (for the deadline)
/// for exactly as long as it is open, wherever hyper or an upgrade moves it.
struct SocketGuard {
    id: u64,
    sockets: Arc<Sockets>,
    _token: TaskTrackerToken,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.sockets.lock().remove(&self.id);
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
