//! endless side by side with the peers a Rust user would pick instead:
//! cloudflare's `ecdysis` and `shellflip`, from crates.io, each written the
//! way its documentation shows, all serving the same handler, under the same
//! load generator (the one endless's tests use), reloaded by their own
//! mechanism, in the same modes (HTTP/1.1 keep-alive, `Connection: close`,
//! h2c), against the same plain hyper-util baseline, in one run.
//!
//! ```text
//! cargo run --release --manifest-path bench/peers/Cargo.toml            # writes docs/bench-peers.json and docs/reload-peers.svg
//! cargo run --release --manifest-path bench/peers/Cargo.toml -- --quick # a few seconds, to check that it runs
//! ```
//!
//! Options: `--modes keep-alive,close,h2c`, `--servers endless,ecdysis,shellflip`,
//! `--conns N` (64), `--reloads N` (50 per server and mode), `--secs S` (2 per round),
//! `--rounds R` (6 per server and mode), `--json PATH`, `--svg PATH`.
//!
//! How each server reloads:
//! - endless: `SIGHUP`; the listener is handed to the new generation, which
//!   tells the old one to drain (`Connection: close` on its next responses,
//!   idle connections closed after a grace, HTTP/2 GOAWAY).
//! - ecdysis (1.1): `SIGHUP` (its `TokioEcdysisBuilder::new(SignalKind::hangup())`);
//!   the listener is inherited through `listen_tcp`, the stream stops once
//!   the child is ready (`StopOnShutdown::Yes`), and the old process drains
//!   its connections with hyper-util's `GracefulShutdown`.
//! - shellflip (2.1): `SIGUSR1` (its default); shellflip does not pass
//!   sockets itself, so the listener comes the way its documentation
//!   assumes, from systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`,
//!   here played by the benchmark), inherited by the new process (shellflip
//!   sets `LISTEN_PID=auto` for it); once the restart task resolves the old
//!   process stops accepting and tells its connections through
//!   `ShutdownCoordinator` to shut down gracefully (hyper's
//!   `graceful_shutdown`), as its `restarter` example does.

// The parts of endless's test support the benchmark shares, as
// bench/examples/bench.rs includes them: the load generator, server
// processes, and the bounded waits these use.
#[path = "../../../testing/src/load.rs"]
mod load;
#[path = "../../../testing/src/process.rs"]
mod process;
#[path = "../../../testing/src/wait.rs"]
mod wait;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use load::{Mode, Stats};
use nix::sys::signal::Signal;
use process::{signal_pid, Proc, Spec};
use serde_json::json;

async fn hello(_: Request<Incoming>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(format!(
        "Hello from pid {}\n",
        std::process::id()
    )))
}

fn ready_line(reloaded: bool, addr: &str) {
    println!(
        "READY pid={} reloaded={reloaded} addrs={addr}",
        std::process::id()
    );
}

/// How long an old process may drain before it exits anyway (endless's
/// default stop timeout).
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- servers

async fn serve_endless(addr: String) {
    let server = endless::Server::new().register(&addr, service_fn(hello));
    let handle = server.handle();
    tokio::spawn(async move {
        if let Ok(addrs) = handle.listening().await {
            let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            ready_line(endless::started_by_reload(), &addrs.join(","));
        }
    });
    server.run().await.expect("endless server");
}

/// The same handler on a plain hyper-util accept loop, in a spawned task (as
/// every other server here accepts).
async fn serve_baseline(addr: String) {
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    ready_line(false, &listener.local_addr().unwrap().to_string());
    tokio::spawn(async move {
        let builder = std::sync::Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(hello))
                    .await;
            });
        }
    })
    .await
    .expect("baseline accept loop");
}

/// ecdysis, as its `tokio_echo` example does it, serving HTTP with
/// hyper-util and draining with hyper-util's `GracefulShutdown`.
async fn serve_ecdysis(addr: String) {
    use ecdysis::tokio_ecdysis::{SignalKind, StopOnShutdown, TokioEcdysisBuilder};
    let addr: SocketAddr = addr.parse().expect("ecdysis needs IP:PORT");
    let mut builder = TokioEcdysisBuilder::new(SignalKind::hangup()).expect("ecdysis builder");
    builder
        .stop_on_signal(SignalKind::terminate())
        .expect("ecdysis stop signal");
    let reloaded = builder.is_child();
    let mut stream = builder
        .listen_tcp(StopOnShutdown::Yes, addr)
        .expect("ecdysis listen_tcp");
    let server = tokio::spawn(async move {
        let http = auto::Builder::new(TokioExecutor::new());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // The stream ends once the new process is ready.
        while let Some(accepted) = stream.next().await {
            let Ok(tcp) = accepted else { continue };
            let _ = tcp.set_nodelay(true);
            let conn = http
                .serve_connection_with_upgrades(TokioIo::new(tcp), service_fn(hello))
                .into_owned();
            tokio::spawn(graceful.watch(conn));
        }
        let _ = tokio::time::timeout(DRAIN_LIMIT, graceful.shutdown()).await;
    });
    let (_ecdysis, upgraded) = builder.ready().expect("ecdysis ready");
    ready_line(reloaded, &addr.to_string());
    let _exit = upgraded.await;
    let _ = server.await;
}

