//! The one generation of a server where there are no reloads (Windows): the
//! same phases as on Unix, without the hand-over.
//!
//! 1. [`Generation::start`]: the console handlers (Ctrl-C), TLS
//!    configuration, new listeners, the ready checks, and telling the
//!    handles that it serves;
//! 2. [`Generation::run`]: serves until a stop (Ctrl-C, the console
//!    closing, or `Handle::stop`), answering a reload request with
//!    [`Error::Unsupported`]; then stops accepting and drains (a second
//!    stop request or the stop timeout cuts it short).
//!
//! The start's steps (`accepting`), the accept loops, the connections and
//! the drain are the Unix ones (`connections`, `drain`); only the hand-over
//! and the restart policy are missing. A separate module rather than
//! `#[cfg]`s through `generation.rs`: nearly every other step of that one
//! is about the hand-over (its origin, the PID file, systemd, `keep_pid`,
//! probation), so gating it would leave little but attributes.

use std::sync::Arc;

use tracing::{info, warn};

use crate::accepting;
use crate::config::{Config, Endpoint};
use crate::connections::Connections;
use crate::drain::{Drain, Why};
use crate::error::{Error, Result};
use crate::events::{Command, Event, Events, Requests};
use crate::lifecycle::Lifecycle;
use crate::listener::Bound;
use crate::signal::Signals;
use crate::succession::Succession;

/// The one generation of a server.
pub(crate) struct Generation {
    config: Config,
    /// `Succession::None`: no successor starts here.
    succession: Succession,
    life: Arc<Lifecycle>,
    bound: Vec<Bound>,
    conns: Connections,
    events: Events,
    http3: crate::quic::Http3,
}

impl Generation {
    /// From nothing to serving.
    pub(crate) async fn start(
        mut config: Config,
        endpoints: Vec<Endpoint>,
        commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
        life: Arc<Lifecycle>,
        _requests: Requests,
    ) -> Result<Generation> {
        let signals = Signals::install(&config.signals)?;
        life.set_notice_spread(config.drain_notice_spread.min(config.stop_timeout / 2));
        let events = Events::new(signals, config.signals.clone(), commands, life.clone());

        let tls = accepting::acceptors(&endpoints)?;
        let (bound, addrs) = accepting::bind_and_check(&config, &endpoints, true).await?;
        let regs = std::mem::take(&mut config.http3);
        let sockets = crate::quic::Http3::sockets(&regs)?;
        let alt_svc = crate::quic::alt_svc(&sockets);
        let conns = accepting::accept(&config, &endpoints, &tls, &bound, alt_svc);
        let http3 = crate::quic::Http3::start(
            regs,
            sockets,
            None,
            config.tls_handshake_timeout,
            crate::generation(),
        )?;
        let addrs = addrs.into_iter().map(|(_, addr)| addr).collect();
        life.serving(addrs, accepting::counter(&conns, &http3));
        info!(
            pid = std::process::id(),
            "serving (without reloads: they need Unix)"
        );
        Ok(Generation {
            succession: config.succession(),
            config,
            life,
            bound,
            conns,
            events,
            http3,
        })
    }

    /// Serves until a stop request, refusing reloads; then drains.
    pub(crate) async fn run(mut self) {
        let mut drain = loop {
            match self.events.next().await {
                Event::Stop(stop) => {
                    info!(signal = ?stop.signal, "stop requested");
                    self.conns.start_drain(false);
                    self.http3.begin_drain();
                    self.life.begin_drain();
                    // Our listeners go now, so the port is free once `run`
                    // returns.
                    self.bound.clear();
                    break Drain::new(Why::Stopped(stop), self.config.stop_timeout)
                        .with_http3(self.http3.clone());
                }
                Event::Reload(trigger) => match self.succession {
                    Succession::None => {
                        let err = Error::reloads_unsupported();
                        warn!(cause = %err, "reload refused");
                        trigger.answer(Err(err));
                    }
                },
                // Only a generation we started sends it; none is started here.
                Event::Ready(pid) => warn!(pid, "readiness from an unknown process; ignored"),
                Event::Upstream(_) => {}
            }
        };
        drain.wait(&self.conns, &mut self.events).await;
        self.life.ended();
    }
}
