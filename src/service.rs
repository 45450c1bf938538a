//! What `endless` can serve: the bounds on a service and its response
//! body, written once ([`HttpService`], [`HttpBody`]).
//!
//! A leaf: it names hyper's types and nothing of the crate's, so every
//! layer that serves can use it.

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};

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
