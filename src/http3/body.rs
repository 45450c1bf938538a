//! [`RequestBody`]: one request body type for HTTP/1, HTTP/2 and HTTP/3, so
//! that one service value serves all three.
//!
//! hyper hands a service `Request<Incoming>`, h3 a request stream; a service
//! written for one cannot take the other. `RequestBody` is either, behind
//! one [`http_body::Body`] with `Data = Bytes`. A tower service generic
//! over its body (an axum `Router`) needs nothing: serve it as
//! `TowerToHyperService::new(router)` on both sides. A hyper
//! `service_fn(|req: Request<RequestBody>| …)` serves HTTP/3 as it is and
//! HTTP/1 and HTTP/2 wrapped in [`WithRequestBody`], which converts each
//! request's body (a move, no allocation).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::Request;

use crate::service::BoxError;

/// The request body of a service that serves HTTP/3 and, through
/// [`WithRequestBody`], HTTP/1 and HTTP/2: hyper's [`Incoming`] or an
/// HTTP/3 request stream, as one [`http_body::Body`].
///
/// Frames are passed on as they arrive (nothing is buffered), trailers
/// included.
///
/// # Examples
///
/// ```
/// use http_body_util::BodyExt;
/// use hyper::{Request, Response};
///
/// async fn echo(req: Request<endless::RequestBody>) -> Result<Response<String>, Box<dyn std::error::Error + Send + Sync>> {
///     let body = req.into_body().collect().await?.to_bytes();
///     Ok(Response::new(format!("{} bytes\n", body.len())))
/// }
/// ```
pub struct RequestBody {
    inner: Inner,
}

enum Inner {
    Hyper(Incoming),
    H3 {
        stream: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>,
        data_done: bool,
    },
    Empty,
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            Inner::Hyper(_) => "hyper",
            Inner::H3 { .. } => "h3",
            Inner::Empty => "empty",
        };
        f.debug_tuple("RequestBody").field(&kind).finish()
    }
}

impl RequestBody {
    /// A body with nothing in it.
    pub fn empty() -> Self {
        RequestBody {
            inner: Inner::Empty,
        }
    }

    pub(crate) fn h3(stream: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>) -> Self {
        RequestBody {
            inner: Inner::H3 {
                stream,
                data_done: false,
            },
        }
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        RequestBody::empty()
    }
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        RequestBody {
            inner: Inner::Hyper(body),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            Inner::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inner::Empty => Poll::Ready(None),
            Inner::H3 { stream, data_done } => {
                if !*data_done {
                    match stream.poll_recv_data(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        Poll::Ready(Ok(Some(mut data))) => {
                            let n = data.remaining();
                            return Poll::Ready(Some(Ok(Frame::data(data.copy_to_bytes(n)))));
                        }
                        Poll::Ready(Ok(None)) => *data_done = true,
                    }
                }
                match stream.poll_recv_trailers(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(Some(trailers))) => {
                        self.inner = Inner::Empty;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    Poll::Ready(Ok(None)) => {
                        self.inner = Inner::Empty;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(body) => body.is_end_stream(),
            Inner::Empty => true,
            Inner::H3 { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(body) => body.size_hint(),
            Inner::Empty => SizeHint::with_exact(0),
            Inner::H3 { .. } => SizeHint::default(),
        }
    }
}

/// A hyper service of `Request<RequestBody>` as a service of
/// `Request<Incoming>`, for [`Server::register`](crate::Server::register)
/// and [`Server::register_tls`](crate::Server::register_tls): the same
/// service value then serves HTTP/1, HTTP/2 and HTTP/3.
///
/// (An axum `Router` does not need it: it takes any body.)
///
/// # Examples
///
/// ```
/// use hyper::{service::service_fn, Request, Response};
///
/// let svc = service_fn(|_req: Request<endless::RequestBody>| async {
///     Ok::<_, std::convert::Infallible>(Response::new("hi\n".to_string()))
/// });
/// let server = endless::Server::new().register("127.0.0.1:0", endless::WithRequestBody::new(svc.clone()));
/// # drop(server);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct WithRequestBody<S>(S);

impl<S> WithRequestBody<S> {
    /// Wraps `svc`.
    pub fn new(svc: S) -> Self {
        WithRequestBody(svc)
    }

    /// The wrapped service.
    pub fn into_inner(self) -> S {
        self.0
    }
}

impl<S> hyper::service::Service<Request<Incoming>> for WithRequestBody<S>
where
    S: hyper::service::Service<Request<RequestBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.0.call(req.map(RequestBody::from))
    }
}
