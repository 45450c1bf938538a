//! Where a server's generation is in its life, and what it has done: the
//! state its [`Handle`](crate::Handle)s and the sockets of
//! [`endless::sockets`](crate::sockets) watch.
//!
//! One owner changes it: the generation (`generation`), through a few
//! verbs ([`Lifecycle::serving`], [`Lifecycle::begin_drain`],
//! [`Lifecycle::ended`], and the reload verdicts). Everyone else only reads
//! or waits. This is hyper-util's split between the side that triggers a
//! shutdown and the side that watches it, with the reload counters added.
//! The one exception is [`Lifecycle::reload_requested`], which the events
//! call where they classify a request, so that no branch can forget to
//! count one.
//!
//! The counters are the server's, not one process's: each generation hands
//! them to the next at a reload (a section of the state, see `state`), so
//! [`Stats`] counts every reload since the first generation started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::listener::LocalAddr;

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `run` has not served yet.
    Starting,
    /// Accepting connections (again, after a failed successor).
    Serving,
    /// Not accepting: a successor serves, or a stop is under way; since
    /// when.
    Draining(Instant),
    /// `run` has returned, or failed to start.
    Ended,
}

/// The state of one server, shared by its generation and its handles.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    phase: watch::Sender<Phase>,
    listening: watch::Sender<Option<Vec<LocalAddr>>>,
    counters: Mutex<Counters>,
    connections: Mutex<Option<Counter>>,
    /// [`Handle::draining`](crate::Handle::draining) resolves at a random
    /// moment within this window after the drain starts, in milliseconds.
    notice_spread_ms: AtomicU64,
    /// This generation's number.
    generation: u64,
}

/// Counts something on demand (the connections open now).
pub(crate) struct Counter(pub(crate) Box<dyn Fn() -> usize + Send + Sync>);

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counter")
    }
}

/// The reload counters, carried from generation to generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) requested: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) rolled_back: u64,
    pub(crate) last_duration: Option<Duration>,
    pub(crate) last_error: Option<String>,
    /// Drains after a hand-over that have ended, and the connections cut
    /// at a drain's deadline (or by a second stop).
    pub(crate) drains: u64,
    pub(crate) cut: u64,
    /// A predecessor still holds the sockets, ready to take over if this
    /// generation exits (not carried: it is this process's own state).
    pub(crate) in_probation: bool,
}

/// What a server has done over its whole life (every generation since the
/// first), and what this generation is doing now: a snapshot taken by
/// [`Handle::stats`](crate::Handle::stats).
///
/// The reload counters are carried from each generation to the next, so
/// they only ever grow while the server runs, whichever process is serving.
/// A reload counts as succeeded once its new generation has lived through
/// its probation ([`Server::probation`](crate::Server::probation)), and as
/// failed if it never took over or died within it (then also as rolled
/// back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// This generation's number: see [`generation`](crate::generation).
    pub generation: u64,
    /// Reloads asked for, by signal, [`Handle::reload`](crate::Handle::reload),
    /// the control socket or a file change, including those that were
    /// refused or merged into one under way.
    pub reloads_requested: u64,
    /// Reloads whose new generation took over and lived through its
    /// probation.
    pub reloads_succeeded: u64,
    /// Reloads that did not take over (the new generation could not be
    /// spawned, exited, failed its ready check, was not ready in time, or
    /// its re-exec in place failed), or whose new generation died within
    /// its probation.
    pub reloads_failed: u64,
    /// Of the failed reloads, those whose new generation had taken over and
    /// died within its probation, after which its predecessor served again.
    pub reloads_rolled_back: u64,
    /// How long the last finished reload took, from the request to the
    /// verdict.
    pub last_reload_duration: Option<Duration>,
    /// Why the last finished reload failed (`None` if it succeeded).
    pub last_reload_error: Option<String>,
    /// Connections cut, over the life of the server: by a drain's deadline
    /// or a second stop.
    pub connections_cut: u64,
    /// Connections open now, upgraded ones included.
    pub connections: usize,
    /// Whether this generation is draining.
    pub draining: bool,
    /// Whether this generation is still on probation: its predecessor holds
    /// the sockets and serves again if this one exits.
    pub in_probation: bool,
}

