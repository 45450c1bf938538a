//! Which signals reload and stop the server, and the stream that delivers
//! them.
//!
//! `SIGTERM` has a second job besides stopping: a new generation sends it to
//! its parent to say "I am serving". The stream therefore reports who sent
//! each signal and how, so that [`events`](crate::events) can tell the two
//! apart.
//!
//! The [`Signal`] type, its names, and the settings and their checks are the
//! same on every platform, so a configuration compiles and means the same
//! everywhere. What differs lives beside this file: how a signal is
//! numbered and where signals come from ([`Signals`]): on Unix the real
//! signals (`signal/unix.rs`); elsewhere the console events that stand in
//! for them (`signal/console.rs`: Ctrl-C as `SIGINT` on Windows).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

#[cfg(not(unix))]
mod console;
#[cfg(unix)]
mod unix;

#[cfg(not(unix))]
use console as sys;
#[cfg(unix)]
use unix as sys;

pub(crate) use sys::Signals;

/// A Unix signal, named as in C (`Signal::SIGHUP`).
///
/// `endless` has its own small type rather than re-exporting `nix`'s, so
/// that a `nix` upgrade (a 0.x crate) never breaks code that configures
/// [`Server::reload_signals`](crate::Server::reload_signals). It parses from
/// `"SIGHUP"` or `"HUP"` and prints as `SIGHUP`.
///
/// Where there are no signals (Windows) the same names exist, so a
/// configuration compiles on every platform; only `SIGINT` (Ctrl-C,
/// Ctrl-Break) and `SIGTERM` (the console closes, the user logs off, the
/// system shuts down) ever arrive there, and the numbers are Linux's.
///
/// # Examples
///
/// ```
/// use endless::Signal;
/// assert_eq!("USR2".parse::<Signal>().unwrap(), Signal::SIGUSR2);
/// assert_eq!(Signal::SIGHUP.to_string(), "SIGHUP");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(sys::Raw);

macro_rules! signals {
    ($($name:ident = $linux:literal),* $(,)?) => {
        impl Signal {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                #[cfg(unix)]
                pub const $name: Signal = Signal(nix::sys::signal::Signal::$name);
                #[doc = concat!("`", stringify!($name), "`")]
                #[cfg(not(unix))]
                pub const $name: Signal = Signal($linux);
            )*
        }

        /// Every named signal, with its number on Linux: the numbers where
        /// the platform has none (checked against Linux's in the tests).
        #[cfg(any(not(unix), test))]
        const LINUX: &[(Signal, &str, i32)] = &[$((Signal::$name, stringify!($name), $linux)),*];
    };
}

/// The numbering where the platform has none: Linux's, looked up in
/// [`LINUX`]. Kept apart from `signal/console.rs`, which uses it, so that
/// the tests check it on Unix too.
#[cfg(any(not(unix), test))]
mod linux_numbers {
    use super::LINUX;

    /// The number, if a named signal has it.
    pub(super) fn from_number(n: i32) -> Option<i32> {
        LINUX.iter().map(|(_, _, l)| *l).find(|l| *l == n)
    }

    /// The name of the signal of this number (`SIG?` if none).
    pub(super) fn name(n: i32) -> &'static str {
        LINUX
            .iter()
            .find(|(_, _, l)| *l == n)
            .map_or("SIG?", |(_, name, _)| name)
    }

    /// The number of the signal of this name (`SIGHUP`), if any.
    pub(super) fn by_name(name: &str) -> Option<i32> {
        LINUX
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(_, _, l)| *l)
    }
}

// Linux's numbers (x86, ARM).
signals!(
    SIGHUP = 1,
    SIGINT = 2,
    SIGQUIT = 3,
    SIGILL = 4,
    SIGTRAP = 5,
    SIGABRT = 6,
    SIGBUS = 7,
    SIGFPE = 8,
    SIGKILL = 9,
    SIGUSR1 = 10,
    SIGSEGV = 11,
    SIGUSR2 = 12,
    SIGPIPE = 13,
    SIGALRM = 14,
    SIGTERM = 15,
    SIGCHLD = 17,
    SIGCONT = 18,
    SIGSTOP = 19,
    SIGTSTP = 20,
    SIGTTIN = 21,
    SIGTTOU = 22,
    SIGURG = 23,
    SIGXCPU = 24,
    SIGXFSZ = 25,
    SIGVTALRM = 26,
    SIGPROF = 27,
    SIGWINCH = 28,
    SIGIO = 29,
    SIGSYS = 31,
);

impl Signal {
    /// The signal's number on this platform (Linux's, where the platform
    /// has none).
    pub fn as_raw(self) -> i32 {
        sys::number(self.0)
    }

    /// The signal with number `n`, if there is one on this platform.
    pub fn from_raw(n: i32) -> Option<Signal> {
        sys::from_number(n).map(Signal)
    }

    fn name(self) -> &'static str {
        sys::name(self.0)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
        sys::by_name(&full)
            .map(Signal)
            .ok_or_else(|| ParseSignalError(s.to_owned()))
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
    /// The PID of the sending process, when the kernel reports one (never
    /// without Unix).
    pub(crate) sender: Option<i32>,
    /// Sent with `kill(2)` (`SI_USER`), as opposed to `sigqueue` (whose
    /// siginfo may name any sender), `tkill`/`raise`, or the kernel. Where
    /// the platform does not say (macOS), taken as `kill`; never without
    /// Unix.
    pub(crate) by_kill: bool,
}

impl SignalSet {
    /// Rejects settings that cannot work, naming the signal at fault; the
    /// same everywhere, so that a configuration means the same on every
    /// platform.
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
    fn names_parse_and_print() {
        assert_eq!("SIGHUP".parse::<Signal>(), Ok(Signal::SIGHUP));
        assert_eq!("usr1".parse::<Signal>(), Ok(Signal::SIGUSR1));
        assert_eq!(" HUP ".parse::<Signal>(), Ok(Signal::SIGHUP));
        assert_eq!(Signal::SIGWINCH.to_string(), "SIGWINCH");
        assert_eq!(format!("{:?}", Signal::SIGINT), "SIGINT");
        assert_eq!(
            Signal::from_raw(Signal::SIGINT.as_raw()),
            Some(Signal::SIGINT)
        );
        assert!("SIGNOPE".parse::<Signal>().is_err());
        assert!(Signal::from_raw(0).is_none());
    }

    /// Every name means the signal of that name, and the numbers used where
    /// the platform has none are Linux's: a configuration reads the same on
    /// every platform.
    #[test]
    fn names_and_numbers_match_linux() {
        assert_eq!(LINUX.len(), 29);
        for (signal, name, number) in LINUX {
            assert_eq!(signal.to_string(), *name);
            assert_eq!(name.parse::<Signal>(), Ok(*signal));
            if cfg!(target_os = "linux") {
                assert_eq!(signal.as_raw(), *number, "{name}");
                assert_eq!(Signal::from_raw(*number), Some(*signal));
            }
            // The lookups Windows uses (signal/console.rs), here too.
            assert_eq!(linux_numbers::by_name(name), Some(*number));
            assert_eq!(linux_numbers::name(*number), *name);
            assert_eq!(linux_numbers::from_number(*number), Some(*number));
        }
        assert_eq!(linux_numbers::from_number(0), None);
        assert_eq!(linux_numbers::name(0), "SIG?");
        assert_eq!(linux_numbers::by_name("SIGNOPE"), None);
    }
}
