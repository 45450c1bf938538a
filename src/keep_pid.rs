//! `keep_pid`: a reload that keeps the process ID, by a double hand-over
//! with no master.
//!
//! 1. This process (P) starts a *temporary* generation (T) with the
//!    listeners, as any reload does, and waits until T serves. T proves
//!    what the re-executed image will need: it passes the ready checks, and
//!    binds (then releases) every address the new version adds; P opened
//!    the executable before spawning T and checked that T runs that very
//!    file.
//! 2. P drains its own connections, keeping the listeners (its state for
//!    the next image is made as the drain starts), then re-executes itself
//!    in place ([`reexec`]): same PID, exactly the file T ran (`execveat`
//!    of the file held open, on Linux), the listeners at the same FDs,
//!    the link to T kept, and the PIDs of its other children listed for
//!    the new image to reap.
//! 3. The new image adopts them, binds any address the new version added
//!    (T never keeps one: it would hold it, and P could not), serves, and
//!    tells T to drain over the link ([`after_reexec`]). T drains and exits;
//!    P reaps it, and the children the old image left.
//!
//! Nothing is ever left without a server: if the exec fails, P serves again
//! on its listeners and sends T away; if the new image then fails to start
//! (or dies before it serves), its end of the link closes and T, which
//! still holds the listeners, serves on in its place ([`serve_temporary`]).
//! A stop that arrives while P drains cancels the re-exec and stops T too.
//!
//! There is no probation after the re-exec: the process ID is the service
//! here, so a process manager that follows it sees a dying image and
//! restarts the program.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::signal::SigSet;
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::children::Outlived;
use crate::connections::Connections;
use crate::drain::{Drain, Why};
use crate::error::Error;
use crate::events::{Event, Events, FromParent, Stop, Trigger};
use crate::handover::{ExecFailed, Kind, Origin, Outgoing, Program, Reexec as Prepared};
use crate::lifecycle::Lifecycle;
use crate::link::{Down, Link};
use crate::quic::Http3;
use crate::restart::Successor;

/// What became of P after its temporary generation took over.
#[derive(Debug)]
pub(crate) enum Step {
    /// The exec failed (the error): serve again; the drain is abandoned. A
    /// reload signal that arrived during the drain, to run now.
    Resumed(Error, Drain, Option<Trigger>),
    /// A stop arrived during the drain: no re-exec. The drain goes on
    /// (same deadline) and T was told to stop; P must outlive it.
    Stopping(Drain, Outlived),
}

/// What [`reexec`] works with.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    /// P's connections, drained before the exec.
    pub(crate) conns: &'a Connections,
    /// T, which serves meanwhile.
    pub(crate) successor: Successor,
    /// The listeners and extra descriptors, handed to the new image where
    /// they are.
    pub(crate) outgoing: Vec<(Kind, String, RawFd)>,
    /// The signals the server handles, blocked from the exec until the new
    /// image has installed its handlers.
    pub(crate) blocked: SigSet,
    pub(crate) life: &'a Lifecycle,
    /// The state for the new image, made when the drain started (the
    /// counters in it are made again just before the exec).
    pub(crate) sections: Vec<(&'static str, Vec<u8>)>,
}

/// Step 2: drains P's connections (keeping the listeners), then
/// re-executes this process in place. Returns only if it did not.
pub(crate) async fn reexec(cx: Context<'_>, mut drain: Drain, events: &mut Events) -> Step {
    let Successor {
        child,
        pid: temporary,
        link,
        trigger,
        since,
        exe,
        pending,
        ..
    } = cx.successor;
    info!(
        temporary,
        "temporary generation serves; draining before re-executing in place"
    );
    answer_taken_over(trigger, &exe);
    drain.defer_reloads();
    // A reload signal that came while T started is kept the same way.
    if let Some(t) = pending {
        drain.on_reload(t);
    }
    let ended = drain.wait(cx.conns, events).await;
    if !drain.stop_requested() {
        last_look(events).await;
        stop_pending(events, &mut drain);
    }
    if drain.stop_requested() {
        return stop_instead(temporary, link, drain, child, ended);
    }
    let deferred = drain.take_deferred();
    let mut sections = cx.sections;
    sections.retain(|(name, _)| *name != crate::state::STATS);
    sections.push((crate::state::STATS, cx.life.for_successor(since).encode()));
    let state = crate::state::prepare(&sections);
    let origin = Origin::SelfExec {
        temporary: Some(Pid::from_raw(temporary as i32)),
        reload: deferred.is_some(),
    };
    let failed = match prepare(&cx.outgoing, state.as_ref(), &link, &exe, origin) {
        Ok(p) => {
            info!(path = %exe.path.display(), identity = %exe.id, reload = deferred.is_some(), "re-executing in place");
            p.exec(cx.blocked, || {
                unchanged(&exe) && !stop_pending(events, &mut drain)
            })
        }
        Err(e) => ExecFailed::Exec(e),
    };
    drop(state);
    let source = match failed {
        ExecFailed::Stopped => {
            info!("stop requested just before the re-exec; not re-executing");
            return stop_instead(temporary, link, drain, child, ended);
        }
        ExecFailed::Directory(dir, e) => {
            std::io::Error::new(e.kind(), format!("cannot enter {}: {e}", dir.display()))
        }
        ExecFailed::Exec(e) => e,
    };
    // Still here: the exec failed. Serve again and send the temporary
    // generation away; the PID and the service survive.
    error!(path = %exe.path.display(), cause = %source, "re-executing in place failed; serving again");
    link.send(Down::LetGo);
    let failure = Error::Exec {
        path: exe.path,
        source,
    };
    cx.life.reload_failed(since, &failure);
    // T exits by itself once drained; reap it meanwhile.
    reap_in_background(child);
    events.gone(temporary);
    Step::Resumed(failure, drain, deferred)
}

