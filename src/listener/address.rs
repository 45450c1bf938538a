//! Registration addresses: parsed without a system call when the server is
//! checked, resolved (off the runtime, with a timeout) only when a socket is
//! bound or looked for.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// How long a host name may take to resolve before the server refuses to
/// start: a resolver that never answers must not hang a start or a reload.
pub(crate) const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed registration address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BindSpec {
    /// A literal socket address: one socket.
    Addr(SocketAddr),
    /// `:port`, every interface: one dual-stack IPv6 socket, or an IPv4 one
    /// on a host without IPv6.
    AnyInterface(u16),
    /// A host name: one socket on every address it resolves to.
    Host(String, u16),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// A Unix stream socket in Linux's abstract namespace (`unix:@name`):
    /// no file, so nothing to remove, and no permissions to set.
    UnixAbstract(String),
    /// A listener the program makes itself (`Server::register_listener`),
    /// found by its name only: where it is bound is known once it is made.
    Given,
}

/// Parses `"127.0.0.1:8080"`, `"[::1]:8080"`, `"localhost:8080"`,
/// `":8080"` (every interface, as in Go), `"unix:/path/to.sock"` or, on
/// Linux, `"unix:@name"` (an abstract socket).
pub(crate) fn parse(addr: &str) -> Result<BindSpec> {
    let invalid = |reason: String| Error::Address {
        addr: addr.to_owned(),
        reason,
    };
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| invalid(format!("{p:?} is not a port number from 0 to 65535")))
    };
    if let Some(path) = addr.strip_prefix("unix:") {
        if !cfg!(unix) {
            return Err(invalid(
                "Unix socket addresses (unix:/path) need Unix; serve on a TCP address here"
                    .to_owned(),
            ));
        }
        if let Some(name) = path.strip_prefix('@') {
            if !cfg!(any(target_os = "linux", target_os = "android")) {
                return Err(invalid(
                    "abstract Unix socket addresses (unix:@name) exist only on Linux".to_owned(),
                ));
            }
            if name.is_empty() {
                return Err(invalid("expected unix:@name".to_owned()));
            }
            return Ok(BindSpec::UnixAbstract(name.to_owned()));
        }
        if path.is_empty() {
            return Err(invalid("expected unix:/path/to.sock".to_owned()));
        }
        return Ok(BindSpec::Unix(PathBuf::from(path)));
    }
    if let Some(p) = addr.strip_prefix(':') {
        return Ok(BindSpec::AnyInterface(port(p)?));
    }
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(BindSpec::Addr(sa));
    }
    match addr.rsplit_once(':') {
        Some((host, p)) if !host.is_empty() => Ok(BindSpec::Host(host.to_owned(), port(p)?)),
        _ => Err(invalid(
            "expected host:port, [ipv6]:port or :port".to_owned(),
        )),
    }
}

/// The TCP addresses a spec stands for, in order; `None` for a Unix socket
/// (or a listener the program makes).
/// A host name is resolved here, off the runtime and within
/// [`RESOLVE_TIMEOUT`]; `name` is the registered address, for errors.
pub(crate) async fn tcp_addrs(name: &str, spec: &BindSpec) -> Result<Option<Vec<SocketAddr>>> {
    Ok(Some(match spec {
        BindSpec::Unix(_) | BindSpec::UnixAbstract(_) | BindSpec::Given => return Ok(None),
        BindSpec::Addr(a) => vec![*a],
        // Dual-stack first; only a host without IPv6 falls back to IPv4.
        BindSpec::AnyInterface(port) => vec![
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, *port)),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port)),
        ],
        BindSpec::Host(host, port) => {
            resolve(
                name,
                tokio::net::lookup_host((host.as_str(), *port)),
                RESOLVE_TIMEOUT,
            )
            .await?
        }
    }))
}

/// Awaits `lookup` (tokio runs `getaddrinfo` on its blocking pool) for at
/// most `timeout`; the addresses come back without duplicates, in order.
async fn resolve<I>(
    name: &str,
    lookup: impl std::future::Future<Output = io::Result<I>>,
    timeout: Duration,
) -> Result<Vec<SocketAddr>>
where
    I: Iterator<Item = SocketAddr>,
{
    let invalid = |reason: String| Error::Address {
        addr: name.to_owned(),
        reason,
    };
    let found = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(|_| invalid(format!("cannot resolve: no answer within {timeout:?}")))?
        .map_err(|e| invalid(format!("cannot resolve: {e}")))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in found {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(invalid("resolves to no address".to_owned()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_the_usual_forms_without_resolving() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            parse("127.0.0.1:8080").unwrap(),
            BindSpec::Addr(sa("127.0.0.1:8080"))
        );
        assert_eq!(parse("[::1]:0").unwrap(), BindSpec::Addr(sa("[::1]:0")));
        assert_eq!(parse(":9000").unwrap(), BindSpec::AnyInterface(9000));
        assert_eq!(
            parse("localhost:80").unwrap(),
            BindSpec::Host("localhost".into(), 80)
        );
        // Not resolved yet: a name that does not exist parses.
        assert_eq!(
            parse("no such host.invalid:80").unwrap(),
            BindSpec::Host("no such host.invalid".into(), 80)
        );
        assert!(
            matches!(parse("unix:/run/app.sock").unwrap(), BindSpec::Unix(p) if p == Path::new("/run/app.sock"))
        );
        assert_eq!(
            parse("unix:@app").unwrap(),
            BindSpec::UnixAbstract("app".into())
        );
    }

    #[test]
    fn bad_addresses_name_themselves() {
        for (addr, msg) in [
            (
                ":http",
                "invalid address \":http\": \"http\" is not a port number from 0 to 65535",
            ),
            (
                ":70000",
                "invalid address \":70000\": \"70000\" is not a port number from 0 to 65535",
            ),
            (
                "127.0.0.1:99999",
                "invalid address \"127.0.0.1:99999\": \"99999\" is not a port number from 0 to 65535",
            ),
            (
                "8080",
                "invalid address \"8080\": expected host:port, [ipv6]:port or :port",
            ),
            (
                "",
                "invalid address \"\": expected host:port, [ipv6]:port or :port",
            ),
            ("unix:", "invalid address \"unix:\": expected unix:/path/to.sock"),
            ("unix:@", "invalid address \"unix:@\": expected unix:@name"),
        ] {
            assert_eq!(parse(addr).unwrap_err().to_string(), msg);
        }
    }

    #[tokio::test]
    async fn resolution_names_the_address_and_gives_every_address_once() {
        let name = "no such host.invalid:80";
        let err = tcp_addrs(name, &parse(name).unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid address \"no such host.invalid:80\": cannot resolve"),
            "{err}"
        );
        let got = tcp_addrs("localhost:80", &parse("localhost:80").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(!got.is_empty());
        assert!(got.iter().all(|a| a.ip().is_loopback() && a.port() == 80));
        let mut unique = got.clone();
        unique.dedup();
        assert_eq!(unique, got);
    }

    #[tokio::test]
    async fn a_resolver_that_never_answers_is_an_error_not_a_hang() {
        let never = std::future::pending::<io::Result<std::vec::IntoIter<SocketAddr>>>();
        let t = std::time::Instant::now();
        let err = resolve("slow.example:80", never, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(
            err.to_string(),
            "invalid address \"slow.example:80\": cannot resolve: no answer within 100ms"
        );
    }
}
