//! Graceful stop, the stop timeout, and what the drain does with
//! connections that never finish by themselves.

use endless_tests as support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{get, get_in_background, signal_pid, start_error, Spec};

fn graceful_stop(signal: Signal) {
    let mut server = Spec::fixture().start();
    let addr = server.addr();
    let pid = server.current().pid;
    let slow = get_in_background(&addr, "/sleep/800");
    std::thread::sleep(Duration::from_millis(200));
    signal_pid(pid, signal);
    // The request in flight completes …
    let (status, body) = slow.join().unwrap().unwrap();
    assert_eq!((status, body), (200, format!("slept pid={pid}\n")));
    // … and the process exits 0 once it is done.
    server.assert_exited_0(pid, Duration::from_secs(10));
    assert!(server.lines().contains(&format!("EXIT pid={pid} ok")));
    // Nothing listens any more.
    assert!(TcpStream::connect(&addr).is_err());
}

#[test]
fn sigterm_stops_gracefully_with_status_0() {
    graceful_stop(Signal::SIGTERM);
}

#[test]
fn sigint_stops_gracefully_with_status_0() {
    graceful_stop(Signal::SIGINT);
}

#[test]
fn a_second_stop_signal_cuts_the_drain_short() {
    let mut server = Spec::fixture().start();
    let addr = server.addr();
    let pid = server.current().pid;
    let slow = get_in_background(&addr, "/sleep/30000");
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    signal_pid(pid, Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.alive().contains(&pid),
        "the first SIGINT did not wait for the request"
    );
    signal_pid(pid, Signal::SIGINT);
    server.assert_exited_0(pid, Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        slow.join().unwrap().is_err(),
        "the cut request cannot have succeeded"
    );
    assert!(server.log().contains("second stop request; cutting off"));
}

/// `systemctl stop` right after a reload: with the default
/// `KillMode=control-group`, systemd sends SIGTERM to every process of the
/// service, the draining old generation included. That generation is
/// already stopping: its first stop signal changes nothing, and its request
/// in flight completes.
#[test]
fn a_stop_right_after_a_reload_lets_the_old_generation_finish() {
    let mut server = Spec::fixture().start();
    let addr = server.addr();
    let old = server.current().pid;
    let slow = get_in_background(&addr, "/sleep/1500");
    std::thread::sleep(Duration::from_millis(200));
    let new = server.reload(Signal::SIGHUP).pid;
    std::thread::sleep(Duration::from_millis(300));
    // What systemd does: every process of the unit.
    signal_pid(old, Signal::SIGTERM);
    signal_pid(new, Signal::SIGTERM);
    let (status, body) = slow.join().unwrap().unwrap();
    assert_eq!(
        (status, body),
        (200, format!("slept pid={old}\n")),
        "{}",
        server.report()
    );
    server.assert_exited_0(old, Duration::from_secs(10));
    // The new generation is the old one's child (which reaps it): its exit
    // status is seen in its own words.
    server
        .wait_line(Duration::from_secs(10), |l| {
            l == format!("EXIT pid={new} ok")
        })
        .unwrap_or_else(|| panic!("{}", server.report()));
}

