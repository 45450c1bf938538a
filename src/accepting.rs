//! From a generation's endpoints to accepting connections: the steps of a
//! start that are the same whether or not the platform reloads. The TLS
//! acceptors, the listeners (adopted or bound), the ready checks, and the
//! accept loops with the count of open connections that the handles read.
//!
//! The two generations (`generation.rs` on Unix, `portable/generation.rs`
//! elsewhere) call these in the same order; what differs between them is
//! what comes before (a hand-over to adopt) and after (a successor to
//! start).

use tracing::info;

use crate::config::{Config, Endpoint};
use crate::connections::{Connections, Tls};
use crate::error::{Error, Result};
use crate::lifecycle::Counter;
use crate::listener::{self, Bound, LocalAddr};
use crate::quic::Http3;

/// Each endpoint's TLS acceptor, if it serves HTTPS: the certificates and
/// keys read now (an error names the file).
pub(crate) fn acceptors(endpoints: &[Endpoint]) -> Result<Vec<Tls>> {
    endpoints
        .iter()
        .map(|e| e.tls.as_ref().map(|t| t.acceptor()).transpose())
        .collect()
}

/// Takes every endpoint's listeners (adopted or bound; a `keep_pid` temporary
/// generation, with `bind_new` false, keeps no new address: the process it
/// stands in for binds them after its re-exec, so it proves they can be
/// bound), then runs the ready checks, probes through the endpoints.
/// Returns the listeners and where each is bound.
pub(crate) async fn bind_and_check(
    config: &Config,
    endpoints: &[Endpoint],
    bind_new: bool,
) -> Result<(Vec<Bound>, Vec<(usize, LocalAddr)>)> {
    let wanted: Vec<listener::Wanted<'_>> = endpoints
        .iter()
        .map(|e| listener::Wanted {
            name: &e.addr,
            spec: &e.spec,
            perms: e.perms.as_ref(),
            backlog: config.backlog,
            given: e.given.as_ref(),
        })
        .collect();
    let bound = listener::take_all(&wanted, bind_new).await?;
    let addrs = bound_addrs(endpoints, &bound)?;
    let locals = first_of_each(endpoints, &addrs);
    let targets: Vec<crate::ready::Target<'_>> = endpoints
        .iter()
        .zip(&locals)
        .map(|(e, local)| crate::ready::Target {
            addr: &e.addr,
            svc: &*e.svc,
            local,
        })
        .collect();
    crate::ready::run(&config.ready_checks, &targets, config.ready_timeout).await?;
    Ok((bound, addrs))
}

/// Where each listener is bound, with its endpoint's index, in order.
pub(crate) fn bound_addrs(
    endpoints: &[Endpoint],
    bound: &[Bound],
) -> Result<Vec<(usize, LocalAddr)>> {
    bound
        .iter()
        .map(|b| {
            let addr = b.listener.local_addr().map_err(|source| Error::Io {
                context: format!("cannot read the local address of {}", b.name),
                source,
            })?;
            let tls = endpoints[b.index].tls.is_some();
            info!(addr = %addr, name = %b.name, tls, "listening");
            Ok((b.index, addr))
        })
        .collect()
}

/// Where each endpoint is bound (its first listener), in order; for an
/// endpoint with none (a temporary generation's new address, left to its
/// parent), a placeholder.
fn first_of_each(endpoints: &[Endpoint], addrs: &[(usize, LocalAddr)]) -> Vec<LocalAddr> {
    (0..endpoints.len())
        .map(|i| {
            addrs
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, a)| a.clone())
                .unwrap_or_else(|| {
                    LocalAddr::Unix(format!("(not bound: {})", endpoints[i].addr).into())
                })
        })
        .collect()
}

/// Starts accepting on every listener (again, after a failed successor).
/// `alt_svc`: the UDP addresses of HTTP/3, which HTTPS responses on the
/// same addresses name.
pub(crate) fn accept(
    config: &Config,
    endpoints: &[Endpoint],
    tls: &[Tls],
    bound: &[Bound],
    alt_svc: Vec<std::net::SocketAddr>,
) -> Connections {
    let mut conns = Connections::for_settings(&config.connections());
    conns.advertise(alt_svc);
    conns.spawn_sweeper();
    for b in bound {
        endpoints[b.index].svc.launch(
            &conns,
            b.name.clone(),
            b.listener.clone(),
            tls[b.index].clone(),
        );
    }
    conns
}

/// What the handles read as the number of open connections: those of the
/// accept loops and HTTP/3's.
pub(crate) fn counter(conns: &Connections, http3: &Http3) -> Counter {
    let (tcp, http3) = (conns.counter(), http3.clone());
    Counter(Box::new(move || tcp() + http3.open()))
}
