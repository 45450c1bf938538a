//! hyper's HTTP/1 and HTTP/2 settings set on the `Server` (the fixture's
//! `Spec::http_settings`), seen by real clients of a real process, before and
//! after a reload; and a bad one refused by `run`, naming it.

use endless_tests as support;

use std::future::Future;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{get, start_error, Spec};

/// The raw answer to `request`, read to the end of the connection (or 10 s).
fn exchange(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A GET of `/` with `n` extra headers.
fn with_headers(n: usize) -> String {
    let mut r = String::from("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for i in 0..n {
        r.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    r + "\r\n"
}

/// What an HTTP/2 client learns of the server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`, and how long `streams` concurrent
/// requests of `/sleep/MS` then take (the client opens no more at once
/// than the server allows: the others wait).
fn h2_streams(addr: &str, streams: usize, ms: u64) -> (usize, Duration) {
    let rt = support::load::runtime();
    let addr = addr.to_owned();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
        // Driven here, so that the connection's view of the server's
        // settings can be read after every poll.
        let max = Arc::new(AtomicUsize::new(0));
        let seen = max.clone();
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| {
                let r = std::pin::Pin::new(&mut conn).poll(cx);
                seen.store(conn.max_concurrent_send_streams(), Ordering::SeqCst);
                r
            })
            .await;
        });
        // One request first: once it is answered, the client has the
        // server's SETTINGS (streams opened before them, past the limit,
        // are refused with REFUSED_STREAM).
        let req = hyper::Request::get(format!("http://{addr}/"))
            .body(())
            .unwrap();
        let (response, _) = client
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(req, true)
            .unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        let t = Instant::now();
        let mut answers = Vec::new();
        for _ in 0..streams {
            let mut client = client.clone().ready().await.unwrap();
            let req = hyper::Request::get(format!("http://{addr}/sleep/{ms}"))
                .body(())
                .unwrap();
            let (response, _) = client.send_request(req, true).unwrap();
            answers.push(tokio::spawn(response));
        }
        for a in answers {
            let response = a.await.unwrap().expect("an answer to every stream");
            assert_eq!(response.status(), 200);
        }
        (max.load(Ordering::SeqCst), t.elapsed())
    })
}

/// The HTTP/2 client sees the limit set, and is held to it: 6 requests of
/// 400 ms each, 2 at a time, take three rounds; across a reload, the new
/// generation sets it too. (Without the setting, hyper's 200, they take
/// one round: the control.)
#[test]
fn http2_clients_see_the_max_concurrent_streams_set_before_and_after_a_reload() {
    let _heavy = support::heavy();
    let control = Spec::fixture().start();
    let (max, took) = h2_streams(&control.addr(), 6, 400);
    assert_eq!(max, 200, "hyper's default");
    assert!(took < Duration::from_millis(1100), "one round: {took:?}");
    drop(control);

    let server = Spec::fixture()
        .http_settings("http2_max_concurrent_streams=2")
        .start();
    let addr = server.addr();
    let (max, took) = h2_streams(&addr, 6, 400);
    assert_eq!(max, 2, "{}", server.report());
    assert!(
        took >= Duration::from_millis(1200),
        "three rounds: {took:?}"
    );

    let next = server.reload(Signal::SIGUSR1);
    support::wait_served_by(&addr, next.pid);
    let (max, took) = h2_streams(&addr, 6, 400);
    assert_eq!(max, 2, "in the new generation\n{}", server.report());
    assert!(
        took >= Duration::from_millis(1200),
        "three rounds: {took:?}"
    );
}

/// More headers than `http1_max_headers` get a 431, in the first generation
/// and after a reload; as many as allowed are served.
#[test]
fn http1_requests_with_too_many_headers_get_431_before_and_after_a_reload() {
    // 8 in all: Host, Connection and 6 of ours.
    let server = Spec::fixture().http_settings("http1_max_headers=8").start();
    let addr = server.addr();
    let check = |when: &str| {
        let ok = exchange(&addr, &with_headers(6));
        assert!(ok.starts_with("HTTP/1.1 200"), "{when}: {ok:?}");
        let refused = exchange(&addr, &with_headers(7));
        assert!(refused.starts_with("HTTP/1.1 431"), "{when}: {refused:?}");
    };
    check("first generation");
    let next = server.reload(Signal::SIGHUP);
    support::wait_served_by(&addr, next.pid);
    check("after a reload");
}

/// A request head longer than `http1_max_buf_size` gets a 431.
#[test]
fn http1_heads_longer_than_the_buffer_get_431() {
    let server = Spec::fixture()
        .http_settings("http1_max_buf_size=8192")
        .start();
    let addr = server.addr();
    let long = |n: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nx-long: {}\r\n\r\n",
            "a".repeat(n)
        )
    };
    let ok = exchange(&addr, &long(4_000));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok:?}");
    let refused = exchange(&addr, &long(9_000));
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused:?}");
    // Control: hyper's default buffer (about 400 KiB) takes that head.
    let control = Spec::fixture().start();
    let ok = exchange(&control.addr(), &long(9_000));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok:?}");
}

/// With HTTP/1 keep-alive off, a response says `Connection: close` and the
/// connection closes after it, though the client asked for none.
#[test]
fn http1_keep_alive_off_closes_after_each_response() {
    let server = Spec::fixture()
        .http_settings("http1_keep_alive=false")
        .start();
    let t = Instant::now();
    let answer = exchange(&server.addr(), "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "closed by the server");
    let (status, _) = get(&server.addr(), "/").unwrap();
    assert_eq!(status, 200);
}

/// A value hyper would panic on is refused by `run`, naming the setting.
#[test]
fn a_setting_out_of_range_is_an_error_naming_it() {
    for (setting, name) in [
        ("http2_max_frame_size=1000", "http2_max_frame_size"),
        ("http1_max_buf_size=100", "http1_max_buf_size"),
        (
            "http2_adaptive_window=true,http2_initial_stream_window_size=100000",
            "http2_adaptive_window",
        ),
    ] {
        let msg = start_error(Spec::fixture().http_settings(setting));
        assert!(msg.contains(name), "{setting}: {msg}");
    }
}
