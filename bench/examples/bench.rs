//! What a reload costs, and what endless costs in steady state, measured
//! against a plain hyper-util server in the same run.
//!
//! ```text
//! cargo run --release -p endless-bench --example bench            # about 2 minutes; writes docs/bench.json and docs/reload.svg
//! cargo run --release -p endless-bench --example bench -- --quick # a few seconds, to check that it runs
//! ```
//!
//! Options: `--modes keep-alive,close,h2c`, `--steady-only` (skip reloads and memory), `--conns N` (64), `--reloads N` (50 per mode), `--secs S` (2 per
//! round), `--rounds R` (6 per server and mode), `--json PATH`, `--svg PATH`,
//! `--https` (also the steady state over TLS, against tokio-rustls +
//! hyper-util), `--scale N,N,…` (only: keep-alive steady state and reloads at
//! each number of connections, into `docs/bench-scale.json`; for example
//! `--scale 1000,4000,8000 --reloads 20 --rounds 3`). `--backlog N`: the
//! endless server's accept queue (`Server::backlog`; the library's default
//! otherwise); with `--scale`, the results go to
//! `docs/bench-scale-backlogN.json`.
//!
//! `--before PATH`: the bench binary built from an earlier commit; its
//! endless server joins the steady-state rounds, for before/after ratios
//! measured in one run.
//!
//! The benchmark raises its soft limit on open files to the hard limit (the
//! servers inherit it): each connection takes an FD in the client and one in
//! the server.
//!
//! The binary plays every part: run with `serve-endless ADDR` it is the
//! endless server (the `hello` example's handler), with `serve-baseline ADDR`
//! the same handler on a plain hyper-util accept loop. Every figure is a
//! ratio to the baseline, or a count, measured in one run, so that it holds
//! on a shared, noisy machine. The load generator is the one the tests use:
//! one connection per worker, requests back to back, every failure counted.

// The parts of the workspace's test support (testing/src) the benchmark
// uses: the load generator, server processes, and the bounded waits.
use endless_tests::{load, process, tls};

use std::convert::Infallible;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
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

fn ready_line(addrs: &[String]) {
    println!(
        "READY pid={} reloaded={} addrs={}",
        std::process::id(),
        endless::started_by_reload(),
        addrs.join(",")
    );
}

/// The probation of the endless server under test: the library's default
/// unless `BENCH_PROBATION_MS` says otherwise (the benchmark's own test
/// shortens it).
fn probation() -> Duration {
    std::env::var("BENCH_PROBATION_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The accept queue of the endless server under test, if `--backlog`
/// (passed on as `BENCH_BACKLOG`) set one.
fn backlog() -> Option<u32> {
    std::env::var("BENCH_BACKLOG").ok()?.parse().ok()
}

/// The endless server.
async fn serve_endless(addr: String) {
    let mut server = endless::Server::new().probation(probation());
    if let Some(n) = backlog() {
        server = server.backlog(n);
    }
    let server = server.register(&addr, service_fn(hello));
    let handle = server.handle();
    tokio::spawn(async move {
        if let Ok(addrs) = handle.listening().await {
            ready_line(&addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        }
    });
    server.run().await.expect("endless server");
}

/// The baseline: the same handler on a plain hyper-util accept loop.
///
/// The loop runs in a spawned task, as endless's accept loops do: run inside
/// `block_on` it would sit on the main thread, outside the worker pool, and
/// every connection it spawns would go through the runtime's shared queue.
/// That difference (about 10% in `Connection: close` mode, in endless's
/// favour) is about where an accept loop runs, not about what endless costs.
///
/// With `header_timeout`, hyper's HTTP/1 header-read timeout is on (30 s,
/// endless's default), which needs a timer: the second baseline, to show what
/// that feature of hyper costs apart from endless.
async fn serve_baseline(addr: String, header_timeout: bool) {
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    ready_line(&[listener.local_addr().unwrap().to_string()]);
    tokio::spawn(accept_baseline(listener, header_timeout))
        .await
        .expect("baseline accept loop");
}

async fn accept_baseline(listener: tokio::net::TcpListener, header_timeout: bool) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if header_timeout {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
    }
    let builder = std::sync::Arc::new(builder);
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
}

/// endless over TLS (`register_tls`, as `listen_and_serve_tls` does).
async fn serve_endless_tls(addr: String, cert: String, key: String) {
    let server = endless::Server::new().register_tls(&addr, cert, key, service_fn(hello));
    let handle = server.handle();
    tokio::spawn(async move {
        if let Ok(addrs) = handle.listening().await {
            ready_line(&addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        }
    });
    server.run().await.expect("endless TLS server");
}

/// The TLS baseline: tokio-rustls and hyper-util, the handshake in each
/// connection's task, ALPN `h2` and `http/1.1`.
async fn serve_baseline_tls(addr: String, cert: String, key: String) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&cert)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(&key).expect("key file");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    ready_line(&[listener.local_addr().unwrap().to_string()]);
    let builder = std::sync::Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (builder, acceptor) = (builder.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service_fn(hello))
                    .await;
            });
        }
    })
    .await
    .expect("TLS baseline accept loop");
}

