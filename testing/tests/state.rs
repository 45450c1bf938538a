//! State handed to the next generation (`Server::handoff_state`,
//! `endless::inherited_state`): a counter kept across reloads, the limit,
//! a failing callback, and no state FD in processes that handlers spawn.

use endless_tests as support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{get, Proc, Spec};

/// The fixture's `/state` answer: (inherited, count), from the newest
/// generation (right after a reload the old one may still answer a
/// connection or two).
fn state(server: &Proc) -> (String, u64) {
    state_of(server, server.current().pid)
}

/// The same, from the generation `pid`.
fn state_of(server: &Proc, pid: u32) -> (String, u64) {
    let pid = pid.to_string();
    support::wait::eventually(
        "the newest generation answers",
        Duration::from_secs(5),
        || {
            let (status, body) = get(&server.addr(), "/state").unwrap();
            assert_eq!(status, 200, "{body}");
            let field = |k: &str| {
                body.split_whitespace()
                    .find_map(|p| p.strip_prefix(k))
                    .unwrap_or_else(|| panic!("no {k} in {body:?}"))
                    .to_owned()
            };
            if field("pid=") != pid {
                return Err(body);
            }
            Ok((field("inherited="), field("count=").parse().unwrap()))
        },
    )
}

#[test]
fn a_counter_survives_five_reloads() {
    let server = Spec::fixture().state().start();
    assert_eq!(
        state(&server),
        ("none".into(), 1),
        "a first start inherits nothing"
    );
    for n in 1..=5u64 {
        let ready = server.reload(Signal::SIGHUP);
        support::wait_served_by(&server.addr(), ready.pid);
        assert_eq!(
            state(&server),
            (n.to_string(), n + 1),
            "after reload {n}:\n{}",
            server.report()
        );
    }
    server.wait_log(
        "read the state handed over by the previous generation",
        Duration::from_secs(5),
    );
}

#[test]
fn a_keep_pid_reload_hands_the_state_to_the_re_executed_image() {
    let server = Spec::fixture().state().keep_pid().start();
    let pid = server.current().pid;
    for n in 1..=2u64 {
        let before = server.readies().len();
        support::signal_pid(pid, Signal::SIGHUP);
        // The temporary generation's READY and the original PID's, in either
        // order (each is printed by a task of its own).
        let pids = [
            server.nth_ready(before + 1).pid,
            server.nth_ready(before + 2).pid,
        ];
        assert!(pids.contains(&pid), "{pids:?}\n{}", server.report());
        support::wait_served_by(&server.addr(), pid);
        // The temporary generation inherited count n, and the re-executed
        // image the same: the old image's state at the exec.
        assert_eq!(
            state_of(&server, pid),
            (n.to_string(), n + 1),
            "{}",
            server.report()
        );
    }
}

#[test]
fn an_oversize_or_failing_state_costs_the_state_not_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let oversize = dir.path().join("oversize");
    let panics = dir.path().join("panic");
    let server = Spec::fixture()
        .state()
        .state_oversize_file(&oversize)
        .state_panic_file(&panics)
        .start();

    std::fs::write(&oversize, "").unwrap();
    let ready = server.reload(Signal::SIGHUP);
    support::wait_served_by(&server.addr(), ready.pid);
    assert_eq!(state(&server), ("none".into(), 1), "{}", server.report());
    server.wait_log(
        "handoff_state returned more than the limit; reloading without it",
        Duration::from_secs(5),
    );
    std::fs::remove_file(&oversize).unwrap();

    std::fs::write(&panics, "").unwrap();
    let ready = server.reload(Signal::SIGHUP);
    support::wait_served_by(&server.addr(), ready.pid);
    assert_eq!(state(&server), ("none".into(), 1), "{}", server.report());
    server.wait_log(
        "handoff_state panicked; reloading without its state",
        Duration::from_secs(5),
    );
    std::fs::remove_file(&panics).unwrap();

    // And the next reload carries the state again.
    let ready = server.reload(Signal::SIGHUP);
    support::wait_served_by(&server.addr(), ready.pid);
    assert_eq!(state(&server), ("1".into(), 2), "{}", server.report());
}

#[test]
fn processes_that_handlers_spawn_inherit_no_state() {
    let mut server = Spec::fixture().state().start();
    // What a spawned process inherits anyway (from the test harness, say).
    let (_, before) = get(&server.addr(), "/spawn-fds").unwrap();
    assert!(before.ends_with(" state=none\n"), "{before}");
    let old = server.current().pid;
    let ready = server.reload(Signal::SIGHUP);
    support::wait_served_by(&server.addr(), ready.pid);
    assert_eq!(state(&server).0, "1", "this generation did inherit a state");
    // Only the new generation answers from here on.
    server.assert_exited_0(old, Duration::from_secs(10));
    let (_, after) = get(&server.addr(), "/spawn-fds").unwrap();
    assert_eq!(after, before, "{}", server.report());
    assert!(!after.contains("memfd:"), "{after}");
    // Nor does this generation keep the file open once read.
    let (_, fds) = get(&server.addr(), "/fds-list").unwrap();
    assert!(!fds.contains("endless-state"), "{fds}");
}
