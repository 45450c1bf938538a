//! Restart policy: when to start the next generation, how to tell that it is
//! ready, and what to do when it is not.
//!
//! Promises:
//! - at most one new generation is starting at a time;
//! - a reload signal (or a request passed on by the previous generation)
//!   that arrives while one is under way is remembered, and runs once the
//!   current attempt is over: after a failure, here; after a success, in
//!   the new generation (the generation passes it on). Always, not only
//!   when the executable changed: a request may be about files this crate
//!   does not know (a configuration, certificates), so only a reload that
//!   starts after it can honour it. Any number of such requests make one
//!   more reload. Code that waits for an answer ([`Handle::reload`], the
//!   control socket) is told [`Error::ReloadInProgress`] instead, and can
//!   ask again;
//! - a new generation that exits, or is not ready within the ready timeout,
//!   is reaped (killed first if needed), and this generation keeps serving
//!   and accepts the next reload; the reason it gave (its `run` error, its
//!   panic, or [`crate::report_start_failure`]) and its exit status are in
//!   the error;
//! - `SIGTERM` from a generation we started means "ready", never "stop";
//!   if it arrives together with the ready timeout, readiness wins.
//!
//! The shape is tableflip's: an idle loop ([`Restarter::serve`]) and one
//! reload attempt ([`Restarter::attempt`]) that owns its child from spawn
//! to verdict.
//!
//! [`Handle::reload`]: crate::Handle::reload

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tracing::{debug, error, info, info_span, warn, Instrument, Span};

use crate::children::Outlived;
use crate::error::{Error, Result};
use crate::events::{Event, Events, Stop, Trigger};
use crate::exe::{self, ExeFile};
use crate::handover::{self, Outgoing};
use crate::lifecycle::Lifecycle;
use crate::link::{self, Link, Up};
use crate::signal::SignalSet;
use crate::succession::Succession;
use crate::systemd;

/// How often, and how long apart, a spawn that fails with ETXTBSY (the
/// binary is still being written) is tried again.
const TEXT_BUSY_RETRIES: u32 = 20;
const TEXT_BUSY_PAUSE: Duration = Duration::from_millis(50);
/// How long to wait, after a new generation exited, for the rest of what it
/// said (the link is at its end then, unless a process it started holds
/// it).
const LAST_WORDS: Duration = Duration::from_millis(500);

/// Why [`Restarter::serve`] returned: the generation must drain now.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A new generation serves.
    HandedOver(Box<Successor>),
    /// A stop request; the new generation that was starting when it came,
    /// if any (told to stop too: it may have accepted connections already,
    /// so this generation outlives it).
    Stop(Stop, Option<Outlived>),
}

/// A new generation that serves, and what came with it.
#[derive(Debug)]
pub(crate) struct Successor {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) link: Link,
    /// The reload request that started it, for the caller to answer once it
    /// drains.
    pub(crate) trigger: Trigger,
    /// When it was asked for.
    pub(crate) since: Instant,
    /// A request that arrived meanwhile, to pass on to it.
    pub(crate) pending: Option<Trigger>,
    /// What it runs: the open executable (exactly the inode it runs, for a
    /// `keep_pid` re-exec in place) and its path.
    pub(crate) exe: ExeFile,
    /// Anything it said before it was ready (a panic caught in a task).
    pub(crate) said: Option<String>,
    /// The reload's span, for what the generation does next (the drain,
    /// the probation).
    pub(crate) span: Span,
}

/// How one reload attempt ended.
enum Attempt {
    HandedOver(Box<Successor>),
    /// No new generation; this one serves on. A request that arrived
    /// meanwhile runs next.
    Failed {
        pending: Option<Trigger>,
    },
    /// A stop, and the new generation that was starting (told to stop).
    Stopped(Stop, Outlived),
}

