//! The registered services, each waiting for its listener: a [`Launch`]
//! per registration.
//!
//! Type erasure happens once per listener, not once per request: a
//! registration keeps a [`Launch`], which starts an accept loop compiled for
//! its own service type. Requests then reach the user's service, and its
//! futures and bodies reach hyper, without a box or an indirection. (Boxing
//! per request cost measurable CPU time per request against plain hyper.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::conn_signal::ConnSignal;
use super::request::ConnService;
use super::{Connections, Tls};
use crate::conn_info::ConnInfo;
use crate::listener::{Listener, LocalAddr};
use crate::service::{HttpBody, HttpService};

/// Starts the accept loop of one registration, with its service's own type.
/// Callable again (a generation that serves again after a failed successor,
/// or a failed `keep_pid` re-exec, resumes).
pub(crate) trait Launch: Send + Sync {
    fn launch(&self, conns: &Connections, name: String, listener: Arc<Listener>, tls: Tls);

    /// Sends `request` through the service, in-process, as if it came on
    /// the listener `name` bound at `local`: its status, or why there is
    /// none (see `ready`).
    fn probe(
        &self,
        name: String,
        local: LocalAddr,
        request: Request<http_body_util::Empty<bytes::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<StatusCode, String>> + Send>>;
}

/// A registered service, waiting for its listener.
struct Registered<S, B> {
    svc: S,
    _body: std::marker::PhantomData<fn() -> B>,
}

/// Keeps `svc` until `run` has its listener.
pub(crate) fn register<S, B>(svc: S) -> Box<dyn Launch>
where
    S: HttpService<B>,
    B: HttpBody,
{
    Box::new(Registered {
        svc,
        _body: std::marker::PhantomData,
    })
}

impl<S, B> Launch for Registered<S, B>
where
    S: HttpService<B>,
    B: HttpBody,
{
    fn launch(&self, conns: &Connections, name: String, listener: Arc<Listener>, tls: Tls) {
        conns.spawn_accept_loop(name, listener, self.svc.clone(), tls);
    }

    fn probe(
        &self,
        name: String,
        local: LocalAddr,
        request: Request<http_body_util::Empty<bytes::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<StatusCode, String>> + Send>> {
        // Through the wrapper every connection gets, so the handler finds
        // its ConnInfo (and, with the `axum` feature, ConnectInfo): the
        // probe's peer is the listener's own address.
        let svc = ConnService {
            svc: self.svc.clone(),
            signal: Arc::new(ConnSignal::default()),
        };
        let peer = match &local {
            LocalAddr::Tcp(a) => crate::listener::Peer::Tcp(*a),
            #[cfg(unix)]
            _ => crate::listener::Peer::Unix(None),
            #[cfg(not(unix))]
            _ => crate::listener::Peer::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        };
        let info = ConnInfo::new(Arc::from(name.as_str()), local, peer);
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), svc);
            tokio::spawn(info.scope(conn));
            let (mut sender, client_conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(client))
                    .await
                    .map_err(|e| format!("cannot talk to the service: {e}"))?;
            tokio::spawn(client_conn);
            let res = sender
                .send_request(request)
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            Ok(res.status())
        })
    }
}
