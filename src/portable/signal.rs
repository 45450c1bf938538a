//! Signals where there are none: the same [`Signal`] type and settings as on
//! Unix, so code that configures them compiles everywhere, fed by what the
//! platform has instead.
//!
//! On Windows, as in Go's `os/signal`: Ctrl-C and Ctrl-Break arrive as
//! `SIGINT`; closing the console window, logging off and shutting down
//! arrive as `SIGTERM` (Windows then gives the process only a few seconds,
//! so the drain may not finish). No other signal ever arrives, so reload
//! signals, though accepted, never fire.
//!
//! On Unix this file is compiled only as a test, against the real signals.
#![cfg_attr(unix, allow(dead_code, unreachable_pub))]

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A Unix signal, named as in C (`Signal::SIGHUP`).
///
/// Where there are no signals (Windows) the same names exist, so a
/// configuration compiles on every platform; only `SIGINT` (Ctrl-C,
/// Ctrl-Break) and `SIGTERM` (the console closes, the user logs off, the
/// system shuts down) ever arrive there. The numbers are Linux's. It
/// parses from `"SIGHUP"` or `"HUP"` and prints as `SIGHUP`.
///
/// # Examples
///
/// ```
/// use endless::Signal;
/// assert_eq!("USR2".parse::<Signal>().unwrap(), Signal::SIGUSR2);
/// assert_eq!(Signal::SIGHUP.to_string(), "SIGHUP");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

macro_rules! signals {
    ($($name:ident = $n:literal),* $(,)?) => {
        impl Signal {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: Signal = Signal($n);
            )*
        }

        /// Every signal, by name.
        const ALL: &[(Signal, &str)] = &[$((Signal::$name, stringify!($name))),*];
    };
}

// Linux's numbers (x86, ARM): the platform has none of its own.
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
    /// The signal's number (Linux's, where the platform has none).
    pub fn as_raw(self) -> i32 {
        self.0
    }

    /// The signal with number `n`, if there is one.
    pub fn from_raw(n: i32) -> Option<Signal> {
        ALL.iter().map(|(s, _)| *s).find(|s| s.0 == n)
    }

    fn name(self) -> &'static str {
        ALL.iter()
            .find(|(s, _)| *s == self)
            .map_or("SIG?", |(_, name)| name)
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
        ALL.iter()
            .find(|(_, name)| *name == full)
            .map(|(s, _)| *s)
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
    /// The sender's PID: never known here.
    pub(crate) sender: Option<i32>,
    /// Sent with `kill(2)`: never, here.
    pub(crate) by_kill: bool,
}

impl SignalSet {
    /// Rejects the settings that are rejected on Unix, so that a
    /// configuration means the same everywhere.
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
            return Err(rejected(signal, reason));
        }
        if self.reload.contains(&Signal::SIGTERM) {
            return Err(rejected(
                Signal::SIGTERM,
                "is how a new generation reports that it is ready; it cannot be a reload signal",
            ));
        }
        if let Some(&signal) = self.reload.iter().find(|s| self.stop.contains(s)) {
            return Err(rejected(signal, "is both a reload and a stop signal"));
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

/// The error naming `signal`.
#[cfg(not(unix))]
fn rejected(signal: Signal, reason: &'static str) -> Error {
    Error::Signal { signal, reason }
}

/// The error naming `signal`, as the Unix signal of the same name (this
/// file is a test on Unix, where the error holds that type).
#[cfg(unix)]
fn rejected(signal: Signal, reason: &'static str) -> Error {
    let signal = signal.name().parse().expect("the same names");
    Error::Signal { signal, reason }
}

/// The console events, as signals.
pub(crate) struct Signals {
    #[cfg(windows)]
    console: Console,
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals").finish_non_exhaustive()
    }
}

#[cfg(windows)]
struct Console {
    ctrl_c: tokio::signal::windows::CtrlC,
    ctrl_break: tokio::signal::windows::CtrlBreak,
    close: tokio::signal::windows::CtrlClose,
    logoff: tokio::signal::windows::CtrlLogoff,
    shutdown: tokio::signal::windows::CtrlShutdown,
}

