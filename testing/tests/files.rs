//! Files the server creates or removes next to other people's files: the PID
//! file, Unix socket files. It must never be tricked into touching a file
//! that is not its own.

use endless_tests as support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{signal_pid, Spec};

#[test]
fn the_pid_file_is_not_redirected_by_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    // The start delay gives us time to plant a symlink where an attacker
    // who can write the directory would: at every temporary name the server
    // could predict from its PID.
    let mut server = Spec::fixture()
        .pid_file(&pid_file)
        .start_delay(Duration::from_millis(500))
        .spawn();
    let pid = server.first_pid();
    for name in [
        format!("app.tmp.{pid}"),
        format!("app.pid.tmp.{pid}"),
        format!(".app.pid.tmp.{pid}"),
    ] {
        std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
    }
    server
        .wait_line(Duration::from_secs(20), |l| l.starts_with("READY"))
        .unwrap_or_else(|| panic!("server did not start:\n{}", server.report()));

    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let meta = std::fs::symlink_metadata(&pid_file).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\n")
    );

    signal_pid(pid, Signal::SIGTERM);
    server.wait_exit(pid, Duration::from_secs(10)).unwrap();
    assert!(!pid_file.exists());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    // Only the planted links and the victim are left: no temporary file.
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 4);
}

/// Whether something listens at the Unix socket `path`.
fn answers(path: &std::path::Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

#[test]
fn an_activated_socket_file_is_never_unlinked_even_after_reloads() {
    let dir = tempfile::tempdir().unwrap();
    for reloads in [0, 2] {
        let path = dir.path().join(format!("activated-{reloads}.sock"));
        // Our copy plays the socket unit, which keeps listening after the
        // service stops.
        let unit = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let addr = format!("unix:{}", path.display());
        let mut server = Spec::fixture()
            .arg(&addr)
            .activated(vec![std::os::fd::AsRawFd::as_raw_fd(&unit)], "")
            .start();
        let mut last = server.current().pid;
        for _ in 0..reloads {
            last = server.reload(Signal::SIGHUP).pid;
        }
        support::wait_served_by(&addr, last);
        signal_pid(last, Signal::SIGTERM);
        server.wait_exit(last, Duration::from_secs(10)).unwrap();
        assert!(
            server
                .lines()
                .iter()
                .any(|l| l == &format!("EXIT pid={last} ok")),
            "{}",
            server.report()
        );
        assert!(
            path.exists(),
            "after {reloads} reloads the final stop unlinked the socket unit's file"
        );
        assert!(answers(&path));
    }
}

#[test]
fn a_socket_file_replaced_during_the_drain_is_left_to_its_new_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let addr = format!("unix:{}", path.display());
    let mut server = Spec::fixture().arg(&addr).start();
    let pid = server.current().pid;
    // A slow request keeps the drain going while another server takes the
    // path over, as it would from a socket file nobody answers on.
    let slow = support::get_in_background(&addr, "/sleep/1500");
    std::thread::sleep(Duration::from_millis(200));
    signal_pid(pid, Signal::SIGTERM);
    server.wait_log("draining", Duration::from_secs(5));
    // The accept loop lets go of the socket as soon as it sees the drain.
    support::wait::eventually(
        "the draining server stops accepting",
        Duration::from_secs(5),
        || !answers(&path),
    );
    std::fs::remove_file(&path).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&path).unwrap();

    assert_eq!(slow.join().unwrap().unwrap().0, 200);
    server.wait_exit(pid, Duration::from_secs(10)).unwrap();
    assert!(
        path.exists(),
        "the final stop unlinked another server's socket file"
    );
    assert!(answers(&path));
    drop(other);
}

