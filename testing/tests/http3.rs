//! HTTP/3 across real reloads (feature `http3`): real processes, real
//! signals, a real HTTP/3 client (quinn + h3, as a browser's stack would
//! be) on 127.0.0.1.
//!
//! `cargo test --features http3 --test http3`
#![cfg(all(feature = "http3", target_os = "linux"))]

use endless_tests as support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use nix::sys::signal::Signal;
use support::tls::{self, Trust};
use support::{signal_pid, Proc, Spec};

/// A UDP port nobody uses now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The fixture serving HTTP/3 on a UDP port (and HTTPS on a TCP one), with
/// the settings `with` adds.
fn start(with: impl FnOnce(Spec<'static>) -> Spec<'static>) -> (Proc, SocketAddr) {
    let port = free_udp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let spec = Spec::fixture()
        .arg(format!("h3:{addr}"))
        .arg("tls:127.0.0.1:0")
        .tls(tls::CERT, tls::KEY);
    (with(spec).start(), addr)
}

fn client_endpoint() -> quinn::Endpoint {
    let mut tls = tls::builder(Trust::TestCert, &[&rustls::version::TLS13]).with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<SendRequest, String> {
    let conn = endpoint
        .connect(addr, "localhost")
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .map_err(|_| "connect: timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| format!("h3: {e}"))?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(send)
}

/// How one request ended.
#[derive(Debug)]
enum Outcome {
    Ok(String),
    /// Refused before it was sent (the connection is going away): sent
    /// again on a new connection, as clients do.
    NotSent,
    Failed(String),
}

async fn get(send: &mut SendRequest, path: &str) -> Outcome {
    let req = hyper::Request::get(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let mut stream = match send.send_request(req).await {
        Ok(s) => s,
        Err(h3::error::StreamError::RemoteClosing { .. }) => return Outcome::NotSent,
        Err(e) if e.is_h3_no_error() => return Outcome::NotSent,
        Err(e) => return Outcome::Failed(format!("send: {e}")),
    };
    let read = async {
        stream.finish().await.map_err(|e| format!("finish: {e}"))?;
        let resp = stream
            .recv_response()
            .await
            .map_err(|e| format!("response: {e}"))?;
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| format!("body: {e}"))? {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                body.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        match resp.status().as_u16() {
            200 => Ok(String::from_utf8_lossy(&body).into_owned()),
            s => Err(format!("status {s}")),
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), read).await {
        Ok(Ok(body)) => Outcome::Ok(body),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed("timed out".into()),
    }
}

/// What the load saw: bodies by count, failures with their reasons.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    not_sent: u64,
    connections: u64,
    failed: Vec<String>,
    by_pid: BTreeMap<u32, u64>,
    /// When each PID first answered.
    first: BTreeMap<u32, Instant>,
}

/// `clients` HTTP/3 connections, each sending `GET /` one after the other
/// until `stop`; a connection that is going away is replaced.
async fn load(addr: SocketAddr, clients: usize, stop: Arc<AtomicBool>) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let endpoint = client_endpoint();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (endpoint, seen, stop) = (endpoint.clone(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<SendRequest> = None;
            while !stop.load(Ordering::Relaxed) {
                let send = match conn.as_mut() {
                    Some(s) => s,
                    None => match connect(&endpoint, addr).await {
                        Ok(s) => {
                            seen.lock().unwrap().connections += 1;
                            conn.insert(s)
                        }
                        Err(e) => {
                            seen.lock().unwrap().failed.push(e);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                match get(send, "/").await {
                    Outcome::Ok(body) => {
                        let mut s = seen.lock().unwrap();
                        s.ok += 1;
                        let pid = support::served_pid(&body);
                        *s.by_pid.entry(pid).or_default() += 1;
                        s.first.entry(pid).or_insert_with(Instant::now);
                    }
                    Outcome::NotSent => {
                        seen.lock().unwrap().not_sent += 1;
                        conn = None;
                    }
                    Outcome::Failed(e) => {
                        seen.lock().unwrap().failed.push(e);
                        conn = None;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    endpoint.wait_idle().await;
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// 8 HTTP/3 connections sending requests the whole time, across 10
/// reloads: not one request fails, every generation serves, and every old
/// generation exits once its connections are gone.
#[test]
fn ten_reloads_under_http3_load_lose_nothing() {
    let _heavy = support::heavy();
    let (mut server, addr) = start(|s| s.probation(Duration::from_millis(300)));
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let running = rt.spawn(load(addr, 8, stop.clone()));
    std::thread::sleep(Duration::from_millis(500));
    let mut pids = vec![server.current().pid];
    for _ in 0..10 {
        pids.push(server.reload(Signal::SIGHUP).pid);
        std::thread::sleep(Duration::from_millis(400));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = rt.block_on(running).unwrap();
    eprintln!(
        "http3: 10 reloads, {} ok, {} refused before sending (sent again), {} connections, {} failed; by pid {:?}",
        seen.ok,
        seen.not_sent,
        seen.connections,
        seen.failed.len(),
        seen.by_pid
    );
    assert!(
        seen.failed.is_empty(),
        "{:?}\n{}",
        seen.failed,
        server.report()
    );
    assert!(seen.ok > 500, "{seen:?}");
    for pid in &pids {
        assert!(
            seen.by_pid.contains_key(pid),
            "{pid} served nothing: {seen:?}"
        );
    }
    let last = *pids.last().unwrap();
    for pid in &pids[..pids.len() - 1] {
        server
            .wait_exit(*pid, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{pid} did not exit:\n{}", server.report()));
    }
    assert_eq!(server.current().pid, last);
}

/// A 3 s request started before a reload finishes, on the old generation,
/// which then exits (long before its 20 s stop timeout).
#[test]
fn a_long_request_finishes_on_the_old_generation() {
    let (mut server, addr) = start(|s| s.stop_timeout(Duration::from_secs(20)));
    let old = server.current().pid;
    let rt = runtime();
    let slow = rt.spawn(async move {
        let endpoint = client_endpoint();
        let mut send = connect(&endpoint, addr).await.unwrap();
        let started = Instant::now();
        let outcome = get(&mut send, "/sleep/3000").await;
        drop(send);
        endpoint.close(0u32.into(), b"done");
        (outcome, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let new = server.reload(Signal::SIGHUP).pid;
    let (outcome, took) = rt.block_on(slow).unwrap();
    match outcome {
        Outcome::Ok(body) => assert_eq!(body, format!("slept pid={old}\n")),
        other => panic!("{other:?}\n{}", server.report()),
    }
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    let exited = Instant::now();
    server
        .wait_exit(old, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the old generation stayed:\n{}", server.report()));
    assert!(exited.elapsed() < Duration::from_secs(10));
    // The new one serves HTTP/3.
    let body = rt.block_on(async move {
        let endpoint = client_endpoint();
        let mut send = connect(&endpoint, addr).await.unwrap();
        get(&mut send, "/").await
    });
    match body {
        Outcome::Ok(body) => assert_eq!(support::served_pid(&body), new),
        other => panic!("{other:?}"),
    }
}

/// A new generation that crashes at start, five times under HTTP/3 load:
/// not one request fails, and the old generation serves on.
#[test]
fn a_new_generation_that_crashes_costs_nothing() {
    let _heavy = support::heavy();
    let dir = tempfile::tempdir().unwrap();
    let crash = dir.path().join("crash");
    std::fs::write(&crash, "").unwrap();
    let (server, addr) = start(|s| s.crash_file(&crash));
    let pid = server.current().pid;
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let running = rt.spawn(load(addr, 4, stop.clone()));
    std::thread::sleep(Duration::from_millis(300));
    for n in 1..=5 {
        signal_pid(pid, Signal::SIGHUP);
        server
            .wait_lines(Duration::from_secs(10), |l| {
                (l.iter().filter(|l| l.starts_with("CRASH")).count() >= n).then_some(())
            })
            .unwrap_or_else(|| panic!("no crash {n}:\n{}", server.report()));
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = rt.block_on(running).unwrap();
    eprintln!(
        "http3: 5 crashed generations, {} ok, {} failed",
        seen.ok,
        seen.failed.len()
    );
    assert!(
        seen.failed.is_empty(),
        "{:?}\n{}",
        seen.failed,
        server.report()
    );
    assert_eq!(seen.by_pid.keys().copied().collect::<Vec<_>>(), vec![pid]);
}

/// Junk on the UDP port between and during reloads (datagrams of every
/// size, truncated headers, connection IDs of generations that are gone or
/// never were, forged first packets): dropped, and nothing fails.
#[test]
fn junk_datagrams_are_dropped_and_cost_nothing() {
    let _heavy = support::heavy();
    let (server, addr) = start(|s| s.probation(Duration::ZERO));
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let running = rt.spawn(load(addr, 4, stop.clone()));
    let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0;
    let mut junk = |round: u8| {
        for size in [0usize, 1, 5, 20, 21, 40, 1200, 1500, 65_000] {
            let mut d = vec![round; size];
            if let Some(first) = d.first_mut() {
                // Short header, then long header (Initial, Handshake).
                *first = [0x40, 0xc0, 0xe0][size % 3];
            }
            let _ = raw.send_to(&d, addr);
            sent += 1;
        }
        // A short-header packet whose connection ID names generation 200,
        // which never existed, and one naming generation 0 after it left.
        for tag in [200u8, 0] {
            let mut d = vec![0x40, tag];
            d.extend_from_slice(&[round; 60]);
            let _ = raw.send_to(&d, addr);
            sent += 1;
        }
    };
    for round in 0..5u8 {
        junk(round);
        server.reload(Signal::SIGHUP);
        junk(round);
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let seen = rt.block_on(running).unwrap();
    eprintln!(
        "http3: {sent} junk datagrams over 5 reloads, {} ok, {} failed",
        seen.ok,
        seen.failed.len()
    );
    assert!(
        seen.failed.is_empty(),
        "{:?}\n{}",
        seen.failed,
        server.report()
    );
    assert!(!server.log().contains("panicked"), "{}", server.report());
    assert!(seen.ok > 100, "{seen:?}");
}

/// HTTPS responses advertise HTTP/3 on its UDP port.
#[test]
fn https_responses_advertise_http3() {
    use std::io::{Read, Write};
    let (server, addr) = start(|s| s);
    let tls_addr = server.current().addrs[0].clone();
    let config = tls::client(Trust::TestCert, &[]);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = std::net::TcpStream::connect(&tls_addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let head = String::from_utf8_lossy(&response).to_lowercase();
    assert!(
        head.contains(&format!("alt-svc: h3=\":{}\"; ma=86400", addr.port())),
        "{head}"
    );
}

/// One `GET /` on a new HTTP/3 connection.
fn get_once(rt: &tokio::runtime::Runtime, addr: SocketAddr, path: &str) -> Outcome {
    let path = path.to_owned();
    rt.block_on(async move {
        let endpoint = client_endpoint();
        let outcome = match connect(&endpoint, addr).await {
            Ok(mut send) => get(&mut send, &path).await,
            Err(e) => Outcome::Failed(e),
        };
        endpoint.close(0u32.into(), b"done");
        outcome
    })
}

/// Waits until a new HTTP/3 connection is answered by `pid`.
fn wait_h3_served_by(rt: &tokio::runtime::Runtime, addr: SocketAddr, pid: u32, server: &Proc) {
    support::eventually(
        &format!("{pid} serves HTTP/3"),
        Duration::from_secs(20),
        || match get_once(rt, addr, "/") {
            Outcome::Ok(body) if support::served_pid(&body) == pid => Ok(()),
            other => Err(format!("{other:?}\n{}", server.report())),
        },
    )
}

/// A new generation killed within its probation: the old one serves
/// HTTP/3 again, new connections included.
#[test]
fn after_a_rollback_the_old_generation_serves_http3_again() {
    let (server, addr) = start(|s| s.probation(Duration::from_secs(8)));
    let rt = runtime();
    let old = server.current().pid;
    let new = server.reload(Signal::SIGHUP).pid;
    wait_h3_served_by(&rt, addr, new, &server);
    signal_pid(new, Signal::SIGKILL);
    wait_h3_served_by(&rt, addr, old, &server);
}

/// `keep_pid`: a request started before the reload finishes, and once the
/// temporary generation has drained, the original PID (re-executed) serves
/// HTTP/3 again.
#[test]
fn keep_pid_serves_http3_again_under_the_same_pid() {
    let (server, addr) = start(|s| s.keep_pid());
    let rt = runtime();
    let pid = server.current().pid;
    let slow = rt.spawn(async move {
        let endpoint = client_endpoint();
        let mut send = connect(&endpoint, addr).await.unwrap();
        get(&mut send, "/sleep/1500").await
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    let temporary = server.nth_ready(before + 1).pid;
    assert_ne!(temporary, pid);
    match rt.block_on(slow).unwrap() {
        Outcome::Ok(body) => assert_eq!(body, format!("slept pid={pid}\n")),
        other => panic!("{other:?}\n{}", server.report()),
    }
    wait_h3_served_by(&rt, addr, pid, &server);
}

/// `n` new HTTP/3 connections, one after the other, each with one `GET /`:
/// the outcomes that were not answered by `pid`.
fn not_served_by(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    pid: u32,
    n: usize,
) -> Vec<String> {
    (0..n)
        .filter_map(|_| match get_once(rt, addr, "/") {
            Outcome::Ok(body) if support::served_pid(&body) == pid => None,
            other => Some(format!("{other:?}")),
        })
        .collect()
}

/// A request on a connection of its own, in the background.
fn get_in_background(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    path: &str,
) -> tokio::task::JoinHandle<Outcome> {
    let path = path.to_owned();
    rt.spawn(async move {
        let endpoint = client_endpoint();
        let outcome = match connect(&endpoint, addr).await {
            Ok(mut send) => get(&mut send, &path).await,
            Err(e) => Outcome::Failed(e),
        };
        endpoint.close(0u32.into(), b"done");
        outcome
    })
}

/// `keep_pid`, a second reload while the first one's temporary generation
/// T still drains a long request: the re-executed image P' runs it only
/// once its own HTTP/3 serves (T gone), so that the next temporary
/// generation gets a pair. (It used to run it at once: T2 read the shared
/// socket with no pair to T, and so, after the next re-exec, did P'' with
/// T still reading; about half the new connections were refused by T.)
#[test]
fn keep_pid_a_second_reload_while_the_temporary_generation_drains_refuses_nothing() {
    let (server, addr) = start(|s| s.keep_pid());
    let rt = runtime();
    let pid = server.current().pid;
    // A holds P's drain; B, on a new connection once T serves, holds T's.
    let a = get_in_background(&rt, addr, "/sleep/2500");
    std::thread::sleep(Duration::from_millis(300));
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    let temporary = server.nth_ready(before + 1).pid;
    assert_ne!(temporary, pid);
    wait_h3_served_by(&rt, addr, temporary, &server);
    let b = get_in_background(&rt, addr, "/sleep/9000");
    // P re-executes once A is done, and serves again under its PID.
    let again = server.nth_ready(before + 2);
    assert_eq!(again.pid, pid, "{}", server.report());
    signal_pid(pid, Signal::SIGHUP);
    // The second reload is not lost: a second temporary generation, then P
    // once more.
    let second = server.nth_ready(before + 3).pid;
    assert!(second != pid && second != temporary, "{}", server.report());
    assert_eq!(server.nth_ready(before + 4).pid, pid, "{}", server.report());
    assert!(
        server
            .log()
            .contains("reload requested while the temporary generation drains"),
        "{}",
        server.report()
    );
    // Once the image serves HTTP/3, it alone reads the shared socket.
    wait_h3_served_by(&rt, addr, pid, &server);
    let refused = not_served_by(&rt, addr, pid, 12);
    assert!(refused.is_empty(), "{refused:?}\n{}", server.report());
    for (name, request, served_by) in [("A", a, pid), ("B", b, temporary)] {
        match rt.block_on(request).unwrap() {
            Outcome::Ok(body) => assert_eq!(body, format!("slept pid={served_by}\n"), "{name}"),
            other => panic!("{name}: {other:?}\n{}", server.report()),
        }
    }
}

/// A new release that no longer serves HTTP/3 (it closes the socket and
/// its end of the pair): the old generation keeps reading the shared
/// socket, so that a response in flight, which needs the client's
/// acknowledgements, still completes. (It used to stop reading as soon as
/// a successor existed: the response stalled until the stop timeout.)
#[test]
fn a_release_without_http3_leaves_the_old_generation_reading() {
    let dir = tempfile::tempdir().unwrap();
    let only_first = dir.path().join("only-first");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let server = Spec::fixture()
        .arg("tls:127.0.0.1:0")
        .arg(format!("h3:{addr}"))
        .tls(tls::CERT, tls::KEY)
        .only_first_file(&only_first)
        .stop_timeout(Duration::from_secs(30))
        .start();
    let old = server.current().pid;
    let rt = runtime();
    let started = Instant::now();
    let big = get_in_background(&rt, addr, "/big/1500/4000000");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&only_first, "").unwrap();
    let new = server.reload(Signal::SIGHUP).pid;
    assert_ne!(new, old);
    match rt.block_on(big).unwrap() {
        Outcome::Ok(body) => {
            assert!(body.starts_with(&format!("pid={old}\n")), "{}", &body[..20]);
            assert_eq!(body.len(), format!("pid={old}\n").len() + 4_000_000);
        }
        other => panic!("{other:?}\n{}", server.report()),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// `keep_pid`, and the re-exec fails (the directory is gone) while the
/// temporary generation has a request in flight: the original PID serves
/// again and reads the shared socket; the temporary generation stops
/// reading (the PID passes it its packets), finishes the request and
/// leaves. (Both used to read with no pair between them: the temporary
/// generation refused the new connections it read, and the PID dropped
/// the packets of its connections.)
#[test]
fn keep_pid_a_failed_re_exec_leaves_one_generation_reading() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("release");
    std::fs::create_dir(&cwd).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let mut server = Spec::fixture()
        .cwd(&cwd)
        .arg(format!("h3:{addr}"))
        .arg("tls:127.0.0.1:0")
        .tls(tls::CERT, tls::KEY)
        .keep_pid()
        .stop_timeout(Duration::from_secs(30))
        .start();
    let rt = runtime();
    let pid = server.current().pid;
    let slow = get_in_background(&rt, addr, "/sleep/1500");
    std::thread::sleep(Duration::from_millis(300));
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    let temporary = server.nth_ready(before + 1).pid;
    assert_ne!(temporary, pid);
    wait_h3_served_by(&rt, addr, temporary, &server);
    let on_temporary = get_in_background(&rt, addr, "/sleep/6000");
    std::fs::remove_dir(&cwd).unwrap();
    match rt.block_on(slow).unwrap() {
        Outcome::Ok(body) => assert_eq!(body, format!("slept pid={pid}\n")),
        other => panic!("{other:?}\n{}", server.report()),
    }
    server.wait_log("re-executing in place failed", Duration::from_secs(10));
    wait_h3_served_by(&rt, addr, pid, &server);
    let refused = not_served_by(&rt, addr, pid, 12);
    assert!(refused.is_empty(), "{refused:?}\n{}", server.report());
    match rt.block_on(on_temporary).unwrap() {
        Outcome::Ok(body) => assert_eq!(body, format!("slept pid={temporary}\n")),
        other => panic!("{other:?}\n{}", server.report()),
    }
    server
        .wait_exit(temporary, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the temporary generation stayed:\n{}", server.report()));
    let refused = not_served_by(&rt, addr, pid, 4);
    assert!(refused.is_empty(), "{refused:?}\n{}", server.report());
}

/// `keep_pid`, and a stop while the original PID drains before its
/// re-exec: no re-exec; the request in flight finishes, and both the PID
/// and the temporary generation exit soon, long before the stop timeout
/// (the PID, which keeps its pair to the temporary generation for a re-exec
/// that might fail, lets go of it once the re-exec is off).
#[test]
fn keep_pid_a_stop_during_the_reload_lets_both_generations_exit_soon() {
    let (mut server, addr) = start(|s| s.keep_pid().stop_timeout(Duration::from_secs(30)));
    let rt = runtime();
    let pid = server.current().pid;
    let slow = get_in_background(&rt, addr, "/sleep/1500");
    std::thread::sleep(Duration::from_millis(300));
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    let temporary = server.nth_ready(before + 1).pid;
    assert_ne!(temporary, pid);
    // Apart from the temporary generation's own SIGTERM (its "ready"), so
    // that the two do not merge.
    std::thread::sleep(Duration::from_millis(300));
    signal_pid(pid, Signal::SIGTERM);
    match rt.block_on(slow).unwrap() {
        Outcome::Ok(body) => assert_eq!(body, format!("slept pid={pid}\n")),
        other => panic!("{other:?}\n{}", server.report()),
    }
    let stopped = Instant::now();
    for p in [temporary, pid] {
        server
            .wait_exit(p, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{p} stayed:\n{}", server.report()));
    }
    assert!(stopped.elapsed() < Duration::from_secs(10));
    assert!(
        server.log().contains("not re-executing"),
        "{}",
        server.report()
    );
}

/// The benchmark's HTTP/3 reload mode (`cargo test --release --features
/// http3 --test http3 -- --ignored --nocapture`): 50 reloads under 8
/// HTTP/3 connections; failed requests, and from the signal to the first
/// answer of the new generation.
#[test]
#[ignore]
fn bench_fifty_reloads() {
    let _heavy = support::heavy();
    let (server, addr) = start(|s| s.log("warn"));
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let running = rt.spawn(load(addr, 8, stop.clone()));
    std::thread::sleep(Duration::from_millis(500));
    let mut signalled = Vec::new();
    let started = Instant::now();
    for _ in 0..50 {
        let at = Instant::now();
        let pid = server.reload(Signal::SIGHUP).pid;
        signalled.push((pid, at));
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let took = started.elapsed();
    let seen = rt.block_on(running).unwrap();
    let mut to_serving: Vec<Duration> = signalled
        .iter()
        .filter_map(|(pid, at)| seen.first.get(pid).map(|f| f.duration_since(*at)))
        .collect();
    to_serving.sort();
    let pick = |q: f64| to_serving[((to_serving.len() - 1) as f64 * q) as usize];
    println!(
        "http3 bench: 50 reloads in {took:.1?}; {} requests ok, {} failed, {} refused before sending (sent again on a new connection); signal to the new generation's first answer: p50 {:?}, p90 {:?}, max {:?} ({} of 50 measured)",
        seen.ok,
        seen.failed.len(),
        seen.not_sent,
        pick(0.5),
        pick(0.9),
        to_serving.last().unwrap(),
        to_serving.len()
    );
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);
}
