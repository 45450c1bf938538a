//! [`Handle`]: reload or stop a running server from code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    /// Set once `run` serves: a reload asked before that has nothing to
    /// reload, and must not wait for a server that may never run.
    pub(crate) serving: Arc<AtomicBool>,
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
    pub async fn reload(&self) -> Result<()> {
        if !self.serving.load(Ordering::Acquire) {
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
