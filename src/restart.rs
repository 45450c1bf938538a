//! Restart policy: when to start the next generation, how to tell that it is
//! ready, and what to do when it is not.
//!
//! Promises:
//! - at most one new generation is starting at a time; reload requests that
//!   arrive meanwhile are coalesced (signals) or refused (code);
//! - a new generation that exits, or is not ready within the ready timeout,
//!   is reaped (killed first if needed), and this generation keeps serving
//!   and accepts the next reload;
//! - `SIGTERM` from a generation we started means "ready", never "stop";
//!   if it arrives together with the ready timeout, readiness wins.
//!
//! The shape is tableflip's: an idle loop ([`Restarter::serve`]) and one
//! reload attempt ([`Restarter::attempt`]) that owns its child from spawn
//! to verdict.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};
use crate::events::{Event, Events, Trigger};
use crate::exe;
use crate::handle::Shared;
use crate::handover;
use crate::report::Reader;
use crate::signal::SignalSet;
use crate::systemd;

/// How often, and how long apart, a spawn that fails with ETXTBSY (the
/// binary is still being written) is tried again.
const TEXT_BUSY_RETRIES: u32 = 20;
const TEXT_BUSY_PAUSE: Duration = Duration::from_millis(50);

/// Why [`Restarter::serve`] returned: the generation must drain now.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A new generation serves: `pid`, and the `Handle::reload` call that
    /// asked for it, if any, for the caller to answer; `since`: when it was
    /// asked for.
    HandedOver {
        pid: u32,
        trigger: Trigger,
        since: Instant,
    },
    /// A stop signal (or `Handle::stop`); also the parent's `SIGTERM`
    /// to a temporary generation (`keep_pid`), or its parent gone.
    Stop,
}

/// How one reload attempt ended.
enum Attempt {
    HandedOver {
        pid: u32,
        trigger: Trigger,
        since: Instant,
    },
    /// No new generation; this one serves on.
    Failed,
    Stopped,
}

/// The restart policy of one generation.
#[derive(Debug)]
pub(crate) struct Restarter {
    signals: SignalSet,
    ready_timeout: Duration,
    /// The next generation is temporary: we re-execute ourselves in place
    /// once it serves (`keep_pid`).
    next_is_temporary: bool,
    /// Where the reloads are counted.
    shared: Arc<Shared>,
    /// Makes the state handed to the next generation.
    handoff: Option<crate::state::Producer>,
}

impl Restarter {
    pub(crate) fn new(
        signals: SignalSet,
        ready_timeout: Duration,
        next_is_temporary: bool,
        shared: Arc<Shared>,
        handoff: Option<crate::state::Producer>,
    ) -> Self {
        Restarter {
            signals,
            ready_timeout,
            next_is_temporary,
            shared,
            handoff,
        }
    }

    /// Serves reload requests until this generation must drain.
    pub(crate) async fn serve(&self, events: &mut Events, listeners: &[(&str, RawFd)]) -> Outcome {
        loop {
            match events.next().await {
                Event::Reload(trigger) => match self.attempt(events, listeners, trigger).await {
                    Attempt::HandedOver {
                        pid,
                        trigger,
                        since,
                    } => {
                        return Outcome::HandedOver {
                            pid,
                            trigger,
                            since,
                        }
                    }
                    Attempt::Stopped => return Outcome::Stop,
                    Attempt::Failed => {}
                },
                Event::Stop(signal, _) => {
                    info!(signal = ?signal, "stop requested");
                    return Outcome::Stop;
                }
                Event::Ready(pid) => {
                    debug!(
                        pid,
                        "SIGTERM from a generation no longer waited for; ignored"
                    )
                }
            }
        }
    }

