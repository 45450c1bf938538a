//! The shipped units (examples/systemd/) under a real systemd, booted as PID 1
//! of private namespaces (see testing/src/systemd.rs for the recipe and why
//! it must be followed), and a server that is PID 1 of its own namespace as
//! Docker runs it.
//!
//! The binary under each unit is the fixture, copied to the path the unit
//! names: it serves every address it is given and has `/sleep/MS`. Servers
//! listen on the host's loopback (the namespaces share the network), so the
//! load comes from this process.

use endless_tests as support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use support::load::{self, Mode};
use support::systemd::{free_port, namespaces_unavailable, skip, Systemd, Unit};
use support::{fixture, get, get_in_background, signal_pid, wait_served_by, Spec};

const HELLO: &str = "endless-hello.service";
const ACTIVATED: &str = "endless-hello-activated.service";
const SOCKET: &str = "endless-hello.socket";
/// The Unix address in the shipped socket unit.
const UNIX_PATH: &str = "/run/endless-hello.sock";

/// Boots systemd with the shipped `endless-hello.service` started.
fn boot_hello() -> Option<(Systemd, String)> {
    let port = free_port();
    let sd = Systemd::boot(&[Unit::shipped(HELLO, port)], &[HELLO], &support::fixture())?;
    assert_eq!(sd.show(HELLO, "ActiveState"), "active", "{}", sd.log_tail());
    Some((sd, format!("127.0.0.1:{port}")))
}

/// `systemctl reload UNIT`, which returns once the new generation serves
/// (the shipped units reload through the control socket), then waits until
/// systemd's MainPID is the new generation's (the old one hands it over
/// when its probation, 1 s for the fixture, is over) and that generation
/// answers on `addr`. Returns the new PID and the time from the reload
/// command to the MainPID change.
fn reload(sd: &Systemd, unit: &str, addr: &str) -> (u32, Duration) {
    let old = sd.main_pid(unit);
    let t = Instant::now();
    sd.ok(&["reload", unit]);
    let new = sd.wait_main_pid_change(unit, old, Duration::from_secs(20));
    let took = t.elapsed();
    wait_served_by(addr, new);
    (new, took)
}

/// Waits until the unit's cgroup holds only `pid` (the previous generations
/// have drained and exited).
fn wait_alone(sd: &Systemd, unit: &str, pid: u32) {
    sd.eventually(
        &format!("{unit} holds only {pid}"),
        Duration::from_secs(15),
        || match sd.cgroup_pids(unit) {
            pids if pids == [pid] => Ok(()),
            pids => Err(format!("{pids:?}")),
        },
    );
}

/// Scenario 1: `Type=notify` with `ExecReload=kill -USR1 $MAINPID`.
#[test]
fn notify_reloads_under_load_follow_the_main_pid() {
    let _heavy = support::heavy();
    let Some((sd, addr)) = boot_hello() else {
        return;
    };
    let first = sd.main_pid(HELLO);
    wait_served_by(&addr, first);

    let rt = load::runtime();
    let l = load::start(rt.handle(), &addr, Mode::KeepAlive, 16, "/");
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![first];
    let mut times = Vec::new();
    for _ in 0..5 {
        let (pid, took) = reload(&sd, HELLO, &addr);
        assert!(!pids.contains(&pid), "MainPID {pid} again: {pids:?}");
        pids.push(pid);
        times.push(took);
        std::thread::sleep(Duration::from_millis(300));
    }
    let stats = l.finish();
    eprintln!(
        "systemd notify: 5 reloads (MainPID {pids:?}, each followed in {times:?}), \
         {} ok, {} failed",
        stats.ok, stats.failed
    );
    assert_eq!(stats.failed, 0, "{:?}\n{}", stats.errors, sd.log_tail());
    assert!(stats.ok >= 1000, "too few requests: {stats:?}");
    // Every generation served, and systemd followed each one.
    for pid in &pids {
        assert!(
            stats.bodies.contains_key(&format!("pid={pid}\n")),
            "generation {pid} served nothing: {:?}",
            stats.bodies
        );
    }
    assert_eq!(sd.show(HELLO, "ActiveState"), "active");
    assert_eq!(sd.show(HELLO, "SubState"), "running");
    // The old generations drained and exited: only the last one is left.
    wait_alone(&sd, HELLO, *pids.last().unwrap());
}

