//! A load generator that counts every failed request.
//!
//! Each worker owns one connection at a time and sends requests on it back
//! to back, like wrk. Every attempt ends in exactly one of three ways:
//!
//! - **ok**: a `200` whose whole body arrived in time and names the PID
//!   that answered (see [`body_ok`]);
//! - **retried**: an HTTP/2 request the server refused before processing it
//!   (`REFUSED_STREAM`, or a stream above the last one a GOAWAY said it
//!   would process). HTTP/2 makes that promise explicit, so every client
//!   sends such a request again, safely, on a new connection: the one
//!   outcome that is not a failure;
//! - **failed**, for any other reason, each counted under its kind in
//!   [`Stats::failures`]: connect error or timeout, TLS or HTTP handshake
//!   error or timeout, a connection the server closed before a request
//!   could be sent on it (fresh or kept alive, without the
//!   `Connection: close` that tells a client not to reuse it), a request
//!   error (reset, cut short), a response or body timeout, a status other
//!   than 200, a body that does not match.
//!
//! After a failure a worker backs off (10 ms, doubling to 500 ms) before its
//! next attempt, so a server that refuses everything is not hammered and
//! every failure is one failed request, not a spin.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper::header::{CONNECTION, HOST};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1 keep-alive.
    KeepAlive,
    /// HTTP/1.1 with `Connection: close`: one connection per request.
    Close,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub ok: u64,
    pub failed: u64,
    /// Failed attempts per kind (`connect`, `connect timeout`, `request`, …).
    pub failures: BTreeMap<&'static str, u64>,
    /// HTTP/2 requests the server refused unprocessed (GOAWAY,
    /// `REFUSED_STREAM`), sent again on a new connection. Not failures.
    pub retried: u64,
    /// New HTTP/2 connections opened because the last one was closed
    /// gracefully (GOAWAY) between two requests. No request was lost.
    pub reconnects_after_goaway: u64,
    /// The first few failures, for messages.
    pub errors: Vec<String>,
    /// Successful responses per body (the fixture's `/` answers `pid=N`).
    pub bodies: BTreeMap<String, u64>,
    /// Completed requests per 100 ms since the start.
    pub buckets: Vec<u64>,
}

impl Stats {
    fn fail(&mut self, f: Failure) {
        self.failed += 1;
        *self.failures.entry(f.kind).or_default() += 1;
        if self.errors.len() < 20 {
            self.errors.push(format!("{}: {}", f.kind, f.detail));
        }
    }

    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.failed += o.failed;
        for (k, v) in o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.retried += o.retried;
        self.reconnects_after_goaway += o.reconnects_after_goaway;
        for e in o.errors {
            if self.errors.len() < 20 {
                self.errors.push(e);
            }
        }
        for (k, v) in o.bodies {
            *self.bodies.entry(k).or_default() += v;
        }
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize(o.buckets.len(), 0);
        }
        for (i, v) in o.buckets.into_iter().enumerate() {
            self.buckets[i] += v;
        }
    }
}

pub struct Load {
    t0: Instant,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Stats>>,
    rt: tokio::runtime::Handle,
}

/// Starts `conns` workers against `addr` on runtime `rt`.
pub fn start(
    rt: &tokio::runtime::Handle,
    addr: &str,
    mode: Mode,
    conns: usize,
    path: &str,
) -> Load {
    start_with(rt, addr, mode, conns, path, None)
}

/// Like [`start`], over TLS with `tls` (whose ALPN should match `mode`).
pub fn start_tls(
    rt: &tokio::runtime::Handle,
    addr: &str,
    mode: Mode,
    conns: usize,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Load {
    start_with(
        rt,
        addr,
        mode,
        conns,
        path,
        Some(tokio_rustls::TlsConnector::from(tls)),
    )
}

fn start_with(
    rt: &tokio::runtime::Handle,
    addr: &str,
    mode: Mode,
    conns: usize,
    path: &str,
    tls: Option<tokio_rustls::TlsConnector>,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let workers = (0..conns)
        .map(|_| {
            let target = Target {
                addr: addr.to_owned(),
                tls: tls.clone(),
            };
            rt.spawn(worker(target, path.to_owned(), mode, stop.clone(), t0))
        })
        .collect();
    Load {
        t0,
        stop,
        workers,
        rt: rt.clone(),
    }
}

impl Load {
    /// When the load started: bucket `i` of [`Stats::buckets`] covers
    /// `t0 + i * 100 ms` to `t0 + (i + 1) * 100 ms`.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// Stops the workers (each finishes its request in flight) and sums up.
    pub fn finish(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Stats::default();
        for w in self.workers {
            match self.rt.block_on(w) {
                Ok(s) => total.merge(s),
                Err(e) => total.fail(Failure::new("worker panicked", e)),
            }
        }
        total
    }
}

/// One failed attempt: its kind (a fixed name, for counting) and details.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    detail: String,
}

