//! The life of one generation, in three phases, as the crate docs number
//! the protocol:
//!
//! 1. [`Generation::start`]: signal handlers, TLS configuration, the
//!    listeners (adopted or bound), the PID file, and telling whoever waits
//!    that this generation serves;
//! 2. [`Generation::serve`]: the restart policy, until a successor serves or
//!    a stop arrives (with `keep_pid`, the re-exec in place happens here);
//! 3. [`Generation::finish`]: stop accepting, drain, clean up.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::connections::{Connections, Tls};
use crate::drain::{Drain, Why};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::handover::{self, Origin};
use crate::keep_pid::{self, Reexec};
use crate::listener::{self, BindSpec, Bound, SocketFile};
use crate::pid_file;
use crate::restart::{Outcome, Restarter};
use crate::server::{Registration, Settings};
use crate::signal::Signals;
use crate::systemd;

/// One generation of a server.
pub(crate) struct Generation {
    settings: Settings,
    registrations: Vec<Registration>,
    /// Each registration's TLS acceptor, if it serves HTTPS.
    tls: Vec<Tls>,
    bound: Vec<Bound>,
    /// The name each listener is handed over under.
    handover_names: Vec<String>,
    /// The extra descriptors (`crate::sockets`), with their hand-over names.
    extras: Vec<(String, RawFd)>,
    conns: Connections,
    events: Events,
    /// A `keep_pid` temporary generation: it serves while its parent
    /// re-executes itself, and leaves the service manager, the PID file and
    /// the socket files to that parent.
    temporary: Option<u32>,
    /// The Unix socket files this server bound, removed after a final stop.
    socket_files: Vec<SocketFile>,
    /// A `keep_pid` temporary generation still draining when this one
    /// stops: this process exits after it.
    outlive: Option<u32>,
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
        crate::state::log_inherited();
        let spread = settings.drain_notice_spread.min(settings.stop_timeout / 2);
        let spread = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
        settings
            .shared
            .notice_spread_ms
            .store(spread, Ordering::Relaxed);
        let events = Events::new(signals, settings.signals.clone(), commands);

        // Certificates are read by every generation, before it binds or
        // adopts anything: one that cannot load them never takes over.
        let tls = registrations
            .iter()
            .map(|r| r.tls.as_ref().map(|t| t.acceptor()).transpose())
            .collect::<Result<Vec<Tls>>>()?;

        let started = Instant::now();
        let origin = handover::origin();
        let temporary = match origin {
            Some(Origin::Parent(parent)) if handover::is_temporary() => {
                Some(parent.as_raw() as u32)
            }
            _ => None,
        };
        // A temporary generation binds nothing new: the process it stands in
        // for binds new addresses after its re-exec (were it to bind them, it
        // would hold them and that process could not).
        let names: Vec<&str> = registrations.iter().map(|r| r.addr.as_str()).collect();
        let perms = crate::server::permissions_of(&registrations, &settings);
        let bound = listener::take_all(&names, &specs, &perms, temporary.is_none()).await?;
        // The extra descriptors asked for so far are the ones handed on.
        let extras = crate::sockets::freeze();

