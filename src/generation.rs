//! The life of one generation, owned here and nowhere else. Its phases, as
//! the crate docs number the protocol:
//!
//! 1. [`Generation::start`]: signal handlers, TLS configuration, the
//!    listeners (adopted or bound), the ready checks, accepting, the PID
//!    file, and telling whoever waits that this generation serves;
//! 2. serving ([`Generation::run`]): the restart policy, until a successor
//!    serves or a stop arrives (with `keep_pid`, the re-exec in place
//!    happens here);
//! 3. after a hand-over, probation (`probation`): draining, but holding the
//!    sockets, ready to serve again if the successor dies;
//! 4. the end: the drain finishes, and after a final stop the PID file and
//!    the socket files go.
//!
//! Every change of phase goes through one of a few verbs here
//! ([`Generation::begin_drain`], [`Generation::resume`], and the
//! [`Lifecycle`] verbs they call), so the handles, the sockets of
//! `endless::sockets`, systemd and the link to a predecessor always hear of
//! it the same way.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, info_span, warn, Instrument};

use crate::accepting;
use crate::config::{Config, Endpoint};
use crate::connections::{Connections, Tls};
use crate::counters::Counters;
use crate::drain::{Drain, Why};
use crate::error::{Error, Result};
use crate::events::{Events, Requests};
use crate::handover::{self, Kind, Origin, Outgoing};
use crate::keep_pid;
use crate::lifecycle::Lifecycle;
use crate::link::{self, Down, Up, Upstream};
use crate::listener::{Bound, LocalAddr, SocketFile};
use crate::probation::{self, Held};
use crate::quic::Http3;
use crate::restart::{Handoff, Outcome, Restarter, Successor};
use crate::signal::Signals;
use crate::succession::Succession;
use crate::watch::Watcher;
use crate::{pid_file, systemd};

/// A generation's HTTP/3 sockets and registrations, before it serves them.
type Http3Parts = (Vec<crate::quic::Parts>, Vec<crate::quic::Registration>);

/// One generation of a server.
pub(crate) struct Generation {
    config: Config,
    /// How a successor starts (from `config`, read once).
    succession: Succession,
    life: Arc<Lifecycle>,
    endpoints: Vec<Endpoint>,
    /// Each endpoint's TLS acceptor, if it serves HTTPS.
    tls: Vec<Tls>,
    bound: Vec<Bound>,
    /// The extra descriptors (`crate::sockets`), with their names.
    extras: Vec<(String, RawFd)>,
    conns: Connections,
    events: Events,
    /// For the file watcher and the control socket.
    requests: Requests,
    /// A `keep_pid` temporary generation (its parent's PID): it serves
    /// while its parent re-executes itself, and leaves the service manager,
    /// the PID file and the socket files to that parent.
    temporary: Option<u32>,
    /// The Unix socket files this server bound, removed after a final stop.
    socket_files: Vec<SocketFile>,
    watcher: Option<Watcher>,
    /// `WATCHDOG=1` to systemd, while this generation lives.
    _watchdog: Option<systemd::Repeating>,
    /// The link to the generation this one handed over to, once let go: it
    /// is told how this one's drain ended.
    successor: Option<link::Link>,
    /// A reload to run as soon as this generation serves (see
    /// `keep_pid`: one asked for during the drain before a re-exec).
    carried: Option<crate::events::Trigger>,
    /// A generation this one outlives whatever happens: the `keep_pid`
    /// temporary generation, draining after this image took over again.
    leftover: Option<crate::children::Outlived>,
    /// The HTTP/3 endpoints (feature `http3`).
    http3: Http3,
    /// Their UDP addresses, which HTTPS responses name (`Alt-Svc`).
    alt_svc: Vec<std::net::SocketAddr>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("endpoints", &self.endpoints)
            .field("temporary", &self.temporary)
            .finish_non_exhaustive()
    }
}

/// How the serving ended.
enum Ending {
    /// A stop, or a hand-over whose probation is over (or was none).
    Drain(Drain),
    /// A stop while a generation this one started still drains: it exits
    /// after that one (see `children::outlive`).
    Outlive(Drain, crate::children::Outlived),
}