/// A certificate authority and a server certificate for 127.0.0.1, in
/// `dir`: (cert path, key path, client config for each ALPN protocol).
struct Tls {
    cert: String,
    key: String,
    ca: rustls::pki_types::CertificateDer<'static>,
}

impl Tls {
    fn new(dir: &std::path::Path) -> Tls {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(params, ca_key);
        let leaf =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&cert_path, cert.pem()).unwrap();
        Tls {
            cert: cert_path.to_str().unwrap().to_owned(),
            key: key_path.to_str().unwrap().to_owned(),
            ca: ca.der().clone(),
        }
    }

    /// The client side for `mode`: ALPN `h2` for HTTP/2, `http/1.1` otherwise.
    fn client(&self, mode: Mode) -> std::sync::Arc<rustls::ClientConfig> {
        let alpn: &[u8] = match mode {
            Mode::Http2 => b"h2",
            _ => b"http/1.1",
        };
        tls::client(tls::Trust::Ca(self.ca.clone()), &[alpn])
    }
}

/// Raises the soft limit on open files to the hard limit, for thousands of
/// connections (the servers inherit it).
fn raise_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

struct Options {
    quick: bool,
    https: bool,
    before: Option<String>,
    scale: Vec<usize>,
    steady_only: bool,
    modes: Vec<Mode>,
    conns: usize,
    reloads: usize,
    secs: f64,
    rounds: usize,
    json: String,
    svg: String,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            quick: false,
            https: false,
            before: None,
            scale: Vec::new(),
            steady_only: false,
            modes: vec![Mode::KeepAlive, Mode::Close, Mode::Http2],
            conns: 64,
            reloads: 50,
            secs: 2.0,
            rounds: 6,
            json: concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/bench.json").into(),
            svg: concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reload.svg").into(),
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
                "--steady-only" => o.steady_only = true,
                "--https" => o.https = true,
                "--before" => o.before = Some(value()),
                "--scale" => {
                    o.scale = value()
                        .split(',')
                        .map(|n| n.parse().expect("--scale N,N,…"))
                        .collect()
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
                "--conns" => o.conns = value().parse().expect("--conns N"),
                "--reloads" => o.reloads = value().parse().expect("--reloads N"),
                "--secs" => o.secs = value().parse().expect("--secs S"),
                "--rounds" => o.rounds = value().parse().expect("--rounds R"),
                "--json" => o.json = value(),
                // The servers are this binary's children: they read it.
                "--backlog" => std::env::set_var(
                    "BENCH_BACKLOG",
                    value().parse::<u32>().expect("--backlog N").to_string(),
                ),
                "--svg" => o.svg = value(),
                other => panic!("unknown option {other}"),
            }
        }
        o
    }
}

fn server(role: &str) -> Proc {
    server_with(role, &[])
}

fn server_with(role: &str, extra: &[&str]) -> Proc {
    server_from(&std::env::current_exe().unwrap(), role, extra)
}

fn server_from(bin: &std::path::Path, role: &str, extra: &[&str]) -> Proc {
    let mut spec = Spec::new(bin).arg(role).arg("127.0.0.1:0");
    for a in extra {
        spec = spec.arg(*a);
    }
    spec.start()
}

/// CPU time `pid` has used, in ns: the sum over its threads (schedstat is
/// kept in ns, unlike the clock ticks of /proc/PID/stat).
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
    /// Requests/s over the whole buckets.
    rps: f64,
    /// Server CPU time per request, µs.
    cpu_us: f64,
    failed: u64,
}

/// Requests/s and CPU per request of `role` under `mode` load for `secs`.
fn throughput(rt: &tokio::runtime::Runtime, role: &str, mode: Mode, o: &Options) -> Round {
    throughput_with(rt, role, mode, o, None)
}

/// Like [`throughput`], over TLS when `tls` is given.
fn throughput_with(
    rt: &tokio::runtime::Runtime,
    role: &str,
    mode: Mode,
    o: &Options,
    tls: Option<&Tls>,
) -> Round {
    let p = match (tls, role.strip_prefix("before:")) {
        (_, Some(bin)) => server_from(bin.as_ref(), "serve-endless", &[]),
        (Some(t), None) => server_with(role, &[&t.cert, &t.key]),
        (None, None) => server(role),
    };
    let pid = p.current().pid;
    let cpu0 = cpu_ns(pid);
    let l = match tls {
        Some(t) => load::start_tls(rt.handle(), &p.addr(), mode, o.conns, "/", t.client(mode)),
        None => load::start(rt.handle(), &p.addr(), mode, o.conns, "/"),
    };
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    let stats = l.finish();
    Round::of(&stats, cpu_ns(pid) - cpu0, o.secs)
}