/// shellflip, as its `restarter` example does it, with the listener from
/// systemd socket activation (FD 3).
async fn serve_shellflip() {
    use shellflip::{RestartConfig, ShutdownCoordinator, ShutdownSignal};
    // LISTEN_PID=auto (set by shellflip for the new process) becomes ours.
    shellflip::fixup_systemd_env();
    let activated = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string())
        && std::env::var("LISTEN_FDS").ok().as_deref() == Some("1");
    assert!(
        activated,
        "serve-shellflip needs one socket-activated listener at FD 3"
    );
    let reloaded = shellflip::lifecycle::receive_from_old_process().is_some();
    // SAFETY: FD 3 is the listening socket systemd (here: the benchmark)
    // passed, owned by nothing else in this process. It stays without
    // close-on-exec, so that the next process inherits it.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
    std_listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
    let addr = listener.local_addr().unwrap().to_string();

    let restart_conf = RestartConfig {
        enabled: false,
        ..Default::default()
    };
    let restart_task = restart_conf
        .try_into_restart_task()
        .expect("shellflip restart task");
    tokio::pin!(restart_task);
    let shutdown_coordinator = ShutdownCoordinator::new();
    let http = std::sync::Arc::new(auto::Builder::new(TokioExecutor::new()));
    ready_line(reloaded, &addr);
    loop {
        tokio::select! {
            res = listener.accept() => {
                let Ok((tcp, _)) = res else { continue };
                let _ = tcp.set_nodelay(true);
                let handle = shutdown_coordinator.handle();
                let http = http.clone();
                tokio::spawn(async move {
                    let mut shutdown_signal = ShutdownSignal::from(&*handle);
                    let conn = http.serve_connection_with_upgrades(TokioIo::new(tcp), service_fn(hello));
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = shutdown_signal.on_shutdown() => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                    drop(handle);
                });
            }
            _ = &mut restart_task => break,
        }
    }
    drop(listener);
    shutdown_coordinator
        .shutdown_with_timeout(DRAIN_LIMIT.as_secs())
        .await;
}

