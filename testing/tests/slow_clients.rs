//! Slow clients and the header read timeout, each against a real fixture
//! process over real sockets: a slow reader of a large response (it must
//! get every byte, as from plain hyper-util), a request head dribbled after
//! a request with a body (it must be cut, as on a fresh connection), and a
//! request head dribbled into a drain (it must not hold the old generation
//! until the stop timeout).

use endless_tests as support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::tls::{self, Trust};
use support::{signal_pid, Spec};

/// What a slow reader got: body bytes before EOF (or an error), out of the
/// `Content-Length`, and how long it read.
#[derive(Debug)]
struct SlowRead {
    got: usize,
    length: usize,
    took: Duration,
    ended: String,
}

/// A receive buffer of 64 KiB, so that what the client has not read stays
/// on the server's side (hyper's buffer, rustls's, the socket's), as with
/// a client on a slow link.
fn small_receive_buffer(s: &TcpStream) {
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::RcvBuf, &(64 * 1024)).unwrap();
}

/// Sends `GET /big/LEN` on `s` and reads the answer at about `rate` bytes
/// per second, for at most `limit`.
fn read_slowly(s: &mut impl ReadWrite, len: usize, rate: usize, limit: Duration) -> SlowRead {
    write!(
        s,
        "GET /big/{len} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.flush().unwrap();
    let t = Instant::now();
    let mut received: Vec<u8> = Vec::new();
    let mut body_start = None;
    let mut buf = vec![0u8; 16 * 1024];
    let ended = loop {
        if t.elapsed() > limit {
            break "time limit".to_owned();
        }
        match s.read(&mut buf) {
            Ok(0) => break "EOF".to_owned(),
            Ok(n) => {
                if body_start.is_none() {
                    received.extend_from_slice(&buf[..n]);
                    if let Some(i) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                        body_start = Some(i + 4);
                    }
                } else {
                    received.extend(std::iter::repeat_n(0, n));
                }
            }
            Err(e) => break format!("error: {e}"),
        }
        // Paced: never ahead of `rate`.
        let due = Duration::from_secs_f64(received.len() as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(t.elapsed()) {
            std::thread::sleep(wait);
        }
    };
    let start = body_start.unwrap_or(received.len());
    let head = String::from_utf8_lossy(&received[..start]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    SlowRead {
        got: received.len() - start,
        length,
        took: t.elapsed(),
        ended,
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// 8 MB read at 2 MB/s (4 s) with a 500 ms header read timeout: the
/// response takes eight times the timeout to reach the client.
const BIG: usize = 8_000_000;
const RATE: usize = 2_000_000;
const TIMEOUT: Duration = Duration::from_millis(500);
const LIMIT: Duration = Duration::from_secs(30);

fn assert_whole(what: &str, r: &SlowRead) {
    eprintln!("{what}: {r:?}");
    assert_eq!(r.length, BIG, "{what}: {r:?}");
    assert_eq!(
        r.got, BIG,
        "{what}: cut short after {:?} ({})",
        r.took, r.ended
    );
}

#[test]
fn a_slow_reader_gets_every_byte_of_a_large_response() {
    let server = Spec::fixture().header_read_timeout(TIMEOUT).start();
    let mut s = TcpStream::connect(server.addr()).unwrap();
    small_receive_buffer(&s);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = read_slowly(&mut s, BIG, RATE, LIMIT);
    assert_whole("endless over HTTP", &r);
}

#[test]
fn a_slow_reader_gets_every_byte_of_a_large_response_over_https() {
    let server = Spec::fixture()
        .header_read_timeout(TIMEOUT)
        .tls(tls::CERT, tls::KEY)
        .arg("tls:127.0.0.1:0")
        .start();
    let tcp = TcpStream::connect(server.addr()).unwrap();
    small_receive_buffer(&tcp);
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let client = tls::client(Trust::TestCert, &[b"http/1.1"]);
    let conn = rustls::ClientConnection::new(client, "localhost".try_into().unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let r = read_slowly(&mut s, BIG, RATE, LIMIT);
    assert_whole("endless over HTTPS", &r);
}

/// The same scenario against plain hyper-util with hyper's own header read
/// timeout (the baseline endless is held to): every byte arrives.
#[test]
fn the_baseline_gives_a_slow_reader_every_byte_too() {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let rt = support::load::runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let body = http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; BIG]));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(500));
                let _ = builder.serve_connection(TokioIo::new(io), svc).await;
            });
        }
    });
    let mut s = TcpStream::connect(addr).unwrap();
    small_receive_buffer(&s);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = read_slowly(&mut s, BIG, RATE, LIMIT);
    assert_whole("plain hyper-util over HTTP", &r);
}