impl Generation {
    /// Phase 1: from nothing to serving.
    pub(crate) async fn start(
        mut config: Config,
        mut endpoints: Vec<Endpoint>,
        commands: tokio::sync::mpsc::UnboundedReceiver<crate::events::Command>,
        life: Arc<Lifecycle>,
        requests: Requests,
    ) -> Result<Generation> {
        let signals = Signals::install(&config.signals)?;
        crate::state::log_inherited();
        crate::exe::warn_if_unsure();
        life.set_notice_spread(config.drain_notice_spread.min(config.stop_timeout / 2));
        let origin = handover::origin();
        let temporary = temporary_parent(origin.as_ref());
        inherit_counters(&life, origin);
        let events = Events::new(signals, config.signals.clone(), commands, life.clone())
            .with_upstream(Upstream::take(), temporary.is_some());
        if let Some((path, perms)) = &config.control {
            endpoints.push(crate::control::endpoint(
                path,
                perms.clone(),
                requests.clone(),
                life.clone(),
            ));
        }

        // Certificates are read by every generation, before it binds or
        // adopts anything: one that cannot load them never takes over.
        let tls = accepting::acceptors(&endpoints)?;
        let started = Instant::now();
        let (bound, addrs) =
            accepting::bind_and_check(&config, &endpoints, temporary.is_none()).await?;
        let regs = std::mem::take(&mut config.http3);
        let parts = Http3::sockets(&regs)?;
        let alt_svc = crate::quic::alt_svc(&parts);
        let mut http3 = Some((parts, regs));
        let extras = crate::sockets::freeze();

        let socket_files = bound
            .iter()
            .filter_map(|b| b.listener.socket_file().cloned())
            .collect();
        let mut generation = Generation {
            succession: config.succession(),
            conns: accepting::accept(&config, &endpoints, &tls, &bound, alt_svc.clone()),
            alt_svc,
            config,
            life,
            endpoints,
            tls,
            bound,
            extras,
            events,
            requests,
            temporary,
            socket_files,
            watcher: None,
            _watchdog: temporary.is_none().then(systemd::watchdog).flatten(),
            successor: None,
            carried: None,
            leftover: None,
            http3: Http3::default(),
        };
        // The PID file first: whoever learns that we serve (from `listening`,
        // or our parent from our signal) finds the file already current.
        if let (Some(path), None) = (&generation.config.pid_file, temporary) {
            pid_file::write_pid_file(path)?;
        }
        generation.start_http3(&mut http3, false)?;
        generation.serving(addrs);
        generation.announce(origin, started);
        generation.start_http3(&mut http3, true)?;
        if generation.temporary.is_none() {
            systemd::status(&serving_status());
        }
        Ok(generation)
    }

    /// Serves HTTP/3 (see `quic`): before this generation says it is
    /// ready, or, after a `keep_pid` re-exec (`reexec`), once the
    /// temporary generation, which `announce` took over, is gone.
    fn start_http3(&mut self, http3: &mut Option<Http3Parts>, reexec: bool) -> Result<()> {
        if reexec != self.after_reexec() {
            return Ok(());
        }
        let Some((sockets, regs)) = http3.take() else {
            return Ok(());
        };
        let after = match &self.leftover {
            Some(t) if reexec => t.exited().map(|f| Box::pin(f) as _),
            _ => None,
        };
        let handshake = self.config.tls_handshake_timeout;
        self.http3 = Http3::start(regs, sockets, after, handshake, crate::generation())?;
        Ok(())
    }

    fn after_reexec(&self) -> bool {
        matches!(handover::origin(), Some(Origin::SelfExec { .. }))
    }

    /// Accepting (again) on `addrs`: the handles, the watcher and the
    /// sockets of `endless::sockets` hear of it.
    fn serving(&mut self, addrs: Vec<(usize, LocalAddr)>) {
        let users = self.user_endpoints();
        let user = addrs
            .into_iter()
            .filter(|(i, _)| *i < users)
            .map(|(_, a)| a)
            .collect();
        self.life
            .serving(user, accepting::counter(&self.conns, &self.http3));
        if self.watcher.is_none() {
            self.watcher = self.spawn_watcher();
        }
    }

    /// The endpoints the program registered (the control socket, if any,
    /// comes after them).
    fn user_endpoints(&self) -> usize {
        self.endpoints.len() - usize::from(self.config.control.is_some())
    }

