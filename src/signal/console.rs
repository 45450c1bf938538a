//! Signals where there are none: Linux's numbers, and what the platform has
//! instead as the stream.
//!
//! On Windows, as in Go's `os/signal`: Ctrl-C and Ctrl-Break arrive as
//! `SIGINT`; closing the console window, logging off and shutting down
//! arrive as `SIGTERM` (Windows then gives the process only a few seconds,
//! so the drain may not finish). No other signal ever arrives, so reload
//! signals, though accepted, never fire.

use std::fmt;

use super::{Received, Signal, SignalSet};
#[cfg(windows)]
use crate::error::Error;
use crate::error::Result;

/// What a [`Signal`] holds: its number on Linux.
pub(super) type Raw = i32;

pub(super) fn number(s: Raw) -> i32 {
    s
}

pub(super) fn from_number(n: i32) -> Option<Raw> {
    super::linux_numbers::from_number(n)
}

pub(super) fn name(s: Raw) -> &'static str {
    super::linux_numbers::name(s)
}

/// The signal of this name (`SIGHUP`), if it has one of the names.
pub(super) fn by_name(name: &str) -> Option<Raw> {
    super::linux_numbers::by_name(name)
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
