//! systemd integration, with the test playing systemd: it listens on a
//! notify socket and checks every message and who sent it.

use endless_tests as support;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr};
use support::{signal_pid, Spec};

/// A notify socket and the messages it received, each with the sender's PID
/// (the status lines, watchdog pings and timeout extensions apart).
struct Manager {
    messages: Arc<Mutex<Vec<(u32, String)>>>,
    statuses: Arc<Mutex<Vec<(u32, String)>>>,
    env: String,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn new(abstract_name: bool) -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let (socket, env) = if abstract_name {
            use std::os::linux::net::SocketAddrExt;
            let name = format!(
                "endless-test-{}-{}",
                std::process::id(),
                dir.path().display()
            );
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
        } else {
            let path = dir.path().join("notify");
            (
                UnixDatagram::bind(&path).unwrap(),
                path.to_str().unwrap().to_owned(),
            )
        };
        setsockopt(&socket, sockopt::PassCred, &true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let messages: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
        let statuses: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
        let sink = messages.clone();
        let status_sink = statuses.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                let mut buf = [0u8; 4096];
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
                use std::os::fd::AsRawFd;
                let Ok(msg) = recvmsg::<UnixAddr>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                ) else {
                    if Arc::strong_count(&sink) == 1 {
                        return;
                    }
                    continue;
                };
                let pid = msg
                    .cmsgs()
                    .unwrap()
                    .find_map(|c| match c {
                        ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid() as u32),
                        _ => None,
                    })
                    .unwrap_or(0);
                let len = msg.bytes;
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                let other = ["STATUS=", "WATCHDOG=", "EXTEND_TIMEOUT_USEC="];
                match other.iter().any(|p| text.starts_with(p)) {
                    true => status_sink.lock().unwrap().push((pid, text)),
                    false => sink.lock().unwrap().push((pid, text)),
                }
            }
        });
        Manager {
            messages,
            statuses,
            env,
            _dir: dir,
        }
    }

    /// Waits until `n` messages have arrived and returns them all.
    fn wait(&self, n: usize) -> Vec<(u32, String)> {
        // Fewer than `n` after the wait is for the caller's assertions.
        support::within(Duration::from_secs(15), || {
            let m = self.messages.lock().unwrap().clone();
            (m.len() >= n).then_some(m)
        })
        .unwrap_or_else(|| self.messages.lock().unwrap().clone())
    }
}

/// The message's lines, with MONOTONIC_USEC's value checked and elided.
fn lines(message: &str) -> Vec<String> {
    message
        .lines()
        .map(|l| match l.strip_prefix("MONOTONIC_USEC=") {
            Some(v) => {
                assert!(v.parse::<u64>().unwrap() > 0, "{l}");
                "MONOTONIC_USEC=…".to_owned()
            }
            None => l.to_owned(),
        })
        .collect()
}

fn notify_sequence(abstract_name: bool) {
    let manager = Manager::new(abstract_name);
    let dir = tempfile::tempdir().unwrap();
    let crash = dir.path().join("crash");
    // Without probation: each new generation is the main process as soon as
    // it serves.
    let mut server = Spec::fixture()
        .env("NOTIFY_SOCKET", manager.env.clone())
        .crash_file(&crash)
        .probation(Duration::ZERO)
        .start();
    let gen0 = server.current().pid;
    let gen1 = server.reload(Signal::SIGHUP).pid;
    let gen2 = server.reload(Signal::SIGUSR1).pid;
    std::fs::write(&crash, "").unwrap();
    signal_pid(gen2, Signal::SIGHUP);
    server.wait_log(
        "new generation exited before it was ready",
        Duration::from_secs(10),
    );
    manager.wait(7);
    signal_pid(gen2, Signal::SIGTERM);
    server.wait_exit(gen2, Duration::from_secs(10)).unwrap();

    let got: Vec<(u32, Vec<String>)> = manager
        .wait(8)
        .into_iter()
        .map(|(pid, m)| (pid, lines(&m)))
        .collect();
    let s = |v: &[&str]| v.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let want = vec![
        (gen0, s(&["READY=1"])),
        (gen0, s(&["RELOADING=1", "MONOTONIC_USEC=…"])),
        (gen1, vec![format!("MAINPID={gen1}"), "READY=1".into()]),
        (gen1, s(&["RELOADING=1", "MONOTONIC_USEC=…"])),
        (gen2, vec![format!("MAINPID={gen2}"), "READY=1".into()]),
        // The failed reload: announced, then undone.
        (gen2, s(&["RELOADING=1", "MONOTONIC_USEC=…"])),
        (gen2, s(&["READY=1"])),
        (gen2, s(&["STOPPING=1"])),
    ];
    assert_eq!(got, want, "\n{}", server.report());
}

