//! What a handler knows of the connection its request came on.

use endless_tests as support;

use std::io::{Read, Write};
use std::time::Duration;

use http_body_util::BodyExt;

use nix::sys::signal::Signal;
use support::Spec;

fn conninfo_over(mut conn: impl Read + Write) -> String {
    conn.write_all(b"GET /conninfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// Over TCP: the client's address, where it came in, and the listener's
/// registered name; over a Unix socket: the client's pid, uid and gid.
/// The same after a reload.
#[test]
fn handlers_see_the_peer_and_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let unix = format!("unix:{}", sock.display());
    let server = Spec::fixture().arg("127.0.0.1:0").arg(&unix).start();
    let tcp = server.current().addrs[0].clone();
    for round in 0..2 {
        let conn = std::net::TcpStream::connect(&tcp).unwrap();
        let me = conn.local_addr().unwrap();
        assert_eq!(
            conninfo_over(conn),
            format!("listener=127.0.0.1:0 local={tcp} peer={me} creds=- sni=- alpn=- certs=-\n"),
            "round {round}"
        );
        let conn = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let (pid, uid, gid) = (
            std::process::id(),
            nix::unistd::getuid(),
            nix::unistd::getgid(),
        );
        assert_eq!(
            conninfo_over(conn),
            format!("listener={unix} local={unix} peer=- creds={pid}:{uid}:{gid} sni=- alpn=- certs=-\n"),
            "round {round}"
        );
        if round == 0 {
            let pid = server.reload(Signal::SIGHUP).pid;
            support::wait_served_by(&tcp, pid);
        }
    }
}

/// A handler of an HTTP/2 request (h2c, several streams on one
/// connection) sees its connection too: hyper runs each stream in a task of
/// its own, which inherits the connection's info.
#[test]
fn handlers_of_http2_streams_see_their_connection() {
    let server = Spec::fixture().start();
    let addr = server.addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let me = tcp.local_addr().unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        for stream in 0..3 {
            let req = hyper::Request::get(format!("http://{addr}/conninfo"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let res = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
                .await
                .expect("an answer in time")
                .unwrap();
            assert_eq!(res.version(), hyper::Version::HTTP_2);
            assert_eq!(res.status(), 200, "stream {stream}");
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                String::from_utf8_lossy(&body),
                format!(
                    "listener=127.0.0.1:0 local={addr} peer={me} creds=- sni=- alpn=- certs=-\n"
                ),
                "stream {stream}"
            );
        }
        drop(send);
        conn.abort();
    });
}
