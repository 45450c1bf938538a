//! Living with process managers: socket activation, the PID file, and Unix
//! domain sockets.

use endless_tests as support;

use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::load::{self, Mode};
use support::{get, served_pid, signal_pid, start_error, wait_served_by, Spec};

#[test]
fn activated_sockets_are_adopted_by_address_and_survive_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let by_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let by_name = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sock_path = dir.path().join("activated.sock");
    let unix = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let addr = by_addr.local_addr().unwrap().to_string();
    let named = by_name.local_addr().unwrap().to_string();
    let unix_addr = format!("unix:{}", sock_path.display());

    // Names from LISTEN_FDNAMES cannot hold ':' (it is the separator, and
    // systemd forbids it in FileDescriptorName=), while every endless
    // address has one: activated sockets are matched by address, in
    // whatever order systemd passes them.
    let server = Spec::fixture()
        .arg(&addr)
        .arg(&named)
        .arg(&unix_addr)
        .activated(
            vec![by_name.as_raw_fd(), unix.as_raw_fd(), by_addr.as_raw_fd()],
            "LISTEN_FDNAMES=admin.socket:unix.socket:web.socket",
        )
        .start();
    // We still hold our copies: had the server tried to bind instead of
    // adopting, it would have failed with "address in use".
    let first = server.current();
    assert_eq!(
        first.addrs,
        vec![addr.clone(), named.clone(), unix_addr.clone()]
    );
    drop((by_addr, by_name, unix));
    for a in &first.addrs {
        assert_eq!(served_pid(&get(a, "/").unwrap().1), first.pid);
    }
    // And they are handed on at every reload as usual.
    for _ in 0..2 {
        let next = server.reload(Signal::SIGHUP);
        assert_eq!(next.addrs, first.addrs);
        for a in &next.addrs {
            wait_served_by(a, next.pid);
        }
    }
}

#[test]
fn activation_meant_for_another_process_is_ignored() {
    let server = Spec::fixture()
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "3")
        .start();
    assert!(!server.current().reloaded);
    assert_eq!(get(&server.addr(), "/").unwrap().0, 200);
}

#[test]
fn bad_activation_values_are_errors_naming_the_fd() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("not-a-socket")).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let unbound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let good = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cases = [
        (
            vec![file.as_raw_fd()],
            "",
            "cannot adopt inherited fd 3: not a socket",
        ),
        (
            vec![udp.as_raw_fd()],
            "",
            "cannot adopt inherited fd 3: not a stream socket",
        ),
        (
            vec![unbound.as_raw_fd()],
            "",
            "cannot adopt inherited fd 3: not a listening socket",
        ),
        (
            vec![good.as_raw_fd()],
            "LISTEN_FDNAMES=a:b",
            "cannot adopt inherited fd 3: LISTEN_FDNAMES names 2 sockets but LISTEN_FDS=1",
        ),
        (
            vec![good.as_raw_fd()],
            "LISTEN_FDS=lots",
            "cannot adopt inherited fd 3: LISTEN_FDS=\"lots\" is not a count from 0 to 1024",
        ),
        (
            // More FDs claimed than passed: the first one missing is named.
            vec![good.as_raw_fd()],
            "LISTEN_FDS=900",
            "cannot adopt inherited fd ",
        ),
    ];
    for (fds, extra, want) in cases {
        let got = start_error(Spec::fixture().activated(fds, extra));
        assert!(got.starts_with(want), "{got}");
    }
}

#[test]
fn the_pid_file_follows_the_serving_generation_and_goes_at_the_final_stop() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let crash = dir.path().join("crash");
    let mut server = Spec::fixture()
        .pid_file(&pid_file)
        .crash_file(&crash)
        .start();
    let read = || std::fs::read_to_string(&pid_file).unwrap();
    let gen0 = server.current().pid;
    assert_eq!(read(), format!("{gen0}\n"));

    let gen1 = server.reload(Signal::SIGHUP).pid;
    server.wait_exit(gen0, Duration::from_secs(10)).unwrap();
    assert_eq!(read(), format!("{gen1}\n"));

    // A failed reload leaves it as it was.
    std::fs::write(&crash, "").unwrap();
    let (status, _) = get(&server.addr(), "/reload").unwrap();
    assert_eq!(status, 500);
    assert_eq!(read(), format!("{gen1}\n"));
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    signal_pid(gen1, Signal::SIGTERM);
    server.wait_exit(gen1, Duration::from_secs(10)).unwrap();
    assert!(!pid_file.exists(), "the final stop leaves the PID file");
}

#[test]
fn a_bad_pid_file_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("app.pid");
    assert_eq!(
        start_error(Spec::fixture().pid_file(&path)),
        format!(
            "cannot write the PID file {}: No such file or directory (os error 2)",
            path.display()
        )
    );
}

#[test]
fn unix_sockets_serve_and_reload_under_load_without_loss() {
    let _heavy = support::heavy();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let unix_addr = format!("unix:{}", path.display());
    let mut server = Spec::fixture().arg(&unix_addr).start();
    assert_eq!(server.addr(), unix_addr);
    let rt = load::runtime();
    let l = load::start(rt.handle(), &unix_addr, Mode::KeepAlive, 16, "/");
    std::thread::sleep(Duration::from_millis(200));
    let mut pids = vec![server.current().pid];
    for _ in 0..10 {
        pids.push(server.reload(Signal::SIGHUP).pid);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let stats = l.finish();
    assert_eq!(stats.failed, 0, "{:?}\n{}", stats.errors, server.report());
    assert!(stats.ok > 500, "{stats:?}");
    // Draining generations never unlinked the path.
    for pid in &pids[..pids.len() - 1] {
        server.assert_exited_0(*pid, Duration::from_secs(10));
    }
    assert!(path.exists());
    let last = *pids.last().unwrap();
    wait_served_by(&unix_addr, last);

    // The final stop removes it.
    signal_pid(last, Signal::SIGTERM);
    server.assert_exited_0(last, Duration::from_secs(10));
    assert!(!path.exists(), "the final stop leaves the socket file");
}

#[test]
fn a_stale_socket_file_is_replaced_but_a_live_one_or_a_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    // Stale: a socket file nobody listens on (its server crashed).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let server = Spec::fixture()
        .arg(format!("unix:{}", stale.display()))
        .start();
    assert_eq!(get(&server.addr(), "/").unwrap().0, 200);
    assert!(server.log().contains("replacing a stale socket file"));

    // Live: another process listens on it.
    let live = dir.path().join("live.sock");
    let _other = std::os::unix::net::UnixListener::bind(&live).unwrap();
    assert_eq!(
        start_error(Spec::fixture().arg(format!("unix:{}", live.display()))),
        format!(
            "cannot listen on unix:{}: another process is listening on it",
            live.display()
        )
    );

    // Not a socket at all: never deleted.
    let file = dir.path().join("data.txt");
    std::fs::write(&file, "precious").unwrap();
    assert_eq!(
        start_error(Spec::fixture().arg(format!("unix:{}", file.display()))),
        format!(
            "cannot listen on unix:{}: the path exists and is not a socket",
            file.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}
