//! `keep_pid`: reloads that keep the process ID, by a double hand-over.

use endless_tests as support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::load::{self, Mode};
use support::{get, get_in_background, served_pid, signal_pid, wait_served_by, Proc, Ready, Spec};

/// Reloads a keep_pid server once: the temporary generation's READY, then
/// the original PID's. Returns the temporary generation's PID.
/// Signals a keep-PID reload of `pid` and returns the temporary
/// generation's PID and the original PID's new `READY` line.
fn keep_pid_reload(server: &Proc, pid: u32) -> (u32, Ready) {
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    // Two READY lines: the temporary generation's and the original PID's.
    // (Each is printed by a task of its own once the generation serves; on
    // a loaded machine the temporary one's may come second, so neither
    // `current()` nor the order says which is which.)
    let first = server.nth_ready(before + 1);
    let second = server.nth_ready(before + 2);
    assert!(
        (first.pid == pid) != (second.pid == pid),
        "expected one READY from the original PID {pid} and one from a temporary generation, got {} and {}:\n{}",
        first.pid,
        second.pid,
        server.report()
    );
    if first.pid == pid {
        (second.pid, first)
    } else {
        (first.pid, second)
    }
}

fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn five_reloads_under_load_keep_the_pid_and_lose_nothing() {
    let _heavy = support::heavy();
    let mut server = Spec::fixture().keep_pid().start();
    let addr = server.addr();
    let pid = server.current().pid;
    let rt = load::runtime();
    let l = load::start(rt.handle(), &addr, Mode::KeepAlive, 32, "/");
    std::thread::sleep(Duration::from_millis(300));
    let mut temporaries = Vec::new();
    for _ in 0..5 {
        temporaries.push(keep_pid_reload(&server, pid).0);
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = l.finish();
    eprintln!(
        "keep_pid: 5 reloads, {} ok, {} failed",
        stats.ok, stats.failed
    );
    assert_eq!(stats.failed, 0, "{:?}\n{}", stats.errors, server.report());
    assert!(stats.ok > 1000, "{stats:?}");
    // Both the original PID and the temporary generations served.
    let served: Vec<u32> = stats.bodies.keys().map(|b| served_pid(b)).collect();
    assert!(served.contains(&pid));
    assert!(
        temporaries.iter().any(|t| served.contains(t)),
        "{served:?} {temporaries:?}"
    );
    // The temporary generations are gone and reaped, by the original PID.
    for t in &temporaries {
        server
            .wait_exit(*t, Duration::from_secs(15))
            .expect("temporary generation exits");
    }
    assert_eq!(server.wait_settled(Duration::from_secs(5)), pid);
    assert!(server.log().contains("serving again under the same PID"));
}

#[test]
fn the_new_binary_runs_under_the_old_pid() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::copy(support::fixture(), &app).unwrap();
    let server = Spec::fixture().bin(&app).keep_pid().start();
    let pid = server.current().pid;
    assert_eq!(exe_of(pid), app.to_string_lossy());

    // Deploy: a new file renamed over the old one. The running image is now
    // the old, deleted inode ...
    let staged = dir.path().join("app.new");
    std::fs::copy(support::fixture(), &staged).unwrap();
    std::fs::rename(&staged, &app).unwrap();
    assert!(exe_of(pid).ends_with("(deleted)"), "{}", exe_of(pid));
    // ... and after a reload, the same PID runs the new file.
    let (_, now) = keep_pid_reload(&server, pid);
    assert_eq!(exe_of(pid), app.to_string_lossy());
    wait_served_by(&server.addr(), pid);
    assert!(now.reloaded);
    // A reload, so the next generation number, under the same PID (the
    // temporary generation may still answer a connection or two).
    let want = format!("generation=1 pid={pid}\n");
    support::wait::eventually(
        "the re-executed PID answers",
        Duration::from_secs(5),
        || {
            let (_, body) = get(&server.addr(), "/generation").unwrap();
            if body == want {
                Ok(())
            } else {
                Err(body)
            }
        },
    );
}

