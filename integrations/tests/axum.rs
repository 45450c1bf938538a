//! An axum `Router` served by endless: the `axum` example serves, reloads
//! and gives handlers axum's `ConnectInfo`, and a router is accepted
//! wherever a hyper service is.

// The workspace's test support (testing/src); it finds the examples in
// the workspace's target directory.
use endless_tests as support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{get, signal_pid, Spec};

#[test]
fn axum_serves_and_reloads() {
    // `Spec::new`, not `Spec::fixture()`: this crate's own axum example.
    let mut p = Spec::new(support::example("axum"))
        .arg("127.0.0.1:0")
        .spawn();
    let addr = p.listening_addr(0);
    let first = p.first_pid();
    let (status, body) = get(&addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("axum says hello from pid"), "{body}");
    assert!(body.contains(&first.to_string()), "{body}");

    signal_pid(first, Signal::SIGUSR1);
    assert_eq!(p.listening_addr(1), addr, "the reload changed the address");
    p.wait_exit(first, Duration::from_secs(25)).unwrap();
    let (_, body) = get(&addr, "/").unwrap();
    assert!(!body.contains(&first.to_string()), "{body}");
}

/// axum's `ConnectInfo<SocketAddr>` extractor works in a router served by
/// endless (feature `axum`).
#[test]
fn axum_connect_info_names_the_client() {
    let p = Spec::new(support::example("axum"))
        .arg("127.0.0.1:0")
        .spawn();
    let addr = p.listening_addr(0);
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    let me = conn.local_addr().unwrap();
    use std::io::{Read, Write};
    conn.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with(&format!("you are {me}\n")), "{reply}");
}

#[test]
fn an_axum_router_is_accepted_as_a_service() {
    // Only has to compile: a router as it is, and through
    // `TowerToHyperService` (as before endless took tower services).
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
    let _ = endless::Server::new()
        .register("127.0.0.1:0", router.clone())
        .register("127.0.0.1:0", endless::TowerToHyperService::new(router));
}
