//! HTTPS with rustls: serving, reloads under load, certificate rotation,
//! bad files. Certificates come from a CA made here with rcgen, and every
//! client verifies against it.

// The workspace's test support (testing/src); it finds the examples in
// the workspace's target directory.
use endless_tests as support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::load::{self, Mode};
use support::tls::{self, Trust};
use support::{eventually, get, served_pid, signal_pid, start_error, Spec};

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for localhost and 127.0.0.1: (cert PEM, key PEM, DER).
    fn leaf(&self) -> (String, String, CertificateDer<'static>) {
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// A client certificate (for `client.test`) signed by this CA, and its
    /// key.
    fn client_cert(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let params = CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![cert.der().clone()], key)
    }

    fn trust(&self) -> Trust {
        Trust::Ca(self.der.clone())
    }

    /// A client configuration that presents a certificate signed by this CA.
    fn client_with_cert(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let (chain, key) = self.client_cert();
        let mut config = tls::builder(self.trust(), rustls::DEFAULT_VERSIONS)
            .with_client_auth_cert(chain, key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        tls::client(self.trust(), alpn)
    }
}

/// Certificate and key files in a temporary directory.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(cert: &str, key: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let f = Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        };
        f.replace(cert, key);
        f
    }

    /// Replaces both files the way a deploy would: write aside, then rename.
    fn replace(&self, cert: &str, key: &str) {
        for (path, contents) in [(&self.cert, cert), (&self.key, key)] {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, contents).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }

    fn spec(&self) -> Spec<'static> {
        Spec::fixture().tls(&self.cert, &self.key)
    }
}

/// A blocking HTTPS connection, verified against the test CA.
struct Https {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Https {
    fn connect(addr: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<Https> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Https { stream })
    }

    fn peer_cert(&self) -> CertificateDer<'static> {
        self.stream.conn.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// Sends a keep-alive GET and reads one response with a Content-Length body.
    fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        write!(
            self.stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )?;
        self.stream.flush()?;
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            self.stream.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok((status, String::from_utf8(body).unwrap()))
    }
}

fn h1(ca: &Ca) -> Arc<rustls::ClientConfig> {
    ca.client(&[b"http/1.1"])
}

#[test]
fn https_serves_http1_and_http2_by_alpn_next_to_plain_http() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let files = Files::new(&cert, &key);
    let server = files
        .spec()
        .arg("127.0.0.1:0")
        .arg("tls:127.0.0.1:0")
        .start();
    let addrs = server.current().addrs;
    let pid = server.current().pid;

    assert_eq!(get(&addrs[0], "/").unwrap(), (200, format!("pid={pid}\n")));
    let mut https = Https::connect(&addrs[1], h1(&ca)).unwrap();
    assert_eq!(https.alpn().as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(https.get("/").unwrap(), (200, format!("pid={pid}\n")));
    assert_eq!(https.get("/").unwrap().0, 200, "keep-alive over TLS");

    let h2 = Https::connect(&addrs[1], ca.client(&[b"h2", b"http/1.1"])).unwrap();
    assert_eq!(h2.alpn().as_deref(), Some(&b"h2"[..]));
    let rt = load::runtime();
    let l = load::start_tls(
        rt.handle(),
        &addrs[1],
        Mode::Http2,
        2,
        "/",
        ca.client(&[b"h2"]),
    );
    std::thread::sleep(Duration::from_millis(300));
    let stats = l.finish();
    assert!(stats.ok > 10 && stats.failed == 0, "{stats:?}");
}

