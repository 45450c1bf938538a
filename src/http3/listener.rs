//! [`Http3Listener`]: one generation's HTTP/3 endpoint, and the few verbs
//! a lifecycle drives it with.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::router::{Router, Side as LinkSide};
use super::serve::{self, Shared};
use super::{cid, config, Http3Service};
use crate::error::{Error, Result};
use crate::service::HttpBody;

/// How long a connection that was told to go away may stay open with no
/// request in flight before it is closed (time for its last response to
/// be acknowledged). As `connections`' idle grace for HTTP/1.
const IDLE_GRACE: Duration = Duration::from_secs(1);
/// The longest a QUIC handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay silent before it is closed (quinn's
/// default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest duration handed to a timer: a year is "never", and
/// `Instant + Duration::MAX` panics.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);

fn bounded(d: Duration) -> Duration {
    d.min(LONGEST)
}

/// How often a drained generation checks that the predecessor it relays
/// for is still there.
const PROBE: Duration = Duration::from_millis(250);

/// What an [`Http3Listener`] has counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) struct Stats {
    /// Connections open now (handshakes included).
    pub connections_open: usize,
    /// Connections accepted since the start.
    pub connections_accepted: u64,
    /// Requests received since the start.
    pub requests: u64,
    /// Datagrams passed to an older generation.
    pub forwarded_to_predecessor: u64,
    /// Datagrams passed to the newer generation.
    pub forwarded_to_successor: u64,
    /// Datagrams received from a neighbour (delivered here or passed on).
    pub received_forwarded: u64,
    /// Datagrams whose connection ID names a generation that is not
    /// (or no longer) there: dropped.
    pub dropped_unknown_generation: u64,
    /// Datagrams that are no QUIC packet for us (junk, truncated, a
    /// connection ID that is none of ours) and malformed messages on a
    /// pair: dropped.
    pub dropped_malformed: u64,
    /// Datagrams (or routes and claims) a pair refused: it was full (the
    /// neighbour did not keep up), or the message too large for it.
    pub dropped_pair_full: u64,
}

/// The settings of an [`Http3Listener`], before it serves.
#[derive(Debug, Clone)]
pub(crate) struct Http3Builder {
    name: Option<String>,
    tag: u8,
    idle_grace: Duration,
    handshake_timeout: Duration,
    idle_timeout: Duration,
}

impl Default for Http3Builder {
    fn default() -> Self {
        Http3Builder {
            name: None,
            tag: 0,
            idle_grace: IDLE_GRACE,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

impl Http3Builder {
    /// The generation's tag, carried in every connection ID it issues:
    /// distinct among the generations alive at once. A lifecycle gives
    /// `endless::generation() as u8` (generations repeat only after 256
    /// reloads). 0 by default.
    pub(crate) fn tag(mut self, tag: u8) -> Self {
        self.tag = tag;
        self
    }

    /// The listener's name in [`ConnInfo::listener`](crate::ConnInfo::listener):
    /// its registered address. The socket's address by default.
    pub(crate) fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// After the drain starts, how long a connection with no request in
    /// flight stays open before it is closed. 1 s by default.
    #[cfg(test)]
    pub(crate) fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// The longest a QUIC handshake may take. 10 s by default.
    pub(crate) fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Serves `svc` over HTTP/3 on `socket` (this generation's copy of the
    /// shared UDP socket) with `tls` (see
    /// [`tls_config_from_pem`](super::tls_config_from_pem); its ALPN is set
    /// to `h3` and 0-RTT is off). Spawns its tasks on the current tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when called outside a tokio runtime or when `tls`
    /// cannot serve QUIC; [`Error::Io`] naming the socket when it cannot be
    /// set up.
    pub(crate) fn serve<S, B>(
        self,
        socket: std::net::UdpSocket,
        tls: Arc<rustls::ServerConfig>,
        svc: S,
    ) -> Result<Http3Listener>
    where
        S: Http3Service<B>,
        B: HttpBody,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config {
                setting: "http3",
                reason: "Http3Builder::serve must be called within a tokio runtime".to_owned(),
            });
        }
        let local = socket.local_addr().map_err(|source| Error::Io {
            context: "cannot read the HTTP/3 socket's address".to_owned(),
            source,
        })?;
        let io_error = |source| Error::Io {
            context: format!("cannot serve HTTP/3 on udp {local}"),
            source,
        };
        let router = Arc::new(Router::new(socket, self.tag).map_err(io_error)?);
        let tag = self.tag;
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.cid_generator(move || Box::new(cid::TaggedCids::new(tag)));
        let server_config =
            config::quinn_server_config(config::for_h3(&tls), bounded(self.idle_timeout))?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            router.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(io_error)?;
        let shared = Arc::new(Shared {
            name: self.name.unwrap_or_else(|| local.to_string()).into(),
            local,
            draining: std::sync::Mutex::new(CancellationToken::new()),
            cut: std::sync::Mutex::new(CancellationToken::new()),
            open: Default::default(),
            accepted: Default::default(),
            requests: Default::default(),
            closed: Default::default(),
            idle_grace: bounded(self.idle_grace),
            handshake_timeout: bounded(self.handshake_timeout),
        });
        tokio::spawn(serve::accept_loop(endpoint.clone(), shared.clone(), svc));
        info!(listener = %shared.name, %local, tag, "HTTP/3: serving");
        Ok(Http3Listener {
            inner: Arc::new(Inner {
                endpoint,
                router,
                shared,
                tag,
                stay_linked: AtomicBool::new(false),
                drained: AtomicBool::new(false),
            }),
        })
    }
}

/// One generation's HTTP/3 endpoint on its copy of the shared UDP socket:
/// it serves, routes datagrams to the generation that owns them, and
/// drains.
///
/// Cloning it is cheap (one reference count); the endpoint closes when the
/// last clone is dropped, telling its neighbours it is gone.
///
/// See [the module](super) for the order a lifecycle calls it in.
#[derive(Debug, Clone)]
pub(crate) struct Http3Listener {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    router: Arc<Router>,
    shared: Arc<Shared>,
    tag: u8,
    /// Once drained, keep the successor's pair (see
    /// [`Http3Listener::stay_linked`]).
    stay_linked: AtomicBool,
    /// The drain is over (see [`Http3Listener::drained`]).
    drained: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.router.leave();
        self.shared.cut().cancel();
        self.endpoint.close(0u32.into(), b"");
    }
}

