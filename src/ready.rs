//! The health gate: checks a new generation must pass before it says it is
//! ready, so a release that starts, accepts, and then answers every request
//! with an error (a bad configuration) never takes over.
//!
//! Two kinds: the program's own ([`Server::ready_check`], any async
//! closure), and a real request through a registered listener's service
//! ([`Server::ready_probe`]). The request is served in-process, over an
//! in-memory connection with hyper on both ends, through the same wrapper
//! every connection gets (so `ConnInfo::current()` and axum's
//! `ConnectInfo` work in the handler): the listening sockets are shared with
//! the old generation, which could just as well answer a request sent to
//! them.
//!
//! [`Server::ready_check`]: crate::Server::ready_check
//! [`Server::ready_probe`]: crate::Server::ready_probe

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::connections::Launch;
use crate::error::{Error, Result};
use crate::listener::LocalAddr;

type CheckFuture = Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>;

/// One check a generation must pass before it says it is ready.
pub(crate) enum ReadyCheck {
    /// The program's own.
    Custom(Arc<dyn Fn() -> CheckFuture + Send + Sync>),
    /// A request through a listener's service.
    Probe(Probe),
}

impl std::fmt::Debug for ReadyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadyCheck::Custom(_) => f.write_str("ReadyCheck::Custom(..)"),
            ReadyCheck::Probe(p) => f.debug_tuple("ReadyCheck::Probe").field(p).finish(),
        }
    }
}

impl ReadyCheck {
    pub(crate) fn custom<F, Fut, E>(check: F) -> ReadyCheck
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        ReadyCheck::Custom(Arc::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        }))
    }
}

/// A request a new generation sends itself, through a registered
/// listener's service, before it says it is ready; for
/// [`Server::ready_probe`](crate::Server::ready_probe).
///
/// # Examples
///
/// ```
/// let probe = endless::Probe::get("/healthz").expect_status(204).on("127.0.0.1:8080");
/// # let _ = probe;
/// ```
#[derive(Debug, Clone)]
pub struct Probe {
    method: hyper::Method,
    path: String,
    status: u16,
    listener: Option<String>,
}

impl Probe {
    /// A `GET` of `path` (with its query, if any), expecting `200`.
    pub fn get(path: impl Into<String>) -> Probe {
        Probe::new(hyper::Method::GET, path)
    }

    /// A request with `method` for `path`, expecting `200`.
    pub fn new(method: hyper::Method, path: impl Into<String>) -> Probe {
        Probe {
            method,
            path: path.into(),
            status: 200,
            listener: None,
        }
    }

    /// The status the answer must have.
    pub fn expect_status(mut self, status: u16) -> Probe {
        self.status = status;
        self
    }

    /// Through the service of the listener registered as `addr` (by
    /// default the first one registered).
    pub fn on(mut self, addr: impl Into<String>) -> Probe {
        self.listener = Some(addr.into());
        self
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A registered listener a probe can be sent through: its address (its
/// name), its service, and where it is bound.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) addr: &'a str,
    pub(crate) svc: &'a dyn Launch,
    pub(crate) local: &'a LocalAddr,
}

/// Runs `checks` in order, each within what is left of `timeout`; the
/// first failure is the error. Probes go through `targets`.
pub(crate) async fn run(
    checks: &[ReadyCheck],
    targets: &[Target<'_>],
    timeout: Duration,
) -> Result<()> {
    if checks.is_empty() {
        return Ok(());
    }
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    for (i, check) in checks.iter().enumerate() {
        let (what, fut): (String, CheckFuture) = match check {
            ReadyCheck::Custom(f) => (format!("ready check {}", i + 1), f()),
            ReadyCheck::Probe(p) => (format!("ready probe {}", p.describe()), probe(p, targets)),
        };
        let outcome = match tokio::time::timeout_at(deadline, fut).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "did not finish within the ready timeout ({timeout:?})"
            )),
        };
        if let Err(reason) = outcome {
            warn!(check = %what, %reason, "ready check failed; not taking over");
            return Err(Error::ReadyCheck {
                check: what,
                reason,
            });
        }
    }
    info!(checks = checks.len(), elapsed = ?started.elapsed(), "ready checks passed");
    Ok(())
}

/// Sends `p` through the service of its listener.
fn probe(p: &Probe, targets: &[Target<'_>]) -> CheckFuture {
    let found = match &p.listener {
        None => targets.first(),
        Some(addr) => targets.iter().find(|t| t.addr == addr),
    };
    let Some(target) = found else {
        let addr = p.listener.clone().unwrap_or_default();
        return Box::pin(async move { Err(format!("no listener is registered as {addr:?}")) });
    };
    let request = hyper::Request::builder()
        .method(p.method.clone())
        .uri(p.path.as_str())
        .header(hyper::header::HOST, "localhost")
        .header("user-agent", "endless-ready-probe")
        .body(http_body_util::Empty::<bytes::Bytes>::new());
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            let path = p.path.clone();
            return Box::pin(async move { Err(format!("{path:?} is not a request path: {e}")) });
        }
    };
    let answer = target
        .svc
        .probe(target.addr.to_owned(), target.local.clone(), request);
    let want = p.status;
    Box::pin(async move {
        let status = answer.await?;
        if status == want {
            Ok(())
        } else {
            Err(format!("answered {status}, expected {want}"))
        }
    })
}
