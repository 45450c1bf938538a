//! The one source of what a generation is asked to do: signals and
//! [`Handle`](crate::Handle) commands, classified.
//!
//! Both the restart policy (while serving) and the drain read from here, so
//! a signal means the same thing wherever it arrives:
//!
//! | arrives                                             | means            |
//! |-----------------------------------------------------|------------------|
//! | a reload signal, `Handle::reload`                   | [`Event::Reload`] |
//! | a stop signal, `Handle::stop`                   | [`Event::Stop`]   |
//! | `SIGTERM` sent with `kill` by a generation we started | [`Event::Ready`] |
//! | a signal this process sent itself (`SIGPIPE`, `raise`) | nothing (logged) |
//! | `SIGTERM` when it is not a stop signal              | nothing (logged) |

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::error::Result;
use crate::handle::Command;
use crate::signal::{Received, Signal, SignalSet, Signals};

/// How long a generation we started, once gone, is still known by its PID:
/// its `SIGTERM` may still be in the signal pipe when it is reaped. After
/// that the PID may belong to anyone, and its `SIGTERM` means "stop".
const FORGET_AFTER: Duration = Duration::from_secs(10);

/// Who asked for a reload.
#[derive(Debug)]
pub(crate) enum Trigger {
    Signal(Signal),
    /// `Handle::reload`, which waits for the outcome.
    Handle(oneshot::Sender<Result<()>>),
}

impl Trigger {
    /// Answers the `Handle::reload` call behind this trigger, if any.
    pub(crate) fn answer(self, outcome: Result<()>) {
        if let Trigger::Handle(reply) = self {
            let _ = reply.send(outcome);
        }
    }
}

/// What a generation is asked to do.
#[derive(Debug)]
pub(crate) enum Event {
    Reload(Trigger),
    /// A stop signal (named, with its sender's PID if known), or
    /// `Handle::stop` (`None, None`).
    Stop(Option<Signal>, Option<u32>),
    /// `SIGTERM` (sent with `kill`) from a generation this one started: it
    /// serves.
    Ready(u32),
}

/// Signals and commands, classified.
#[derive(Debug)]
pub(crate) struct Events {
    signals: Signals,
    set: SignalSet,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    children: Children,
}

/// Generations this one started, and when each was found gone.
#[derive(Debug, Default)]
struct Children(Vec<(u32, Option<Instant>)>);

impl Children {
    /// Whether `pid` is one of them (or was, until [`FORGET_AFTER`] ago).
    fn contains(&mut self, pid: u32, now: Instant) -> bool {
        self.0
            .retain(|(_, gone)| gone.is_none_or(|t| now.duration_since(t) < FORGET_AFTER));
        self.0.iter().any(|(p, _)| *p == pid)
    }
}

impl Events {
    pub(crate) fn new(
        signals: Signals,
        set: SignalSet,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Events {
            signals,
            set,
            commands,
            commands_open: true,
            children: Children::default(),
        }
    }

    /// `pid` is a generation we started: its `SIGTERM` means "ready".
    pub(crate) fn started(&mut self, pid: u32) {
        self.children.0.push((pid, None));
    }

    /// `pid` has been reaped; soon its PID means nothing to us any more.
    pub(crate) fn gone(&mut self, pid: u32) {
        for (p, gone) in &mut self.children.0 {
            if *p == pid && gone.is_none() {
                *gone = Some(Instant::now());
            }
        }
    }

    /// The next event. Cancellation safe: nothing is lost if the future is
    /// dropped before it resolves.
    pub(crate) async fn next(&mut self) -> Event {
        loop {
            let received = tokio::select! {
                r = self.signals.recv() => r,
                c = self.commands.recv(), if self.commands_open => match c {
                    Some(Command::Reload(reply)) => return Event::Reload(Trigger::Handle(reply)),
                    Some(Command::Stop) => return Event::Stop(None, None),
                    None => {
                        self.commands_open = false;
                        continue;
                    }
                },
            };
            if let Some(event) = self.classify(received) {
                return event;
            }
        }
    }