impl Http3Listener {
    /// A listener's settings, to [`serve`](Http3Builder::serve) with.
    pub(crate) fn builder() -> Http3Builder {
        Http3Builder::default()
    }

    /// The UDP address it serves on.
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> std::net::SocketAddr {
        self.inner.shared.local
    }

    /// Its name (the registered address).
    pub(crate) fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// Its generation tag.
    #[cfg(test)]
    pub(crate) fn tag(&self) -> u8 {
        self.inner.tag
    }

    /// Takes the old generation's end of a pair to its successor (call it
    /// before spawning the successor, whose end it is handed): datagrams
    /// for the successor's connections that this generation reads are
    /// passed on, and so, once it drains, are new connections.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the end cannot be made non-blocking or registered.
    #[cfg(unix)]
    pub(crate) fn attach_successor(&self, end: std::os::unix::net::UnixDatagram) -> Result<()> {
        let sock = super::pair::adopt(end).map_err(|source| Error::Io {
            context: "cannot use the HTTP/3 pair to the next generation".to_owned(),
            source,
        })?;
        self.inner.router.attach(LinkSide::Successor, sock);
        Ok(())
    }

    /// Forgets the successor (one that failed to start): this generation
    /// serves on as before.
    pub(crate) fn detach_successor(&self) {
        self.inner.router.detach(LinkSide::Successor);
    }

    /// Takes the new generation's end of the pair from its predecessor
    /// (call it at start, before reporting ready): datagrams for the
    /// predecessor's connections (and for any generation still behind it)
    /// are passed back to it until it is gone.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the end cannot be made non-blocking or registered.
    #[cfg(unix)]
    pub(crate) fn attach_predecessor(&self, end: std::os::unix::net::UnixDatagram) -> Result<()> {
        let sock = super::pair::adopt(end).map_err(|source| Error::Io {
            context: "cannot use the HTTP/3 pair from the previous generation".to_owned(),
            source,
        })?;
        self.inner.router.attach(LinkSide::Predecessor, sock);
        Ok(())
    }

    /// The drain before a `keep_pid` re-exec: once drained, stay linked to
    /// the temporary generation (the exec closes our end; should it fail,
    /// this generation serves again, reads the shared socket and passes the
    /// temporary generation its packets over that pair).
    pub(crate) fn stay_linked(&self) {
        self.inner.stay_linked.store(true, Ordering::SeqCst);
    }

    /// The re-exec will not happen (a stop came): the drain ends as any
    /// other, telling the temporary generation that this one is gone (now,
    /// if it is over already), so that it need not wait for this process
    /// to exit, which waits for it.
    pub(crate) fn unstay(&self) {
        // `drained` is set before `stay_linked` is read there: one of the
        // two sees the other's change.
        if self.inner.stay_linked.swap(false, Ordering::SeqCst)
            && self.inner.drained.load(Ordering::SeqCst)
        {
            self.inner.router.leave();
        }
    }