        let mut addrs = Vec::with_capacity(bound.len());
        for b in &bound {
            let addr = b.listener.local_addr().map_err(|source| Error::Io {
                context: format!("cannot read the local address of {}", b.name),
                source,
            })?;
            info!(addr = %addr, name = %b.name, tls = tls[b.index].is_some(), "listening");
            addrs.push(addr);
        }
        let socket_files = bound
            .iter()
            .filter_map(|b| b.listener.socket_file().cloned())
            .collect();
        let handover_names = bound.iter().map(|b| b.handover_name()).collect();
        let mut generation = Generation {
            conns: accept(&settings, &registrations, &tls, &bound),
            settings,
            registrations,
            tls,
            bound,
            handover_names,
            extras,
            events,
            temporary,
            socket_files,
            outlive: None,
        };
        // The PID file first: whoever learns that we serve (from `listening`,
        // or our parent from our signal) finds the file already current.
        if let (Some(path), None) = (&generation.settings.pid_file, temporary) {
            pid_file::write_pid_file(path)?;
        }
        generation.count_connections();
        generation
            .settings
            .shared
            .serving
            .store(true, Ordering::Release);
        let _ = generation.settings.listening.send(Some(addrs));
        crate::report::serving();
        generation.announce(origin, started);
        Ok(generation)
    }

    /// Tells whoever waits for it that this generation serves: the previous
    /// generation (by signal), the service manager, and, after an in-place
    /// re-exec, the temporary generation (which then drains).
    fn announce(&mut self, origin: Option<Origin>, started: Instant) {
        match origin {
            Some(Origin::Parent(parent)) => {
                // The service manager learns the new main PID before the old
                // one exits, or it would take that exit for the service's.
                if self.temporary.is_none() {
                    systemd::ready_as_main_pid();
                }
                let pid = parent.as_raw();
                match handover::notify_parent_ready(parent) {
                    Ok(true) => {
                        info!(parent = pid, elapsed = ?started.elapsed(), "serving; told the previous generation")
                    }
                    Ok(false) => {
                        warn!(parent = pid, "serving; the previous generation is gone (it died during the hand-over)")
                    }
                    Err(e) => {
                        warn!(parent = pid, cause = %e, "serving; could not signal the previous generation")
                    }
                }
            }
            Some(Origin::SelfExec { temporary }) => {
                systemd::ready_as_main_pid();
                info!(elapsed = ?started.elapsed(), "serving again under the same PID");
                keep_pid::after_reexec(temporary);
            }
            Some(Origin::Systemd) | None => {
                info!(pid = std::process::id(), "serving");
                systemd::ready();
            }
        }
    }

    /// Lets the handles count this generation's connections.
    fn count_connections(&self) {
        let counter = crate::handle::Counter(Box::new(self.conns.counter()));
        *self
            .settings
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(counter);
    }

    /// Phase 2: serves until this generation must drain, and says why.
    pub(crate) async fn serve(&mut self) -> Drain {
        let timeout = self.settings.stop_timeout;
        if let Some(parent) = self.temporary {
            let why = keep_pid::serve_temporary(&mut self.events, parent).await;
            return self.drain(why);
        }
        let restarter = Restarter::new(
            self.settings.signals.clone(),
            self.settings.ready_timeout,
            self.settings.keep_pid,
            self.settings.shared.clone(),
            self.settings.handoff.clone(),
        );
        loop {
            let fds = self.listener_fds();
            let fds: Vec<(&str, RawFd)> = fds.iter().map(|(n, fd)| (n.as_str(), *fd)).collect();
            match restarter.serve(&mut self.events, &fds).await {
                Outcome::Stop => {
                    systemd::stopping();
                    return self.drain(Why::Stopped);
                }
                Outcome::HandedOver { trigger, .. } if !self.settings.keep_pid => {
                    trigger.answer(Ok(()));
                    return self.drain(Why::HandedOver);
                }
                Outcome::HandedOver {
                    pid,
                    trigger,
                    since,
                } => {
                    let (settings, registrations, tls, bound) =
                        (&self.settings, &self.registrations, &self.tls, &self.bound);
                    let resume = || accept(settings, registrations, tls, bound);
                    let step = keep_pid::reexec(
                        keep_pid::Context {
                            conns: &self.conns,
                            temporary: pid,
                            trigger,
                            listeners: &fds,
                            signals: &self.settings.signals,
                            stop_timeout: timeout,
                            shared: &self.settings.shared,
                            since,
                            handoff: self.settings.handoff.as_ref(),
                        },
                        &mut self.events,
                        resume,
                    )
                    .await;
                    match step {
                        Reexec::Resumed(conns) => {
                            self.conns = conns;
                            self.count_connections();
                        }
                        Reexec::Stopping(drain, temporary) => {
                            systemd::stopping();
                            self.outlive = Some(temporary);
                            return drain;
                        }
                    }
                }
            }
        }
    }

    /// Stops accepting: the accept loops drop their listeners and so do we,
    /// before anyone hears of the drain (after a stop the socket then
    /// refuses connections; after a hand-over it lives on in the new
    /// generation). Then the drain starts.
    fn drain(&mut self, why: Why) -> Drain {
        self.conns.stop_accepting();
        self.bound.clear();
        Drain::start(
            &self.conns,
            why,
            self.settings.stop_timeout,
            &self.settings.shared,
        )
    }

    /// Phase 3: waits for the drain (stopping accepting if a `keep_pid`
    /// re-exec was abandoned, which kept the listeners), and cleans up
    /// after a final stop.
    pub(crate) async fn finish(mut self, mut drain: Drain) {
        self.bound.clear();
        let ended = drain.wait(&self.conns, &mut self.events).await;
        if let Some(temporary) = self.outlive {
            let cut = ended == crate::drain::Ended::CutShort;
            let timeout = self.settings.stop_timeout + Duration::from_secs(1);
            keep_pid::wait_for_temporary(temporary, cut, timeout).await;
        }
        if drain.why() == Why::Stopped && self.temporary.is_none() {
            self.final_cleanup();
        }
    }

    /// What the next generation gets: the listeners, then the extra
    /// descriptors of `crate::sockets`.
    fn listener_fds(&self) -> Vec<(String, RawFd)> {
        self.bound
            .iter()
            .zip(&self.handover_names)
            .map(|(b, name)| (name.clone(), b.listener.raw_fd()))
            .chain(self.extras.iter().cloned())
            .collect()
    }

    /// After the final stop nothing serves after us: the socket files and
    /// the PID file go. (A generation that handed over leaves both alone:
    /// they are its successor's now.)
    fn final_cleanup(&self) {
        for file in &self.socket_files {
            file.unlink_if_ours();
        }
        if let Some(path) = &self.settings.pid_file {
            pid_file::remove_pid_file(path);
        }
    }
}

/// Starts accepting on every listener (again, after a failed in-place
/// re-exec).
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