/// Scenario 2 (and the item 1): `systemctl stop` 0.3 s after a
/// reload, with a slow request in flight on the draining old generation
/// and a shorter one on the new.
#[test]
fn stop_shortly_after_a_reload_lets_requests_in_flight_finish() {
    let _heavy = support::heavy();
    let Some((sd, addr)) = boot_hello() else {
        return;
    };
    let old = sd.main_pid(HELLO);
    wait_served_by(&addr, old);
    // On the old generation, which will be draining when the stop comes.
    let on_old = get_in_background(&addr, "/sleep/3000");
    std::thread::sleep(Duration::from_millis(200));

    let t_reload = Instant::now();
    let (new, _) = reload(&sd, HELLO, &addr);
    // On the new generation, the main process at the stop: a shorter one, so
    // that the main process exits while the old generation still drains,
    // and systemd (KillMode=control-group) then sends its SIGTERM to the old
    // generation too, which must not take it as a second stop signal.
    let on_new = get_in_background(&addr, "/sleep/1000");
    std::thread::sleep(
        (t_reload + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
    );
    let t_stop = Instant::now();
    sd.ok(&["stop", HELLO]);
    let stop_took = t_stop.elapsed();

    let on_old = on_old.join().unwrap();
    let on_new = on_new.join().unwrap();
    eprintln!(
        "systemd stop 0.3 s after a reload ({old} -> {new}): stop took {stop_took:?}, \
         request on the old generation: {on_old:?}, on the new: {on_new:?}"
    );
    let result = sd.show(HELLO, "Result");
    for (which, r) in [("old", &on_old), ("new", &on_new)] {
        assert!(
            matches!(r, Ok((200, body)) if body.starts_with("slept")),
            "the request in flight on the {which} generation: {r:?} (Result={result}, stop took \
             {stop_took:?})\n{}",
            sd.log_tail()
        );
    }
    assert_eq!(result, "success", "{}", sd.log_tail());
    assert_eq!(sd.show(HELLO, "ActiveState"), "inactive");
}

/// The item 12: after a reload, the main process is one systemd did
/// not fork, and systemd 252 does not wait for it at a stop or restart
/// (SIGTERM and SIGKILL at once) unless the unit's `ExecStop=` waits for it.
/// Boots, reloads twice, then runs `systemctl VERB` with a 2 s request in
/// flight on the main process, which must complete. Returns the boot, the
/// address and the main PID before the verb.
fn two_reloads_then(verb: &str) -> Option<(Systemd, String, u32)> {
    let (sd, addr) = boot_hello()?;
    // As under real traffic, each old generation still has a request to
    // finish when the new one reports `MAINPID=`, so the new main process
    // is surely not systemd's child at that moment (without one, the old
    // generation can exit and hand its child to systemd first).
    let mut draining = Vec::new();
    let mut main = 0;
    for _ in 0..2 {
        draining.push(get_in_background(&addr, "/sleep/600"));
        std::thread::sleep(Duration::from_millis(150));
        main = reload(&sd, HELLO, &addr).0;
    }
    for r in draining {
        let r = r.join().unwrap();
        assert!(matches!(&r, Ok((200, _))), "{r:?}\n{}", sd.log_tail());
    }
    // Only the main process is left, which is the case systemd 252 gets
    // wrong without the unit's ExecStop=.
    wait_alone(&sd, HELLO, main);

    let slow = get_in_background(&addr, "/sleep/2000");
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    sd.ok(&[verb, HELLO]);
    let took = t.elapsed();
    let slow = slow.join().unwrap();
    eprintln!(
        "systemd {verb} after two reloads (MainPID {main}): took {took:?}, \
         request in flight: {slow:?}, Result={}",
        sd.show(HELLO, "Result")
    );
    assert!(
        matches!(&slow, Ok((200, body)) if body == &format!("slept pid={main}\n")),
        "the request in flight: {slow:?} ({verb} took {took:?})\n{}",
        sd.log_tail()
    );
    assert!(
        took >= Duration::from_millis(1400),
        "the {verb} did not wait for the request: {took:?}"
    );
    Some((sd, addr, main))
}

#[test]
fn stop_after_two_reloads_waits_for_the_request_in_flight() {
    let _heavy = support::heavy();
    let Some((sd, ..)) = two_reloads_then("stop") else {
        return;
    };
    assert_eq!(sd.show(HELLO, "Result"), "success", "{}", sd.log_tail());
    assert_eq!(sd.show(HELLO, "ActiveState"), "inactive");
}

#[test]
fn restart_after_two_reloads_waits_for_the_request_in_flight() {
    let _heavy = support::heavy();
    let Some((sd, addr, main)) = two_reloads_then("restart") else {
        return;
    };
    assert_eq!(sd.show(HELLO, "ActiveState"), "active", "{}", sd.log_tail());
    let new = sd.main_pid(HELLO);
    assert_ne!(new, main);
    wait_served_by(&addr, new);
}

/// Scenario 3: socket activation with a TCP and a Unix `ListenStream`.
#[test]
fn socket_activation_reloads_and_re_activation() {
    let _heavy = support::heavy();
    let port = free_port();
    let units = [Unit::shipped(SOCKET, port), Unit::shipped(ACTIVATED, port)];
    let Some(sd) = Systemd::boot(&units, &[SOCKET], &support::fixture()) else {
        return;
    };
    let tcp = format!("127.0.0.1:{port}");
    let sock_file = sd.host_path(UNIX_PATH);
    let unix = format!("unix:{}", sock_file.display());
    assert_eq!(
        sd.show(SOCKET, "ActiveState"),
        "active",
        "{}",
        sd.log_tail()
    );
    assert_eq!(sd.show(ACTIVATED, "ActiveState"), "inactive");

    // The first connection starts the service.
    let (status, body) = get(&tcp, "/").expect("GET / activates the service");
    assert_eq!(status, 200, "{body}");
    let first = sd.main_pid(ACTIVATED);
    assert_eq!(body, format!("pid={first}\n"));
    wait_served_by(&unix, first);

    let rt = load::runtime();
    let on_tcp = load::start(rt.handle(), &tcp, Mode::KeepAlive, 8, "/");
    let on_unix = load::start(rt.handle(), &unix, Mode::KeepAlive, 8, "/");
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![first];
    let mut times = Vec::new();
    for _ in 0..3 {
        let (pid, took) = reload(&sd, ACTIVATED, &tcp);
        wait_served_by(&unix, pid);
        pids.push(pid);
        times.push(took);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (tcp_stats, unix_stats) = (on_tcp.finish(), on_unix.finish());
    eprintln!(
        "socket activation: 3 reloads (MainPID {pids:?}, each followed in {times:?}); \
         TCP {} ok {} failed; Unix {} ok {} failed",
        tcp_stats.ok, tcp_stats.failed, unix_stats.ok, unix_stats.failed
    );
    for (name, stats) in [("TCP", &tcp_stats), ("Unix", &unix_stats)] {
        assert_eq!(
            stats.failed,
            0,
            "{name}: {:?}\n{}",
            stats.errors,
            sd.log_tail()
        );
        assert!(stats.ok >= 300, "{name}: too few requests: {stats:?}");
    }

    // Stopping the service leaves the socket unit listening, and its file.
    let t_stop = Instant::now();
    sd.ok(&["stop", ACTIVATED]);
    eprintln!("socket activation: stop took {:?}", t_stop.elapsed());
    assert_eq!(sd.show(ACTIVATED, "Result"), "success", "{}", sd.log_tail());
    assert_eq!(sd.show(ACTIVATED, "ActiveState"), "inactive");
    assert_eq!(sd.show(SOCKET, "ActiveState"), "active");
    let file_kept = std::fs::symlink_metadata(&sock_file)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));

    // The next connection (on TCP, which works either way) re-activates.
    let (status, body) = get(&tcp, "/").expect("GET / re-activates the service");
    assert_eq!(status, 200, "{body}");
    let again = sd.main_pid(ACTIVATED);
    assert!(again != 0 && !pids.contains(&again), "{again} {pids:?}");
    assert_eq!(body, format!("pid={again}\n"));

    assert!(
        file_kept,
        "stopping {ACTIVATED} removed the socket unit's file {UNIX_PATH}:\n{}",
        sd.log_tail()
    );
    wait_served_by(&unix, again);
    // And over the Unix socket alone, after another stop.
    sd.ok(&["stop", ACTIVATED]);
    let (status, body) = get(&unix, "/").expect("GET / over Unix re-activates");
    assert_eq!(status, 200, "{body}");
    let third = sd.main_pid(ACTIVATED);
    assert_eq!(body, format!("pid={third}\n"));
    assert_ne!(third, again);
}

