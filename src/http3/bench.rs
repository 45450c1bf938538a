//! Groundwork for the benchmark's HTTP/3 mode: steady requests per second
//! and CPU time per request of an [`Http3Listener`] against a plain quinn +
//! h3 server with the same handler, both loaded at the same time (so the
//! machine's noise hits both alike), reported as ratios.
//!
//! Each server runs on a single-threaded runtime of its own thread, whose
//! CPU time (`CLOCK_THREAD_CPUTIME_ID`) is all of that server's work:
//! quinn's endpoint and connection drivers, h3, the handler. The clients
//! run on a third runtime.
//!
//! ```text
//! cargo test --release --features http3 --lib http3::bench -- --ignored --nocapture
//! ```
//! (`BENCH_SECS` sets the measured time, 5 s by default; `BENCH_CONNS` the
//! connections per server, 8.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};

use super::tests::{client_endpoint, connect, request, Outcome};
use super::*;

/// The handler both servers run.
async fn handler(path: &str) -> Bytes {
    Bytes::from(format!("hello from {path}\n"))
}

fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("a thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// A server thread: runs `start` on a runtime of its own until `stop`,
/// then reports its CPU time since `measure` was set.
fn server_thread<F, Fut>(
    name: &str,
    start: F,
    measure: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> (SocketAddr, std::thread::JoinHandle<Duration>)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (SocketAddr, Box<dyn std::any::Any + Send>)>,
{
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (addr, keep) = start().await;
                tx.send(addr).unwrap();
                while !measure.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let cpu0 = thread_cpu();
                while !stop.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let cpu = thread_cpu() - cpu0;
                drop(keep);
                cpu
            })
        })
        .expect("a thread");
    (rx.recv().unwrap(), handle)
}

async fn start_endless() -> (SocketAddr, Box<dyn std::any::Any + Send>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let svc = service_fn(|req: Request<RequestBody>| async move {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(handler(req.uri().path()).await)))
    });
    let listener = Http3Listener::builder()
        .serve(socket, super::tests::server_tls(), svc)
        .unwrap();
    (addr, Box::new(listener))
}

async fn start_plain() -> (SocketAddr, Box<dyn std::any::Any + Send>) {
    let tls = config::for_h3(&super::tests::server_tls());
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok(mut h3) =
                    h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await
                else {
                    return;
                };
                while let Ok(Some(resolver)) = h3.accept().await {
                    tokio::spawn(async move {
                        let Ok((req, mut stream)) = resolver.resolve_request().await else {
                            return;
                        };
                        let body = handler(req.uri().path()).await;
                        if stream.send_response(Response::new(())).await.is_ok()
                            && stream.send_data(body).await.is_ok()
                        {
                            let _ = stream.finish().await;
                        }
                    });
                }
            });
        }
    });
    (addr, Box::new(endpoint))
}

/// Keeps `conns` connections busy with one request after another.
async fn load(
    addr: SocketAddr,
    conns: usize,
    count: Arc<AtomicU64>,
    measure: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let endpoint = client_endpoint();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut send = connect(&endpoint, addr).await.unwrap();
        let (count, measure, stop) = (count.clone(), measure.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match request(&mut send, "GET", "/bench", b"").await {
                    Outcome::Ok(_) => {
                        if measure.load(Ordering::Relaxed) {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => panic!("{other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
#[ignore = "a measurement, not a test: run it with --ignored --nocapture, in release"]
fn steady_state_against_plain_quinn_h3() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let conns: usize = std::env::var("BENCH_CONNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let measure = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (endless_addr, endless_thread) = server_thread(
        "endless-server",
        start_endless,
        measure.clone(),
        stop.clone(),
    );
    let (plain_addr, plain_thread) =
        server_thread("plain-server", start_plain, measure.clone(), stop.clone());
    let (endless_n, plain_n) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let elapsed = clients.block_on(async {
        let a = tokio::spawn(load(
            endless_addr,
            conns,
            endless_n.clone(),
            measure.clone(),
            stop.clone(),
        ));
        let b = tokio::spawn(load(
            plain_addr,
            conns,
            plain_n.clone(),
            measure.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await; // warm-up
        measure.store(true, Ordering::Release);
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Release);
        let elapsed = t.elapsed();
        a.await.unwrap();
        b.await.unwrap();
        elapsed
    });
    let (endless_cpu, plain_cpu) = (endless_thread.join().unwrap(), plain_thread.join().unwrap());
    let (en, pn) = (
        endless_n.load(Ordering::Relaxed),
        plain_n.load(Ordering::Relaxed),
    );
    let rps = |n: u64| n as f64 / elapsed.as_secs_f64();
    let per = |cpu: Duration, n: u64| cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!("HTTP/3 steady state, loaded together, {conns} connections each, {elapsed:.1?}:");
    println!(
        "  endless: {:>8.0} req/s, {:>6.1} µs CPU/request",
        rps(en),
        per(endless_cpu, en)
    );
    println!(
        "  plain:   {:>8.0} req/s, {:>6.1} µs CPU/request",
        rps(pn),
        per(plain_cpu, pn)
    );
    println!(
        "  ratio endless/plain: requests/s {:.3}, CPU/request {:.3}",
        rps(en) / rps(pn).max(f64::MIN_POSITIVE),
        per(endless_cpu, en) / per(plain_cpu, pn).max(f64::MIN_POSITIVE)
    );
}
