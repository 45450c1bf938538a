//! [`ConnInfo`]: what a handler can know of the connection its request came
//! on, from [`ConnInfo::current`].
//!
//! It is a task-local value, not a request extension: putting it in each
//! request's `Extensions` allocated a map and a box for every request
//! (measured: 9% more instructions per keep-alive request), where a
//! task-local costs a pointer swap each time the connection's task is
//! polled. HTTP/2 streams run in tasks of their own, which inherit it from
//! their connection's task (see [`Inherit`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) use crate::listener::Peer;
use crate::listener::{LocalAddr, PeerCredentials};

/// The connection a request came on: who is at the other end, where it
/// came in, and, over TLS, what was negotiated.
///
/// A handler gets the one of the connection it is serving from
/// [`ConnInfo::current`]. It is built once per connection; each call
/// returns a clone (one reference count).
///
/// With the `axum` feature, requests also carry it in their extensions (so
/// axum's `Extension<ConnInfo>` extractor works), and requests over TCP
/// carry axum's `ConnectInfo<SocketAddr>`, so `axum::extract::ConnectInfo`
/// works in a router served by `endless`. That costs an allocation or two
/// per request, which is why it comes only with the feature.
///
/// # Examples
///
/// ```
/// use hyper::{body::Incoming, Request, Response};
///
/// async fn who(_req: Request<Incoming>) -> Result<Response<String>, std::convert::Infallible> {
///     let info = endless::ConnInfo::current().expect("served by endless");
///     let peer = match (info.peer_addr(), info.peer_credentials()) {
///         (Some(addr), _) => addr.to_string(),
///         (None, Some(creds)) => format!("uid {}", creds.uid),
///         (None, None) => "unknown".to_string(),
///     };
///     Ok(Response::new(format!("{peer} on {} ({})\n", info.local_addr(), info.listener())))
/// }
/// ```
#[derive(Debug, Clone)]
pub struct ConnInfo(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    listener: Arc<str>,
    local: LocalAddr,
    peer: Peer,
    #[cfg(feature = "tls")]
    tls: Option<TlsInfo>,
}

/// What a TLS handshake settled.
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TlsInfo {
    /// The server name the client asked for (SNI), if it sent one.
    pub server_name: Option<String>,
    /// The protocol agreed by ALPN (`b"h2"`, `b"http/1.1"`), if any.
    pub alpn_protocol: Option<Vec<u8>>,
    /// The client's certificate chain, end entity first, when client
    /// authentication was asked for (a configuration given to
    /// [`Server::register_tls_config`](crate::Server::register_tls_config))
    /// and the client sent one.
    pub peer_certificates: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl ConnInfo {
    pub(crate) fn new(listener: Arc<str>, local: LocalAddr, peer: Peer) -> ConnInfo {
        ConnInfo(Arc::new(Inner {
            listener,
            local,
            peer,
            #[cfg(feature = "tls")]
            tls: None,
        }))
    }

    /// The same, with what the TLS handshake settled.
    #[cfg(feature = "tls")]
    pub(crate) fn with_tls(&self, tls: TlsInfo) -> ConnInfo {
        ConnInfo(Arc::new(Inner {
            listener: self.0.listener.clone(),
            local: self.0.local.clone(),
            peer: self.0.peer.clone(),
            tls: Some(tls),
        }))
    }

    /// The connection info of the request being handled: `Some` in the
    /// task of a connection `endless` serves (its service and everything
    /// the service's future awaits, HTTP/2 streams included), `None`
    /// elsewhere.
    ///
    /// A task the handler spawns does not inherit it (tokio's task-locals
    /// do not follow `tokio::spawn`): take it before, and move it in. The
    /// same goes for middleware that hands requests to a task of its own,
    /// such as tower's `Buffer`.
    ///
    /// ```
    /// // Outside a connection served by endless there is none.
    /// assert!(endless::ConnInfo::current().is_none());
    /// ```
    pub fn current() -> Option<ConnInfo> {
        CURRENT.try_with(ConnInfo::clone).ok()
    }

    /// Runs `fut` (a connection's serving) with this as the
    /// [`ConnInfo::current`] of everything it polls.
    pub(crate) fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }

    /// The listener's registered address (its name across reloads), as
    /// given to [`Server::register`](crate::Server::register).
    pub fn listener(&self) -> &str {
        &self.0.listener
    }

    /// Where the connection came in.
    pub fn local_addr(&self) -> &LocalAddr {
        &self.0.local
    }

    /// The client's address, for a TCP connection.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self.0.peer {
            Peer::Tcp(addr) => Some(addr),
            #[cfg(unix)]
            Peer::Unix(_) => None,
        }
    }

    /// The client process's credentials, for a Unix socket connection.
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        match self.0.peer {
            Peer::Tcp(_) => None,
            #[cfg(unix)]
            Peer::Unix(creds) => creds,
        }
    }

    /// What the TLS handshake settled, for an HTTPS connection.
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.0.tls.as_ref()
    }

    /// Puts this info and, for TCP, axum's `ConnectInfo<SocketAddr>` in
    /// `req`'s extensions, for axum's extractors.
    // Without Unix sockets every peer is a TCP one.
    #[cfg(feature = "axum")]
    #[cfg_attr(not(unix), allow(irrefutable_let_patterns))]
    pub(crate) fn attach<B>(&self, req: &mut hyper::Request<B>) {
        if let Peer::Tcp(addr) = self.0.peer {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(addr));
        }
        req.extensions_mut().insert(self.clone());
    }
}

tokio::task_local! {
    /// The connection the current task serves.
    static CURRENT: ConnInfo;
}

/// The executor hyper spawns HTTP/2 streams (and other background work of a
/// connection) with: tokio's, passing on the spawning task's [`ConnInfo`],
/// so that handlers of HTTP/2 requests see theirs too.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Inherit;

impl<F> hyper::rt::Executor<F> for Inherit
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        match ConnInfo::current() {
            Some(info) => drop(tokio::spawn(info.scope(fut))),
            None => drop(tokio::spawn(fut)),
        }
    }
}