/// After a hand-over, a second stop signal still cuts the drain short.
#[test]
fn a_second_stop_signal_cuts_a_drain_after_a_reload_short() {
    let mut server = Spec::fixture().start();
    let addr = server.addr();
    let old = server.current().pid;
    let slow = get_in_background(&addr, "/sleep/30000");
    std::thread::sleep(Duration::from_millis(200));
    server.reload(Signal::SIGHUP);
    // Once the old generation drains after the hand-over (a SIGTERM sent
    // while the new generation's "ready" SIGTERM is still pending would
    // merge with it: standard signals do not queue).
    server.wait_log("HandedOver", Duration::from_secs(5));
    signal_pid(old, Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.alive().contains(&old),
        "the first SIGTERM after the hand-over cut the drain:\n{}",
        server.report()
    );
    let t = Instant::now();
    signal_pid(old, Signal::SIGTERM);
    server.assert_exited_0(old, Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(slow.join().unwrap().is_err());
}

#[test]
fn the_stop_timeout_cuts_off_a_request_that_is_too_slow() {
    let mut server = Spec::fixture()
        .stop_timeout(Duration::from_millis(700))
        .start();
    let addr = server.addr();
    let pid = server.current().pid;
    let slow = get_in_background(&addr, "/sleep/20000");
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    signal_pid(pid, Signal::SIGTERM);
    server.assert_exited_0(pid, Duration::from_secs(10));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(slow.join().unwrap().is_err());
    assert!(server
        .log()
        .contains("stop timeout reached; cutting off the connections left"));
}

#[test]
fn the_stop_timeout_cuts_off_a_request_that_is_too_slow_on_reload() {
    let mut server = Spec::fixture()
        .stop_timeout(Duration::from_millis(700))
        .start();
    let addr = server.addr();
    let old = server.current().pid;
    let slow = get_in_background(&addr, "/sleep/20000");
    std::thread::sleep(Duration::from_millis(200));
    let new = server.reload(Signal::SIGHUP);
    server.assert_exited_0(old, Duration::from_secs(10));
    assert!(slow.join().unwrap().is_err());
    assert!(get(&addr, "/").unwrap().1.contains(&new.pid.to_string()));
}

#[test]
fn upgraded_connections_are_tracked_and_cut_at_the_deadline() {
    let mut server = Spec::fixture()
        .stop_timeout(Duration::from_millis(1500))
        .start();
    let addr = server.addr();
    let pid = server.current().pid;
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");

    let t = Instant::now();
    signal_pid(pid, Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(700));
    // Still open and still working: the drain waits for it …
    assert!(
        server.alive().contains(&pid),
        "the drain did not wait for the upgraded connection"
    );
    s.write_all(b"pong").unwrap();
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"pong");
    // … until the deadline, when it is cut.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "cut too early: {:?}",
        t.elapsed()
    );
    server.assert_exited_0(pid, Duration::from_secs(10));
}

#[test]
fn a_never_ending_body_is_cut_at_the_deadline() {
    let mut server = Spec::fixture()
        .stop_timeout(Duration::from_millis(800))
        .start();
    let addr = server.addr();
    let pid = server.current().pid;
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 256];
    assert!(s.read(&mut buf).unwrap() > 0);
    let t = Instant::now();
    signal_pid(pid, Signal::SIGTERM);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        t.elapsed() >= Duration::from_millis(750),
        "cut too early: {:?}",
        t.elapsed()
    );
    server.assert_exited_0(pid, Duration::from_secs(10));
}

#[test]
fn a_silent_client_is_dropped_by_the_header_read_timeout() {
    let server = Spec::fixture()
        .header_read_timeout(Duration::from_millis(400))
        .start();
    let addr = server.addr();
    let mut silent = TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    // Others are served meanwhile.
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// Slowloris clients: each sends part of a request head and stalls, one in
/// its first request, one in its second. Each must be dropped at about the
/// header read timeout, not held forever.
#[test]
fn a_client_that_stalls_in_a_request_head_is_dropped_by_the_header_read_timeout() {
    let server = Spec::fixture()
        .header_read_timeout(Duration::from_millis(400))
        .start();
    let addr = server.addr();
    let connect = || {
        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let mut first = connect();
    let mut second = connect();
    write!(second, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = [0u8; 512];
    let n = second.read(&mut answer).unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));

    let t = Instant::now();
    for s in [&mut first, &mut second] {
        write!(s, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    }
    // Others are served meanwhile.
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    for (which, s) in [("first", &mut first), ("second", &mut second)] {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_secs(5),
            "stalled in its {which} request: closed after {took:?}"
        );
        let answer = String::from_utf8_lossy(&buf);
        assert!(!answer.contains(" 200 "), "{which}: {answer:?}");
    }
}

/// The header read timeout also covers the wait for the next request head
/// of a keep-alive connection (as hyper's own does): a client that takes
/// one response and then stays silent does not hold its connection forever.
#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let server = Spec::fixture()
        .header_read_timeout(Duration::from_millis(400))
        .start();
    let addr = server.addr();
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 512];
    let n = idle.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// The header read timeout is about request heads only: a slow handler, a
