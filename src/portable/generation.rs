//! The one generation of a server where there are no reloads (Windows): the
//! same three phases as on Unix, without the hand-over.
//!
//! 1. [`Generation::start`]: the console handlers (Ctrl-C), TLS
//!    configuration, new listeners, and telling the handles that it serves;
//! 2. [`Generation::serve`]: until a stop (Ctrl-C, the console closing, or
//!    `Handle::stop`); a reload request is answered with
//!    [`Error::Unsupported`];
//! 3. [`Generation::finish`]: stop accepting, drain (a second stop request
//!    or the stop timeout cuts it short).
//!
//! The accept loops, the connections and the drain are the Unix ones
//! (`connections`, `drain`); only the restart policy is missing. A separate
//! module rather than `#[cfg]`s through `generation.rs`: nearly every step
//! of that one is about the hand-over (its origin, the PID file, systemd,
//! `keep_pid`), so gating it would leave little but attributes.

use std::sync::atomic::Ordering;

use tracing::{info, warn};

use crate::connections::{Connections, Tls};
use crate::drain::{Drain, Why};
use crate::error::{Error, Result};
use crate::events::{Event, Events};
use crate::handle::Shared;
use crate::listener::{self, BindSpec, Bound};
use crate::server::{Registration, Settings};
use crate::signal::Signals;

/// Why a reload cannot happen here, for [`Error::Unsupported`].
const RELOADS_NEED_UNIX: &str = "reloads need fork/exec and descriptor inheritance (Unix); \
                                 here the server serves until it is stopped";

/// The error of every reload request here; counted as requested.
pub(crate) fn refuse_reload(shared: &Shared) -> Error {
    shared.reload_requested();
    Error::Unsupported {
        what: "reload",
        reason: RELOADS_NEED_UNIX,
    }
}

/// The one generation of a server.
pub(crate) struct Generation {
    settings: Settings,
    bound: Vec<Bound>,
    conns: Connections,
    events: Events,
}

impl Generation {
    /// Phase 1: from nothing to serving.
    pub(crate) async fn start(
        settings: Settings,
        registrations: Vec<Registration>,
        specs: Vec<BindSpec>,
        commands: tokio::sync::mpsc::UnboundedReceiver<crate::handle::Command>,
    ) -> Result<Generation> {
        let signals = Signals::install(&settings.signals)?;
        let spread = settings.drain_notice_spread.min(settings.stop_timeout / 2);
        let spread = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
        settings
            .shared
            .notice_spread_ms
            .store(spread, Ordering::Relaxed);
        let events = Events::new(signals, settings.signals.clone(), commands);

        let tls = registrations
            .iter()
            .map(|r| r.tls.as_ref().map(|t| t.acceptor()).transpose())
            .collect::<Result<Vec<Tls>>>()?;
        let names: Vec<&str> = registrations.iter().map(|r| r.addr.as_str()).collect();
        let bound = listener::take_all(&names, &specs).await?;

        let mut addrs = Vec::with_capacity(bound.len());
        for b in &bound {
            let addr = b.listener.local_addr().map_err(|source| Error::Io {
                context: format!("cannot read the local address of {}", b.name),
                source,
            })?;
            info!(addr = %addr, name = %b.name, tls = tls[b.index].is_some(), "listening");
            addrs.push(addr);
        }
        let conns = accept(&settings, &registrations, &tls, &bound);
        let counter = crate::handle::Counter(Box::new(conns.counter()));
        *settings
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(counter);
        settings.shared.serving.store(true, Ordering::Release);
        let _ = settings.listening.send(Some(addrs));
        info!(
            pid = std::process::id(),
            "serving (without reloads: they need Unix)"
        );
        Ok(Generation {
            settings,
            bound,
            conns,
            events,
        })
    }

    /// Phase 2: serves until a stop request, refusing reloads.
    pub(crate) async fn serve(&mut self) -> Drain {
        loop {
            match self.events.next().await {
                Event::Stop(signal, _) => {
                    info!(signal = ?signal, "stop requested");
                    return Drain::start(
                        &self.conns,
                        Why::Stopped,
                        self.settings.stop_timeout,
                        &self.settings.shared,
                    );
                }
                Event::Reload(trigger) => {
                    let err = refuse_reload(&self.settings.shared);
                    warn!(cause = %err, "reload refused");
                    trigger.answer(Err(err));
                }
                // Only a generation we started sends it; none is started here.
                Event::Ready(pid) => warn!(pid, "readiness from an unknown process; ignored"),
            }
        }
    }

    /// Phase 3: stops accepting and waits for the drain.
    pub(crate) async fn finish(mut self, mut drain: Drain) {
        // The accept loops dropped their listeners when the drain started;
        // ours go now, so the port is free once `run` returns.
        self.bound.clear();
        drain.wait(&self.conns, &mut self.events).await;
    }
}

/// Starts accepting on every listener.
fn accept(
    settings: &Settings,
    registrations: &[Registration],
    tls: &[Tls],
    bound: &[Bound],
) -> Connections {
    let conns = Connections::for_settings(settings);
    conns.spawn_sweeper();
    for b in bound {
        registrations[b.index].svc.launch(
            &conns,
            b.name.clone(),
            b.listener.clone(),
            tls[b.index].clone(),
        );
    }
    conns
}
