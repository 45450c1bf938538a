//! gRPC across reloads: tonic clients, each on its own HTTP/2 connection,
//! make unary health checks in a loop while the server (the `grpc-health`
//! binary, a real process) is reloaded five times. No call may fail.
//!
//! A call the server never processed may be retried, as gRPC clients do
//! ("transparent retry"), and is counted apart: a stream the server's GOAWAY
//! excluded, a stream it refused (`REFUSED_STREAM`), or a request the client
//! never sent because its connection had already closed. Everything else
//! (a reset or broken stream, a timeout, a wrong answer) is a failure.
//!
//! `ENDLESS_TEST_RELOADS=N` sets the number of reloads.

// The workspace's test support (testing/src): real processes, reaped.
use endless_tests as support;

use std::collections::BTreeMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use support::{signal_pid, Proc, Spec};

/// Concurrent clients, hence HTTP/2 connections.
const CLIENTS: usize = 8;
/// How long one call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A hard bound on the whole load, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(180);
/// How long each new generation serves before the next reload.
const SERVE_BETWEEN_RELOADS: Duration = Duration::from_secs(1);

/// What the clients saw, shared by them.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// Calls the server never processed (retried): cause -> count.
    unprocessed: BTreeMap<String, u64>,
    /// Calls that failed: cause -> count.
    failed: BTreeMap<String, u64>,
    /// Successful calls per serving PID (the `endless-pid` metadata).
    by_pid: BTreeMap<u32, u64>,
}

impl Tally {
    fn served_by(&self, pid: u32) -> u64 {
        self.by_pid.get(&pid).copied().unwrap_or(0)
    }
}

/// The status and its chain of causes, on one line.
fn describe(status: &tonic::Status) -> String {
    let mut s = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(e) = source {
        s.push_str(&format!(" <- {e}"));
        source = e.source();
    }
    s
}

/// Whether the call certainly never reached the server's handler, so that
/// a client may retry it without risk. Decided by the error's cause, not by
/// its code: tonic reports an unsent request as `Cancelled`, and a GOAWAY as
/// `Unavailable` or `Unknown` depending on its features. A status the server
/// sent has no cause at all, so it never counts as unprocessed.
fn never_processed(status: &tonic::Status) -> bool {
    let mut source = status.source();
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            // h2 gives a remote GOAWAY's error only to streams above its
            // last stream ID, and to requests made after it (never sent):
            // by RFC 9113 §6.8 the server processed none of them. Streams
            // cut short below it end with a broken pipe or a reset instead.
            if e.is_go_away() && e.is_remote() {
                return true;
            }
            if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return true;
            }
        }
        // hyper's "connection closed" for a request still queued, unsent,
        // when its connection went away (its dispatcher hands the request
        // back), or "connection was not ready".
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            if e.is_canceled() {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// One client: its own channel (one HTTP/2 connection, re-established by
/// tonic when the server closes it), making calls until `stop`.
async fn client(addr: String, stop: Arc<AtomicBool>, deadline: Instant, tally: Arc<Mutex<Tally>>) {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let outcome = tokio::time::timeout(CALL_TIMEOUT, health.check(request)).await;
        let retry = {
            let mut t = tally.lock().unwrap();
            match outcome {
                Err(_) => {
                    *t.failed.entry("timeout".into()).or_default() += 1;
                    false
                }
                Ok(Ok(response)) => {
                    let pid = response
                        .metadata()
                        .get("endless-pid")
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    let status = response.into_inner().status;
                    match pid {
                        Some(pid) if status == ServingStatus::Serving as i32 => {
                            t.ok += 1;
                            *t.by_pid.entry(pid).or_default() += 1;
                        }
                        _ => {
                            let what = format!("bad answer: status {status}, pid {pid:?}");
                            *t.failed.entry(what).or_default() += 1;
                        }
                    }
                    false
                }
                Ok(Err(status)) if never_processed(&status) => {
                    *t.unprocessed.entry(describe(&status)).or_default() += 1;
                    true
                }
                Ok(Err(status)) => {
                    *t.failed.entry(describe(&status)).or_default() += 1;
                    false
                }
            }
        };
        if retry {
            // The retry is the next turn of the loop; a short pause so that
            // a channel still reconnecting is not spun on.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Waits until `pid` has answered a call: the clients have moved to it.
fn wait_served_by(tally: &Mutex<Tally>, pid: u32, server: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tally.lock().unwrap().served_by(pid) == 0 {
        assert!(
            Instant::now() < deadline,
            "{pid} never answered a call:\n{}",
            server.report()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn unary_calls_across_reloads_never_fail() {
    let reloads: usize = std::env::var("ENDLESS_TEST_RELOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut server = Spec::new(env!("CARGO_BIN_EXE_grpc-health"))
        .arg("127.0.0.1:0")
        .start();
    let first = server.nth_ready(1);
    let addr = first.addrs[0].clone();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + LOAD_LIMIT;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| rt.spawn(client(addr.clone(), stop.clone(), deadline, tally.clone())))
        .collect();

    // Reload the current generation once the clients are on it; each new
    // generation names its PID in its READY line.
    let mut generations = vec![first.pid];
    wait_served_by(&tally, first.pid, &server);
    for _ in 0..reloads {
        let old = *generations.last().unwrap();
        signal_pid(old, Signal::SIGHUP);
        let next = server
            .wait_ready_after(old, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no new generation after SIGHUP:\n{}", server.report()));
        assert!(next.reloaded, "{next:?}");
        assert_eq!(next.addrs, vec![addr.clone()], "the port changed");
        generations.push(next.pid);
        wait_served_by(&tally, next.pid, &server);
        std::thread::sleep(SERVE_BETWEEN_RELOADS);
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for c in clients {
            c.await.expect("client task");
        }
    });
    let load_time = started.elapsed();
    drop(rt);

    // A graceful stop of the last generation; every earlier one has
    // drained and exited by itself, each printing `EXIT pid=P ok`.
    signal_pid(*generations.last().unwrap(), Signal::SIGTERM);
    assert!(
        server.wait_all_exited(Duration::from_secs(30)),
        "generations still alive: {:?}\n{}",
        server.alive(),
        server.report()
    );
    let lines = server.lines();
    for pid in &generations {
        assert!(
            lines.contains(&format!("EXIT pid={pid} ok")),
            "generation {pid} did not exit cleanly:\n{}",
            server.report()
        );
    }

    let t = tally.lock().unwrap();
    let unprocessed: u64 = t.unprocessed.values().sum();
    let failed: u64 = t.failed.values().sum();
    println!(
        "grpc: {CLIENTS} connections, {reloads} reloads in {:.1} s: {} ok, {failed} failed, \
         {unprocessed} never processed (retried)",
        load_time.as_secs_f64(),
        t.ok
    );
    println!("grpc: ok calls per generation: {:?}", t.by_pid);
    for (cause, n) in &t.unprocessed {
        println!("grpc: never processed x{n}: {cause}");
    }
    for (cause, n) in &t.failed {
        println!("grpc: FAILED x{n}: {cause}");
    }
    assert_eq!(failed, 0, "failed calls: {:?}", t.failed);
    assert!(
        load_time < LOAD_LIMIT,
        "the load did not finish in time: {load_time:?}"
    );
    // Every generation answered (checked above as it came), and only ours did.
    for pid in t.by_pid.keys() {
        assert!(generations.contains(pid), "answered by stranger {pid}");
    }
    assert!(t.ok >= 200, "too few calls succeeded: {}", t.ok);
}
