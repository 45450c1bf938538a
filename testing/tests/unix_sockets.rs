//! Unix sockets: the permissions of their files (set before the first
//! client can connect, kept across reloads) and Linux's abstract names.

use endless_tests as support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::fixture::{self, UnixPerms};
use support::{get, served_pid, wait_served_by, Spec};

/// `nobody`, who is neither the socket's owner nor in its group.
const NOBODY: u32 = 65534;

/// Connects to `path` as `nobody` (a separate process, the fixture in its
/// connect mode) and says how it went: `ok` or the error kind.
fn connect_as_nobody(path: &std::path::Path) -> String {
    use std::os::unix::process::CommandExt;
    let out = fixture::connect_command(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the connect probe");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    line.strip_prefix("CONNECT ")
        .unwrap_or_else(|| panic!("unexpected probe output {line:?}"))
        .to_owned()
}

/// A directory anyone may enter, so that only the socket's own
/// permissions decide who connects.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn socket_file_gets_mode_owner_and_group_before_it_listens_and_keeps_them() {
    let dir = open_dir();
    let path = dir.path().join("app.sock");
    let addr = format!("unix:{}", path.display());
    // umask 0: without the setting the file would be 0777, open to all.
    let mut server = Spec::fixture()
        .arg(&addr)
        .umask(0)
        .unix_permissions(UnixPerms::mode(0o600).user(NOBODY).group(NOBODY))
        .start();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600, "{}", server.report());
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));
    // Owner nobody, mode 0600: nobody may connect (root always may).
    assert_eq!(connect_as_nobody(&path), "ok");
    assert_eq!(get(&addr, "/").unwrap().0, 200);

    let first = server.current().pid;
    let next = server.reload(Signal::SIGHUP);
    wait_served_by(&addr, next.pid);
    server.assert_exited_0(first, Duration::from_secs(10));
    let after = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(after.ino(), meta.ino(), "the same socket file serves");
    assert_eq!(after.mode() & 0o7777, 0o600);
    assert_eq!((after.uid(), after.gid()), (NOBODY, NOBODY));
}

#[test]
fn a_socket_file_closed_to_others_refuses_them() {
    let dir = open_dir();
    let path = dir.path().join("app.sock");
    let addr = format!("unix:{}", path.display());
    let server = Spec::fixture()
        .arg(&addr)
        .umask(0)
        .unix_permissions(UnixPerms::mode(0o660))
        .start();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660, "{}", server.report());
    assert_eq!(connect_as_nobody(&path), "err=PermissionDenied");
    assert_eq!(get(&addr, "/").unwrap().0, 200);
}

#[test]
fn bad_permission_settings_name_the_culprit() {
    let dir = open_dir();
    let addr = format!("unix:{}", dir.path().join("a.sock").display());
    let msg = support::start_error(
        Spec::fixture()
            .arg(&addr)
            .unix_permissions(UnixPerms::mode(0o600).user("no-such-user-endless")),
    );
    assert_eq!(
        msg,
        format!("cannot listen on {addr}: no user named \"no-such-user-endless\"")
    );
    assert!(
        !dir.path().join("a.sock").exists(),
        "the half-made socket file was removed"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn abstract_socket_serves_and_survives_reloads() {
    let name = format!("unix:@endless-test-{}", std::process::id());
    let mut server = Spec::fixture().arg(&name).start();
    assert_eq!(server.addr(), name, "{}", server.report());
    let (status, body) = get(&name, "/").unwrap();
    assert_eq!(status, 200);
    assert_eq!(served_pid(&body), server.current().pid);
    for _ in 0..2 {
        let old = server.current().pid;
        let next = server.reload(Signal::SIGUSR1);
        wait_served_by(&name, next.pid);
        server.assert_exited_0(old, Duration::from_secs(10));
    }
    // A second server cannot take the name while the first holds it.
    let msg = support::start_error(Spec::fixture().arg(&name));
    assert!(
        msg.starts_with(&format!("cannot listen on {name}: ")),
        "{msg}"
    );
}

#[tokio::test]
async fn permissions_for_an_address_that_is_no_socket_file_are_refused() {
    use hyper::service::service_fn;
    let svc = || {
        service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
        })
    };
    let perms = endless::UnixPermissions::new().mode(0o600);
    for (addr, reason) in [
        (
            "unix:/nowhere.sock",
            "\"unix:/nowhere.sock\" is not a registered address",
        ),
        (
            "127.0.0.1:0",
            "\"127.0.0.1:0\" is not a Unix socket file (unix:/path)",
        ),
    ] {
        let err = endless::Server::new()
            .register("127.0.0.1:0", svc())
            .unix_permissions(addr, perms.clone())
            .run()
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid unix_permissions: {reason}")
        );
    }
}
