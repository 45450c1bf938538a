//! HTTP/3 (feature `http3`): the same service over QUIC, on a UDP socket
//! whose connections survive reloads.
//!
//! # Why this is hard, and how it is done
//!
//! A UDP socket is both the listener and every connection's data path.
//! Handing it to a new generation, as [`sockets::udp`](crate::sockets::udp)
//! does, sends the old generation's packets to whichever process reads
//! first, and every QUIC connection breaks. So:
//!
//! 1. **Every connection ID names its generation.** Each generation's
//!    quinn issues connection IDs that carry its *tag* (its number modulo
//!    256) in their first byte, with a check that tells them from the
//!    random IDs clients choose (layout: [`CID_LEN`] bytes, see the
//!    `cid` source). Clients put the ID in every packet they send.
//! 2. **The newest generation reads the socket and routes.** quinn reads
//!    through a router (a custom `AsyncUdpSocket`), which keeps what is
//!    its own and passes each datagram whose connection ID names an older
//!    generation to it, over a Unix datagram socket pair made for the
//!    hand-over, with the client's address, the local address and the ECN
//!    bits. Junk, truncated packets and IDs of generations nobody knows
//!    are dropped and counted ([`Stats`]), never a panic.
//! 3. **The old generation answers through its own copy of the socket**
//!    (the same bound address), sends HTTP/3 GOAWAY on every connection,
//!    finishes its requests, and is done when its connections are gone or
//!    at the stop timeout.
//! 4. **New connections go to the newest generation.** A draining
//!    generation passes the first packets of connections it does not know
//!    to its successor; the first flight of a handshake that one
//!    generation started is claimed by it (see `router`), so it does not
//!    split between two.
//!
//! ```text
//!                 client packets (one UDP socket, shared)
//!                              │
//!                              ▼
//!   ┌───────────────── generation N+1 (reads) ─────────────────┐
//!   │ router: DCID tag = N+1 → quinn N+1      Initial → quinn N+1 │
//!   │         DCID tag = N   → pair ──────────────┐               │
//!   └─────────────────────────────────────────────┼───────────────┘
//!                                                 ▼
//!   ┌──────────── generation N (draining, reads only the pair) ──┐
//!   │ quinn N ── answers through its copy of the shared socket ──┼─► client
//!   └────────────────────────────────────────────────────────────┘
//! ```
//!
//! A datagram moves either towards older generations only (through any
//! number of them, when reloads come faster than drains) or one step to
//! the newer one; so none can loop.
//!
//! # Serving
//!
//! [`Http3Listener`] serves a hyper service whose requests have a
//! [`RequestBody`]: an axum `Router` (as
//! `TowerToHyperService::new(router)`, unchanged from HTTP/1 and HTTP/2),
//! or a `service_fn(|req: Request<endless::RequestBody>| …)`, served over
//! HTTP/1 and HTTP/2 as [`WithRequestBody::new(svc)`](crate::WithRequestBody).
//! The TLS configuration comes from the same files as the HTTPS listeners
//! ([`tls_config_from_pem`]); [`alt_svc`] makes the header that advertises
//! HTTP/3 on HTTPS responses. [`ConnInfo::current`](crate::ConnInfo::current)
//! works in handlers, with the client's UDP address, SNI and ALPN (`h3`).
//!
//! # Driving it from a generation's lifecycle
//!
//! Across a real reload (N spawns N+1), in this order:
//!
//! 1. N, before the spawn: `let (mine, theirs) = socket_pair()?;` then
//!    `n.attach_successor(mine)?;` (N queues its routes and claims for
//!    N+1 at once, so N+1 reads them before anything else). `theirs` and
//!    N's copy of the UDP socket cross the exec as inherited FDs (both
//!    close-on-exec until the spawn places them). After the spawn, N
//!    closes its copy of `theirs`.
//! 2. N+1, at start: builds its listener over its copy of the UDP socket
//!    with its own tag ([`Http3Builder::tag`], `endless::generation() as
//!    u8`), then `attach_predecessor(theirs)?`, both before it reports
//!    ready; from then on it reads the shared socket and routes.
//! 3. N, at the hand-over (N+1 ready): `begin_drain()`, then awaits
//!    `drained()`, or calls `cut_off()` at the stop timeout, before it
//!    exits. N+1's own `drained()` waits for N to be gone, as it relays
//!    N's packets until then.
//! 4. If N+1 fails to start: N calls `detach_successor()` and serves on.
//!
//! A stop without a successor is `begin_drain()` alone: the generation
//! keeps reading the socket for its connections and refuses new ones.
//!
//! # Limits
//!
//! - **Clients that migrate** (a new address, NAT rebinding) keep their
//!   connection: routing follows the connection ID, not the address, and
//!   the owner answers the new address. [`ConnInfo::peer_addr`](crate::ConnInfo::peer_addr)
//!   stays the address the connection started from.
//! - **0-RTT** is off: early data is replayable, which a server must not
//!   choose for its services. A client's first flight is claimed by the
//!   generation that started its handshake for 10 s (see `router`).
//! - **GSO and GRO** are used as quinn uses them: a GRO batch is split at
//!   its stride and routed datagram by datagram.
//! - **Two live generations must not share a tag** (256 reloads apart).
//! - **Windows** serves HTTP/3 without reloads (no socket pairs, no exec);
//!   macOS has everything (type-checked only).
//! - A successor that dies after the hand-over leaves the draining
//!   generation's connections without inbound packets (see
//!   [`Http3Listener::begin_drain`]).