/// After a request with a body (a 1-byte POST, read by its handler before
/// it answered), the next request head dribbled at a byte every 100 ms is
/// cut by the header read timeout (1 s), as on a fresh connection.
#[test]
fn a_head_dribbled_after_a_request_with_a_body_is_cut_by_the_header_read_timeout() {
    dribble_after(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
}

/// The same after a chunked body (no length to tell where it ends: bytes
/// read after its response are the next head's).
#[test]
fn a_head_dribbled_after_a_chunked_request_is_cut_by_the_header_read_timeout() {
    dribble_after(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    );
}

fn dribble_after(request: &[u8]) {
    let head = [&b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "[..], &[b'a'; 200]].concat();
    cut_by_the_header_read_timeout(request, &head, "after a POST");
}

/// A fresh connection that dribbles HTTP/2's preface (a byte every
/// 100 ms; the server cannot tell HTTP/1 from HTTP/2 before its 24th byte)
/// is cut by the header read timeout (1 s) like any other head.
#[test]
fn the_http2_preface_dribbled_is_cut_by_the_header_read_timeout() {
    // The preface but its last byte (2.3 s): the server cannot tell the
    // protocol before the end.
    cut_by_the_header_read_timeout(b"", &PREFACE[..23], "the preface");
}

/// Against a fixture with a 1 s header read timeout: sends `request` (if
/// any) and reads its answer, then dribbles `head` a byte every 100 ms;
/// the server must close the connection 0.9 to 4 s after the dribbling
/// started.
fn cut_by_the_header_read_timeout(request: &[u8], head: &[u8], what: &str) {
    let server = Spec::fixture()
        .header_read_timeout(Duration::from_secs(1))
        .start();
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    if !request.is_empty() {
        s.write_all(request).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        let t = Instant::now();
        while !String::from_utf8_lossy(&answer).contains("pid=") {
            assert!(t.elapsed() < Duration::from_secs(10), "no answer");
            match s.read(&mut buf) {
                Ok(0) => panic!("closed before the answer"),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }
    let closed = dribble(&mut s, head, what);
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(4),
        "closed {closed:?} after the dribbling started"
    );
}

/// What an HTTP/2 connection with prior knowledge starts with.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Writes `head` a byte at a time, a read (with `s`'s read timeout) after
/// each, for at most 12 s: how long until the server closed the
/// connection.
fn dribble(s: &mut TcpStream, head: &[u8], what: &str) -> Duration {
    let mut buf = [0u8; 1024];
    let t = Instant::now();
    let mut sent = 0;
    let closed = loop {
        if t.elapsed() > Duration::from_secs(12) || sent == head.len() {
            break None;
        }
        if s.write_all(&head[sent..sent + 1]).is_err() {
            break Some(t.elapsed());
        }
        sent += 1;
        match s.read(&mut buf) {
            Ok(0) => break Some(t.elapsed()),
            Ok(_) => panic!("an answer to half a head"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break Some(t.elapsed()),
        }
    };
    eprintln!("dribbling {what}: closed after {closed:?}, {sent} bytes sent");
    closed.unwrap_or_else(|| {
        panic!(
            "still open after {:?} and {sent} bytes of a request head",
            t.elapsed()
        )
    })
}

/// A client that dribbles a request head (a byte every 300 ms) into a
/// drain does not hold the old generation until the stop timeout: the
/// drain gives an unfinished head at most its wait for quiet clients (5 s,
/// here 4 s: half the stop timeout) from its start, then closes the
/// connection at its next grace (1 s apart). Before: the old generation
/// exited at the stop timeout, 8.0 s after the drain started.
#[test]
fn a_head_dribbled_into_a_drain_does_not_hold_it_until_the_stop_timeout() {
    // Known to the old generation: one request answered.
    let known = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    dribble_into_drain(Some(known), b"GET / HTTP/1.1\r\n", b"a".repeat(60));
}

/// The same with a connection that has sent only the start of HTTP/2's
/// preface when the drain starts, and dribbles the rest but its last byte
/// (the server cannot tell the protocol yet).
#[test]
fn the_http2_preface_dribbled_into_a_drain_does_not_hold_it_until_the_stop_timeout() {
    // 20 bytes a byte every 300 ms: 6 s, past the drain's 5.5 s, and still
    // no whole preface.
    dribble_into_drain(None, &PREFACE[..3], PREFACE[3..23].to_vec());
}

/// Starts a fixture (stop timeout 8 s), sends `known` and reads its
/// answer, if any, sends `first`, reloads, and from the drain's start
/// writes `rest` a byte every 300 ms: the old generation must be gone
/// 5.5 s after the drain started.
fn dribble_into_drain(known: Option<&[u8]>, first: &[u8], rest: Vec<u8>) {
    let mut server = Spec::fixture().stop_timeout(Duration::from_secs(8)).start();
    let old = server.current().pid;
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 1024];
    if let Some(known) = known {
        s.write_all(known).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    s.write_all(first).unwrap();
    signal_pid(old, Signal::SIGHUP);
    server.wait_log(" draining ", Duration::from_secs(20));
    let drain = Instant::now();
    let mut closed = None;
    let mut bytes = rest.iter();
    // At most 15 s, one byte per 300 ms.
    while drain.elapsed() < Duration::from_secs(15) && closed.is_none() {
        let Some(b) = bytes.next() else { break };
        if s.write_all(&[*b]).is_err() {
            closed = Some(drain.elapsed());
        }
        match s.read(&mut buf) {
            Ok(0) => closed = Some(drain.elapsed()),
            Ok(_) => panic!("an answer to half a head"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => closed = Some(drain.elapsed()),
        }
    }
    server.assert_exited_0(old, Duration::from_secs(15));
    let exited = drain.elapsed();
    eprintln!("dribbling into a drain: closed after {closed:?}, old generation gone {exited:?} after the drain started");
    assert!(closed.is_some(), "the connection was never closed");
    assert!(
        exited < Duration::from_millis(5500),
        "the old generation exited {exited:?} after the drain started (stop timeout 8 s)"
    );
    assert!(
        !server.log().contains("stop timeout reached"),
        "{}",
        server.log()
    );
}

/// Over HTTP/2 too (h2 takes the whole body from hyper at once and sends
/// it as flow control allows): a slow reader gets every byte, with the
/// HTTP/2 idle timeout and the header read timeout both at 500 ms.
#[test]
fn a_slow_http2_reader_gets_every_byte_of_a_large_response() {
    let server = Spec::fixture()
        .header_read_timeout(TIMEOUT)
        .http2_idle_timeout(TIMEOUT)
        .start();
    let addr = server.addr();
    let rt = support::load::runtime();
    let r = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("http://{addr}/big/{BIG}"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        let response = response.await.unwrap();
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let mut body = response.into_body();
        let t = Instant::now();
        let mut got = 0;
        let ended = loop {
            if t.elapsed() > LIMIT {
                break "time limit".to_owned();
            }
            match tokio::time::timeout(Duration::from_secs(10), body.data()).await {
                Err(_) => break "stalled".to_owned(),
                Ok(None) => break "end of stream".to_owned(),
                Ok(Some(Err(e))) => break format!("error: {e}"),
                Ok(Some(Ok(chunk))) => {
                    got += chunk.len();
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
            }
            let due = Duration::from_secs_f64(got as f64 / RATE as f64);
            if let Some(wait) = due.checked_sub(t.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        };
        SlowRead {
            got,
            length,
            took: t.elapsed(),
            ended,
        }
    });
    assert_whole("endless over HTTP/2", &r);
}
