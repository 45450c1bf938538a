//! A generation's HTTP/3 endpoints (feature `http3`), driven by the same
//! verbs as its TCP listeners: started with the generation, told when a
//! successor is spawned, drained, cut off, and served again after a
//! rollback. Without the feature, an empty set whose verbs do nothing, so
//! that the lifecycle reads the same either way.
//!
//! Each endpoint's UDP socket is one of the carried sockets
//! (`endless::sockets`, named `http3:ADDR`): bound by the first generation,
//! adopted by every later one. What is new at each spawn is a datagram
//! socket pair per endpoint (see `http3`): the parent keeps one end as its
//! successor's, the child gets the other (kind `http3-pair`) as its
//! predecessor's. A `keep_pid` re-exec carries no pair: the re-executed
//! image starts HTTP/3 once its temporary generation has exited (the two
//! would share a tag), and new HTTP/3 connections are refused meanwhile
//! (clients use HTTP/2 on the TCP listener, where `Alt-Svc` sent them from).
//! Until then the image runs no reload ([`Http3::started`]: a temporary
//! generation it started would get no pair), and a drain that begins first
//! means it never starts HTTP/3.

// `Parts` is named only by the Unix generation.
#[cfg(feature = "http3")]
#[cfg_attr(not(unix), allow(unused_imports))]
pub(crate) use enabled::{alt_svc, Http3, Parts, Registration};

#[cfg(not(feature = "http3"))]
#[cfg_attr(not(unix), allow(unused_imports))]
pub(crate) use disabled::{alt_svc, Http3, Parts, Registration};

#[cfg(feature = "http3")]
mod enabled {
    use std::future::Future;
    use std::marker::PhantomData;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use tracing::{error, info};

    use crate::error::Result;
    use crate::http3::{tls_config_from_pem, Http3Listener, Http3Service};
    use crate::service::HttpBody;

    /// One address registered with `Server::register_http3`.
    pub(crate) struct Registration {
        pub(crate) addr: String,
        cert: PathBuf,
        key: PathBuf,
        serve: Box<dyn Serve>,
    }

