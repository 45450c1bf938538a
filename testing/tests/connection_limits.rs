//! What bounds the connections a generation holds: the HTTP/2 idle timeout
//! (GOAWAY, then closed even if the peer never answers), TCP keepalive on
//! accepted sockets, the connection cap, and what happens when file
//! descriptors run out. Each against a real fixture process, with raw
//! HTTP/2 clients that do exactly what a test needs (and nothing more: they
//! answer no PING).

use endless_tests as support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{get, signal_pid, Spec};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A raw HTTP/2 connection (prior knowledge, h2c) that sends what it is
/// told and never answers the server: no SETTINGS ack, no PING ack.
struct RawH2 {
    s: TcpStream,
    next_stream: u32,
}

#[derive(Debug, PartialEq)]
enum Seen {
    Frame(u8, u8, u32),
    Closed,
    Nothing,
}

impl RawH2 {
    fn connect(addr: &str) -> std::io::Result<RawH2> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        s.write_all(PREFACE)?;
        s.write_all(&frame(0x4, 0, 0, &[]))?;
        Ok(RawH2 { s, next_stream: 1 })
    }

    /// `GET /` (HPACK: `:method GET`, `:path /`, `:scheme http` from the
    /// static table, `:authority x` as a literal), and waits up to
    /// `timeout` for the end of its response.
    fn get(&mut self, timeout: Duration) -> std::io::Result<()> {
        let stream = self.next_stream;
        self.next_stream += 2;
        let block = [0x82, 0x84, 0x86, 0x41, 0x01, b'x'];
        self.s
            .write_all(&frame(HEADERS, 0x4 | END_STREAM, stream, &block))?;
        let t = Instant::now();
        while t.elapsed() < timeout {
            match self.next(t + timeout)? {
                Seen::Frame(DATA | HEADERS, flags, id)
                    if id == stream && flags & END_STREAM != 0 =>
                {
                    return Ok(())
                }
                Seen::Closed => return Err(std::io::Error::other("closed")),
                _ => {}
            }
        }
        Err(std::io::Error::other(format!(
            "no answer within {timeout:?}"
        )))
    }

    /// The next frame's type, flags and stream (its payload skipped), or
    /// the end of the connection, or nothing until `deadline`.
    fn next(&mut self, deadline: Instant) -> std::io::Result<Seen> {
        let mut head = [0u8; 9];
        let mut got = 0;
        while got < 9 {
            if Instant::now() > deadline {
                return Ok(Seen::Nothing);
            }
            match self.s.read(&mut head[got..]) {
                Ok(0) => return Ok(Seen::Closed),
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(Seen::Closed)
                }
                Err(e) => return Err(e),
            }
        }
        let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
        let mut payload = vec![0u8; len];
        let mut read = 0;
        let t = Instant::now();
        while read < len && t.elapsed() < Duration::from_secs(10) {
            match self.s.read(&mut payload[read..]) {
                Ok(0) => return Ok(Seen::Closed),
                Ok(n) => read += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Ok(Seen::Frame(head[3], head[4], stream))
    }

    /// Reads until the connection ends or `timeout` passes: when a GOAWAY
    /// came and when the connection closed (each if it did), and whether a
    /// PING came.
    fn watch(&mut self, timeout: Duration) -> (Option<Duration>, Option<Duration>, bool) {
        let t = Instant::now();
        let (mut goaway, mut pinged) = (None, false);
        while t.elapsed() < timeout {
            match self.next(t + timeout) {
                Ok(Seen::Frame(GOAWAY, _, _)) => {
                    goaway.get_or_insert(t.elapsed());
                }
                Ok(Seen::Frame(PING, _, _)) => pinged = true,
                Ok(Seen::Frame(..)) | Ok(Seen::Nothing) => {}
                Ok(Seen::Closed) | Err(_) => return (goaway, Some(t.elapsed()), pinged),
            }
        }
        (goaway, None, pinged)
    }
}

