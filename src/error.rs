//! The one error type of the crate.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::Signal;

/// A specialised `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while serving or restarting.
///
/// Every variant names what was at fault: the address, file descriptor,
/// signal, path or process. Messages are meant to be shown to an operator as
/// they are, so each `Display` is complete: it includes what the operating
/// system said. For that reason [`source`](std::error::Error::source)
/// returns `None` (the Rust API guidelines ask for one or the other, so that
/// chain printers such as `anyhow`'s `{:#}` do not say it twice); the
/// underlying [`io::Error`] is in the variant's `source` field.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An address could not be parsed or resolved.
    Address {
        /// The address as it was registered.
        addr: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A listening socket could not be bound.
    Bind {
        /// The address as it was registered.
        addr: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// A socket handed over by the previous generation (or by systemd) could
    /// not be adopted.
    Inherit {
        /// The inherited file descriptor.
        fd: i32,
        /// Why it was rejected.
        reason: String,
    },
    /// A signal cannot be used the way it was configured.
    Signal {
        /// The signal at fault.
        signal: Signal,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Installing the signal handlers failed.
    SignalHandler {
        /// The signals whose handlers were being installed.
        signals: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// A builder setting is out of range.
    Config {
        /// The setting at fault, e.g. `stop_timeout`.
        setting: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A TLS certificate or key file is missing, unreadable, malformed, or
    /// the key does not match the certificate.
    Tls {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The next generation could not be started.
    Spawn {
        /// The executable that was started.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The working directory a new generation starts in (the logical one
    /// this process started in) cannot be entered: a release directory
    /// deleted, say.
    WorkingDirectory {
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// Re-executing this process in place (`keep_pid`) failed; it went on
    /// serving.
    Exec {
        /// The executable.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The next generation exited before it was ready.
    ChildExited {
        /// The PID of the failed generation.
        pid: u32,
        /// The executable it was started from.
        path: PathBuf,
        /// Why, in its own words: the error its `Server::run` returned, or
        /// its panic message, when it said (see `endless::generation`).
        reason: Option<String>,
        /// How it ended.
        status: ExitStatus,
    },
    /// The next generation took over, then died within its probation; this
    /// generation served again.
    SuccessorDied {
        /// The PID of the generation that died.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// The probation window.
        window: Duration,
        /// What it said last (a panic message), if anything.
        reason: Option<String>,
    },
    /// The next generation was not ready in time and was killed.
    ReadyTimeout {
        /// The PID of the killed generation.
        pid: u32,
        /// The ready timeout that passed.
        timeout: Duration,
    },
    /// A ready check failed ([`Server::ready_check`](crate::Server::ready_check),
    /// [`Server::ready_probe`](crate::Server::ready_probe)): this generation
    /// does not serve.
    ReadyCheck {
        /// Which check: `ready check N` or `ready probe METHOD PATH`.
        check: String,
        /// What it said, or that it did not finish in time.
        reason: String,
    },
    /// A reload was requested while another one is under way.
    ReloadInProgress,
    /// This generation is draining and starts no new generation.
    Draining,
    /// The server this handle belongs to is not running (it has not been
    /// started, or it has stopped).
    NotRunning,
    /// What was asked for cannot be done on this platform: a reload
    /// ([`Handle::reload`](crate::Handle::reload)) anywhere but on Unix.
    Unsupported {
        /// What was asked for, e.g. `reload`.
        what: &'static str,
        /// Why this platform cannot do it.
        reason: &'static str,
    },
    /// Any other I/O failure, with what was being done.
    Io {
        /// What was being done, naming the address, FD or path.
        context: String,
        /// What the operating system said.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Address { addr, reason } => write!(f, "invalid address {addr:?}: {reason}"),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Inherit { fd, reason } => write!(f, "cannot adopt inherited fd {fd}: {reason}"),
            Error::Signal { signal, reason } => write!(f, "signal {signal}: {reason}"),
            Error::SignalHandler { signals, source } => {
                write!(f, "cannot install signal handlers for {signals}: {source}")
            }
            Error::Config { setting, reason } => write!(f, "invalid {setting}: {reason}"),
            Error::Tls { path, reason } => write!(f, "TLS file {}: {reason}", path.display()),
            Error::Spawn { path, source } => {
                write!(
                    f,
                    "cannot start new generation {}: {source}",
                    path.display()
                )
            }
            Error::WorkingDirectory { path, source } => write!(
                f,
                "cannot start the new generation in {}: {source}",
                path.display()
            ),
            Error::Exec { path, source } => {
                write!(f, "cannot re-execute {} in place: {source}", path.display())
            }
            Error::ChildExited {
                pid,
                path,
                status,
                reason,
            } => {
                write!(
                    f,
                    "new generation {} (pid {pid}) exited before it was ready: {status}",
                    path.display()
                )?;
                match reason {
                    Some(reason) => write!(f, ": {reason}"),
                    None => Ok(()),
                }
            }
            Error::SuccessorDied {
                pid,
                status,
                window,
                reason,
            } => {
                write!(
                    f,
                    "new generation (pid {pid}) died within its probation ({window:?}): {status}"
                )?;
                match reason {
                    Some(reason) => write!(f, ": {reason}"),
                    None => Ok(()),
                }
            }
            Error::ReadyTimeout { pid, timeout } => write!(
                f,
                "new generation (pid {pid}) was not ready within {timeout:?} and was killed"
            ),
            Error::ReadyCheck { check, reason } => write!(f, "{check} failed: {reason}"),
            Error::ReloadInProgress => f.write_str("a reload is already under way"),
            Error::Draining => f.write_str("this generation is draining and starts no reload"),
            Error::NotRunning => f.write_str("the server is not running"),
            Error::Unsupported { what, reason } => {
                write!(f, "{what} is not supported on this platform: {reason}")
            }
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl Error {
    /// A reload asked for where there are none (without Unix).
    #[cfg_attr(unix, allow(dead_code))]
    pub(crate) fn reloads_unsupported() -> Error {
        Error::Unsupported {
            what: "reload",
            reason: "reloads need fork/exec and descriptor inheritance (Unix); \
                     here the server serves until it is stopped",
        }
    }
}

/// Every message is complete (see [`Error`]), so no error has a `source`.
impl std::error::Error for Error {}