/// The re-exec cannot happen (here the directory the program runs in was
/// deleted while the original PID drained): the PID serves on, the
/// temporary generation is sent away, and the error names the directory.
#[test]
fn a_failed_re_exec_leaves_the_pid_and_the_service_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("release");
    std::fs::create_dir(&cwd).unwrap();
    let mut server = Spec::fixture().cwd(&cwd).keep_pid().start();
    let addr = server.addr();
    let pid = server.current().pid;

    // The temporary generation starts in the directory; once it serves,
    // the directory goes, so the re-exec cannot enter it. (A slow request
    // keeps the original PID draining meanwhile.)
    let slow = get_in_background(&addr, "/sleep/1500");
    std::thread::sleep(Duration::from_millis(100));
    let before = server.readies().len();
    assert_eq!(get(&addr, "/reload-bg").unwrap().0, 200);
    let temporary = server.nth_ready(before + 1).pid;
    assert_ne!(temporary, pid);
    std::fs::remove_dir(&cwd).unwrap();
    assert_eq!(
        slow.join().unwrap().unwrap().0,
        200,
        "the request in flight finished"
    );

    // Handle::reload answered when the temporary generation served and the
    // original PID began to drain; the exec's failure is in the stats, and
    // says why. Same PID, still serving, the temporary generation sent
    // away.
    let line = server
        .wait_line(Duration::from_secs(30), |l| l.starts_with("RELOADED"))
        .unwrap_or_else(|| panic!("no reload result:\n{}", server.report()));
    assert_eq!(line, format!("RELOADED pid={pid} ok"));
    server
        .wait_exit(temporary, Duration::from_secs(15))
        .expect("temporary generation exits");
    wait_served_by(&addr, pid);
    assert!(server.alive().contains(&pid));
    let (_, stats) = get(&addr, "/stats").unwrap();
    assert!(
        stats.contains("reloads_failed: 1")
            && stats.contains("cannot re-execute")
            && stats.contains(&format!("cannot enter {}", cwd.display())),
        "{stats}"
    );

    // With the directory back, the next reload works.
    std::fs::create_dir(&cwd).unwrap();
    keep_pid_reload(&server, pid);
    wait_served_by(&addr, pid);
}

/// A broken release renamed into place while the original PID drains is
/// not what the re-exec runs: it runs exactly the file the temporary
/// generation ran and proved (held open since), so the PID keeps serving
/// the release it proved. (It used to look the path up again after the
/// drain, and exec the broken file: nothing served.)
#[test]
fn the_re_exec_runs_exactly_the_file_the_temporary_generation_ran() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::copy(support::fixture(), &app).unwrap();
    let server = Spec::fixture().bin(&app).keep_pid().start();
    let addr = server.addr();
    let pid = server.current().pid;
    // v2, a good release, is installed; the reload starts it as the
    // temporary generation.
    let v2 = dir.path().join("app.v2");
    std::fs::copy(support::fixture(), &v2).unwrap();
    let v2_inode = std::fs::metadata(&v2).unwrap().ino();
    std::fs::rename(&v2, &app).unwrap();
    let slow = get_in_background(&addr, "/sleep/1500");
    std::thread::sleep(Duration::from_millis(100));
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    let temporary = server.nth_ready(before + 1).pid;
    assert_ne!(temporary, pid);
    // During the drain, a broken v3 lands at the path.
    let v3 = dir.path().join("app.v3");
    std::fs::write(&v3, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&v3, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&v3, &app).unwrap();
    let _ = slow.join();
    let again = server.nth_ready(before + 2);
    assert_eq!(again.pid, pid, "{}", server.report());
    wait_served_by(&addr, pid);
    let running = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino();
    assert_eq!(
        running, v2_inode,
        "the PID runs v2, the file the temporary generation ran"
    );
}

/// A new release that adds an address someone else already listens on
/// fails in its temporary generation, which binds (and releases) every
/// address the re-executed image will need: the reload fails with the
/// address named, and the original PID serves on. (The temporary
/// generation used to skip new addresses, and the re-executed image then
/// failed to start: nothing served.)
#[test]
fn a_new_address_in_use_fails_the_reload_before_the_re_exec() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("extra");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = taken.local_addr().unwrap().to_string();
    let server = Spec::fixture().keep_pid().extra_addr(&extra, &flag).start();
    let addr = server.addr();
    let pid = server.current().pid;
    std::fs::write(&flag, "").unwrap();
    let (status, body) = get(&addr, "/reload").unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains(&format!("cannot listen on {extra}: ")) && body.contains("in use"),
        "{body}"
    );
    wait_served_by(&addr, pid);
    assert_eq!(server.alive(), vec![pid], "{}", server.report());
}

