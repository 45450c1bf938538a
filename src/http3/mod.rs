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
//!    random IDs clients choose (layout: 12 bytes, see the
//!    `cid` source). Clients put the ID in every packet they send.
//! 2. **The newest generation reads the socket and routes.** quinn reads
//!    through a router (a custom `AsyncUdpSocket`), which keeps what is
//!    its own and passes each datagram whose connection ID names an older
//!    generation to it, over a Unix datagram socket pair made for the
//!    hand-over, with the client's address, the local address and the ECN
//!    bits. Junk, truncated packets and IDs of generations nobody knows
//!    are dropped and counted, never a panic.
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
//! [`Server::register_http3`](crate::Server::register_http3) serves a
//! service whose requests have a [`RequestBody`]: an axum `Router` as it is
//! (it serves HTTP/1 and HTTP/2 unchanged), or a
//! `service_fn(|req: Request<endless::RequestBody>| …)`, served over HTTP/1
//! and HTTP/2 as [`WithRequestBody::new(svc)`](crate::WithRequestBody). The
//! TLS configuration comes from the same files as the HTTPS listeners, read
//! by every generation; HTTPS responses carry the `Alt-Svc` header that
//! advertises HTTP/3. [`ConnInfo::current`](crate::ConnInfo::current) works
//! in handlers, with the client's UDP address, SNI and ALPN (`h3`).
//!
//! # Across a reload
//!
//! The UDP socket is one of the carried sockets (named `http3:ADDR`); at
//! each spawn the parent makes one datagram pair per address, attaches its
//! end as its successor's (so the child reads the parent's routes before any
//! packet) and hands the other end over; the child attaches it as its
//! predecessor's (sending its routes) before it says it is ready. At the
//! hand-over the parent drains: GOAWAY on every connection, requests
//! finish, and it is done when its connections are gone or at the stop
//! timeout. It stops reading the shared socket once the child's routes
//! have come (a child that never sends them leaves it reading). A new generation that
//! fails to start is forgotten; after a rollback the old generation reads
//! the socket and accepts again. See `docs/http3.md` for the comparison with
//! Envoy, nginx and udpgrm.
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
//! - After a rollback (the successor died within its probation) the old
//!   generation reads the socket and accepts again; its connections that
//!   were told to go away finish as they were.
//! - With `keep_pid`, the re-executed image starts HTTP/3 once its
//!   temporary generation has exited, and runs no reload before then; new
//!   HTTP/3 connections are refused meanwhile (clients use HTTP/2). If the
//!   re-exec fails, the original process reads the socket again and passes
//!   the temporary generation its packets over the pair it kept.

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
pub(crate) use config::tls_config_from_pem;
pub(crate) use listener::Http3Listener;
#[cfg(unix)]
pub(crate) use pair::socket_pair;

use crate::service::{BoxError, HttpBody};
use hyper::{Request, Response};

/// A hyper service HTTP/3 can serve, with `B` its response
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