/// response body that goes on for longer than the timeout, and an upgraded
/// connection that stays quiet for longer all outlast it. (The sweeper that
/// enforces it must tell these from connections waiting for a head.)
#[test]
fn the_header_read_timeout_spares_requests_in_progress_and_upgraded_connections() {
    let server = Spec::fixture()
        .header_read_timeout(Duration::from_millis(300))
        .start();
    let addr = server.addr();
    let connect = || {
        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let slow = get_in_background(&addr, "/sleep/1500");

    let mut upgraded = connect();
    write!(
        upgraded,
        "GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 512];
    let n = upgraded.read(&mut head).unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );

    let mut stream = connect();
    write!(stream, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let t = Instant::now();
    let mut streamed = Vec::new();
    let mut chunk = [0u8; 4096];
    // Five times the timeout; the body sends a tick every 100 ms.
    while t.elapsed() < Duration::from_millis(1500) {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the stream was cut after {:?}", t.elapsed());
        streamed.extend_from_slice(&chunk[..n]);
    }
    let ticks = String::from_utf8_lossy(&streamed)
        .matches("tick pid=")
        .count();
    assert!(ticks >= 10, "{ticks} ticks in {:?}", t.elapsed());

    // Quiet for five times the timeout, and still echoing.
    upgraded.write_all(b"still here").unwrap();
    let mut echo = [0u8; 10];
    upgraded.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here");

    let (status, body) = slow.join().unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
}

/// The header read timeout counts from the end of the last response, never
/// from earlier: a request whose handler was still running at one sweep of
/// the connections (every 100 ms here) must not be cut up to a sweep early.
#[test]
fn the_header_read_timeout_counts_from_the_end_of_the_response() {
    let server = Spec::fixture()
        .header_read_timeout(Duration::from_millis(400))
        .start();
    for round in 0..3 {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /sleep/{} HTTP/1.1\r\nHost: x\r\n\r\n",
            150 + 30 * round
        )
        .unwrap();
        let answer = read_until(&mut s, "\n").unwrap();
        let t = Instant::now();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(380) && took < Duration::from_secs(5),
            "round {round}: closed {took:?} after the response"
        );
    }
}