    impl std::fmt::Debug for Registration {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Registration")
                .field("addr", &self.addr)
                .finish_non_exhaustive()
        }
    }

    /// Serves the registered service on a socket (the service's type
    /// erased).
    trait Serve: Send + Sync {
        fn serve(
            &self,
            name: &str,
            tag: u8,
            handshake: Duration,
            socket: std::net::UdpSocket,
            tls: Arc<rustls::ServerConfig>,
        ) -> Result<Http3Listener>;
    }

    struct Service<S, B>(S, PhantomData<fn() -> B>);

    impl<S, B> Serve for Service<S, B>
    where
        S: Http3Service<B>,
        B: HttpBody,
    {
        fn serve(
            &self,
            name: &str,
            tag: u8,
            handshake: Duration,
            socket: std::net::UdpSocket,
            tls: Arc<rustls::ServerConfig>,
        ) -> Result<Http3Listener> {
            Http3Listener::builder()
                .tag(tag)
                .name(name)
                .handshake_timeout(handshake)
                .serve(socket, tls, self.0.clone())
        }
    }

    impl Registration {
        pub(crate) fn new<S, B>(addr: &str, cert: PathBuf, key: PathBuf, svc: S) -> Registration
        where
            S: Http3Service<B>,
            B: HttpBody,
        {
            Registration {
                addr: addr.to_owned(),
                cert,
                key,
                serve: Box::new(Service(svc, PhantomData)),
            }
        }

        /// Its UDP socket: among the carried sockets (named `http3:ADDR`),
        /// or bound now where there are no reloads.
        fn socket(&self) -> Result<std::net::UdpSocket> {
            // `:port`: every interface, IPv6 and IPv4, as over TCP.
            #[cfg(unix)]
            return crate::sockets::udp(&format!("http3:{}", self.addr), &self.addr);
            #[cfg(not(unix))]
            {
                let bind_err = |source| crate::error::Error::Bind {
                    addr: self.addr.clone(),
                    source,
                };
                match self.addr.strip_prefix(':').map(str::parse::<u16>) {
                    Some(Ok(port)) => crate::listener::bind_udp_any_interface(port)
                        .map(Into::into)
                        .map_err(bind_err),
                    _ => std::net::UdpSocket::bind(&self.addr).map_err(bind_err),
                }
            }
        }

        /// Serves it on `socket` with `tag`, attached to the predecessor's
        /// pair if one was handed over.
        fn start(&self, tag: u8, handshake: Duration, parts: Parts) -> Result<Http3Listener> {
            let tls = tls_config_from_pem(&format!("udp:{}", self.addr), &self.cert, &self.key)?;
            let listener = self
                .serve
                .serve(&self.addr, tag, handshake, parts.socket, tls)?;
            #[cfg(unix)]
            if let Some(pair) = parts.predecessor {
                listener.attach_predecessor(std::os::unix::net::UnixDatagram::from(pair))?;
            }
            Ok(listener)
        }
    }

    /// The UDP addresses HTTP/3 is served on, for the `Alt-Svc` header of
    /// the HTTPS listeners on the same addresses.
    pub(crate) fn alt_svc(parts: &[Parts]) -> Vec<std::net::SocketAddr> {
        parts
            .iter()
            .filter_map(|p| p.socket.local_addr().ok())
            .collect()
    }

    /// What one registration serves on: its UDP socket, and the end of
    /// the pair from the previous generation, if one was handed over (both
    /// taken before the carried sockets are frozen, which closes what is
    /// left).
    #[derive(Debug)]
    pub(crate) struct Parts {
        socket: std::net::UdpSocket,
        #[cfg(unix)]
        predecessor: Option<std::os::fd::OwnedFd>,
    }

    /// The HTTP/3 endpoints of one generation; cheap to clone (the drain
    /// keeps one).
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Http3(Arc<Set>);

    #[derive(Debug)]
    struct Set {
        state: Mutex<State>,
        /// Cancelled once the endpoints serve, or never will (a drain began
        /// before a deferred start); at once but for a deferred start.
        started: CancellationToken,
    }

    impl Default for Set {
        /// Started: an empty set serves nothing, and never will.
        fn default() -> Set {
            let started = CancellationToken::new();
            started.cancel();
            Set {
                state: Mutex::default(),
                started,
            }
        }
    }

    #[derive(Debug, Default)]
    struct State {
        listeners: Vec<Http3Listener>,
        /// The drain has begun: a deferred start starts nothing.
        draining: bool,
    }

    impl Http3 {
        /// Takes (or binds) each registration's UDP socket. Called before
        /// the carried sockets are frozen.
        pub(crate) fn sockets(regs: &[Registration]) -> Result<Vec<Parts>> {
            regs.iter()
                .map(|r| {
                    Ok(Parts {
                        socket: r.socket()?,
                        #[cfg(unix)]
                        predecessor: crate::handover::take(
                            crate::handover::Kind::Http3Pair,
                            Some(&r.addr),
                        )
                        .map(|i| i.take()),
                    })
                })
                .collect()
        }

        /// Serves every registration on its socket, now, or, for a `keep_pid`
        /// re-executed image, once `after` resolves (its temporary
        /// generation has exited).
        /// `handshake`: the TLS handshake timeout; `generation`: this
        /// generation's number, whose low byte tags its connection IDs
        /// (passed in: the hand-over layer's number, read by the caller).
        pub(crate) fn start(
            regs: Vec<Registration>,
            sockets: Vec<Parts>,
            after: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
            handshake: Duration,
            generation: u64,
        ) -> Result<Http3> {
            let tag = (generation % 256) as u8;
            let Some(after) = after.filter(|_| !regs.is_empty()) else {
                let set = Http3::default();
                for (r, s) in regs.iter().zip(sockets) {
                    let l = r.start(tag, handshake, s)?;
                    set.state().listeners.push(l);
                }
                return Ok(set);
            };
            info!("HTTP/3 starts once the temporary generation has exited");
            let set = Http3(Arc::new(Set {
                state: Mutex::default(),
                started: CancellationToken::new(),
            }));
            let later = set.clone();
            tokio::spawn(async move {
                after.await;
                later.start_deferred(&regs, sockets, tag, handshake);
            });
            Ok(set)
        }

        /// The deferred start, unless the drain began meanwhile: nothing
        /// would drain what started now.
        fn start_deferred(
            &self,
            regs: &[Registration],
            sockets: Vec<Parts>,
            tag: u8,
            handshake: Duration,
        ) {
            // Held across the start, so that a drain beginning meanwhile
            // finds the listeners.
            let mut state = self.state();
            if state.draining {
                info!("HTTP/3 not started: this generation drains");
            } else {
                for (r, s) in regs.iter().zip(sockets) {
                    match r.start(tag, handshake, s) {
                        Ok(l) => state.listeners.push(l),
                        Err(e) => error!(addr = %r.addr, cause = %e, "cannot serve HTTP/3"),
                    }
                }
            }
            drop(state);
            self.0.started.cancel();
        }

        /// Resolves once the endpoints serve (at once, but for a deferred
        /// start: see `start`), or never will.
        pub(crate) async fn started(&self) {
            self.0.started.cancelled().await;
        }

        /// Whether they serve (or never will) already.
        pub(crate) fn is_started(&self) -> bool {
            self.0.started.is_cancelled()
        }

        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.0.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        fn each(&self) -> Vec<Http3Listener> {
            self.state().listeners.clone()
        }

        /// For a spawn: a pair per endpoint, ours attached as the
        /// successor's; the child's ends, by registered address.
        #[cfg(unix)]
        pub(crate) fn pairs(&self) -> std::io::Result<Vec<(String, std::os::fd::OwnedFd)>> {
            let mut out = Vec::new();
            for l in self.each() {
                let (mine, theirs) = crate::http3::socket_pair()?;
                l.attach_successor(mine)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                out.push((l.name().to_owned(), theirs.into()));
            }
            Ok(out)
        }

        /// The spawned generation failed before it served: forget it.
        pub(crate) fn spawn_failed(&self) {
            for l in self.each() {
                l.detach_successor();
            }
        }

        /// The drain starts (a successor serves, or a stop).
        pub(crate) fn begin_drain(&self) {
            let mut state = self.state();
            state.draining = true;
            for l in &state.listeners {
                l.begin_drain();
            }
        }

        /// The drain before a `keep_pid` re-exec: once drained, each
        /// endpoint keeps its pair to the temporary generation (see
        /// `Http3Listener::stay_linked`).
        pub(crate) fn stay_linked(&self) {
            for l in self.each() {
                l.stay_linked();
            }
        }

        /// The re-exec will not happen (a stop came): see
        /// `Http3Listener::unstay`.
        pub(crate) fn unstay(&self) {
            for l in self.each() {
                l.unstay();
            }
        }

        /// A `keep_pid` temporary generation is handed back: where its
        /// parent serves again (the re-exec failed), it reads the shared
        /// socket and this generation stops reading (see
        /// `Http3Listener::hand_back`).
        pub(crate) fn hand_back(&self) {
            for l in self.each() {
                l.hand_back();
            }
        }

        /// Every endpoint has drained (see `Http3Listener::drained`).
        pub(crate) async fn drained(&self) {
            for d in self.each().iter().map(|l| l.drained()) {
                d.await;
            }
        }

        /// The stop timeout: every connection left is closed.
        pub(crate) fn cut_off(&self) {
            for l in self.each() {
                l.cut_off();
            }
        }

        /// Serves again (the successor failed).
        pub(crate) fn resume(&self) {
            let mut state = self.state();
            state.draining = false;
            for l in &state.listeners {
                l.resume();
            }
        }

        /// Connections open now.
        pub(crate) fn open(&self) -> usize {
            self.each().iter().map(|l| l.stats().connections_open).sum()
        }
    }
}