impl Round {
    /// The round of a server that used `cpu` ns under a load of `secs`
    /// that gathered `stats`.
    fn of(stats: &Stats, cpu: u64, secs: f64) -> Round {
        // Whole buckets only, skipping the first (connections opening).
        let full = (secs * 10.0) as usize;
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
}

/// Requests/s and CPU per request of the baseline and endless, loaded at
/// the same time (each with its own `conns` connections) for `secs`: the
/// machine's noise then hits both alike, and the two share its CPU. The
/// servers start fresh for each round.
fn throughput_together(rt: &tokio::runtime::Runtime, mode: Mode, o: &Options) -> [Round; 2] {
    let servers = [server("serve-baseline"), server("serve-endless")];
    let pids = servers.each_ref().map(|p| p.current().pid);
    let cpu0 = pids.map(cpu_ns);
    let loads = servers
        .each_ref()
        .map(|p| load::start(rt.handle(), &p.addr(), mode, o.conns, "/"));
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    let stats = loads.map(|l| l.finish());
    std::array::from_fn(|i| Round::of(&stats[i], cpu_ns(pids[i]) - cpu0[i], o.secs))
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

/// The resident memory (all, anonymous) of a baseline and an endless server.
type MemPair = ((u64, u64), (u64, u64));

/// Idle memory of several fresh pairs of servers (baseline, endless), as
/// medians: of each figure, and of the per-pair ratios.
struct MemPairs {
    base_rss: u64,
    ours_rss: u64,
    base_anon: u64,
    ours_anon: u64,
    rss_ratio: f64,
    rss_ratio_min: f64,
    rss_ratio_max: f64,
    anon_ratio: f64,
    rss_ratios: Vec<f64>,
}

impl MemPairs {
    fn of(pairs: &[MemPair]) -> MemPairs {
        let med = |f: &dyn Fn(&MemPair) -> u64| {
            let mut v: Vec<u64> = pairs.iter().map(f).collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        let ratios = |f: &dyn Fn(&MemPair) -> f64| pairs.iter().map(f).collect::<Vec<f64>>();
        let rss_ratios = ratios(&|((b, _), (e, _))| *e as f64 / *b as f64);
        let mut anon = ratios(&|((_, b), (_, e))| *e as f64 / *b as f64);
        let mut sorted = rss_ratios.clone();
        MemPairs {
            base_rss: med(&|p| p.0 .0),
            ours_rss: med(&|p| p.1 .0),
            base_anon: med(&|p| p.0 .1),
            ours_anon: med(&|p| p.1 .1),
            rss_ratio: median(&mut sorted),
            rss_ratio_min: sorted.first().copied().unwrap_or(f64::NAN),
            rss_ratio_max: sorted.last().copied().unwrap_or(f64::NAN),
            anon_ratio: median(&mut anon),
            rss_ratios,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"baseline_rss_kib": self.base_rss, "endless_rss_kib": self.ours_rss,
            "rss_ratio": self.rss_ratio, "pair_rss_ratios": self.rss_ratios,
            "baseline_anon_kib": self.base_anon, "endless_anon_kib": self.ours_anon,
            "anon_ratio": self.anon_ratio})
    }
}

/// Resident memory in KiB: all of it (`VmRSS`), and the anonymous part
/// (`RssAnon`: heap and stacks, without the program's code and data pages,
/// which are file-backed, shared and reclaimable).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
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

/// Until `until` or until all have exited, records in `exit_ms` the exits of
/// the old generations in `exiting` (PID, time of its reload signal).
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
    mode: Mode,
    stats: Stats,
    /// Signal to the new generation's READY line, ms.
    ready_ms: Vec<f64>,
    /// Signal to the old generation's exit, ms.
    exit_ms: Vec<f64>,
    /// Reload signal times, seconds since the load started.
    marks: Vec<f64>,
    /// The lowest 100 ms bucket around each reload, as a share of the median bucket.
    dips: Vec<f64>,
    /// The same statistic, at the same moments, in a run of the same length
    /// and load without reloads: what the machine's own noise does.
    control_dips: Vec<f64>,
}

/// For each mark (seconds since the load started), the lowest 100 ms bucket
/// from 100 ms before it to 300 ms after, as a share of the median bucket
/// (skipping the first bucket, connections opening, and the last, partial).
fn dips_at(b: &[u64], marks: &[f64]) -> Vec<f64> {
    let steady: Vec<f64> = b
        .iter()
        .skip(1)
        .take(b.len().saturating_sub(2))
        .map(|&v| v as f64)
        .collect();
    let med = median(&mut steady.clone());
    marks
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
        .collect()
}

fn reload_run(rt: &tokio::runtime::Runtime, mode: Mode, o: &Options) -> ReloadRun {
    let p = server("serve-endless");
    let l = load::start(rt.handle(), &p.addr(), mode, o.conns, "/");
    let t0 = l.t0();
    std::thread::sleep(Duration::from_millis(500));
    let mut ready_ms = Vec::new();
    let mut marks = Vec::new();
    // (old pid, signal time) until each old generation has exited.
    let mut exiting: Vec<(u32, Instant)> = Vec::new();
    let mut exit_ms = Vec::new();
    for _ in 0..o.reloads {
        let old = p.current().pid;
        let t = Instant::now();
        signal_pid(old, Signal::SIGHUP);
        p.wait_ready_after(old, Duration::from_secs(30))
            .expect("new generation");
        ready_ms.push(t.elapsed().as_secs_f64() * 1e3);
        marks.push((t - t0).as_secs_f64());
        exiting.push((old, t));
        // Let the load settle between reloads, watching the old ones exit.
        let until = Instant::now() + Duration::from_millis(300);
        watch_exits(&mut exiting, &mut exit_ms, until);
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(300));
    let length = t0.elapsed();
    let stats = l.finish();
    watch_exits(
        &mut exiting,
        &mut exit_ms,
        Instant::now() + Duration::from_secs(30),
    );
    drop(p);
    let dips = dips_at(&stats.buckets, &marks);

    // The control: the same load for as long, on a fresh server, with no
    // reload; the same statistic at the same moments.
    let p = server("serve-endless");
    let l = load::start(rt.handle(), &p.addr(), mode, o.conns, "/");
    std::thread::sleep(length);
    let control = l.finish();
    drop(p);
    let control_dips = dips_at(&control.buckets, &marks);
    ReloadRun {
        mode,
        stats,
        ready_ms,
        exit_ms,
        marks,
        dips,
        control_dips,
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

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("serve-endless") => return runtime().block_on(serve_endless(args.next().unwrap())),
        Some("serve-baseline") => {
            return runtime().block_on(serve_baseline(args.next().unwrap(), false))
        }
        Some("serve-baseline-timeout") => {
            return runtime().block_on(serve_baseline(args.next().unwrap(), true))
        }
        Some(role @ ("serve-endless-tls" | "serve-baseline-tls")) => {
            let endless = role == "serve-endless-tls";
            let (addr, cert, key) = (
                args.next().unwrap(),
                args.next().unwrap(),
                args.next().unwrap(),
            );
            return if endless {
                runtime().block_on(serve_endless_tls(addr, cert, key))
            } else {
                runtime().block_on(serve_baseline_tls(addr, cert, key))
            };
        }
        _ => {}
    }
    let o = Options::parse();
    let rt = load::runtime();
    let modes = o.modes.clone();
    let nofile = raise_file_limit();
    let load_at_start = load_average();
    println!("endless benchmark: {}", machine());
    println!("open files limit: {nofile}; load average at start: {load_at_start}");
    if !o.scale.is_empty() {
        return scale(&rt, &o);
    }
    println!(
        "load: {} connections; steady state {} round(s) of {:.1} s per server and mode, alternating; {} reloads per mode",
        o.conns, o.rounds, o.secs, o.reloads
    );

    // 1. Steady state, alternating so that drift hits both alike.
    let mut steady = Vec::new();
    for &mode in &modes {
        let (mut base, mut timed, mut ours, mut before) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut base_together, mut ours_together) = (Vec::new(), Vec::new());
        let before_role = o.before.as_ref().map(|b| format!("before:{b}"));
        for _ in 0..o.rounds {
            base.push(throughput(&rt, "serve-baseline", mode, &o));
            timed.push(throughput(&rt, "serve-baseline-timeout", mode, &o));
            ours.push(throughput(&rt, "serve-endless", mode, &o));
            if let Some(role) = &before_role {
                before.push(throughput(&rt, role, mode, &o));
            }
            let [b, e] = throughput_together(&rt, mode, &o);
            base_together.push(b);
            ours_together.push(e);
        }
        let failed: u64 = base
            .iter()
            .chain(&timed)
            .chain(&ours)
            .chain(&base_together)
            .chain(&ours_together)
            .map(|r| r.failed)
            .sum();
        // Each round's ratio pairs runs made seconds apart; the median of
        // those is what survives the machine's drift.
        let ratio = |f: fn(&Round) -> f64, a: &[Round], b: &[Round]| {
            let v: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect();
            (median(&mut v.clone()), v)
        };
        let med =
            |f: fn(&Round) -> f64, v: &[Round]| median(&mut v.iter().map(f).collect::<Vec<_>>());
        let (rps_ratio, round_ratios) = ratio(|r| r.rps, &ours, &base);
        let (cpu_ratio, round_cpu_ratios) = ratio(|r| r.cpu_us, &ours, &base);
        let (rps_ratio_together, round_ratios_together) =
            ratio(|r| r.rps, &ours_together, &base_together);
        let (cpu_ratio_together, _) = ratio(|r| r.cpu_us, &ours_together, &base_together);
        let (rps_ratio_timed, _) = ratio(|r| r.rps, &ours, &timed);
        let (cpu_ratio_timed, _) = ratio(|r| r.cpu_us, &ours, &timed);
        let before_json = if before.is_empty() {
            serde_json::Value::Null
        } else {
            let (ratio_before, _) = ratio(|r| r.rps, &before, &base);
            let (cpu_ratio_before, _) = ratio(|r| r.cpu_us, &before, &base);
            let (after_before, after_before_rounds) = ratio(|r| r.rps, &ours, &before);
            let (cpu_after_before, cpu_after_before_rounds) = ratio(|r| r.cpu_us, &ours, &before);
            json!({"endless_before_rps": med(|r| r.rps, &before),
                "endless_before_cpu_us_per_request": med(|r| r.cpu_us, &before),
                "ratio_before": ratio_before, "cpu_ratio_before": cpu_ratio_before,
                "after_over_before": after_before, "round_after_over_before": after_before_rounds,
                "cpu_after_over_before": cpu_after_before, "round_cpu_after_over_before": cpu_after_before_rounds})
        };
        steady.push(json!({"mode": mode_name(mode),
            "baseline_rps": med(|r| r.rps, &base), "endless_rps": med(|r| r.rps, &ours),
            "ratio": rps_ratio, "round_ratios": round_ratios,
            "baseline_cpu_us_per_request": med(|r| r.cpu_us, &base),
            "endless_cpu_us_per_request": med(|r| r.cpu_us, &ours),
            "cpu_ratio": cpu_ratio, "round_cpu_ratios": round_cpu_ratios,
            "with_header_timeout": {"baseline_rps": med(|r| r.rps, &timed),
                "baseline_cpu_us_per_request": med(|r| r.cpu_us, &timed),
                "ratio": rps_ratio_timed, "cpu_ratio": cpu_ratio_timed},
            "together": {"ratio": rps_ratio_together, "round_ratios": round_ratios_together,
                "cpu_ratio": cpu_ratio_together,
                "baseline_rps": med(|r| r.rps, &base_together),
                "endless_rps": med(|r| r.rps, &ours_together)},
            "before": before_json,
            "failed": failed}));
    }

