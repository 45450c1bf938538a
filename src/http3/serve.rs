//! Serving HTTP/3: the accept loop, one task per connection, one per
//! request, and how each learns of the drain.
//!
//! How a drain treats an HTTP/3 connection (the counterpart of
//! `connections` for HTTP/1 and HTTP/2):
//! - GOAWAY, allowing every request stream the client may already have
//!   opened (its stream credit, [`GOAWAY_MARGIN`] beyond the last one
//!   accepted), so that no request in flight is refused; an h3 client then
//!   sends its next request on a new connection, which reaches the newest
//!   generation. Sent at once on a connection that has carried a request;
//!   on one that has not, at its first request or after the idle grace
//!   (h3's GOAWAY there would allow no request at all);
//! - requests in flight finish, however long they take, until the cut-off;
//! - once a connection has had no request in flight for the idle grace
//!   since its GOAWAY or its last response (time for that response to be
//!   acknowledged), it is closed with `H3_NO_ERROR`, unless its client
//!   closed it first;
//! - new connections are refused (only when stopping: after a hand-over the
//!   router sends them to the successor before quinn sees them);
//! - at the cut-off, every connection is closed and every request dropped.

use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::{Request, Response};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::{debug, trace};

use super::body::RequestBody;
use crate::conn_info::{ConnInfo, Peer, TlsInfo};
use crate::listener::LocalAddr;
use crate::service::{BoxError, HttpBody};

/// How many request streams beyond the last one accepted a GOAWAY still
/// allows: quinn's default stream credit (100 concurrent bidirectional
/// streams), so that any request the client may have sent before it read
/// the GOAWAY is served rather than refused.
pub(crate) const GOAWAY_MARGIN: usize = 100;

/// `H3_NO_ERROR`.
const H3_NO_ERROR: u32 = 0x100;

/// What the connections of one generation's HTTP/3 listener share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) local: SocketAddr,
    /// Cancelled when the drain starts; replaced by a fresh one when the
    /// generation serves again (its successor failed): connections take
    /// the one current when they start.
    pub(crate) draining: std::sync::Mutex<CancellationToken>,
    /// Cancelled at the drain's deadline (or a second stop): every
    /// connection closes. Replaced, like `draining`, when the generation
    /// serves again, so that a cut drain leaves HTTP/3 able to serve.
    pub(crate) cut: std::sync::Mutex<CancellationToken>,
    pub(crate) open: AtomicUsize,
    pub(crate) accepted: AtomicU64,
    pub(crate) requests: AtomicU64,
    /// Told when a connection ends.
    pub(crate) closed: Notify,
    pub(crate) idle_grace: Duration,
    pub(crate) handshake_timeout: Duration,
}

