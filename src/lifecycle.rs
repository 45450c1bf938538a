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

use crate::counters::Counters;
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
    /// It holds the sockets for a successor's probation.
    holding: std::sync::atomic::AtomicBool,
}

/// Counts something on demand (the connections open now).
pub(crate) struct Counter(pub(crate) Box<dyn Fn() -> usize + Send + Sync>);

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counter")
    }
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
            holding: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- The owner's verbs ----

    /// Starts from the counters a predecessor handed over.
    pub(crate) fn inherit(&self, mut counters: Counters) {
        if counters.in_probation {
            let before = counters.last_duration.unwrap_or_default();
            counters.reload_since = std::time::Instant::now().checked_sub(before);
        }
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
        self.phase.send_replace(Phase::Serving);
        sockets_phase().send_replace(false);
        // Last: whoever learns the addresses (`Handle::listening`) may ask
        // for a reload at once, which a starting generation refuses.
        self.listening.send_replace(Some(addrs));
    }

    /// Not accepting any more: the drain starts now.
    pub(crate) fn begin_drain(&self) {
        self.phase.send_replace(Phase::Draining(Instant::now()));
        sockets_phase().send_replace(true);
    }

    /// Holding the sockets for a successor's probation (or not any more).
    pub(crate) fn holding(&self, holding: bool) {
        self.holding.store(holding, Ordering::Relaxed);
    }

    /// Whether this generation should be the service's main process once
    /// its own probation is over: it serves, or it is the fallback of a
    /// successor on probation. (One that let its successor go leaves that
    /// to the successor.)
    pub(crate) fn holds_service(&self) -> bool {
        self.phase() == Phase::Serving || self.holding.load(Ordering::Relaxed)
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
        c.reload_since = None;
        c
    }

    /// This generation lived through its probation (or needed none): the
    /// reload that started it succeeded.
    pub(crate) fn probation_passed(&self) {
        let mut c = self.counters();
        if c.in_probation {
            c.in_probation = false;
            c.succeeded += 1;
            if let Some(since) = c.reload_since.take() {
                c.last_duration = Some(since.elapsed());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Whoever learns the addresses (`Handle::listening`, after which the
    /// fixture prints READY and a test asks for a reload) finds the
    /// generation serving: `Handle::reload` answers `NotRunning` while it
    /// is starting. A thread watching the addresses reads the phase the
    /// moment they appear, 200 times.
    #[test]
    fn the_addresses_are_published_once_the_generation_serves() {
        for _ in 0..200 {
            let life = std::sync::Arc::new(Lifecycle::new(Duration::ZERO, 0));
            let rx = life.listening();
            let watcher = {
                let life = life.clone();
                std::thread::spawn(move || {
                    let deadline = std::time::Instant::now() + Duration::from_secs(5);
                    while rx.borrow().is_none() && std::time::Instant::now() < deadline {
                        std::hint::spin_loop();
                    }
                    life.phase()
                })
            };
            // Let the watcher start spinning first.
            std::thread::sleep(Duration::from_micros(200));
            let addr = LocalAddr::Tcp(([127, 0, 0, 1], 1).into());
            life.serving(vec![addr], Counter(Box::new(|| 0)));
            assert_eq!(watcher.join().unwrap(), Phase::Serving);
        }
    }
}