    /// A `keep_pid` temporary generation is handed back: see
    /// `Router::predecessor_reads_again`. Whether its parent serves again.
    pub(crate) fn hand_back(&self) -> bool {
        let again = self.inner.router.predecessor_reads_again();
        if again {
            info!(
                tag = self.inner.tag,
                "HTTP/3: the previous generation serves again and reads the shared socket"
            );
        }
        again
    }

    /// Starts the drain: no new connection stays here (they go to a
    /// successor that reads, or, with none, are refused), every connection
    /// gets GOAWAY, and, once a successor has shown that it reads (its
    /// routes came), this generation stops reading the shared socket and
    /// reads only what the successor passes it. Idempotent.
    ///
    /// If that successor dies later, nothing reads the shared socket for
    /// this generation's connections any more, and they end at the
    /// cut-off: reading again could take the packets of a newer generation
    /// that this one does not know of.
    pub(crate) fn begin_drain(&self) {
        let token = self.inner.shared.draining();
        if token.is_cancelled() {
            return;
        }
        self.inner.router.begin_drain();
        token.cancel();
        info!(
            tag = self.inner.tag,
            connections = self.inner.shared.open.load(Ordering::Acquire),
            "HTTP/3: draining"
        );
    }

    /// Resolves once the drain has started and is over: every connection
    /// is closed, and no predecessor needs this generation to relay for it
    /// (it has said it is gone, its end of the pair is closed, or it reads
    /// the shared socket again). Then it tells its neighbours that it is
    /// gone.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe; any number may wait.
    pub(crate) fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let draining = inner.shared.draining();
            draining.cancelled().await;
            loop {
                let mut closed = pin!(inner.shared.closed.notified());
                let mut changed = pin!(inner.router.changed.notified());
                closed.as_mut().enable();
                changed.as_mut().enable();
                let open = inner.shared.open.load(Ordering::Acquire);
                if open == 0 && !inner.router.relays_for_predecessor() {
                    // Nothing is left to receive: the successor may forget
                    // us now, not only when the process exits (unless we
                    // may serve again for it: see `stay_linked`).
                    inner.drained.store(true, Ordering::SeqCst);
                    if inner.stay_linked.load(Ordering::SeqCst) {
                        inner.router.detach(LinkSide::Predecessor);
                    } else {
                        inner.router.leave();
                    }
                    info!(tag = inner.tag, "HTTP/3: drained");
                    return;
                }
                tokio::select! {
                    _ = closed => {}
                    _ = changed => {}
                    _ = tokio::time::sleep(PROBE) => inner.router.probe_predecessor(),
                }
            }
        }
    }

    /// Serves again after a drain began (the successor failed): reads the
    /// shared socket and accepts new connections, with the neighbours it
    /// has (a successor still alive, a `keep_pid` temporary generation
    /// whose re-exec failed, still gets its packets). The connections told
    /// to go away finish as they were.
    pub(crate) fn resume(&self) {
        let mut draining = self
            .inner
            .shared
            .draining
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !draining.is_cancelled() {
            return;
        }
        *draining = CancellationToken::new();
        drop(draining);
        // A drain cut at its deadline closed every connection; new ones
        // are served again.
        let mut cut = self
            .inner
            .shared
            .cut
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cut.is_cancelled() {
            *cut = CancellationToken::new();
        }
        drop(cut);
        self.inner.stay_linked.store(false, Ordering::SeqCst);
        self.inner.drained.store(false, Ordering::SeqCst);
        self.inner.router.resume();
        info!(tag = self.inner.tag, "HTTP/3: serving again");
    }

    /// Cuts the drain short (at the stop timeout): closes every connection,
    /// drops every request, and lets go of the predecessor. Idempotent.
    /// The endpoint stays open: should the successor fail after all, the
    /// generation serves HTTP/3 again ([`Http3Listener::resume`]).
    pub(crate) fn cut_off(&self) {
        self.begin_drain();
        let cut = self.inner.shared.cut();
        if cut.is_cancelled() {
            return;
        }
        info!(
            tag = self.inner.tag,
            connections = self.inner.shared.open.load(Ordering::Acquire),
            "HTTP/3: cutting off"
        );
        cut.cancel();
        self.inner.router.detach(LinkSide::Predecessor);
    }

    /// What it has counted so far.
    pub(crate) fn stats(&self) -> Stats {
        let c = &self.inner.router.counters;
        let s = &self.inner.shared;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            connections_open: s.open.load(Ordering::Acquire),
            connections_accepted: get(&s.accepted),
            requests: get(&s.requests),
            forwarded_to_predecessor: get(&c.forwarded_to_predecessor),
            forwarded_to_successor: get(&c.forwarded_to_successor),
            received_forwarded: get(&c.received_forwarded),
            dropped_unknown_generation: get(&c.dropped_unknown_generation),
            dropped_malformed: get(&c.dropped_malformed),
            dropped_pair_full: get(&c.dropped_pair_full),
        }
    }
}
