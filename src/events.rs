//! The one source of what a generation is asked to do: signals, requests
//! from code (a [`Handle`](crate::Handle), the control socket, a file
//! watcher) and messages from the generation that started this one,
//! classified.
//!
//! Every phase of a generation reads from here, so a request means the
//! same thing wherever it arrives:
//!
//! | arrives                                                | means                 |
//! |--------------------------------------------------------|-----------------------|
//! | a reload signal                                        | [`Event::Reload`] ([`Trigger::Signal`]) |
//! | `Handle::reload`, the control socket, a file change    | [`Event::Reload`] ([`Trigger::Asked`]) |
//! | `reload` from the predecessor (forwarded)              | [`Event::Reload`] ([`Trigger::Forwarded`]) |
//! | a stop signal, `Handle::stop`, `stop` from the predecessor | [`Event::Stop`]   |
//! | `SIGTERM` sent with `kill` by a generation we started  | [`Event::Ready`]      |
//! | `let-go` from the predecessor                          | [`Event::LetGo`]      |
//! | a signal this process sent itself (`SIGPIPE`, `raise`) | nothing (logged)      |
//! | `SIGTERM` when it is not a stop signal                 | nothing (logged)      |
//!
//! Reload requests are counted here, where they are classified
//! ([`Lifecycle::reload_requested`]), so that no phase can forget one.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
#[cfg(unix)]
use crate::link::{Down, Upstream};
/// Without Unix nothing comes from a predecessor.
#[cfg(not(unix))]
type Upstream = std::convert::Infallible;
use crate::signal::{Received, Signal, SignalSet, Signals};

/// How long a generation we started, once gone, is still known by its PID:
/// its `SIGTERM` may still be in the signal pipe when it is reaped. After
/// that the PID may belong to anyone, and its `SIGTERM` means "stop".
const FORGET_AFTER: Duration = Duration::from_secs(10);

/// What code asks of a running server ([`Handle`](crate::Handle), the
/// control socket, the file watcher).
#[derive(Debug)]
pub(crate) enum Command {
    Reload {
        /// Who asks, for the log.
        by: &'static str,
        reply: oneshot::Sender<Result<Reloaded>>,
    },
    Stop,
}

/// Sends [`Command`]s to a server; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Requests(mpsc::UnboundedSender<Command>);

impl Requests {
    /// Asks for a reload and waits for its outcome.
    pub(crate) async fn reload(&self, by: &'static str) -> Result<Reloaded> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Command::Reload { by, reply })
            .map_err(|_| Error::NotRunning)?;
        answer.await.map_err(|_| Error::NotRunning)?
    }

    pub(crate) fn stop(&self) {
        let _ = self.0.send(Command::Stop);
    }
}

/// A channel for [`Command`]s: the sender for handles, the receiver for
/// [`Events`].
pub(crate) fn requests() -> (Requests, mpsc::UnboundedReceiver<Command>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Requests(tx), rx)
}

/// What a reload that took over started: for the log, the control socket
/// and whoever asked.
#[derive(Debug, Clone)]
pub(crate) struct Reloaded {
    pub(crate) pid: u32,
    pub(crate) generation: u64,
    pub(crate) executable: std::path::PathBuf,
    /// Device and inode of the executable it runs.
    pub(crate) identity: String,
    /// It runs the very file this generation runs.
    pub(crate) same_executable: bool,
    pub(crate) probation: Duration,
}

/// Who asked for a reload.
#[derive(Debug)]
pub(crate) enum Trigger {
    Signal(Signal),
    /// Code that waits for the outcome: a handle, the control socket, a
    /// file watcher.
    Asked {
        by: &'static str,
        reply: oneshot::Sender<Result<Reloaded>>,
    },
    /// The generation that started this one passed on a reload request it
    /// received (it no longer serves).
    Forwarded,
    /// A reload signal that arrived while this process drained before its
    /// `keep_pid` re-exec, run once it serves.
    Deferred,
}

impl Trigger {
    /// Answers the code behind this trigger, if any.
    pub(crate) fn answer(self, outcome: Result<Reloaded>) {
        if let Trigger::Asked { reply, .. } = self {
            let _ = reply.send(outcome);
        }
    }

    /// Whether whoever asked waits for an answer (and so is told "busy"
    /// rather than queued).
    pub(crate) fn waits(&self) -> bool {
        matches!(self, Trigger::Asked { .. })
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Signal(s) => write!(f, "{s}"),
            Trigger::Asked { by, .. } => f.write_str(by),
            Trigger::Forwarded => f.write_str("the previous generation"),
            Trigger::Deferred => f.write_str("a reload signal received during the re-exec"),
        }
    }
}

/// A stop request: the signal and its sender if known, or `None, None`
/// for `Handle::stop`; `forwarded` if the predecessor passed it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stop {
    pub(crate) signal: Option<Signal>,
    pub(crate) sender: Option<u32>,
    pub(crate) forwarded: bool,
}

/// What a generation is asked to do.
#[derive(Debug)]
pub(crate) enum Event {
    Reload(Trigger),
    Stop(Stop),
    /// `SIGTERM` (sent with `kill`) from a generation this one started: it
    /// serves.
    Ready(u32),
    /// To a `keep_pid` temporary generation only: what its parent says.
    Upstream(FromParent),
}

