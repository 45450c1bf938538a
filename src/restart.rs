//! Restart policy: when to start the next generation, how to tell that it is
//! ready, and what to do when it is not.
//!
//! Promises:
//! - at most one new generation is starting at a time; reload requests that
//!   arrive meanwhile are coalesced (signals) or refused (code);
//! - a new generation that exits, or is not ready within the ready timeout,
//!   is reaped (killed first if needed), and this generation keeps serving
//!   and accepts the next reload;
//! - `SIGTERM` from a generation we started means "ready", never "stop".

use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};
use crate::handle::Command;
use crate::handover;
use crate::signal::{Received, SignalSet, Signals};
use crate::systemd;

/// How often, and how long apart, a spawn that fails with ETXTBSY (the
/// binary is still being written) is tried again.
const TEXT_BUSY_RETRIES: u32 = 20;
const TEXT_BUSY_PAUSE: Duration = Duration::from_millis(50);

/// The program to start as the next generation, resolved at start-up.
#[derive(Debug)]
pub(crate) struct Exe {
    path: PathBuf,
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
}

static EXE: OnceLock<Exe> = OnceLock::new();

impl Exe {
    /// The path this program was started from, made absolute, so that a
    /// binary replaced on disk is what the next generation runs. (On Linux
    /// `/proc/self/exe` names the old, deleted inode after a replacement.)
    pub(crate) fn get() -> &'static Exe {
        EXE.get_or_init(|| {
            let mut args = std::env::args_os();
            let argv0 = args.next().unwrap_or_default();
            let cwd = std::env::current_dir().ok();
            let path = resolve(&argv0, cwd.as_deref(), std::env::var_os("PATH"))
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_else(|| PathBuf::from(&argv0));
            Exe {
                path,
                args: args.collect(),
                cwd,
            }
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn args(&self) -> &[OsString] {
        &self.args
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.path);
        cmd.args(&self.args);
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd
    }
}

/// Resolves `argv0` the way the shell that started us did.
fn resolve(argv0: &OsString, cwd: Option<&Path>, path_var: Option<OsString>) -> Option<PathBuf> {
    let p = Path::new(argv0);
    if argv0.is_empty() {
        return None;
    }
    if p.is_absolute() {
        return Some(p.to_path_buf());
    }
    if p.components().count() > 1 {
        return cwd.map(|cwd| cwd.join(p));
    }
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&path_var?)
        .map(|dir| dir.join(p))
        .find(|c| {
            c.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .map(|c| {
            if c.is_absolute() {
                c
            } else {
                cwd.map(|d| d.join(&c)).unwrap_or(c)
            }
        })
}

/// What a signal means to this generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meaning {
    Reload(Signal),
    Stop(Signal),
    /// `SIGTERM` from the generation we are waiting for.
    Ready(u32),
    /// `SIGTERM` from a generation we gave up on, or that already took over.
    Stale(u32),
    /// A `SIGTERM` from elsewhere while `SIGTERM` is not a stop signal.
    Ignored(Signal),
}

/// Why [`Restarter::serve`] returned: the generation must drain now.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A new generation is serving: `pid`, and the `Handle::reload` call
    /// that asked for it, if any, for the caller to answer.
    HandedOver {
        pid: u32,
        waiter: Option<oneshot::Sender<Result<()>>>,
    },
    /// A stop signal, or `Handle::shutdown`.
    Stop,
}

/// A new generation that has not reported ready yet.
#[derive(Debug)]
struct Starting {
    child: Child,
    pid: u32,
    since: Instant,
    waiter: Option<oneshot::Sender<Result<()>>>,
}

/// The restart policy of one generation.
#[derive(Debug)]
pub(crate) struct Restarter {
    signals: SignalSet,
    ready_timeout: Duration,
    /// The next generation is temporary: we re-execute ourselves in place
    /// once it serves (`keep_pid`).
    keep_pid: bool,
    /// We are such a temporary generation: we start none.
    temporary: bool,
    /// Every PID this generation started.
    children: Vec<u32>,
}

impl Restarter {
    pub(crate) fn new(signals: SignalSet, ready_timeout: Duration) -> Self {
        Restarter {
            signals,
            ready_timeout,
            keep_pid: false,
            temporary: false,
            children: Vec::new(),
        }
    }

    /// Sets the `keep_pid` mode, and whether this generation is a temporary one.
    pub(crate) fn keep_pid(mut self, keep_pid: bool, temporary: bool) -> Self {
        self.keep_pid = keep_pid;
        self.temporary = temporary;
        self
    }

