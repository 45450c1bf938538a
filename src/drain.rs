//! The drain of one generation: how long it may take, and what a stop
//! request means while it runs.
//!
//! A generation drains for one of two reasons, and that decides what its
//! next stop request means:
//! - it was **stopped** (a stop signal, `Handle::stop`): the next stop
//!   signal is the second one, and cuts the drain short;
//! - it **handed over** to a new generation (or, as a `keep_pid` temporary
//!   generation, back to its parent): it is already stopping, so its first
//!   stop signal changes nothing (process managers signal every process of
//!   a service, the draining one included: systemd's default
//!   `KillMode=control-group`); only a second one cuts short.
//!
//! A stop passed on by a predecessor (`stop` on the link) never counts as
//! the second: it is the same request the process manager made of both.
//!
//! Either way the deadline is set once, when the drain starts: nothing that
//! arrives later extends it. The drain does not know how a restart
//! happens, nor who watches it: the generation starts it and reports it.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::connections::Connections;
use crate::error::Error;
use crate::events::{Event, Events, Stop, Trigger};

/// Why a generation drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    HandedOver,
    Stopped,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every connection closed.
    Closed,
    /// The stop timeout passed; the connections left were cut.
    Deadline,
    /// A stop signal beyond the first cut the connections left.
    CutShort,
}

/// A drain under way.
#[derive(Debug)]
pub(crate) struct Drain {
    why: Why,
    started: Instant,
    deadline: Instant,
    /// Stop requests counted so far, the one that started a stop included.
    stops: u32,
    /// Connections cut so far (the deadline, a second stop).
    cut: u64,
}

/// What a stop request does to a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnStop {
    /// Nothing more: the drain goes on to its deadline.
    Calm,
    /// The second one: cut the connections left now.
    CutShort,
}

impl Drain {
    /// A drain for `why`, whose deadline is `timeout` from now. The caller
    /// has told the connections (`Connections::start_drain`).
    pub(crate) fn new(why: Why, timeout: Duration) -> Drain {
        let started = Instant::now();
        Drain {
            why,
            started,
            deadline: started + timeout,
            stops: u32::from(why == Why::Stopped),
            cut: 0,
        }
    }

    pub(crate) fn why(&self) -> Why {
        self.why
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// How long it has run.
    pub(crate) fn took(&self) -> Duration {
        self.started.elapsed()
    }

    /// Connections it cut.
    pub(crate) fn cut(&self) -> u64 {
        self.cut
    }

    /// Cuts every connection left, counting them.
    pub(crate) async fn cut_off(&mut self, conns: &Connections) {
        self.cut += conns.active() as u64;
        conns.cut_off().await;
    }

    /// Whether a stop was asked for (before or during the drain).
    pub(crate) fn stop_requested(&self) -> bool {
        self.stops > 0
    }

    /// Counts a stop request that arrived during the drain.
    pub(crate) fn on_stop(&mut self, stop: Stop) -> OnStop {
        if stop.forwarded && self.stops > 0 {
            return OnStop::Calm;
        }
        self.stops += 1;
        if self.stops >= 2 {
            OnStop::CutShort
        } else {
            OnStop::Calm
        }
    }

    /// Waits until `conns` are closed, the deadline passes (the rest is cut)
    /// or a second stop arrives (the rest is cut at once), while refusing
    /// reloads.
    pub(crate) async fn wait(&mut self, conns: &Connections, events: &mut Events) -> Ended {
        let deadline = tokio::time::sleep_until(self.deadline);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = conns.drained() => {
                    info!("drained; all connections closed");
                    return Ended::Closed;
                }
                _ = &mut deadline => {
                    warn!(connections = conns.active(), "stop timeout reached; cutting off the connections left");
                    self.cut_off(conns).await;
                    return Ended::Deadline;
                }
                event = events.next() => match event {
                    Event::Reload(trigger) => refuse_reload(trigger),
                    Event::Stop(stop) => {
                        if self.on_stop(stop) == OnStop::CutShort {
                            warn!(signal = ?stop.signal, connections = conns.active(), "second stop request; cutting off the connections left");
                            self.cut_off(conns).await;
                            return Ended::CutShort;
                        }
                        // Whoever serves next may be stopping too (systemctl
                        // stop signals every process): idle clients need not
                        // be kept for their next request any more.
                        conns.forget_successor();
                        info!(signal = ?stop.signal, "stop request while draining after a hand-over: already stopping (a second one cuts the drain short)");
                    }
                    Event::Ready(pid) => debug!(pid, "draining; SIGTERM from a former child ignored"),
                    Event::Upstream(message) => debug!(?message, "draining; message from the predecessor ignored"),
                },
            }
        }
    }
}

/// A draining generation starts no new one: says so to whoever asked.
pub(crate) fn refuse_reload(trigger: Trigger) {
    match trigger {
        Trigger::Asked { .. } => trigger.answer(Err(Error::Draining)),
        other => {
            warn!(trigger = %other, "reload requested of a draining generation; ignored (send it to the generation that serves)")
        }
    }
}