    fn spawn_watcher(&self) -> Option<Watcher> {
        // A temporary generation (`keep_pid`) leaves reloading to the
        // process it stands in for.
        if self.temporary.is_some() {
            return None;
        }
        let mut watched = self.config.watch_files.clone();
        if self.config.watch_binary {
            let path = crate::exe::current().path;
            watched.push((path, crate::watch::running_image()));
        }
        (!watched.is_empty())
            .then(|| crate::watch::spawn(watched, self.requests.clone(), self.life.clone()))
    }

    /// Tells whoever waits for it that this generation serves: the previous
    /// generation (by signal), the service manager, and, after an in-place
    /// re-exec, the temporary generation (which then drains).
    fn announce(&mut self, origin: Option<Origin>, started: Instant) {
        match origin {
            Some(Origin::Parent {
                parent,
                temporary,
                probation,
            }) => {
                // A predecessor on probation keeps the main PID until it
                // lets go; one that does not, or a temporary generation's
                // parent, hands it over now (or never).
                match (temporary, probation) {
                    (true, _) => {}
                    (false, true) => systemd::ready(),
                    (false, false) => {
                        systemd::main_pid_is_me();
                        self.life.probation_passed();
                    }
                }
                let pid = parent.as_raw();
                match handover::notify_parent_ready(parent) {
                    Ok(true) => {
                        info!(parent = pid, elapsed = ?started.elapsed(), "serving; told the previous generation")
                    }
                    Ok(false) => {
                        warn!(parent = pid, "serving; the previous generation is gone (it died during the hand-over)");
                        if !temporary {
                            systemd::main_pid_is_me();
                            self.life.probation_passed();
                        }
                    }
                    Err(e) => {
                        warn!(parent = pid, cause = %e, "serving; could not signal the previous generation")
                    }
                }
            }
            Some(Origin::SelfExec { temporary, reload }) => {
                systemd::main_pid_is_me();
                self.life.probation_passed();
                info!(elapsed = ?started.elapsed(), "serving again under the same PID");
                self.leftover = keep_pid::after_reexec(temporary);
                if reload {
                    self.carried = Some(crate::events::Trigger::Deferred);
                }
            }
            Some(Origin::Systemd) | None => {
                info!(pid = std::process::id(), "serving");
                systemd::ready();
            }
        }
    }

    /// Phases 2 to 4: serves until this generation is done, then drains
    /// and cleans up.
    pub(crate) async fn run(mut self) {
        let ending = self.serve().await;
        let (mut drain, mut outlived) = match ending {
            Ending::Drain(d) => (d, Vec::new()),
            Ending::Outlive(d, o) => (d, vec![o]),
        };
        outlived.extend(self.leftover.take());
        let span = info_span!("drain", why = ?drain.why());
        // A stop's drain may outlast the service manager's stop timeout.
        let _extending = (drain.stop_requested() && self.temporary.is_none())
            .then(systemd::extend_stop_timeout)
            .flatten();
        let ended = drain
            .wait(&self.conns, &mut self.events)
            .instrument(span)
            .await;
        self.life.connections_cut(drain.cut());
        if let Some(successor) = self.successor.take() {
            let ms = u64::try_from(drain.took().as_millis()).unwrap_or(u64::MAX);
            successor.send(Down::Drained {
                ms,
                cut: drain.cut(),
            });
        }
        let cut = ended == crate::drain::Ended::CutShort;
        for o in outlived {
            crate::children::outlive(o, cut, self.config.stop_timeout + Duration::from_secs(1))
                .await;
        }
        if drain.why().is_stop() && self.temporary.is_none() {
            self.final_cleanup();
        }
        self.life.ended();
    }