    // 1b. The same over TLS, against tokio-rustls + hyper-util.
    let mut steady_tls = Vec::new();
    if o.https {
        let dir = tempfile::tempdir().expect("temporary directory");
        let tls = Tls::new(dir.path());
        for &mode in &modes {
            let (mut base, mut ours) = (Vec::new(), Vec::new());
            for _ in 0..o.rounds {
                base.push(throughput_with(
                    &rt,
                    "serve-baseline-tls",
                    mode,
                    &o,
                    Some(&tls),
                ));
                ours.push(throughput_with(
                    &rt,
                    "serve-endless-tls",
                    mode,
                    &o,
                    Some(&tls),
                ));
            }
            let ratios: Vec<f64> = ours.iter().zip(&base).map(|(x, y)| x.rps / y.rps).collect();
            let cpu: Vec<f64> = ours
                .iter()
                .zip(&base)
                .map(|(x, y)| x.cpu_us / y.cpu_us)
                .collect();
            let med = |f: fn(&Round) -> f64, v: &[Round]| {
                median(&mut v.iter().map(f).collect::<Vec<_>>())
            };
            steady_tls.push(json!({"mode": mode_name(mode),
                "baseline_rps": med(|r| r.rps, &base), "endless_rps": med(|r| r.rps, &ours),
                "ratio": median(&mut ratios.clone()), "round_ratios": ratios,
                "baseline_cpu_us_per_request": med(|r| r.cpu_us, &base),
                "endless_cpu_us_per_request": med(|r| r.cpu_us, &ours),
                "cpu_ratio": median(&mut cpu.clone()), "round_cpu_ratios": cpu,
                "failed": base.iter().chain(&ours).map(|r| r.failed).sum::<u64>()}));
        }
    }