/// What a new generation is handed, besides the link: the descriptors, and
/// the state made for it at the spawn.
pub(crate) trait Handoff: Sync {
    fn descriptors(&self) -> Vec<Outgoing<'_>>;
    /// The state, for a reload asked for at `since`.
    fn state(&self, since: Instant) -> Vec<(&'static str, Vec<u8>)>;
    /// Made for one spawn: the child's ends of the HTTP/3 pairs, by
    /// registered address (ours are kept, as the successor's).
    fn pairs(&self) -> io::Result<Vec<(String, std::os::fd::OwnedFd)>>;
    /// The spawned generation failed before it served: its pairs go.
    fn spawn_failed(&self);
}

/// The restart policy of one generation.
#[derive(Debug)]
pub(crate) struct Restarter {
    pub(crate) signals: SignalSet,
    pub(crate) ready_timeout: Duration,
    /// How the next generation starts: whether it is temporary (we
    /// re-execute ourselves in place once it serves), or whether we keep
    /// our sockets for its probation.
    pub(crate) succession: Succession,
    pub(crate) life: Arc<Lifecycle>,
}

impl Restarter {
    /// Serves reload requests until this generation must drain.
    /// `pending`: a reload to run first.
    pub(crate) async fn serve(
        &self,
        events: &mut Events,
        handoff: &dyn Handoff,
        mut pending: Option<Trigger>,
    ) -> Outcome {
        loop {
            let trigger = match pending.take() {
                Some(t) => {
                    info!(trigger = %t, "running the reload asked for during the last one");
                    t
                }
                None => match events.next().await {
                    Event::Reload(trigger) => trigger,
                    Event::Stop(stop) => {
                        info!(signal = ?stop.signal, forwarded = stop.forwarded, "stop requested");
                        return Outcome::Stop(stop, None);
                    }
                    Event::Ready(pid) => {
                        debug!(
                            pid,
                            "SIGTERM from a generation no longer waited for; ignored"
                        );
                        continue;
                    }
                    Event::Upstream(message) => {
                        debug!(?message, "message from the parent ignored");
                        continue;
                    }
                },
            };
            // One span per reload: its attempt, and then (in the
            // generation) its drain and probation, read as one tree.
            let span = info_span!("reload", trigger = %trigger);
            let attempt = self.attempt(events, handoff, trigger, span.clone());
            match attempt.instrument(span).await {
                Attempt::HandedOver(successor) => return Outcome::HandedOver(successor),
                Attempt::Stopped(stop, child) => return Outcome::Stop(stop, Some(child)),
                Attempt::Failed { pending: p } => pending = p,
            }
        }
    }

