//! The generations this one started, once they are on their own: passing a
//! stop on to them, waiting for them to exit before this process does (see
//! [`outlive`]), and reaping them.

use std::time::Duration;

use nix::unistd::Pid;
use tokio::process::Child;
use tracing::{debug, info, warn};

use crate::error::Result;
use crate::link::{Down, Link};

/// A generation this one waits for before it exits, and how to pass a stop
/// on to it.
#[derive(Debug)]
pub(crate) struct Outlived {
    pid: u32,
    /// The link to it, if there is one: stops go there (counted as passed
    /// on, see `drain`), or else as `SIGTERM`.
    link: Option<Link>,
    /// Stop requests passed on to it so far.
    told: u32,
    exit: Box<Exit>,
}

/// How its exit is seen.
#[derive(Debug)]
enum Exit {
    /// Our child, with its handle.
    Child(Child),
    /// Our child, reaped by a task (it was started by the image before a
    /// `keep_pid` re-exec), which says when it is done.
    Reaped(
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Receiver<bool>,
    ),
}

impl Outlived {
    /// Our child `child`, told `told` stop requests so far.
    pub(crate) fn child(child: Child, link: Option<Link>, told: u32) -> Outlived {
        Outlived {
            pid: child.id().unwrap_or_default(),
            link,
            told,
            exit: Box::new(Exit::Child(child)),
        }
    }

    /// Our child `pid`, which only `waitpid` can see exit.
    pub(crate) fn reaped(pid: u32, link: Option<Link>) -> Outlived {
        let (done, exited) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            // Bounded by its stop timeout, which it enforces itself.
            let _ = reap(pid, None).await;
            done.send_replace(true);
        });
        Outlived {
            pid,
            link,
            told: 0,
            exit: Box::new(Exit::Reaped(task, exited)),
        }
    }

    /// Resolves once it has exited, for one reaped by a task (`None` for a
    /// child with its handle, whose exit only [`outlive`] waits for).
    pub(crate) fn exited(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let Exit::Reaped(_, exited) = &*self.exit else {
            return None;
        };
        let mut exited = exited.clone();
        Some(async move {
            let _ = exited.wait_for(|done| *done).await;
        })
    }

    /// Passes one more stop request on.
    pub(crate) fn tell_stop(&mut self) {
        let sent = self.link.as_ref().is_some_and(|l| l.send(Down::Stop));
        if !sent {
            signal_pid(self.pid, nix::sys::signal::Signal::SIGTERM);
        }
        self.told += 1;
    }
}

/// Waits for `outlived` to exit (up to `timeout`, its own stop timeout
/// being about the same), so that its requests in flight finish even where
/// our exit ends everything else (PID 1 of a container, a service manager
/// that waits for its main process only). `cut`: our drain was cut short by
/// a second stop, so it is told two stops in all.
pub(crate) async fn outlive(mut outlived: Outlived, cut: bool, timeout: Duration) {
    let pid = outlived.pid;
    while cut && outlived.told < 2 {
        outlived.tell_stop();
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
    match *outlived.exit {
        Exit::Child(mut child) => {
            let _ = child.wait().await;
        }
        Exit::Reaped(task, _) => {
            let _ = task.await;
        }
    }
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

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub(crate) fn signal_pid(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}