    /// Serves until this generation must drain, and says how.
    async fn serve(&mut self) -> Ending {
        if let Some(parent) = self.temporary {
            match keep_pid::serve_temporary(&mut self.events, parent).await {
                keep_pid::Temporary::Drain(why) => {
                    if why == Why::HandedOver {
                        // Our parent reads the shared socket again if its
                        // re-exec failed.
                        self.http3.hand_back();
                    }
                    return Ending::Drain(self.begin_drain(why));
                }
                keep_pid::Temporary::Orphaned => self.take_over_from_parent(),
            }
        }
        loop {
            let restarter = self.restarter();
            let handoff = HandoffOf {
                config: &self.config,
                bound: &self.bound,
                extras: &self.extras,
                life: &self.life,
                http3: &self.http3,
            };
            let waited = keep_pid::until_http3_serves(
                &mut self.events,
                &self.http3,
                &mut self.carried,
                self.config.stop_timeout,
            );
            let outcome = match waited.await {
                Some(stop) => Outcome::Stop(stop, None),
                None => {
                    restarter
                        .serve(&mut self.events, &handoff, self.carried.take())
                        .await
                }
            };
            let successor = match outcome {
                Outcome::Stop(stop, starting) => {
                    systemd::stopping();
                    link::report(Up::Stopping);
                    let drain = self.begin_drain(Why::Stopped(stop));
                    systemd::status(&format!(
                        "stopping: draining {} connections",
                        self.conns.active()
                    ));
                    // A new generation that was starting was told to stop
                    // too; it holds copies of the listeners and may serve a
                    // few connections: it goes first.
                    return match starting {
                        Some(outlived) => Ending::Outlive(drain, outlived),
                        None => Ending::Drain(drain),
                    };
                }
                Outcome::HandedOver(s) => s,
            };
            let ending = match self.succession {
                Succession::Spawn { .. } => self.hand_over(*successor).await,
                Succession::SpawnThenReexec => self.reexec(*successor).await,
            };
            if let Some(ending) = ending {
                return ending;
            }
        }
    }

    /// A successor serves: drain, and hold the sockets for its probation.
    /// `None`: it died within the probation, and this generation serves
    /// again.
    async fn hand_over(&mut self, successor: Successor) -> Option<Ending> {
        let span = info_span!(parent: &successor.span, "hand-over", successor = successor.pid);
        self.hold_for(successor).instrument(span).await
    }

    async fn hold_for(&mut self, mut successor: Successor) -> Option<Ending> {
        // Our predecessor, if it still holds its sockets for us, lets go.
        link::report(Up::HandedOver(successor.pid));
        let mut drain = self.begin_drain(Why::HandedOver);
        // The drain has started: whoever asked may now see it.
        let reloaded = crate::events::Reloaded {
            pid: successor.pid,
            generation: crate::handover::next_generation(),
            executable: successor.exe.path.clone(),
            identity: successor.exe.id.to_string(),
            same_executable: successor.exe.is_running_image(),
            probation: self.config.probation,
        };
        std::mem::replace(&mut successor.trigger, crate::events::Trigger::Forwarded)
            .answer(Ok(reloaded));
        if let Some(t) = successor.pending.take() {
            info!(trigger = %t, pid = successor.pid, "passing on the reload asked for during this one");
            successor.link.send(Down::Reload);
        }
        let window = self.config.probation;
        systemd::status(&format!(
            "draining {} connections; generation {} (pid {}) serves, on probation for {window:?}",
            self.conns.active(),
            crate::handover::next_generation(),
            successor.pid
        ));
        self.life.holding(true);
        let pid = successor.pid;
        let held =
            probation::hold(&mut self.events, successor, window, &mut drain, &self.conns).await;
        self.life.holding(false);
        match held {
            Held::LetGo(link) => {
                self.bound.clear();
                self.successor = Some(link);
                Some(Ending::Drain(drain))
            }
            Held::Stopping(outlived) => {
                self.bound.clear();
                Some(Ending::Outlive(drain, outlived))
            }
            Held::Failed(error) => {
                // Soon its PID means nothing to us (it may be reused).
                self.events.gone(pid);
                self.life.rolled_back(&error);
                self.resume(&error, drain);
                None
            }
        }
    }

    /// The restart policy of this generation as configured.
    fn restarter(&self) -> Restarter {
        Restarter {
            signals: self.config.signals.clone(),
            ready_timeout: self.config.ready_timeout,
            succession: self.succession,
            life: self.life.clone(),
        }
    }