/// The re-executed image fails to start (here it crashes at start-up): the
/// temporary generation, which still holds the listeners, serves on in its
/// place and takes the PID file, so something always serves.
#[test]
fn a_re_executed_image_that_fails_leaves_the_temporary_generation_serving() {
    let dir = tempfile::tempdir().unwrap();
    let crash = dir.path().join("crash");
    let pid_file = dir.path().join("app.pid");
    let server = Spec::fixture()
        .keep_pid()
        .crash_file(&crash)
        .pid_file(&pid_file)
        .start();
    let addr = server.addr();
    let pid = server.current().pid;
    let slow = get_in_background(&addr, "/sleep/1000");
    std::thread::sleep(Duration::from_millis(100));
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    let temporary = server.nth_ready(before + 1).pid;
    // Once the temporary generation serves, new starts crash.
    std::fs::write(&crash, "").unwrap();
    let _ = slow.join();
    server
        .wait_line(Duration::from_secs(10), |l| l == format!("CRASH pid={pid}"))
        .unwrap_or_else(|| panic!("the re-executed image did not crash:\n{}", server.report()));
    wait_served_by(&addr, temporary);
    support::eventually(
        "the PID file names the temporary generation",
        Duration::from_secs(5),
        || std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == temporary.to_string()),
    );
    assert!(server
        .log()
        .contains("this temporary generation serves on in its place"));
}

#[test]
fn signals_during_the_re_exec_neither_kill_nor_get_lost() {
    let server = Spec::fixture()
        .keep_pid()
        .start_delay(Duration::from_millis(300))
        .start();
    let pid = server.current().pid;
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    let temporary = server.nth_ready(before + 1).pid;
    assert_ne!(temporary, pid);
    // While the original PID drains, re-executes and starts (300 ms of
    // start-up in which its handlers are not installed yet), keep sending
    // reload signals: none may kill it.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        signal_pid(pid, Signal::SIGUSR1);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.nth_ready(before + 2).pid, pid, "{}", server.report());
    assert!(
        server.alive().contains(&pid),
        "killed by a signal:\n{}",
        server.report()
    );
    // A reload signal that arrived after the exec was kept, not lost: it
    // starts another round once the handlers are in.
    let next_temporary = server.nth_ready(before + 3).pid;
    assert_ne!(next_temporary, pid);
    assert_eq!(server.nth_ready(before + 4).pid, pid);
    wait_served_by(&server.addr(), pid);
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The new version registers an address the old one did not: the
/// temporary generation leaves it alone, and the original PID binds it
/// after its re-exec and serves every address. Nothing else remains.
#[test]
fn a_new_address_is_served_by_the_original_pid() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("extra");
    let extra = format!("127.0.0.1:{}", free_port());
    let mut server = Spec::fixture().keep_pid().extra_addr(&extra, &flag).start();
    let addr = server.addr();
    let pid = server.current().pid;
    std::fs::write(&flag, "").unwrap();
    let (temporary, now) = keep_pid_reload(&server, pid);
    assert_eq!((now.pid, now.addrs.len()), (pid, 2), "{}", server.report());
    assert_eq!(now.addrs[1], extra);
    wait_served_by(&addr, pid);
    wait_served_by(&extra, pid);
    server
        .wait_exit(temporary, Duration::from_secs(15))
        .expect("the temporary generation exits");
    assert_eq!(server.alive(), vec![pid], "{}", server.report());
}

/// A child the program started before `run` stays the program's: after a
/// re-exec in place, endless reaps its temporary generation and nothing
/// else, so the program's own `wait` sees its child's status.
#[test]
fn children_of_the_program_are_not_reaped_by_the_re_exec() {
    let server = Spec::fixture()
        .keep_pid()
        .pre_child(Duration::from_millis(2500))
        .start();
    let pid = server.current().pid;
    keep_pid_reload(&server, pid);
    // The re-executed image started its own child before `run`, and waits
    // for it 2.5 s later.
    let line = server
        .wait_line(Duration::from_secs(10), |l| l.starts_with("PRECHILD"))
        .unwrap_or_else(|| panic!("no PRECHILD line:\n{}", server.report()));
    assert_eq!(
        line,
        format!("PRECHILD pid={pid} status=exit status: 0"),
        "{}",
        server.report()
    );
}