#[cfg(all(test, unix))]
mod bench;
mod body;
mod cid;
mod config;
mod listener;
mod pair;
mod router;
mod serve;
// The scenarios use socket pairs: Unix only.
#[cfg(all(test, unix))]
mod tests;
mod wire;

pub use body::{RequestBody, WithRequestBody};
pub(crate) use config::{alt_svc, tls_config_from_pem};
pub(crate) use listener::Http3Listener;
#[cfg(unix)]
pub(crate) use pair::socket_pair;

use crate::service::{BoxError, HttpBody};
use hyper::{Request, Response};

/// A hyper service [`Http3Listener`] can serve, with `B` its response
/// body: a service of `Request<RequestBody>` with the bounds of
/// [`HttpService`](crate::HttpService). Implemented for every such type;
/// sealed.
pub trait Http3Service<B: HttpBody>:
    sealed::Sealed<B>
    + hyper::service::Service<
        Request<RequestBody>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> Http3Service<B> for S
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody,
{
}

/// What [`Server::register_http3`](crate::Server::register_http3)
/// accepts: a hyper service of `Request<RequestBody>` as it is (an
/// [`Http3Service`]), or a tower service generic over its request body,
/// such as an axum `Router`, as it is.
///
/// `M` says which of the two a type is; it is inferred, never written.
/// Implemented for every such type, and sealed.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a service endless can serve over HTTP/3",
    label = "not a hyper or tower service of `Request<endless::RequestBody>`",
    note = "HTTP/3 requests have an `endless::RequestBody`: serve `hyper::service::service_fn(|req: Request<endless::RequestBody>| ...)`, and the same over HTTPS wrapped in `endless::WithRequestBody::new(svc)`; an axum `Router` serves all three as it is",
    note = "either must be `Clone + Send + Sync + 'static`, with a `Send` future, an error that converts into `Box<dyn Error + Send + Sync>`, and a response body that is an `http_body::Body` with `Send` data"
)]
pub trait IntoHttp3Service<M>: sealed::Into<M> {
    /// The response body.
    type Body: HttpBody;
    /// The hyper service it is served as.
    type Service: Http3Service<Self::Body>;
    /// The hyper service.
    fn into_http3_service(self) -> Self::Service;
}

impl<S, B> IntoHttp3Service<crate::service::AsHyper<B>> for S
where
    S: Http3Service<B>,
    B: HttpBody,
{
    type Body = B;
    type Service = S;
    fn into_http3_service(self) -> S {
        self
    }
}

impl<S, B> IntoHttp3Service<crate::service::AsTower<B>> for S
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody,
{
    type Body = B;
    type Service = hyper_util::service::TowerToHyperService<S>;
    fn into_http3_service(self) -> Self::Service {
        hyper_util::service::TowerToHyperService::new(self)
    }
}

mod sealed {
    pub trait Sealed<B> {}
    impl<S, B> Sealed<B> for S {}
    pub trait Into<M> {}
    impl<S, M> Into<M> for S {}
}
