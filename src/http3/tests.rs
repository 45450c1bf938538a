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

use super::cid::CID_LEN;
use super::listener::Stats;
use super::*;
use crate::ConnInfo;

const CERT: &str = include_str!("../testdata/localhost_cert.pem");
const KEY: &str = include_str!("../testdata/localhost_key.pem");

pub(super) fn server_tls() -> Arc<rustls::ServerConfig> {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, CERT).unwrap();
    std::fs::write(&key, KEY).unwrap();
    tls_config_from_pem("udp:test", &cert, &key).unwrap()
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
        Err(h3::error::StreamError::RemoteClosing { .. }) => return Outcome::NotSent,
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
    const RELOADS: u8 = 10;
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
        tokio::time::sleep(Duration::from_millis(300)).await;
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

/// Bytes that look random enough and are the same at every run.
fn junk(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A short-header packet whose connection ID names `tag` (and passes the
/// check, computed here from the documented layout), `len` bytes long.
fn forged_short(tag: u8, len: usize, seed: u32) -> Vec<u8> {
    let mut d = junk(len, seed);
    d[0] = 0x40 | (d[0] & 0x3f);
    let mut cid = [0u8; CID_LEN];
    cid[0] = tag;
    cid[1..8].copy_from_slice(&junk(7, seed + 1));
    let mut h: u32 = 0x811c_9dc5;
    for b in &cid[..8] {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    cid[8..].copy_from_slice(&h.to_be_bytes());
    d[1..1 + CID_LEN].copy_from_slice(&cid);
    d
}

/// An Initial packet header with `dcid`, padded to `len`.
fn forged_initial(dcid: &[u8], len: usize) -> Vec<u8> {
    let mut d = vec![0xc3, 0, 0, 0, 1, dcid.len() as u8];
    d.extend_from_slice(dcid);
    d.push(8);
    d.extend_from_slice(&[7; 8]);
    let mut rest = junk(len.saturating_sub(d.len()), 99);
    d.append(&mut rest);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_and_forged_datagrams_are_dropped_and_counted_while_clients_are_served() {
    let socket = shared_socket();
    let addr = socket.local_addr().unwrap();
    let a = serve_generation(&socket, 10);

    // A client on A before the reload, one that comes after, both busy.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let early = tokio::spawn(load_client(addr, stop.clone(), tally.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mine, theirs) = socket_pair().unwrap();
    a.attach_successor(mine).unwrap();
    let b = serve_generation(&socket, 11);
    b.attach_predecessor(theirs).unwrap();
    a.begin_drain();
    let late = tokio::spawn(load_client(addr, stop.clone(), tally.clone()));
    // A pretend successor of B, to write junk into B's pair.
    let (b_end, fake_successor) = socket_pair().unwrap();
    b.attach_successor(b_end).unwrap();

    let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut malformed = 0u64;
    let mut unknown = 0u64;
    let send = |d: &[u8]| {
        raw.send_to(d, addr).unwrap();
    };
    for round in 0..20u32 {
        // Junk of every size, from nothing to the largest UDP datagram.
        for (i, len) in [0, 1, 5, 13, 32, 33, 200, 1200, 1500, 9000, 65_507]
            .into_iter()
            .enumerate()
        {
            let mut d = junk(len, round * 100 + i as u32);
            if let Some(b) = d.first_mut() {
                *b &= 0x7f; // short header: no long header's lengths to trip on
            }
            send(&d);
            malformed += 1;
        }
        // Truncated: a short header of B's cut before its CID ends, a long
        // header cut inside its connection ID.
        send(&forged_short(11, 40, round)[..10]);
        send(&forged_initial(&[1; 8], 1200)[..9]);
        malformed += 2;
        // Generations that are gone or never were.
        for tag in [9, 12, 200] {
            send(&forged_short(tag, 60, round + u32::from(tag)));
            unknown += 1;
        }
        // A's tag: passed to A, whose quinn finds no such connection.
        send(&forged_short(10, 60, round));
        send(&forged_short(10, 65_507, round));
        // Initials: with a random ID (a new connection to B, which cannot
        // decrypt it), with A's ID (passed to A), huge.
        send(&forged_initial(&junk(8, round), 1200));
        send(&forged_initial(
            &forged_short(10, 40, round)[1..1 + CID_LEN],
            1200,
        ));
        send(&forged_initial(&junk(20, round), 65_507));

        // Junk on the pair, as if from B's successor.
        for msg in [
            vec![],
            vec![1],
            vec![2, 1, 0],
            vec![1, 9, 0],
            vec![1, 1, 0, 0],
            vec![1, 2, 5, 1],
            vec![1, 3, 30, 1, 2],
        ] {
            fake_successor.send(&msg).unwrap();
            malformed += 1;
        }
        // Well-formed messages with forged datagrams: for B (its quinn
        // drops it), for A (passed back to A), for a generation unknown.
        let from = super::wire::Forwarded {
            peer: raw.local_addr().unwrap(),
            dst_ip: None,
            ecn: None,
        };
        for tag in [11, 10, 77] {
            let mut msg = Vec::new();
            super::wire::datagram(&mut msg, &from, &forged_short(tag, 80, round));
            fake_successor.send(&msg).unwrap();
        }
        unknown += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in [early, late] {
        tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .unwrap()
            .unwrap();
    }

    let (sa, sb) = (a.stats(), b.stats());
    eprintln!("A: {sa:?}\nB: {sb:?}");
    eprintln!(
        "clients: {} ok, {} retried after GOAWAY, failures {:?}",
        tally.ok.load(Ordering::Relaxed),
        tally.not_sent.load(Ordering::Relaxed),
        tally.failures.lock().unwrap()
    );
    assert!(tally.failures.lock().unwrap().is_empty());
    assert!(tally.ok.load(Ordering::Relaxed) > 100);
    assert!(
        sb.dropped_malformed >= malformed,
        "{sb:?}, sent {malformed}"
    );
    assert!(
        sb.dropped_unknown_generation >= unknown,
        "{sb:?}, sent {unknown}"
    );
    // A got what names it, and nothing more came back: from the shared
    // socket (2 short, 1 Initial per round) and from the pretend
    // successor (1 per round), at least.
    assert!(sb.forwarded_to_predecessor >= 4 * 20, "{sb:?}");
    assert!(sa.received_forwarded >= 4 * 20, "{sa:?}");
    assert_eq!(
        sa.forwarded_to_predecessor + sa.forwarded_to_successor,
        0,
        "{sa:?}"
    );
    // Nothing was ever sent back to where it came from: B's pretend
    // successor got routes and claims, never a datagram.
    fake_successor.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 70_000];
    while let Ok(n) = fake_successor.recv(&mut buf) {
        assert!(
            !matches!(
                super::wire::parse(&buf[..n]),
                Some(super::wire::Message::Datagram(..))
            ),
            "a datagram went back to the successor"
        );
    }
    // A still drains, B still serves.
    tokio::time::timeout(Duration::from_secs(10), a.drained())
        .await
        .unwrap();
    let endpoint = client_endpoint();
    let mut send = connect(&endpoint, addr).await.unwrap();
    assert!(matches!(request(&mut send, "GET", "/", b"").await, Outcome::Ok(b) if b == "g11 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_value_serves_http1_and_http3_and_handlers_see_their_connection() {
    let svc = service(3);
    // HTTP/1 through endless's own server, the same value wrapped.
    let server = crate::Server::new()
        .stop_timeout(Duration::from_secs(2))
        .register("127.0.0.1:0", WithRequestBody::new(svc.clone()));
    let handle = server.handle();
    let serving = tokio::spawn(server.run());
    let tcp = handle.listening().await.unwrap()[0].to_string();
    let h1 = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(tcp).unwrap();
        c.write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        reply
    })
    .await
    .unwrap();
    assert!(
        h1.starts_with("HTTP/1.1 200") && h1.ends_with("g3 3"),
        "{h1}"
    );
    handle.stop();
    serving.await.unwrap().unwrap();

    let socket = shared_socket();
    let h3 = Http3Listener::builder()
        .tag(3)
        .name("udp-test")
        .serve(socket.try_clone().unwrap(), server_tls(), svc)
        .unwrap();
    let endpoint = client_endpoint();
    let mut send = connect(&endpoint, h3.local_addr()).await.unwrap();
    let body = vec![7u8; 100_000];
    match request(&mut send, "POST", "/", &body).await {
        Outcome::Ok(b) => assert_eq!(b, "g3 100000"),
        other => panic!("{other:?}"),
    }
    match request(&mut send, "GET", "/who", b"").await {
        Outcome::Ok(b) => assert_eq!(
            b,
            format!(
                "{} Some(\"localhost\") Some(\"h3\") udp-test",
                endpoint.local_addr().unwrap()
            )
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_without_successor_serves_open_connections_refuses_new_ones_and_drains() {
    let socket = shared_socket();
    let addr = socket.local_addr().unwrap();
    let gen = serve_generation(&socket, 1);
    let endpoint = client_endpoint();
    let mut send = connect(&endpoint, addr).await.unwrap();
    let mut slow_send = connect(&endpoint, addr).await.unwrap();
    let slow = tokio::spawn(async move { request(&mut slow_send, "GET", "/slow", b"").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    gen.begin_drain();
    // The open connection that has carried no request yet may still send
    // one (it may be on its way), and is then told to go away; the one in
    // a request ends with it; a new one is refused.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = request(&mut send, "GET", "/", b"").await;
    assert!(matches!(first, Outcome::Ok(_)), "{first:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = request(&mut send, "GET", "/", b"").await;
    assert!(matches!(second, Outcome::NotSent), "{second:?}");
    let refused = connect(&client_endpoint(), addr).await;
    assert!(refused.is_err(), "a new connection while stopping");
    match slow.await.unwrap() {
        Outcome::Ok(b) => assert_eq!(b, "g1 0"),
        other => panic!("{other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(5), gen.drained())
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(2500));
    assert_eq!(gen.stats().connections_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_ends_a_drain_at_once() {
    let socket = shared_socket();
    let addr = socket.local_addr().unwrap();
    let gen = serve_generation(&socket, 1);
    let endpoint = client_endpoint();
    let mut send = connect(&endpoint, addr).await.unwrap();
    let slow = tokio::spawn(async move { request(&mut send, "GET", "/slow", b"").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gen.begin_drain();
    let t = Instant::now();
    gen.cut_off();
    tokio::time::timeout(Duration::from_secs(1), gen.drained())
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(matches!(slow.await.unwrap(), Outcome::Failed(_)));
}

/// A drain cut at its deadline, then a successor that fails after all (a
/// probation longer than the stop timeout, or a failed `keep_pid`
/// re-exec): the generation serves HTTP/3 again. (The cut used to close
/// the endpoint, and every new connection was refused from then on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_cut_off_and_resumed_serves_again() {
    let socket = shared_socket();
    let addr = socket.local_addr().unwrap();
    let gen = serve_generation(&socket, 1);
    let endpoint = client_endpoint();
    let mut send = connect(&endpoint, addr).await.unwrap();
    let slow = tokio::spawn(async move { request(&mut send, "GET", "/slow", b"").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gen.begin_drain();
    gen.cut_off();
    assert!(matches!(slow.await.unwrap(), Outcome::Failed(_)));
    gen.resume();
    let mut again = connect(&client_endpoint(), addr)
        .await
        .expect("a new connection after the resume");
    match request(&mut again, "GET", "/", b"").await {
        Outcome::Ok(body) => assert_eq!(body, "g1 0"),
        other => panic!("served again: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_dies_at_start_costs_nothing() {
    const CLIENTS: usize = 4;
    let socket = shared_socket();
    let addr = socket.local_addr().unwrap();
    let gen = serve_generation(&socket, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(load_client(addr, stop.clone(), tally.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..5 {
        let (mine, theirs) = socket_pair().unwrap();
        gen.attach_successor(mine).unwrap();
        if round % 2 == 0 {
            // It started, read its end, and crashed: its end closes.
            let dead = serve_generation(&socket, 2);
            dead.attach_predecessor(theirs).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(dead);
        } else {
            // It never got as far as the pair; the parent notices.
            drop(theirs);
            tokio::time::sleep(Duration::from_millis(50)).await;
            gen.detach_successor();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .unwrap()
            .unwrap();
    }
    let failures = tally.failures.lock().unwrap().clone();
    eprintln!(
        "{} ok, failures {failures:?}, {:?}",
        tally.ok.load(Ordering::Relaxed),
        gen.stats()
    );
    assert!(failures.is_empty());
    assert_eq!(tally.reconnects.load(Ordering::Relaxed), CLIENTS as u64);
}

/// An axum `Router`, unchanged, over HTTP/1 (endless's server) and HTTP/3:
/// `TowerToHyperService` is generic over the request body.
#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_serves_http1_and_http3_unchanged() {
    use axum::routing::post;
    let router = axum::Router::new().route(
        "/echo",
        post(|body: Bytes| async move { format!("{} bytes", body.len()) }),
    );
    let svc = crate::TowerToHyperService::new(router);
    let server = crate::Server::new()
        .stop_timeout(Duration::from_secs(2))
        .register("127.0.0.1:0", svc.clone());
    let handle = server.handle();
    let serving = tokio::spawn(server.run());
    let tcp = handle.listening().await.unwrap()[0].to_string();
    let h1 = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(tcp).unwrap();
        c.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
        )
        .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        reply
    })
    .await
    .unwrap();
    assert!(h1.ends_with("4 bytes"), "{h1}");
    handle.stop();
    serving.await.unwrap().unwrap();

    let socket = shared_socket();
    let h3 = Http3Listener::builder()
        .serve(socket.try_clone().unwrap(), server_tls(), svc)
        .unwrap();
    let endpoint = client_endpoint();
    let mut send = connect(&endpoint, h3.local_addr()).await.unwrap();
    match request(&mut send, "POST", "/echo", &[1; 5000]).await {
        Outcome::Ok(b) => assert_eq!(b, "5000 bytes"),
        other => panic!("{other:?}"),
    }
}