/// Scenario 4: a reload whose new binary fails keeps the unit active under
/// the same MainPID, and the next (good) reload works.
#[test]
fn a_failed_reload_keeps_the_unit_and_its_main_pid() {
    let _heavy = support::heavy();
    let Some((sd, addr)) = boot_hello() else {
        return;
    };
    let pid = sd.main_pid(HELLO);
    wait_served_by(&addr, pid);
    let bin = sd.dir().join("bin/endless-hello");
    let staged = sd.dir().join("bin/endless-hello.new");
    // A deploy, as the unit's comment says: write beside, then mv over.
    let deploy = |content: &[u8]| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&staged, content).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&staged, &bin).unwrap();
    };

    let rt = load::runtime();
    let l = load::start(rt.handle(), &addr, Mode::KeepAlive, 8, "/");
    std::thread::sleep(Duration::from_millis(300));
    deploy(b"#!/bin/sh\necho 'broken build' >&2\nexit 1\n");
    // `systemctl reload` waits for the outcome and fails with it.
    let out = sd.systemctl(&["reload", HELLO]);
    assert!(
        !out.status.success(),
        "systemctl reload succeeded with a broken build:\n{}",
        sd.log_tail()
    );
    // The journal may be written a moment after `systemctl` returns.
    sd.eventually(
        "the failure and endlessctl's answer in the journal",
        Duration::from_secs(10),
        || {
            let log = support::strip_ansi(&sd.log());
            (log.contains("new generation exited before it was ready")
                && log.contains("error new generation"))
            .then_some(())
        },
    );
    // RELOADING=1 then READY=1 again from the old generation: active again.
    sd.eventually("active again", Duration::from_secs(5), || {
        match sd.show(HELLO, "ActiveState") {
            state if state == "active" => Ok(()),
            state => Err(state),
        }
    });
    assert_eq!(sd.show(HELLO, "SubState"), "running");
    assert_eq!(sd.main_pid(HELLO), pid, "{}", sd.log_tail());
    wait_served_by(&addr, pid);
    std::thread::sleep(Duration::from_millis(300));

    // Fixed build: the next reload goes through.
    let fixed = std::fs::read(support::fixture()).unwrap();
    deploy(&fixed);
    let (new, took) = reload(&sd, HELLO, &addr);
    std::thread::sleep(Duration::from_millis(300));
    let stats = l.finish();
    eprintln!(
        "failed reload: MainPID stayed {pid}; the next reload moved it to {new} in {took:?}; \
         {} ok, {} failed",
        stats.ok, stats.failed
    );
    assert_eq!(stats.failed, 0, "{:?}\n{}", stats.errors, sd.log_tail());
    assert!(stats.ok >= 300, "too few requests: {stats:?}");
    assert_eq!(sd.show(HELLO, "ActiveState"), "active");
}