    if o.steady_only {
        for s in steady.iter().chain(&steady_tls) {
            println!("{s}");
        }
        return;
    }

    // 2. Reloads under load.
    let runs: Vec<ReloadRun> = modes.iter().map(|&m| reload_run(&rt, m, &o)).collect();

    // 3. Memory and FDs: idle, and after 100 reloads.
    //
    // A process's resident code pages vary from start to start by a few
    // hundred KiB (the kernel maps a file's neighbouring pages that are in
    // the page cache along with the one touched), so one start of each
    // says little: the figures are medians over several fresh pairs, the
    // order of the two starts alternating.
    let pairs = if o.quick { 1 } else { 7 };
    let mut at_start = Vec::new();
    let mut warm = Vec::new();
    let mut first_fds = 0;
    for i in 0..pairs {
        let (base, ours) = if i % 2 == 0 {
            let b = server("serve-baseline");
            (b, server("serve-endless"))
        } else {
            let e = server("serve-endless");
            (server("serve-baseline"), e)
        };
        std::thread::sleep(Duration::from_millis(300));
        at_start.push((rss_kib(base.current().pid), rss_kib(ours.current().pid)));
        first_fds = fd_count(ours.current().pid);
        // Idle again after serving: one second of keep-alive load on each
        // (one after the other), then half a second of rest. A server at
        // rest has usually served; a fresh one has touched less of its code.
        for p in [&base, &ours] {
            let l = load::start(rt.handle(), &p.addr(), Mode::KeepAlive, o.conns, "/");
            std::thread::sleep(Duration::from_secs(1));
            l.finish();
        }
        std::thread::sleep(Duration::from_millis(500));
        warm.push((rss_kib(base.current().pid), rss_kib(ours.current().pid)));
    }
    let (at_start, warm) = (MemPairs::of(&at_start), MemPairs::of(&warm));
    let ours = server("serve-endless");
    std::thread::sleep(Duration::from_millis(300));
    let first_rss = rss_kib(ours.current().pid);
    let n_mem = if o.quick { 5 } else { 100 };
    for _ in 0..n_mem {
        ours.reload(Signal::SIGHUP);
    }
    // Once the last predecessor has let go (its probation over), the link
    // to it is closed too.
    std::thread::sleep(probation() + Duration::from_millis(300));
    let last = ours.current().pid;
    let (last_rss, last_fds) = (rss_kib(last), fd_count(last));
    drop(ours);

