//! Long-lived connections end cleanly at a reload: the WebSocket example
//! closes each connection with 1012 at the drain notice and its clients
//! reconnect to the new generation; the SSE example ends each stream with a
//! last `reload` event and a `retry:` hint. Real processes, real clients on
//! 127.0.0.1, real signals.

// The workspace's test support (testing/src); it finds the examples in
// the workspace's target directory.
use endless_tests as support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use support::{signal_pid, Proc, Spec};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The examples' drain notice spread and stop timeout (the library's
/// defaults).
const NOTICE_SPREAD: Duration = Duration::from_secs(2);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The examples' probation (the library's default): an old generation
/// holds its sockets this long after the hand-over, drained or not.
const PROBATION: Duration = Duration::from_secs(10);
/// An old generation must be gone this long after the reload signal: its
/// probation, then the notice spread plus time for the closing handshakes
/// (which run during the probation), below the stop timeout that would
/// otherwise cut the connections.
const EXIT_WITHIN: Duration = Duration::from_millis(PROBATION.as_millis() as u64 + 5_000);

const CLIENTS: usize = 300;
const RELOADS: usize = 3;
const MESSAGE_EVERY: Duration = Duration::from_millis(100);

/// Waits for the example's `NAME: pid P serving URL` line from a generation
/// not in `known`; returns the PID and the URL's `host:port`.
fn serving(p: &Proc, name: &str, known: &[u32]) -> (u32, String) {
    let prefix = format!("{name}: pid ");
    let parse = |l: &str| -> Option<(u32, String)> {
        let rest = l.strip_prefix(&prefix)?;
        let (pid, rest) = rest.split_once(' ')?;
        let url = rest.strip_prefix("serving ")?.split_whitespace().next()?;
        let addr = url.split("://").nth(1)?.trim_end_matches('/');
        Some((pid.parse().ok()?, addr.to_owned()))
    };
    let line = p
        .wait_line(Duration::from_secs(20), |l| {
            parse(l).is_some_and(|(pid, _)| !known.contains(&pid))
        })
        .unwrap_or_else(|| panic!("no new {name} generation:\n{}", p.report()));
    parse(&line).unwrap()
}

/// Sends `SIGHUP` to the last of `pids`, waits for the next generation,
/// then for the old one to exit; checks that it exited 0 well before the
/// stop timeout. Returns the new PID and how long the old one took to exit
/// after the signal.
fn reload(p: &mut Proc, name: &str, pids: &[u32]) -> (u32, Duration) {
    let old = *pids.last().unwrap();
    let sent = Instant::now();
    signal_pid(old, Signal::SIGHUP);
    let (new, _) = serving(p, name, pids);
    // Any generation but the first becomes ours to reap when its parent
    // exits, which it did before this one was signalled.
    let status = p.wait_exit(old, STOP_TIMEOUT + Duration::from_secs(5));
    let took = sent.elapsed();
    assert_eq!(
        status,
        Some(WaitStatus::Exited(Pid::from_raw(old as i32), 0)),
        "generation {old} after {took:?}:\n{}",
        p.report()
    );
    assert!(
        took < EXIT_WITHIN,
        "generation {old} took {took:?} to exit (notice spread {NOTICE_SPREAD:?}, stop timeout {STOP_TIMEOUT:?}):\n{}",
        p.report()
    );
    (new, took)
}

/// Lets this process hold a few hundred sockets, with their reconnections.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// One WebSocket connection as a client saw it.
#[derive(Debug)]
struct Conn {
    /// When its handshake completed.
    opened: Instant,
    /// The PID that echoed on it (all its echoes must agree).
    pid: Option<u32>,
    echoes: u64,
    /// The server's close frame: its code and when it came.
    close: Option<(CloseCode, Instant)>,
}

#[derive(Debug, Default)]
struct ClientReport {
    conns: Vec<Conn>,
    /// Connection attempts that failed (refused, reset, a failed handshake).
    failed_connects: u32,
}

