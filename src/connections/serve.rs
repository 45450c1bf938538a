//! Accepting, and serving one connection: the accept loop of a listener,
//! and each connection's task from its TLS handshake (if any) to its end.
//!
//! A connection's task serves it with hyper until the drain reaches it
//! through its [`ConnSignal`]; then (HTTP/1) it waits until the client has
//! had its chance to send a request and been quiet, or (HTTP/2) sends
//! GOAWAY, and lets hyper finish what is in flight, up to the cut.

use std::future::Future;
use std::io;
#[cfg(unix)]
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::either::Either;
use tracing::{debug, error, trace, warn};

use super::conn_signal::{ConnSignal, Level, Seen};
use super::counted_io::{Plain, Tracked};
use super::request::ConnService;
use super::{Listening, Shared, StopAccepting};
use crate::conn_info::ConnInfo;
#[cfg(not(unix))]
use crate::listener::RawFd;
use crate::listener::{is_connection_error, Listener, Stream};
use crate::service::{BoxError, HttpBody, HttpService};

/// How many of the oldest idle connections go when accepting fails for lack
/// of file descriptors: a few more than the one the next client needs, so
/// that the handlers' own files and sockets find some too.
const FD_ROOM: usize = 4;

/// The pause after an accept error that is neither a client's own nor for
/// lack of file descriptors: at first, and at most (it doubles each time).
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts on `listener` until `stop`: see
/// [`Connections::spawn_accept_loop`](super::Connections::spawn_accept_loop).
pub(super) async fn accept_loop<S, B>(
    name: String,
    listener: Arc<Listener>,
    listening: Arc<Listening<S>>,
    stop: Arc<StopAccepting>,
) where
    S: HttpService<B>,
    B: HttpBody,
{
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
                let (guard, signal, spare) =
                    shared
                        .sockets
                        .track(&stream, shared.tracker.token(), listening.tls.is_some());
                let io = Tracked {
                    guard,
                    signal: signal.clone(),
                    io: stream,
                };
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
            Err(e) => {
                if accept_failed(e, &name, shared, &mut backoff, stopped.as_mut()).await {
                    break;
                }
            }
        }
    }
    debug!(addr = %name, "stopped accepting");
}

/// What a failed accept calls for: an error of one client's connection is
/// skipped; out of file descriptors, the oldest idle connections go;
/// anything else waits `backoff`, doubled for the next time. Returns
/// whether accepting stopped meanwhile.
async fn accept_failed(
    e: io::Error,
    name: &str,
    shared: &Shared,
    backoff: &mut Duration,
    mut stopped: Pin<&mut impl Future<Output = ()>>,
) -> bool {
    if is_connection_error(&e) {
        trace!(addr = %name, cause = %e, "accept: skipped");
    } else if is_out_of_descriptors(&e) && shared.sockets.make_room(FD_ROOM, None) > 0 {
        // Out of file descriptors: the oldest idle connections go, so
        // that new clients are served rather than left unanswered.
        warn!(addr = %name, cause = %e, "accept failed; closing the oldest idle connections to make room");
        tokio::select! {
            biased;
            _ = &mut stopped => return true,
            _ = shared.sockets.room() => {}
        }
    } else {
        // EMFILE and friends: retrying at once would spin the CPU.
        error!(addr = %name, cause = %e, backoff = ?backoff, "accept failed; backing off");
        tokio::select! {
            _ = &mut stopped => return true,
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
    }
    false
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
        let conn = shared.builders.serve(io, svc);
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
                    // A connection whose HTTP/2 preface arrives now (it
                    // was still reading its first bytes when the drain
                    // reached it) gets its GOAWAY at once, as any other.
                    r = std::future::poll_fn(|cx| match conn.as_mut().poll(cx) {
                        std::task::Poll::Pending if signal.seen().contains(Seen::HTTP2) => {
                            std::task::Poll::Ready(None)
                        }
                        polled => polled.map(Some),
                    }) => match r {
                        Some(r) => return log_end(r),
                        None => break,
                    },
                    _ = signal.reached(Level::Cut) => return,
                    // Boxed: only a draining connection needs it, and every
                    // connection's future would otherwise be this much larger
                    // (tokio copies the whole future when it spawns the task).
                    _ = Box::pin(tokio::time::sleep(wait)) => {}
                }
                waited_ms =
                    waited_ms.saturating_add(u32::try_from(wait.as_millis()).unwrap_or(u32::MAX));
                graces += 1;
                let Some(next) = next_grace(&signal, fd, shared, waited_ms, graces) else {
                    break;
                };
                wait = next;
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

/// After a grace of an HTTP/1 connection's drain, `waited_ms` into the
/// drain: how long its next grace is, or `None` to close it now. A request
/// still arriving gets a whole grace more, up to a limit; a quiet client,
/// until it has been quiet long enough. `graces`: how many it has had, this
/// one included (for the trace).
fn next_grace(
    signal: &ConnSignal,
    fd: RawFd,
    shared: &Shared,
    waited_ms: u32,
    graces: u32,
) -> Option<Duration> {
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
        return None;
    }
    let quiet = shared.sockets.quiet_for(signal);
    // Read at every grace: a stop may have come since.
    let revisit = if shared.successor.load(Ordering::Relaxed) {
        shared.revisit
    } else {
        Duration::ZERO
    };
    if !arriving && quiet >= revisit {
        return None;
    }
    // A request arriving gets a whole grace more; a quiet client,
    // until it has been quiet long enough.
    let wait = if arriving {
        shared.idle_grace
    } else {
        // Not `clamp`: the idle grace may be under 10 ms (it is at
        // most the stop timeout), and `clamp` panics then.
        revisit
            .saturating_sub(quiet)
            .max(Duration::from_millis(10))
            .min(shared.idle_grace)
    };
    trace!(
        graces,
        arriving,
        ?quiet,
        "the client may be sending; not closing the connection yet"
    );
    Some(wait)
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(e) = result {
        // Clients hanging up mid-request, and idle connections closed by the
        // drain, are part of normal life: debug, not error.
        debug!(cause = %e, "connection ended with an error");
    }
}