#[test]
fn a_busy_ipv6_port_is_an_error_not_a_silent_ipv4_only_server() {
    // Something else serves IPv6 on the port (v6-only, so IPv4 stays free).
    let other = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    other.set_only_v6(true).unwrap();
    other
        .bind(&"[::1]:0".parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    other.listen(8).unwrap();
    let port = other.local_addr().unwrap().as_socket().unwrap().port();
    let got = support::start_error(Spec::fixture().arg(format!(":{port}")));
    assert!(
        got.starts_with(&format!("cannot listen on :{port}: [::]:{port}: "))
            && got.contains("in use"),
        "{got}"
    );
}

/// A port free on both loopback addresses.
fn free_loopback_port() -> u16 {
    for _ in 0..50 {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

#[test]
fn a_host_name_is_served_on_every_address_it_resolves_to_across_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_loopback_port();
    let name = format!("localhost:{port}");
    // This host may resolve `localhost` to 127.0.0.1 alone. Where we may
    // (root, mount namespaces), the fixture gets an /etc/hosts of its own
    // that names both loopback addresses, IPv6 first as glibc returns them:
    // the case where binding only the first address refuses IPv4 clients.
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "::1 localhost\n127.0.0.1 localhost\n").unwrap();
    let private_hosts = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let (spec, want): (Spec, Vec<std::net::SocketAddr>) = if private_hosts {
        let spec = Spec::new("unshare")
            .arg("--mount")
            .arg("/bin/sh")
            .arg("-c")
            .arg(format!(
                "mount --bind '{}' /etc/hosts && exec \"$0\" \"$@\"",
                hosts.display()
            ))
            .arg(support::fixture().to_str().unwrap())
            .arg(&name);
        let want = vec![
            format!("[::1]:{port}").parse().unwrap(),
            format!("127.0.0.1:{port}").parse().unwrap(),
        ];
        (spec, want)
    } else {
        use std::net::ToSocketAddrs;
        let mut want: Vec<_> = name.to_socket_addrs().unwrap().collect();
        want.dedup();
        (Spec::fixture().arg(&name), want)
    };
    let want_strs: Vec<String> = want.iter().map(|a| a.to_string()).collect();

    let mut server = spec.start();
    let first = server.current();
    assert_eq!(first.addrs, want_strs, "{}", server.report());
    for a in &want_strs {
        assert_eq!(
            support::served_pid(&support::get(a, "/").unwrap().1),
            first.pid
        );
    }
    // Every socket is handed over under the one name and adopted again.
    let next = server.reload(Signal::SIGHUP);
    assert_eq!(next.addrs, want_strs, "{}", server.report());
    server
        .wait_exit(first.pid, Duration::from_secs(10))
        .unwrap();
    for a in &want_strs {
        support::wait_served_by(a, next.pid);
    }
    assert!(
        !server.log().contains("matches no registration"),
        "{}",
        server.report()
    );
}

#[test]
fn a_resolver_that_never_answers_is_an_error_within_the_timeout() {
    // Needs a resolver we control: a private resolv.conf (root, mount
    // namespaces) naming 127.0.0.1, where we hold UDP port 53 and never
    // answer, with a resolver timeout far beyond ours.
    let Ok(silent) = std::net::UdpSocket::bind("127.0.0.1:53") else {
        eprintln!("skipped: UDP 127.0.0.1:53 is taken or not ours to bind");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("resolv.conf");
    std::fs::write(
        &conf,
        "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n",
    )
    .unwrap();
    let private = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !private {
        eprintln!("skipped: no mount namespace for a private resolv.conf");
        return;
    }
    let spec = Spec::new("unshare")
        .arg("--mount")
        .arg("/bin/sh")
        .arg("-c")
        .arg(format!(
            "mount --bind '{}' /etc/resolv.conf && exec \"$0\" \"$@\"",
            conf.display()
        ))
        .arg(support::fixture().to_str().unwrap())
        .arg("never-answered.test:0");
    let t = std::time::Instant::now();
    let got = support::start_error(spec);
    let took = t.elapsed();
    assert_eq!(
        got,
        "invalid address \"never-answered.test:0\": cannot resolve: no answer within 5s"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    drop(silent);
}