impl Shared {
    /// The cut-off token of connections starting now.
    pub(crate) fn cut(&self) -> CancellationToken {
        self.cut.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The drain token of connections starting now.
    pub(crate) fn draining(&self) -> CancellationToken {
        self.draining
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One open connection, counted from its first packet to its task's end.
struct Open(Arc<Shared>);

impl Open {
    fn new(shared: &Arc<Shared>) -> Open {
        #[cfg(feature = "metrics")]
        crate::metrics::connection_opened();
        shared.open.fetch_add(1, Ordering::AcqRel);
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        Open(shared.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        crate::metrics::connection_closed();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.closed.notify_waiters();
    }
}

/// Accepts connections until the endpoint closes; after the drain starts,
/// refuses them.
pub(crate) async fn accept_loop<S, B>(endpoint: quinn::Endpoint, shared: Arc<Shared>, svc: S)
where
    S: super::Http3Service<B>,
    B: HttpBody,
{
    while let Some(incoming) = endpoint.accept().await {
        if shared.draining().is_cancelled() {
            trace!(peer = %incoming.remote_address(), "HTTP/3: draining, connection refused");
            incoming.refuse();
            continue;
        }
        let open = Open::new(&shared);
        tokio::spawn(connection(incoming, svc.clone(), open));
    }
    debug!(listener = %shared.name, "HTTP/3: endpoint closed, accept loop ends");
}

/// What a handler learns of its connection ([`ConnInfo::current`]).
fn conn_info(shared: &Shared, conn: &quinn::Connection) -> ConnInfo {
    let (server_name, alpn_protocol) = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .map_or((None, None), |d| (d.server_name, d.protocol));
    let peer_certificates = conn
        .peer_identity()
        .and_then(|p| {
            p.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|c| *c)
        .unwrap_or_default();
    ConnInfo::new(
        shared.name.clone(),
        LocalAddr::Tcp(shared.local),
        Peer::Tcp(conn.remote_address()),
    )
    .with_tls(TlsInfo {
        server_name,
        alpn_protocol,
        peer_certificates,
    })
}

/// Serves one connection: its handshake, then its requests, each in a task
/// of its own, until it closes, drains or is cut off.
async fn connection<S, B>(incoming: quinn::Incoming, svc: S, open: Open)
where
    S: super::Http3Service<B>,
    B: HttpBody,
{
    let shared = open.0.clone();
    let peer = incoming.remote_address();
    let cut_token = shared.cut();
    let Some((conn, mut h3)) = establish(incoming, &shared, &cut_token).await else {
        return;
    };
    let info = conn_info(&shared, &conn);
    // The requests in flight: dropping the set (the connection is over, or
    // cut off) aborts them. Each wait for cancellation is registered once
    // per connection, not once per request (registering takes the token's
    // lock, which every connection shares).
    let mut requests = JoinSet::new();
    let mut cut = pin!(cut_token.cancelled());
    let draining_token = shared.draining();
    let mut draining = pin!(draining_token.cancelled());
    // The drain, in steps: `drain` seen; GOAWAY sent (at once if the
    // client has sent a request, else after the idle grace: h3's GOAWAY
    // for a connection with no request yet allows none, and would refuse a
    // first request already on its way); closed after the idle grace with
    // no request in flight, counted from the GOAWAY or the last response.
    let (mut drain_seen, mut goaway_sent, mut any_request) = (false, false, false);
    let mut last_active = Instant::now();
    loop {
        let quiet = (drain_seen && requests.is_empty()).then(|| last_active + shared.idle_grace);
        tokio::select! {
            biased;
            _ = &mut cut => {
                conn.close(H3_NO_ERROR.into(), b"stop timeout");
                break;
            }
            _ = &mut draining, if !drain_seen => {
                drain_seen = true;
                last_active = Instant::now();
                if any_request && !goaway(&mut h3, peer, &mut goaway_sent).await {
                    break;
                }
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {
                last_active = Instant::now();
            }
            _ = quiet_until(quiet) => {
                if goaway_sent {
                    conn.close(H3_NO_ERROR.into(), b"drained");
                    break;
                }
                last_active = Instant::now();
                if !goaway(&mut h3, peer, &mut goaway_sent).await {
                    break;
                }
            }
            r = h3.accept() => match r {
                Ok(Some(resolver)) => {
                    shared.requests.fetch_add(1, Ordering::Relaxed);
                    any_request = true;
                    requests.spawn(info.clone().scope(request(resolver, svc.clone(), info.clone())));
                    if drain_seen && !goaway_sent && !goaway(&mut h3, peer, &mut goaway_sent).await {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        debug!(%peer, cause = %e, "HTTP/3: connection ended");
                    }
                    break;
                }
            }
        }
    }
    if conn.close_reason().is_none() {
        finish(&conn, requests, cut, last_active, shared.idle_grace).await;
    }
    drop(open);
}

/// The handshake (within the handshake timeout) and the HTTP/3 set-up of
/// a new connection, unless the generation is cut off first.
async fn establish(
    incoming: quinn::Incoming,
    shared: &Shared,
    cut: &CancellationToken,
) -> Option<(quinn::Connection, H3Connection)> {
    let peer = incoming.remote_address();
    let connecting = incoming
        .accept()
        .inspect_err(|e| debug!(%peer, cause = %e, "HTTP/3: connection not accepted"))
        .ok()?;
    let conn = tokio::select! {
        r = tokio::time::timeout(shared.handshake_timeout, connecting) => match r {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                debug!(%peer, cause = %e, "HTTP/3: handshake failed");
                return None;
            }
            Err(_) => {
                debug!(%peer, timeout = ?shared.handshake_timeout, "HTTP/3: handshake timed out");
                return None;
            }
        },
        _ = cut.cancelled() => return None,
    };
    let builder = h3::server::builder();
    let built = tokio::select! {
        r = builder.build::<_, Bytes>(h3_quinn::Connection::new(conn.clone())) => r,
        _ = cut.cancelled() => return None,
    };
    let h3 = built
        .inspect_err(|e| debug!(%peer, cause = %e, "HTTP/3: connection set-up failed"))
        .ok()?;
    Some((conn, h3))
}

/// A connection's HTTP/3 side.
type H3Connection = h3::server::Connection<h3_quinn::Connection, Bytes>;

/// The client may have sent GOAWAY and be waiting for our responses: they
/// finish, and the connection is closed once it has been quiet for the
/// idle grace (or at the cut-off). Dropping `requests` aborts what is left.
async fn finish(
    conn: &quinn::Connection,
    mut requests: JoinSet<()>,
    mut cut: Pin<&mut WaitForCancellationFuture<'_>>,
    mut last_active: Instant,
    idle_grace: Duration,
) {
    loop {
        let quiet = requests.is_empty().then(|| last_active + idle_grace);
        tokio::select! {
            biased;
            _ = &mut cut => {
                conn.close(H3_NO_ERROR.into(), b"stop timeout");
                break;
            }
            _ = conn.closed() => break,
            Some(_) = requests.join_next(), if !requests.is_empty() => {
                last_active = Instant::now();
            }
            _ = quiet_until(quiet) => {
                conn.close(H3_NO_ERROR.into(), b"");
                break;
            }
        }
    }
}

/// Sleeps until `deadline`, or for ever with none. (A `select!` branch's
/// future is made at every turn of the loop, even when disabled; this one
/// makes a timer only when there is a deadline, not once per request.)
async fn quiet_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends GOAWAY, allowing [`GOAWAY_MARGIN`] requests beyond the last one
/// accepted; whether the connection is still usable.
async fn goaway(
    h3: &mut h3::server::Connection<h3_quinn::Connection, Bytes>,
    peer: SocketAddr,
    sent: &mut bool,
) -> bool {
    *sent = true;
    trace!(%peer, "HTTP/3: GOAWAY");
    match h3.shutdown(GOAWAY_MARGIN).await {
        Ok(()) => true,
        Err(e) => {
            debug!(%peer, cause = %e, "HTTP/3: GOAWAY not sent");
            false
        }
    }
}

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// Serves one request: reads its head, calls the service, and streams the
/// response body as DATA frames (trailers as a trailing HEADERS frame).
async fn request<S, B>(resolver: Resolver, svc: S, info: ConnInfo)
where
    S: super::Http3Service<B>,
    B: HttpBody,
{
    let _ = &info;
    let (req, stream) = match resolver.resolve_request().await {
        Ok(r) => r,
        Err(e) => {
            debug!(cause = %e, "HTTP/3: unreadable request");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    #[allow(unused_mut)]
    let mut req: Request<RequestBody> = req.map(|()| RequestBody::h3(recv));
    #[cfg(feature = "axum")]
    info.attach(&mut req);
    let resp = match svc.call(req).await {
        Ok(resp) => resp,
        Err(e) => {
            let e: BoxError = e.into();
            debug!(cause = %e, "HTTP/3: service error; stream reset");
            send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
            return;
        }
    };
    let (parts, body) = resp.into_parts();
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        debug!(cause = %e, "HTTP/3: response head not sent");
        return;
    }
    let mut body = pin!(body);
    // The body's error need not be `Send`: it becomes a boxed one at once.
    while let Some(next) = body
        .frame()
        .await
        .map(|r| r.map_err(Into::<BoxError>::into))
    {
        let frame = match next {
            Ok(frame) => frame,
            Err(e) => {
                debug!(cause = %e, "HTTP/3: response body failed; stream reset");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        let sent = match frame.into_data() {
            Ok(mut data) => {
                let n = data.remaining();
                if n == 0 {
                    continue;
                }
                send.send_data(data.copy_to_bytes(n)).await
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    let r = send.send_trailers(trailers).await;
                    if r.is_ok() {
                        break;
                    }
                    r
                }
                Err(_) => continue, // a frame of a kind this version does not know
            },
        };
        if let Err(e) = sent {
            debug!(cause = %e, "HTTP/3: response body not sent");
            return;
        }
    }
    if let Err(e) = send.finish().await {
        debug!(cause = %e, "HTTP/3: response not finished");
    }
}