    // Report.
    println!();
    println!("Steady state (medians of per-round ratios; the servers loaded one after the other, and then both at the same time; the second baseline has hyper's 30 s header-read timeout on; endless enforces the same timeout with its sweeper instead):");
    println!();
    println!("| mode | req/s baseline / endless | req/s ratio | CPU µs per request, baseline / endless | CPU ratio | loaded together: req/s ratio, CPU ratio | vs baseline with header timeout: req/s ratio, CPU ratio |");
    println!("|---|---|---|---|---|---|---|");
    for s in &steady {
        let f = |k: &str| s[k].as_f64().unwrap();
        let t = &s["with_header_timeout"];
        let g = &s["together"];
        println!(
            "| {} | {:.0} / {:.0} | {:.3} | {:.2} / {:.2} | {:.3} | {:.3}, {:.3} | {:.3}, {:.3} |",
            s["mode"].as_str().unwrap(),
            f("baseline_rps"),
            f("endless_rps"),
            f("ratio"),
            f("baseline_cpu_us_per_request"),
            f("endless_cpu_us_per_request"),
            f("cpu_ratio"),
            g["ratio"].as_f64().unwrap(),
            g["cpu_ratio"].as_f64().unwrap(),
            t["ratio"].as_f64().unwrap(),
            t["cpu_ratio"].as_f64().unwrap(),
        );
    }
    if o.before.is_some() {
        println!();
        println!("Before and after (the endless of `--before`, same rounds):");
        println!();
        println!("| mode | req/s ratio to baseline, before / after | CPU ratio to baseline, before / after | after / before: req/s, CPU |");
        println!("|---|---|---|---|");
        for s in &steady {
            let b = &s["before"];
            let f = |k: &str| b[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3}, {:.3} |",
                s["mode"].as_str().unwrap(),
                f("ratio_before"),
                s["ratio"].as_f64().unwrap(),
                f("cpu_ratio_before"),
                s["cpu_ratio"].as_f64().unwrap(),
                f("after_over_before"),
                f("cpu_after_over_before"),
            );
        }
    }
    if !steady_tls.is_empty() {
        println!();
        println!("HTTPS steady state, against tokio-rustls + hyper-util:");
        println!();
        println!("| mode | req/s baseline / endless | req/s ratio | CPU µs per request, baseline / endless | CPU ratio |");
        println!("|---|---|---|---|---|");
        for s in &steady_tls {
            let f = |k: &str| s[k].as_f64().unwrap();
            println!(
                "| {} | {:.0} / {:.0} | {:.3} | {:.2} / {:.2} | {:.3} |",
                s["mode"].as_str().unwrap(),
                f("baseline_rps"),
                f("endless_rps"),
                f("ratio"),
                f("baseline_cpu_us_per_request"),
                f("endless_cpu_us_per_request"),
                f("cpu_ratio"),
            );
        }
    }
    println!();
    println!("Reloads under load:");
    println!();
    println!("| mode | reloads | requests | failed | retried (never processed) | signal→serving p50 / p99 / max | signal→old exit p50 / max | lowest 100 ms bucket, worst / median | the same without reloads (control) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut reload_json = Vec::new();
    for r in &runs {
        let (mut ready, mut exit, mut dips) =
            (r.ready_ms.clone(), r.exit_ms.clone(), r.dips.clone());
        let mut control = r.control_dips.clone();
        let row = json!({
            "mode": mode_name(r.mode), "reloads": r.ready_ms.len(), "requests_ok": r.stats.ok,
            "failed": r.stats.failed, "retried_unprocessed": r.stats.retried, "errors": r.stats.errors,
            "ready_ms": {"p50": median(&mut ready), "p99": percentile(&mut ready, 0.99), "max": percentile(&mut ready, 1.0)},
            "old_exit_ms": {"p50": median(&mut exit), "max": percentile(&mut exit, 1.0), "exits_seen": r.exit_ms.len()},
            "lowest_bucket_share": {"worst": percentile(&mut dips, 0.0), "median": median(&mut dips)},
            "control_lowest_bucket_share": {"worst": percentile(&mut control, 0.0), "median": median(&mut control)},
        });
        println!(
            "| {} | {} | {} | {} | {} | {:.1} / {:.1} / {:.1} ms | {:.0} / {:.0} ms | {:.0}% / {:.0}% | {:.0}% / {:.0}% |",
            mode_name(r.mode),
            r.ready_ms.len(),
            r.stats.ok,
            r.stats.failed,
            r.stats.retried,
            row["ready_ms"]["p50"].as_f64().unwrap(),
            row["ready_ms"]["p99"].as_f64().unwrap(),
            row["ready_ms"]["max"].as_f64().unwrap(),
            row["old_exit_ms"]["p50"].as_f64().unwrap(),
            row["old_exit_ms"]["max"].as_f64().unwrap(),
            row["lowest_bucket_share"]["worst"].as_f64().unwrap() * 100.0,
            row["lowest_bucket_share"]["median"].as_f64().unwrap() * 100.0,
            row["control_lowest_bucket_share"]["worst"].as_f64().unwrap() * 100.0,
            row["control_lowest_bucket_share"]["median"].as_f64().unwrap() * 100.0,
        );
        if !r.stats.errors.is_empty() {
            println!("  {} errors: {:?}", mode_name(r.mode), r.stats.errors);
        }
        reload_json.push(row);
    }
    println!();
    for (when, m) in [
        ("at start", &at_start),
        ("after serving 1 s of keep-alive load", &warm),
    ] {
        println!(
            "idle RSS {when} (medians of {pairs} fresh pairs): baseline {} KiB, endless {} KiB (ratio {:.3}, pairs {:.3}..{:.3}); anonymous (heap, stacks): baseline {} KiB, endless {} KiB (ratio {:.3})",
            m.base_rss, m.ours_rss, m.rss_ratio, m.rss_ratio_min, m.rss_ratio_max, m.base_anon, m.ours_anon, m.anon_ratio
        );
    }
    println!(
        "after {n_mem} reloads: RSS {} KiB, anonymous {} KiB, FDs {last_fds} (first generation: {} KiB, {} KiB, {first_fds} FDs)",
        last_rss.0, last_rss.1, first_rss.0, first_rss.1
    );

    let report = json!({
        "machine": machine(),
        "options": {"conns": o.conns, "reloads": o.reloads, "secs": o.secs, "rounds": o.rounds, "quick": o.quick},
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
        "steady_state": steady,
        "steady_state_https": steady_tls,
        "reloads": reload_json,
        "memory": {
            "pairs": pairs,
            "at_start": at_start.json(),
            "after_serving": warm.json(),
            "reloads": n_mem, "rss_after_reloads_kib": last_rss.0, "anon_after_reloads_kib": last_rss.1,
            "fds_first": first_fds, "fds_after_reloads": last_fds},
        "series": runs.iter().map(|r| json!({"mode": mode_name(r.mode), "buckets_100ms": r.stats.buckets, "reload_marks_s": r.marks})).collect::<Vec<_>>(),
    });
    if let Some(dir) = std::path::Path::new(&o.json).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&o.json, serde_json::to_string_pretty(&report).unwrap()).expect("write JSON");
    draw(&runs, &o.svg).expect("draw SVG");
    println!("wrote {} and {}", o.json, o.svg);
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// How the cost grows with the number of keep-alive connections: the
/// steady req/s ratio, the failed requests across reloads and the old
/// generation's drain time, at each of `o.scale` connections.
fn scale(rt: &tokio::runtime::Runtime, o: &Options) {
    let load_at_start = load_average();
    let mut rows = Vec::new();
    println!();
    println!("| keep-alive connections | req/s ratio (rounds: min–max) | CPU ratio | reloads | requests | failed | signal→old exit p50 / max | lowest 100 ms bucket, worst / median | the same without reloads (control) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &conns in &o.scale {
        let o = Options {
            conns,
            json: String::new(),
            svg: String::new(),
            modes: vec![Mode::KeepAlive],
            scale: Vec::new(),
            before: None,
            ..*o
        };
        let (mut base, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..o.rounds {
            base.push(throughput(rt, "serve-baseline", Mode::KeepAlive, &o));
            ours.push(throughput(rt, "serve-endless", Mode::KeepAlive, &o));
        }
        let mut ratios: Vec<f64> = ours.iter().zip(&base).map(|(x, y)| x.rps / y.rps).collect();
        let mut cpu: Vec<f64> = ours
            .iter()
            .zip(&base)
            .map(|(x, y)| x.cpu_us / y.cpu_us)
            .collect();
        let r = reload_run(rt, Mode::KeepAlive, &o);
        let (mut exit, mut dips) = (r.exit_ms.clone(), r.dips.clone());
        let mut control = r.control_dips.clone();
        let row = json!({"conns": conns,
            "ratio": median(&mut ratios.clone()), "round_ratios": ratios.clone(),
            "cpu_ratio": median(&mut cpu), "steady_failed": base.iter().chain(&ours).map(|r| r.failed).sum::<u64>(),
            "reloads": r.ready_ms.len(), "requests_ok": r.stats.ok, "failed": r.stats.failed,
            "failures": r.stats.failures,
            "old_exit_ms": {"p50": median(&mut exit), "max": percentile(&mut exit, 1.0), "exits_seen": r.exit_ms.len()},
            "lowest_bucket_share": {"worst": percentile(&mut dips, 0.0), "median": median(&mut dips)},
            "control_lowest_bucket_share": {"worst": percentile(&mut control, 0.0), "median": median(&mut control)}});
        println!(
            "| {conns} | {:.3} ({:.2}–{:.2}) | {:.3} | {} | {} | {} | {:.0} / {:.0} ms | {:.0}% / {:.0}% | {:.0}% / {:.0}% |",
            row["ratio"].as_f64().unwrap(),
            percentile(&mut ratios, 0.0),
            percentile(&mut ratios, 1.0),
            row["cpu_ratio"].as_f64().unwrap(),
            r.ready_ms.len(),
            r.stats.ok,
            r.stats.failed,
            row["old_exit_ms"]["p50"].as_f64().unwrap(),
            row["old_exit_ms"]["max"].as_f64().unwrap(),
            row["lowest_bucket_share"]["worst"].as_f64().unwrap() * 100.0,
            row["lowest_bucket_share"]["median"].as_f64().unwrap() * 100.0,
            row["control_lowest_bucket_share"]["worst"].as_f64().unwrap() * 100.0,
            row["control_lowest_bucket_share"]["median"].as_f64().unwrap() * 100.0,
        );
        if !r.stats.failures.is_empty() {
            println!("  failures: {:?}", r.stats.failures);
        }
        rows.push(row);
    }
    let name = backlog().map_or("bench-scale.json".to_owned(), |n| {
        format!("bench-scale-backlog{n}.json")
    });
    let path = std::path::Path::new(&o.json).with_file_name(name);
    let report = json!({"machine": machine(), "load_average_at_start": load_at_start, "load_average_at_end": load_average(),
        "options": {"reloads": o.reloads, "secs": o.secs, "rounds": o.rounds, "backlog": backlog()},
        "scale": rows});
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).expect("write JSON");
    println!("wrote {}", path.display());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Requests/s per 100 ms for each mode, one panel each, reloads marked.
fn draw(runs: &[ReloadRun], path: &str) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 240 * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, run) in root.split_evenly((runs.len(), 1)).iter().zip(runs) {
        let b = &run.stats.buckets;
        let n = b.len().saturating_sub(1).max(1);
        let ymax = b.iter().copied().max().unwrap_or(1) as f64 * 10.0 * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{}: requests/s per 100 ms, {} reloads (red), {} failed",
                    mode_name(run.mode),
                    run.marks.len(),
                    run.stats.failed
                ),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n as f64 / 10.0, 0f64..ymax.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .disable_mesh()
            .draw()?;
        for &m in &run.marks {
            chart.draw_series(LineSeries::new([(m, 0.0), (m, ymax)], RED.mix(0.35)))?;
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
    root.present()?;
    Ok(())
}