fn reload_under_https_load(mode: Mode, alpn: &[u8], reloads: usize) {
    let _heavy = support::heavy();
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let files = Files::new(&cert, &key);
    let mut server = files.spec().arg("tls:127.0.0.1:0").start();
    let addr = server.addr();
    let rt = load::runtime();
    let l = load::start_tls(rt.handle(), &addr, mode, 32, "/", ca.client(&[alpn]));
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![server.current().pid];
    for _ in 0..reloads {
        pids.push(server.reload(Signal::SIGHUP).pid);
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = l.finish();
    eprintln!(
        "HTTPS {mode:?}: {reloads} reloads, {} ok, {} failed, {} retried",
        stats.ok, stats.failed, stats.retried
    );
    assert_eq!(stats.failed, 0, "{:?}\n{}", stats.errors, server.report());
    assert!(stats.ok > 200, "{stats:?}");
    for pid in &pids[..pids.len() - 1] {
        server.assert_exited_0(*pid, Duration::from_secs(15));
    }
    assert_eq!(server.alive(), vec![*pids.last().unwrap()]);
}

#[test]
fn reload_under_https_keep_alive_load_loses_nothing() {
    reload_under_https_load(Mode::KeepAlive, b"http/1.1", 20);
}

#[test]
fn reload_under_https_http2_load_loses_nothing() {
    reload_under_https_load(Mode::Http2, b"h2", 10);
}

#[test]
fn replacing_the_files_and_reloading_rotates_the_certificate() {
    let ca = Ca::new();
    let (cert_a, key_a, der_a) = ca.leaf();
    let (cert_b, key_b, der_b) = ca.leaf();
    let files = Files::new(&cert_a, &key_a);
    let server = files.spec().arg("tls:127.0.0.1:0").start();
    let addr = server.addr();
    let old = server.current().pid;

    let mut open = Https::connect(&addr, h1(&ca)).unwrap();
    assert_eq!(open.peer_cert(), der_a);
    assert_eq!(open.get("/").unwrap(), (200, format!("pid={old}\n")));

    files.replace(&cert_b, &key_b);
    let new = server.reload(Signal::SIGUSR1);

    // A new client sees the new certificate once the new generation answers.
    let c = eventually("the new generation answers", Duration::from_secs(5), || {
        let mut c = Https::connect(&addr, h1(&ca)).unwrap();
        let (_, body) = c.get("/").unwrap();
        (served_pid(&body) == new.pid).then_some(c)
    });
    assert_eq!(
        c.peer_cert(),
        der_b,
        "the new generation serves the new certificate"
    );
    // The connection that was already open keeps its session and is served …
    assert_eq!(open.get("/").unwrap(), (200, format!("pid={old}\n")));
    assert_eq!(open.peer_cert(), der_a);
    // … then closed by the drain with a TLS close_notify: rustls reports a
    // clean end (Ok(0)), not an unexpected EOF.
    let mut rest = Vec::new();
    assert_eq!(open.stream.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn bad_certificate_files_stop_the_start_with_the_file_named() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let (_, other_key, _) = ca.leaf();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, contents: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p
    };
    let cert = write("cert.pem", &cert);
    let key = write("key.pem", &key);
    let other_key = write("other-key.pem", &other_key);
    let garbage = write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
    );
    let missing = dir.path().join("missing.pem");
    let d = dir.path().display().to_string();
    let start = |c: &Path, k: &Path| start_error(Spec::fixture().arg("tls:127.0.0.1:0").tls(c, k));
    assert_eq!(
        start(&missing, &key),
        format!("TLS file {d}/missing.pem: cannot read: No such file or directory (os error 2)")
    );
    assert_eq!(
        start(&cert, &missing),
        format!("TLS file {d}/missing.pem: cannot read: No such file or directory (os error 2)")
    );
    assert_eq!(
        start(dir.path(), &key),
        format!("TLS file {d}: cannot read: Is a directory (os error 21)")
    );
    assert!(
        start(&garbage, &key).starts_with(&format!("TLS file {d}/garbage.pem: malformed PEM: "))
    );
    assert_eq!(
        start(&cert, &cert),
        format!("TLS file {d}/cert.pem: no private key found (expected PEM)")
    );
    assert_eq!(
        start(&cert, &other_key),
        format!("TLS file {d}/other-key.pem: private key does not match the certificate in {d}/cert.pem")
    );
}

#[test]
fn a_bad_certificate_on_reload_leaves_the_old_generation_serving() {
    let ca = Ca::new();
    let (cert, key, der) = ca.leaf();
    let files = Files::new(&cert, &key);
    let server = files.spec().arg("tls:127.0.0.1:0").start();
    let addr = server.addr();
    let old = server.current().pid;

    files.replace("not a certificate", &key);
    signal_pid(old, Signal::SIGHUP);
    server.wait_log(
        "new generation exited before it was ready; still serving",
        Duration::from_secs(10),
    );
    let error = server
        .wait_line(Duration::from_secs(5), |l| l.starts_with("ERROR"))
        .unwrap();
    assert!(
        error.ends_with("cert.pem: no certificate found (expected PEM)"),
        "{error}"
    );

    let mut c = Https::connect(&addr, h1(&ca)).unwrap();
    assert_eq!(c.peer_cert(), der, "still the old certificate");
    assert_eq!(c.get("/").unwrap(), (200, format!("pid={old}\n")));
}