    pub(crate) fn classify(&self, r: Received, starting: Option<u32>) -> Meaning {
        if r.signal == Signal::SIGTERM {
            if let Some(pid) = r.sender.and_then(|p| u32::try_from(p).ok()) {
                if Some(pid) == starting {
                    return Meaning::Ready(pid);
                }
                if self.children.contains(&pid) {
                    return Meaning::Stale(pid);
                }
            }
        }
        if self.signals.is_reload(r.signal) {
            Meaning::Reload(r.signal)
        } else if self.signals.is_stop(r.signal) {
            Meaning::Stop(r.signal)
        } else {
            Meaning::Ignored(r.signal)
        }
    }

    /// Serves reload requests until this generation must drain.
    pub(crate) async fn serve(
        &mut self,
        signals: &mut Signals,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        listeners: &[(&str, RawFd)],
    ) -> Outcome {
        let mut starting: Option<Starting> = None;
        let mut commands_open = true;
        loop {
            let event = {
                let deadline = starting.as_ref().map(|s| s.since + self.ready_timeout);
                tokio::select! {
                    r = signals.recv() => Event::Signal(r),
                    c = commands.recv(), if commands_open => Event::Command(c),
                    status = wait_child(&mut starting) => Event::Exited(status),
                    _ = sleep_until(deadline) => Event::ReadyTimeout,
                }
            };
            let reload_waiter = match event {
                Event::Signal(r) => match self.classify(r, starting.as_ref().map(|s| s.pid)) {
                    Meaning::Reload(signal) if self.temporary => {
                        info!(%signal, "temporary generation: reload ignored (one is under way)");
                        continue;
                    }
                    Meaning::Reload(signal) => {
                        if let Some(s) = &starting {
                            info!(%signal, pid = s.pid, "reload already under way; request coalesced");
                            continue;
                        }
                        info!(%signal, "reload requested");
                        None
                    }
                    Meaning::Stop(signal) => {
                        info!(%signal, "stop requested");
                        self.abandon(starting.take(), Error::Draining);
                        return Outcome::Stop;
                    }
                    Meaning::Ready(pid) => {
                        let s = starting
                            .take()
                            .expect("Ready implies a starting generation");
                        info!(pid, elapsed = ?s.since.elapsed(), "new generation ready; handing over");
                        // The child is not ours to wait for any more; dropping
                        // the handle leaves it running (tokio reaps it if it
                        // exits while we are still here).
                        return Outcome::HandedOver {
                            pid,
                            waiter: s.waiter,
                        };
                    }
                    Meaning::Stale(pid) => {
                        debug!(pid, "SIGTERM from an abandoned generation ignored");
                        continue;
                    }
                    Meaning::Ignored(signal) => {
                        warn!(%signal, "signal is not a stop signal here; ignored");
                        continue;
                    }
                },
                Event::Command(Some(Command::Reload(tx))) => {
                    if starting.is_some() || self.temporary {
                        let _ = tx.send(Err(Error::ReloadInProgress));
                        continue;
                    }
                    info!("reload requested by handle");
                    Some(tx)
                }
                Event::Command(Some(Command::Shutdown)) => {
                    info!("stop requested by handle");
                    self.abandon(starting.take(), Error::Draining);
                    return Outcome::Stop;
                }
                Event::Command(None) => {
                    commands_open = false;
                    continue;
                }
                Event::Exited(status) => {
                    let s = starting
                        .take()
                        .expect("Exited implies a starting generation");
                    warn!(pid = s.pid, %status, "new generation exited before it was ready; still serving");
                    systemd::ready();
                    if let Some(w) = s.waiter {
                        let _ = w.send(Err(Error::ChildExited { pid: s.pid, status }));
                    }
                    continue;
                }
                Event::ReadyTimeout => {
                    let mut s = starting
                        .take()
                        .expect("ReadyTimeout implies a starting generation");
                    warn!(pid = s.pid, timeout = ?self.ready_timeout, "new generation not ready in time; killing it, still serving");
                    let _ = s.child.start_kill();
                    let _ = s.child.wait().await;
                    systemd::ready();
                    if let Some(w) = s.waiter {
                        let _ = w.send(Err(Error::ReadyTimeout {
                            pid: s.pid,
                            timeout: self.ready_timeout,
                        }));
                    }
                    continue;
                }
            };
            systemd::reloading();
            match self.spawn(listeners).await {
                Ok(child) => {
                    let pid = child.id().unwrap_or_default();
                    info!(pid, path = %Exe::get().path.display(), "new generation spawned");
                    self.children.push(pid);
                    starting = Some(Starting {
                        child,
                        pid,
                        since: Instant::now(),
                        waiter: reload_waiter,
                    });
                }
                Err(e) => {
                    error!(cause = %e, "reload failed; still serving");
                    systemd::ready();
                    if let Some(w) = reload_waiter {
                        let _ = w.send(Err(e));
                    }
                }
            }
        }
    }

    /// A stop arrived while a new generation was starting: it is asked to
    /// stop too (gracefully: it may already have accepted a connection).
    fn abandon(&self, starting: Option<Starting>, why: Error) {
        if let Some(s) = starting {
            info!(pid = s.pid, "stopping the generation that was starting");
            if let Ok(pid) = i32::try_from(s.pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
            }
            if let Some(w) = s.waiter {
                let _ = w.send(Err(why));
            }
        }
    }

