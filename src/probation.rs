//! Probation: after a hand-over the old generation holds its sockets for a
//! while, not accepting, and serves again if the new generation dies.
//!
//! [`hold`] owns the old generation from the hand-over to one of three
//! verdicts ([`Held`]), watching four things at once:
//!
//! | what happens                                   | verdict                     |
//! |------------------------------------------------|-----------------------------|
//! | the successor exits, for any reason, without having said `stopping` or `handed-over` | [`Held::Failed`]: serve again |
//! | the successor says `handed-over` (a newer generation serves) | [`Held::LetGo`] |
//! | the successor says `stopping` (it was stopped) | [`Held::Stopping`]           |
//! | the window passes                              | [`Held::LetGo`]              |
//! | a stop reaches this generation                 | passed on; [`Held::Stopping`] |
//! | a reload reaches this generation               | passed on to the successor  |
//!
//! Letting go tells the successor (`let-go`), which makes itself the
//! service's main process if it still serves or holds a probation of its
//! own (otherwise its own successor already has), and waits for it to say
//! so (`settled`); the caller then drops its copies of the sockets. Each
//! generation names only itself the main process, when it knows that it
//! should, so a chain of reloads with probations of different lengths never
//! leaves the service manager following a process that is about to exit. Meanwhile this generation's own drain
//! goes on, and its connections are cut at its deadline as usual.

use std::time::Duration;

use tokio::process::Child;
use tracing::{debug, info, warn};

use crate::children::Outlived;
use crate::connections::Connections;
use crate::drain::{Drain, OnStop};
use crate::error::Error;
use crate::events::{Event, Events, Trigger};
use crate::link::{Down, Link, Up};
use crate::restart::Successor;

/// How long a generation that lets go waits for its successor to say who
/// the main process is.
const SETTLE: Duration = Duration::from_secs(2);

/// How a probation ended.
#[derive(Debug)]
pub(crate) enum Held {
    /// The successor lived through it, or handed over itself: let go. The
    /// link to it, to tell it how the drain ended.
    LetGo(Link),
    /// The successor died: serve again.
    Failed(Error),
    /// A stop: the successor drains too; this generation exits after it.
    Stopping(Outlived),
}

/// Holds the sockets for `successor`'s probation of `window`, while the
/// drain of this generation's own connections goes on.
pub(crate) async fn hold(
    events: &mut Events,
    successor: Successor,
    window: Duration,
    drain: &mut Drain,
    conns: &Connections,
) -> Held {
    let Successor {
        mut child,
        pid,
        mut link,
        said,
        ..
    } = successor;
    if window.is_zero() {
        // No probation: the new generation told the service manager itself
        // that it is the main process.
        link.send(Down::LetGo);
        return Held::LetGo(link);
    }
    info!(
        pid,
        ?window,
        "new generation on probation; holding the sockets to serve again if it fails"
    );
    let mut words = Words {
        said,
        ..Words::default()
    };
    let mut link_open = true;
    let mut cut = false;
    let until = tokio::time::sleep(window);
    let deadline = tokio::time::sleep_until(drain.deadline());
    tokio::pin!(until, deadline);
    loop {
        tokio::select! {
            status = child.wait() => {
                words.listen(&mut link).await;
                return died(child, link, pid, status, window, words);
            }
            message = link.next(), if link_open => match words.heard(message) {
                Some(Heard::HandedOver(next)) => {
                    info!(pid, next, "the new generation handed over to a newer one; letting go");
                    let_go(pid, &mut link).await;
                    return Held::LetGo(link);
                }
                Some(Heard::Stopping) => {
                    info!(pid, "the new generation is stopping; not serving again, waiting for it to finish");
                    return Held::Stopping(Outlived::child(child, Some(link), 0));
                }
                Some(Heard::Gone) => link_open = false,
                None => {}
            },
            _ = &mut until => {
                info!(pid, ?window, "the new generation lived through its probation; letting go");
                let_go(pid, &mut link).await;
                return Held::LetGo(link);
            }
            _ = &mut deadline, if !cut => {
                cut = true;
                warn!(connections = conns.active(), "stop timeout reached; cutting off the connections left");
                drain.cut_off(conns).await;
            }
            event = events.next() => {
                if let Some(stop) = on_event(event, &link, pid) {
                    let second = drain.on_stop(stop) == OnStop::CutShort;
                    let mut outlived = Outlived::child(child, Some(link), 1);
                    if second {
                        outlived.tell_stop();
                    }
                    return Held::Stopping(outlived);
                }
            }
        }
    }
}

