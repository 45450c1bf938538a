//! Listeners the program makes itself (`Server::register_listener`, the
//! fixture's `given:ADDR`): made once, in the first generation, then
//! handed over at every reload like endless's own, under real load.

use endless_tests as support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::load::{self, Mode};
use support::tls::{self, Trust};
use support::{get, served_pid, signal_pid, Proc, Spec};

/// The `MADE pid=P name=N` lines: each time a closure made a listener.
fn made(server: &Proc) -> Vec<String> {
    server
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("MADE "))
        .collect()
}

/// The descriptor of `pid` that is the TCP socket listening on `port`, and
/// its open flags (from `/proc/PID/fdinfo`).
fn listening_fd(pid: u32, port: u16) -> (i32, u32) {
    // The socket's inode, from the kernel's table of TCP sockets.
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let inode = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f[1].ends_with(&format!(":{port:04X}")) && f[3] == "0A")
        .map(|f| f[9].to_owned())
        .unwrap_or_else(|| panic!("no listening socket on port {port}"));
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let link = std::fs::read_link(entry.path()).unwrap_or_default();
        if link.to_string_lossy() != target {
            continue;
        }
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        return (fd, flags);
    }
    panic!("{pid} holds no descriptor of the socket on port {port}");
}

/// `O_CLOEXEC` as `/proc/PID/fdinfo` shows it.
const O_CLOEXEC: u32 = 0o2_000_000;

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Reloads `server` `n` times under `mode` load on `addr` and checks: not
/// one failed request, every generation on the same address, the closure
/// called once (in the first generation), and the socket close-on-exec in
/// every generation (only the hand-over passes it on).
fn reloads_under_load(server: &Proc, load: load::Load, n: usize) {
    let first = server.current();
    let addr = first.addrs[0].clone();
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![first.pid];
    for i in 0..n {
        let signal = [Signal::SIGHUP, Signal::SIGUSR1][i % 2];
        let next = server.reload(signal);
        assert_eq!(next.addrs, first.addrs, "the same address after reload {i}");
        let (fd, flags) = listening_fd(next.pid, port(&addr));
        assert_ne!(
            flags & O_CLOEXEC,
            0,
            "fd {fd} of {} is close-on-exec",
            next.pid
        );
        pids.push(next.pid);
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.finish();
    eprintln!(
        "{n} reloads: {} ok, {} failed, {} retried",
        stats.ok, stats.failed, stats.retried
    );
    assert_eq!(
        stats.failed,
        0,
        "failed requests: {:?}\n{}",
        stats.errors,
        server.report()
    );
    assert!(
        stats.ok > 500,
        "too little load to mean anything: {stats:?}"
    );
    let made = made(server);
    assert_eq!(
        made.len(),
        1,
        "only one generation makes the listener: {made:?}"
    );
    assert!(
        made[0].starts_with(&format!("MADE pid={} ", first.pid)),
        "the first one: {made:?}"
    );
    let last = *pids.last().unwrap();
    let served: Vec<u32> = stats.bodies.keys().map(|b| served_pid(b)).collect();
    assert!(served.contains(&last), "{last} served nothing: {served:?}");
}

/// A TCP listener the program made itself, reloaded 8 times under
/// `Connection: close` load (every request a new connection, so the accept
/// queue is handed over with clients in it): 0 failed requests, the same
/// port, the closure called once, the socket close-on-exec in every
/// generation, and nothing a handler spawns inherits it.
#[test]
fn a_tcp_listener_the_program_made_is_handed_over_under_load() {
    let _heavy = support::heavy();
    let rt = load::runtime();
    let server = Spec::fixture().arg("given:127.0.0.1:0").start();
    let addr = server.addr();
    let (fd, flags) = listening_fd(server.current().pid, port(&addr));
    assert_ne!(flags & O_CLOEXEC, 0, "fd {fd} of the first generation");
    let load = load::start(rt.handle(), &addr, Mode::Close, 32, "/");
    reloads_under_load(&server, load, 8);
    // A process spawned by the serving generation inherits no socket.
    let (status, probe) = get(&addr, "/spawn").unwrap();
    assert_eq!(status, 200);
    assert_eq!(probe.trim(), "PROBE reloaded=false sockets=[]");
}

/// The same over HTTPS (`register_listener_tls`), under keep-alive load.
#[test]
fn an_https_listener_the_program_made_is_handed_over_under_load() {
    let _heavy = support::heavy();
    let rt = load::runtime();
    let server = Spec::fixture()
        .arg("given-tls:127.0.0.1:0")
        .tls(tls::CERT, tls::KEY)
        .start();
    let addr = server.addr();
    let client = tls::client(Trust::TestCert, &[b"http/1.1"]);
    let load = load::start_tls(rt.handle(), &addr, Mode::KeepAlive, 16, "/", client);
    reloads_under_load(&server, load, 4);
}

/// A Unix listener the program made itself: handed over (the closure runs
/// once), and its file, which became the server's, removed at the final
/// stop.
#[test]
fn a_unix_listener_the_program_made_is_handed_over_and_its_file_removed_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("given.sock");
    let mut server = Spec::fixture()
        .arg(format!("given-unix:{}", path.display()))
        .start();
    let addr = format!("unix:{}", path.display());
    assert_eq!(server.current().addrs, vec![addr.clone()]);
    let first = server.current().pid;
    let (_, body) = get(&addr, "/").unwrap();
    assert_eq!(served_pid(&body), first);
    let next = server.reload(Signal::SIGUSR1);
    support::wait_served_by(&addr, next.pid);
    assert_eq!(made(&server).len(), 1, "{}", server.report());
    server.assert_exited_0(first, Duration::from_secs(15));
    signal_pid(next.pid, Signal::SIGTERM);
    server.assert_exited_0(next.pid, Duration::from_secs(15));
    assert!(
        !path.exists(),
        "the socket file is removed at the final stop"
    );
}

/// A closure that fails (here: its address is taken) makes `run` fail
/// with an error naming the listener.
#[test]
fn a_closure_that_fails_is_an_error_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let msg = support::start_error(Spec::fixture().arg(format!("given:{addr}")));
    assert!(
        msg.starts_with(&format!("cannot listen on {addr}: ")),
        "{msg}"
    );
    assert!(msg.contains("in use"), "{msg}");
}
