//! The health gate: a new generation that fails its ready checks never
//! takes over, and the reload says why; a new generation that gives up on
//! its own says why too.

use endless_tests as support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::load::{self, Mode};
use support::{get, served_pid, signal_pid, Spec};

/// A release whose own check fails (its database is unreachable, say):
/// the reload fails with the check's reason, under load, losing nothing.
#[test]
fn a_failing_ready_check_fails_the_reload_with_its_reason_and_costs_nothing() {
    let _heavy = support::heavy();
    let dir = tempfile::tempdir().unwrap();
    let fail = dir.path().join("fail");
    let server = Spec::fixture().ready_check().ready_fail_file(&fail).start();
    let addr = server.addr();
    let old = server.current().pid;
    let rt = load::runtime();
    let load = load::start(rt.handle(), &addr, Mode::KeepAlive, 16, "/");
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&fail, "").unwrap();
    let (status, body) = get(&addr, "/reload").unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("exited before it was ready")
            && body.contains("ready check 1 failed: database unreachable"),
        "{body}"
    );
    let (_, stats) = get(&addr, "/stats").unwrap();
    assert!(stats.contains("reloads_failed: 1"), "{stats}");
    assert!(
        stats.contains("ready check 1 failed: database unreachable"),
        "{stats}"
    );
    assert!(server.log().contains("ready check failed; not taking over"));
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}\n{}", stats.errors, server.report());
    assert_eq!(
        stats
            .bodies
            .keys()
            .map(|b| served_pid(b))
            .collect::<Vec<_>>(),
        vec![old]
    );

    // Fixed: the next reload takes over.
    std::fs::remove_file(&fail).unwrap();
    let new = server.reload(Signal::SIGHUP).pid;
    support::wait_served_by(&addr, new);
}

/// A release that starts and accepts but answers every request with an
/// error fails its self-probe (a real request through its own service,
/// in-process) and never takes over.
#[test]
fn an_unhealthy_release_fails_its_probe_and_never_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let unhealthy = dir.path().join("unhealthy");
    let server = Spec::fixture()
        .ready_probe()
        .unhealthy_file(&unhealthy)
        .start();
    let addr = server.addr();
    let old = server.current().pid;
    std::fs::write(&unhealthy, "").unwrap();
    let (status, body) = get(&addr, "/reload").unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains(
            "ready probe GET /health failed: answered 503 Service Unavailable, expected 200"
        ),
        "{body}"
    );
    support::wait_served_by(&addr, old);
    std::fs::remove_file(&unhealthy).unwrap();
    let new = server.reload(Signal::SIGHUP).pid;
    support::wait_served_by(&addr, new);
}

/// The first generation's checks fail: `run` says so and the program
/// exits (nothing was ever served).
#[test]
fn a_first_generation_that_fails_its_checks_does_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let fail = dir.path().join("fail");
    std::fs::write(&fail, "").unwrap();
    let msg = support::start_error(Spec::fixture().ready_check().ready_fail_file(&fail));
    assert_eq!(msg, "ready check 1 failed: database unreachable");
}

/// A new generation that gives up on its own (a configuration error it
/// prints, then `exit(2)`) says why with `report_start_failure`, and the
/// failed reload carries it, with its exit status. (It was "(none given)".)
#[test]
fn a_new_generation_that_gives_up_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let give_up = dir.path().join("give-up");
    let server = Spec::fixture().give_up_file(&give_up).start();
    let addr = server.addr();
    std::fs::write(&give_up, "").unwrap();
    let (status, body) = get(&addr, "/reload").unwrap();
    assert_eq!(status, 500);
    assert!(
        body.contains("exit status: 2: configuration error: no such upstream \"db\""),
        "{body}"
    );
}

/// A new generation killed before it is ready says nothing; the reload's
/// error still names how it ended.
#[test]
fn a_silent_death_is_reported_with_its_signal() {
    let dir = tempfile::tempdir().unwrap();
    let hang = dir.path().join("hang");
    let server = Spec::fixture().hang_file(&hang).start();
    let addr = server.addr();
    let old = server.current().pid;
    std::fs::write(&hang, "").unwrap();
    let reload = support::get_in_background(&addr, "/reload");
    let hung = server.wait_new_process(&[old], Duration::from_secs(10));
    server.wait_line(Duration::from_secs(10), |l| l == format!("HANG pid={hung}"));
    signal_pid(hung, Signal::SIGKILL);
    let (status, body) = reload.join().unwrap().unwrap();
    assert_eq!(status, 500);
    assert!(
        body.contains(&format!(
            "(pid {hung}) exited before it was ready: signal: 9 (SIGKILL)"
        )),
        "{body}"
    );
}