    /// Stops accepting and starts the drain: the one place a drain starts.
    /// After a stop our copies of the listeners go at once (the port then
    /// refuses connections); after a hand-over they are held for the
    /// successor's probation.
    pub(crate) fn begin_drain(&mut self, why: Why) -> Drain {
        self.conns.start_drain(why == Why::HandedOver);
        self.http3.begin_drain();
        self.life.begin_drain();
        // A temporary generation never holds the listeners for anyone.
        if why.is_stop() || self.temporary.is_some() {
            self.bound.clear();
        }
        let timeout = self.config.stop_timeout;
        info!(
            connections = self.conns.active(),
            ?why,
            ?timeout,
            "draining"
        );
        Drain::new(why, timeout).with_http3(self.http3.clone())
    }

    /// Serves again on the listeners this generation held, after its
    /// successor failed (`error`): the connections of the abandoned drain
    /// finish by themselves (cut at its deadline).
    pub(crate) fn resume(&mut self, error: &Error, drain: Drain) {
        // The PID file first, as at the start: whoever finds this generation
        // serving finds the file naming it.
        if let Some(path) = &self.config.pid_file {
            if let Err(e) = pid_file::write_pid_file(path) {
                warn!(cause = %e, "cannot take the PID file back");
            }
        }
        let fresh = accepting::accept(
            &self.config,
            &self.endpoints,
            &self.tls,
            &self.bound,
            self.alt_svc.clone(),
        );
        self.http3.resume();
        let old = std::mem::replace(&mut self.conns, fresh);
        let deadline = drain.deadline();
        let life = self.life.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = old.drained() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    life.connections_cut(old.active() as u64);
                    old.cut_off().await;
                }
            }
        });
        // The main process again, unless this generation is itself still on
        // probation: its predecessor is then the main process, and makes
        // this one main when it lets go.
        if self.life.counters_now().in_probation {
            systemd::ready();
        } else {
            systemd::main_pid_is_me();
        }
        match accepting::bound_addrs(&self.endpoints, &self.bound) {
            Ok(addrs) => self.serving(addrs),
            Err(e) => warn!(cause = %e, "cannot read the listeners' addresses"),
        }
        error!(cause = %error, "serving again: the new generation failed");
        systemd::status(&format!(
            "{}; the new generation failed: {error}",
            serving_status()
        ));
    }

    /// A temporary generation whose parent is gone without handing back
    /// (its re-executed image failed): the only one holding the listeners,
    /// it serves on as the main generation.
    fn take_over_from_parent(&mut self) {
        let parent = self.temporary.take();
        error!(?parent, "the re-executed generation did not serve again; this temporary generation serves on in its place");
        if let Some(path) = &self.config.pid_file {
            if let Err(e) = pid_file::write_pid_file(path) {
                warn!(cause = %e, "cannot write the PID file");
            }
        }
        systemd::main_pid_is_me();
        self.life.probation_passed();
        self.watcher = self.spawn_watcher();
    }

    /// `keep_pid`: drain (keeping the listeners) and re-execute in place.
    /// `None`: the exec failed, and this generation serves again (with the
    /// reload asked for meanwhile, if any, carried).
    async fn reexec(&mut self, successor: Successor) -> Option<Ending> {
        // Should the exec fail, this generation passes the temporary one its
        // HTTP/3 packets again: the pair stays.
        self.http3.stay_linked();
        let drain = self.begin_drain(Why::HandedOver);
        let names: Vec<(Kind, String, RawFd)> = self
            .handoff()
            .descriptors()
            .iter()
            .map(|o| (o.kind, o.name.to_owned(), o.fd))
            .collect();
        let sections = self.state_sections(Some(successor.since));
        let step = keep_pid::reexec(
            keep_pid::Context {
                conns: &self.conns,
                successor,
                outgoing: names,
                blocked: self.config.signals.handled(),
                life: &self.life,
                sections,
            },
            drain,
            &mut self.events,
        )
        .await;
        match step {
            keep_pid::Step::Resumed(error, drain, deferred) => {
                self.resume(&error, drain);
                self.carried = deferred;
                None
            }
            keep_pid::Step::Stopping(drain, temporary) => {
                self.http3.unstay();
                systemd::stopping();
                Some(Ending::Outlive(drain, temporary))
            }
        }
    }

    fn handoff(&self) -> HandoffOf<'_> {
        HandoffOf {
            config: &self.config,
            bound: &self.bound,
            extras: &self.extras,
            life: &self.life,
            http3: &self.http3,
        }
    }

    fn state_sections(&self, since: Option<Instant>) -> Vec<(&'static str, Vec<u8>)> {
        self.handoff().sections(since)
    }

    /// After the final stop nothing serves after us: the socket files and
    /// the PID file go. (A generation that handed over leaves both alone:
    /// they are its successor's now.)
    fn final_cleanup(&self) {
        for file in &self.socket_files {
            file.unlink_if_ours();
        }
        if let Some(path) = &self.config.pid_file {
            pid_file::remove_pid_file(path);
        }
    }
}

