//! The load client's own test: pointed at servers that misbehave in known
//! ways, it must count every failure, and back off instead of spinning.

use endless_tests as support;

use std::time::Duration;

use support::load::{self, Mode, Stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves on 127.0.0.1 with `answer` (raw bytes for each request, or `None`
/// to close the connection as soon as it is accepted); runs `mode` load
/// against it for 400 ms.
fn against(answer: Option<&'static str>, mode: Mode) -> Stats {
    let rt = load::runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = rt.spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let Some(answer) = answer else {
                drop(s);
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if answer.contains("Connection: close") {
                        return;
                    }
                }
            });
        }
    });
    let l = load::start(rt.handle(), &addr, mode, 2, "/");
    std::thread::sleep(Duration::from_millis(400));
    let stats = l.finish();
    server.abort();
    stats
}

/// Every attempt failed, under `kind`, and the workers backed off: with
/// 10 ms doubling to 500 ms, two workers make no more than about 12
/// attempts in 400 ms.
fn all_failed(stats: &Stats, kind: &str) {
    assert_eq!(stats.ok, 0, "{stats:?}");
    assert_eq!(stats.retried, 0, "{stats:?}");
    assert!(stats.failed >= 2, "{stats:?}");
    assert!(stats.failed <= 16, "no back-off: {stats:?}");
    assert_eq!(
        stats.failures.get(kind).copied(),
        Some(stats.failed),
        "{stats:?}"
    );
}

#[test]
fn a_fresh_connection_closed_before_the_answer_is_a_failure() {
    let stats = against(None, Mode::KeepAlive);
    assert_eq!(stats.ok, 0, "{stats:?}");
    assert_eq!(stats.retried, 0, "{stats:?}");
    assert!(stats.failed >= 2 && stats.failed <= 16, "{stats:?}");
}

#[test]
fn a_status_other_than_200_is_a_failure() {
    let stats = against(
        Some("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\n\r\npid=42\n\n"),
        Mode::KeepAlive,
    );
    all_failed(&stats, "status");
}

#[test]
fn a_body_that_does_not_match_is_a_failure() {
    let stats = against(
        Some("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\npid=4"),
        Mode::KeepAlive,
    );
    all_failed(&stats, "body mismatch");
}

#[test]
fn a_body_cut_short_is_a_failure() {
    let stats = against(
        Some("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\npid=4"),
        Mode::Close,
    );
    assert_eq!(stats.ok, 0, "{stats:?}");
    assert!(stats.failed >= 2 && stats.failed <= 16, "{stats:?}");
}

#[test]
fn a_server_that_answers_well_counts_no_failure() {
    let stats = against(
        Some("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\npid=42\n"),
        Mode::KeepAlive,
    );
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert!(stats.ok > 10, "{stats:?}");
    assert_eq!(stats.bodies.keys().collect::<Vec<_>>(), ["pid=42\n"]);
}

#[test]
fn a_refused_connection_is_a_failure() {
    // A port nobody listens on: bind one, note it, close it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let rt = load::runtime();
    let l = load::start(rt.handle(), &addr, Mode::KeepAlive, 2, "/");
    std::thread::sleep(Duration::from_millis(400));
    all_failed(&l.finish(), "connect");
}