/// An HTTP/2 connection that has made one request and then opens no stream
/// is sent a GOAWAY after the idle timeout (500 ms here), and closed soon
/// after even though its peer never answers the PING that comes with it.
#[test]
fn an_idle_http2_connection_gets_a_goaway_and_is_closed() {
    let server = Spec::fixture()
        .http2_idle_timeout(Duration::from_millis(500))
        .start();
    let mut c = RawH2::connect(&server.addr()).unwrap();
    c.get(Duration::from_secs(5)).unwrap();
    let (goaway, closed, _) = c.watch(Duration::from_secs(10));
    eprintln!("idle HTTP/2 connection: GOAWAY after {goaway:?}, closed after {closed:?}");
    let goaway = goaway.expect("a GOAWAY within 10 s of idleness");
    assert!(
        goaway >= Duration::from_millis(450) && goaway < Duration::from_secs(3),
        "GOAWAY after {goaway:?}"
    );
    let closed = closed.expect("closed within 10 s");
    assert!(
        closed < goaway + Duration::from_secs(4),
        "closed after {closed:?}"
    );
}

/// An HTTP/2 connection that has not opened a stream yet (a client that
/// connects ahead of its first request, as gRPC channels do) is an HTTP/2
/// connection all the same: idle, it gets a GOAWAY after the HTTP/2 idle
/// timeout (500 ms), not a silent close at the header read timeout (2 s)
/// as an HTTP/1 client that sends nothing. Before: closed after 2 s, no
/// GOAWAY.
#[test]
fn an_http2_connection_with_no_stream_yet_gets_a_goaway_when_idle() {
    let server = Spec::fixture()
        .http2_idle_timeout(Duration::from_millis(500))
        .header_read_timeout(Duration::from_secs(2))
        .start();
    let mut c = RawH2::connect(&server.addr()).unwrap();
    let (goaway, closed, _) = c.watch(Duration::from_secs(6));
    eprintln!("HTTP/2 connection with no stream: GOAWAY after {goaway:?}, closed after {closed:?}");
    let goaway = goaway.expect("a GOAWAY");
    assert!(
        goaway >= Duration::from_millis(450) && goaway < Duration::from_millis(1900),
        "GOAWAY after {goaway:?}"
    );
}

