//! What a draining generation does to the connections it still holds, each
//! driven byte by byte over a real socket to a real fixture process.

use endless_tests as support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{served_pid, signal_pid, Proc, Spec};

/// One response read off a keep-alive connection: its head (lower case) and
/// its body (the fixture's answers carry a `Content-Length`).
fn read_response(s: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            return Err(std::io::Error::other("response head too long"));
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((head, String::from_utf8_lossy(&body).into_owned()))
}

/// A keep-alive connection on which the current generation has answered
/// once, so that it is known to belong to that generation.
fn connection_to(server: &Proc) -> TcpStream {
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (head, body) = read_response(&mut s).unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(served_pid(&body), server.current().pid);
    s
}

/// Sends the reload signal to `old` and returns once it has started its
/// drain (it logs `draining` right after), with the time it saw that.
fn reload_and_wait_for_the_drain(server: &Proc, old: u32) -> Instant {
    signal_pid(old, Signal::SIGHUP);
    server.wait_log(" draining ", Duration::from_secs(20));
    Instant::now()
}

fn connection_header(head: &str) -> Option<&str> {
    head.lines()
        .find_map(|l| l.strip_prefix("connection: "))
        .map(str::trim)
}

/// The request just sent on `s` is answered by `old`, the draining
/// generation, with `Connection: close`; then the connection is closed and
/// `old` exits (the drain goes on without waiting for the deadline).
fn answered_by_the_draining_generation_then_closed(s: &mut TcpStream, server: &mut Proc, old: u32) {
    let (head, body) =
        read_response(s).unwrap_or_else(|e| panic!("no answer: {e}\n{}", server.report()));
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(served_pid(&body), old);
    assert_eq!(connection_header(&head), Some("close"), "{head}");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    server.assert_exited_0(old, Duration::from_secs(5));
}

#[test]
fn an_upgrade_on_a_draining_generation_keeps_its_connection_header() {
    let mut server = Spec::fixture().stop_timeout(Duration::from_secs(3)).start();
    let old = server.current().pid;
    let mut s = connection_to(&server);
    reload_and_wait_for_the_drain(&server, old);

    // Within the idle grace, on the old generation's connection.
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let (head, _) = read_response(&mut s).unwrap();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // RFC 6455 and RFC 9110: a 101 without `Connection: upgrade` is to be
    // rejected by the client.
    assert_eq!(connection_header(&head), Some("upgrade"), "{head}");
    for word in [&b"ping"[..], b"pong"] {
        s.write_all(word).unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, word);
    }
    // The upgraded connection lives until the stop timeout, then is cut and
    // the old generation exits normally.
    server.assert_exited_0(old, Duration::from_secs(15));
}

#[test]
fn a_request_arriving_across_the_end_of_the_idle_grace_is_answered() {
    let mut server = Spec::fixture()
        .stop_timeout(Duration::from_secs(10))
        .start();
    let old = server.current().pid;
    let mut s = connection_to(&server);
    let drain = reload_and_wait_for_the_drain(&server, old);

    // Half a request head before the idle grace (1 s) ends, the rest after
    // it: a reverse proxy's pooled connection reused at the wrong moment,
    // its request split over two segments.
    std::thread::sleep(Duration::from_millis(700).saturating_sub(drain.elapsed()));
    s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(1300).saturating_sub(drain.elapsed()));
    s.write_all(b"st: x\r\n\r\n").unwrap();
    let sent = drain.elapsed();
    assert!(sent < Duration::from_millis(1500), "too slow: {sent:?}");

    answered_by_the_draining_generation_then_closed(&mut s, &mut server, old);
}

/// A connection whose client has been quiet for a while is closed at the
/// end of the idle grace (1 s); one whose client sent a request moments
/// before the drain started gets until 5 s after that request to send
/// another (see the next test), and is closed then.
#[test]
fn idle_connections_are_closed_at_the_end_of_the_idle_grace_or_5_s_after_their_last_request() {
    let mut server = Spec::fixture()
        .stop_timeout(Duration::from_secs(20))
        .start();
    let old = server.current().pid;
    let mut quiet = connection_to(&server);
    // Quiet for longer than 5 s when the drain starts.
    std::thread::sleep(Duration::from_millis(5600));
    let mut recent = connection_to(&server);
    let last_request = Instant::now();
    let drain = reload_and_wait_for_the_drain(&server, old);

    let mut rest = Vec::new();
    assert_eq!(quiet.read_to_end(&mut rest).unwrap(), 0);
    let closed = drain.elapsed();
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "the quiet connection was closed {closed:?} after the drain started"
    );
    assert_eq!(recent.read_to_end(&mut rest).unwrap(), 0);
    let closed = last_request.elapsed();
    assert!(
        closed >= Duration::from_millis(4500) && closed < Duration::from_secs(8),
        "the recent connection was closed {closed:?} after its last request"
    );
    server.assert_exited_0(old, Duration::from_secs(5));
}

/// A client that reuses its kept-alive connection often, but less often
/// than the idle grace (a load generator with thousands of connections, a
/// proxy's pool): its next request on the old generation's connection is
/// answered, with `Connection: close`, instead of meeting a connection the
/// server has just closed (an error for a client that sends at that
/// moment; the benchmark saw hundreds per reload at 8,000 connections).
#[test]
fn a_connection_used_every_1_5_s_is_answered_across_a_reload() {
    let mut server = Spec::fixture()
        .stop_timeout(Duration::from_secs(10))
        .start();
    let old = server.current().pid;
    let mut s = connection_to(&server);
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (head, _) = read_response(&mut s).unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let last_request = Instant::now();
    reload_and_wait_for_the_drain(&server, old);

    std::thread::sleep(Duration::from_millis(1500).saturating_sub(last_request.elapsed()));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    answered_by_the_draining_generation_then_closed(&mut s, &mut server, old);
}

/// With a short stop timeout the wait for a recent client's next request
/// shrinks to half of it, so that the drain still ends by itself, not at
/// the deadline with what is left cut off.
#[test]
fn a_short_stop_timeout_shortens_the_wait_for_recent_clients() {
    let mut server = Spec::fixture().stop_timeout(Duration::from_secs(3)).start();
    let old = server.current().pid;
    let mut s = connection_to(&server);
    let drain = reload_and_wait_for_the_drain(&server, old);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    let closed = drain.elapsed();
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2700),
        "closed {closed:?} after the drain started (stop timeout 3 s)"
    );
    server.assert_exited_0(old, Duration::from_secs(5));
    assert!(
        !server.log().contains("stop timeout reached"),
        "{}",
        server.log()
    );
}
