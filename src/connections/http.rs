//! hyper serving a connection, HTTP/1 or HTTP/2, told apart by its first
//! bytes: [`Builders`] and [`HttpConnection`].
//!
//! This is what hyper-util's `auto` connection does, written here (about a
//! hundred lines) for one difference, measured. To tell the protocols
//! apart, both read up to 24 bytes, the length of HTTP/2's preface, and
//! give them back to hyper. hyper-util gives them back as a read of their
//! own: hyper's 8 KiB read buffer then holds them with less than a read's
//! room left, so hyper grows it to 16 KiB for its next read. That is a
//! `realloc` on every connection, and a copy of the buffer whenever the
//! heap cannot grow it in place: with 8 connections interleaved,
//! `Connection: close` cost up to 7% more instructions a request from that
//! alone (docs/benchmarks.md). Here hyper's first read gets those bytes
//! and, in the same call, whatever the socket has after them
//! ([`Prefixed`]): a request head that came in one packet is parsed from
//! that one read, and the buffer never grows. The bytes read are kept in
//! place, not in an allocation of their own as hyper-util's are.
//!
//! The rest is as hyper-util's: a connection is HTTP/2 if it starts with
//! the preface (prior knowledge, as h2c and HTTP/2 over TLS with or
//! without ALPN send it), HTTP/1 otherwise, with upgrades; a graceful
//! shutdown before the protocol is known ends the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper::body::{Body, Incoming};
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn_info::Inherit;
use crate::service::BoxError;

/// What an HTTP/2 connection with prior knowledge starts with (RFC 9113,
/// 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's service is told of it beyond its requests.
pub(super) trait Told {
    /// The connection speaks HTTP/2: its preface was read (before any
    /// stream, so an HTTP/2 connection that has not opened one is not
    /// taken for an HTTP/1 client that has not sent its request).
    fn speaks_http2(&self);
}

/// hyper's HTTP/1 and HTTP/2 connection builders, as the program and
/// endless set them; one per generation.
#[derive(Debug, Clone)]
pub(super) struct Builders {
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<Inherit>,
}

impl Builders {
    pub(super) fn new() -> Self {
        Builders {
            http1: http1::Builder::new(),
            http2: http2::Builder::new(Inherit),
        }
    }

    /// Serves `io` with `svc`: HTTP/2 if it starts with the preface,
    /// HTTP/1 (with upgrades) if not.
    pub(super) fn serve<IO, S>(&self, io: IO, svc: S) -> HttpConnection<'_, IO, S>
    where
        S: HttpService<Incoming> + Told,
    {
        HttpConnection {
            builders: self,
            state: State::Reading {
                io: Some(Prefixed {
                    io,
                    read: [0; PREFACE.len()],
                    start: 0,
                    end: 0,
                    error: None,
                }),
                svc: Some(svc),
                cancelled: false,
            },
        }
    }
}

