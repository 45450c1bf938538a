//! Where this generation is in its life, for code that serves sockets of
//! its own: a process-wide token cancelled when the drain starts.
//!
//! Unlike [`Handle::draining`](crate::Handle::draining), which is spread
//! over a window so that clients do not all reconnect at once, this fires
//! the moment the drain starts: a task reading a shared socket must stop at
//! once, since the new generation reads it already.

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

static DRAINING: OnceLock<CancellationToken> = OnceLock::new();

/// The token cancelled when this generation starts draining.
pub(crate) fn draining() -> &'static CancellationToken {
    DRAINING.get_or_init(CancellationToken::new)
}

/// The drain has started: tasks serving extra sockets stop.
pub(crate) fn drain_started() {
    draining().cancel();
}
