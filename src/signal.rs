//! Which signals reload and stop the server, and the stream that delivers them.
//!
//! `SIGTERM` has a second job besides stopping: a new generation sends it to
//! its parent to say "I am serving". The stream therefore reports who sent
//! each signal and how, so that [`events`](crate::events) can tell the two
//! apart.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::str::FromStr;

use futures_core::Stream;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use signal_hook::iterator::exfiltrator::origin::WithOrigin;
use signal_hook::low_level::siginfo::{Cause, Sent};
use signal_hook_tokio::SignalsInfo;

use crate::error::{Error, Result};

/// A Unix signal, named as in C (`Signal::SIGHUP`).
///
/// `endless` has its own small type rather than re-exporting `nix`'s, so
/// that a `nix` upgrade (a 0.x crate) never breaks code that configures
/// [`Server::reload_signals`](crate::Server::reload_signals). It parses from
/// `"SIGHUP"` or `"HUP"` and prints as `SIGHUP`.
///
/// # Examples
///
/// ```
/// use endless::Signal;
/// assert_eq!("USR2".parse::<Signal>().unwrap(), Signal::SIGUSR2);
/// assert_eq!(Signal::SIGHUP.to_string(), "SIGHUP");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(nix::sys::signal::Signal);

macro_rules! signals {
    ($($name:ident),* $(,)?) => {
        impl Signal {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: Signal = Signal(nix::sys::signal::Signal::$name);
            )*
        }
    };
}

signals!(
    SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGKILL, SIGUSR1, SIGSEGV,
    SIGUSR2, SIGPIPE, SIGALRM, SIGTERM, SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU,
    SIGURG, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF, SIGWINCH, SIGIO, SIGSYS,
);

impl Signal {
    /// The signal's number on this platform.
    pub fn as_raw(self) -> i32 {
        self.0 as i32
    }

    /// The signal with number `n`, if there is one on this platform.
    pub fn from_raw(n: i32) -> Option<Signal> {
        nix::sys::signal::Signal::try_from(n).ok().map(Signal)
    }

    pub(crate) fn nix(self) -> nix::sys::signal::Signal {
        self.0
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// The error of parsing a [`Signal`] from a name it does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSignalError(String);

impl fmt::Display for ParseSignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a signal name such as SIGHUP", self.0)
    }
}

impl std::error::Error for ParseSignalError {}

impl FromStr for Signal {
    type Err = ParseSignalError;

    fn from_str(s: &str) -> Result<Signal, ParseSignalError> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        nix::sys::signal::Signal::from_str(&full)
            .map(Signal)
            .map_err(|_| ParseSignalError(s.to_owned()))
    }
}

/// The signals a server reacts to, as configured on the builder.
#[derive(Debug, Clone)]
pub(crate) struct SignalSet {
    pub(crate) reload: Vec<Signal>,
    pub(crate) stop: Vec<Signal>,
}

impl Default for SignalSet {
    fn default() -> Self {
        SignalSet {
            reload: vec![Signal::SIGHUP, Signal::SIGUSR1],
            stop: vec![Signal::SIGTERM, Signal::SIGINT],
        }
    }
}

/// A signal as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) signal: Signal,
    /// The PID of the sending process, when the kernel reports one.
    pub(crate) sender: Option<i32>,
    /// Sent with `kill(2)` (`SI_USER`), as opposed to `sigqueue` (whose
    /// siginfo may name any sender), `tkill`/`raise`, or the kernel. Where
    /// the platform does not say (macOS), taken as `kill`.
    pub(crate) by_kill: bool,
}

impl SignalSet {
    /// Rejects settings that cannot work, naming the signal at fault.
    pub(crate) fn validate(&self) -> Result<()> {
        for &signal in self.reload.iter().chain(&self.stop) {
            let reason = match signal {
                Signal::SIGKILL | Signal::SIGSTOP => "cannot be caught",
                Signal::SIGCHLD => "is needed to watch the next generation",
                Signal::SIGSEGV | Signal::SIGBUS | Signal::SIGFPE | Signal::SIGILL => {
                    "reports a fault in the process and cannot be used for control"
                }
                _ => continue,
            };
            return Err(Error::Signal { signal, reason });
        }
        if self.reload.contains(&Signal::SIGTERM) {
            return Err(Error::Signal {
                signal: Signal::SIGTERM,
                reason:
                    "is how a new generation reports that it is ready; it cannot be a reload signal",
            });
        }
        if let Some(&signal) = self.reload.iter().find(|s| self.stop.contains(s)) {
            return Err(Error::Signal {
                signal,
                reason: "is both a reload and a stop signal",
            });
        }
        Ok(())
    }

    pub(crate) fn is_reload(&self, signal: Signal) -> bool {
        self.reload.contains(&signal)
    }