#[test]
fn sd_notify_messages_follow_reloads_failures_and_stop() {
    notify_sequence(false);
}

#[test]
fn sd_notify_works_with_an_abstract_socket_address() {
    notify_sequence(true);
}

/// With probation the main PID stays with the old generation until it lets
/// go, then moves; a new generation that dies within its probation never
/// was the main process, and the old one says it serves again.
#[test]
fn sd_notify_with_probation_moves_the_main_pid_when_the_old_generation_lets_go() {
    let manager = Manager::new(false);
    let mut server = Spec::fixture()
        .env("NOTIFY_SOCKET", manager.env.clone())
        .probation(Duration::from_secs(2))
        .start();
    let gen0 = server.current().pid;
    let gen1 = server.reload(Signal::SIGHUP).pid;
    // gen0 lets go after 2 s.
    manager.wait(4);
    let gen2 = server.reload(Signal::SIGHUP).pid;
    manager.wait(6);
    signal_pid(gen2, Signal::SIGKILL);
    server.wait_log(
        "serving again: the new generation failed",
        Duration::from_secs(10),
    );
    manager.wait(7);
    signal_pid(gen1, Signal::SIGTERM);
    server.wait_exit(gen1, Duration::from_secs(10)).unwrap();
    let got: Vec<(u32, Vec<String>)> = manager
        .wait(8)
        .into_iter()
        .map(|(pid, m)| (pid, lines(&m)))
        .collect();
    let s = |v: &[&str]| v.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let want = vec![
        (gen0, s(&["READY=1"])),
        (gen0, s(&["RELOADING=1", "MONOTONIC_USEC=…"])),
        (gen1, s(&["READY=1"])),
        // Told that its probation is over, gen1 names itself.
        (gen1, vec![format!("MAINPID={gen1}")]),
        (gen1, s(&["RELOADING=1", "MONOTONIC_USEC=…"])),
        (gen2, s(&["READY=1"])),
        (gen1, vec![format!("MAINPID={gen1}"), "READY=1".into()]),
        (gen1, s(&["STOPPING=1"])),
    ];
    assert_eq!(got, want, "\n{}", server.report());
}

/// Releases with different probations in one chain: N (probation 4 s)
/// hands over to N+1 (whose release turns probation off), which hands over
/// to N+2 during its own probation. The main PID ends on N+2, which serves,
/// never on a generation that exits. (N named N+1 the main process when it
/// let go, after N+2 had named itself: the service manager then followed
/// N+1 as it exited, and stopped the service.)
#[test]
fn mixed_probations_leave_the_main_pid_on_the_generation_that_serves() {
    let manager = Manager::new(false);
    let dir = tempfile::tempdir().unwrap();
    let probation = dir.path().join("probation");
    std::fs::write(&probation, "4000").unwrap();
    let mut server = Spec::fixture()
        .env("NOTIFY_SOCKET", manager.env.clone())
        .probation_file(&probation)
        .start();
    let n = server.current().pid;
    std::fs::write(&probation, "0").unwrap();
    let n1 = server.reload(Signal::SIGHUP).pid;
    std::thread::sleep(Duration::from_millis(500));
    let n2 = server.reload(Signal::SIGHUP).pid;
    server.wait_exit(n, Duration::from_secs(15)).unwrap();
    server.wait_exit(n1, Duration::from_secs(15)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let main = manager
        .messages
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, m)| lines(m))
        .filter_map(|l| {
            l.strip_prefix("MAINPID=")
                .map(|p| p.parse::<u32>().unwrap())
        })
        .next_back();
    assert_eq!(
        main,
        Some(n2),
        "{:?}\n{}",
        manager.messages.lock().unwrap(),
        server.report()
    );
    assert!(server.alive().contains(&n2));
}

