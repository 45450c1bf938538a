//! HTTPS: rustls configuration, loaded at the start of each generation, and
//! handshakes, which run in each connection's own task.
//!
//! Because a new generation reads the certificate and key files when it
//! starts, replacing the files and reloading rotates the certificate; and
//! because a generation that cannot load them exits before it is ready, a bad
//! file on reload leaves the old generation serving with the old certificate.
//!
//! Session tickets are encrypted with keys that survive reloads (`tickets`),
//! so a client that resumed before a reload resumes after it, on the same
//! listener and while its configuration is the same (for files, the same
//! certificate chain): a ticket is bound to both, so a session is never
//! resumed where its handshake would not have passed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::ServerConfig;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::error::{Error, Result};

/// A listener's TLS acceptor.
pub(crate) type Acceptor = TlsAcceptor;

/// Where a listener's TLS configuration comes from, and the listener's
/// registered address (its tickets are good there only).
#[derive(Debug, Clone)]
pub(crate) enum TlsSource {
    /// PEM files, read at the start of every generation.
    Files {
        listener: String,
        cert: PathBuf,
        key: PathBuf,
    },
    /// A configuration built by the user.
    Config {
        listener: String,
        config: Arc<ServerConfig>,
    },
}

impl TlsSource {
    /// Loads the configuration for this generation, its session tickets
    /// bound to its listener (a copy of the user's configuration, whose
    /// other parts it shares).
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor> {
        let (listener, mut config) = match self {
            TlsSource::Files {
                listener,
                cert,
                key,
            } => (listener, load_files(cert, key)?),
            TlsSource::Config { listener, config } => (listener, ServerConfig::clone(config)),
        };
        config.ticketer = crate::tickets::for_listener(config.ticketer.clone(), listener);
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn tls_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Tls {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn pem_error(path: &Path, what: &str, e: pem::Error) -> Error {
    match e {
        pem::Error::Io(e) => tls_error(path, format!("cannot read: {e}")),
        pem::Error::NoItemsFound => tls_error(path, format!("no {what} found (expected PEM)")),
        e => tls_error(path, format!("malformed PEM: {e}")),
    }
}

/// Reads a PEM certificate chain and private key into a server
/// configuration offering HTTP/2 and HTTP/1.1.
fn load_files(cert: &Path, key: &Path) -> Result<ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, "certificate", e))?;
    if chain.is_empty() {
        return Err(tls_error(cert, "no certificate found (expected PEM)"));
    }
    // Parse the end-entity certificate ourselves first: rustls checks it
    // only while matching it against the key, and its error would then read
    // as if the key were at fault.
    rustls::server::ParsedCertificate::try_from(&chain[0])
        .map_err(|e| tls_error(cert, format!("not a valid certificate: {e}")))?;
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, "private key", e))?;
    let chain_ders = chain.clone();
    // The provider is named rather than taken from the process default, which
    // is ambiguous (and panics) when another crate enables a second one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(cert, format!("no usable protocol version: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => tls_error(
                key,
                format!(
                    "private key does not match the certificate in {}",
                    cert.display()
                ),
            ),
            // Not expected after the check above, but a certificate error is
            // the certificate's whatever rustls version reports it.
            e @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
                tls_error(cert, format!("not a valid certificate: {e}"))
            }
            e => tls_error(key, format!("unusable private key: {e}")),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Stateless tickets (TLS 1.3 and 1.2) with keys the next generation
    // inherits, so clients resume their sessions across reloads; without
    // it each generation would make its own keys. Bound to this
    // certificate chain (and no client authentication): new certificates
    // mean full handshakes.
    let mut identity: Vec<&[u8]> = vec![b"files, no client authentication"];
    identity.extend(chain_ders.iter().map(|c| c.as_ref()));
    if let Some(ticketer) = crate::tickets::bound(crate::tickets::scope(&identity)) {
        config.ticketer = ticketer;
    }
    Ok(config)
}