/// One client: a message every 100 ms, each echo checked; on the server's
/// close frame (1012 or 1001) it reconnects and goes on, until `stop`. Any
/// other ending of a connection is an error.
async fn ws_client(
    id: usize,
    addr: String,
    current: Arc<AtomicU32>,
    stop: CancellationToken,
) -> Result<ClientReport, String> {
    let mut report = ClientReport::default();
    // Staggered, so the messages of all clients do not come in bursts.
    tokio::time::sleep(MESSAGE_EVERY * (id % 10) as u32 / 10).await;
    // At most one connection per generation, and one more in reserve.
    while report.conns.len() <= RELOADS + 1 {
        let mut ws = connect(&addr, &mut report).await?;
        let n = report.conns.len();
        report.conns.push(Conn {
            opened: Instant::now(),
            pid: None,
            echoes: 0,
            close: None,
        });
        let conn = &mut report.conns[n];
        let mut ticks = tokio::time::interval(MESSAGE_EVERY);
        let mut sent: VecDeque<String> = VecDeque::new();
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    // Our own clean close: the test is over.
                    ws.close(None).await.map_err(|e| format!("client {id}: close: {e}"))?;
                    tokio::time::timeout(Duration::from_secs(5), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await
                    .map_err(|_| format!("client {id}: no close reply from the server"))?;
                    return Ok(report);
                }
                _ = ticks.tick() => {
                    seq += 1;
                    let msg = format!("client {id} conn {n} message {seq}");
                    sent.push_back(msg.clone());
                    ws.send(Message::text(msg))
                        .await
                        .map_err(|e| format!("client {id} conn {n}: send: {e}"))?;
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        let expected = sent
                            .pop_front()
                            .ok_or_else(|| format!("client {id}: echo {text:?} of nothing"))?;
                        let (pid, echoed) = text
                            .strip_prefix("pid=")
                            .and_then(|t| t.split_once(": "))
                            .ok_or_else(|| format!("client {id}: bad echo {text:?}"))?;
                        let pid: u32 = pid.parse().map_err(|_| format!("bad pid in {text:?}"))?;
                        if echoed != expected {
                            return Err(format!("client {id}: echo {text:?} for {expected:?}"));
                        }
                        if *conn.pid.get_or_insert(pid) != pid {
                            return Err(format!("client {id} conn {n}: echoes from two PIDs: {conn:?}, {pid}"));
                        }
                        conn.echoes += 1;
                        current.store(pid, Ordering::Relaxed);
                    }
                    Some(Ok(Message::Close(Some(CloseFrame { code, .. }))))
                        if matches!(code, CloseCode::Restart | CloseCode::Away) =>
                    {
                        conn.close = Some((code, Instant::now()));
                        break;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Err(format!("client {id} conn {n}: unexpected close {frame:?}"));
                    }
                    Some(Ok(other)) => return Err(format!("client {id}: unexpected {other:?}")),
                    None => return Err(format!("client {id} conn {n}: EOF without a close frame")),
                    Some(Err(e)) => return Err(format!("client {id} conn {n}: {e}")),
                },
            }
        }
        // Finish the closing handshake (tungstenite answers the close
        // frame); the server then closes the TCP connection.
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    None => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("client {id} conn {n}: after close: {e}")),
                }
            }
        })
        .await
        .map_err(|_| format!("client {id} conn {n}: closing handshake never ended"))??;
    }
    Err(format!(
        "client {id}: more connections than reloads: {report:?}"
    ))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a connection, retrying with back-off (bounded: about 5 s in all).
async fn connect(addr: &str, report: &mut ClientReport) -> Result<Ws, String> {
    let mut delay = Duration::from_millis(10);
    let mut last = String::new();
    for _ in 0..12 {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(ws)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(ws)) => return Ok(ws),
            Ok(Err(e)) => last = e,
            Err(_) => last = "handshake timed out".into(),
        }
        report.failed_connects += 1;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
    Err(format!("could not connect to {addr}: {last}"))
}

