//! Reloads of a real server process under real concurrent load, counting
//! every failed request.

use endless_tests as support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::load::{self, Mode};
use support::{get, get_in_background, served_pid, signal_pid, wait_served_by_within, Spec};

/// Reloads per load test; `ENDLESS_TEST_RELOADS` raises it for measuring.
fn reloads() -> usize {
    std::env::var("ENDLESS_TEST_RELOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

/// Reloads the server `n` times under `conns` connections of `mode` load and
/// checks that not one request failed, that every generation served, and
/// that exactly one process is left serving.
fn reload_under_load(mode: Mode, conns: usize) {
    let _heavy = support::heavy();
    let rt = load::runtime();
    let mut server = Spec::fixture().start();
    let addr = server.addr();
    let load = load::start(rt.handle(), &addr, mode, conns, "/");
    std::thread::sleep(Duration::from_millis(300));

    let n = reloads();
    let mut pids = vec![server.current().pid];
    let mut times = Vec::new();
    for i in 0..n {
        let signal = if i % 2 == 0 {
            Signal::SIGHUP
        } else {
            Signal::SIGUSR1
        };
        let t = Instant::now();
        let next = server.reload(signal);
        times.push(t.elapsed());
        pids.push(next.pid);
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.finish();

    times.sort();
    eprintln!(
        "{mode:?}: {n} reloads, {} ok, {} failed, {} retried; signal-to-ready median {:?} max {:?}",
        stats.ok,
        stats.failed,
        stats.retried,
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert_eq!(
        stats.failed,
        0,
        "failed requests: {:?}\n{}",
        stats.errors,
        server.report()
    );
    assert!(
        stats.ok > 1000,
        "too little load to mean anything: {stats:?}"
    );
    // The new generations really served: most of them answered requests.
    let served: Vec<u32> = stats.bodies.keys().map(|b| served_pid(b)).collect();
    let last = *pids.last().unwrap();
    assert!(
        served.contains(&last),
        "last generation {last} served nothing: {served:?}"
    );
    assert!(
        served.len() > n / 2,
        "only {} of {} generations served",
        served.len(),
        n + 1
    );

    // Every old generation exits 0; only the newest is left.
    for &pid in &pids[..pids.len() - 1] {
        server.assert_exited_0(pid, Duration::from_secs(15));
    }
    assert_eq!(server.alive(), vec![last], "{}", server.report());
}

#[test]
fn reload_under_keep_alive_load_loses_nothing() {
    reload_under_load(Mode::KeepAlive, 64);
}

#[test]
fn reload_under_connection_close_load_loses_nothing() {
    reload_under_load(Mode::Close, 32);
}

#[test]
fn reload_under_http2_load_loses_nothing() {
    reload_under_load(Mode::Http2, 32);
}

#[test]
fn slow_request_finishes_on_the_old_generation_while_the_new_one_serves() {
    let mut server = Spec::fixture().start();
    let addr = server.addr();
    let old = server.current().pid;
    let slow = get_in_background(&addr, "/sleep/1500");
    std::thread::sleep(Duration::from_millis(200));
    let new = server.reload(Signal::SIGUSR1);
    // New requests reach the new generation while the old one is busy. (The
    // old one may take a connection or two from the shared accept queue
    // until it has seen the new one's signal: it answers them, too.)
    wait_served_by_within(&addr, new.pid, Duration::from_secs(1));
    assert!(
        server.alive().contains(&old),
        "old generation left before its request was done"
    );
    let (status, body) = slow.join().unwrap().unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, format!("slept pid={old}\n").as_str())
    );
    server.assert_exited_0(old, Duration::from_secs(10));
}

#[test]
fn handle_reload_from_a_handler_resolves_once_the_new_generation_serves() {
    let server = Spec::fixture().start();
    let addr = server.addr();
    let old = server.current().pid;
    let (status, body) = get(&addr, "/reload").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "reloaded draining=true\n"),
        "{}",
        server.report()
    );
    let new = server
        .wait_ready_after(old, Duration::from_secs(10))
        .unwrap();
    assert!(new.reloaded);
    support::wait_served_by(&addr, new.pid);
}

#[test]
fn listeners_are_matched_by_address_and_kept_across_reloads() {
    let server = Spec::fixture()
        .arg("127.0.0.1:0")
        .arg("127.0.0.1:0")
        .arg("[::1]:0")
        .start();
    let before = server.current().addrs;
    assert_eq!(before.len(), 3);
    for _ in 0..3 {
        let after = server.reload(Signal::SIGHUP).addrs;
        assert_eq!(after, before, "addresses changed across a reload");
    }
    for addr in &before {
        if addr.starts_with('[') && std::net::TcpStream::connect(addr).is_err() {
            continue; // no IPv6 loopback on this machine
        }
        assert_eq!(get(addr, "/").unwrap().0, 200, "{addr}");
    }
}

#[test]
fn a_replaced_binary_is_what_serves_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::copy(support::fixture(), &app).unwrap();
    // The replacement (the hello example) reads its address from argv[1], like the fixture.
    let server = Spec::fixture().bin(&app).arg("127.0.0.1:0").start();
    let addr = server.addr();
    let old = server.current().pid;
    assert!(get(&addr, "/").unwrap().1.starts_with("pid="));

    // Deploy: write the new binary beside the old one, then rename it over.
    let staged = dir.path().join("app.new");
    std::fs::copy(support::example("hello"), &staged).unwrap();
    std::fs::rename(&staged, &app).unwrap();
    signal_pid(old, Signal::SIGHUP);

    let body = server.eventually("the new binary serves", Duration::from_secs(20), || {
        let body = get(&addr, "/").map(|r| r.1).unwrap_or_default();
        body.starts_with("Hello from pid").then_some(body)
    });
    assert!(body.contains("started by reload: true"), "{body}");
}

#[test]
fn an_inherited_socket_that_is_no_longer_registered_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let only_first = dir.path().join("only-first");
    let mut server = Spec::fixture()
        .arg("127.0.0.1:0")
        .arg("127.0.0.1:0")
        .only_first_file(&only_first)
        .start();
    let old = server.current();
    std::fs::write(&only_first, "").unwrap();
    let new = server.reload(Signal::SIGHUP);
    assert_eq!(new.addrs, old.addrs[..1]);
    server.wait_exit(old.pid, Duration::from_secs(10)).unwrap();
    assert!(server
        .log()
        .contains("inherited socket matches no registration; closing it"));
    assert!(
        std::net::TcpStream::connect(&old.addrs[1]).is_err(),
        "the dropped address still listens"
    );
    assert_eq!(get(&old.addrs[0], "/").unwrap().0, 200);
}