    pub(crate) fn is_stop(&self, signal: Signal) -> bool {
        self.stop.contains(&signal)
    }

    /// Every signal the server handles: the configured ones and `SIGTERM`.
    pub(crate) fn handled(&self) -> SigSet {
        let mut set = SigSet::empty();
        for &s in self.reload.iter().chain(&self.stop) {
            set.add(s.nix());
        }
        set.add(nix::sys::signal::Signal::SIGTERM);
        set
    }
}

/// The stream of signals the server handles.
pub(crate) struct Signals {
    inner: SignalsInfo<WithOrigin>,
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals").finish_non_exhaustive()
    }
}

impl Signals {
    /// Installs the handlers, then unblocks the signals.
    ///
    /// A generation started by a reload begins life with these signals
    /// blocked (see `handover::pass_listeners`): any that arrived since the
    /// exec are pending and are delivered here, so a reload or stop request
    /// during start-up is neither lost nor fatal.
    ///
    /// The handlers stay installed after the server stops (signal-hook
    /// cannot restore the previous disposition): a later signal is then
    /// caught and ignored, not acted on. See [`Server::run`](crate::Server::run).
    pub(crate) fn install(set: &SignalSet) -> Result<Signals> {
        let mask = set.handled();
        let numbers: Vec<i32> = mask.iter().map(|s| s as i32).collect();
        let inner =
            SignalsInfo::<WithOrigin>::new(numbers).map_err(|source| Error::SignalHandler {
                signals: describe(&mask),
                source,
            })?;
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&mask), None).map_err(|e| {
            Error::SignalHandler {
                signals: describe(&mask),
                source: e.into(),
            }
        })?;
        Ok(Signals { inner })
    }

    /// The next signal. Never ends while the handlers are installed.
    pub(crate) async fn recv(&mut self) -> Received {
        loop {
            let next = poll_fn(|cx| Pin::new(&mut self.inner).poll_next(cx)).await;
            let Some(origin) = next else {
                // The stream only ends when closed through its handle, which
                // this crate never does; wait forever rather than spin.
                return std::future::pending().await;
            };
            if let Some(signal) = Signal::from_raw(origin.signal) {
                let by_kill = match origin.cause {
                    Cause::Sent(Sent::User) => true,
                    // Platforms that do not fill in `si_code`.
                    Cause::Unknown => !cfg!(any(target_os = "linux", target_os = "android")),
                    _ => false,
                };
                let sender = origin.process.map(|p| p.pid);
                return Received {
                    signal,
                    sender,
                    by_kill,
                };
            }
        }
    }
}

/// `SIGHUP, SIGTERM` for error messages.
fn describe(set: &SigSet) -> String {
    set.iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(reload: &[Signal], stop: &[Signal]) -> SignalSet {
        SignalSet {
            reload: reload.to_vec(),
            stop: stop.to_vec(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        SignalSet::default().validate().unwrap();
    }

    #[test]
    fn uncatchable_signals_are_rejected_by_name() {
        let err = set(&[Signal::SIGKILL], &[]).validate().unwrap_err();
        assert_eq!(err.to_string(), "signal SIGKILL: cannot be caught");
        let err = set(&[], &[Signal::SIGSTOP]).validate().unwrap_err();
        assert_eq!(err.to_string(), "signal SIGSTOP: cannot be caught");
    }

    #[test]
    fn a_signal_in_both_sets_is_ambiguous() {
        let err = set(&[Signal::SIGHUP], &[Signal::SIGINT, Signal::SIGHUP])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "signal SIGHUP: is both a reload and a stop signal"
        );
    }

    #[test]
    fn sigterm_cannot_reload() {
        let err = set(&[Signal::SIGTERM], &[]).validate().unwrap_err();
        assert!(err
            .to_string()
            .starts_with("signal SIGTERM: is how a new generation"));
    }

    #[test]
    fn handled_always_includes_sigterm() {
        let s = set(&[Signal::SIGUSR2], &[Signal::SIGINT]).handled();
        assert!(s.contains(nix::sys::signal::Signal::SIGTERM));
        assert!(s.contains(nix::sys::signal::Signal::SIGUSR2));
        assert!(!s.contains(nix::sys::signal::Signal::SIGHUP));
    }

    #[test]
    fn names_parse_and_print() {
        assert_eq!("SIGHUP".parse::<Signal>(), Ok(Signal::SIGHUP));
        assert_eq!("usr1".parse::<Signal>(), Ok(Signal::SIGUSR1));
        assert_eq!(Signal::SIGWINCH.to_string(), "SIGWINCH");
        assert_eq!(
            Signal::from_raw(Signal::SIGINT.as_raw()),
            Some(Signal::SIGINT)
        );
        assert!("SIGNOPE".parse::<Signal>().is_err());
        assert!(Signal::from_raw(0).is_none());
    }
}