/// Probation under systemd: a new generation killed within its probation
/// leaves the unit active, its MainPID the old generation's (which held it
/// all along), and requests answered by the old generation, under load.
#[test]
fn a_successor_killed_during_probation_leaves_the_unit_active_on_the_old_generation() {
    let _heavy = support::heavy();
    let port = free_port();
    let mut unit = Unit::shipped(HELLO, port);
    let probation = fixture::PROBATION.assignment(Duration::from_secs(8));
    unit.text = unit.text.replace(
        "[Service]\n",
        &format!("[Service]\nEnvironment={probation}\n"),
    );
    let Some(sd) = Systemd::boot(&[unit], &[HELLO], &support::fixture()) else {
        return;
    };
    let addr = format!("127.0.0.1:{port}");
    let old = sd.main_pid(HELLO);
    wait_served_by(&addr, old);
    let rt = load::runtime();
    let l = load::start(rt.handle(), &addr, Mode::Close, 8, "/");
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    sd.ok(&["reload", HELLO]);
    let blocked = t.elapsed();
    // The reload returned once the new generation served; the main PID
    // stays with the old one for the probation.
    let new = support::eventually("the new generation serves", Duration::from_secs(10), || {
        let (_, body) = get(&addr, "/").ok()?;
        let pid = support::served_pid(&body);
        (pid != old).then_some(pid)
    });
    assert_eq!(sd.main_pid(HELLO), old);
    std::thread::sleep(Duration::from_millis(500));
    let out = sd.run(&["kill", "-9", &new.to_string()]);
    assert!(out.status.success(), "{out:?}");
    wait_served_by(&addr, old);
    std::thread::sleep(Duration::from_millis(1000));
    let stats = l.finish();
    eprintln!(
        "systemd probation: reload returned after {blocked:?}; new generation {new} killed; {} ok, {} failed {:?}",
        stats.ok, stats.failed, stats.failures
    );
    assert_eq!(sd.show(HELLO, "ActiveState"), "active", "{}", sd.log_tail());
    assert_eq!(sd.show(HELLO, "SubState"), "running");
    assert_eq!(sd.main_pid(HELLO), old, "{}", sd.log_tail());
    assert_eq!(
        stats.failures.get("connect").copied().unwrap_or(0),
        0,
        "{:?}",
        stats.errors
    );
    assert!(stats.failed <= 8, "{:?}", stats.errors);
    // The next reload works as usual.
    let (next, _) = reload(&sd, HELLO, &addr);
    assert_ne!(next, old);
}

