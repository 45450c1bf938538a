//! What `endless` can serve: the bounds on a service and its response
//! body, written once ([`HttpService`], [`HttpBody`]), and what the
//! builder accepts ([`IntoHttpService`]: a hyper service as it is, or a
//! tower service such as an axum `Router`, wrapped for hyper).
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

/// What [`Server::register`](crate::Server::register) and the other
/// registering methods accept: a hyper service (a
/// [`hyper::service::service_fn`], any [`HttpService`]), or a tower service
/// of `Request<hyper::body::Incoming>` (an axum `Router`, a tonic router),
/// which endless wraps in
/// [`TowerToHyperService`](crate::TowerToHyperService) itself.
///
/// `M` says which of the two a type is; it is inferred, never written.
/// Implemented for every such type, and sealed.
///
/// # Examples
///
/// ```no_run
/// # async fn doc() -> Result<(), endless::Error> {
/// // A hyper service and a tower service, side by side.
/// let hyper_svc = hyper::service::service_fn(|_req| async {
///     Ok::<_, std::convert::Infallible>(hyper::Response::new("hyper\n".to_string()))
/// });
/// let tower_svc = tower_service_like();
/// endless::Server::new()
///     .register("127.0.0.1:8080", hyper_svc)
///     .register("127.0.0.1:8081", tower_svc)
///     .run()
///     .await
/// # }
/// # #[derive(Clone)] struct T;
/// # impl tower_service::Service<hyper::Request<hyper::body::Incoming>> for T {
/// #     type Response = hyper::Response<String>;
/// #     type Error = std::convert::Infallible;
/// #     type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
/// #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> { std::task::Poll::Ready(Ok(())) }
/// #     fn call(&mut self, _: hyper::Request<hyper::body::Incoming>) -> Self::Future { std::future::ready(Ok(hyper::Response::new("tower\n".into()))) }
/// # }
/// # fn tower_service_like() -> T { T }
/// ```
///
/// Anything else does not compile, with a message saying what a service
/// must be:
///
/// ```compile_fail
/// endless::Server::new().register("127.0.0.1:8080", "not a service");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a service endless can serve",
    label = "not a hyper or tower service of `Request<hyper::body::Incoming>`",
    note = "endless serves a hyper service (`hyper::service::service_fn(handler)`, `handler: async fn(Request<Incoming>) -> Result<Response<B>, E>`) or a tower service (an axum `Router`, as it is: no wrapper needed)",
    note = "either must be `Clone + Send + Sync + 'static`, with a `Send` future, an error that converts into `Box<dyn Error + Send + Sync>`, and a response body that is an `http_body::Body` with `Send` data"
)]
pub trait IntoHttpService<M>: sealed::Into<M> {
    /// The response body.
    type Body: HttpBody;
    /// The hyper service it is served as.
    type Service: HttpService<Self::Body>;
    /// The hyper service.
    fn into_http_service(self) -> Self::Service;
}

/// Marks a hyper service, for [`IntoHttpService`].
#[derive(Debug)]
#[doc(hidden)]
pub struct AsHyper<B>(std::marker::PhantomData<fn() -> B>);

/// Marks a tower service, for [`IntoHttpService`].
#[derive(Debug)]
#[doc(hidden)]
pub struct AsTower<B>(std::marker::PhantomData<fn() -> B>);

impl<S, B> IntoHttpService<AsHyper<B>> for S
where
    S: HttpService<B>,
    B: HttpBody,
{
    type Body = B;
    type Service = S;
    fn into_http_service(self) -> S {
        self
    }
}

impl<S, B> IntoHttpService<AsTower<B>> for S
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
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
    fn into_http_service(self) -> Self::Service {
        hyper_util::service::TowerToHyperService::new(self)
    }
}

mod sealed {
    /// Only the two blanket impls exist.
    pub trait Into<M> {}
    impl<S, M> Into<M> for S {}
    /// Only the blanket impls exist.
    pub trait Service<B> {}
    impl<S, B> Service<B> for S {}
    pub trait Body {}
    impl<B> Body for B {}
}