    /// One reload: spawn the next generation and wait for its verdict while
    /// answering everything else.
    async fn attempt(
        &self,
        events: &mut Events,
        handoff: &dyn Handoff,
        trigger: Trigger,
        span: Span,
    ) -> Attempt {
        info!(trigger = %trigger, "reload requested");
        let since = Instant::now();
        systemd::reloading();
        systemd::status("reloading: starting a new generation");
        let spawned = match self.spawn(handoff, since).await {
            Ok(s) => s,
            Err(e) => {
                error!(cause = %e, "reload failed; still serving");
                handoff.spawn_failed();
                self.fail(trigger, since, e);
                return Attempt::Failed { pending: None };
            }
        };
        let Spawned {
            mut child,
            pid,
            mut link,
            exe,
        } = spawned;
        events.started(pid);
        let mut pending = None;
        let mut said: Option<String> = None;
        let mut link_open = true;
        let deadline = tokio::time::sleep(self.ready_timeout);
        tokio::pin!(deadline);
        let failure = loop {
            tokio::select! {
                // Readiness first: a ready signal that arrives with the ready
                // timeout wins.
                biased;
                event = events.next() => match while_starting(event, pid, &mut pending) {
                    Some(Starting::Ready) => {
                        ready(pid, since, &exe);
                        return Attempt::HandedOver(Box::new(Successor { child, pid, link, trigger, since, pending, exe, said, span }));
                    }
                    Some(Starting::Stop(stop)) => {
                        trigger.answer(Err(Error::Draining));
                        // Gracefully: it may already have accepted a connection.
                        let mut starting = Outlived::child(child, Some(link), 0);
                        starting.tell_stop();
                        return Attempt::Stopped(stop, starting);
                    }
                    None => {}
                },
                message = link.next(), if link_open => match message {
                    Some(Up::Failed(text) | Up::Panicked(text)) => said = Some(text),
                    Some(other) => debug!(?other, pid, "message from the starting generation ignored"),
                    None => link_open = false,
                },
                status = child.wait() => {
                    let status = status.unwrap_or_else(|_| {
                        // Only fails if reaped elsewhere: report it gone.
                        std::os::unix::process::ExitStatusExt::from_raw(-1)
                    });
                    let reason = last_words(&mut link, said).await;
                    warn!(pid, %status, reason = reason.as_deref().unwrap_or("(none given)"), "new generation exited before it was ready; still serving");
                    break Error::ChildExited { pid, path: exe.path.clone(), status, reason };
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
        handoff.spawn_failed();
        self.fail(trigger, since, failure);
        Attempt::Failed { pending }
    }

    /// Counts a failed reload and answers whoever asked for it.
    fn fail(&self, trigger: Trigger, since: Instant, failure: Error) {
        systemd::ready();
        systemd::status(&format!(
            "serving (generation {}, pid {}); the last reload failed: {failure}",
            crate::handover::generation(),
            std::process::id()
        ));
        self.life.reload_failed(since, &failure);
        trigger.answer(Err(failure));
    }

    /// Starts the next generation with the listeners, the link, and the
    /// state made for it now.
    async fn spawn(&self, handoff: &dyn Handoff, since: Instant) -> Result<Spawned> {
        let exe = exe::current();
        exe.check_directory()?;
        let blocked = self.signals.handled();
        // What the child is told it is.
        let (temporary, probation) = match self.succession {
            Succession::Spawn { probation } => (false, probation),
            Succession::SpawnThenReexec => (true, false),
        };
        let spawn_error = |source| Error::Spawn {
            path: exe.path.clone(),
            source,
        };
        // Made once per reload, just before the spawn, and kept for the
        // retries; our copy closes when this returns.
        let state = crate::state::prepare(&handoff.state(since));
        let mut tries = 0;
        loop {
            // Opened first: what the child runs is checked against it.
            let file = exe.open().map_err(spawn_error)?;
            let (pending, child_end) = link::pair().map_err(spawn_error)?;
            let mut cmd = exe.command();
            let pairs = handoff.pairs().map_err(spawn_error)?;
            let mut fds = handoff.descriptors();
            fds.push(Outgoing {
                kind: handover::Kind::Link,
                name: "",
                fd: raw(&child_end),
            });
            fds.extend(pairs.iter().map(|(name, fd)| Outgoing {
                kind: handover::Kind::Http3Pair,
                name,
                fd: raw(fd),
            }));
            if let Some(state) = &state {
                fds.push(Outgoing {
                    kind: handover::Kind::State,
                    name: "",
                    fd: raw(state),
                });
            }
            handover::prepare_spawn(&mut cmd, &fds, blocked, temporary, probation)
                .map_err(spawn_error)?;
            let spawned = tokio::process::Command::from(cmd).spawn();
            // The child has its copies; ours would keep the link (and the
            // pairs) from ending.
            drop(child_end);
            drop(pairs);
            match spawned {
                Ok(mut child) => {
                    let pid = child.id().unwrap_or_default();
                    let file = match file.runs_in(pid) {
                        Ok(file) => file,
                        Err(e) => {
                            let _ = child.start_kill();
                            let _ = child.wait().await;
                            return Err(spawn_error(e));
                        }
                    };
                    info!(pid, path = %exe.path.display(), identity = %file.id, cwd = ?exe.cwd, "new generation spawned");
                    let link = pending.open().map_err(spawn_error)?;
                    return Ok(Spawned {
                        child,
                        pid,
                        link,
                        exe: file,
                    });
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

/// What an event means while a new generation starts.
enum Starting {
    /// It serves.
    Ready,
    /// A stop: it was told to stop too.
    Stop(Stop),
}

/// Answers an event that arrives while the new generation `pid` starts: a
/// request that waits is told one is under way; any other is remembered in
/// `pending`; a stop stops the new generation too.
fn while_starting(event: Event, pid: u32, pending: &mut Option<Trigger>) -> Option<Starting> {
    match event {
        Event::Ready(p) if p == pid => return Some(Starting::Ready),
        Event::Ready(p) => debug!(pid = p, "SIGTERM from an abandoned generation ignored"),
        Event::Reload(t) if t.waits() => t.answer(Err(Error::ReloadInProgress)),
        Event::Reload(t) => {
            info!(trigger = %t, pid, "reload requested while one is under way; it runs after this one");
            *pending = Some(t);
        }
        Event::Stop(stop) => {
            info!(signal = ?stop.signal, pid, "stop requested; stopping the generation that was starting");
            return Some(Starting::Stop(stop));
        }
        Event::Upstream(message) => debug!(?message, "message from the parent ignored"),
    }
    None
}

/// Logs that the new generation `pid` serves, and says so if it runs the
/// very file this one runs.
fn ready(pid: u32, since: Instant, exe: &ExeFile) {
    let same = exe.is_running_image();
    info!(pid, elapsed = ?since.elapsed(), path = %exe.path.display(), identity = %exe.id, same_executable = same, "new generation ready; handing over");
    if same {
        warn!(path = %exe.path.display(), identity = %exe.id, "the new generation runs the same executable file as this one: if a new release was deployed, it is not at this path (see the deployment guide on PWD)");
    }
}

/// A child just spawned.
struct Spawned {
    child: Child,
    pid: u32,
    link: Link,
    exe: ExeFile,
}

fn raw(fd: &impl std::os::fd::AsRawFd) -> std::os::fd::RawFd {
    fd.as_raw_fd()
}

/// What a child that exited said last: `said`, or what is still in the
/// link.
async fn last_words(link: &mut Link, said: Option<String>) -> Option<String> {
    let mut said = said;
    let rest = async {
        while let Some(m) = link.next().await {
            if let Up::Failed(t) | Up::Panicked(t) = m {
                said = Some(t);
            }
        }
    };
    let _ = tokio::time::timeout(LAST_WORDS, rest).await;
    said
}

fn is_text_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ETXTBSY)
}