/// T serves the release this process re-executes into: the reload has
/// taken over, as after a hand-over, and whoever asked hears so now (the
/// exec closes their connection). Should the exec itself fail, this
/// process serves on, and the failure is counted and logged.
fn answer_taken_over(trigger: Trigger, exe: &crate::exe::ExeFile) {
    trigger.answer(Ok(crate::events::Reloaded {
        pid: std::process::id(),
        generation: crate::handover::next_generation(),
        executable: exe.path.clone(),
        identity: exe.id.to_string(),
        same_executable: exe.is_running_image(),
        probation: Duration::ZERO,
    }));
}

/// Everything the re-exec needs, made before the last moment: the
/// descriptors (the listeners and extras, the state, the link to the
/// temporary generation `temporary`), the program (the open file it ran),
/// the arguments, and the children this image leaves.
fn prepare(
    outgoing: &[(Kind, String, RawFd)],
    state: Option<&std::os::fd::OwnedFd>,
    link: &Link,
    exe: &crate::exe::ExeFile,
    origin: Origin,
) -> std::io::Result<Prepared> {
    let Origin::SelfExec {
        temporary: Some(temporary),
        ..
    } = origin
    else {
        return Err(std::io::Error::other(
            "a re-exec names its temporary generation",
        ));
    };
    let current = crate::exe::current();
    let mut fds: Vec<Outgoing<'_>> = outgoing
        .iter()
        .map(|(kind, name, fd)| Outgoing {
            kind: *kind,
            name,
            fd: *fd,
        })
        .collect();
    if let Some(state) = state {
        fds.push(Outgoing {
            kind: Kind::State,
            name: "",
            fd: state.as_raw_fd(),
        });
    }
    fds.push(Outgoing {
        kind: Kind::TemporaryLink,
        name: "",
        fd: link.raw_fd(),
    });
    let program = if cfg!(any(target_os = "linux", target_os = "android")) {
        Program::Fd(exe.file.as_raw_fd())
    } else {
        Program::Path
    };
    let others = children().into_iter().filter(|p| *p != temporary).collect();
    Prepared::prepare(
        &exe.path,
        program,
        &current.args,
        current.cwd.as_deref(),
        &fds,
        origin,
        others,
        crate::handover::next_generation(),
    )
}

/// A stop instead of the re-exec: T stops too, and P outlives it.
fn stop_instead(
    temporary: u32,
    link: Link,
    drain: Drain,
    child: tokio::process::Child,
    ended: crate::drain::Ended,
) -> Step {
    info!(
        temporary,
        ?ended,
        "stop requested; not re-executing, stopping the temporary generation too"
    );
    let mut outlived = Outlived::child(child, Some(link), 0);
    outlived.tell_stop();
    Step::Stopping(drain, outlived)
}

/// Whether the executable is still the one T ran, where the exec goes by
/// path (no `execveat`).
fn unchanged(exe: &crate::exe::ExeFile) -> bool {
    if cfg!(any(target_os = "linux", target_os = "android")) {
        return true;
    }
    let now = crate::handover::FileId::of_path(&exe.path);
    if now != Some(exe.id) {
        warn!(path = %exe.path.display(), "the executable was replaced since the temporary generation started; not re-executing");
        return false;
    }
    true
}

