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
//! The accept loops, the connections and the drain are the Unix ones
//! (`connections`, `drain`); only the restart policy is missing. A separate
//! module rather than `#[cfg]`s through `generation.rs`: nearly every step
//! of that one is about the hand-over (its origin, the PID file, systemd,
//! `keep_pid`, probation), so gating it would leave little but attributes.

use std::sync::Arc;

use tracing::{info, warn};

use crate::config::{Config, Endpoint};
use crate::connections::{Connections, Tls};
use crate::drain::{Drain, Why};
use crate::error::{Error, Result};
use crate::events::{Command, Event, Events, Requests};
use crate::lifecycle::{Counter, Lifecycle};
use crate::listener::{self, Bound};
use crate::signal::Signals;

/// The one generation of a server.
pub(crate) struct Generation {
    config: Config,
    life: Arc<Lifecycle>,
    bound: Vec<Bound>,
    conns: Connections,
    events: Events,
    http3: crate::quic::Http3,
}

/// The local address of each bound listener, logged as it listens.
fn local_addrs(bound: &[Bound], tls: &[Tls]) -> Result<Vec<listener::LocalAddr>> {
    let mut addrs = Vec::with_capacity(bound.len());
    for b in bound {
        let addr = b.listener.local_addr().map_err(|source| Error::Io {
            context: format!("cannot read the local address of {}", b.name),
            source,
        })?;
        info!(addr = %addr, name = %b.name, tls = tls[b.index].is_some(), "listening");
        addrs.push(addr);
    }
    Ok(addrs)
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

        let tls = endpoints
            .iter()
            .map(|e| e.tls.as_ref().map(|t| t.acceptor()).transpose())
            .collect::<Result<Vec<Tls>>>()?;
        let wanted: Vec<listener::Wanted<'_>> = endpoints
            .iter()
            .map(|e| listener::Wanted {
                name: &e.addr,
                spec: &e.spec,
                perms: None,
                backlog: config.backlog,
                given: e.given.as_ref(),
            })
            .collect();
        let bound = listener::take_all(&wanted, true).await?;
        let addrs = local_addrs(&bound, &tls)?;
        let locals: Vec<_> = (0..endpoints.len())
            .map(|i| {
                bound
                    .iter()
                    .position(|b| b.index == i)
                    .map(|j| addrs[j].clone())
                    .unwrap_or_else(|| listener::LocalAddr::Tcp(([127, 0, 0, 1], 0).into()))
            })
            .collect();
        let targets: Vec<crate::ready::Target<'_>> = endpoints
            .iter()
            .zip(&locals)
            .map(|(e, local)| crate::ready::Target {
                addr: &e.addr,
                svc: &*e.svc,
                local,
            })
            .collect();
        crate::ready::run(&config.ready_checks, &targets, config.ready_timeout).await?;
        let regs = std::mem::take(&mut config.http3);
        let sockets = crate::quic::Http3::sockets(&regs)?;
        let mut conns = Connections::for_settings(&config.connections());
        conns.advertise(crate::quic::alt_svc(&sockets));
        conns.spawn_sweeper();
        for b in &bound {
            endpoints[b.index].svc.launch(
                &conns,
                b.name.clone(),
                b.listener.clone(),
                tls[b.index].clone(),
            );
        }
        let http3 = crate::quic::Http3::start(
            regs,
            sockets,
            None,
            config.tls_handshake_timeout,
            crate::generation(),
        )?;
        let counted = (conns.counter(), http3.clone());
        life.serving(
            addrs,
            Counter(Box::new(move || counted.0() + counted.1.open())),
        );
        info!(
            pid = std::process::id(),
            "serving (without reloads: they need Unix)"
        );
        Ok(Generation {
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
                Event::Reload(trigger) => {
                    let err = Error::reloads_unsupported();
                    warn!(cause = %err, "reload refused");
                    trigger.answer(Err(err));
                }
                // Only a generation we started sends it; none is started here.
                Event::Ready(pid) => warn!(pid, "readiness from an unknown process; ignored"),
                Event::Upstream(_) => {}
            }
        };
        drain.wait(&self.conns, &mut self.events).await;
        self.life.ended();
    }
}