impl Signals {
    /// Starts listening for the console events. From then on Ctrl-C no
    /// longer ends the process at once: it is a stop request.
    pub(crate) fn install(set: &SignalSet) -> Result<Signals> {
        let _ = set;
        #[cfg(windows)]
        {
            use tokio::signal::windows;
            let err = |signals: &str| {
                let signals = signals.to_owned();
                move |source| Error::SignalHandler { signals, source }
            };
            let console = Console {
                ctrl_c: windows::ctrl_c().map_err(err("Ctrl-C"))?,
                ctrl_break: windows::ctrl_break().map_err(err("Ctrl-Break"))?,
                close: windows::ctrl_close().map_err(err("console close"))?,
                logoff: windows::ctrl_logoff().map_err(err("logoff"))?,
                shutdown: windows::ctrl_shutdown().map_err(err("shutdown"))?,
            };
            Ok(Signals { console })
        }
        #[cfg(not(windows))]
        {
            Ok(Signals {})
        }
    }

    /// The next console event, as a signal. Cancellation safe.
    pub(crate) async fn recv(&mut self) -> Received {
        #[cfg(windows)]
        let signal = {
            let c = &mut self.console;
            // A stream that ended (never, while the runtime lives) would
            // fire at once forever: such a branch is disabled instead.
            tokio::select! {
                Some(()) = c.ctrl_c.recv() => Signal::SIGINT,
                Some(()) = c.ctrl_break.recv() => Signal::SIGINT,
                Some(()) = c.close.recv() => Signal::SIGTERM,
                Some(()) = c.logoff.recv() => Signal::SIGTERM,
                Some(()) = c.shutdown.recv() => Signal::SIGTERM,
                else => std::future::pending().await,
            }
        };
        #[cfg(not(windows))]
        let signal = std::future::pending::<Signal>().await;
        Received {
            signal,
            sender: None,
            by_kill: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On Unix (where this runs as a test) every name means the signal of
    /// the same name and number, so a configuration reads the same on
    /// every platform, and the numbers are Linux's.
    #[test]
    #[cfg(unix)]
    fn names_and_numbers_match_the_unix_signals() {
        assert_eq!(ALL.len(), 29);
        for (signal, name) in ALL {
            let unix: crate::signal::Signal = name.parse().unwrap();
            assert_eq!(unix.to_string(), *name);
            assert_eq!(signal.to_string(), *name);
            assert_eq!(name.parse::<Signal>(), Ok(*signal));
            if cfg!(target_os = "linux") {
                assert_eq!(signal.as_raw(), unix.as_raw(), "{name}");
                assert_eq!(Signal::from_raw(unix.as_raw()), Some(*signal));
            }
        }
    }

    #[test]
    fn names_parse_and_print() {
        assert_eq!("usr1".parse::<Signal>(), Ok(Signal::SIGUSR1));
        assert_eq!(" HUP ".parse::<Signal>(), Ok(Signal::SIGHUP));
        assert_eq!(format!("{:?}", Signal::SIGINT), "SIGINT");
        assert!("SIGNOPE".parse::<Signal>().is_err());
        assert!(Signal::from_raw(0).is_none());
    }

    #[test]
    fn the_settings_rejected_on_unix_are_rejected_here() {
        let set = |reload: &[Signal], stop: &[Signal]| SignalSet {
            reload: reload.to_vec(),
            stop: stop.to_vec(),
        };
        SignalSet::default().validate().unwrap();
        let err = set(&[Signal::SIGKILL], &[]).validate().unwrap_err();
        assert_eq!(err.to_string(), "signal SIGKILL: cannot be caught");
        let err = set(&[Signal::SIGHUP], &[Signal::SIGHUP])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "signal SIGHUP: is both a reload and a stop signal"
        );
    }
}
