//! What a handler knows of the connection its request came on.

mod support;

use std::io::{Read, Write};

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
