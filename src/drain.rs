//! The drain of one generation: how long it may take, and what a stop
//! signal means while it runs.
//!
//! A generation drains for one of two reasons, and that decides what its
//! next stop signal means:
//! - it was **stopped** (a stop signal, `Handle::stop`): the next stop
//!   signal is the second one, and cuts the drain short;
//! - it **handed over** to a new generation (or, as a `keep_pid` temporary
//!   generation, back to its parent): it is already stopping, so its first
//!   stop signal changes nothing (process managers signal every process of
//!   a service, the draining one included: systemd's default
//!   `KillMode=control-group`); only a second one cuts short.
//!
//! Either way the deadline is set once, when the drain starts: nothing that
//! arrives later extends it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::connections::Connections;
use crate::error::Error;
use crate::events::{Event, Events, Trigger};
use crate::handle::Shared;

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
    deadline: Instant,
    /// Stop signals (and `Handle::stop` calls) counted so far, the one
    /// that started a stop included.
    stops: u32,
    /// Where the handles learn of the drain.
    shared: Arc<Shared>,
}

impl Drain {
    /// Stops accepting and starts closing `conns`, and tells the handles
    /// ([`Handle::draining`](crate::Handle::draining)); the deadline is
    /// `timeout` from now.
    pub(crate) fn start(
        conns: &Connections,
        why: Why,
        timeout: Duration,
        shared: &Arc<Shared>,
    ) -> Drain {
        conns.start_drain(why == Why::HandedOver);
        shared.set_draining(true);
        info!(connections = conns.active(), ?why, ?timeout, "draining");
        Drain {
            why,
            deadline: Instant::now() + timeout,
            stops: u32::from(why == Why::Stopped),
            shared: shared.clone(),
        }
    }

    pub(crate) fn why(&self) -> Why {
        self.why
    }

    /// Whether a stop was asked for (before or during the drain).
    pub(crate) fn stop_requested(&self) -> bool {
        self.stops > 0
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
                    conns.cut_off().await;
                    return Ended::Deadline;
                }
                event = events.next() => match event {
                    Event::Reload(Trigger::Signal(signal)) => {
                        self.shared.reload_requested();
                        info!(%signal, "draining; reload ignored")
                    }
                    Event::Reload(Trigger::Handle(reply)) => {
                        self.shared.reload_requested();
                        let _ = reply.send(Err(Error::Draining));
                    }
                    Event::Stop(signal, _) => {
                        self.stops += 1;
                        if self.stops >= 2 {
                            warn!(signal = ?signal, connections = conns.active(), "second stop request; cutting off the connections left");
                            conns.cut_off().await;
                            return Ended::CutShort;
                        }
                        // Whoever serves next may be stopping too (systemctl
                        // stop signals every process): idle clients need not
                        // be kept for their next request any more.
                        conns.forget_successor();
                        info!(signal = ?signal, "stop request while draining after a hand-over: already stopping (a second one cuts the drain short)");
                    }
                    Event::Ready(pid) => debug!(pid, "draining; SIGTERM from a former child ignored"),
                },
            }
        }
    }
}