/// What the parent of a `keep_pid` temporary generation says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FromParent {
    /// The parent serves again (re-executed, or resumed): drain.
    HandBack,
    /// The parent is gone without handing back (its re-executed image
    /// failed): this generation is all that serves.
    Gone,
}

/// Signals, commands and the predecessor's messages, classified.
#[derive(Debug)]
pub(crate) struct Events {
    signals: Signals,
    set: SignalSet,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    upstream: Option<Upstream>,
    temporary: bool,
    children: Children,
    life: Arc<Lifecycle>,
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
        life: Arc<Lifecycle>,
    ) -> Self {
        Events {
            signals,
            set,
            commands,
            commands_open: true,
            upstream: None,
            temporary: false,
            children: Children::default(),
            life,
        }
    }

    /// Also reads the messages of the generation that started this one.
    /// `temporary`: its messages are a `keep_pid` parent's (see
    /// [`FromParent`]); otherwise they are a predecessor's, whose `let-go`
    /// (or end) ends this generation's probation, handled here.
    #[cfg(unix)]
    pub(crate) fn with_upstream(mut self, upstream: Option<Upstream>, temporary: bool) -> Self {
        self.upstream = upstream;
        self.temporary = temporary;
        self
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
        let event = self.next_uncounted().await;
        if let Event::Reload(_) = event {
            self.life.reload_requested();
        }
        event
    }

    /// The next event if one is waiting now, without waiting.
    pub(crate) fn try_next(&mut self) -> Option<Event> {
        let fut = std::pin::pin!(self.next());
        let mut fut = fut;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(event) => Some(event),
            std::task::Poll::Pending => None,
        }
    }

    async fn next_uncounted(&mut self) -> Event {
        loop {
            let received = tokio::select! {
                r = self.signals.recv() => r,
                c = self.commands.recv(), if self.commands_open => match c {
                    Some(Command::Reload { by, reply }) => return Event::Reload(Trigger::Asked { by, reply }),
                    Some(Command::Stop) => return Event::Stop(Stop { signal: None, sender: None, forwarded: false }),
                    None => {
                        self.commands_open = false;
                        continue;
                    }
                },
                down = next_down(&mut self.upstream) => match down {
                    Some(Down::Reload) => return Event::Reload(Trigger::Forwarded),
                    Some(Down::Stop) => return Event::Stop(Stop { signal: None, sender: None, forwarded: true }),
                    Some(Down::LetGo) if self.temporary => return Event::Upstream(FromParent::HandBack),
                    Some(Down::Drained { ms, cut }) => {
                        self.life.predecessor_drained(Duration::from_millis(ms), cut);
                        continue;
                    }
                    None if self.temporary => {
                        self.upstream = None;
                        #[cfg(unix)]
                        crate::link::close();
                        return Event::Upstream(FromParent::Gone);
                    }
                    Some(Down::LetGo) => {
                        debug!("the previous generation let go of its sockets: probation over");
                        #[cfg(unix)]
                        let ended = self.life.counters_now().in_probation;
                        self.life.probation_passed();
                        #[cfg(unix)]
                        self.settle(ended);
                        continue;
                    }
                    None => {
                        // Gone without a word (it died, or exited after its
                        // drain): it holds nothing for us any more.
                        self.upstream = None;
                        #[cfg(unix)]
                        crate::link::close();
                        if self.life.counters_now().in_probation && self.life.holds_service() {
                            warn!("the previous generation is gone during this one's probation; serving without a fallback");
                            #[cfg(unix)]
                            crate::systemd::main_pid(std::process::id());
                        }
                        self.life.probation_passed();
                        continue;
                    }
                },
            };
            if let Some(event) = self.classify(received) {
                return event;
            }
        }
    }

    /// Our probation is over (`ended`; or there was none, and this
    /// generation named itself when it started serving): the service's main
    /// process is now this one if it serves or holds a successor's
    /// probation, and otherwise already the successor it let go (which said
    /// so itself). Then says so to the predecessor, which waits for it
    /// before it may exit.
    #[cfg(unix)]
    fn settle(&self, ended: bool) {
        if ended && self.life.holds_service() {
            crate::systemd::main_pid(std::process::id());
        }
        if self.life.phase() == crate::lifecycle::Phase::Serving {
            crate::systemd::status(&format!(
                "serving (generation {}, pid {})",
                self.life.stats().generation,
                std::process::id()
            ));
        }
        crate::link::report(crate::link::Up::Settled);
    }

    fn classify(&mut self, r: Received) -> Option<Event> {
        classify(&self.set, &mut self.children, std::process::id(), r)
    }
}

/// The predecessor's next message; never resolves without one.
#[cfg(unix)]
async fn next_down(upstream: &mut Option<Upstream>) -> Option<Down> {
    match upstream {
        Some(up) => up.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_down(_: &mut Option<Upstream>) -> Option<Down> {
    std::future::pending().await
}

/// Without Unix nothing comes from a predecessor; the type only names the
/// messages.
#[cfg(not(unix))]
#[derive(Debug)]
enum Down {
    Reload,
    Stop,
    LetGo,
    Drained { ms: u64, cut: u64 },
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
        Some(Event::Stop(Stop {
            signal: Some(r.signal),
            sender,
            forwarded: false,
        }))
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
            Some(Event::Stop(s)) => format!("stop {:?}", s.signal),
            Some(Event::Reload(t)) => format!("reload {t}"),
            Some(Event::Upstream(m)) => format!("{m:?}"),
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
