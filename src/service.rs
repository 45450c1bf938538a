//! The services registered on a server, each of its own type.
//!
//! Type erasure happens once per listener, not once per request: a
//! registration keeps a [`Launch`], which starts an accept loop compiled for
//! its own service type. Requests then reach the user's service, and its
//! futures and bodies reach hyper, without a box or an indirection. (Boxing
//! per request cost measurable CPU time per request against plain hyper.)

use std::sync::Arc;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};

use crate::connections::{Connections, Tls};
use crate::listener::Listener;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A hyper service `endless` can serve, with `B` its response body.
///
/// Any [`hyper::service::Service`] of `Request<Incoming>` qualifies whose
/// future is `Send`, whose error converts into a boxed error, and which is
/// `Clone + Send + Sync + 'static` (each connection gets its own copy, as
/// with hyper; a listener's tasks share it): a `service_fn`, or a tower
/// service such as an axum `Router` wrapped in
/// [`TowerToHyperService`](crate::TowerToHyperService). The bounds are
/// hyper-util's `auto` connection bounds plus `Clone`, written once here, as
/// hyper does with its own `HttpService`.
///
/// It is implemented for every such type and cannot be implemented by
/// hand (it is sealed), so it can gain supertraits' methods without
/// breaking anyone.
pub trait HttpService<B: HttpBody>:
    sealed::Service<B>
    + hyper::service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> HttpService<B> for S
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody,
{
}

/// A response body `endless` can send: any [`http_body::Body`] that is
/// `Send + 'static` with `Send` data and an error that converts into a
/// boxed error. Sealed, like [`HttpService`].
pub trait HttpBody:
    sealed::Body + Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> HttpBody for B
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
}

mod sealed {
    /// Only the blanket impls exist.
    pub trait Service<B> {}
    impl<S, B> Service<B> for S {}
    pub trait Body {}
    impl<B> Body for B {}
}

/// Starts the accept loop of one registration, with its service's own type.
/// Callable again (a generation whose in-place re-exec failed resumes).
pub(crate) trait Launch: Send + Sync {
    fn launch(&self, conns: &Connections, name: String, listener: Arc<Listener>, tls: Tls);
}

/// A registered service, waiting for its listener.
struct Registered<S, B> {
    svc: S,
    _body: std::marker::PhantomData<fn() -> B>,
}

/// Keeps `svc` until `run` has its listener.
pub(crate) fn register<S, B>(svc: S) -> Box<dyn Launch>
where
    S: HttpService<B>,
    B: HttpBody,
{
    Box::new(Registered {
        svc,
        _body: std::marker::PhantomData,
    })
}

impl<S, B> Launch for Registered<S, B>
where
    S: HttpService<B>,
    B: HttpBody,
{
    fn launch(&self, conns: &Connections, name: String, listener: Arc<Listener>, tls: Tls) {
        conns.spawn_accept_loop(name, listener, self.svc.clone(), tls);
    }
}
