//! Type erasure for the services registered on a server, so that each
//! listener can have its own service type.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type BoxBody = UnsyncBoxBody<Bytes, BoxError>;
pub(crate) type BoxFuture =
    Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send>>;

/// A registered hyper service, erased. Cloning is an `Arc` clone.
#[derive(Clone)]
pub(crate) struct BoxService(Arc<dyn Fn(Request<Incoming>) -> BoxFuture + Send + Sync>);

impl std::fmt::Debug for BoxService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxService")
    }
}

impl BoxService {
    pub(crate) fn new<S, B>(svc: S) -> Self
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Into<Bytes>,
        B::Error: Into<BoxError>,
    {
        BoxService(Arc::new(move |req| {
            let fut = svc.call(req);
            Box::pin(async move {
                let res = fut.await.map_err(Into::into)?;
                Ok(res.map(|body| IntoBytes { body }.boxed_unsync()))
            })
        }))
    }

    pub(crate) fn call(&self, req: Request<Incoming>) -> BoxFuture {
        (self.0)(req)
    }
}

pin_project_lite::pin_project! {
    /// Converts a body's data and errors to ours. Unlike `BodyExt::map_frame`
    /// it keeps the size hint, so a fixed-size body is still sent with
    /// `Content-Length` rather than chunked.
    struct IntoBytes<B> {
        #[pin]
        body: B,
    }
}

impl<B> Body for IntoBytes<B>
where
    B: Body,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.project()
            .body
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map(|f| f.map_data(Into::into)).map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
