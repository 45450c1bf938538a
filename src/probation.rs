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
//! Letting go tells systemd that the successor is the main process now,
//! tells the successor (`let-go`), and drops the link; the caller then
//! drops its copies of the sockets. Meanwhile this generation's own drain
//! goes on, and its connections are cut at its deadline as usual.

use std::time::Duration;

use nix::unistd::Pid;
use tokio::process::Child;
use tracing::{debug, info, warn};

use crate::connections::Connections;
use crate::drain::{Drain, OnStop};
use crate::error::{Error, Result};
use crate::events::{Event, Events, Trigger};
use crate::link::{Down, Link, Up};
use crate::restart::{signal_pid, Successor};
use crate::systemd;

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

/// A generation this one waits for before it exits.
#[derive(Debug)]
pub(crate) enum Outlived {
    /// Our child, with its handle.
    Child(Child),
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
                    let_go(pid, &link);
                    return Held::LetGo(link);
                }
                Some(Heard::Stopping) => {
                    info!(pid, "the new generation is stopping; not serving again, waiting for it to finish");
                    return Held::Stopping(Outlived::Child(child));
                }
                Some(Heard::Gone) => link_open = false,
                None => {}
            },
            _ = &mut until => {
                info!(pid, ?window, "the new generation lived through its probation; letting go");
                let_go(pid, &link);
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
                    if second {
                        signal_pid(pid, nix::sys::signal::Signal::SIGTERM);
                    }
                    return Held::Stopping(Outlived::Child(child));
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

/// The probation is over: the successor is the service's main process now.
fn let_go(pid: u32, link: &Link) {
    systemd::main_pid(pid);
    link.send(Down::LetGo);
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
            Verdict::Stopping => Held::Stopping(Outlived::Child(child)),
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

/// Waits for `outlived` to exit (up to `timeout`, its own stop timeout
/// being about the same), so that its requests in flight finish even where
/// our exit ends everything else (PID 1 of a container, a service manager
/// that waits for its main process only). `cut`: our drain was cut short by
/// a second stop, so it is told a second time too.
pub(crate) async fn outlive(outlived: Outlived, cut: bool, timeout: Duration) {
    let Outlived::Child(child) = &outlived;
    let pid = child.id().unwrap_or_default();
    if cut {
        signal_pid(pid, nix::sys::signal::Signal::SIGTERM);
    }
    info!(pid, "waiting for the other generation to finish");
    let waited = tokio::time::timeout(timeout, wait(outlived)).await;
    match waited {
        Ok(()) => debug!(pid, "the other generation has exited"),
        Err(_) => warn!(
            pid,
            ?timeout,
            "the other generation is still running; stopping anyway"
        ),
    }
}

async fn wait(outlived: Outlived) {
    let Outlived::Child(mut child) = outlived;
    let _ = child.wait().await;
}

/// Waits for our child `pid` to exit and reaps it, polling (tokio only
/// reaps children it spawned); gives up after `limit`, if any. `Ok(false)`:
/// not (or no longer) our child.
pub(crate) async fn reap(pid: u32, limit: Option<Duration>) -> Result<bool> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let pid = Pid::from_raw(pid as i32);
    let started = tokio::time::Instant::now();
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => {
                debug!(pid = pid.as_raw(), ?status, "reaped");
                return Ok(true);
            }
            Err(_) => return Ok(false),
        }
        if limit.is_some_and(|l| started.elapsed() >= l) {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