#[test]
fn a_silent_or_broken_client_delays_nobody() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let files = Files::new(&cert, &key);
    let server = files
        .spec()
        .arg("tls:127.0.0.1:0")
        .tls_handshake_timeout(Duration::from_millis(500))
        .start();
    let addr = server.addr();
    let mut silent = TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut broken = TcpStream::connect(&addr).unwrap();
    broken.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();

    // Others are served at once.
    let t = Instant::now();
    for _ in 0..5 {
        let mut c = Https::connect(&addr, h1(&ca)).unwrap();
        assert_eq!(c.get("/").unwrap().0, 200);
    }
    assert!(
        t.elapsed() < Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );

    // The silent client is dropped at the handshake timeout.
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    server.wait_log("TLS handshake failed", Duration::from_secs(5));
    server.wait_log("TLS handshake timed out", Duration::from_secs(5));
}

#[test]
fn the_tls_example_serves_https_and_rotates_on_reload() {
    let ca = Ca::new();
    let (cert_a, key_a, der_a) = ca.leaf();
    let (cert_b, key_b, der_b) = ca.leaf();
    let files = Files::new(&cert_a, &key_a);
    let mut p = Spec::fixture()
        .bin(support::example("tls"))
        .arg("127.0.0.1:0")
        .arg(files.cert.to_str().unwrap())
        .arg(files.key.to_str().unwrap())
        .spawn();
    let first = p.first_pid();
    let addr = p.listening_addr(0);
    let mut c = Https::connect(&addr, h1(&ca)).unwrap();
    assert_eq!(c.peer_cert(), der_a);
    assert!(c
        .get("/")
        .unwrap()
        .1
        .starts_with("Hello over HTTP/1.1 from pid"));

    files.replace(&cert_b, &key_b);
    signal_pid(first, Signal::SIGUSR1);
    p.wait_exit(first, Duration::from_secs(25))
        .expect("old generation exits");
    let c = Https::connect(&addr, h1(&ca)).unwrap();
    assert_eq!(c.peer_cert(), der_b);
}

#[test]
fn a_client_stuck_in_its_tls_handshake_does_not_hold_up_a_drain() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let files = Files::new(&cert, &key);
    let mut server = files
        .spec()
        .arg("tls:127.0.0.1:0")
        .tls_handshake_timeout(Duration::from_secs(30))
        .header_read_timeout(Duration::from_secs(30))
        .stop_timeout(Duration::from_secs(20))
        .start();
    let addr = server.addr();
    let old = server.current().pid;
    // One client sends nothing; another half a ClientHello (a handshake
    // record announcing 512 bytes, then four of them).
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .unwrap();
    // Both are the old generation's once it has answered a later client.
    let mut c = Https::connect(&addr, h1(&ca)).unwrap();
    assert_eq!(c.get("/").unwrap(), (200, format!("pid={old}\n")));
    drop(c);

    let t = Instant::now();
    let new = server.reload(Signal::SIGHUP);
    server.assert_exited_0(old, Duration::from_secs(8));
    let took = t.elapsed();
    // The idle grace (1 s) after the drain started, and some slack; not the
    // handshake timeout (30 s) nor the stop timeout (20 s).
    assert!(
        took < Duration::from_secs(4),
        "old generation took {took:?}"
    );
    for s in [&mut silent, &mut half] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let mut c = Https::connect(&addr, h1(&ca)).unwrap();
    assert_eq!(c.get("/").unwrap(), (200, format!("pid={}\n", new.pid)));
}

/// Over TLS a handler sees the SNI name, the protocol ALPN settled on and
/// the client's certificate chain (client authentication through
/// `register_tls_config`), besides the addresses; across a reload too.
#[test]
fn handlers_see_the_tls_connection_they_serve() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let files = Files::new(&cert, &key);
    let ca_file = files.cert.with_file_name("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let server = files
        .spec()
        .tls_client_ca(&ca_file)
        .arg("tls:127.0.0.1:0")
        .start();
    let addr = server.addr();
    for round in 0..2 {
        let mut with_cert = Https::connect(&addr, ca.client_with_cert(&[b"http/1.1"])).unwrap();
        let me = with_cert.stream.sock.local_addr().unwrap();
        let (status, body) = with_cert.get("/conninfo").unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            body,
            format!(
                "listener=127.0.0.1:0 local={addr} peer={me} creds=- sni=localhost alpn=http/1.1 certs=1\n"
            ),
            "round {round}"
        );
        let mut without = Https::connect(&addr, h1(&ca)).unwrap();
        let (_, body) = without.get("/conninfo").unwrap();
        assert!(
            body.ends_with(" sni=localhost alpn=http/1.1 certs=0\n"),
            "{body}"
        );
        if round == 0 {
            let pid = server.reload(Signal::SIGHUP).pid;
            support::wait_served_by_tls(&addr, pid, |a| {
                Https::connect(a, h1(&ca)).and_then(|mut c| c.get("/"))
            });
        }
    }
}