    async fn spawn(&self, listeners: &[(&str, RawFd)]) -> Result<Child> {
        let exe = Exe::get();
        let blocked: SigSet = self.signals.handled();
        let mut tries = 0;
        loop {
            let mut cmd = exe.command();
            handover::pass_listeners(&mut cmd, listeners, blocked, self.keep_pid);
            match tokio::process::Command::from(cmd).spawn() {
                Ok(child) => return Ok(child),
                Err(e) if is_text_busy(&e) && tries < TEXT_BUSY_RETRIES => {
                    tries += 1;
                    debug!(path = %exe.path.display(), "executable busy (being written?); retrying");
                    tokio::time::sleep(TEXT_BUSY_PAUSE).await;
                }
                Err(source) => {
                    return Err(Error::Spawn {
                        path: exe.path.clone(),
                        source,
                    })
                }
            }
        }
    }
}

/// Reaps `pids`, children this process was left with by the image it
/// replaced (which tokio does not know of), as they exit. A process that
/// re-executed itself in place (and a PID 1) must, or they stay zombies.
pub(crate) fn reap_leftovers(pids: Vec<nix::unistd::Pid>) {
    if pids.is_empty() {
        return;
    }
    tokio::spawn(async move {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let mut pids = pids;
        while !pids.is_empty() {
            pids.retain(|pid| match waitpid(*pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => true,
                Ok(status) => {
                    debug!(
                        pid = pid.as_raw(),
                        ?status,
                        "reaped a child left from before the re-exec"
                    );
                    false
                }
                // Not (or no longer) our child.
                Err(_) => false,
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// Our children that exist now (Linux: from /proc), before this image has
/// started any: after an in-place re-exec, they are the old image's.
pub(crate) fn current_children() -> Vec<nix::unistd::Pid> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .map(nix::unistd::Pid::from_raw),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

enum Event {
    Signal(Received),
    Command(Option<Command>),
    Exited(ExitStatus),
    ReadyTimeout,
}

fn is_text_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::ETXTBSY)
}

async fn wait_child(starting: &mut Option<Starting>) -> ExitStatus {
    match starting {
        Some(s) => match s.child.wait().await {
            Ok(status) => status,
            // `wait` only fails if the child was already reaped elsewhere;
            // report it as gone rather than wait forever.
            Err(_) => std::os::unix::process::ExitStatusExt::from_raw(-1),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_resolution() {
        let cwd = Path::new("/srv/app");
        assert_eq!(
            resolve(&"/usr/bin/x".into(), Some(cwd), None),
            Some("/usr/bin/x".into())
        );
        assert_eq!(
            resolve(&"./bin/x".into(), Some(cwd), None),
            Some("/srv/app/./bin/x".into())
        );
        assert_eq!(resolve(&"".into(), Some(cwd), None), None);
        // A bare name is looked up in PATH, like the shell did.
        assert_eq!(
            resolve(&"sh".into(), Some(cwd), Some("/nonexistent:/bin".into())),
            Some("/bin/sh".into())
        );
        assert_eq!(
            resolve(
                &"no-such-program-xyz".into(),
                Some(cwd),
                Some("/bin".into())
            ),
            None
        );
    }

    fn received(signal: Signal, sender: Option<i32>) -> Received {
        Received { signal, sender }
    }

    #[test]
    fn sigterm_from_the_starting_child_means_ready() {
        let mut r = Restarter::new(SignalSet::default(), Duration::from_secs(1));
        r.children.push(41);
        r.children.push(42);
        assert_eq!(
            r.classify(received(Signal::SIGTERM, Some(42)), Some(42)),
            Meaning::Ready(42)
        );
        assert_eq!(
            r.classify(received(Signal::SIGTERM, Some(41)), Some(42)),
            Meaning::Stale(41)
        );
        assert_eq!(
            r.classify(received(Signal::SIGTERM, Some(7)), Some(42)),
            Meaning::Stop(Signal::SIGTERM)
        );
        assert_eq!(
            r.classify(received(Signal::SIGTERM, None), None),
            Meaning::Stop(Signal::SIGTERM)
        );
        assert_eq!(
            r.classify(received(Signal::SIGHUP, Some(42)), Some(42)),
            Meaning::Reload(Signal::SIGHUP)
        );
        let only_int = SignalSet {
            reload: vec![Signal::SIGHUP],
            stop: vec![Signal::SIGINT],
        };
        let r = Restarter::new(only_int, Duration::from_secs(1));
        assert_eq!(
            r.classify(received(Signal::SIGTERM, Some(7)), None),
            Meaning::Ignored(Signal::SIGTERM)
        );
    }
}
