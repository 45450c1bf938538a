//! Probation: after a hand-over the old generation holds its sockets, and
//! serves again if the new one dies within the window.

use endless_tests as support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::load::{self, Mode};
use support::{get, served_pid, signal_pid, Proc, Spec};

/// How a successor dies.
#[derive(Debug, Clone, Copy)]
enum Death {
    Kill,
    Segv,
    /// `exit(1)` from a request handler.
    Exit,
}

fn kill(addr: &str, pid: u32, death: Death) {
    match death {
        Death::Kill => signal_pid(pid, Signal::SIGKILL),
        // A real fault: a `kill -SEGV` does not kill a Rust program.
        Death::Segv => {
            let _ = get(addr, "/segv");
        }
        Death::Exit => {
            // Answered by whichever generation accepts it: only the new one
            // (the old one no longer accepts).
            let _ = get(addr, "/exit/1");
        }
    }
}

/// Waits until `/` is answered by `pid` and says how long that took.
fn served_again_by(addr: &str, pid: u32, since: Instant) -> Duration {
    let answered = support::eventually(
        &format!("{pid} serves again"),
        Duration::from_secs(10),
        || match get(addr, "/") {
            Ok((200, body)) if served_pid(&body) == pid => Ok(since.elapsed()),
            other => Err(format!("{other:?}")),
        },
    );
    answered
}

/// One reload whose new generation dies `after` it took over: under `conns`
/// connections of `mode` load, the old generation serves again, and the
/// only failed requests are those the dead process had taken (at most one
/// per connection: the request in flight, or the next one sent on a
/// kept-alive connection it had). The port never refuses a connection.
fn die_and_resume(
    server: &Proc,
    mode: Mode,
    conns: usize,
    death: Death,
    after: Duration,
) -> (u64, Duration) {
    let rt = load::runtime();
    let addr = server.addr();
    let old = server.current().pid;
    let load = load::start(rt.handle(), &addr, mode, conns, "/");
    std::thread::sleep(Duration::from_millis(200));
    let new = server.reload(Signal::SIGHUP).pid;
    std::thread::sleep(after);
    let killed = Instant::now();
    kill(&addr, new, death);
    let resumed = served_again_by(&addr, old, killed);
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.finish();
    eprintln!(
        "{mode:?} {death:?} after {after:?}: {} ok, {} failed {:?}; served again after {resumed:?}",
        stats.ok, stats.failed, stats.failures
    );
    assert_eq!(
        stats.failures.get("connect").copied().unwrap_or(0),
        0,
        "the port refused connections: {:?}\n{}",
        stats.errors,
        server.report()
    );
    assert!(
        stats.failed <= conns as u64,
        "{} failed, more than the {conns} connections the dead process could have had: {:?}\n{}",
        stats.failed,
        stats.errors,
        server.report()
    );
    let by_old = stats
        .bodies
        .get(&format!("pid={old}\n"))
        .copied()
        .unwrap_or(0);
    assert!(by_old > 0, "the old generation served nothing: {stats:?}");
    (stats.failed, resumed)
}

fn deaths_under(mode: Mode) {
    let _heavy = support::heavy();
    let server = Spec::fixture().probation(Duration::from_secs(4)).start();
    let first = server.current().pid;
    let mut resumes = Vec::new();
    let mut failed = 0;
    let cases = [
        (Death::Kill, 100),
        (Death::Segv, 1_000),
        (Death::Exit, 2_500),
        (Death::Kill, 2_500),
        (Death::Exit, 100),
        (Death::Segv, 100),
    ];
    for (death, ms) in cases {
        let (f, r) = die_and_resume(&server, mode, 16, death, Duration::from_millis(ms));
        failed += f;
        resumes.push(r);
        // The same old generation serves on, and takes the next reload.
        assert_eq!(server.current().pid, first, "{}", server.report());
    }
    resumes.sort();
    eprintln!(
        "{mode:?}: {} deaths, {failed} failed requests in all; death to serving again p50 {:?} max {:?}",
        cases.len(),
        resumes[resumes.len() / 2],
        resumes[resumes.len() - 1]
    );
    // The next reload works as usual, and its generation stays.
    let next = server.reload(Signal::SIGHUP).pid;
    support::wait_served_by(&server.addr(), next);
}

#[test]
fn a_successor_that_dies_within_probation_is_replaced_under_keep_alive_load() {
    deaths_under(Mode::KeepAlive);
}