/// Runs a server handshake with a deadline. A failed or timed-out handshake
/// costs nothing but a debug line.
pub(crate) async fn handshake<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    timeout: Duration,
) -> Option<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            debug!(cause = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(?timeout, "TLS handshake timed out");
            None
        }
    }
}

/// `info` with what the handshake of `stream` settled.
pub(crate) fn attach_info<IO>(
    info: &crate::conn_info::ConnInfo,
    stream: &TlsStream<IO>,
) -> crate::conn_info::ConnInfo {
    let conn = stream.get_ref().1;
    info.with_tls(crate::conn_info::TlsInfo {
        server_name: conn.server_name().map(str::to_owned),
        alpn_protocol: conn.alpn_protocol().map(<[u8]>::to_vec),
        peer_certificates: conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default(),
    })
}

/// The TLS session ticket keys to hand to the next generation.
pub(crate) fn ticket_keys_state() -> Option<Vec<u8>> {
    crate::tickets::state()
}

#[cfg(test)]
mod tests {
    use super::*;

    // See testdata/README.md.
    const CERT: &str = include_str!("testdata/localhost_cert.pem");
    const KEY: &str = include_str!("testdata/localhost_key.pem");
    const OTHER_KEY: &str = include_str!("testdata/other_key.pem");

    fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    #[test]
    fn good_files_load_with_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "cert.pem", CERT);
        let key = write(dir.path(), "key.pem", KEY);
        let config = load_files(&cert, &key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "cert.pem", CERT);
        let key = write(dir.path(), "key.pem", KEY);
        let other_key = write(dir.path(), "other.pem", OTHER_KEY);
        let garbage = write(
            dir.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n",
        );
        let empty = write(dir.path(), "empty.pem", "");
        let missing = dir.path().join("missing.pem");
        let d = dir.path().display();
        let err = |c: &Path, k: &Path| load_files(c, k).unwrap_err().to_string();

        assert_eq!(
            err(&missing, &key),
            format!(
                "TLS file {d}/missing.pem: cannot read: No such file or directory (os error 2)"
            )
        );
        assert_eq!(
            err(&cert, &missing),
            format!(
                "TLS file {d}/missing.pem: cannot read: No such file or directory (os error 2)"
            )
        );
        assert!(
            err(&garbage, &key).starts_with(&format!("TLS file {d}/garbage.pem: malformed PEM: "))
        );
        assert_eq!(
            err(&empty, &key),
            format!("TLS file {d}/empty.pem: no certificate found (expected PEM)")
        );
        assert_eq!(
            err(&cert, &empty),
            format!("TLS file {d}/empty.pem: no private key found (expected PEM)")
        );
        // A certificate where the key should be: no key in it.
        assert_eq!(
            err(&cert, &cert),
            format!("TLS file {d}/cert.pem: no private key found (expected PEM)")
        );
        assert_eq!(
            err(&cert, &other_key),
            format!("TLS file {d}/other.pem: private key does not match the certificate in {d}/cert.pem")
        );
        assert!(err(dir.path(), &key).starts_with(&format!("TLS file {d}: cannot read: ")));
    }

    #[test]
    fn a_certificate_with_bad_contents_is_blamed_on_the_certificate_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = write(dir.path(), "key.pem", KEY);
        // Valid PEM and base64, but the DER inside is no certificate.
        let bad = write(
            dir.path(),
            "bad-der.pem",
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        let d = dir.path().display();
        let err = load_files(&bad, &key).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "TLS file {d}/bad-der.pem: not a valid certificate: "
            )),
            "{err}"
        );
        // And a key with the same kind of garbage is the key's problem.
        let cert = write(dir.path(), "cert.pem", CERT);
        let bad_key = write(
            dir.path(),
            "bad-key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
        );
        let err = load_files(&cert, &bad_key).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("TLS file {d}/bad-key.pem: unusable private key: ")),
            "{err}"
        );
    }
}
