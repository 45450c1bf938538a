//! A load generator that counts every failed request.
//!
//! Each worker owns one connection at a time and sends requests on it back
//! to back, like wrk. A request counts as failed if it could not connect, was
//! reset or cut short, timed out, or got a non-2xx answer. A request that
//! was never sent (the connection was already known to be closed, or an
//! HTTP/2 GOAWAY said the server never processed it) is sent again on a new
//! connection, as every HTTP client does, and does not count.
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
    /// Requests sent again because the server had not processed them.
    pub retried: u64,
    /// The first few failures, for messages.
    pub errors: Vec<String>,
    /// Successful responses per body (the fixture's `/` answers `pid=N`).
    pub bodies: BTreeMap<String, u64>,
    /// Completed requests per 100 ms since the start.
    pub buckets: Vec<u64>,
}

impl Stats {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.errors.len() < 20 {
            self.errors.push(what);
        }
    }

    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.retried += o.retried;
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
                Err(e) => total.fail(format!("worker panicked: {e}")),
            }
        }
        total
    }
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

#[derive(Clone)]
struct Target {
    addr: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

async fn connect(target: &Target, mode: Mode) -> Result<Sender, String> {
    if let Some(path) = target.addr.strip_prefix("unix:") {
        let unix = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        return handshake(TokioIo::new(unix), mode).await;
    }
    let tcp = TcpStream::connect(&target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match &target.tls {
        None => handshake(TokioIo::new(tcp), mode).await,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls handshake: {e}"))?;
            handshake(TokioIo::new(stream), mode).await
        }
    }
}

async fn handshake<IO>(io: IO, mode: Mode) -> Result<Sender, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    match mode {
        Mode::KeepAlive | Mode::Close => {
            let (send, conn) = http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H1(send))
        }
        Mode::Http2 => {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H2(send))
        }
    }
}

/// Whether an HTTP/2 error says the server never processed the stream.
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

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

async fn worker(
    target: Target,
    path: String,
    mode: Mode,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> Stats {
    let addr = target.addr.clone();
    let mut stats = Stats::default();
    let mut conn: Option<Sender> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut sender = match conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(&target, mode).await {
                Ok(s) => s,
                Err(e) => {
                    stats.fail(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // A connection found closed before anything was sent on it costs
        // nothing: open another.
        let ready = match &mut sender {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.ready().await.is_ok(),
        };
        if !ready {
            continue;
        }
        let mut req = Request::get(&path);
        if mode != Mode::Http2 {
            req = req.header(HOST, &addr);
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
        let req = req.body(Empty::new()).unwrap();
        let sent = match &mut sender {
            Sender::H1(s) => tokio::time::timeout(REQUEST_TIMEOUT, s.try_send_request(req)).await,
            Sender::H2(s) => tokio::time::timeout(REQUEST_TIMEOUT, s.try_send_request(req)).await,
        };
        let res = match sent {
            Err(_) => {
                stats.fail("timeout waiting for response headers".into());
                continue;
            }
            Ok(Err(mut e)) => {
                if e.take_message().is_some() || unprocessed(e.error()) {
                    stats.retried += 1;
                } else {
                    stats.fail(format!("request: {}", e.error()));
                }
                continue;
            }
            Ok(Ok(res)) => res,
        };
        let status = res.status();
        let close = res
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        match tokio::time::timeout(REQUEST_TIMEOUT, res.into_body().collect()).await {
            Err(_) => stats.fail("timeout reading body".into()),
            Ok(Err(e)) => stats.fail(format!("body: {e}")),
            Ok(Ok(_)) if !status.is_success() => stats.fail(format!("status {status}")),
            Ok(Ok(body)) => {
                stats.ok += 1;
                let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                *stats.bodies.entry(body).or_default() += 1;
                let bucket = (t0.elapsed().as_millis() / 100) as usize;
                if stats.buckets.len() <= bucket {
                    stats.buckets.resize(bucket + 1, 0);
                }
                stats.buckets[bucket] += 1;
                if !close && mode != Mode::Close {
                    conn = Some(sender);
                }
            }
        }
    }
    stats
}

/// A two-worker runtime for the load, apart from the test's own thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
