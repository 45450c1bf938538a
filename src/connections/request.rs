//! The per-request wrapper around the registered service: [`ConnService`].
//!
//! Every request of a connection goes through it: it notes on the
//! connection's [`ConnSignal`] what the request shows (a head parsed, which
//! protocol, a connection handed over), marks HTTP/1 responses
//! `Connection: close` once the drain has started, and tells the signal
//! when each response is done with, so that the sweeper knows when a
//! connection is between requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Method, Request, Response, StatusCode, Version};

use super::conn_signal::{ConnSignal, Seen};
use super::http::Told;
#[cfg(feature = "axum")]
use crate::conn_info::ConnInfo;

/// Wraps the registered service for one connection: notes what the
/// connection is, and marks HTTP/1 responses `Connection: close` once the
/// drain has started (except those that hand the connection over, see
/// [`hands_over_the_connection`]).
#[derive(Clone)]
pub(super) struct ConnService<S> {
    pub(super) svc: S,
    pub(super) signal: Arc<ConnSignal>,
}

impl<S> Told for ConnService<S> {
    fn speaks_http2(&self) {
        self.signal.note(Seen::HTTP2);
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<Finished<B>>;
    type Error = S::Error;
    type Future = CloseWhenDraining<S::Future>;

    // Kept small (the notes it makes are calls of their own), so that
    // hyper's dispatcher takes it in whole, as the plain service's call:
    // out of line, it would move the whole request once more (measured
    // under callgrind: 29 instructions of memcpy per keep-alive request).
    #[cfg_attr(not(feature = "axum"), allow(unused_mut))]
    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        // For axum's extractors; a cost per request that only the feature
        // brings.
        #[cfg(feature = "axum")]
        if let Some(info) = ConnInfo::current() {
            info.attach(&mut req);
        }
        let http1 = req.version() < Version::HTTP_2;
        // Whether a body follows matters to the sweeper, which looks at
        // HTTP/1 only; for an HTTP/2 stream the question takes a lock in h2.
        let body = http1 && !hyper::body::Body::is_end_stream(req.body());
        let len = body.then(|| hyper::body::Body::size_hint(req.body()).exact());
        self.signal
            .note_request_head(http1, len.map(|len| (&req, len)));
        self.signal.note(if http1 {
            Seen::REQUEST
        } else {
            Seen::REQUEST.with(Seen::HTTP2)
        });
        let connect = req.method() == Method::CONNECT;
        CloseWhenDraining {
            inner: self.svc.call(req),
            signal: Pending(Some(self.signal.clone())),
            http1,
            connect,
        }
    }
}

/// The signal of a request whose response hyper does not have yet: if it
/// never does (the handler failed, or the client reset its HTTP/2 stream
/// first), the request is done with when this is dropped. A field, not a
/// `Drop` of the whole future: cheaper to drop when empty.
struct Pending(Option<Arc<ConnSignal>>);

impl Drop for Pending {
    #[inline]
    fn drop(&mut self) {
        if let Some(signal) = self.0.take() {
            signal.note_response_done();
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ConnService`]. Its signal goes to the
    /// response body ([`Finished`]), or is told the response is done with
    /// when the future is dropped without one ([`Pending`]).
    pub(super) struct CloseWhenDraining<F> {
        #[pin]
        inner: F,
        signal: Pending,
        // HTTP/2 forbids the `Connection` header; its drain is GOAWAY.
        http1: bool,
        // Whether the request was a CONNECT.
        connect: bool,
    }
}

impl<F, B, E> Future for CloseWhenDraining<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Finished<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        let signal = this.signal.0.take();
        if let (Some(signal), true) = (&signal, *this.http1) {
            if hands_over_the_connection(res.status(), *this.connect) {
                signal.note(Seen::UPGRADED);
            } else if signal.draining() {
                res.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        Poll::Ready(Ok(res.map(|body| Finished { body, signal })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that tells its connection's signal when it is done
    /// with (dropped: hyper holds all of it, or it was abandoned), so the
    /// sweeper knows the request is over: an HTTP/1 connection waits for
    /// its next request head from then on (once what hyper holds is sent),
    /// an HTTP/2 one has a stream fewer.
    pub(super) struct Finished<B> {
        #[pin]
        body: B,
        signal: Option<Arc<ConnSignal>>,
    }

    impl<B> PinnedDrop for Finished<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(signal) = this.project().signal {
                signal.note_response_done();
            }
        }
    }
}

impl<B: hyper::body::Body> hyper::body::Body for Finished<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether a response hands the connection itself over (it switches
/// protocols, or opens a CONNECT tunnel), so that its `Connection` header is
/// the handler's to set: `Connection: close` on a 101 makes the client
/// reject the upgrade (RFC 6455, section 4.1), and on a 2xx to CONNECT it
/// would end the tunnel it opens. (Other 1xx responses are interim: the
/// final response that follows carries the `Connection: close`.)
fn hands_over_the_connection(status: StatusCode, connect: bool) -> bool {
    status.is_informational() || (connect && status.is_success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_responses_that_hand_the_connection_over_keep_their_header() {
        assert!(hands_over_the_connection(
            StatusCode::SWITCHING_PROTOCOLS,
            false
        ));
        assert!(hands_over_the_connection(StatusCode::OK, true));
        assert!(!hands_over_the_connection(StatusCode::OK, false));
        assert!(!hands_over_the_connection(StatusCode::FORBIDDEN, true));
    }
}

/// The service of an HTTPS listener of a server that also serves HTTP/3:
/// every response carries `Alt-Svc` (unless the service set one), so that
/// browsers find HTTP/3. Only such listeners are wrapped.
#[derive(Clone)]
pub(super) struct AltSvc<S> {
    svc: S,
    value: HeaderValue,
}

impl<S> AltSvc<S> {
    /// `svc`, its responses saying that HTTP/3 is on UDP `port` of the
    /// same host, for a day (`h3=":PORT"; ma=86400`).
    pub(super) fn new(svc: S, port: u16) -> Self {
        let value = format!("h3=\":{port}\"; ma=86400");
        // Digits and ASCII punctuation: always a valid value.
        let value = HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static("clear"));
        AltSvc { svc, value }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for AltSvc<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = WithAltSvc<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        WithAltSvc {
            inner: self.svc.call(req),
            value: Some(self.value.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`AltSvc`].
    pub(super) struct WithAltSvc<F> {
        #[pin]
        inner: F,
        value: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for WithAltSvc<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(value) = this.value.take() {
            res.headers_mut()
                .entry(hyper::header::ALT_SVC)
                .or_insert(value);
        }
        Poll::Ready(Ok(res))
    }
}
