//! Why a new generation failed to start, told to the generation that
//! started it.
//!
//! Readiness stays a `SIGTERM` to the parent; failure is the child's exit.
//! What an exit status cannot say (which file, which address, which panic)
//! travels on a pipe: the parent creates it and passes the write end with
//! the listeners (its identity in `ENDLESS_REPORT`, see `handover`); the
//! child writes one message if `Server::run` fails or the program panics
//! before it serves, and closes the pipe once it serves. The parent reads
//! the message when the child exits before it is ready, and
//! `Handle::reload` returns it in [`Error::ChildExited`].
//!
//! A pipe, not the environment or a file: it needs no name, nobody else can
//! open it, and it is gone with the two processes.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::error::Error;

/// The most of a message that is kept.
const MAX_MESSAGE: usize = 16 * 1024;
/// How long the parent waits for the rest of a message after the child
/// exited (the pipe is at its end then unless a grandchild holds it).
const READ_TIMEOUT: Duration = Duration::from_millis(500);

/// The write end, in a child that has not served yet.
static PIPE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// In a generation started by a reload: takes the report pipe and installs
/// a panic hook that writes the panic message to it (then calls the hook
/// that was there before).
pub(crate) fn init() {
    let Some(fd) = crate::handover::take_report_pipe() else {
        return;
    };
    *lock() = Some(std::fs::File::from(fd));
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // `try_lock`: a panic while the lock is held must not deadlock.
        if let Ok(mut pipe) = PIPE.try_lock() {
            if let Some(pipe) = pipe.as_mut() {
                let _ = write!(pipe, "panicked: {info}");
            }
        }
        previous(info);
    }));
}

/// `Server::run` failed before this generation served: say why.
pub(crate) fn failed(error: &Error) {
    if let Some(mut pipe) = lock().take() {
        let _ = write!(pipe, "{error}");
    }
}

/// This generation serves: nothing to report any more.
pub(crate) fn serving() {
    lock().take();
}

fn lock() -> std::sync::MutexGuard<'static, Option<std::fs::File>> {
    PIPE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pipe whose two ends are close-on-exec.
#[cfg(not(any(target_os = "macos", target_os = "ios")))]
fn cloexec_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// A pipe whose two ends are close-on-exec. (No `pipe2` here: the flag is
/// set right after, so a process another thread forks in that instant could
/// inherit the pipe; it would only keep it from ending.)
#[cfg(any(target_os = "macos", target_os = "ios"))]
fn cloexec_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let (read, write) = nix::unistd::pipe()?;
    fcntl(&read, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    fcntl(&write, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok((read, write))
}

/// The parent's end.
#[derive(Debug)]
pub(crate) struct Reader(tokio::net::unix::pipe::Receiver);

impl Reader {
    /// A new pipe: the reader, and the write end to pass to the child (the
    /// parent drops its copy once the child is spawned).
    pub(crate) fn pipe() -> std::io::Result<(Reader, OwnedFd)> {
        let (read, write) = cloexec_pipe()?;
        let read = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
        Ok((Reader(read), write))
    }

    /// What the child said, after it exited: `None` if nothing.
    pub(crate) async fn message(mut self) -> Option<String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let read = async {
            loop {
                match self.0.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = MAX_MESSAGE.saturating_sub(buf.len());
                        buf.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            }
        };
        let _ = tokio::time::timeout(READ_TIMEOUT, read).await;
        let text = String::from_utf8_lossy(&buf).trim().to_owned();
        (!text.is_empty()).then_some(text)
    }
}
