//! Files the server creates or removes next to other people's files: the PID
//! file, Unix socket files. It must never be tricked into touching a file
//! that is not its own.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{signal_pid, Spec};

#[test]
fn the_pid_file_is_not_redirected_by_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("app.pid");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    // The start delay gives us time to plant a symlink where an attacker
    // who can write the directory would: at every temporary name the server
    // could predict from its PID.
    let mut server = Spec::fixture()
        .env("FIXTURE_PID_FILE", pid_file.to_str().unwrap())
        .env("FIXTURE_START_DELAY_MS", "500")
        .spawn();
    let pid = server.first_pid();
    for name in [
        format!("app.tmp.{pid}"),
        format!("app.pid.tmp.{pid}"),
        format!(".app.pid.tmp.{pid}"),
    ] {
        std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
    }
    server
        .wait_line(Duration::from_secs(20), |l| l.starts_with("READY"))
        .unwrap_or_else(|| panic!("server did not start:\n{}", server.report()));

    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let meta = std::fs::symlink_metadata(&pid_file).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\n")
    );

    signal_pid(pid, Signal::SIGTERM);
    server.wait_exit(pid, Duration::from_secs(10)).unwrap();
    assert!(!pid_file.exists());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    // Only the planted links and the victim are left: no temporary file.
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 4);
}
