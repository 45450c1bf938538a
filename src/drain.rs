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
//! A stop passed on by a predecessor (`stop` on the link) and one that
//! reaches this process directly are counted apart, and the requests made
//! are as many as the larger count: a process manager signals every process
//! of a service, so one request often arrives both ways, in either order.
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
    /// By this stop request.
    Stopped(Stop),
}

impl Why {
    pub(crate) fn is_stop(self) -> bool {
        matches!(self, Why::Stopped(_))
    }
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
    /// Stop requests counted so far, the one that started a stop included:
    /// those that reached this process directly, and those a predecessor
    /// passed on. The same request often arrives both ways (a process
    /// manager signals every process of the service), so the requests made
    /// are as many as the larger count.
    direct: u32,
    forwarded: u32,
    /// `keep_pid`: reload signals that arrive during the drain before the
    /// re-exec, for the new image to run.
    deferred: Option<Trigger>,
    defer_reloads: bool,
    /// Connections cut so far (the deadline, a second stop).
    cut: u64,
    /// The generation's HTTP/3 endpoints, drained with its connections.
    http3: crate::quic::Http3,
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
        let mut drain = Drain {
            why,
            started,
            deadline: started + timeout,
            direct: 0,
            forwarded: 0,
            deferred: None,
            defer_reloads: false,
            cut: 0,
            http3: crate::quic::Http3::default(),
        };
        if let Why::Stopped(stop) = why {
            drain.count(stop);
        }
        drain
    }

    /// Keeps the reload signals that arrive during this drain for later
    /// ([`Drain::take_deferred`]) rather than refusing them: `keep_pid`'s
    /// drain before the re-exec, after which this process serves again.
    pub(crate) fn defer_reloads(&mut self) {
        self.defer_reloads = true;
    }

    /// The reload signal kept during the drain, if any.
    pub(crate) fn take_deferred(&mut self) -> Option<Trigger> {
        self.deferred.take()
    }

    /// A reload request during the drain: refused, or kept for later (see
    /// [`Drain::defer_reloads`]).
    pub(crate) fn on_reload(&mut self, trigger: Trigger) {
        match trigger {
            t if self.defer_reloads && !t.waits() => {
                info!(trigger = %t, "reload requested during the drain before the re-exec; the new image runs it once it serves");
                self.deferred = Some(t);
            }
            t if self.defer_reloads => t.answer(Err(Error::ReloadInProgress)),
            t => refuse_reload(t),
        }
    }

    /// The stop requests made so far.
    fn requests(&self) -> u32 {
        self.direct.max(self.forwarded)
    }

    fn count(&mut self, stop: Stop) {
        if stop.forwarded {
            self.forwarded += 1;
        } else {
            self.direct += 1;
        }
    }

    /// Drains `http3` too (its drain has begun).
    pub(crate) fn with_http3(mut self, http3: crate::quic::Http3) -> Drain {
        self.http3 = http3;
        self
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
        self.cut += (conns.active() + self.http3.open()) as u64;
        self.http3.cut_off();
        conns.cut_off().await;
    }

    /// Whether a stop was asked for (before or during the drain).
    pub(crate) fn stop_requested(&self) -> bool {
        self.requests() > 0
    }

    /// Counts a stop request that arrived during the drain.
    pub(crate) fn on_stop(&mut self, stop: Stop) -> OnStop {
        self.count(stop);
        if self.requests() >= 2 {
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
        let http3 = self.http3.clone();
        let drained = async { tokio::join!(conns.drained(), http3.drained()) };
        tokio::pin!(drained);
        loop {
            tokio::select! {
                _ = &mut drained => {
                    info!("drained; all connections closed");
                    return Ended::Closed;
                }
                _ = &mut deadline => {
                    warn!(connections = conns.active(), "stop timeout reached; cutting off the connections left");
                    self.cut_off(conns).await;
                    return Ended::Deadline;
                }
                event = events.next() => match event {
                    Event::Reload(trigger) => self.on_reload(trigger),
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

#[cfg(test)]
mod tests {
    use super::*;

    const DIRECT: Stop = Stop {
        signal: Some(crate::signal::Signal::SIGTERM),
        sender: None,
        forwarded: false,
    };
    const FORWARDED: Stop = Stop {
        signal: None,
        sender: None,
        forwarded: true,
    };

    /// One request that arrives both ways, in either order, is one; the
    /// operator's second request cuts.
    #[test]
    fn a_request_that_arrives_both_ways_counts_once() {
        let t = Duration::from_secs(5);
        let mut d = Drain::new(Why::Stopped(FORWARDED), t);
        assert_eq!(d.on_stop(DIRECT), OnStop::Calm);
        assert_eq!(d.on_stop(DIRECT), OnStop::CutShort);

        let mut d = Drain::new(Why::Stopped(DIRECT), t);
        assert_eq!(d.on_stop(FORWARDED), OnStop::Calm);
        assert_eq!(d.on_stop(FORWARDED), OnStop::CutShort);

        let mut d = Drain::new(Why::HandedOver, t);
        assert!(!d.stop_requested());
        assert_eq!(d.on_stop(DIRECT), OnStop::Calm);
        assert_eq!(d.on_stop(FORWARDED), OnStop::Calm);
        assert!(d.stop_requested());
        assert_eq!(d.on_stop(DIRECT), OnStop::CutShort);
    }
}