/// Lets the runtime deliver signals that arrived during the drain, so that
/// the check just before the exec sees them.
async fn last_look(_events: &mut Events) {
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Whether a stop request is waiting (looked at without waiting; it is
/// counted in `drain`, and a reload found meanwhile is kept or refused
/// there).
fn stop_pending(events: &mut Events, drain: &mut Drain) -> bool {
    while let Some(event) = events.try_next() {
        match event {
            Event::Stop(stop) => {
                drain.on_stop(stop);
                return true;
            }
            Event::Reload(t) => drain.on_reload(t),
            Event::Ready(_) | Event::Upstream(_) => {}
        }
    }
    false
}

/// Reaps `child` whenever it exits.
fn reap_in_background(mut child: tokio::process::Child) {
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
}

/// This process's children now (Linux: `/proc/self/task/*/children`), to
/// hand to the new image for reaping. Elsewhere none are known: children
/// the program started before a re-exec become the new image's, and are
/// reaped only if the program waits for any child.
fn children() -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut pids: Vec<Pid> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .map(Pid::from_raw)
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_by_key(|p| p.as_raw());
    pids.dedup();
    pids
}

/// Step 3, in the re-executed image once it serves: sends the temporary
/// generation away, and reaps the children the old image left (nobody else
/// can). Returns the temporary generation (our child: the old image started
/// it), which this generation outlives: its requests in flight finish even
/// if this process is PID 1 of a container.
pub(crate) fn after_reexec(temporary: Option<Pid>) -> Option<Outlived> {
    let link =
        crate::handover::take(Kind::TemporaryLink, None).and_then(|i| Link::adopt(i.take()).ok());
    for orphan in crate::handover::orphans() {
        let pid = orphan.as_raw() as u32;
        tokio::spawn(async move {
            let _ = crate::children::reap(pid, None).await;
        });
    }
    let t = temporary?;
    info!(
        pid = t.as_raw(),
        "serving again under the same PID; the temporary generation drains"
    );
    match &link {
        Some(link) => {
            let told = link.send(Down::LetGo);
            tracing::debug!(
                told,
                fd = link.raw_fd(),
                "told the temporary generation to hand back"
            );
            if !told {
                // It must drain and exit either way (HTTP/3 starts after it).
                crate::children::signal_pid(t.as_raw() as u32, nix::sys::signal::Signal::SIGTERM);
            }
        }
        // An older image left no link: tell it by signal.
        None => crate::children::signal_pid(t.as_raw() as u32, nix::sys::signal::Signal::SIGTERM),
    }
    Some(Outlived::reaped(t.as_raw() as u32, link))
}

/// After the re-exec, until the image serves HTTP/3 (once its temporary
/// generation has exited, see `quic`): no reload runs, since a temporary
/// generation started now would get no HTTP/3 pair and read the shared
/// socket beside the one still draining. A reload signal is kept in
/// `carried` (any number make one reload, run once HTTP/3 serves); code
/// that waits for an answer is told [`Error::ReloadInProgress`]. A stop
/// ends the wait: `Some`. The temporary generation is gone within its
/// stop timeout (`stop_timeout`, the same setting); should HTTP/3 still
/// not serve a moment after that, reloads run again rather than never.
pub(crate) async fn until_http3_serves(
    events: &mut Events,
    http3: &Http3,
    carried: &mut Option<Trigger>,
    stop_timeout: Duration,
) -> Option<Stop> {
    if http3.is_started() {
        return None;
    }
    let limit = stop_timeout.saturating_add(Duration::from_secs(5));
    let give_up = tokio::time::sleep(limit);
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            _ = http3.started() => return None,
            _ = &mut give_up => {
                warn!(?limit, "HTTP/3 does not serve again after the re-exec (the temporary generation has not exited); reloads run again");
                return None;
            }
            event = events.next() => match event {
                Event::Reload(t) if t.waits() => t.answer(Err(Error::ReloadInProgress)),
                Event::Reload(t) => {
                    info!(trigger = %t, "reload requested while the temporary generation drains; it runs once HTTP/3 serves again");
                    carried.get_or_insert(t);
                }
                Event::Stop(stop) => return Some(stop),
                Event::Ready(_) | Event::Upstream(_) => {}
            }
        }
    }
}

/// How a temporary generation's service ends.
#[derive(Debug)]
pub(crate) enum Temporary {
    Drain(Why),
    /// The parent is gone without handing back: serve on in its place.
    Orphaned,
}

/// Serves as a temporary generation until the parent hands back, a stop
/// arrives, or the parent is gone.
pub(crate) async fn serve_temporary(events: &mut Events, parent: u32) -> Temporary {
    loop {
        match events.next().await {
            Event::Reload(t) if t.waits() => t.answer(Err(Error::ReloadInProgress)),
            Event::Reload(t) => {
                warn!(trigger = %t, "temporary generation: reload ignored (one is under way)")
            }
            // Our parent serves again: our work is done. A hand-back, not a
            // stop, so that the stop signal a process manager sends to every
            // process of the service right after is taken calmly.
            Event::Upstream(FromParent::HandBack) => {
                info!(parent, "the re-executed generation serves; handing back");
                return Temporary::Drain(Why::HandedOver);
            }
            Event::Upstream(FromParent::Gone) => return Temporary::Orphaned,
            Event::Stop(stop) => {
                info!(signal = ?stop.signal, forwarded = stop.forwarded, "stop requested");
                return Temporary::Drain(Why::Stopped(stop));
            }
            Event::Ready(_) => {}
        }
    }
}
