//! `keep_pid`: a reload that keeps the process ID, by a double hand-over
//! with no master.
//!
//! 1. This process (P) starts a *temporary* generation (T) with the
//!    listeners, as any reload does, and waits until T serves.
//! 2. P drains its own connections, keeping the listeners, then
//!    re-executes itself in place ([`reexec`]): same PID, the binary now on
//!    disk, the listeners at the same FDs.
//! 3. The new image adopts them, binds any address the new version added
//!    (T never binds one: it would hold it, and P could not), serves, and
//!    sends T `SIGTERM` ([`after_reexec`]). T drains and exits; P reaps it,
//!    and nothing else: children the program started itself stay its own.
//!
//! T is never left behind: it exits when its parent is gone
//! ([`serve_temporary`]), so a re-executed image that fails to start does
//! not leave an orphan serving the port. If the exec itself fails, P serves
//! again on its listeners and sends T away.

use std::os::fd::RawFd;
use std::time::Duration;

use nix::sys::signal::Signal as NixSignal;
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use crate::connections::Connections;
use crate::drain::{Drain, Why};
use crate::error::Error;
use crate::events::{Event, Events, Trigger};
use crate::exe;
use crate::handover;
use crate::restart::signal_pid;
use crate::signal::SignalSet;

/// How often a temporary generation checks that its parent is still there.
const PARENT_CHECK: Duration = Duration::from_millis(100);

/// What became of P after its temporary generation took over.
#[derive(Debug)]
pub(crate) enum Reexec {
    /// The exec failed; the listeners serve again (new connections).
    Resumed(Connections),
    /// A stop arrived during the drain: no re-exec. The drain goes on
    /// (same deadline) and T (its PID here) was told to stop; P must
    /// outlive it ([`wait_for_temporary`]).
    Stopping(Drain, u32),
}

/// What [`reexec`] works with.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    /// P's connections, drained before the exec.
    pub(crate) conns: &'a Connections,
    /// T, which serves meanwhile.
    pub(crate) temporary: u32,
    /// Who asked for the reload, answered if the exec fails.
    pub(crate) trigger: Trigger,
    /// The listeners, handed to the new image where they are.
    pub(crate) listeners: &'a [(&'a str, RawFd)],
    pub(crate) signals: &'a SignalSet,
    pub(crate) stop_timeout: Duration,
    pub(crate) shared: &'a std::sync::Arc<crate::handle::Shared>,
    /// When the reload was asked for.
    pub(crate) since: std::time::Instant,
    /// Makes the state handed to the new image.
    pub(crate) handoff: Option<&'a crate::state::Producer>,
}

/// Step 2: drains P's connections (keeping the listeners), then
/// re-executes this process in place. Returns only if it did not;
/// `resume` starts accepting again.
pub(crate) async fn reexec(
    cx: Context<'_>,
    events: &mut Events,
    resume: impl FnOnce() -> Connections,
) -> Reexec {
    let temporary = cx.temporary;
    let mut drain = Drain::start(cx.conns, Why::HandedOver, cx.stop_timeout, cx.shared);
    info!(
        temporary,
        "temporary generation serves; draining before re-executing in place"
    );
    let ended = drain.wait(cx.conns, events).await;
    if drain.stop_requested() {
        info!(
            temporary,
            ?ended,
            "stop requested; not re-executing, stopping the temporary generation too"
        );
        signal_pid(temporary, NixSignal::SIGTERM);
        cx.trigger.answer(Err(Error::Draining));
        return Reexec::Stopping(drain, temporary);
    }
    let exe = exe::current();
    info!(path = %exe.path.display(), cwd = ?exe.cwd, "re-executing in place");
    // Made now, after the drain: the state as this image leaves it.
    let state = crate::state::prepare(cx.handoff);
    let source = handover::exec_in_place(
        &exe.path,
        &exe.args,
        exe.cwd.as_deref(),
        cx.listeners,
        cx.signals.handled(),
        Some(Pid::from_raw(temporary as i32)),
        crate::state::raw(&state),
    );
    drop(state);
    // Still here: the exec failed. Serve again and send the temporary
    // generation away; the PID and the service survive.
    error!(path = %exe.path.display(), cause = %source, "re-executing in place failed; serving again");
    let conns = resume();
    cx.shared.set_draining(false);
    crate::systemd::ready();
    signal_pid(temporary, NixSignal::SIGTERM);
    let failure = Err(Error::Exec {
        path: exe.path,
        source,
    });
    cx.shared.reload_finished(cx.since, &failure);
    cx.trigger.answer(failure);
    Reexec::Resumed(conns)
}

/// Step 3, in the re-executed image once it serves: sends the temporary
/// generation away and reaps it (it is our child: the old image started
/// it). Only it: other children of this process are the program's own.
pub(crate) fn after_reexec(temporary: Option<Pid>) {
    let Some(t) = temporary else { return };
    info!(
        pid = t.as_raw(),
        "serving again under the same PID; stopping the temporary generation"
    );
    signal_pid(t.as_raw() as u32, NixSignal::SIGTERM);
    tokio::spawn(async move {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        // Bounded by its stop timeout, which it enforces itself; polled,
        // because tokio only reaps children it spawned.
        loop {
            match waitpid(t, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => {
                    debug!(pid = t.as_raw(), ?status, "reaped the temporary generation");
                    return;
                }
                // Not (or no longer) our child.
                Err(_) => return,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// P stops while T still drains: P waits for T to exit (up to `timeout`,
/// T's own stop timeout being the same), so that T's requests in flight
/// finish even where P's exit ends everything else (P as PID 1 of a
/// container). `cut`: P's drain was cut short by a second stop, so T is
/// told a second time too.
pub(crate) async fn wait_for_temporary(temporary: u32, cut: bool, timeout: Duration) {
    if cut {
        signal_pid(temporary, NixSignal::SIGTERM);
    }
    info!(
        pid = temporary,
        "waiting for the temporary generation to finish"
    );
    let pid = Pid::from_raw(temporary as i32);
    let waited = tokio::time::timeout(timeout, async {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        loop {
            // Our child: reaped here, or already by tokio (ECHILD).
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match waited {
        Ok(()) => debug!(pid = temporary, "the temporary generation has exited"),
        Err(_) => warn!(
            pid = temporary,
            ?timeout,
            "the temporary generation is still running; stopping anyway"
        ),
    }
}

/// How a temporary generation's service ends.
pub(crate) async fn serve_temporary(events: &mut Events, parent: u32) -> Why {
    let mut check = tokio::time::interval(PARENT_CHECK);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Event::Reload(Trigger::Signal(signal)) => {
                    info!(%signal, "temporary generation: reload ignored (one is under way)")
                }
                Event::Reload(Trigger::Handle(reply)) => {
                    let _ = reply.send(Err(Error::ReloadInProgress));
                }
                // Our parent re-executed itself and serves again: our work is
                // done. A hand-back, not a stop, so that the stop signal a
                // process manager sends to every process of the service
                // right after is taken calmly.
                Event::Stop(_, Some(from)) if from == parent => {
                    info!(parent, "the re-executed generation serves; handing back");
                    return Why::HandedOver;
                }
                Event::Stop(signal, _) => {
                    info!(signal = ?signal, "stop requested");
                    return Why::Stopped;
                }
                Event::Ready(_) => {}
            },
            _ = check.tick() => {
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    warn!(parent, "the generation that started this temporary one is gone; stopping");
                    return Why::Stopped;
                }
            }
        }
    }
}