/// Waits (bounded) until every client's last echo came from `pid`; `false`
/// if a client ended first (its error tells why) or on timeout.
fn wait_all_on(
    current: &[Arc<AtomicU32>],
    clients: &[tokio::task::JoinHandle<Result<ClientReport, String>>],
    pid: u32,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let behind = current
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) != pid)
            .count();
        if behind == 0 {
            return true;
        }
        if clients.iter().any(|c| c.is_finished()) || Instant::now() >= deadline {
            eprintln!("{behind} clients not echoed by {pid}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spread(times: impl IntoIterator<Item = Instant>) -> Duration {
    let times: Vec<Instant> = times.into_iter().collect();
    match (times.iter().min(), times.iter().max()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    }
}

#[test]
fn websocket_clients_get_a_close_frame_and_reconnect_across_reloads() {
    let _heavy = support::heavy();
    raise_nofile();
    let mut p = Spec::new(support::example("websocket"))
        .arg("127.0.0.1:0")
        .spawn();
    let (first, addr) = serving(&p, "websocket", &[]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let current: Vec<Arc<AtomicU32>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            rt.spawn(ws_client(
                id,
                addr.clone(),
                current[id].clone(),
                stop.clone(),
            ))
        })
        .collect();
    let mut ok = wait_all_on(&current, &clients, first, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));

    let mut pids = vec![first];
    let mut signalled = Vec::new();
    let mut exits = Vec::new();
    for _ in 0..RELOADS {
        if !ok {
            break;
        }
        signalled.push(Instant::now());
        let (new, took) = reload(&mut p, "websocket", &pids);
        exits.push(took);
        ok = wait_all_on(&current, &clients, new, Duration::from_secs(10));
        pids.push(new);
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.cancel();
    let results: Vec<_> = rt.block_on(async {
        let mut out = Vec::new();
        for c in clients {
            out.push(
                tokio::time::timeout(Duration::from_secs(20), c)
                    .await
                    .expect("a client never finished")
                    .expect("a client panicked"),
            );
        }
        out
    });

    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed, such as {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        p.report()
    );
    assert!(ok, "clients fell behind:\n{}", p.report());
    let reports: Vec<&ClientReport> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut echoes = 0;
    let mut closes = 0;
    let mut codes = std::collections::BTreeMap::new();
    for (id, r) in reports.iter().enumerate() {
        // One connection per generation, each served by that generation
        // only, each but the last ended by exactly one close frame.
        assert_eq!(r.conns.len(), RELOADS + 1, "client {id}: {r:?}");
        for (conn, pid) in r.conns.iter().zip(&pids) {
            assert_eq!(conn.pid, Some(*pid), "client {id}: {r:?}");
            assert!(conn.echoes > 0, "client {id}: {r:?}");
            echoes += conn.echoes;
        }
        for conn in &r.conns[..RELOADS] {
            let (code, _) = conn.close.expect("checked by the client");
            *codes.entry(u16::from(code)).or_insert(0) += 1;
            closes += 1;
        }
        assert!(r.conns[RELOADS].close.is_none(), "client {id}: {r:?}");
    }
    let failed_connects: u32 = reports.iter().map(|r| r.failed_connects).sum();
    assert_eq!(failed_connects, 0, "connection attempts failed");
    assert_eq!(closes, CLIENTS * RELOADS);

    println!(
        "websocket: {CLIENTS} clients, {RELOADS} reloads, generations {pids:?}: \
         {echoes} messages echoed, {closes} close frames (codes {codes:?}), \
         0 abnormal closures, {failed_connects} failed connection attempts"
    );
    for k in 0..RELOADS {
        let close_times = reports.iter().map(|r| r.conns[k].close.unwrap().1);
        let first_close = close_times.clone().min().unwrap() - signalled[k];
        let closes_over = spread(close_times);
        let reconnects_over = spread(reports.iter().map(|r| r.conns[k + 1].opened));
        println!(
            "reload {}: close frames from {first_close:?} after the signal over {closes_over:?}; \
             reconnections spread over {reconnects_over:?}; old generation exited 0 after {:?} \
             (stop timeout {STOP_TIMEOUT:?})",
            k + 1,
            exits[k]
        );
        // The notices are spread, not sent in one burst: 300 moments drawn
        // within 2 s span most of it.
        assert!(
            reconnects_over > NOTICE_SPREAD / 2,
            "reconnections within {reconnects_over:?}"
        );
    }

    // The last generation, its clients gone, stops at once.
    let last = *pids.last().unwrap();
    let sent = Instant::now();
    signal_pid(last, Signal::SIGTERM);
    let status = p.wait_exit(last, Duration::from_secs(10));
    assert_eq!(
        status,
        Some(WaitStatus::Exited(Pid::from_raw(last as i32), 0)),
        "{}",
        p.report()
    );
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
}

