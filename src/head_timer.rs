//! hyper's HTTP/1 header-read timeout, without a tokio timer per request.
//!
//! hyper asks its [`Timer`] for a new sleep each time an HTTP/1 connection
//! starts waiting for a request head, and drops it once the head is parsed:
//! with tokio's timer that is a timer entry allocated, registered in the
//! timer wheel and deregistered for every request (measured: most of the 9%
//! more CPU per keep-alive request that endless cost over plain hyper-util).
//!
//! [`HeadTimer`] hands hyper a sleep that only remembers its deadline. When
//! hyper polls it (inside the connection's task, which [`Scoped`] marks), it
//! writes that deadline into the connection's [`HeadDeadline`]; the
//! generation's sweeper, which already visits every connection now and then,
//! wakes the connections whose deadline has passed, and hyper, polling the
//! sleep again, finds it expired and closes the connection as before. The
//! timeout is as precise as the sweep (a quarter of it, at most a second
//! late), which is plenty for a timeout of seconds.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

use crate::connections::ConnSignal;

/// The header-read deadline of one connection, in ms since [`epoch`] (0:
/// none), as its last polled sleep set it.
#[derive(Debug, Default)]
pub(crate) struct HeadDeadline(AtomicU64);

impl HeadDeadline {
    /// Sets the deadline; one relaxed load and no store when it is already
    /// set (hyper polls the same sleep again while a head arrives).
    fn set(&self, ms: u64) {
        if self.0.load(Ordering::Relaxed) != ms {
            self.0.store(ms, Ordering::Relaxed);
        }
    }

    /// Whether the deadline has passed by `now_ms`; if so, clears it, so
    /// that a connection is woken once per deadline (hyper sets a new one if
    /// it still waits for a head).
    pub(crate) fn take_expired(&self, now_ms: u64) -> bool {
        let d = self.0.load(Ordering::Relaxed);
        d != 0
            && now_ms >= d
            && self
                .0
                .compare_exchange(d, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The instant deadlines are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `t` in whole ms since [`epoch`], rounded up and at least 1, so that the
/// sweeper never wakes a connection before its sleep has expired.
fn ms_after_epoch(t: Instant) -> u64 {
    let d = t.saturating_duration_since(epoch());
    let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// Now, in ms since [`epoch`], for the sweeper.
pub(crate) fn now_ms() -> u64 {
    let d = Instant::now().saturating_duration_since(epoch());
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

thread_local! {
    /// The connection whose task is being polled on this thread (see
    /// [`Scoped`]).
    static CURRENT: Cell<Option<Arc<ConnSignal>>> = const { Cell::new(None) };
}

pin_project_lite::pin_project! {
    /// Polls `inner` as the connection `conn`'s. The `Arc` is moved in and
    /// out of the thread-local, never cloned, so a poll costs two pointer
    /// swaps.
    pub(crate) struct Scoped<F> {
        #[pin]
        inner: F,
        conn: Option<Arc<ConnSignal>>,
    }
}

impl<F> Scoped<F> {
    pub(crate) fn new(conn: Arc<ConnSignal>, inner: F) -> Self {
        Scoped {
            inner,
            conn: Some(conn),
        }
    }

    pub(crate) fn inner(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().inner
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let outer = CURRENT.replace(this.conn.take());
        let polled = this.inner.poll(cx);
        *this.conn = CURRENT.replace(outer);
        polled
    }
}

/// The [`Timer`] given to hyper's HTTP/1 connections.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HeadTimer;

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            deadline,
            ms: ms_after_epoch(deadline),
            fallback: None,
        })
    }
}

/// A sleep that the sweeper wakes (see the module docs).
struct HeadSleep {
    deadline: Instant,
    ms: u64,
    /// A real timer, only if the sleep is polled outside a [`Scoped`]
    /// connection (which endless never does): a timeout must not be lost.
    fallback: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let conn = CURRENT.take();
        match &conn {
            Some(conn) => conn.head_deadline().set(self.ms),
            None => {
                let deadline = self.deadline.into();
                let fallback = self
                    .fallback
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if fallback.as_mut().poll(cx).is_ready() {
                    CURRENT.set(conn);
                    return Poll::Ready(());
                }
            }
        }
        CURRENT.set(conn);
        Poll::Pending
    }
}

impl Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_and_expire_once() {
        let slot = HeadDeadline::default();
        assert!(!slot.take_expired(u64::MAX), "no deadline, nothing expires");
        let at = Instant::now() + Duration::from_micros(1500);
        let ms = ms_after_epoch(at);
        assert!(ms >= 1);
        slot.set(ms);
        assert!(!slot.take_expired(ms - 1));
        assert!(slot.take_expired(ms));
        assert!(!slot.take_expired(ms), "woken once per deadline");
        // Rounded up: when the sweeper sees `ms`, the sleep has expired.
        assert!(epoch() + Duration::from_millis(ms) >= at);
    }

    #[tokio::test]
    async fn a_sleep_in_a_connection_sets_its_deadline() {
        let conn = Arc::new(ConnSignal::default());
        let sleep = HeadTimer.sleep(Duration::from_secs(30));
        let mut polled = Box::pin(Scoped::new(conn.clone(), sleep));
        let waker = std::task::Waker::noop();
        assert!(polled
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending());
        let set = conn.head_deadline().0.load(Ordering::Relaxed);
        let expected = now_ms() + 30_000;
        assert!(set.abs_diff(expected) < 1000, "{set} vs {expected}");
        assert!(
            CURRENT.take().is_none(),
            "the connection leaves the thread-local"
        );
    }

    #[tokio::test]
    async fn a_sleep_outside_a_connection_still_expires() {
        let started = Instant::now();
        HeadTimer.sleep(Duration::from_millis(30)).await;
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