/// Beyond the basics: `systemctl status` shows what the service does
/// (`STATUS=`), the watchdog is fed (`WatchdogSec=1`: without `WATCHDOG=1`
/// systemd kills the service within a second), and a stop whose drain runs
/// longer than `TimeoutStopSec=2` is not killed (`EXTEND_TIMEOUT_USEC=`
/// while it drains): its 5 s request completes.
#[test]
fn status_watchdog_and_a_drain_longer_than_the_stop_timeout() {
    let _heavy = support::heavy();
    let port = free_port();
    let mut unit = Unit::shipped(HELLO, port);
    let stop_timeout = fixture::STOP_TIMEOUT.assignment(Duration::from_secs(10));
    let probation = fixture::PROBATION.assignment(Duration::from_millis(500));
    unit.text = unit
        .text
        .replace("TimeoutStopSec=30", "TimeoutStopSec=2")
        .replace(
            "[Service]\n",
            &format!(
                "[Service]\nWatchdogSec=1\nEnvironment={stop_timeout}\nEnvironment={probation}\n"
            ),
        );
    let Some(sd) = Systemd::boot(&[unit], &[HELLO], &support::fixture()) else {
        return;
    };
    let addr = format!("127.0.0.1:{port}");
    let first = sd.main_pid(HELLO);
    wait_served_by(&addr, first);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sd.show(HELLO, "ActiveState"), "active", "{}", sd.log_tail());
    assert_eq!(
        sd.main_pid(HELLO),
        first,
        "the watchdog restarted it:\n{}",
        sd.log_tail()
    );
    assert_eq!(
        sd.show(HELLO, "StatusText"),
        format!("serving (generation 0, pid {first})")
    );
    let (second, _) = reload(&sd, HELLO, &addr);
    sd.eventually(
        "the status names the new generation",
        Duration::from_secs(5),
        || sd.show(HELLO, "StatusText") == format!("serving (generation 1, pid {second})"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sd.main_pid(HELLO), second, "{}", sd.log_tail());
    let slow = get_in_background(&addr, "/sleep/5000");
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    sd.ok(&["stop", HELLO]);
    let took = t.elapsed();
    let reply = slow.join().unwrap();
    eprintln!("stop with a 5 s request in flight and TimeoutStopSec=2 took {took:?}: {reply:?}");
    assert!(
        matches!(&reply, Ok((200, body)) if body.starts_with("slept")),
        "{reply:?}\n{}",
        sd.log_tail()
    );
    assert_eq!(sd.show(HELLO, "Result"), "success", "{}", sd.log_tail());
}