/// Reads from `s` until what was read ends with `end`, or fails.
fn read_until(s: &mut TcpStream, end: &str) -> std::io::Result<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(end.as_bytes()) {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "closed after {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// A handler that answers before it has read the request body (and reads
/// it on in a task of its own) leaves the upload going on after its
/// response. The header read timeout must not cut it, and the connection
/// serves its next request once the upload is done.
#[test]
fn the_header_read_timeout_spares_an_upload_that_goes_on_after_its_response() {
    let server = Spec::fixture()
        .header_read_timeout(Duration::from_millis(300))
        .start();
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = b"0123456789";
    let chunks = 8;
    write!(
        s,
        "POST /read-later HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        chunk.len() * chunks
    )
    .unwrap();
    let answer = read_until(&mut s, "accepted\n").unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    // Over five times the timeout.
    for _ in 0..chunks {
        std::thread::sleep(Duration::from_millis(200));
        s.write_all(chunk).unwrap();
    }
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = read_until(&mut s, &format!("pid={}\n", server.current().pid))
        .unwrap_or_else(|e| panic!("the connection did not serve on: {e}"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_silent_client_does_not_hold_up_a_stop() {
    let mut server = Spec::fixture().start();
    let addr = server.addr();
    let pid = server.current().pid;
    let _silent = TcpStream::connect(&addr).unwrap();
    let _idle = {
        // A keep-alive connection that has had one response and stays idle.
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).unwrap();
        s
    };
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    signal_pid(pid, Signal::SIGTERM);
    server.assert_exited_0(pid, Duration::from_secs(10));
    // Closed after the idle grace, far from the 20 s stop timeout.
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[test]
fn a_draining_generation_starts_no_new_generation() {
    let mut server = Spec::fixture().start();
    let addr = server.addr();
    let pid = server.current().pid;
    let slow = get_in_background(&addr, "/sleep/1000");
    std::thread::sleep(Duration::from_millis(200));
    signal_pid(pid, Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    signal_pid(pid, Signal::SIGHUP);
    signal_pid(pid, Signal::SIGUSR1);
    assert_eq!(slow.join().unwrap().unwrap().0, 200);
    server.assert_exited_0(pid, Duration::from_secs(10));
    assert_eq!(
        server.readies().len(),
        1,
        "a draining generation started another"
    );
    assert!(server
        .log()
        .contains("reload requested of a draining generation; ignored"));
}

#[test]
fn handle_shutdown_from_a_handler_stops_gracefully() {
    let mut server = Spec::fixture().start();
    let addr = server.addr();
    let pid = server.current().pid;
    assert_eq!(get(&addr, "/shutdown").unwrap(), (200, "stopping\n".into()));
    server.assert_exited_0(pid, Duration::from_secs(10));
}

#[test]
fn bad_configuration_is_an_error_naming_the_culprit() {
    let cases: Vec<(Spec, String)> = vec![
        (
            Spec::fixture().reload_signals(&[Signal::SIGKILL]),
            "signal SIGKILL: cannot be caught".into(),
        ),
        (
            Spec::fixture().stop_signals(&[Signal::SIGSTOP]),
            "signal SIGSTOP: cannot be caught".into(),
        ),
        (
            Spec::fixture()
                .reload_signals(&[Signal::SIGHUP])
                .stop_signals(&[Signal::SIGINT, Signal::SIGHUP]),
            "signal SIGHUP: is both a reload and a stop signal".into(),
        ),
        (
            Spec::fixture().stop_timeout(Duration::ZERO),
            "invalid stop_timeout: must be greater than zero".into(),
        ),
        (
            Spec::fixture().ready_timeout(Duration::ZERO),
            "invalid ready_timeout: must be greater than zero".into(),
        ),
        (
            Spec::fixture().arg("localhost"),
            "invalid address \"localhost\": expected host:port, [ipv6]:port or :port".into(),
        ),
        (
            Spec::fixture().arg("127.0.0.1:99999"),
            "invalid address \"127.0.0.1:99999\": \"99999\" is not a port number from 0 to 65535"
                .into(),
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(start_error(spec), want);
    }
}

#[test]
fn a_busy_port_is_an_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_eq!(
        start_error(Spec::fixture().arg(&addr)),
        format!("cannot listen on {addr}: Address already in use (os error 98)")
    );
}

#[test]
fn corrupt_hand_over_variables_are_an_error_naming_the_fd() {
    // The variables name the test process, which is the fixture's parent: the
    // fixture believes it was started by a reload, and must reject them.
    let me = format!("1;parent={}", std::process::id());
    let cases = [
        (
            "3=listener:1:1",
            "cannot adopt inherited fd 3: ENDLESS_FDS entry \"3=listener:1:1\" is not FD=KIND:DEVICE:INODE:NAME",
        ),
        (
            "5=socket:1:1:x",
            "cannot adopt inherited fd 5: ENDLESS_FDS entry \"5=socket:1:1:x\" is not FD=KIND:DEVICE:INODE:NAME",
        ),
        (
            "4=extra:1:1:a;4=extra:1:1:b",
            "cannot adopt inherited fd 4: ENDLESS_FDS names FD 4 twice",
        ),
    ];
    for (fds, want) in cases {
        let spec = Spec::fixture()
            .env("ENDLESS_HANDOVER", me.clone())
            .env("ENDLESS_FDS", fds);
        assert_eq!(start_error(spec), want);
    }
    let got = start_error(Spec::fixture().env("ENDLESS_HANDOVER", "9;parent=1"));
    assert!(
        got.ends_with("is not a hand-over this version reads"),
        "{got}"
    );
    // Variables whose FDs are not the files they name (by device and
    // inode) are not ours, whoever they name as parent: ignored, and the FDs
    // (here the fixture's own, not sockets at all) left alone.
    let many = (3..43)
        .map(|fd| format!("{fd}=listener:1:2:127.0.0.1:0"))
        .collect::<Vec<_>>()
        .join(";");
    for (handover, fds) in [
        ("1;parent=1", "3=listener:9:99:127.0.0.1:0".to_owned()),
        (me.as_str(), "3=listener:9:99:127.0.0.1:0".to_owned()),
        (me.as_str(), many),
    ] {
        let p = Spec::fixture()
            .env("ENDLESS_HANDOVER", handover)
            .env("ENDLESS_FDS", fds)
            .start();
        assert!(!p.current().reloaded, "{}", p.report());
    }
}

/// A stop while a new generation starts (here, 1 s of start-up): the old
/// generation tells it to stop too, and exits only after it, so nothing of
/// the service outlives the process a manager follows, and the port is
/// free once it exits. (The old generation exited at once, leaving the
/// new one starting, then serving, on its own.)
#[test]
fn a_stop_while_a_new_generation_starts_waits_for_it() {
    let mut server = Spec::fixture()
        .reload_delay(Duration::from_secs(1))
        .probation(Duration::ZERO)
        .start();
    let addr = server.addr();
    let old = server.current().pid;
    signal_pid(old, Signal::SIGHUP);
    let starting = server.wait_new_process(&[old], Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    signal_pid(old, Signal::SIGTERM);
    server.assert_exited_0(old, Duration::from_secs(10));
    assert!(
        !std::path::Path::new(&format!("/proc/{starting}")).exists()
            || server.zombies().contains(&starting),
        "the old generation exited before the one that was starting:\n{}",
        server.report()
    );
    assert!(
        std::net::TcpListener::bind(&addr).is_ok(),
        "the port is still held"
    );
}