/// One connection and one request (so that the TLS 1.3 tickets sent after
/// the handshake arrive): how its handshake went, and which PID answered.
fn connect_once(addr: &str, config: &Arc<rustls::ClientConfig>) -> (rustls::HandshakeKind, u32) {
    let mut https = Https::connect(addr, config.clone()).unwrap();
    let kind = https.stream.conn.handshake_kind().unwrap();
    let (status, body) = https.get("/").unwrap();
    assert_eq!(status, 200, "{body}");
    (kind, served_pid(&body))
}

#[test]
fn tls_sessions_resume_across_reloads() {
    const RELOADS: usize = 10;
    const CONNECTIONS: usize = 20;
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let files = Files::new(&cert, &key);
    let mut server = files.spec().arg("tls:127.0.0.1:0").start();
    let addr = server.addr();
    let versions = [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ];
    let clients: Vec<_> = versions
        .iter()
        .map(|(name, v)| (*name, resuming(&ca, v, None)))
        .collect();
    for (name, client) in &clients {
        assert_eq!(
            connect_once(&addr, client).0,
            rustls::HandshakeKind::Full,
            "{name}: first contact"
        );
        assert_eq!(
            connect_once(&addr, client).0,
            rustls::HandshakeKind::Resumed,
            "{name}: same generation"
        );
    }
    // Per client: connections resumed, and first connections after a
    // reload resumed (the ones that need the previous generation's keys).
    let mut resumed = vec![0usize; clients.len()];
    let mut first_resumed = vec![0usize; clients.len()];
    for reload in 1..=RELOADS {
        let old = server.current().pid;
        let ready = server.reload(Signal::SIGHUP);
        // With a client of its own, which keeps no sessions.
        let fresh = h1(&ca);
        support::wait_served_by_tls(&addr, ready.pid, |a| {
            Https::connect(a, fresh.clone())?.get("/")
        });
        // Only the new generation answers from here on (the old one may
        // still have taken a queued connection or two).
        server.assert_exited_0(old, Duration::from_secs(10));
        for (i, (name, client)) in clients.iter().enumerate() {
            for c in 0..CONNECTIONS {
                let (kind, pid) = connect_once(&addr, client);
                assert_eq!(pid, ready.pid, "{name}: reload {reload}, connection {c}");
                if kind == rustls::HandshakeKind::Resumed {
                    resumed[i] += 1;
                    first_resumed[i] += usize::from(c == 0);
                } else if c == 0 {
                    eprintln!(
                        "{name}: reload {reload}: the first connection did a {kind:?} handshake"
                    );
                }
            }
        }
    }
    for ((name, _), resumed) in clients.iter().zip(&resumed) {
        let total = RELOADS * CONNECTIONS;
        eprintln!(
            "{name}: {resumed} of {total} connections resumed across {RELOADS} reloads ({:.1} %)",
            100.0 * *resumed as f64 / total as f64
        );
        assert_eq!(
            *resumed, total,
            "{name}: every connection after a reload resumes"
        );
    }
}

