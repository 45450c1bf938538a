//! The control socket: a deploy script (or systemd's `ExecReload=`) asks
//! for a reload, waits, and learns the outcome from `endlessctl`'s exit
//! status.

use endless_tests as support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{get, served_pid, Spec};

fn endlessctl() -> std::path::PathBuf {
    support::binary("endlessctl")
}

fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Reachable by other users: only the socket's own mode and the
    // credential check stand in their way.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// `endlessctl COMMAND SOCKET` as `uid` (this user if `None`): its exit
/// code and what it printed.
fn ctl(command: &str, socket: &Path, uid: Option<u32>) -> (i32, String) {
    let mut cmd = Command::new(endlessctl());
    cmd.arg(command).arg(socket).args(["--timeout", "30"]);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text.trim().to_owned())
}

fn field<'a>(answer: &'a str, key: &str) -> &'a str {
    answer
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in {answer:?}"))
}

#[test]
fn reload_waits_for_the_new_generation_and_says_what_it_runs() {
    let dir = dir();
    let socket = dir.path().join("control.sock");
    let server = Spec::fixture().control_socket(&socket).start();
    let addr = server.addr();
    let (code, answer) = ctl("reload", &socket, None);
    assert_eq!(code, 0, "{answer}\n{}", server.report());
    let new: u32 = field(&answer, "pid").parse().unwrap();
    // When it answers, the new generation serves.
    assert_eq!(served_pid(&get(&addr, "/").unwrap().1), new);
    assert_eq!(field(&answer, "generation"), "1");
    assert_eq!(
        field(&answer, "executable"),
        support::fixture().display().to_string()
    );
    assert_eq!(field(&answer, "same-executable"), "true");
    assert_eq!(field(&answer, "probation"), "1000");
    assert!(field(&answer, "identity").contains(':'), "{answer}");

    // The socket was handed over: the new generation answers on it.
    let (code, status) = ctl("status", &socket, None);
    assert_eq!(code, 0, "{status}");
    assert_eq!(field(&status, "pid"), new.to_string());
    assert_eq!(field(&status, "reloads-requested"), "1");
    assert_eq!(field(&status, "in-probation"), "true");
}

#[test]
fn a_failed_reload_is_a_non_zero_exit_with_the_reason() {
    let dir = dir();
    let socket = dir.path().join("control.sock");
    let crash = dir.path().join("crash");
    let server = Spec::fixture()
        .control_socket(&socket)
        .crash_file(&crash)
        .start();
    let old = server.current().pid;
    std::fs::write(&crash, "").unwrap();
    let (code, answer) = ctl("reload", &socket, None);
    assert_eq!(code, 1, "{answer}");
    assert!(
        answer.starts_with("error new generation")
            && answer.contains("exited before it was ready: exit status: 3"),
        "{answer}"
    );
    support::wait_served_by(&server.addr(), old);
    let (_, status) = ctl("status", &socket, None);
    assert_eq!(field(&status, "pid"), old.to_string());
    assert_eq!(field(&status, "reloads-failed"), "1");
}

/// Several callers at once: one reload runs and its caller hears the
/// outcome; the others are told one is under way (and can ask again).
#[test]
fn concurrent_callers_each_get_an_answer() {
    let dir = dir();
    let socket = dir.path().join("control.sock");
    let server = Spec::fixture()
        .control_socket(&socket)
        .start_delay(Duration::from_millis(300))
        .start();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || ctl("reload", &socket, None))
        })
        .collect();
    let answers: Vec<(i32, String)> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = answers.iter().filter(|(c, _)| *c == 0).count();
    let busy = answers
        .iter()
        .filter(|(c, a)| *c == 1 && a == "error a reload is already under way")
        .count();
    assert_eq!((ok, busy), (1, 3), "{answers:?}\n{}", server.report());
}

/// Only this process's user (and root) may talk to it: the file's mode
/// keeps others out, and where the mode lets them in, their credentials
/// do not.
#[test]
fn a_caller_of_another_user_is_refused() {
    let nobody = 65534;
    let dir = dir();
    let socket = dir.path().join("control.sock");
    let server = Spec::fixture().control_socket(&socket).start();
    let (code, answer) = ctl("reload", &socket, Some(nobody));
    assert_eq!(code, 2, "{answer}");
    assert!(answer.contains("Permission denied"), "{answer}");

    let open = dir.path().join("open.sock");
    let server2 = Spec::fixture()
        .control_socket(&open)
        .control_socket_mode(0o666)
        .start();
    let (code, answer) = ctl("reload", &open, Some(nobody));
    assert_eq!((code, answer.as_str()), (1, "error permission denied"));
    assert!(server2
        .log()
        .contains("control socket: a client of another user refused"));
    // Nothing was reloaded.
    assert_eq!(server.readies().len(), 1);
    assert_eq!(server2.readies().len(), 1);
}

fn talk(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

/// Bad input gets an error line, never a crash; the server serves on and
/// still answers.
#[test]
fn garbage_gets_an_error_line_and_changes_nothing() {
    let dir = dir();
    let socket: PathBuf = dir.path().join("control.sock");
    let server = Spec::fixture().control_socket(&socket).start();
    assert_eq!(
        talk(&socket, b"restart\n"),
        "error unknown command \"restart\" (commands: reload, status)\n"
    );
    assert!(talk(&socket, b"\xff\xfe\x00\x01junk\n").starts_with("error unknown command"));
    assert_eq!(
        talk(&socket, &vec![b'x'; 4096]),
        "error line too long (at most 1024 bytes)\n"
    );
    // Several commands on one connection; an empty line is nothing.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(b"\nstatus\nbogus\n").unwrap();
    let mut r = BufReader::new(s);
    let mut a = String::new();
    r.read_line(&mut a).unwrap();
    assert!(a.starts_with("ok pid="), "{a}");
    a.clear();
    r.read_line(&mut a).unwrap();
    assert!(a.starts_with("error unknown command \"bogus\""), "{a}");
    // A client that hangs up at once, and one that says nothing.
    drop(UnixStream::connect(&socket).unwrap());
    let _silent = UnixStream::connect(&socket).unwrap();
    support::wait_served_by(&server.addr(), server.current().pid);
    let (code, status) = ctl("status", &socket, None);
    assert_eq!(code, 0, "{status}");
    assert_eq!(field(&status, "reloads-requested"), "0");
}

#[test]
fn endlessctl_says_how_to_use_it_and_when_nobody_listens() {
    let out = Command::new(endlessctl()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: endlessctl reload|status SOCKET"));
    let (code, answer) = ctl("status", Path::new("/nonexistent/control.sock"), None);
    assert_eq!(code, 2, "{answer}");
    assert!(answer.contains("No such file or directory"), "{answer}");
}