impl Failure {
    fn new(kind: &'static str, detail: impl std::fmt::Display) -> Failure {
        Failure {
            kind,
            detail: detail.to_string(),
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For the TLS handshake and for the HTTP handshake, each.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// For a connection to become ready, for the response head, for the body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// A client connection: its sender and the task that drives it (whose
/// result says how the connection ended).
struct Conn {
    sender: Sender,
    task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// How a closed connection ended: `Ok` if gracefully (after a GOAWAY,
    /// for HTTP/2), or what went wrong.
    async fn ended(self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(1), self.task).await {
            Err(_) => Err("closed, but its task did not end".into()),
            Ok(Err(e)) => Err(format!("its task failed: {e}")),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }
}

#[derive(Clone)]
struct Target {
    addr: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// Runs `fut` with `timeout`, naming a failure `kind` (or `timeout_kind`).
async fn timed<T, E: std::fmt::Display>(
    timeout: Duration,
    kind: &'static str,
    timeout_kind: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(Failure::new(timeout_kind, format!("after {timeout:?}"))),
        Ok(Err(e)) => Err(Failure::new(kind, e)),
        Ok(Ok(v)) => Ok(v),
    }
}

async fn connect(target: &Target, mode: Mode) -> Result<Conn, Failure> {
    if let Some(path) = target.addr.strip_prefix("unix:") {
        let unix = timed(
            CONNECT_TIMEOUT,
            "connect",
            "connect timeout",
            tokio::net::UnixStream::connect(path),
        )
        .await?;
        return handshake(TokioIo::new(unix), mode).await;
    }
    let tcp = timed(
        CONNECT_TIMEOUT,
        "connect",
        "connect timeout",
        TcpStream::connect(&target.addr),
    )
    .await?;
    let _ = tcp.set_nodelay(true);
    match &target.tls {
        None => handshake(TokioIo::new(tcp), mode).await,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let stream = timed(
                HANDSHAKE_TIMEOUT,
                "tls handshake",
                "tls handshake timeout",
                tls.connect(name, tcp),
            )
            .await?;
            handshake(TokioIo::new(stream), mode).await
        }
    }
}

async fn handshake<IO>(io: IO, mode: Mode) -> Result<Conn, Failure>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    const KIND: &str = "http handshake";
    const TIMEOUT: &str = "http handshake timeout";
    match mode {
        Mode::KeepAlive | Mode::Close => {
            let (send, conn) =
                timed(HANDSHAKE_TIMEOUT, KIND, TIMEOUT, http1::handshake(io)).await?;
            Ok(Conn {
                sender: Sender::H1(send),
                task: tokio::spawn(conn),
            })
        }
        Mode::Http2 => {
            let (send, conn) = timed(
                HANDSHAKE_TIMEOUT,
                KIND,
                TIMEOUT,
                http2::handshake(TokioExecutor::new(), io),
            )
            .await?;
            Ok(Conn {
                sender: Sender::H2(send),
                task: tokio::spawn(conn),
            })
        }
    }
}

/// Whether an HTTP/2 error says the server never processed the stream:
/// `REFUSED_STREAM`, or the graceful GOAWAY (`NO_ERROR`) that h2 reports
/// for the streams above the last one the server said it processed.
fn unprocessed(err: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = src {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        src = e.source();
    }
    false
}

/// Whether `body` is what the servers the load is pointed at answer: the
/// fixture's `/` (`pid=N\n`) and the benchmark's hello (`Hello from pid
/// N\n`) both end with the answering PID and a newline. Anything else (cut
/// short, mixed up, an error page) is a mismatch.
pub fn body_ok(body: &str) -> bool {
    body.strip_suffix('\n')
        .and_then(|l| {
            l.strip_prefix("pid=")
                .or_else(|| l.strip_prefix("Hello from pid "))
        })
        .is_some_and(|pid| pid.parse::<u32>().is_ok())
}

/// Bounded exponential back-off after failures.
struct Backoff(Duration);

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }

    fn reset(&mut self) {
        self.0 = MIN_BACKOFF;
    }
}

/// What happened to one attempt.
enum Attempt {
    /// Answered well; the connection may be used again.
    Ok {
        body: String,
        reuse: bool,
    },
    /// An HTTP/2 request refused unprocessed: send it again.
    Retry,
    /// An HTTP/2 connection closed gracefully between two requests: open
    /// another, nothing was lost.
    Reconnect,
    Failed(Failure),
}