/// In a drain, such a connection gets its GOAWAY at once, rather than the
/// wait an HTTP/1 client gets for its next request (an idle grace, then
/// until it has been quiet 5 s). Before: a GOAWAY 1 s or more into the
/// drain.
#[test]
fn an_http2_connection_with_no_stream_yet_gets_its_goaway_at_once_in_a_drain() {
    let mut server = Spec::fixture().start();
    let old = server.current().pid;
    let mut c = RawH2::connect(&server.addr()).unwrap();
    // The server's SETTINGS: it has read the preface.
    let settings = c.next(Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(matches!(settings, Seen::Frame(0x4, _, 0)), "{settings:?}");
    signal_pid(old, Signal::SIGHUP);
    server.wait_log(" draining ", Duration::from_secs(20));
    let (goaway, closed, _) = c.watch(Duration::from_secs(4));
    eprintln!("HTTP/2 connection with no stream, in a drain: GOAWAY after {goaway:?}, closed after {closed:?}");
    let goaway = goaway.expect("a GOAWAY within 4 s of the drain");
    assert!(
        goaway < Duration::from_millis(900),
        "GOAWAY {goaway:?} after the drain started"
    );
    server.assert_exited_0(old, Duration::from_secs(30));
}

/// The same when the preface arrives only after the drain has reached the
/// connection (a client connecting at the moment of a reload): its GOAWAY
/// comes at once, not after the HTTP/1 graces or a silent close.
#[test]
fn an_http2_preface_arriving_in_a_drain_gets_its_goaway_at_once() {
    let mut server = Spec::fixture().start();
    let old = server.current().pid;
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Accepted by the old generation before its drain: a first byte.
    s.write_all(&PREFACE[..1]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal_pid(old, Signal::SIGHUP);
    server.wait_log(" draining ", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&PREFACE[1..]).unwrap();
    s.write_all(&frame(0x4, 0, 0, &[])).unwrap();
    let mut c = RawH2 { s, next_stream: 1 };
    let (goaway, closed, _) = c.watch(Duration::from_secs(4));
    eprintln!("HTTP/2 preface in a drain: GOAWAY after {goaway:?}, closed after {closed:?}");
    let goaway = goaway.expect("a GOAWAY within 4 s of the preface");
    assert!(
        goaway < Duration::from_millis(900),
        "GOAWAY {goaway:?} after the preface"
    );
    server.assert_exited_0(old, Duration::from_secs(30));
}

/// A client's own PINGs (answered, a few bytes each) do not make an idle
/// HTTP/2 connection busy: it still gets its GOAWAY.
#[test]
fn an_http2_client_that_only_pings_still_gets_its_goaway() {
    let server = Spec::fixture()
        .http2_idle_timeout(Duration::from_millis(500))
        .start();
    let mut c = RawH2::connect(&server.addr()).unwrap();
    c.get(Duration::from_secs(5)).unwrap();
    let t = Instant::now();
    let mut goaway = None;
    // A PING every 100 ms, for at most 10 s.
    while goaway.is_none() && t.elapsed() < Duration::from_secs(10) {
        if c.s.write_all(&frame(PING, 0, 0, &[1; 8])).is_err() {
            break;
        }
        let next_ping = Instant::now() + Duration::from_millis(100);
        while goaway.is_none() && Instant::now() < next_ping {
            if let Ok(Seen::Frame(GOAWAY, _, _)) = c.next(next_ping) {
                goaway = Some(t.elapsed());
            }
        }
    }
    eprintln!("a pinging HTTP/2 client: GOAWAY after {goaway:?}");
    let goaway = goaway.expect("a GOAWAY within 10 s");
    assert!(goaway < Duration::from_secs(3), "GOAWAY after {goaway:?}");
}

/// HTTP/2 keep-alive PINGs are sent when asked for (every 200 ms here),
/// and not by default.
#[test]
fn http2_keep_alive_pings_are_sent_when_asked_for() {
    for (interval, want) in [(Some(Duration::from_millis(200)), true), (None, false)] {
        let mut spec = Spec::fixture();
        if let Some(interval) = interval {
            spec = spec.http2_keep_alive_interval(interval);
        }
        let server = spec.start();
        let mut c = RawH2::connect(&server.addr()).unwrap();
        c.get(Duration::from_secs(5)).unwrap();
        let (_, _, pinged) = c.watch(Duration::from_secs(1));
        eprintln!("HTTP/2 keep-alive every {interval:?}: pinged within 1 s: {pinged}");
        assert_eq!(pinged, want, "keep-alive {interval:?}");
    }
}

/// A reload sends GOAWAY (and a PING) to an HTTP/2 connection; a peer that
/// never answers the PING must not keep the old generation alive until the
/// stop timeout (20 s).
#[test]
fn an_http2_peer_that_never_answers_does_not_hold_a_drain() {
    let mut server = Spec::fixture().start();
    let old = server.current().pid;
    let mut c = RawH2::connect(&server.addr()).unwrap();
    c.get(Duration::from_secs(5)).unwrap();
    signal_pid(old, Signal::SIGHUP);
    server.wait_log(" draining ", Duration::from_secs(20));
    let drain = Instant::now();
    let (goaway, _, pinged) = c.watch(Duration::from_secs(2));
    assert!(goaway.is_some() && pinged, "{goaway:?} {pinged}");
    server.assert_exited_0(old, Duration::from_secs(30));
    let exited = drain.elapsed();
    eprintln!("silent HTTP/2 peer: old generation gone {exited:?} after the drain started");
    assert!(
        exited < Duration::from_secs(5),
        "the old generation exited {exited:?} after the drain started (stop timeout 20 s)"
    );
}

/// The server's side of every accepted TCP connection probes a silent
/// peer: its keepalive timer runs (`/proc/net/tcp`, timer 2), due in the
/// documented 60 s.
#[test]
fn accepted_connections_have_tcp_keepalive() {
    let server = Spec::fixture().start();
    let addr = server.addr();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    assert!(s.read(&mut buf).unwrap() > 0);
    let mine = s.local_addr().unwrap().port();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    // `sl local rem st tx:rx tr:when ...`, ports in hex.
    let line = table
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 5
                && f[1].ends_with(&format!(":{port:04X}"))
                && f[2].ends_with(&format!(":{mine:04X}"))
        })
        .unwrap_or_else(|| panic!("no server side socket for port {mine}:\n{table}"));
    let timer = line.split_whitespace().nth(5).unwrap();
    let (kind, when) = timer.split_once(':').unwrap();
    let when = Duration::from_millis(u64::from_str_radix(when, 16).unwrap() * 10);
    eprintln!("server side of the connection: timer {kind}, due in {when:?}");
    assert_eq!(kind, "02", "no keepalive timer: {line}");
    assert!(
        when > Duration::from_secs(50) && when <= Duration::from_secs(61),
        "{when:?}"
    );
}