impl Lifecycle {
    /// The state of generation `generation` (see `endless::generation`).
    pub(crate) fn new(notice_spread: Duration, generation: u64) -> Lifecycle {
        Lifecycle {
            phase: watch::channel(Phase::Starting).0,
            listening: watch::channel(None).0,
            counters: Mutex::new(Counters::default()),
            connections: Mutex::new(None),
            notice_spread_ms: AtomicU64::new(millis(notice_spread)),
            generation,
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- The owner's verbs ----

    /// Starts from the counters a predecessor handed over.
    pub(crate) fn inherit(&self, counters: Counters) {
        *self.counters() = counters;
        self.publish();
    }

    /// Gives the metrics recorder (feature `metrics`) the counters as they
    /// are now.
    fn publish(&self) {
        #[cfg(feature = "metrics")]
        crate::metrics::publish(&self.counters(), self.generation);
    }

    /// Spreads the drain notice over `spread`.
    pub(crate) fn set_notice_spread(&self, spread: Duration) {
        self.notice_spread_ms
            .store(millis(spread), Ordering::Relaxed);
    }

    /// Accepting on `addrs` (again, after a failed successor), with
    /// `connections` counting what is open.
    pub(crate) fn serving(&self, addrs: Vec<LocalAddr>, connections: Counter) {
        *self.connections.lock().unwrap_or_else(|e| e.into_inner()) = Some(connections);
        self.listening.send_replace(Some(addrs));
        self.phase.send_replace(Phase::Serving);
        sockets_phase().send_replace(false);
    }

    /// Not accepting any more: the drain starts now.
    pub(crate) fn begin_drain(&self) {
        self.phase.send_replace(Phase::Draining(Instant::now()));
        sockets_phase().send_replace(true);
    }

    /// `run` is over (or never served).
    pub(crate) fn ended(&self) {
        self.phase.send_replace(Phase::Ended);
    }

    /// A reload was asked for, whatever becomes of it. Called where
    /// requests are classified (`events`).
    pub(crate) fn reload_requested(&self) {
        self.counters().requested += 1;
        self.publish();
    }

    /// The reload asked for at `since` failed: no new generation took
    /// over.
    pub(crate) fn reload_failed(&self, since: std::time::Instant, error: &crate::Error) {
        let mut c = self.counters();
        c.failed += 1;
        c.last_duration = Some(since.elapsed());
        c.last_error = Some(error.to_string());
        drop(c);
        self.publish();
    }

    /// The new generation, which had taken over, died within its
    /// probation, and this one serves again.
    pub(crate) fn rolled_back(&self, error: &crate::Error) {
        let mut c = self.counters();
        c.failed += 1;
        c.rolled_back += 1;
        c.last_error = Some(error.to_string());
        drop(c);
        self.publish();
    }

    /// The previous generation's drain after its hand-over ended: it took
    /// `took` and cut `cut` connections.
    pub(crate) fn predecessor_drained(&self, took: Duration, cut: u64) {
        let mut c = self.counters();
        c.drains += 1;
        c.cut += cut;
        drop(c);
        #[cfg(feature = "metrics")]
        crate::metrics::drained(took);
        #[cfg(not(feature = "metrics"))]
        let _ = took;
        self.publish();
    }

    /// This generation cut `n` connections (its drain's deadline, a second
    /// stop, or the connections of an abandoned drain).
    pub(crate) fn connections_cut(&self, n: u64) {
        self.counters().cut += n;
        self.publish();
    }

    /// The counters to hand to a new generation that took over at `since`:
    /// its own reload is counted as succeeded there, once its probation is
    /// over ([`Lifecycle::probation_passed`]). If this generation is itself
    /// still on probation, handing over means it did not fail (its
    /// predecessor lets go then), so its own reload counts as succeeded in
    /// what it hands on.
    pub(crate) fn for_successor(&self, since: std::time::Instant) -> Counters {
        let mut c = self.counters().clone();
        if c.in_probation {
            c.succeeded += 1;
        }
        c.last_duration = Some(since.elapsed());
        c.last_error = None;
        c.in_probation = false;
        c
    }

    /// This generation lived through its probation (or needed none): the
    /// reload that started it succeeded.
    pub(crate) fn probation_passed(&self) {
        let mut c = self.counters();
        if c.in_probation {
            c.in_probation = false;
            c.succeeded += 1;
        }
        drop(c);
        self.publish();
    }

    // ---- What the handles see ----

    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub(crate) fn listening(&self) -> watch::Receiver<Option<Vec<LocalAddr>>> {
        self.listening.subscribe()
    }

    pub(crate) fn notice_spread(&self) -> Duration {
        Duration::from_millis(self.notice_spread_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn counters_now(&self) -> Counters {
        self.counters().clone()
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = self.counters_now();
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |count| (count.0)());
        Stats {
            generation: self.generation,
            reloads_requested: c.requested,
            reloads_succeeded: c.succeeded,
            reloads_failed: c.failed,
            reloads_rolled_back: c.rolled_back,
            last_reload_duration: c.last_duration,
            last_reload_error: c.last_error,
            connections_cut: c.cut,
            connections,
            draining: matches!(self.phase(), Phase::Draining(_)),
            in_probation: c.in_probation,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether this process's generation has stopped serving the sockets of
/// `endless::sockets` (`true` while draining). Process-wide, as those
/// sockets are.
pub(crate) fn sockets_phase() -> &'static watch::Sender<bool> {
    static PHASE: OnceLock<watch::Sender<bool>> = OnceLock::new();
    PHASE.get_or_init(|| watch::channel(false).0)
}

impl Counters {
    /// Version byte of the encoding.
    const VERSION: u8 = 2;
    /// The `u64`s of each version.
    const FIELDS: [usize; 2] = [5, 7];

    /// For the state handed to the next generation: little-endian `u64`s
    /// (requested, succeeded, failed, rolled back, last duration in
    /// microseconds or `u64::MAX` for none, drains, cut connections), then
    /// the last error's UTF-8 bytes. Version 1 had the first five.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![Self::VERSION];
        let duration = self.last_duration.map_or(u64::MAX, |d| {
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1)
        });
        for n in [
            self.requested,
            self.succeeded,
            self.failed,
            self.rolled_back,
            duration,
            self.drains,
            self.cut,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        if let Some(e) = &self.last_error {
            out.extend_from_slice(e.as_bytes());
        }
        out
    }

    /// The counters [`encode`](Self::encode) wrote; `None` if the bytes are
    /// not such counters.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Counters> {
        let (&version, rest) = bytes.split_first()?;
        let fields = *Self::FIELDS.get(usize::from(version).checked_sub(1)?)?;
        if rest.len() < fields * 8 {
            return None;
        }
        let n = |i: usize| {
            if i < fields {
                u64::from_le_bytes(rest[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            } else {
                0
            }
        };
        let error = String::from_utf8_lossy(&rest[fields * 8..]).into_owned();
        Some(Counters {
            requested: n(0),
            succeeded: n(1),
            failed: n(2),
            rolled_back: n(3),
            last_duration: (n(4) != u64::MAX).then(|| Duration::from_micros(n(4))),
            last_error: (!error.is_empty()).then_some(error),
            drains: n(5),
            cut: n(6),
            in_probation: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_and_garbage_is_none() {
        let c = Counters {
            requested: 7,
            succeeded: 4,
            failed: 3,
            rolled_back: 1,
            last_duration: Some(Duration::from_millis(1234)),
            last_error: Some("new generation exited: status 2".into()),
            drains: 3,
            cut: 9,
            in_probation: true,
        };
        let back = Counters::decode(&c.encode()).unwrap();
        assert_eq!(back.requested, 7);
        assert_eq!(back.last_error, c.last_error);
        assert_eq!(back.last_duration, c.last_duration);
        assert!(!back.in_probation, "not carried");
        assert_eq!((back.drains, back.cut), (3, 9));
        // What a version-1 generation handed over still reads.
        let mut v1 = vec![1u8];
        for n in [4u64, 3, 1, 0, u64::MAX] {
            v1.extend_from_slice(&n.to_le_bytes());
        }
        let old = Counters::decode(&v1).unwrap();
        assert_eq!((old.requested, old.succeeded, old.drains), (4, 3, 0));
        let none = Counters::default();
        assert_eq!(Counters::decode(&none.encode()).unwrap(), none);
        assert!(Counters::decode(b"").is_none());
        assert!(Counters::decode(&[9; 50]).is_none());
        assert!(Counters::decode(&[1; 20]).is_none());
        assert!(Counters::decode(&[0; 60]).is_none());
    }

    #[test]
    fn a_successor_counts_its_own_success_once_its_probation_is_over() {
        let life = Lifecycle::new(Duration::ZERO, 0);
        life.reload_requested();
        let handed = life.for_successor(std::time::Instant::now());
        let next = Lifecycle::new(Duration::ZERO, 1);
        next.inherit(Counters {
            in_probation: true,
            ..handed
        });
        assert_eq!(next.stats().reloads_succeeded, 0);
        assert!(next.stats().in_probation);
        next.probation_passed();
        next.probation_passed();
        assert_eq!(next.stats().reloads_succeeded, 1);
        assert_eq!(next.stats().reloads_requested, 1);
    }
}