// ---------------------------------------------------------------- the bench

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Baseline,
    Endless,
    Ecdysis,
    Shellflip,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Baseline => "hyper-util",
            Kind::Endless => "endless",
            Kind::Ecdysis => "ecdysis",
            Kind::Shellflip => "shellflip",
        }
    }

    fn reload_signal(self) -> Signal {
        match self {
            Kind::Shellflip => Signal::SIGUSR1,
            _ => Signal::SIGHUP,
        }
    }

    fn start(self) -> Proc {
        let exe = std::env::current_exe().unwrap();
        match self {
            Kind::Baseline => Spec::new(exe)
                .arg("serve-baseline")
                .arg("127.0.0.1:0")
                .start(),
            Kind::Endless => Spec::new(exe)
                .arg("serve-endless")
                .arg("127.0.0.1:0")
                .start(),
            // ecdysis finds the inherited socket by the address asked for,
            // so it must be the same address in every process: a fixed port.
            Kind::Ecdysis => Spec::new(exe)
                .arg("serve-ecdysis")
                .arg(format!("127.0.0.1:{}", free_port()))
                .start(),
            Kind::Shellflip => {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let fd = l.as_raw_fd();
                // Our copy closes when `l` drops; the server has its own.
                Spec::new(exe)
                    .arg("serve-shellflip")
                    .activated(vec![fd], "")
                    .start()
            }
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

struct Options {
    quick: bool,
    modes: Vec<Mode>,
    servers: Vec<Kind>,
    conns: usize,
    reloads: usize,
    secs: f64,
    rounds: usize,
    json: String,
    svg: String,
}

impl Options {
    fn parse() -> Options {
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs");
        let mut o = Options {
            quick: false,
            modes: vec![Mode::KeepAlive, Mode::Close, Mode::Http2],
            servers: vec![Kind::Endless, Kind::Ecdysis, Kind::Shellflip],
            conns: 64,
            reloads: 50,
            secs: 2.0,
            rounds: 6,
            json: format!("{docs}/bench-peers.json"),
            svg: format!("{docs}/reload-peers.svg"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
            match a.as_str() {
                "--quick" => {
                    o.quick = true;
                    o.conns = 8;
                    o.reloads = 3;
                    o.secs = 0.4;
                    o.rounds = 1;
                }
                "--modes" => {
                    o.modes = value()
                        .split(',')
                        .map(|m| match m {
                            "keep-alive" => Mode::KeepAlive,
                            "close" => Mode::Close,
                            "h2c" => Mode::Http2,
                            other => panic!("unknown mode {other}: keep-alive, close or h2c"),
                        })
                        .collect()
                }
                "--servers" => {
                    o.servers = value()
                        .split(',')
                        .map(|m| match m {
                            "endless" => Kind::Endless,
                            "ecdysis" => Kind::Ecdysis,
                            "shellflip" => Kind::Shellflip,
                            other => {
                                panic!("unknown server {other}: endless, ecdysis or shellflip")
                            }
                        })
                        .collect()
                }
                "--conns" => o.conns = value().parse().expect("--conns N"),
                "--reloads" => o.reloads = value().parse().expect("--reloads N"),
                "--secs" => o.secs = value().parse().expect("--secs S"),
                "--rounds" => o.rounds = value().parse().expect("--rounds R"),
                "--json" => o.json = value(),
                "--svg" => o.svg = value(),
                other => panic!("unknown option {other}"),
            }
        }
        o
    }
}

/// CPU time `pid` has used, in ns (see bench/examples/bench.rs).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

struct Round {
    rps: f64,
    cpu_us: f64,
    failed: u64,
}

fn throughput(rt: &tokio::runtime::Runtime, kind: Kind, mode: Mode, o: &Options) -> Round {
    let p = kind.start();
    let pid = p.current().pid;
    let cpu0 = cpu_ns(pid);
    let l = load::start(rt.handle(), &p.addr(), mode, o.conns, "/");
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    let stats = l.finish();
    let cpu = cpu_ns(pid) - cpu0;
    let full = (o.secs * 10.0) as usize;
    let counted: u64 = stats
        .buckets
        .iter()
        .skip(1)
        .take(full.saturating_sub(1))
        .sum();
    Round {
        rps: counted as f64 / ((full.saturating_sub(1)) as f64 / 10.0),
        cpu_us: cpu as f64 / 1e3 / stats.ok.max(1) as f64,
        failed: stats.failed,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Whether `pid` has exited (gone, or a zombie), reaping it if it is ours.
fn exited(pid: u32) -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    match waitpid(
        nix::unistd::Pid::from_raw(pid as i32),
        Some(WaitPidFlag::WNOHANG),
    ) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        Err(_) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
                .unwrap_or(true),
        },
    }
}

fn watch_exits(exiting: &mut Vec<(u32, Instant)>, exit_ms: &mut Vec<f64>, until: Instant) {
    while !exiting.is_empty() && Instant::now() < until {
        exiting.retain(|(pid, t)| {
            let gone = exited(*pid);
            if gone {
                exit_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            !gone
        });
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct ReloadRun {
    kind: Kind,
    mode: Mode,
    stats: Stats,
    ready_ms: Vec<f64>,
    exit_ms: Vec<f64>,
    marks: Vec<f64>,
    dips: Vec<f64>,
    /// Reloads after which no new process answered in time.
    stuck: usize,
}

fn reload_run(rt: &tokio::runtime::Runtime, kind: Kind, mode: Mode, o: &Options) -> ReloadRun {
    let p = kind.start();
    let l = load::start(rt.handle(), &p.addr(), mode, o.conns, "/");
    let t0 = l.t0();
    std::thread::sleep(Duration::from_millis(500));
    let (mut ready_ms, mut marks, mut exiting, mut exit_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stuck = 0;
    for _ in 0..o.reloads {
        let old = p.current().pid;
        let t = Instant::now();
        signal_pid(old, kind.reload_signal());
        if p.wait_ready_after(old, Duration::from_secs(30)).is_none() {
            stuck += 1;
            break;
        }
        ready_ms.push(t.elapsed().as_secs_f64() * 1e3);
        marks.push((t - t0).as_secs_f64());
        exiting.push((old, t));
        let until = Instant::now() + Duration::from_millis(300);
        watch_exits(&mut exiting, &mut exit_ms, until);
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = l.finish();
    watch_exits(
        &mut exiting,
        &mut exit_ms,
        Instant::now() + Duration::from_secs(30),
    );
    let b = &stats.buckets;
    let steady: Vec<f64> = b
        .iter()
        .skip(1)
        .take(b.len().saturating_sub(2))
        .map(|&v| v as f64)
        .collect();
    let med = median(&mut steady.clone());
    let dips = marks
        .iter()
        .map(|m| {
            let i = (m * 10.0) as usize;
            let lo = i.saturating_sub(1).max(1);
            let hi = (i + 3).min(b.len().saturating_sub(2));
            let min = (lo..=hi.max(lo))
                .filter_map(|k| b.get(k))
                .min()
                .copied()
                .unwrap_or(0);
            min as f64 / med
        })
        .collect();
    ReloadRun {
        kind,
        mode,
        stats,
        ready_ms,
        exit_ms,
        marks,
        dips,
        stuck,
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::KeepAlive => "keep-alive",
        Mode::Close => "close",
        Mode::Http2 => "h2c",
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("serve-endless") => return runtime().block_on(serve_endless(args.next().unwrap())),
        Some("serve-baseline") => return runtime().block_on(serve_baseline(args.next().unwrap())),
        Some("serve-ecdysis") => return runtime().block_on(serve_ecdysis(args.next().unwrap())),
        Some("serve-shellflip") => return runtime().block_on(serve_shellflip()),
        _ => {}
    }
    let o = Options::parse();
    let rt = load::runtime();
    println!("endless and its peers: {}", machine());
    println!(
        "load: {} connections; steady state {} round(s) of {:.1} s per server and mode, alternating; {} reloads per server and mode",
        o.conns, o.rounds, o.secs, o.reloads
    );

    // 1. Steady state: the servers in turn, round after round.
    let mut steady = Vec::new();
    for &mode in &o.modes {
        let mut base = Vec::new();
        let mut rounds: Vec<Vec<Round>> = o.servers.iter().map(|_| Vec::new()).collect();
        for _ in 0..o.rounds {
            base.push(throughput(&rt, Kind::Baseline, mode, &o));
            for (i, &k) in o.servers.iter().enumerate() {
                rounds[i].push(throughput(&rt, k, mode, &o));
            }
        }
        for (i, &k) in o.servers.iter().enumerate() {
            let ours = &rounds[i];
            let ratios: Vec<f64> = ours.iter().zip(&base).map(|(x, y)| x.rps / y.rps).collect();
            let cpu: Vec<f64> = ours
                .iter()
                .zip(&base)
                .map(|(x, y)| x.cpu_us / y.cpu_us)
                .collect();
            steady.push(json!({"server": k.name(), "mode": mode_name(mode),
                "ratio": median(&mut ratios.clone()), "round_ratios": ratios,
                "cpu_ratio": median(&mut cpu.clone()), "round_cpu_ratios": cpu,
                "rps": median(&mut ours.iter().map(|r| r.rps).collect::<Vec<_>>()),
                "baseline_rps": median(&mut base.iter().map(|r| r.rps).collect::<Vec<_>>()),
                "failed": ours.iter().map(|r| r.failed).sum::<u64>()}));
        }
    }

    // 2. Reloads under load.
    let mut runs = Vec::new();
    for &mode in &o.modes {
        for &k in &o.servers {
            runs.push(reload_run(&rt, k, mode, &o));
        }
    }

    println!();
    println!("Steady state, against plain hyper-util (medians of per-round ratios):");
    println!();
    println!("| server | mode | req/s ratio | CPU per request ratio | failed |");
    println!("|---|---|---|---|---|");
    for s in &steady {
        println!(
            "| {} | {} | {:.3} | {:.3} | {} |",
            s["server"].as_str().unwrap(),
            s["mode"].as_str().unwrap(),
            s["ratio"].as_f64().unwrap(),
            s["cpu_ratio"].as_f64().unwrap(),
            s["failed"]
        );
    }
    println!();
    println!("Reloads under load:");
    println!();
    println!("| server | mode | reloads | requests | failed | failed per reload | retried (never processed) | signal→serving p50 / max | signal→old exit p50 / max | lowest 100 ms bucket, worst / median |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut reload_json = Vec::new();
    for r in &runs {
        let (mut ready, mut exit, mut dips) =
            (r.ready_ms.clone(), r.exit_ms.clone(), r.dips.clone());
        let n = r.ready_ms.len();
        let row = json!({
            "server": r.kind.name(), "mode": mode_name(r.mode), "reloads": n, "stuck": r.stuck,
            "requests_ok": r.stats.ok, "failed": r.stats.failed,
            "failed_per_reload": r.stats.failed as f64 / n.max(1) as f64,
            "failures": r.stats.failures, "retried_unprocessed": r.stats.retried,
            "errors": r.stats.errors,
            "ready_ms": {"p50": median(&mut ready), "max": percentile(&mut ready, 1.0)},
            "old_exit_ms": {"p50": median(&mut exit), "max": percentile(&mut exit, 1.0), "exits_seen": r.exit_ms.len()},
            "lowest_bucket_share": {"worst": percentile(&mut dips, 0.0), "median": median(&mut dips)},
        });
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {} | {:.1} / {:.1} ms | {:.0} / {:.0} ms | {:.0}% / {:.0}% |",
            r.kind.name(),
            mode_name(r.mode),
            n,
            r.stats.ok,
            r.stats.failed,
            row["failed_per_reload"].as_f64().unwrap(),
            r.stats.retried,
            row["ready_ms"]["p50"].as_f64().unwrap(),
            row["ready_ms"]["max"].as_f64().unwrap(),
            row["old_exit_ms"]["p50"].as_f64().unwrap(),
            row["old_exit_ms"]["max"].as_f64().unwrap(),
            row["lowest_bucket_share"]["worst"].as_f64().unwrap() * 100.0,
            row["lowest_bucket_share"]["median"].as_f64().unwrap() * 100.0,
        );
        if r.stuck > 0 {
            println!(
                "  {} {}: no new process after a reload signal; stopped reloading",
                r.kind.name(),
                mode_name(r.mode)
            );
        }
        if !r.stats.failures.is_empty() {
            println!(
                "  {} {} failures: {:?}",
                r.kind.name(),
                mode_name(r.mode),
                r.stats.failures
            );
        }
        reload_json.push(row);
    }

    let report = json!({
        "machine": machine(),
        "options": {"conns": o.conns, "reloads": o.reloads, "secs": o.secs, "rounds": o.rounds, "quick": o.quick},
        "versions": {"ecdysis": "1.1", "shellflip": "2.1"},
        "steady_state": steady,
        "reloads": reload_json,
        "series": runs.iter().map(|r| json!({"server": r.kind.name(), "mode": mode_name(r.mode), "buckets_100ms": r.stats.buckets, "reload_marks_s": r.marks})).collect::<Vec<_>>(),
    });
    if let Some(dir) = std::path::Path::new(&o.json).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&o.json, serde_json::to_string_pretty(&report).unwrap()).expect("write JSON");
    draw(&runs, o.servers.len(), &o.svg).expect("draw SVG");
    println!("wrote {} and {}", o.json, o.svg);
}

/// Requests/s per 100 ms: one row per mode, one column per server.
fn draw(runs: &[ReloadRun], columns: usize, path: &str) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let rows = runs.len().div_ceil(columns.max(1));
    let root = SVGBackend::new(path, (400 * columns as u32, 220 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    // One scale per mode, so the servers of a row compare at a glance.
    for (row, areas) in root
        .split_evenly((rows, columns))
        .chunks(columns)
        .enumerate()
    {
        let row_runs = &runs[row * columns..(row * columns + columns).min(runs.len())];
        let ymax = row_runs
            .iter()
            .flat_map(|r| r.stats.buckets.iter().copied())
            .max()
            .unwrap_or(1) as f64
            * 10.0
            * 1.1;
        for (area, run) in areas.iter().zip(row_runs) {
            let b = &run.stats.buckets;
            let n = b.len().saturating_sub(1).max(1);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!(
                        "{} {}: {} reloads, {} failed",
                        run.kind.name(),
                        mode_name(run.mode),
                        run.marks.len(),
                        run.stats.failed
                    ),
                    ("sans-serif", 14),
                )
                .margin(6)
                .x_label_area_size(24)
                .y_label_area_size(56)
                .build_cartesian_2d(0f64..n as f64 / 10.0, 0f64..ymax.max(1.0))?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .disable_mesh()
                .draw()?;
            for &m in &run.marks {
                chart.draw_series(LineSeries::new([(m, 0.0), (m, ymax)], RED.mix(0.3)))?;
            }
            chart.draw_series(LineSeries::new(
                b.iter()
                    .take(n)
                    .enumerate()
                    .skip(1)
                    .map(|(i, &v)| (i as f64 / 10.0, v as f64 * 10.0)),
                &BLUE,
            ))?;
        }
    }
    root.present()?;
    Ok(())
}