/// The processes of the PID namespace whose init has host PID `init`:
/// (PID inside, state).
fn namespace_processes(init: u32) -> Vec<(u32, char)> {
    let proc_dir = format!("/proc/{init}/root/proc");
    let Ok(dir) = std::fs::read_dir(&proc_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, char)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|pid: u32| {
            let stat = std::fs::read_to_string(format!("{proc_dir}/{pid}/stat")).ok()?;
            let state = stat.rsplit(')').next()?.split_whitespace().next()?;
            Some((pid, state.chars().next()?))
        })
        .collect();
    out.sort();
    out
}

/// Scenario 5: PID 1 of its own PID namespace, as `docker run` starts it,
/// with `keep_pid`: reloads lose nothing, no zombie is left, SIGTERM ends it
/// with status 0.
#[test]
fn pid_1_of_its_namespace_reloads_reaps_and_exits_cleanly() {
    let _heavy = support::heavy();
    if let Some(reason) = namespaces_unavailable() {
        return skip(&reason).unwrap_or(());
    }
    let mut server = Spec::new("unshare")
        .arg("--fork")
        .arg("--pid")
        .arg("--mount-proc")
        .arg(support::fixture().to_str().unwrap())
        .keep_pid()
        .start();
    assert_eq!(server.current().pid, 1, "{}", server.report());
    let addr = server.addr();
    let unshare = server.first_pid();
    let children =
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    let init: u32 = children.split_whitespace().next().unwrap().parse().unwrap();

    let rt = load::runtime();
    let l = load::start(rt.handle(), &addr, Mode::KeepAlive, 16, "/");
    std::thread::sleep(Duration::from_millis(300));
    let mut times = Vec::new();
    for _ in 0..3 {
        let before = server.readies().len();
        let t = Instant::now();
        signal_pid(init, Signal::SIGHUP);
        // keep_pid: the temporary generation's READY and PID 1's again (in
        // either order: each is printed by a task of its own).
        server
            .wait_readies(Duration::from_secs(20), |r| {
                (r.len() >= before + 2 && r[before..].iter().any(|x| x.pid == 1)).then_some(())
            })
            .unwrap_or_else(|| panic!("no reload:\n{}", server.report()));
        times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_served_by(&addr, 1);
    let stats = l.finish();
    eprintln!(
        "PID 1: 3 keep_pid reloads in {times:?}, {} ok, {} failed",
        stats.ok, stats.failed
    );
    assert_eq!(stats.failed, 0, "{:?}\n{}", stats.errors, server.report());
    assert!(stats.ok >= 500, "too few requests: {stats:?}");

    // Every temporary generation exited and was reaped (PID 1 reaps what
    // the namespace orphans): PID 1 is alone, and nothing is a zombie.
    server.eventually(
        "PID 1 alone in the namespace",
        Duration::from_secs(15),
        || match namespace_processes(init)[..] {
            [(1, state)] if state != 'Z' => Ok(()),
            ref procs => Err(format!("{procs:?} (state Z = zombie)")),
        },
    );

    let t = Instant::now();
    signal_pid(init, Signal::SIGTERM);
    let status = server.wait_exit(unshare, Duration::from_secs(30));
    eprintln!("PID 1: SIGTERM -> {status:?} in {:?}", t.elapsed());
    assert_eq!(
        status,
        Some(WaitStatus::Exited(Pid::from_raw(unshare as i32), 0)),
        "{}",
        server.report()
    );
    assert!(
        server.lines().iter().any(|l| l == "EXIT pid=1 ok"),
        "{}",
        server.report()
    );
}
