//! Scenarios, in one process: "generations" are listeners over their own
//! copies of one UDP socket, joined by socket pairs as a lifecycle joins
//! them across an exec; clients are quinn + h3, as a browser would be.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};

use super::*;
use crate::ConnInfo;

const CERT: &str = include_str!("../testdata/localhost_cert.pem");
const KEY: &str = include_str!("../testdata/localhost_key.pem");

fn server_tls() -> Arc<rustls::ServerConfig> {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, CERT).unwrap();
    std::fs::write(&key, KEY).unwrap();
    tls_config_from_pem(&cert, &key).unwrap()
}

/// Trusts any certificate: the test's own, self-signed, on 127.0.0.1.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(super) fn client_endpoint() -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// An HTTP/3 connection to `addr`, its driver running in a task.
pub(super) async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<SendRequest, String> {
    let conn = endpoint
        .connect(addr, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| format!("h3: {e}"))?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(send)
}

/// How one request ended.
#[derive(Debug)]
pub(super) enum Outcome {
    Ok(String),
    /// Refused before it was sent (the connection is going away): retry
    /// on a new connection, as clients do.
    NotSent,
    Failed(String),
}

/// Sends `method path` with `body`, reads the whole response.
pub(super) async fn request(
    send: &mut SendRequest,
    method: &str,
    path: &str,
    body: &[u8],
) -> Outcome {
    let req = Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let mut stream = match send.send_request(req).await {
        Ok(s) => s,
        Err(e) if matches!(e, h3::error::StreamError::RemoteClosing { .. }) => {
            return Outcome::NotSent
        }
        Err(e) if e.is_h3_no_error() => return Outcome::NotSent,
        Err(e) => return Outcome::Failed(format!("send: {e}")),
    };
    let result: Result<String, String> = async {
        if !body.is_empty() {
            stream
                .send_data(Bytes::copy_from_slice(body))
                .await
                .map_err(|e| format!("body: {e}"))?;
        }
        stream.finish().await.map_err(|e| format!("finish: {e}"))?;
        let resp = stream
            .recv_response()
            .await
            .map_err(|e| format!("response: {e}"))?;
        let mut out = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| format!("data: {e}"))? {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                out.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        if resp.status() != 200 {
            return Err(format!("status {}", resp.status()));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
    .await;
    match result {
        Ok(s) => Outcome::Ok(s),
        Err(e) => Outcome::Failed(e),
    }
}

/// The test service: `/slow` answers after 3 s, `/who` with its
/// connection's info, anything else with the generation and the size of
/// the request body.
fn service(tag: u8) -> impl Http3Service<Full<Bytes>> {
    service_fn(move |req: Request<RequestBody>| async move {
        let path = req.uri().path().to_owned();
        if path == "/slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        if path == "/who" {
            let info = ConnInfo::current().expect("served by endless");
            let tls = info.tls().expect("QUIC is TLS");
            let who = format!(
                "{} {:?} {:?} {}",
                info.peer_addr().unwrap(),
                tls.server_name,
                tls.alpn_protocol.as_deref().map(String::from_utf8_lossy),
                info.listener()
            );
            return Ok::<_, crate::service::BoxError>(Response::new(Full::new(Bytes::from(who))));
        }
        let body = req.into_body().collect().await?.to_bytes();
        Ok(Response::new(Full::new(Bytes::from(format!(
            "g{tag} {}",
            body.len()
        )))))
    })
}

fn serve_generation(socket: &std::net::UdpSocket, tag: u8) -> Http3Listener {
    Http3Listener::builder()
        .tag(tag)
        .name("h3-test")
        .idle_grace(Duration::from_millis(300))
        .serve(socket.try_clone().unwrap(), server_tls(), service(tag))
        .unwrap()
}

/// What the load's clients counted.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    not_sent: AtomicU64,
    reconnects: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// A client that sends requests on one connection after another until
/// `stop`, counting every outcome.
async fn load_client(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let endpoint = client_endpoint();
    let mut conn: Option<SendRequest> = None;
    while !stop.load(Ordering::Relaxed) {
        let send = match &mut conn {
            Some(s) => s,
            None => match connect(&endpoint, addr).await {
                Ok(s) => {
                    tally.reconnects.fetch_add(1, Ordering::Relaxed);
                    conn.insert(s)
                }
                Err(e) => {
                    tally.failures.lock().unwrap().push(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match request(send, "POST", "/", b"hello").await {
            Outcome::Ok(body) => {
                assert!(body.starts_with('g') && body.ends_with(" 5"), "{body}");
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::NotSent => {
                tally.not_sent.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            Outcome::Failed(e) => {
                tally.failures.lock().unwrap().push(e);
                conn = None;
            }
        }
    }
    endpoint.close(0u32.into(), b"");
}

fn shared_socket() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Retires a generation as its process would: waits for its drain, then
/// drops it (the process exits), recording how long the drain took.
fn retire(gen: Http3Listener, started: Instant, log: Arc<Mutex<Vec<(u8, Duration, Stats)>>>) {
    tokio::spawn(async move {
        let cut = tokio::time::timeout(Duration::from_secs(20), gen.drained()).await;
        assert!(cut.is_ok(), "generation {} did not drain", gen.tag());
        log.lock()
            .unwrap()
            .push((gen.tag(), started.elapsed(), gen.stats()));
        drop(gen);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_survive_a_chain_of_reloads_with_no_failed_request() {
    const CLIENTS: usize = 8;
    const RELOADS: u8 = 6;
    let socket = shared_socket();
    let addr = socket.local_addr().unwrap();
    let mut current = serve_generation(&socket, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(load_client(addr, stop.clone(), tally.clone())))
        .collect();

    // A long request, started on generation 0, must finish there.
    let long_client = client_endpoint();
    let mut long_conn = connect(&long_client, addr).await.unwrap();
    let long = tokio::spawn(async move {
        let t = Instant::now();
        let r = request(&mut long_conn, "GET", "/slow", b"").await;
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let drains = Arc::new(Mutex::new(Vec::new()));
    let mut all_stats = Vec::new();
    for tag in 1..=RELOADS {
        let (mine, theirs) = socket_pair().unwrap();
        current.attach_successor(mine).unwrap();
        let next = serve_generation(&socket, tag);
        next.attach_predecessor(theirs).unwrap();
        // The hand-over: the new generation is ready.
        current.begin_drain();
        let old = std::mem::replace(&mut current, next);
        all_stats.push(old.clone());
        retire(old, Instant::now(), drains.clone());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .unwrap()
            .unwrap();
    }
    let (long_outcome, long_took) = tokio::time::timeout(Duration::from_secs(10), long)
        .await
        .unwrap()
        .unwrap();

    // Every old generation drains, generation 0 after its long request.
    let deadline = Instant::now() + Duration::from_secs(15);
    while drains.lock().unwrap().len() < usize::from(RELOADS) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drains = drains.lock().unwrap().clone();
    let failures = tally.failures.lock().unwrap().clone();
    let stats: Vec<Stats> = all_stats.iter().map(|g| g.stats()).collect();
    eprintln!(
        "requests ok {}, not sent (GOAWAY seen, retried) {}, connections {}, failures {:?}",
        tally.ok.load(Ordering::Relaxed),
        tally.not_sent.load(Ordering::Relaxed),
        tally.reconnects.load(Ordering::Relaxed),
        failures
    );
    eprintln!("long request: {long_outcome:?} in {long_took:?}");
    for (tag, took, s) in &drains {
        eprintln!("generation {tag} drained in {took:?}: {s:?}");
    }
    for (i, s) in stats.iter().enumerate() {
        eprintln!("generation {i} now: {s:?}");
    }
    eprintln!("last generation: {:?}", current.stats());

    assert!(failures.is_empty(), "{failures:?}");
    assert!(tally.ok.load(Ordering::Relaxed) > 200);
    match long_outcome {
        Outcome::Ok(body) => assert_eq!(body, "g0 0"),
        other => panic!("the long request: {other:?}"),
    }
    assert!(long_took >= Duration::from_secs(3));
    assert_eq!(drains.len(), usize::from(RELOADS), "{drains:?}");
    // Generation 0 held its long request to the end, and the next ones
    // relayed for it.
    let (_, g0_took, _) = drains.iter().find(|d| d.0 == 0).unwrap();
    assert!(*g0_took >= Duration::from_millis(2000), "{g0_took:?}");
    assert!(stats[1].forwarded_to_predecessor > 0, "{:?}", stats[1]);
    for s in &stats {
        assert_eq!(s.connections_open, 0, "{s:?}");
        assert_eq!(s.dropped_malformed, 0, "{s:?}");
    }
    // Clients moved on: every generation got connections of its own.
    assert!(current.stats().connections_accepted > 0);
    current.begin_drain();
    tokio::time::timeout(Duration::from_secs(5), current.drained())
        .await
        .unwrap();
}
