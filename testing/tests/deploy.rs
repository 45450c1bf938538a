//! Deployment layouts: releases in their own directories behind a
//! `current` symlink that a deploy switches (Capistrano, Unicorn).

use endless_tests as support;

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use support::{get, Spec};

/// `root/releases/NAME/server` (a hard link to the fixture) and
/// `root/current -> releases/NAME`.
struct Layout {
    root: tempfile::TempDir,
}

impl Layout {
    fn new() -> Layout {
        // Beside the fixture, so that hard links work (same file system).
        let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        std::fs::create_dir(root.path().join("releases")).unwrap();
        Layout { root }
    }

    fn current(&self) -> PathBuf {
        self.root.path().join("current")
    }

    fn release(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join("releases").join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::hard_link(support::fixture(), dir.join("server")).unwrap();
        dir
    }

    /// Points `current` at release `name`, atomically (a new link renamed
    /// over the old one, as deploy tools do).
    fn switch(&self, name: &str) {
        let tmp = self.root.path().join("current.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(name), &tmp).unwrap();
        std::fs::rename(&tmp, self.current()).unwrap();
    }
}

/// `(exe, cwd)` of the generation that answers, once it is the newest
/// (right after a reload the old one may still answer a connection or two).
fn whoami(addr: &str, pid: u32) -> (String, String) {
    let timeout = std::time::Duration::from_secs(5);
    support::wait::eventually(&format!("{pid} answers"), timeout, || {
        let (status, body) = get(addr, "/whoami").unwrap();
        assert_eq!(status, 200, "{body}");
        let field = |k: &str| {
            body.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .unwrap()
                .to_owned()
        };
        match field("pid=") == pid.to_string() {
            true => Ok((field("exe="), field("cwd="))),
            false => Err(body.clone()),
        }
    })
}

fn canonical(p: &Path) -> String {
    p.canonicalize().unwrap().display().to_string()
}

/// Started as `./server` in `current`: after each switch a reload runs the
/// new release from its directory, also once the old release is deleted.
/// (The program changes directory before it calls into endless: the start
/// directory is captured before `main`.)
#[test]
fn a_relative_argv0_follows_the_current_symlink() {
    let layout = Layout::new();
    let v1 = layout.release("v1");
    layout.switch("v1");
    let mut server = Spec::fixture()
        .bin(layout.current().join("server"))
        .arg0("./server")
        .cwd(layout.current())
        .chdir_before_serving("/")
        .start();
    let addr = server.addr();
    let first = server.current().pid;
    assert_eq!(whoami(&addr, first).0, format!("{}/server", canonical(&v1)));

    let v2 = layout.release("v2");
    layout.switch("v2");
    let gen2 = server.reload(Signal::SIGHUP).pid;
    let (exe, cwd) = whoami(&addr, gen2);
    assert_eq!(
        exe,
        format!("{}/server", canonical(&v2)),
        "{}",
        server.report()
    );
    // The fixture moved to / itself; what it started in is checked by the
    // absolute-argv0 test below.
    assert_eq!(cwd, "/");

    // The old release is pruned; reloads keep working.
    std::fs::remove_dir_all(&v1).unwrap();
    let v3 = layout.release("v3");
    layout.switch("v3");
    let gen3 = server.reload(Signal::SIGHUP).pid;
    assert_eq!(whoami(&addr, gen3).0, format!("{}/server", canonical(&v3)));

    for pid in [first, gen2] {
        let status = server.wait_exit(pid, std::time::Duration::from_secs(10));
        // Both ours to reap: the first, and the second once the first is gone.
        assert_eq!(status, support::exited_0(pid), "{}", server.report());
    }
}

/// Started by its absolute path through the symlink, in `current`: after a
/// switch, the new binary runs in the new release's directory, and the old
/// release can be deleted.
#[test]
fn an_absolute_argv0_through_the_symlink_runs_in_the_new_release() {
    let layout = Layout::new();
    let v1 = layout.release("v1");
    layout.switch("v1");
    let path = layout.current().join("server");
    let server = Spec::fixture()
        .bin(&path)
        .arg0(path.display().to_string())
        .cwd(layout.current())
        .start();
    let addr = server.addr();
    assert_eq!(
        whoami(&addr, server.current().pid),
        (format!("{}/server", canonical(&v1)), canonical(&v1))
    );

    let v2 = layout.release("v2");
    layout.switch("v2");
    std::fs::remove_dir_all(&v1).unwrap();
    let gen2 = server.reload(Signal::SIGHUP).pid;
    assert_eq!(
        whoami(&addr, gen2),
        (format!("{}/server", canonical(&v2)), canonical(&v2)),
        "{}",
        server.report()
    );
}

/// Started as `./server` in `current` by a manager that sets no `PWD`
/// (systemd): the start directory is the release `current` pointed at
/// (`getcwd()` resolves the link), so a reload after a switch runs the old
/// release again. endless says so, at start and at the reload (which names
/// what it ran); once the old release is deleted, the reload fails naming
/// the directory, and the old generation serves on.
#[test]
fn without_pwd_a_relative_argv0_reruns_the_old_release_and_says_so() {
    let layout = Layout::new();
    let v1 = layout.release("v1");
    layout.switch("v1");
    let server = Spec::fixture()
        .bin(layout.current().join("server"))
        .arg0("./server")
        .cwd(layout.current())
        .no_pwd()
        .start();
    let addr = server.addr();
    assert!(
        server
            .log()
            .contains("started by a relative path without $PWD"),
        "{}",
        server.report()
    );
    layout.release("v2");
    layout.switch("v2");
    let gen2 = server.reload(Signal::SIGHUP).pid;
    assert_eq!(whoami(&addr, gen2).0, format!("{}/server", canonical(&v1)));
    assert!(server
        .log()
        .contains("the new generation runs the same executable file as this one"));
    std::fs::remove_dir_all(&v1).unwrap();
    let (status, body) = get(&addr, "/reload").unwrap();
    assert_eq!(status, 500);
    assert!(
        body.starts_with(&format!(
            "cannot start the new generation in {}",
            canonical_gone(&v1)
        )),
        "{body}"
    );
    // The old generation serves on.
    support::wait_served_by(&addr, gen2);
}

/// `p` as `canonicalize` gave it while it existed.
fn canonical_gone(p: &Path) -> String {
    let parent = p.parent().unwrap().canonicalize().unwrap();
    parent.join(p.file_name().unwrap()).display().to_string()
}
