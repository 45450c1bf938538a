//! [`Handle`]: reload or stop a running server from code, learn that it
//! drains, and read what it has done.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::listener::LocalAddr;

/// What a handle asks of its server.
#[derive(Debug)]
pub(crate) enum Command {
    Reload(oneshot::Sender<Result<()>>),
    Stop,
}

/// Reloads or stops a [`Server`](crate::Server) from code.
///
/// Get one with [`Server::handle`](crate::Server::handle) before calling
/// [`run`](crate::Server::run). Handles are cheap to clone, `Send` and `Sync`,
/// and may be used from inside the server's own request handlers.
///
/// # Examples
///
/// ```no_run
/// # async fn doc() -> Result<(), endless::Error> {
/// use hyper::service::service_fn;
///
/// let server = endless::Server::new().register(
///     "127.0.0.1:8080",
///     service_fn(|_req| async { Ok::<_, hyper::Error>(hyper::Response::new("hello".to_string())) }),
/// );
/// let handle = server.handle();
/// tokio::spawn(async move {
///     let addrs = handle.listening().await?;
///     println!("serving on {}", addrs[0]);
///     // ... later, e.g. after a new binary was installed:
///     handle.reload().await
/// });
/// server.run().await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) listening: watch::Receiver<Option<Vec<LocalAddr>>>,
    pub(crate) shared: Arc<Shared>,
}

/// What the generation shares with its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Set once `run` serves: a reload asked before that has nothing to
    /// reload, and must not wait for a server that may never run.
    pub(crate) serving: AtomicBool,
    /// When this generation started draining (back to `None` if a
    /// `keep_pid` re-exec fails and it serves again).
    pub(crate) draining: watch::Sender<Option<tokio::time::Instant>>,
    /// [`Handle::draining`] resolves at a random moment within this window
    /// after the drain starts, in milliseconds.
    pub(crate) notice_spread_ms: AtomicU64,
    pub(crate) stats: Mutex<Stats>,
    /// Counts the connections open now, once the generation serves.
    pub(crate) connections: Mutex<Option<Counter>>,
}

/// Counts something on demand.
pub(crate) struct Counter(pub(crate) Box<dyn Fn() -> usize + Send + Sync>);

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counter")
    }
}

impl Shared {
    pub(crate) fn new(notice_spread: Duration) -> Shared {
        Shared {
            serving: AtomicBool::new(false),
            draining: watch::channel(None).0,
            notice_spread_ms: AtomicU64::new(notice_spread.as_millis() as u64),
            stats: Mutex::new(Stats {
                generation: crate::generation(),
                ..Stats::default()
            }),
            connections: Mutex::new(None),
        }
    }

    pub(crate) fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The drain has started (`true`) or, after a failed `keep_pid`
    /// re-exec, this generation serves again (`false`).
    pub(crate) fn set_draining(&self, draining: bool) {
        self.draining
            .send_replace(draining.then(tokio::time::Instant::now));
    }

    /// A reload was asked for (whatever becomes of it).
    pub(crate) fn reload_requested(&self) {
        self.stats().reloads_requested += 1;
    }

    /// A reload that started at `since` ended with `outcome`.
    pub(crate) fn reload_finished(&self, since: std::time::Instant, outcome: &Result<()>) {
        let mut stats = self.stats();
        match outcome {
            Ok(()) => stats.reloads_succeeded += 1,
            Err(_) => stats.reloads_failed += 1,
        }
        stats.last_reload_duration = Some(since.elapsed());
        stats.last_reload_error = outcome.as_ref().err().map(|e| e.to_string());
    }
}

/// What a server has done, as seen from one generation: a snapshot taken by
/// [`Handle::stats`].
///
/// Reload counts are this generation's own (each generation starts at
/// zero): the reloads it was asked for, and how they ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// This generation's number: see [`generation`](crate::generation).
    pub generation: u64,
    /// Reloads asked for, by signal or [`Handle::reload`], including those
    /// coalesced into one under way or refused while draining.
    pub reloads_requested: u64,
    /// Reloads whose new generation took over.
    pub reloads_succeeded: u64,
    /// Reloads that started a new generation which then failed (it could
    /// not be spawned, exited, was not ready in time, or its re-exec in
    /// place failed).
    pub reloads_failed: u64,
    /// How long the last finished reload took, from the request to the
    /// verdict.
    pub last_reload_duration: Option<Duration>,
    /// Why the last finished reload failed (`None` if it succeeded).
    pub last_reload_error: Option<String>,
    /// Connections open now, upgraded ones included.
    pub connections: usize,
    /// Whether this generation is draining.
    pub draining: bool,
}