#[test]
fn a_successor_that_dies_within_probation_is_replaced_under_connection_close_load() {
    deaths_under(Mode::Close);
}

/// After the window the old generation is gone: a new generation that dies
/// then leaves nothing serving (a process manager restarts the program).
#[test]
fn a_successor_that_dies_after_probation_is_not_replaced() {
    let mut server = Spec::fixture()
        .probation(Duration::from_millis(300))
        .start();
    let addr = server.addr();
    let old = server.current().pid;
    let new = server.reload(Signal::SIGHUP).pid;
    server.assert_exited_0(old, Duration::from_secs(5));
    signal_pid(new, Signal::SIGKILL);
    support::eventually("nothing serves", Duration::from_secs(5), || {
        get(&addr, "/").is_err()
    });
    // The killed process closes its sockets before it is reaped.
    support::eventually("no generation left", Duration::from_secs(5), || {
        server.alive().is_empty()
    });
}

/// A new generation that hands over to a newer one has not failed: its
/// predecessor lets go at once (only the newest generation's predecessor
/// holds the sockets), and the newest one's death brings back its own
/// predecessor.
#[test]
fn probation_follows_a_chain_of_quick_reloads() {
    let mut server = Spec::fixture().probation(Duration::from_secs(5)).start();
    let addr = server.addr();
    let a = server.current().pid;
    let b = server.reload(Signal::SIGHUP).pid;
    let c = server.reload(Signal::SIGHUP).pid;
    // A let go when B handed over, long before its window ended.
    let t = Instant::now();
    server.assert_exited_0(a, Duration::from_secs(4));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    signal_pid(c, Signal::SIGKILL);
    served_again_by(&addr, b, Instant::now());
    assert_eq!(server.alive(), vec![b], "{}", server.report());
}

/// A stop that reaches the old generation during the probation (systemd's
/// `ExecStop` signals the main PID, which is still the old one) is passed
/// on: both stop, the new generation's request in flight completes, and the
/// old one exits after it.
#[test]
fn a_stop_during_probation_stops_both_and_waits_for_the_new_one() {
    let mut server = Spec::fixture().probation(Duration::from_secs(8)).start();
    let addr = server.addr();
    let old = server.current().pid;
    let new = server.reload(Signal::SIGHUP).pid;
    holding(&server);
    support::wait_served_by(&addr, new);
    let slow = support::get_in_background(&addr, "/sleep/1500");
    std::thread::sleep(Duration::from_millis(200));
    signal_pid(old, Signal::SIGTERM);
    let (status, body) = slow
        .join()
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(
        (status, body.trim()),
        (200, format!("slept pid={new}").as_str())
    );
    server.assert_exited_0(new, Duration::from_secs(10));
    server.assert_exited_0(old, Duration::from_secs(10));
    assert!(get(&addr, "/").is_err(), "nothing serves after the stop");
}

/// A new generation that is stopped (not failed) during its probation: the
/// old one does not serve again.
#[test]
fn a_successor_stopped_during_probation_is_not_replaced() {
    let mut server = Spec::fixture().probation(Duration::from_secs(8)).start();
    let addr = server.addr();
    let old = server.current().pid;
    let new = server.reload(Signal::SIGHUP).pid;
    holding(&server);
    signal_pid(new, Signal::SIGTERM);
    server.assert_exited_0(new, Duration::from_secs(10));
    server.assert_exited_0(old, Duration::from_secs(10));
    assert!(get(&addr, "/").is_err());
}

/// Waits until the old generation has heard that the new one serves (its
/// READY line comes first): it then holds the sockets, accepting nothing.
/// (On a starved machine a stop sent to the new generation before that
/// point finds it still starting, and the old one rightly serves on.)
fn holding(server: &Proc) {
    server.eventually(
        "the old generation on probation",
        Duration::from_secs(10),
        || {
            support::strip_ansi(&server.log())
                .contains("new generation on probation")
                .then_some(())
        },
    );
}

fn stat(addr: &str, field: &str) -> String {
    let (_, body) = get(addr, "/stats").unwrap();
    let at = body
        .find(&format!("{field}: "))
        .unwrap_or_else(|| panic!("{field} in {body}"));
    body[at + field.len() + 2..]
        .split([',', ' ', '}'])
        .next()
        .unwrap()
        .to_owned()
}