    /// One reload: spawn the next generation and wait for its verdict while
    /// answering everything else.
    async fn attempt(
        &self,
        events: &mut Events,
        listeners: &[(&str, RawFd)],
        trigger: Trigger,
    ) -> Attempt {
        match &trigger {
            Trigger::Signal(signal) => info!(%signal, "reload requested"),
            Trigger::Handle(_) => info!(by = "handle", "reload requested"),
        }
        let since = Instant::now();
        self.shared.reload_requested();
        systemd::reloading();
        let (mut child, pid, report) = match self.spawn(listeners).await {
            Ok(child) => child,
            Err(e) => {
                error!(cause = %e, "reload failed; still serving");
                systemd::ready();
                self.fail(trigger, since, e);
                return Attempt::Failed;
            }
        };
        events.started(pid);
        let deadline = tokio::time::sleep(self.ready_timeout);
        tokio::pin!(deadline);
        let failure = loop {
            tokio::select! {
                // Readiness first: a ready signal that arrives with the ready
                // timeout wins.
                biased;
                event = events.next() => match event {
                    Event::Ready(p) if p == pid => {
                        info!(pid, elapsed = ?since.elapsed(), "new generation ready; handing over");
                        // With keep_pid the verdict comes after the re-exec.
                        if !self.next_is_temporary {
                            self.shared.reload_finished(since, &Ok(()));
                        }
                        // Not ours to wait for any more: dropping the handle
                        // leaves it running.
                        return Attempt::HandedOver { pid, trigger, since };
                    }
                    Event::Ready(p) => debug!(pid = p, "SIGTERM from an abandoned generation ignored"),
                    Event::Reload(Trigger::Signal(signal)) => {
                        self.shared.reload_requested();
                        info!(%signal, pid, "reload already under way; request coalesced")
                    }
                    Event::Reload(Trigger::Handle(reply)) => {
                        self.shared.reload_requested();
                        let _ = reply.send(Err(Error::ReloadInProgress));
                    }
                    Event::Stop(signal, _) => {
                        // Gracefully: it may already have accepted a connection.
                        info!(signal = ?signal, pid, "stop requested; stopping the generation that was starting");
                        signal_pid(pid, nix::sys::signal::Signal::SIGTERM);
                        trigger.answer(Err(Error::Draining));
                        return Attempt::Stopped;
                    }
                },
                status = child.wait() => {
                    let status = status.unwrap_or_else(|_| {
                        // Only fails if reaped elsewhere: report it gone.
                        std::os::unix::process::ExitStatusExt::from_raw(-1)
                    });
                    let reason = report.message().await;
                    warn!(pid, %status, reason = reason.as_deref().unwrap_or("(none given)"), "new generation exited before it was ready; still serving");
                    break Error::ChildExited { pid, path: exe::current().path, status, reason };
                }
                _ = &mut deadline => {
                    warn!(pid, timeout = ?self.ready_timeout, "new generation not ready in time; killing it, still serving");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    break Error::ReadyTimeout { pid, timeout: self.ready_timeout };
                }
            }
        };
        events.gone(pid);
        systemd::ready();
        self.fail(trigger, since, failure);
        Attempt::Failed
    }

    /// Counts a failed reload and answers whoever asked for it.
    fn fail(&self, trigger: Trigger, since: Instant, failure: Error) {
        let failure = Err(failure);
        self.shared.reload_finished(since, &failure);
        trigger.answer(failure);
    }

    /// Starts the next generation, with a pipe on which it can say why it
    /// failed, if it does, and the state handed to it.
    async fn spawn(&self, listeners: &[(&str, RawFd)]) -> Result<(Child, u32, Reader)> {
        let exe = exe::current();
        let blocked = self.signals.handled();
        let spawn_error = |source| Error::Spawn {
            path: exe.path.clone(),
            source,
        };
        // Made once per reload, just before the spawn, and kept for the
        // retries; our copy closes when this returns.
        let state = crate::state::prepare(self.handoff.as_ref());
        let mut tries = 0;
        loop {
            let (reader, writer) = Reader::pipe().map_err(spawn_error)?;
            let mut cmd = exe.command();
            let report = Some(writer.as_raw_fd());
            handover::pass_listeners(
                &mut cmd,
                listeners,
                blocked,
                self.next_is_temporary,
                report,
                crate::state::raw(&state),
            )
            .map_err(spawn_error)?;
            let spawned = tokio::process::Command::from(cmd).spawn();
            // The child has its copy; ours would keep the pipe from ending.
            drop(writer);
            match spawned {
                Ok(child) => {
                    let pid = child.id().unwrap_or_default();
                    info!(pid, path = %exe.path.display(), cwd = ?exe.cwd, "new generation spawned");
                    return Ok((child, pid, reader));
                }
                Err(e) if is_text_busy(&e) && tries < TEXT_BUSY_RETRIES => {
                    tries += 1;
                    debug!(path = %exe.path.display(), "executable busy (being written?); retrying");
                    tokio::time::sleep(TEXT_BUSY_PAUSE).await;
                }
                Err(source) => return Err(spawn_error(source)),
            }
        }
    }
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub(crate) fn signal_pid(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

fn is_text_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ETXTBSY)
}