/// What `systemctl status` says of a generation that serves.
pub(crate) fn serving_status() -> String {
    format!(
        "serving (generation {}, pid {})",
        crate::generation(),
        std::process::id()
    )
}

/// What a generation hands over: the parts of it the restart policy and
/// the re-exec read.
struct HandoffOf<'a> {
    config: &'a Config,
    bound: &'a [Bound],
    extras: &'a [(String, RawFd)],
    life: &'a Lifecycle,
    http3: &'a Http3,
}

impl HandoffOf<'_> {
    /// The state the next generation gets: the user's, the TLS ticket
    /// keys, and the reload counters (as of a reload asked for at `since`).
    fn sections(&self, since: Option<Instant>) -> Vec<(&'static str, Vec<u8>)> {
        let mut sections = Vec::new();
        if let Some(section) = self
            .config
            .handoff
            .as_ref()
            .and_then(crate::state::user_section)
        {
            sections.push(section);
        }
        if let Some(keys) = crate::tls::ticket_keys_state() {
            sections.push((crate::state::TLS_TICKETS, keys));
        }
        let counters = self.life.for_successor(since.unwrap_or_else(Instant::now));
        sections.push((crate::state::STATS, counters.encode()));
        sections
    }
}

impl Handoff for HandoffOf<'_> {
    /// The listeners, then the extra descriptors of `crate::sockets`.
    fn descriptors(&self) -> Vec<Outgoing<'_>> {
        let listeners = self.bound.iter().map(|b| Outgoing {
            kind: if b.owns_file() {
                Kind::Listener
            } else {
                Kind::ListenerUnowned
            },
            name: &b.name,
            fd: b.listener.raw_fd(),
        });
        let extras = self.extras.iter().map(|(name, fd)| Outgoing {
            kind: Kind::Extra,
            name,
            fd: *fd,
        });
        listeners.chain(extras).collect()
    }

    fn state(&self, since: Instant) -> Vec<(&'static str, Vec<u8>)> {
        self.sections(Some(since))
    }

    fn pairs(&self) -> std::io::Result<Vec<(String, std::os::fd::OwnedFd)>> {
        self.http3.pairs()
    }

    fn spawn_failed(&self) {
        self.http3.spawn_failed();
        // A new generation writes the PID file before it tells this one
        // that it serves; if it died in between, this one serves on, and
        // the file must name it again.
        if let Some(path) = &self.config.pid_file {
            if let Err(e) = pid_file::write_pid_file(path) {
                warn!(cause = %e, "cannot take the PID file back");
            }
        }
    }
}

/// Starts from the counters the previous generation handed over, with this
/// generation's own reload counted once its verdict is in: when its
/// probation is over, or, without one, when it serves
/// (`Generation::announce`). A temporary generation's reload is its
/// parent's to count.
fn inherit_counters(life: &Lifecycle, origin: Option<Origin>) {
    let inherited = crate::state::section(crate::state::STATS).and_then(Counters::decode);
    let (Some(counters), Some(origin)) = (inherited, origin) else {
        return;
    };
    let by_reload = !matches!(
        origin,
        Origin::Parent {
            temporary: true,
            ..
        }
    );
    life.inherit(Counters {
        in_probation: by_reload,
        ..counters
    });
}

/// For a `keep_pid` temporary generation, the PID of the generation that
/// started it (which re-executes in place once this one serves).
fn temporary_parent(origin: Option<&Origin>) -> Option<u32> {
    match origin {
        Some(Origin::Parent {
            parent,
            temporary: true,
            ..
        }) => Some(parent.as_raw() as u32),
        _ => None,
    }
}
