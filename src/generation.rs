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
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::drain::{Drain, Why};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::handover::{self, Origin};
use crate::keep_pid::{self, Reexec};
use crate::listener::{BindSpec, Listener, LocalAddr};
use crate::restart::{Outcome, Restarter};
use crate::serve::{Connections, Tls, IDLE_GRACE};
use crate::server::{Registration, Settings};
use crate::signal::Signals;
use crate::systemd;

/// A listener this generation serves, and the registration it serves.
struct Bound {
    name: String,
    listener: Arc<Listener>,
    registration: usize,
    tls: Tls,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// One generation of a server.
#[derive(Debug)]
pub(crate) struct Generation {
    settings: Settings,
    registrations: Vec<Registration>,
    bound: Vec<Bound>,
    conns: Connections,
    events: Events,
    /// A `keep_pid` temporary generation: it serves while its parent
    /// re-executes itself, and leaves the service manager, the PID file and
    /// the socket files to that parent.
    temporary: Option<u32>,
    unix_paths: Vec<std::path::PathBuf>,
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
        let bound = take_listeners(&registrations, &specs, tls, temporary.is_some())?;

        let mut addrs = Vec::with_capacity(bound.len());
        for b in &bound {
            let addr = b.listener.local_addr().map_err(|source| Error::Io {
                context: format!("cannot read the local address of {}", b.name),
                source,
            })?;
            info!(addr = %addr, name = %b.name, tls = b.tls.is_some(), "listening");
            addrs.push(addr);
        }
        let unix_paths = addrs
            .iter()
            .filter_map(|a| match a {
                LocalAddr::Unix(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let mut generation = Generation {
            conns: accept(&settings, &registrations, &bound),
            settings,
            registrations,
            bound,
            events,
            temporary,
            unix_paths,
        };
        // The PID file first: whoever learns that we serve (from `listening`,
        // or our parent from our signal) finds the file already current.
        if let (Some(path), None) = (&generation.settings.pid_file, temporary) {
            crate::server::write_pid_file(path)?;
        }
        generation.settings.serving.store(true, Ordering::Release);
        let _ = generation.settings.listening.send(Some(addrs));
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

    /// Phase 2: serves until this generation must drain, and says why.
    pub(crate) async fn serve(&mut self) -> Drain {
        let timeout = self.settings.stop_timeout;
        if let Some(parent) = self.temporary {
            let why = keep_pid::serve_temporary(&mut self.events, parent).await;
            return Drain::start(&self.conns, why, timeout);
        }
        let restarter = Restarter::new(
            self.settings.signals.clone(),
            self.settings.ready_timeout,
            self.settings.keep_pid,
        );
        loop {
            let fds = self.listener_fds();
            let fds: Vec<(&str, RawFd)> = fds.iter().map(|(n, fd)| (n.as_str(), *fd)).collect();
            match restarter.serve(&mut self.events, &fds).await {
                Outcome::Stop => {
                    systemd::stopping();
                    return Drain::start(&self.conns, Why::Stopped, timeout);
                }
                Outcome::HandedOver { trigger, .. } if !self.settings.keep_pid => {
                    trigger.answer(Ok(()));
                    return Drain::start(&self.conns, Why::HandedOver, timeout);
                }
                Outcome::HandedOver { pid, trigger } => {
                    let (settings, registrations, bound) =
                        (&self.settings, &self.registrations, &self.bound);
                    let resume = || accept(settings, registrations, bound);
                    let step = keep_pid::reexec(
                        keep_pid::Context {
                            conns: &self.conns,
                            temporary: pid,
                            trigger,
                            listeners: &fds,
                            signals: &self.settings.signals,
                            stop_timeout: timeout,
                        },
                        &mut self.events,
                        resume,
                    )
                    .await;
                    match step {
                        Reexec::Resumed(conns) => self.conns = conns,
                        Reexec::Stopping(drain) => {
                            systemd::stopping();
                            return drain;
                        }
                    }
                }
            }
        }
    }

    /// Phase 3: stops accepting (after a hand-over the sockets live on in
    /// the new generation), waits for the drain, and cleans up after a
    /// final stop.
    pub(crate) async fn finish(mut self, mut drain: Drain) {
        // The accept loops dropped their listeners when the drain started;
        // ours go now.
        self.bound.clear();
        drain.wait(&self.conns, &mut self.events).await;
        if drain.why() == Why::Stopped && self.temporary.is_none() {
            self.final_cleanup();
        }
    }

    fn listener_fds(&self) -> Vec<(String, RawFd)> {
        self.bound
            .iter()
            .map(|b| (b.name.clone(), b.listener.raw_fd()))
            .collect()
    }

    /// After the final stop nothing serves after us: the socket files and
    /// the PID file go. (A generation that handed over leaves both alone:
    /// they are its successor's now.)
    fn final_cleanup(&self) {
        for path in &self.unix_paths {
            match std::fs::remove_file(path) {
                Ok(()) => debug!(path = %path.display(), "removed the socket file"),
                Err(e) => {
                    warn!(path = %path.display(), cause = %e, "cannot remove the socket file")
                }
            }
        }
        if let Some(path) = &self.settings.pid_file {
            crate::server::remove_pid_file(path);
        }
    }
}

/// Starts accepting on every listener (again, after a failed in-place
/// re-exec).
fn accept(settings: &Settings, registrations: &[Registration], bound: &[Bound]) -> Connections {
    let conns = Connections::new(
        settings.header_read_timeout,
        IDLE_GRACE.min(settings.stop_timeout),
        settings.tls_handshake_timeout,
    );
    conns.spawn_sweeper();
    for b in bound {
        registrations[b.registration].svc.launch(
            &conns,
            b.name.clone(),
            b.listener.clone(),
            b.tls.clone(),
        );
    }
    conns
}

/// A listener for every registration: the inherited socket of the same name
/// or address if there is one, else a new one. Inherited sockets that match
/// nothing are closed. A temporary generation binds nothing new: the
/// process it stands in for binds new addresses after its re-exec (were it
/// to bind them, it would hold them and that process could not).
fn take_listeners(
    registrations: &[Registration],
    specs: &[BindSpec],
    tls: Vec<Tls>,
    temporary: bool,
) -> Result<Vec<Bound>> {
    let mut inherited = handover::take_inherited(Listener::check_inherited)?;
    let mut bound = Vec::with_capacity(registrations.len());
    for (i, ((reg, spec), tls)) in registrations.iter().zip(specs).zip(tls).enumerate() {
        let found =
            take_by_name(&mut inherited, &reg.addr).or_else(|| take_by_addr(&mut inherited, spec));
        let listener = match found {
            Some(fd) => {
                debug!(addr = %reg.addr, "adopting inherited socket");
                Listener::adopt(fd)?
            }
            None if temporary => {
                info!(addr = %reg.addr, "new address left to the generation re-executing in place");
                continue;
            }
            None => Listener::bind(&reg.addr, spec)?,
        };
        bound.push(Bound {
            name: reg.addr.clone(),
            listener: Arc::new(listener),
            registration: i,
            tls,
        });
    }
    for (name, fd) in inherited {
        warn!(name = %name, fd = ?fd, "inherited socket matches no registration; closing it");
    }
    Ok(bound)
}

/// The first inherited socket named `name`. Several registrations of one
/// name (say `127.0.0.1:0` twice) thus get their sockets back in order.
fn take_by_name(
    inherited: &mut Vec<(String, std::os::fd::OwnedFd)>,
    name: &str,
) -> Option<std::os::fd::OwnedFd> {
    let i = inherited.iter().position(|(n, _)| n == name)?;
    Some(inherited.remove(i).1)
}

/// The first inherited socket bound where `spec` asks (systemd's socket
/// units have names like `app.socket`, which match no registration).
fn take_by_addr(
    inherited: &mut Vec<(String, std::os::fd::OwnedFd)>,
    spec: &BindSpec,
) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    let i = inherited.iter().position(|(_, fd)| {
        Listener::inherited_addr(fd.as_fd()).is_some_and(|a| spec.matches(&a))
    })?;
    Some(inherited.remove(i).1)
}
