//! Signals on Unix: numbered as the platform numbers them (`nix`'s), and
//! delivered by signal-hook with their origin (who sent each, and how).

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::str::FromStr;

use futures_core::Stream;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use signal_hook::iterator::exfiltrator::origin::WithOrigin;
use signal_hook::low_level::siginfo::{Cause, Sent};
use signal_hook_tokio::SignalsInfo;

use super::{Received, Signal, SignalSet};
use crate::error::{Error, Result};

/// What a [`Signal`] holds: the platform's signal.
pub(super) type Raw = nix::sys::signal::Signal;

pub(super) fn number(s: Raw) -> i32 {
    s as i32
}

pub(super) fn from_number(n: i32) -> Option<Raw> {
    Raw::try_from(n).ok()
}

pub(super) fn name(s: Raw) -> &'static str {
    s.as_str()
}

/// The signal of this name (`SIGHUP`), if the platform has it.
pub(super) fn by_name(name: &str) -> Option<Raw> {
    Raw::from_str(name).ok()
}

impl SignalSet {
    /// Every signal the server handles: the configured ones and `SIGTERM`.
    pub(crate) fn handled(&self) -> SigSet {
        let mut set = SigSet::empty();
        for &s in self.reload.iter().chain(&self.stop) {
            set.add(s.0);
        }
        set.add(Raw::SIGTERM);
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
    /// blocked (see `handover::prepare_spawn` and `place_fds`): any that
    /// arrived since the exec are pending and are delivered here, so a
    /// reload or stop request during start-up is neither lost nor fatal.
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

    #[test]
    fn handled_always_includes_sigterm() {
        let set = SignalSet {
            reload: vec![Signal::SIGUSR2],
            stop: vec![Signal::SIGINT],
        };
        let s = set.handled();
        assert!(s.contains(Raw::SIGTERM));
        assert!(s.contains(Raw::SIGUSR2));
        assert!(!s.contains(Raw::SIGHUP));
    }
}