/// `STATUS=` lines follow what the service does, for `systemctl status`.
#[test]
fn status_lines_say_what_the_service_does() {
    let manager = Manager::new(false);
    let mut server = Spec::fixture()
        .env("NOTIFY_SOCKET", manager.env.clone())
        .probation(Duration::from_millis(300))
        .start();
    let gen0 = server.current().pid;
    let gen1 = server.reload(Signal::SIGHUP).pid;
    server.assert_exited_0(gen0, Duration::from_secs(10));
    signal_pid(gen1, Signal::SIGTERM);
    server.assert_exited_0(gen1, Duration::from_secs(10));
    let statuses: Vec<String> = manager
        .statuses
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.clone())
        .collect();
    let has = |prefix: &str| statuses.iter().any(|s| s.starts_with(prefix));
    for want in [
        &format!("STATUS=serving (generation 0, pid {gen0})"),
        "STATUS=reloading: starting a new generation",
        &format!("STATUS=draining 0 connections; generation 1 (pid {gen1}) serves, on probation for 300ms"),
        &format!("STATUS=serving (generation 1, pid {gen1})"),
        "STATUS=stopping: draining 0 connections",
    ] {
        assert!(has(want), "no {want:?} in {statuses:#?}");
    }
}

#[test]
fn no_notify_socket_means_no_messages_and_no_errors() {
    let server = Spec::fixture().start();
    server.reload(Signal::SIGHUP);
    assert!(!server.log().contains("cannot notify"));
}

#[test]
fn with_keep_pid_only_the_original_pid_speaks_and_writes_the_pid_file() {
    let manager = Manager::new(false);
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let server = Spec::fixture()
        .env("NOTIFY_SOCKET", manager.env.clone())
        .keep_pid()
        .pid_file(&pid_file)
        .start();
    let pid = server.current().pid;
    signal_pid(pid, Signal::SIGHUP);
    // The temporary generation's READY line and the original PID's again
    // (in either order: each is printed by a task of its own).
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.readies().len() < 3 {
        assert!(Instant::now() < deadline, "{}", server.report());
        // Meanwhile the PID file never names anyone else.
        if let Ok(p) = std::fs::read_to_string(&pid_file) {
            assert_eq!(p, format!("{pid}\n"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let readies = server.readies();
    let (a, b) = (readies[1].pid, readies[2].pid);
    assert!((a == pid) != (b == pid), "{a} {b}:\n{}", server.report());
    let temporary = if a == pid { b } else { a };
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\n")
    );
    // Give a late message (from the temporary generation, say) time to come.
    let mut server = server;
    server
        .wait_exit(temporary, Duration::from_secs(15))
        .expect("temporary generation exits");
    std::thread::sleep(Duration::from_millis(300));

    let got: Vec<(u32, Vec<String>)> = manager
        .wait(3)
        .into_iter()
        .map(|(p, m)| (p, lines(&m)))
        .collect();
    assert_eq!(
        got,
        vec![
            (pid, vec!["READY=1".to_owned()]),
            (
                pid,
                vec!["RELOADING=1".to_owned(), "MONOTONIC_USEC=…".to_owned()]
            ),
            (pid, vec![format!("MAINPID={pid}"), "READY=1".to_owned()]),
        ],
        "the temporary generation ({temporary}) must stay quiet\n{}",
        server.report()
    );
}
