//! The generation's open sockets ([`Sockets`]), and the sweeps over them.
//!
//! Every accepted connection is listed here, with its signal and its
//! socket, for exactly as long as it is open ([`SocketGuard`]). From this
//! list the drain tells every connection (spread out after a hand-over),
//! the deadline shuts down even the sockets an upgrade handed to user code,
//! the connection cap and a lack of file descriptors close the oldest idle
//! connections, and one sweep now and then ([`Sockets::cut_idle`]) enforces
//! the header read timeout and the HTTP/2 idle timeout, rather than a timer
//! per request.

#[cfg(unix)]
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slab::Slab;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::debug;

use super::conn_signal::{ConnSignal, Level, Seen};
#[cfg(not(unix))]
use crate::listener::RawFd;
use crate::listener::Stream;

/// Bytes an HTTP/2 connection must have written since the last sweep to
/// count as sending: more than its answers to a client's PINGs (17 bytes
/// each) and window updates, less than a slow reader takes.
const HTTP2_ACTIVE_BYTES: u64 = 1024;

/// Every connection this generation has open, so the drain can reach each
/// one and the deadline can shut down even sockets whose I/O an upgrade has
/// handed to user code.
#[derive(Debug)]
pub(super) struct Sockets {
    inner: Mutex<SocketsInner>,
    /// What [`ConnSignal`]'s `active_ms` counts from.
    epoch: Instant,
    /// Told when a connection opens while the sweeper sleeps (it sleeps
    /// while there is none: an idle server wakes up for nothing).
    pub(super) opened: tokio::sync::Notify,
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
pub(super) struct Timeouts {
    pub(super) http1: Duration,
    pub(super) http2: Duration,
    pub(super) goaway: Duration,
}

/// What one sweep did: connections cut for their request head, idle HTTP/2
/// connections sent a GOAWAY, and ones cut after theirs.
#[derive(Debug, Default)]
pub(super) struct Swept {
    pub(super) cut: usize,
    pub(super) goaway: usize,
    pub(super) unanswered: usize,
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
    /// counted above the TLS layer, by [`Plain`](super::counted_io::Plain)).
    /// Returns the guard that keeps it listed, its signal and its order of
    /// arrival.
    pub(super) fn track(
        self: &Arc<Self>,
        stream: &Stream,
        token: TaskTrackerToken,
        tls: bool,
    ) -> (SocketGuard, Arc<ConnSignal>, u64) {
        // No clock read per connection: the sweeper's first sight of it
        // counts instead (see `ActiveMs`).
        let signal = Arc::new(ConnSignal::new(!tls));
        #[cfg(feature = "metrics")]
        crate::metrics::connection_opened();
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
        let guard = SocketGuard {
            id,
            sockets: self.clone(),
            _token: token,
        };
        (guard, signal, seq)
    }

    /// Raises every connection to `level`; at [`Level::Cut`] also shuts
    /// every socket down, which wakes whoever reads or writes it.
    pub(super) fn raise(&self, level: Level) {
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
    pub(super) fn raise_spread(&self, level: Level, spacing: Duration, max: Duration) {
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
    pub(super) fn cut_idle(&self, timeouts: &Timeouts) -> Swept {
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
    pub(super) fn over(&self, max: usize) -> bool {
        self.count.load(Ordering::Relaxed) > max
    }

    /// Cuts up to `n` idle connections, those that have waited longest for
    /// a request first, so that new clients can be accepted; returns how
    /// many. Connections with a request in progress, a response being sent
    /// or an upgrade are never taken, nor the one numbered `spare` (the
    /// newcomer that room is made for). Only at the cap, or out of file
    /// descriptors: a walk over every connection.
    pub(super) fn make_room(&self, n: usize, spare: Option<u64>) -> usize {
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
    pub(super) async fn room(&self) {
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
    pub(super) fn fall_asleep(&self) -> bool {
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
    pub(super) fn quiet_for(&self, signal: &ConnSignal) -> Duration {
        let active = signal.active_ms.0.load(Ordering::Relaxed);
        // Both ends are rounded down to the millisecond, so their difference
        // can be up to 1 ms more than the truth: take it off.
        let ms = self.millis(Instant::now()).saturating_sub(active);
        Duration::from_millis(ms.saturating_sub(1))
    }

    /// Connections open now, upgraded ones included.
    pub(super) fn open(&self) -> usize {
        self.lock().open.len()
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
pub(super) struct SocketGuard {
    pub(super) id: usize,
    sockets: Arc<Sockets>,
    _token: TaskTrackerToken,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        crate::metrics::connection_closed();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