/// If the original PID dies while its temporary generation serves (say it
/// is killed while it drains before the re-exec), the temporary generation,
/// which holds the listeners, serves on in its place: the port never
/// refuses a connection.
#[test]
fn a_temporary_generation_serves_on_when_its_parent_is_gone() {
    let mut server = Spec::fixture().keep_pid().start();
    let addr = server.addr();
    let pid = server.current().pid;
    // Keeps the original PID draining (not yet re-executed).
    let slow = get_in_background(&addr, "/sleep/5000");
    std::thread::sleep(Duration::from_millis(200));
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    let temporary = server.nth_ready(before + 1).pid;
    assert_ne!(temporary, pid);
    signal_pid(pid, Signal::SIGKILL);
    server.wait_exit(pid, Duration::from_secs(5)).unwrap();
    let _ = slow.join();
    wait_served_by(&addr, temporary);
    assert_eq!(server.alive(), vec![temporary], "{}", server.report());
}

/// A stop while the original PID drains before its re-exec (as `systemctl
/// stop` sends SIGTERM to every process of the service): no re-exec, the
/// request in flight finishes, and the drain keeps its deadline rather than
/// starting a fresh stop timeout. The temporary generation, signalled by
/// both its parent and the manager, takes that calmly: its own request in
/// flight finishes too.
#[test]
fn a_stop_during_a_keep_pid_reload_keeps_the_deadline() {
    let mut server = Spec::fixture()
        .keep_pid()
        .stop_timeout(Duration::from_secs(3))
        .start();
    let addr = server.addr();
    let pid = server.current().pid;
    let slow = |ms: u32| get_in_background(&addr, &format!("/sleep/{ms}"));
    let finishing = slow(2500);
    let too_slow = slow(20000);
    std::thread::sleep(Duration::from_millis(200));
    let before = server.readies().len();
    let reload_at = Instant::now();
    signal_pid(pid, Signal::SIGHUP);
    let temporary = server.nth_ready(before + 1).pid;
    // New connections go to the temporary generation now.
    std::thread::sleep(Duration::from_millis(100));
    let on_temporary = slow(1000);
    std::thread::sleep(Duration::from_millis(1300));
    signal_pid(pid, Signal::SIGTERM);
    signal_pid(temporary, Signal::SIGTERM);
    let (status, body) = finishing.join().unwrap().unwrap();
    assert_eq!((status, body), (200, format!("slept pid={pid}\n")));
    let (status, body) = on_temporary.join().unwrap().unwrap();
    assert_eq!(
        (status, body),
        (200, format!("slept pid={temporary}\n")),
        "{}",
        server.report()
    );
    server.assert_exited_0(pid, Duration::from_secs(10));
    let took = reload_at.elapsed();
    assert!(
        took < Duration::from_millis(4000),
        "the stop started a fresh stop timeout: exited {took:?} after the reload\n{}",
        server.report()
    );
    assert!(too_slow.join().unwrap().is_err());
    server
        .wait_exit(temporary, Duration::from_secs(10))
        .expect("the temporary generation exits");
    assert_eq!(
        server.readies().len(),
        before + 1,
        "re-executed after a stop"
    );
}

/// A stop that reaches only the original PID (as `docker stop` signals only
/// PID 1) while its temporary generation serves: the original PID outlives
/// the temporary generation, whose request in flight finishes. (As PID 1 of
/// a container, its exit would kill everything else.)
#[test]
fn a_stop_during_a_keep_pid_reload_outlives_the_temporary_generation() {
    let mut server = Spec::fixture().keep_pid().start();
    let addr = server.addr();
    let pid = server.current().pid;
    // Keeps the original PID draining (not yet re-executed).
    let on_original = get_in_background(&addr, "/sleep/600");
    std::thread::sleep(Duration::from_millis(200));
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    let temporary = server.nth_ready(before + 1).pid;
    std::thread::sleep(Duration::from_millis(100));
    let on_temporary = get_in_background(&addr, "/sleep/1500");
    std::thread::sleep(Duration::from_millis(200));
    signal_pid(pid, Signal::SIGTERM);
    assert_eq!(on_original.join().unwrap().unwrap().0, 200);
    server.assert_exited_0(pid, Duration::from_secs(10));
    assert!(
        !std::path::Path::new(&format!("/proc/{temporary}")).exists()
            || server.zombies().contains(&temporary),
        "the original PID exited before its temporary generation:\n{}",
        server.report()
    );
    let (status, body) = on_temporary.join().unwrap().unwrap();
    assert_eq!((status, body), (200, format!("slept pid={temporary}\n")));
}