impl Handle {
    /// Starts a new generation of this server and waits until it serves.
    ///
    /// Resolves `Ok` once the new generation is accepting on every listener;
    /// this generation is then draining. Resolves `Err` when no new
    /// generation took over, and this one keeps serving: the executable could
    /// not be started ([`Error::Spawn`]), it exited before it was ready
    /// ([`Error::ChildExited`]), it was not ready in time
    /// ([`Error::ReadyTimeout`]), another reload is under way
    /// ([`Error::ReloadInProgress`]), this generation is already draining
    /// ([`Error::Draining`]), or the server is not running
    /// ([`Error::NotRunning`], also before [`run`](crate::Server::run) serves).
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future does not cancel the reload once it was sent.
    ///
    /// # Platform support
    ///
    /// Reloads need Unix: elsewhere (Windows) this returns
    /// [`Error::Unsupported`] at once, and the server goes on serving.
    // Without Unix, everything after the early return is unreachable.
    #[cfg_attr(not(unix), allow(unreachable_code))]
    pub async fn reload(&self) -> Result<()> {
        #[cfg(not(unix))]
        return Err(crate::generation::refuse_reload(&self.shared));
        if !self.shared.serving.load(Ordering::Acquire) {
            return Err(Error::NotRunning);
        }
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Reload(tx))
            .map_err(|_| Error::NotRunning)?;
        rx.await.map_err(|_| Error::NotRunning)?
    }

    /// Starts a graceful stop, as a stop signal would, and returns at once.
    ///
    /// The server stops accepting, lets in-flight requests finish, and
    /// [`Server::run`](crate::Server::run) returns once they are done or the
    /// stop timeout has passed. Like a first stop signal to a generation that
    /// is already draining, it then changes nothing.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    /// The former name of [`stop`](Self::stop).
    #[deprecated(since = "0.2.0", note = "renamed to `stop`: one word for one concept")]
    pub fn shutdown(&self) {
        self.stop();
    }

    /// Resolves once this generation has started draining (after a reload
    /// handed over, or a stop), at a random moment within the drain notice
    /// spread ([`Server::drain_notice_spread`](crate::Server::drain_notice_spread),
    /// 2 s by default), so that thousands of clients told at once do not all
    /// reconnect in the same millisecond.
    ///
    /// Long-lived work uses it to end cleanly before the stop timeout cuts
    /// it: a WebSocket sends a close frame (1001 "going away" or 1012
    /// "service restart") and its client reconnects to the new generation; a
    /// server-sent-events stream ends with a last event and a `retry:` hint;
    /// a long poll answers early. Cheap: any number of tasks may wait.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn doc(handle: endless::Handle) {
    /// let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    /// loop {
    ///     tokio::select! {
    ///         _ = handle.draining() => break, // say goodbye, then return
    ///         _ = ticks.tick() => { /* send an event */ }
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe: a dropped future loses nothing. Each future draws
    /// its own moment within the window, counted from the start of the
    /// drain (not from the call), so one made afresh on every turn of a
    /// loop still resolves within the window.
    pub async fn draining(&self) {
        let mut rx = self.shared.draining.subscribe();
        // Copied out at once: the borrow must not live across an await.
        let since = rx.wait_for(Option::is_some).await.map(|since| *since);
        let Ok(Some(since)) = since else {
            // The server is gone: nothing will ever drain.
            return std::future::pending().await;
        };
        let spread = self.shared.notice_spread_ms.load(Ordering::Relaxed);
        if spread > 0 {
            let delay = Duration::from_millis(random_below(spread));
            tokio::time::sleep_until(since + delay).await;
        }
    }

    /// Whether this generation is draining now (no spread: `true` from the
    /// moment the drain starts).
    pub fn is_draining(&self) -> bool {
        self.shared.draining.borrow().is_some()
    }

    /// A snapshot of what this generation has done: reloads requested,
    /// succeeded and failed, the last reload's duration and failure reason,
    /// connections open now, and whether it drains.
    pub fn stats(&self) -> Stats {
        let mut stats = self.shared.stats().clone();
        stats.draining = self.is_draining();
        let count = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        stats.connections = count.as_ref().map_or(0, |c| (c.0)());
        stats
    }

    /// Waits until the server accepts on every listener and returns the
    /// addresses it is bound to, in registration order (useful with port 0).
    ///
    /// Fails with [`Error::NotRunning`] if the server stops (or fails to
    /// start) first.
    pub async fn listening(&self) -> Result<Vec<LocalAddr>> {
        let mut rx = self.listening.clone();
        let addrs = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::NotRunning)?;
        Ok(addrs.clone().unwrap_or_default())
    }
}

/// A number in `0..n` (`n > 0`), different at each call: enough to spread
/// wake-ups, not for anything secret. (std's hasher is randomly seeded per
/// process; a counter makes each call differ.)
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = SEED
        .get_or_init(std::collections::hash_map::RandomState::new)
        .build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.finish() % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_below_spreads_and_stays_below() {
        let draws: Vec<u64> = (0..1000).map(|_| random_below(100)).collect();
        assert!(draws.iter().all(|d| *d < 100));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 50, "{}", distinct.len());
    }
}