/// A client that trusts `ca`, speaks only `version` and keeps its
/// sessions (rustls's default in-memory store, shared by every connection
/// made with it), with a certificate from `cert_from` or none.
fn resuming(
    ca: &Ca,
    version: &'static rustls::SupportedProtocolVersion,
    cert_from: Option<&Ca>,
) -> Arc<rustls::ClientConfig> {
    let builder = tls::builder(ca.trust(), &[version]);
    let mut config = match cert_from {
        None => builder.with_no_client_auth(),
        Some(issuer) => {
            let (chain, key) = issuer.client_cert();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The default, spelled out: sessions in memory, TLS 1.2 by ticket too.
    config.resumption = rustls::client::Resumption::in_memory_sessions(256)
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOrTickets);
    Arc::new(config)
}

/// What one connection to `addr` got: its handshake, and the handler's
/// view of it (`/conninfo`), or the error that ended it.
fn attempt(
    addr: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<(rustls::HandshakeKind, String), String> {
    let mut https = Https::connect(addr, config.clone()).map_err(|e| e.to_string())?;
    let kind = https.stream.conn.handshake_kind().unwrap();
    match https.get("/conninfo") {
        Ok((200, body)) => Ok((kind, body)),
        Ok((status, body)) => Err(format!("{status} {body}")),
        Err(e) => Err(format!("{kind:?} handshake, then {e}")),
    }
}

const VERSIONS: [(&str, &rustls::SupportedProtocolVersion); 2] = [
    ("TLS 1.3", &rustls::version::TLS13),
    ("TLS 1.2", &rustls::version::TLS12),
];

/// A session from a public listener, offered to a listener of the same
/// process and host name that requires client certificates, is not
/// resumed there: the client does a full handshake, which it cannot pass
/// without a certificate. (Before: resumed, and served with no peer
/// certificate, TLS 1.3 and 1.2.)
#[test]
fn a_session_from_a_public_listener_is_not_resumed_where_client_certificates_are_required() {
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf();
    let files = Files::new(&cert, &key);
    let ca_file = files.cert.with_file_name("clients.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let server = files
        .spec()
        .mtls_ca(&ca_file)
        .arg("tls:127.0.0.1:0")
        .arg("mtls:127.0.0.1:0")
        .start();
    let ready = server.current();
    let (public, private) = (&ready.addrs[0], &ready.addrs[1]);
    for (name, version) in VERSIONS {
        let client = resuming(&ca, version, None);
        let (kind, body) = attempt(public, &client).unwrap();
        assert_eq!(kind, rustls::HandshakeKind::Full, "{name}");
        assert!(body.ends_with(" certs=0\n"), "{body}");
        // Its session is good on the public listener…
        assert_eq!(
            attempt(public, &client).unwrap().0,
            rustls::HandshakeKind::Resumed,
            "{name}"
        );
        // … and nothing on the other.
        let replayed = attempt(private, &client);
        eprintln!("{name}: a public session offered to the mTLS listener: {replayed:?}");
        assert!(
            replayed.is_err(),
            "{name}: let in without a certificate: {replayed:?}"
        );
        // A client with a certificate is let in there.
        let (_, body) = attempt(private, &resuming(&ca, version, Some(&ca))).unwrap();
        assert!(body.ends_with(" certs=1\n"), "{body}");
    }
}

/// Sessions on a listener that requires client certificates resume across
/// a reload that changes nothing; after the client CA file is replaced and
/// the server reloaded, a session from before is not resumed: the client
/// does a full handshake, and its certificate (from the old CA) is refused,
/// as a new client's is. (Before: resumed and served, TLS 1.3 and 1.2.)
#[test]
fn a_session_from_before_a_change_of_client_ca_is_not_resumed() {
    let old_ca = Ca::new();
    let new_ca = Ca::new();
    let (cert, key, _) = old_ca.leaf();
    let files = Files::new(&cert, &key);
    let ca_file = files.cert.with_file_name("clients.pem");
    std::fs::write(&ca_file, &old_ca.pem).unwrap();
    let mut server = files
        .spec()
        .mtls_ca(&ca_file)
        .arg("mtls:127.0.0.1:0")
        .start();
    let addr = server.addr();
    let clients: Vec<_> = VERSIONS
        .iter()
        .map(|(name, v)| (*name, resuming(&old_ca, v, Some(&old_ca))))
        .collect();
    for (name, client) in &clients {
        assert_eq!(
            attempt(&addr, client).unwrap().0,
            rustls::HandshakeKind::Full,
            "{name}"
        );
        assert_eq!(
            attempt(&addr, client).unwrap().0,
            rustls::HandshakeKind::Resumed,
            "{name}"
        );
    }
    // A reload with the same CA changes nothing: sessions resume.
    let old = server.current().pid;
    server.reload(Signal::SIGHUP);
    server.assert_exited_0(old, Duration::from_secs(10));
    for (name, client) in &clients {
        let (kind, body) = attempt(&addr, client).unwrap();
        assert_eq!(
            kind,
            rustls::HandshakeKind::Resumed,
            "{name}: same CA, after a reload"
        );
        assert!(body.ends_with(" certs=1\n"), "{body}");
    }
    // The new CA in place, as a deploy writes it.
    let tmp = ca_file.with_extension("new");
    std::fs::write(&tmp, &new_ca.pem).unwrap();
    std::fs::rename(&tmp, &ca_file).unwrap();
    let old = server.current().pid;
    server.reload(Signal::SIGHUP);
    server.assert_exited_0(old, Duration::from_secs(10));
    for (name, client) in &clients {
        let fresh = resuming(
            &old_ca,
            VERSIONS.iter().find(|v| v.0 == *name).unwrap().1,
            Some(&old_ca),
        );
        assert!(
            attempt(&addr, &fresh).is_err(),
            "{name}: a new client with an old certificate"
        );
        let resumed = attempt(&addr, client);
        eprintln!("{name}: a session from before the CA changed: {resumed:?}");
        assert!(
            resumed.is_err(),
            "{name}: let in with a session from before: {resumed:?}"
        );
    }
}