/// The successor exited: a failure, unless it said it handed over or was
/// stopping.
fn died(
    child: Child,
    link: Link,
    pid: u32,
    status: std::io::Result<std::process::ExitStatus>,
    window: Duration,
    words: Words,
) -> Held {
    if let Some(verdict) = words.verdict() {
        return verdict.with(child, link);
    }
    let status = status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(-1));
    let error = Error::SuccessorDied {
        pid,
        status,
        window,
        reason: words.said,
    };
    warn!(pid, %status, reason = %error, "the new generation died within its probation; serving again");
    Held::Failed(error)
}

/// An event during the probation: a reload is passed on; a stop is passed
/// on and returned (it ends the probation).
fn on_event(event: Event, link: &Link, pid: u32) -> Option<crate::events::Stop> {
    match event {
        Event::Reload(trigger) => pass_on_reload(trigger, link, pid),
        Event::Stop(stop) => {
            info!(signal = ?stop.signal, pid, "stop requested during the new generation's probation; passing it on");
            link.send(Down::Stop);
            return Some(stop);
        }
        Event::Ready(p) => debug!(pid = p, "SIGTERM from a former child ignored"),
        Event::Upstream(message) => debug!(?message, "message from the parent ignored"),
    }
    None
}

/// A reload asked of a generation on probation goes to the one that
/// serves.
fn pass_on_reload(trigger: Trigger, link: &Link, pid: u32) {
    match trigger {
        t @ Trigger::Asked { .. } => t.answer(Err(Error::Draining)),
        t => {
            let told = link.send(Down::Reload);
            info!(trigger = %t, pid, told, "reload requested during the new generation's probation; passed on to it");
        }
    }
}

/// The probation is over: tells the successor, which then makes itself the
/// service's main process if it serves or holds a probation of its own (it
/// alone knows which: it may have handed over meanwhile), and waits until
/// it has (briefly: it answers at once unless it is stuck), so that this
/// generation never exits while the service manager still takes it for the
/// main process.
async fn let_go(pid: u32, link: &mut Link) {
    link.send(Down::LetGo);
    let settled = async {
        while let Some(message) = link.next().await {
            if message == Up::Settled {
                return;
            }
        }
    };
    if tokio::time::timeout(SETTLE, settled).await.is_err() {
        warn!(pid, timeout = ?SETTLE, "the new generation did not confirm the end of its probation");
    }
}

/// What the successor said on the link.
#[derive(Debug, Default)]
struct Words {
    said: Option<String>,
    handed_over: Option<u32>,
    stopping: bool,
}

enum Heard {
    HandedOver(u32),
    Stopping,
    Gone,
}

/// A verdict reached from words alone, before the successor's exit is
/// taken as a failure.
enum Verdict {
    LetGo,
    Stopping,
}

impl Verdict {
    fn with(self, child: Child, link: Link) -> Held {
        match self {
            Verdict::LetGo => Held::LetGo(link),
            Verdict::Stopping => Held::Stopping(Outlived::child(child, Some(link), 0)),
        }
    }
}

impl Words {
    fn heard(&mut self, message: Option<Up>) -> Option<Heard> {
        match message {
            Some(Up::Failed(t) | Up::Panicked(t)) => {
                self.said = Some(t);
                None
            }
            Some(Up::HandedOver(next)) => {
                self.handed_over = Some(next);
                Some(Heard::HandedOver(next))
            }
            Some(Up::Stopping) => {
                self.stopping = true;
                Some(Heard::Stopping)
            }
            Some(Up::Settled) => None,
            None => Some(Heard::Gone),
        }
    }

    /// Reads what is left on the link (briefly: it is at its end once the
    /// child is gone).
    async fn listen(&mut self, link: &mut Link) {
        let rest = async {
            while let Some(m) = link.next().await {
                self.heard(Some(m));
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), rest).await;
    }

    /// A successor that exited after handing over, or after a stop, has
    /// not failed.
    fn verdict(&self) -> Option<Verdict> {
        if self.handed_over.is_some() {
            Some(Verdict::LetGo)
        } else if self.stopping {
            Some(Verdict::Stopping)
        } else {
            None
        }
    }
}