/// A reload asked for on the control socket, with `keep_pid`: answered
/// `ok` as soon as the temporary generation serves and the original PID
/// drains, and the re-exec follows at once. (The answer waited for the
/// exec, which waited for the control connection to close: the client got
/// no answer, and the re-exec waited for the stop timeout.)
#[test]
fn a_reload_on_the_control_socket_is_answered_and_re_executes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let server = Spec::fixture()
        .keep_pid()
        .control_socket(&socket)
        .stop_timeout(Duration::from_secs(20))
        .start();
    let pid = server.current().pid;
    let before = server.readies().len();
    let asked = Instant::now();
    let out = std::process::Command::new(support::binary("endlessctl"))
        .args(["reload", socket.to_str().unwrap(), "--timeout", "15"])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && answer.starts_with(&format!("ok pid={pid} ")),
        "{:?} {answer} {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.report()
    );
    let again = server.wait_lines(Duration::from_secs(10), |lines| {
        let readies: Vec<_> = lines.iter().filter(|l| l.starts_with("READY")).collect();
        (readies.len() >= before + 2
            && readies
                .iter()
                .skip(before)
                .any(|l| l.contains(&format!("pid={pid} "))))
        .then_some(())
    });
    assert!(again.is_some(), "not re-executed:\n{}", server.report());
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "took {:?}",
        asked.elapsed()
    );
}

/// A reload signal that reaches the original PID while it drains before
/// its re-exec (a newer release landed meanwhile) is not dropped: the
/// re-executed image runs it once it serves. (It was refused with a
/// warning, and the newer release never ran.)
#[test]
fn a_reload_signal_during_the_drain_before_the_re_exec_runs_after_it() {
    let server = Spec::fixture().keep_pid().start();
    let addr = server.addr();
    let pid = server.current().pid;
    // Keeps the original PID draining for a while.
    let slow = get_in_background(&addr, "/sleep/1000");
    std::thread::sleep(Duration::from_millis(200));
    keep_pid_reload_started(&server, pid);
    signal_pid(pid, Signal::SIGHUP);
    assert_eq!(slow.join().unwrap().unwrap().0, 200);
    // The original PID serves again, then a second round: two temporary
    // generations, and the original PID's three READY lines.
    let rounds = server.wait_readies(Duration::from_secs(15), |r| {
        let mine = r.iter().filter(|r| r.pid == pid).count();
        (mine >= 3 && r.len() >= 5).then_some(r.len())
    });
    assert!(rounds.is_some(), "no second round:\n{}", server.report());
    wait_served_by(&addr, pid);
}

/// The temporary generation's READY (once the original PID was signalled).
fn keep_pid_reload_started(server: &Proc, pid: u32) -> u32 {
    let before = server.readies().len();
    signal_pid(pid, Signal::SIGHUP);
    let t = server.nth_ready(before + 1).pid;
    assert_ne!(t, pid, "{}", server.report());
    t
}

/// A stop right after a `keep_pid` reload, while the temporary generation
/// still drains a request (`docker stop` signals only PID 1): the original
/// PID waits for it, so that request finishes even where PID 1's exit ends
/// everything. (It exited at once, leaving the temporary generation
/// behind.)
#[test]
fn a_stop_after_a_keep_pid_reload_outlives_the_draining_temporary_generation() {
    let mut server = Spec::fixture().keep_pid().start();
    let addr = server.addr();
    let pid = server.current().pid;
    // Keeps the original PID draining long enough for a request to reach
    // the temporary generation.
    let on_original = get_in_background(&addr, "/sleep/600");
    std::thread::sleep(Duration::from_millis(200));
    let temporary = keep_pid_reload_started(&server, pid);
    std::thread::sleep(Duration::from_millis(100));
    let on_temporary = get_in_background(&addr, "/sleep/2500");
    assert_eq!(on_original.join().unwrap().unwrap().0, 200);
    // The original PID serves again; the temporary generation drains.
    server
        .wait_ready_after(temporary, Duration::from_secs(10))
        .filter(|r| r.pid == pid)
        .unwrap_or_else(|| panic!("no re-exec:\n{}", server.report()));
    signal_pid(pid, Signal::SIGTERM);
    server.assert_exited_0(pid, Duration::from_secs(10));
    assert!(
        !std::path::Path::new(&format!("/proc/{temporary}")).exists()
            || server.zombies().contains(&temporary),
        "the original PID exited before its temporary generation:\n{}",
        server.report()
    );
    let (status, body) = on_temporary.join().unwrap().unwrap();
    assert_eq!((status, body), (200, format!("slept pid={temporary}\n")));
}