    fn classify(&mut self, r: Received) -> Option<Event> {
        classify(&self.set, &mut self.children, std::process::id(), r)
    }
}

fn classify(set: &SignalSet, children: &mut Children, me: u32, r: Received) -> Option<Event> {
    let sender = r.sender.and_then(|p| u32::try_from(p).ok());
    if sender == Some(me) {
        // SIGPIPE from a write to a closed pipe, `raise`, or our own `kill`:
        // none is a request from outside.
        debug!(signal = %r.signal, "signal sent by this process itself; ignored");
        return None;
    }
    if r.signal == Signal::SIGTERM && r.by_kill {
        if let Some(pid) = sender.filter(|&pid| children.contains(pid, Instant::now())) {
            return Some(Event::Ready(pid));
        }
    }
    if set.is_reload(r.signal) {
        Some(Event::Reload(Trigger::Signal(r.signal)))
    } else if set.is_stop(r.signal) {
        Some(Event::Stop(Some(r.signal), sender))
    } else {
        warn!(signal = %r.signal, sender = ?r.sender, "signal is not a stop signal here; ignored");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(signal: Signal, sender: Option<i32>, by_kill: bool) -> Received {
        Received {
            signal,
            sender,
            by_kill,
        }
    }

    fn name(e: Option<Event>) -> String {
        match e {
            None => "none".into(),
            Some(Event::Ready(pid)) => format!("ready {pid}"),
            Some(Event::Stop(s, _)) => format!("stop {s:?}"),
            Some(Event::Reload(Trigger::Signal(s))) => format!("reload {s}"),
            Some(Event::Reload(Trigger::Handle(_))) => "reload handle".into(),
        }
    }

    #[test]
    fn sigterm_from_a_child_by_kill_means_ready() {
        let set = SignalSet::default();
        let mut children = Children(vec![(41, None), (42, None)]);
        let mut c = |r| name(classify(&set, &mut children, 7, r));
        assert_eq!(c(received(Signal::SIGTERM, Some(42), true)), "ready 42");
        // Any generation we started: the attempt decides if it is the one.
        assert_eq!(c(received(Signal::SIGTERM, Some(41), true)), "ready 41");
        // From anyone else, or queued with sigqueue (which may name any
        // sender), SIGTERM is a stop.
        assert_eq!(
            c(received(Signal::SIGTERM, Some(9), true)),
            "stop Some(SIGTERM)"
        );
        assert_eq!(
            c(received(Signal::SIGTERM, Some(42), false)),
            "stop Some(SIGTERM)"
        );
        assert_eq!(
            c(received(Signal::SIGTERM, None, false)),
            "stop Some(SIGTERM)"
        );
        assert_eq!(c(received(Signal::SIGHUP, Some(42), true)), "reload SIGHUP");
        // Signals this process sent itself (SIGPIPE, raise) are no requests.
        assert_eq!(c(received(Signal::SIGHUP, Some(7), true)), "none");
        assert_eq!(c(received(Signal::SIGTERM, Some(7), false)), "none");
    }

    #[test]
    fn gone_generations_are_forgotten() {
        let t0 = Instant::now();
        let mut children = Children(vec![(41, Some(t0)), (42, None)]);
        assert!(children.contains(41, t0 + Duration::from_secs(1)));
        assert!(!children.contains(41, t0 + FORGET_AFTER));
        assert_eq!(children.0.len(), 1, "the gone one is dropped");
        assert!(children.contains(42, t0 + FORGET_AFTER * 100));
    }

    #[test]
    fn sigterm_that_is_not_a_stop_signal_is_ignored() {
        let set = SignalSet {
            reload: vec![Signal::SIGHUP],
            stop: vec![Signal::SIGINT],
        };
        assert_eq!(
            name(classify(
                &set,
                &mut Children::default(),
                7,
                received(Signal::SIGTERM, Some(9), true)
            )),
            "none"
        );
    }
}
