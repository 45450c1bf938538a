//! Sockets and descriptors endless hands over without serving them: a UDP
//! echo and a TCP protocol served by the program itself, and a memfd, all
//! carried across reloads under load.

use endless_tests as support;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{get, Spec};

/// A parsed `EXTRAS pid=P udp=A tcp=B count=N` line.
#[derive(Debug, PartialEq)]
struct Extras {
    pid: u32,
    udp: String,
    tcp: String,
    count: u64,
}

fn extras(server: &support::Proc) -> Vec<Extras> {
    server
        .lines()
        .iter()
        .filter_map(|l| l.strip_prefix("EXTRAS "))
        .map(|l| {
            let field = |k: &str| {
                l.split(' ')
                    .find_map(|p| p.strip_prefix(k))
                    .unwrap()
                    .to_owned()
            };
            Extras {
                pid: field("pid=").parse().unwrap(),
                udp: field("udp="),
                tcp: field("tcp="),
                count: field("count=").parse().unwrap(),
            }
        })
        .collect()
}

#[derive(Debug, Default)]
struct Udp {
    sent: u64,
    answered: BTreeSet<u64>,
    pids: BTreeSet<String>,
}

/// Sends numbered datagrams to `addr` every 2 ms until `stop`, and records
/// the answers (`PID:N`) until `stop` and a last second have passed.
fn udp_client(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Udp> {
    std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stats = Arc::new(Mutex::new(Udp::default()));
        let reader = {
            let socket = socket.try_clone().unwrap();
            let stats = stats.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut until = None;
                loop {
                    if stop.load(Ordering::Relaxed) && until.is_none() {
                        until = Some(Instant::now() + Duration::from_secs(1));
                    }
                    if until.is_some_and(|u| Instant::now() >= u) {
                        break;
                    }
                    if let Ok(n) = socket.recv(&mut buf) {
                        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let (pid, seq) = reply.split_once(':').unwrap();
                        let mut s = stats.lock().unwrap();
                        s.answered.insert(seq.parse().unwrap());
                        s.pids.insert(pid.to_owned());
                    }
                }
            })
        };
        let mut seq = 0u64;
        // Bounded: at most ten minutes of sending.
        while !stop.load(Ordering::Relaxed) && seq < 300_000 {
            let _ = socket.send(seq.to_string().as_bytes());
            seq += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        stats.lock().unwrap().sent = seq;
        reader.join().unwrap();
        Arc::try_unwrap(stats).unwrap().into_inner().unwrap()
    })
}

#[derive(Debug, Default)]
struct Tcp {
    ok: u64,
    refused: u64,
    other: Vec<String>,
}

/// Connects to `addr` over and over until `stop`; each connection must
/// bring `pid=P`.
fn tcp_client(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Tcp> {
    std::thread::spawn(move || {
        let mut stats = Tcp::default();
        let mut tries = 0;
        while !stop.load(Ordering::Relaxed) && tries < 1_000_000 {
            tries += 1;
            match TcpStream::connect(&addr) {
                Ok(mut c) => {
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut body = String::new();
                    match c.read_to_string(&mut body) {
                        Ok(_) if body.starts_with("pid=") => stats.ok += 1,
                        Ok(_) => stats.other.push(format!("bad answer {body:?}")),
                        Err(e) => stats.other.push(e.to_string()),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => stats.refused += 1,
                Err(e) => stats.other.push(e.to_string()),
            }
        }
        stats
    })
}

#[test]
fn udp_tcp_and_a_memfd_are_carried_across_20_reloads_with_nothing_lost() {
    let _heavy = support::heavy();
    let mut server = Spec::fixture().extras().start();
    let first = extras(&server);
    assert_eq!(first.len(), 1, "{}", server.report());
    let (udp_addr, tcp_addr) = (first[0].udp.clone(), first[0].tcp.clone());
    assert_eq!(first[0].count, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let udp = udp_client(udp_addr.clone(), stop.clone());
    let tcp = tcp_client(tcp_addr.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let reloads = 20;
    let mut pids = vec![server.current().pid];
    for i in 0..reloads {
        let signal = if i % 2 == 0 {
            Signal::SIGHUP
        } else {
            Signal::SIGUSR1
        };
        let old = server.current().pid;
        let next = server.reload(signal);
        pids.push(next.pid);
        server.assert_exited_0(old, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let udp = udp.join().unwrap();
    let tcp = tcp.join().unwrap();
    let lost = udp.sent - udp.answered.len() as u64;
    eprintln!(
        "{reloads} reloads: UDP {} sent, {} answered, {lost} lost, by {} generations; TCP {} ok, {} refused, {} other failures",
        udp.sent,
        udp.answered.len(),
        udp.pids.len(),
        tcp.ok,
        tcp.refused,
        tcp.other.len()
    );
    assert_eq!(lost, 0, "datagrams lost\n{}", server.report());
    assert!(udp.sent > 400, "too few datagrams: {}", udp.sent);
    assert!(udp.pids.len() > reloads / 2, "{:?}", udp.pids);
    assert_eq!(
        (tcp.refused, tcp.other.len()),
        (0, 0),
        "{:?}\n{}",
        tcp.other,
        server.report()
    );
    assert!(tcp.ok > 100, "too few connections: {}", tcp.ok);

    // Every generation had the same sockets, and the memfd's counter went
    // through all of them.
    let all = extras(&server);
    assert_eq!(all.len(), reloads + 1, "{}", server.report());
    for (i, e) in all.iter().enumerate() {
        assert_eq!((&e.udp, &e.tcp), (&udp_addr, &tcp_addr));
        assert_eq!(e.count, i as u64 + 1, "{all:?}");
    }
    assert_eq!(all.last().unwrap().pid, *pids.last().unwrap());

    // Nothing leaks to what the program spawns.
    let (_, probe) = get(&server.addr(), "/spawn").unwrap();
    assert_eq!(probe.trim(), "PROBE reloaded=false sockets=[]");
}

#[test]
fn asking_twice_for_one_name_is_an_error_naming_it() {
    let msg = support::start_error(Spec::fixture().extras().extras_twice());
    assert_eq!(msg, "invalid sockets: \"echo-udp\" asked for twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_after_run_started_is_an_error_naming_it() {
    use hyper::service::service_fn;
    let server = endless::Server::new().register(
        "127.0.0.1:0",
        service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
        }),
    );
    let handle = server.handle();
    let running = tokio::spawn(server.run());
    handle.listening().await.unwrap();
    let err = endless::sockets::udp("late", "127.0.0.1:0").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid sockets: \"late\" asked for after Server::run started; ask for it before"
    );
    assert!(!endless::sockets::is_draining());
    handle.stop();
    running.await.unwrap().unwrap();
    assert!(endless::sockets::is_draining());
}