/// An SSE client's view of one response: its events, and whether it ended
/// with the chunked terminator.
struct Stream {
    events: Vec<String>,
    terminated: bool,
}

/// Opens `GET /` on `addr`; calls `each` after every event (with the events
/// so far) until the stream ends or `each` says stop.
fn sse_stream(
    addr: &str,
    last_event_id: Option<u64>,
    mut each: impl FnMut(&[String]) -> bool,
) -> Stream {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let resume = last_event_id
        .map(|n| format!("Last-Event-ID: {n}\r\n"))
        .unwrap_or_default();
    write!(
        tcp,
        "GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{resume}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(tcp);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "EOF in the head: {head}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut events = Vec::new();
    let mut pending = String::new();
    // Bounded: an event a second, and the caller stops within a minute.
    for _ in 0..100 {
        let mut size = String::new();
        if r.read_line(&mut size).unwrap() == 0 {
            break; // EOF without the terminator
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or_else(|_| panic!("{size:?}"));
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        assert!(chunk.ends_with(b"\r\n"));
        if n == 0 {
            return Stream {
                events,
                terminated: true,
            };
        }
        pending.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        while let Some((event, rest)) = pending.split_once("\n\n") {
            events.push(event.to_owned());
            pending = rest.to_owned();
            if !each(&events) {
                return Stream {
                    events,
                    terminated: false,
                };
            }
        }
    }
    Stream {
        events,
        terminated: false,
    }
}

#[test]
fn sse_stream_ends_with_a_reload_event_and_resumes_on_the_new_generation() {
    let mut p = Spec::new(support::example("sse"))
        .arg("127.0.0.1:0")
        .spawn();
    let (first, addr) = serving(&p, "sse", &[]);
    let mut signalled = None;
    let old = sse_stream(&addr, None, |events| {
        // Reload once two ticks came in; the stream goes on until the notice.
        if events.len() == 2 && signalled.is_none() {
            signalled = Some(Instant::now());
            signal_pid(first, Signal::SIGHUP);
        }
        true
    });
    let notice = signalled.expect("never got two events").elapsed();
    assert!(old.terminated, "no chunked terminator: {:?}", old.events);
    let (last, ticks) = old.events.split_last().unwrap();
    assert_eq!(
        *last,
        format!("event: reload\nretry: 1000\ndata: pid={first} is restarting; reconnect"),
    );
    for (i, tick) in ticks.iter().enumerate() {
        let n = i + 1;
        assert_eq!(*tick, format!("id: {n}\ndata: pid={first} tick {n}"));
    }
    // The old generation drains the notice spread at most, then exits.
    assert!(
        notice < NOTICE_SPREAD + Duration::from_secs(1),
        "{notice:?}"
    );
    let (new, _) = serving(&p, "sse", &[first]);
    let status = p.wait_exit(first, STOP_TIMEOUT + Duration::from_secs(5));
    let exited = signalled.unwrap().elapsed();
    assert_eq!(
        status,
        Some(WaitStatus::Exited(Pid::from_raw(first as i32), 0)),
        "{}",
        p.report()
    );
    assert!(exited < EXIT_WITHIN, "{exited:?}");

    // The client reconnects, as `retry:` says, and resumes after the last id.
    let resumed = ticks.len() as u64;
    let again = sse_stream(&addr, Some(resumed), |events| events.len() < 2);
    let n = resumed + 1;
    assert_eq!(
        again.events[0],
        format!("id: {n}\ndata: pid={new} tick {n}")
    );
    println!(
        "sse: {} ticks from {first}, then the reload event {notice:?} after the signal; \
         {first} exited 0 after {exited:?}; resumed at id {n} on {new}",
        ticks.len()
    );
}