/// One keep-alive connection that has been answered once, and stays idle.
fn idle_connection(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    s
}

/// Whether the server has closed `s` (an end of stream or a reset within
/// 2 s; silence is open).
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// At the cap (4 here), a new client is served once the oldest idle
/// connection is closed for it; the others stay open.
#[test]
fn at_the_connection_cap_the_oldest_idle_connection_makes_room() {
    let server = Spec::fixture().max_connections(4).start();
    let addr = server.addr();
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| {
            let s = idle_connection(&addr);
            // Apart in time, so that each is older than the next.
            std::thread::sleep(Duration::from_millis(300));
            s
        })
        .collect();
    let t = Instant::now();
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    let took = t.elapsed();
    let open: Vec<bool> = idle.iter_mut().map(|s| !closed(s)).collect();
    eprintln!("at the cap: a new client served in {took:?}; idle connections still open: {open:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(open, [false, true, true, true]);
}

/// At the cap with every connection busy, a new client waits (in the
/// listen queue, not refused) until one is done, and nobody's request
/// fails.
#[test]
fn at_the_connection_cap_with_every_connection_busy_a_new_client_waits() {
    let server = Spec::fixture().max_connections(4).start();
    let addr = server.addr();
    let t = Instant::now();
    let busy: Vec<_> = (0..4)
        .map(|_| support::get_in_background(&addr, "/sleep/1500"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = get(&addr, "/").unwrap();
    let served = t.elapsed();
    eprintln!("at the cap, every connection busy: a new client served after {served:?}");
    assert_eq!(status, 200);
    for b in busy {
        assert_eq!(b.join().unwrap().unwrap().0, 200);
    }
    assert!(
        served >= Duration::from_millis(1400) && served < Duration::from_secs(5),
        "served after {served:?}: not held until a connection was done"
    );
}

/// With 64 open files allowed, HTTP/2 connections that each made one
/// request and stay open exhaust the descriptors; the oldest idle ones are
/// closed so that new clients are still served.
#[test]
fn when_descriptors_run_out_the_oldest_idle_connections_make_room() {
    let server = Spec::fixture().open_files_limit(64).start();
    let addr = server.addr();
    let mut h2 = Vec::new();
    let mut answered = 0;
    for _ in 0..52 {
        let mut c = RawH2::connect(&addr).unwrap();
        if c.get(Duration::from_secs(2)).is_ok() {
            answered += 1;
        }
        h2.push(c);
    }
    let mut served = 0;
    let t = Instant::now();
    for _ in 0..5 {
        let attempt = std::thread::spawn({
            let addr = addr.clone();
            move || get(&addr, "/")
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        while !attempt.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if attempt.is_finished() && matches!(attempt.join(), Ok(Ok((200, _)))) {
            served += 1;
        }
    }
    let first_open = h2[0].watch(Duration::from_millis(500)).1.is_none();
    let last_open = h2[51].watch(Duration::from_millis(500)).1.is_none();
    let refused = server.log().matches("Too many open files").count();
    eprintln!(
        "64 files: {answered} of 52 HTTP/2 connections answered; then {served} of 5 new clients served in {:?}; oldest still open: {first_open}, newest: {last_open}; {refused} accept errors logged",
        t.elapsed()
    );
    assert_eq!(answered, 52);
    assert_eq!(served, 5);
    assert!(!first_open && last_open);
}