#[cfg(not(feature = "http3"))]
mod disabled {
    use std::future::Future;

    use crate::error::Result;

    /// Never made without the feature.
    #[derive(Debug)]
    pub(crate) enum Registration {}

    /// Never made without the feature.
    #[derive(Debug)]
    pub(crate) enum Parts {}

    /// Nothing to advertise.
    pub(crate) fn alt_svc(_: &[Parts]) -> Vec<std::net::SocketAddr> {
        Vec::new()
    }

    /// No endpoints.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Http3(());

    impl Http3 {
        pub(crate) fn sockets(_: &[Registration]) -> Result<Vec<Parts>> {
            Ok(Vec::new())
        }

        pub(crate) fn start(
            _: Vec<Registration>,
            _: Vec<Parts>,
            _: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
            _: std::time::Duration,
            _: u64,
        ) -> Result<Http3> {
            Ok(Http3::default())
        }

        #[cfg(unix)]
        pub(crate) fn pairs(&self) -> std::io::Result<Vec<(String, std::os::fd::OwnedFd)>> {
            Ok(Vec::new())
        }

        pub(crate) fn spawn_failed(&self) {}

        pub(crate) async fn started(&self) {}

        pub(crate) fn is_started(&self) -> bool {
            true
        }

        pub(crate) fn stay_linked(&self) {}

        pub(crate) fn unstay(&self) {}

        pub(crate) fn hand_back(&self) {}

        pub(crate) fn begin_drain(&self) {}

        pub(crate) async fn drained(&self) {}

        pub(crate) fn cut_off(&self) {}

        pub(crate) fn resume(&self) {}

        pub(crate) fn open(&self) -> usize {
            0
        }
    }
}
