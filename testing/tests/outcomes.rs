//! What the application sees of a reload: the drain notice, generation
//! numbers, why a new generation failed, and the handle's statistics.

use endless_tests as support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{get, get_in_background, signal_pid, wait_served_by, Spec};

/// The value after `key` (`generation=` or, in `Stats`'s debug output,
/// `reloads_failed:`).
fn field<'a>(body: &'a str, key: &str) -> &'a str {
    let at = body
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {body:?}"));
    body[at + key.len()..]
        .trim_start()
        .split([' ', ',', '}', '\n'])
        .next()
        .unwrap()
}

/// 0 for the first generation, one more for each reload.
#[test]
fn generations_are_numbered() {
    let server = Spec::fixture().start();
    let addr = server.addr();
    // The generation number as `pid` says it (right after a reload the old
    // generation may still answer a connection or two).
    let generation_of = |pid: u32| {
        support::wait::eventually(&format!("{pid} answers"), Duration::from_secs(5), || {
            let (_, body) = get(&addr, "/generation").unwrap();
            match field(&body, "pid=") == pid.to_string() {
                true => Ok(field(&body, "generation=").parse::<u64>().unwrap()),
                false => Err(body),
            }
        })
    };
    assert_eq!(generation_of(server.current().pid), 0);
    for n in 1..=3 {
        let pid = server.reload(Signal::SIGHUP).pid;
        assert_eq!(generation_of(pid), n);
    }
}

/// A new generation whose `run` fails, or that panics before it serves,
/// says why, and `Handle::reload` returns its words.
#[test]
fn a_failed_new_generation_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let bad_addr = dir.path().join("bad-addr");
    let panic = dir.path().join("panic");
    let server = Spec::fixture()
        .bad_addr_file(&bad_addr)
        .panic_file(&panic)
        .start();
    let addr = server.addr();

    std::fs::write(&bad_addr, "").unwrap();
    let (status, body) = get(&addr, "/reload").unwrap();
    assert_eq!(status, 500);
    assert!(
        body.contains("exited before it was ready: exit status: 2: invalid address \"not an address\": expected host:port"),
        "{body}"
    );
    std::fs::remove_file(&bad_addr).unwrap();

    std::fs::write(&panic, "").unwrap();
    let (status, body) = get(&addr, "/reload").unwrap();
    assert_eq!(status, 500);
    assert!(
        body.contains("panicked: panicked at testing/fixture/server.rs")
            && body.contains("fixture panics on purpose"),
        "{body}"
    );
    std::fs::remove_file(&panic).unwrap();

    // The same generation still serves, has counted both, and the next
    // reload works.
    let (_, stats) = get(&addr, "/stats").unwrap();
    assert_eq!(field(&stats, "reloads_requested:"), "2", "{stats}");
    assert_eq!(field(&stats, "reloads_failed:"), "2", "{stats}");
    assert!(stats.contains("fixture panics on purpose"), "{stats}");
    let pid = server.reload(Signal::SIGHUP).pid;
    wait_served_by(&addr, pid);
}

/// A long poll waiting on `Handle::draining` answers as soon as the drain
/// starts (well before the stop timeout), from the old generation, which
/// then exits at once; the drain saw the reload succeed.
#[test]
fn a_long_poll_answers_early_when_the_drain_starts() {
    let mut server = Spec::fixture().drain_notice_spread(Duration::ZERO).start();
    let addr = server.addr();
    let old = server.current().pid;
    let poll = get_in_background(&addr, "/drain-wait");
    std::thread::sleep(Duration::from_millis(300));
    let (_, stats) = get(&addr, "/stats").unwrap();
    assert_eq!(field(&stats, "draining:"), "false", "{stats}");
    assert!(
        field(&stats, "connections:").parse::<u32>().unwrap() >= 2,
        "{stats}"
    );
    let t = Instant::now();
    let new = server.reload(Signal::SIGHUP).pid;
    let (status, body) = poll.join().unwrap().unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with(&format!("drained pid={old} ")), "{body}");
    // The reload was asked of this generation and has not failed; it counts
    // as succeeded in the new generation, once its probation is over.
    assert_eq!(field(&body, "reloads_requested:"), "1", "{body}");
    assert_eq!(field(&body, "reloads_failed:"), "0", "{body}");
    assert_eq!(field(&body, "draining:"), "true", "{body}");
    // The fixture's probation is 1 s.
    server.assert_exited_0(old, Duration::from_secs(10));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let (_, stats) = get(&addr, "/stats").unwrap();
    assert!(stats.contains(&format!("{new}")) || !stats.is_empty());
    assert_eq!(field(&stats, "reloads_succeeded:"), "1", "{stats}");
    assert_eq!(field(&stats, "in_probation:"), "false", "{stats}");
}

/// The notice is spread over the configured window: 40 waiters told at
/// once would reconnect at once.
#[test]
fn the_drain_notice_is_spread_over_its_window() {
    let spreads = |window: Duration, path: &'static str| -> Duration {
        let server = Spec::fixture().drain_notice_spread(window).start();
        let addr = server.addr();
        let polls: Vec<_> = (0..40)
            .map(|_| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    get(&addr, path).unwrap();
                    Instant::now()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let signalled = Instant::now();
        signal_pid(server.current().pid, Signal::SIGHUP);
        let done: Vec<Instant> = polls.into_iter().map(|p| p.join().unwrap()).collect();
        let first = *done.iter().min().unwrap();
        let last = *done.iter().max().unwrap();
        assert!(
            last - signalled < Duration::from_millis(2500),
            "{:?}",
            last - signalled
        );
        last - first
    };
    let spread = spreads(Duration::from_millis(1500), "/drain-wait");
    let at_once = spreads(Duration::ZERO, "/drain-wait");
    // A future made afresh on every turn of a loop still wakes within the
    // window: its moment counts from the start of the drain.
    let in_a_loop = spreads(Duration::from_millis(1500), "/drain-wait-loop");
    eprintln!(
        "40 waiters: spread over {spread:?} with a 1.5 s window ({in_a_loop:?} in a loop), {at_once:?} with none"
    );
    assert!(spread >= Duration::from_millis(700), "{spread:?}");
    assert!(in_a_loop < Duration::from_millis(2500), "{in_a_loop:?}");
    assert!(at_once < Duration::from_millis(500), "{at_once:?}");
}
