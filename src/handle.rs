//! [`Handle`]: reload or stop a running server from code, learn that it
//! drains, and read what it has done.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::events::Requests;
use crate::lifecycle::{Lifecycle, Phase, Stats};
use crate::listener::LocalAddr;
use crate::succession::Succession;

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
    requests: Requests,
    life: Arc<Lifecycle>,
}

impl Handle {
    pub(crate) fn new(requests: Requests, life: Arc<Lifecycle>) -> Handle {
        Handle { requests, life }
    }

    pub(crate) fn requests(&self) -> &Requests {
        &self.requests
    }

    /// Starts a new generation of this server and waits until it serves.
    ///
    /// Resolves `Ok` once the new generation is accepting on every listener
    /// (its ready checks passed) and this generation has started draining:
    /// [`is_draining`](Self::is_draining) is `true` from then on. Resolves
    /// `Err` when no new generation took over, and this one keeps serving:
    /// the executable could not be started ([`Error::Spawn`]), it exited
    /// before it was ready ([`Error::ChildExited`], with its reason), it was
    /// not ready in time ([`Error::ReadyTimeout`]), another reload is under
    /// way ([`Error::ReloadInProgress`]), this generation is already
    /// draining ([`Error::Draining`]), or the server is not running
    /// ([`Error::NotRunning`], also before [`run`](crate::Server::run)
    /// serves).
    ///
    /// A new generation that took over may still fail within its probation
    /// ([`Server::probation`](crate::Server::probation)); this generation
    /// then serves again, and [`stats`](Self::stats) counts a rolled-back
    /// reload.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future does not cancel the reload once it was sent.
    ///
    /// # Platform support
    ///
    /// Reloads need Unix: elsewhere (Windows) this returns
    /// [`Error::Unsupported`] at once, and the server goes on serving.
    pub async fn reload(&self) -> Result<()> {
        if !Succession::RELOADS {
            self.life.reload_requested();
            return Err(Error::reloads_unsupported());
        }
        if self.life.phase() == Phase::Starting {
            return Err(Error::NotRunning);
        }
        self.requests.reload("handle").await.map(drop)
    }

    /// Starts a graceful stop, as a stop signal would, and returns at once.
    ///
    /// The server stops accepting, lets in-flight requests finish, and
    /// [`Server::run`](crate::Server::run) returns once they are done or the
    /// stop timeout has passed. Like a first stop signal to a generation that
    /// is already draining, it then changes nothing.
    pub fn stop(&self) {
        self.requests.stop();
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
        let mut rx = self.life.subscribe();
        // Copied out at once: the borrow must not live across an await.
        let since = rx
            .wait_for(|p| matches!(p, Phase::Draining(_)))
            .await
            .map(|p| *p);
        let Ok(Phase::Draining(since)) = since else {
            // The server is gone: nothing will ever drain.
            return std::future::pending().await;
        };
        let spread = self.life.notice_spread();
        if !spread.is_zero() {
            let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
            let delay = Duration::from_millis(random_below(spread_ms));
            tokio::time::sleep_until(since + delay).await;
        }
    }

    /// Whether this generation is draining now (no spread: `true` from the
    /// moment the drain starts).
    pub fn is_draining(&self) -> bool {
        matches!(self.life.phase(), Phase::Draining(_))
    }

    /// A snapshot of what the server has done (reloads requested, succeeded,
    /// failed and rolled back over the life of the server, the last reload's
    /// duration and failure reason) and of this generation now
    /// (connections open, draining, on probation).
    pub fn stats(&self) -> Stats {
        self.life.stats()
    }

    /// Waits until the server accepts on every listener and returns the
    /// addresses it is bound to, in registration order (useful with port 0).
    ///
    /// Fails with [`Error::NotRunning`] if the server stops (or fails to
    /// start) first.
    pub async fn listening(&self) -> Result<Vec<LocalAddr>> {
        let mut addrs = self.life.listening();
        let mut phase = self.life.subscribe();
        loop {
            if let Some(a) = addrs.borrow_and_update().clone() {
                return Ok(a);
            }
            if *phase.borrow_and_update() == Phase::Ended {
                return Err(Error::NotRunning);
            }
            tokio::select! {
                r = addrs.changed() => r.map_err(|_| Error::NotRunning)?,
                r = phase.changed() => r.map_err(|_| Error::NotRunning)?,
            }
        }
    }
}

/// A number in `0..n` (`n > 0`), different at each call: enough to spread
/// wake-ups, not for anything secret. (std's hasher is randomly seeded per
/// process; a counter makes each call differ.)
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
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
