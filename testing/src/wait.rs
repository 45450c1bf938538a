//! Bounded waiting: poll a probe until it says "done", or give up at a
//! deadline. Every "wait until X" in the tests goes through here, so that
//! none can spin or hang, and a timeout says what was awaited and what was
//! last seen instead.
//!
//! Self-contained (std only): the benchmark includes this file by `#[path]`.
#![allow(dead_code, unreachable_pub)]

use std::fmt::Display;
use std::time::{Duration, Instant};

/// The pause between two probes: short next to any timeout the tests use,
/// long enough not to busy a shared core.
const EVERY: Duration = Duration::from_millis(10);

/// What one probe found: done (with a value), or not yet, perhaps with what
/// it saw instead (for the message if time runs out).
///
/// - `bool`: `true` is done;
/// - `Option<T>`: `Some(value)` is done;
/// - `Result<T, E>`: `Ok(value)` is done, `Err(seen)` is not yet, and
///   `seen` is shown if it never is.
pub trait Attempt<T> {
    fn outcome(self) -> Result<T, Option<String>>;
}

impl Attempt<()> for bool {
    fn outcome(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Attempt<T> for Option<T> {
    fn outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Attempt<T> for Result<T, E> {
    fn outcome(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// Probes every 10 ms until `probe` is done, for at most `timeout` (at least
/// once, and once more at the deadline); the last "not yet" on timeout.
fn poll<T, A: Attempt<T>>(
    timeout: Duration,
    mut probe: impl FnMut() -> A,
) -> Result<T, Option<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match probe().outcome() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(seen);
        }
        std::thread::sleep(EVERY.min(deadline - now));
    }
}

/// The value `probe` is done with within `timeout`, or `None` if it never
/// was. For waits whose timeout is not a failure by itself.
pub fn within<T, A: Attempt<T>>(timeout: Duration, probe: impl FnMut() -> A) -> Option<T> {
    poll(timeout, probe).ok()
}

/// The value `probe` is done with within `timeout`; panics naming `what`
/// was awaited (and what the probe last saw) if it never is.
///
/// ```ignore
/// let pid = eventually("a second generation", Duration::from_secs(10), || {
///     server.alive().into_iter().find(|p| *p != first)
/// });
/// ```
pub fn eventually<T, A: Attempt<T>>(what: &str, timeout: Duration, probe: impl FnMut() -> A) -> T {
    eventually_with(what, timeout, String::new, probe)
}

/// Like [`eventually`], with `report()` (a server's output, say) appended
/// to the panic message.
pub fn eventually_with<T, A: Attempt<T>>(
    what: &str,
    timeout: Duration,
    report: impl FnOnce() -> String,
    probe: impl FnMut() -> A,
) -> T {
    match poll(timeout, probe) {
        Ok(value) => value,
        Err(seen) => {
            let seen = seen
                .map(|s| format!("; last seen: {s}"))
                .unwrap_or_default();
            panic!("not within {timeout:?}: {what}{seen}\n{}", report())
        }
    }
}