/// An I/O whose first bytes were read already: the next read gives them,
/// and whatever the I/O has after them at that moment, in one.
pub(super) struct Prefixed<IO> {
    io: IO,
    read: [u8; PREFACE.len()],
    /// What of `read` is still to give: `read[start..end]`.
    start: u8,
    end: u8,
    /// An error of the read that came with the last of `read`, for the
    /// next read: that one had bytes to give. (Not asked of the I/O again:
    /// a socket reports an error once, and tokio-rustls, having failed,
    /// waits for more bytes before it says so again.)
    error: Option<io::Error>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            if let Some(e) = this.error.take() {
                return Poll::Ready(Err(e));
            }
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let rest = &this.read[usize::from(this.start)..usize::from(this.end)];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        // At most 24: the cast cannot truncate.
        this.start += n as u8;
        if this.start == this.end && buf.remaining() > 0 {
            // Whatever has come after them, in the same read. If nothing
            // has (yet), the bytes given are the answer; the task is woken
            // when more comes, and hyper asks again.
            if let Poll::Ready(Err(e)) = Pin::new(&mut this.io).poll_read(cx, buf) {
                this.error = Some(e);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// `AsyncWrite` for a wrapper of an I/O in its `io` field whose writes go
/// straight through to it.
macro_rules! writes_through {
    ($wrapper:ident) => {
        impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<IO> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}
pub(super) use writes_through;

writes_through!(Prefixed);

impl<IO: AsyncRead + Unpin> Prefixed<IO> {
    /// Reads until the bytes read are the preface (`true`), or cannot be
    /// (`false`: another byte, or the end of the stream).
    fn poll_preface(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while usize::from(self.end) < PREFACE.len() {
            let before = usize::from(self.end);
            let mut buf = ReadBuf::new(&mut self.read[before..]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            // At most 24: the cast cannot truncate.
            self.end += n as u8;
            let after = usize::from(self.end);
            if n == 0 || self.read[before..after] != PREFACE[before..after] {
                return Poll::Ready(Ok(false));
            }
        }
        Poll::Ready(Ok(true))
    }
}

type Io<IO> = TokioIo<Prefixed<IO>>;

pin_project! {
    #[project = StateProj]
    enum State<IO, S>
    where
        S: HttpService<Incoming>,
    {
        /// Reading the first bytes.
        Reading {
            io: Option<Prefixed<IO>>,
            svc: Option<S>,
            cancelled: bool,
        },
        Http1 {
            #[pin]
            conn: http1::UpgradeableConnection<Io<IO>, S>,
        },
        Http2 {
            #[pin]
            conn: http2::Connection<Io<IO>, S, Inherit>,
        },
    }
}

pin_project! {
    /// One connection served by hyper: a future that ends with the
    /// connection.
    pub(super) struct HttpConnection<'a, IO, S>
    where
        S: HttpService<Incoming>,
    {
        builders: &'a Builders,
        #[pin]
        state: State<IO, S>,
    }
}

impl<IO, S, B> HttpConnection<'_, IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    Inherit: Http2ServerConnExec<S::Future, B>,
{
    /// HTTP/2: GOAWAY, then ends once the streams in flight are done;
    /// HTTP/1: ends once idle, or after the request in flight; before the
    /// protocol is known: ends at the next poll.
    pub(super) fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project().state.project() {
            StateProj::Reading { cancelled, .. } => *cancelled = true,
            StateProj::Http1 { conn } => conn.graceful_shutdown(),
            StateProj::Http2 { conn } => conn.graceful_shutdown(),
        }
    }
}

impl<IO, S, B> Future for HttpConnection<'_, IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Told,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    Inherit: Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Reading { io, svc, cancelled } => {
                    if *cancelled {
                        return Poll::Ready(Err("closed before its first request".into()));
                    }
                    let Some(reading) = io.as_mut() else {
                        return Poll::Ready(Err("polled after its end".into()));
                    };
                    let http2 = ready!(reading.poll_preface(cx))?;
                    let (Some(io), Some(svc)) = (io.take(), svc.take()) else {
                        return Poll::Ready(Err("polled after its end".into()));
                    };
                    let io = TokioIo::new(io);
                    let next = if http2 {
                        svc.speaks_http2();
                        State::Http2 {
                            conn: this.builders.http2.serve_connection(io, svc),
                        }
                    } else {
                        State::Http1 {
                            conn: this
                                .builders
                                .http1
                                .serve_connection(io, svc)
                                .with_upgrades(),
                        }
                    };
                    this.state.set(next);
                }
                StateProj::Http1 { conn } => return conn.poll(cx).map_err(Into::into),
                StateProj::Http2 { conn } => return conn.poll(cx).map_err(Into::into),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::{Request, Response};
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers with the request's version; remembers being told the
    /// connection speaks HTTP/2.
    #[derive(Clone, Default)]
    struct Version(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl hyper::service::Service<Request<Incoming>> for Version {
        type Response = Response<Full<Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn call(&self, req: Request<Incoming>) -> Self::Future {
            let v = format!("{:?}", req.version());
            std::future::ready(Ok(Response::new(Full::new(Bytes::from(v)))))
        }
    }

    impl Told for Version {
        fn speaks_http2(&self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn version() -> Version {
        Version::default()
    }

    /// A client of each protocol gets its answer, over the connection's
    /// own builder.
    #[tokio::test]
    async fn http1_and_http2_are_each_served_by_theirs() {
        let builders = Builders::new();
        for http2 in [false, true] {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let svc = version();
            let told = svc.0.clone();
            let conn = builders.serve(server, svc);
            let client = tokio::spawn(async move {
                let io = TokioIo::new(client);
                let req = Request::get("http://x/")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let res = if http2 {
                    let (mut tx, conn) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                            .await
                            .unwrap();
                    tokio::spawn(conn);
                    tx.send_request(req).await.unwrap()
                } else {
                    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                    tokio::spawn(conn);
                    tx.send_request(req).await.unwrap()
                };
                res.into_body().collect().await.unwrap().to_bytes()
            });
            // The connection ends once the client is done and gone.
            let (served, body) = tokio::join!(conn, client);
            served.unwrap();
            let body = body.unwrap();
            let want = if http2 { "HTTP/2.0" } else { "HTTP/1.1" };
            assert_eq!(body, want);
            assert_eq!(told.load(std::sync::atomic::Ordering::Relaxed), http2);
        }
    }

    /// Shut down before the first bytes: the connection ends (with an
    /// error, as hyper-util's); an end of stream before them: ends, no
    /// error.
    #[tokio::test]
    async fn before_its_first_bytes_a_connection_can_be_shut_down_or_closed() {
        let builders = Builders::new();
        let (_client, server) = tokio::io::duplex(64);
        let conn = builders.serve(server, version());
        tokio::pin!(conn);
        assert!(poll_once(conn.as_mut()).is_pending());
        conn.as_mut().graceful_shutdown();
        assert!(conn.await.is_err());

        let (client, server) = tokio::io::duplex(64);
        drop(client);
        let conn = builders.serve(server, version());
        assert!(conn.await.is_ok());
    }

    /// Polls `f` once.
    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut Context::from_waker(waker))
    }

    fn prefixed<IO>(io: IO) -> Prefixed<IO> {
        Prefixed {
            io,
            read: [0; PREFACE.len()],
            start: 0,
            end: 0,
            error: None,
        }
    }

    async fn preface<IO: AsyncRead + Unpin>(p: &mut Prefixed<IO>) -> io::Result<bool> {
        std::future::poll_fn(|cx| p.poll_preface(cx)).await
    }

    #[tokio::test]
    async fn the_first_read_gives_the_bytes_read_and_what_came_after_them() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        client.write_all(head).await.unwrap();
        let mut p = prefixed(server);
        assert!(!preface(&mut p).await.unwrap());
        let mut buf = vec![0; 8192];
        let n = p.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], head, "one read, the whole head");
        client.write_all(b"more").await.unwrap();
        let n = p.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"more");
    }

    #[tokio::test]
    async fn the_preface_is_told_even_a_byte_at_a_time() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut p = prefixed(server);
        let reading = tokio::spawn(async move {
            let http2 = preface(&mut p).await.unwrap();
            (http2, p)
        });
        for b in PREFACE {
            client.write_all(&[*b]).await.unwrap();
            tokio::task::yield_now().await;
        }
        client.write_all(b"\0\0\0\x04").await.unwrap();
        let (http2, mut p) = reading.await.unwrap();
        assert!(http2);
        let mut buf = [0; 64];
        let mut got = Vec::new();
        while got.len() < PREFACE.len() + 4 {
            let n = p.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..PREFACE.len()], PREFACE);
        assert_eq!(&got[PREFACE.len()..], b"\0\0\0\x04");
    }

    #[tokio::test]
    async fn a_small_read_gets_the_rest_at_the_next() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/1.1\r\n").await.unwrap();
        let mut p = prefixed(server);
        assert!(!preface(&mut p).await.unwrap(), "not the preface");
        let mut got = Vec::new();
        let mut buf = [0; 5];
        while got.len() < 16 {
            let n = p.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"PRI * HTTP/1.1\r\n");
    }

    /// An I/O that gives its bytes, then fails once, then ends, as a
    /// socket reset by its peer does.
    struct ThenFails(&'static [u8], bool);

    impl AsyncRead for ThenFails {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.0.is_empty() {
                if std::mem::replace(&mut self.1, true) {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            let n = self.0.len().min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Poll::Ready(Ok(()))
        }
    }

    /// The read that gives the last of the bytes read to tell the protocol
    /// also reads on, and fails: the error is the next read's, not lost.
    #[tokio::test]
    async fn an_error_after_the_bytes_read_is_the_next_reads() {
        let mut p = prefixed(ThenFails(b"GET /", false));
        assert!(!preface(&mut p).await.unwrap());
        let mut buf = [0; 64];
        assert_eq!(p.read(&mut buf).await.unwrap(), 5);
        let e = p.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn the_end_of_the_stream_is_http1_and_then_the_end() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI").await.unwrap();
        client.shutdown().await.unwrap();
        drop(client);
        let mut p = prefixed(server);
        assert!(!preface(&mut p).await.unwrap());
        let mut buf = [0; 64];
        let n = p.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"PRI");
        assert_eq!(p.read(&mut buf).await.unwrap(), 0);
    }
}
