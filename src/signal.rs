//! Which signals reload and stop the server, and the stream that delivers them.
//!
//! `SIGTERM` has a second job besides stopping: a new generation sends it to
//! its parent to say "I am serving". The stream therefore reports the PID of
//! each signal's sender, so the restart policy can tell the two apart.

use std::future::poll_fn;
use std::pin::Pin;

use futures_core::Stream;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use signal_hook::iterator::exfiltrator::origin::WithOrigin;
use signal_hook_tokio::SignalsInfo;

use crate::error::{Error, Result};

pub use nix::sys::signal::Signal;

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

/// What a received signal means, before the restart policy looks at who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) signal: Signal,
    /// The PID of the sending process, when the kernel reports one.
    pub(crate) sender: Option<i32>,
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
            set.add(s);
        }
        set.add(Signal::SIGTERM);
        set
    }
}

/// The stream of signals the server handles.
pub(crate) struct Signals {
    inner: SignalsInfo<WithOrigin>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals").finish_non_exhaustive()
    }
}

impl Signals {
    /// Installs the handlers, then unblocks the signals.
    ///
    /// A generation started by a reload begins life with these signals
    /// blocked (see `handover::block_signals_across_exec`): any that arrived
    /// since the exec are pending and are delivered here, so a reload or stop
    /// request during start-up is neither lost nor fatal.
    pub(crate) fn install(set: &SignalSet) -> Result<Signals> {
        let mask = set.handled();
        let numbers: Vec<i32> = mask.iter().map(|s| s as i32).collect();
        let inner = SignalsInfo::<WithOrigin>::new(numbers)
            .map_err(|source| Error::SignalHandler { source })?;
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&mask), None)
            .map_err(|e| Error::SignalHandler { source: e.into() })?;
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
            if let Ok(signal) = Signal::try_from(origin.signal) {
                let sender = origin.process.map(|p| p.pid);
                return Received { signal, sender };
            }
        }
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
    fn handled_always_includes_sigterm() {
        let s = set(&[Signal::SIGUSR2], &[Signal::SIGINT]).handled();
        assert!(s.contains(Signal::SIGTERM));
        assert!(s.contains(Signal::SIGUSR2));
        assert!(!s.contains(Signal::SIGHUP));
    }
}