/// The reload counters are the server's, carried from each generation to
/// the next; a reload succeeds once its probation is over, and a rollback
/// counts as failed; the PID file follows whoever serves.
#[test]
fn counters_and_the_pid_file_follow_the_serving_generation() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let server = Spec::fixture()
        .probation(Duration::from_millis(1500))
        .pid_file(&pid_file)
        .start();
    let addr = server.addr();
    let old = server.current().pid;
    let b = server.reload(Signal::SIGHUP).pid;
    support::wait_served_by(&addr, b);
    assert_eq!(stat(&addr, "reloads_requested"), "1");
    assert_eq!(stat(&addr, "reloads_succeeded"), "0");
    assert_eq!(stat(&addr, "in_probation"), "true");
    support::eventually("probation over", Duration::from_secs(5), || {
        stat(&addr, "in_probation") == "false"
    });
    assert_eq!(stat(&addr, "reloads_succeeded"), "1");
    let read_pid = || {
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    assert_eq!(read_pid(), b);

    let c = server.reload(Signal::SIGHUP).pid;
    support::wait_served_by(&addr, c);
    assert_eq!(read_pid(), c);
    signal_pid(c, Signal::SIGKILL);
    served_again_by(&addr, b, Instant::now());
    // C may die after it serves but before B hears that it does: then B
    // never stopped serving, and takes the PID file back once it has seen C
    // exit (a failed reload, not a rollback), a moment later.
    support::eventually("the PID file names B again", Duration::from_secs(5), || {
        let named = read_pid();
        if named == b {
            Ok(())
        } else {
            Err(format!("it names {named}\n{}", server.report()))
        }
    });
    assert_eq!(stat(&addr, "reloads_requested"), "2");
    assert_eq!(stat(&addr, "reloads_succeeded"), "1");
    assert_eq!(stat(&addr, "reloads_failed"), "1");
    assert_eq!(stat(&addr, "reloads_rolled_back"), "1");
    let (_, body) = get(&addr, "/stats").unwrap();
    assert!(
        body.contains(&format!(
            "new generation (pid {c}) died within its probation"
        )) && body.contains("SIGKILL"),
        "{body}"
    );
    let _ = old;
}

/// The sockets of `endless::sockets` are served again too: the old
/// generation's tasks stop at `draining()` and start over at `serving()`.
#[test]
fn carried_sockets_are_served_again_after_a_rollback() {
    let server = Spec::fixture()
        .probation(Duration::from_secs(5))
        .extras()
        .start();
    let line = server
        .wait_line(Duration::from_secs(5), |l| l.starts_with("EXTRAS"))
        .unwrap();
    let udp_addr = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("udp="))
        .unwrap()
        .to_owned();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let echo = |payload: &str| -> Option<u32> {
        udp.send_to(payload.as_bytes(), &udp_addr).ok()?;
        let mut buf = [0u8; 256];
        let n = udp.recv(&mut buf).ok()?;
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        reply.split(':').next()?.parse().ok()
    };
    let old = server.current().pid;
    let new = server.reload(Signal::SIGHUP).pid;
    support::eventually("the new generation echoes", Duration::from_secs(5), || {
        echo("a") == Some(new)
    });
    signal_pid(new, Signal::SIGKILL);
    support::eventually(
        "the old generation echoes again",
        Duration::from_secs(5),
        || echo("b") == Some(old),
    );
}

/// A stop that reaches both generations during a probation, first through
/// the old one (which passes it on) and then directly, as a process
/// manager's does: one request, so the new generation's request in flight
/// finishes. (The new generation counted it twice, and cut the request.)
#[test]
fn a_stop_that_arrives_both_ways_is_one_request() {
    let mut server = Spec::fixture().probation(Duration::from_secs(8)).start();
    let addr = server.addr();
    let old = server.current().pid;
    let new = server.reload(Signal::SIGHUP).pid;
    holding(&server);
    support::wait_served_by(&addr, new);
    let slow = support::get_in_background(&addr, "/sleep/1500");
    std::thread::sleep(Duration::from_millis(200));
    signal_pid(old, Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    signal_pid(new, Signal::SIGTERM);
    let (status, body) = slow
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the request in flight was cut: {e}\n{}", server.report()));
    assert_eq!(
        (status, body.trim()),
        (200, format!("slept pid={new}").as_str())
    );
    server.assert_exited_0(new, Duration::from_secs(10));
    server.assert_exited_0(old, Duration::from_secs(10));
}
