//! TLS clients for the tests: the test certificate the fixture serves
//! ([`CERT`], [`KEY`]), and client configurations that trust it, or a CA
//! of the test's own.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WantsClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ConfigBuilder, DigitallySignedStruct, RootCertStore, SignatureScheme,
    SupportedProtocolVersion,
};

/// The test certificate: self-signed, for `localhost` (PEM).
pub const CERT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../src/testdata/localhost_cert.pem"
);
/// The key of [`CERT`] (PEM).
pub const KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../src/testdata/localhost_key.pem"
);

/// What a client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly the test certificate, [`CERT`] (self-signed, which webpki
    /// will not take as a root), and no other.
    TestCert,
    /// Certificates signed by this CA.
    Ca(CertificateDer<'static>),
}

/// A client configuration with ring, speaking `versions`, that trusts
/// `trust`; the caller says whether it presents a certificate.
pub fn builder(
    trust: Trust,
    versions: &[&'static SupportedProtocolVersion],
) -> ConfigBuilder<ClientConfig, WantsClientCert> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap();
    match trust {
        Trust::TestCert => {
            let cert = CertificateDer::from_pem_file(CERT).unwrap();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
        }
        Trust::Ca(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca).unwrap();
            builder.with_root_certificates(roots)
        }
    }
}

/// A client that trusts `trust`, with rustls's default versions, no
/// certificate of its own, and the ALPN protocols `alpn` (none if empty).
pub fn client(trust: Trust, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = builder(trust, rustls::DEFAULT_VERSIONS).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Accepts the one certificate it holds, and no other.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the test certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
