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

use crate::listener::Listener;
use crate::serve::{Connections, Tls};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What endless needs of a service to serve it over HTTP/1 and HTTP/2 with
/// upgrades: hyper-util's `auto` bounds, plus `Clone` (each connection gets
/// its own copy, as with hyper) and `Sync` (a listener's tasks share it).
pub(crate) trait HttpService<B>:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + Sync
    + 'static
where
    B: HttpBody,
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

/// A response body hyper can send from any thread.
pub(crate) trait HttpBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> HttpBody for B
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
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
