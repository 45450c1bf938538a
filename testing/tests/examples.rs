//! The examples serve, reload and stop as their docs say.

use endless_tests as support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{get, signal_pid, Spec};

fn serves_and_reloads(example: &str, expect: &str) {
    let mut p = Spec::fixture()
        .bin(support::example(example))
        .arg("127.0.0.1:0")
        .spawn();
    let addr = p.listening_addr(0);
    let first = p.first_pid();
    let (status, body) = get(&addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(expect), "{body}");
    assert!(body.contains(&first.to_string()), "{body}");

    signal_pid(first, Signal::SIGUSR1);
    assert_eq!(p.listening_addr(1), addr, "the reload changed the address");
    p.wait_exit(first, Duration::from_secs(25)).unwrap();
    let (_, body) = get(&addr, "/").unwrap();
    assert!(!body.contains(&first.to_string()), "{body}");
}

#[test]
fn hello_serves_and_reloads() {
    serves_and_reloads("hello", "Hello from pid");
}

#[test]
fn multi_serves_three_listeners_across_a_reload() {
    let mut p = Spec::fixture()
        .bin(support::example("multi"))
        .arg("127.0.0.1:0")
        .spawn();
    let line = p
        .wait_line(Duration::from_secs(20), |l| l.starts_with("multi: pid"))
        .unwrap_or_else(|| panic!("{}", p.report()));
    let urls: Vec<String> = line
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .map(|u| {
            u.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    assert_eq!(urls.len(), 3, "{line}");
    let first = p.first_pid();
    assert!(get(&urls[0], "/")
        .unwrap()
        .1
        .starts_with("public: request 1 of pid"));
    assert!(get(&urls[1], "/").unwrap().1.starts_with("admin: pid"));
    assert_eq!(get(&urls[2], "/").unwrap().1, "requests_total 1\n");

    signal_pid(first, Signal::SIGHUP);
    let again = p
        .wait_line(Duration::from_secs(20), |l| {
            l.starts_with("multi: pid") && l != line
        })
        .unwrap_or_else(|| panic!("{}", p.report()));
    assert!(
        again.ends_with(&line[line.find("serving").unwrap()..]),
        "addresses changed: {again}"
    );
    p.wait_exit(first, Duration::from_secs(25)).unwrap();
    for url in &urls {
        assert_eq!(get(url, "/").unwrap().0, 200);
    }
}

#[test]
fn udp_echo_keeps_its_socket_across_a_reload() {
    let mut p = Spec::fixture()
        .bin(support::example("udp_echo"))
        .arg("127.0.0.1:0")
        .arg("127.0.0.1:0")
        .spawn();
    let line = p
        .wait_line(Duration::from_secs(20), |l| l.starts_with("udp_echo: pid"))
        .unwrap_or_else(|| panic!("{}", p.report()));
    let udp_addr = line.rsplit(' ').next().unwrap().to_owned();
    let http = p.listening_addr(0);
    let echo = |pid: u32| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(b"hi", &udp_addr).unwrap();
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], format!("{pid}: hi").as_bytes());
    };
    let first = p.first_pid();
    echo(first);
    assert!(get(&http, "/").unwrap().1.contains(&first.to_string()));

    signal_pid(first, Signal::SIGHUP);
    let again = p
        .wait_line(Duration::from_secs(20), |l| {
            l.starts_with("udp_echo: pid") && l != line
        })
        .unwrap_or_else(|| panic!("{}", p.report()));
    assert!(again.ends_with(&udp_addr), "the port changed: {again}");
    p.wait_exit(first, Duration::from_secs(25)).unwrap();
    let pid: u32 = again.split(' ').nth(2).unwrap().parse().unwrap();
    echo(pid);
}