async fn worker(
    target: Target,
    path: String,
    mode: Mode,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> Stats {
    let mut stats = Stats::default();
    let mut conn: Option<Conn> = None;
    let mut backoff = Backoff(MIN_BACKOFF);
    while !stop.load(Ordering::Relaxed) {
        let (attempt, kept) = attempt(&target, &path, mode, conn.take()).await;
        conn = kept;
        match attempt {
            Attempt::Ok { body, reuse } => {
                backoff.reset();
                stats.ok += 1;
                *stats.bodies.entry(body).or_default() += 1;
                let bucket = (t0.elapsed().as_millis() / 100) as usize;
                if stats.buckets.len() <= bucket {
                    stats.buckets.resize(bucket + 1, 0);
                }
                stats.buckets[bucket] += 1;
                if !reuse {
                    conn = None;
                }
            }
            Attempt::Retry => stats.retried += 1,
            Attempt::Reconnect => stats.reconnects_after_goaway += 1,
            Attempt::Failed(f) => {
                stats.fail(f);
                conn = None;
                backoff.wait().await;
            }
        }
    }
    stats
}

/// One request, on `conn` if it is still open (else on a new connection).
/// Returns the outcome and the connection, if it may be used again.
async fn attempt(
    target: &Target,
    path: &str,
    mode: Mode,
    conn: Option<Conn>,
) -> (Attempt, Option<Conn>) {
    let fresh = conn.is_none();
    let mut conn = match conn {
        Some(c) if c.is_closed() => {
            // Closed between two requests. HTTP/2 after a GOAWAY: fine.
            // Anything else is a server closing a connection it had not
            // said it would close: a real client sending its next request
            // at that moment gets an error.
            return match (mode, c.ended().await) {
                (Mode::Http2, Ok(())) => (Attempt::Reconnect, None),
                (_, Ok(())) => (
                    Attempt::Failed(Failure::new(
                        "closed between requests",
                        "the server closed a kept-alive connection without Connection: close",
                    )),
                    None,
                ),
                (_, Err(e)) => (
                    Attempt::Failed(Failure::new("closed between requests", e)),
                    None,
                ),
            };
        }
        Some(c) => c,
        None => match connect(target, mode).await {
            Ok(c) => c,
            Err(f) => return (Attempt::Failed(f), None),
        },
    };
    let ready = match &mut conn.sender {
        Sender::H1(s) => timed(REQUEST_TIMEOUT, "not ready", "ready timeout", s.ready()).await,
        Sender::H2(s) => timed(REQUEST_TIMEOUT, "not ready", "ready timeout", s.ready()).await,
    };
    if let Err(f) = ready {
        if mode == Mode::Http2 && conn.is_closed() && conn.ended().await.is_ok() {
            // A GOAWAY that arrived as we were about to send.
            return (Attempt::Reconnect, None);
        }
        let f = Failure {
            detail: format!("{} ({} connection)", f.detail, fresh_or_reused(fresh)),
            ..f
        };
        return (Attempt::Failed(f), None);
    }

    let req = request(target, path, mode);
    let sent = match &mut conn.sender {
        Sender::H1(s) => tokio::time::timeout(REQUEST_TIMEOUT, s.try_send_request(req)).await,
        Sender::H2(s) => tokio::time::timeout(REQUEST_TIMEOUT, s.try_send_request(req)).await,
    };
    let res = match sent {
        Err(_) => {
            return (
                Attempt::Failed(Failure::new(
                    "response timeout",
                    format!("no response head within {REQUEST_TIMEOUT:?}"),
                )),
                None,
            )
        }
        Ok(Err(mut e)) => {
            let not_sent = e.take_message().is_some();
            // The one exception, see the module's docs: HTTP/2 says
            // explicitly that the server did not process the request.
            if mode == Mode::Http2 && (not_sent || unprocessed(e.error())) {
                return (Attempt::Retry, None);
            }
            let kind = if not_sent {
                "closed before the request was sent"
            } else {
                "request"
            };
            let detail = format!("{} ({} connection)", e.error(), fresh_or_reused(fresh));
            return (Attempt::Failed(Failure::new(kind, detail)), None);
        }
        Ok(Ok(res)) => res,
    };
    let status = res.status();
    let close = res
        .headers()
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = match tokio::time::timeout(REQUEST_TIMEOUT, res.into_body().collect()).await {
        Err(_) => {
            let f = Failure::new("body timeout", format!("after {REQUEST_TIMEOUT:?}"));
            return (Attempt::Failed(f), None);
        }
        Ok(Err(e)) => return (Attempt::Failed(Failure::new("body", e)), None),
        Ok(Ok(body)) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    };
    if status != hyper::StatusCode::OK {
        let f = Failure::new("status", format!("{status}: {body:?}"));
        return (Attempt::Failed(f), None);
    }
    if !body_ok(&body) {
        return (
            Attempt::Failed(Failure::new("body mismatch", format!("{body:?}"))),
            None,
        );
    }
    let reuse = !close && mode != Mode::Close;
    (Attempt::Ok { body, reuse }, reuse.then_some(conn))
}

fn fresh_or_reused(fresh: bool) -> &'static str {
    if fresh {
        "fresh"
    } else {
        "reused"
    }
}

fn request(target: &Target, path: &str, mode: Mode) -> Request<Empty<Bytes>> {
    let addr = &target.addr;
    let mut req = Request::get(path);
    if mode != Mode::Http2 {
        req = req.header(HOST, addr);
    } else {
        let scheme = if target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        req = req.uri(format!("{scheme}://{addr}{path}"));
    }
    if mode == Mode::Close {
        req = req.header(CONNECTION, "close");
    }
    req.body(Empty::new()).unwrap()
}

/// A two-worker runtime for the load, apart from the test's own thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
