//! TLS for QUIC, from the same certificates as the HTTPS listeners, and
//! the `Alt-Svc` header that points HTTPS clients at HTTP/3.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// The ALPN protocol of HTTP/3.
pub(crate) const ALPN_H3: &[u8] = b"h3";

/// A rustls configuration for HTTP/3 read from PEM files, exactly as
/// [`Server::register_tls`](crate::Server::register_tls) reads them (the
/// same checks, errors naming the file, and session ticket keys that
/// survive reloads, its tickets bound to `listener`), offering ALPN `h3`.
///
/// # Errors
///
/// [`Error::Tls`] naming the file at fault.
pub(crate) fn tls_config_from_pem(
    listener: &str,
    cert_pem: impl AsRef<Path>,
    key_pem: impl AsRef<Path>,
) -> Result<Arc<rustls::ServerConfig>> {
    let source = crate::tls::TlsSource::Files {
        listener: listener.to_owned(),
        cert: cert_pem.as_ref().to_path_buf(),
        key: key_pem.as_ref().to_path_buf(),
    };
    let acceptor = source.acceptor()?;
    Ok(for_h3(acceptor.config()))
}

/// `config` as HTTP/3 needs it: ALPN `h3` only, no 0-RTT (replayable
/// requests are a choice the service must make, not the server).
pub(crate) fn for_h3(config: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![ALPN_H3.to_vec()];
    config.max_early_data_size = 0;
    Arc::new(config)
}

/// quinn's server configuration over `tls`.
pub(crate) fn quinn_server_config(
    tls: Arc<rustls::ServerConfig>,
    idle_timeout: Duration,
) -> Result<quinn::ServerConfig> {
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| Error::Config {
            setting: "http3 TLS configuration",
            reason: format!("unusable for QUIC (it needs TLS 1.3 with AES-128-GCM): {e}"),
        })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    config.transport_config(Arc::new(transport));
    Ok(config)
}
