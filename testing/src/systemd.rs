//! A real systemd (the machine's own, 252 on Debian 12) booted as PID 1 of
//! private namespaces, to run the shipped units as a user would.
//!
//! The boot follows one recipe, because a careless one is dangerous: a
//! systemd boot cleans `/tmp` of the whole machine unless `/tmp` is a
//! private mount, and a boot of the usual targets starts sysinit, timers
//! (apt's among them) and whatever else the host has enabled. So, inside
//! `unshare --fork --pid --mount --propagation private --cgroup --uts --ipc
//! --mount-proc` and before systemd starts, a small script:
//! - mounts a private tmpfs on `/run` and binds this boot's temporary
//!   directory (units, binary, logs) at `/run/endless-test`;
//! - mounts private tmpfs on `/tmp`, `/var/tmp` and `/var/log/journal`;
//! - replaces `/sys/fs/cgroup` by a unified cgroup2 mount;
//! - writes the units to `/run/systemd/system/`, each with a drop-in that
//!   says `DefaultDependencies=no` (so nothing pulls in sysinit.target),
//!   and masks every timer and the tmpfiles services as a second belt;
//! - execs systemd with `--unit=endless-test.target`, a target of ours
//!   that wants only the test's units.
//!
//! The test talks to it with `nsenter -t INIT -a systemctl …` and ends it
//! with `systemctl poweroff`, or, if that does not end it in time, by
//! killing the namespace's init (which kills every process in it) and
//! reaping `unshare`. Every wait is bounded.
//!
//! Where this cannot run (not root, no systemd, no namespaces) the tests
//! print `skipped: …` and pass, except under `CI=true`, where they fail.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::wait::{eventually, eventually_with, within, Attempt};

const SYSTEMD: &str = "/lib/systemd/systemd";
/// Where the boot's temporary directory is seen inside the namespaces.
pub const INSIDE: &str = "/run/endless-test";
/// The target the boot starts; it wants only the test's units.
const TARGET: &str = "endless-test.target";
/// The namespace flags of the recipe.
const UNSHARE: [&str; 9] = [
    "--fork",
    "--pid",
    "--mount",
    "--propagation",
    "private",
    "--cgroup",
    "--uts",
    "--ipc",
    "--mount-proc",
];

/// What the script run by `unshare` does before systemd starts. `$1` is the
/// boot's directory on the host. `set -e`: if any private mount fails, stop
/// before systemd could touch the host's files.
const BOOT_SCRIPT: &str = r#"set -eu
dir=$1
mount -t tmpfs -o mode=755 tmpfs /run
mkdir /run/endless-test
mount --bind "$dir" /run/endless-test
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
if mountpoint -q /sys/fs/cgroup; then umount -R -l /sys/fs/cgroup; fi
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/systemd/system
cp -R /run/endless-test/units/. /run/systemd/system/
for t in /lib/systemd/system/*.timer /etc/systemd/system/*.timer /etc/systemd/system/*/*.timer \
         systemd-tmpfiles-setup.service systemd-tmpfiles-clean.service; do
  [ "$t" = "${t#*\*}" ] || continue
  ln -sf /dev/null "/run/systemd/system/${t##*/}"
done
echo "$BOOTING"
exec env -i container=endless-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --unit=endless-test.target
"#;

/// What the boot script prints just before it execs systemd: a boot that
/// ends before this line could not set up its namespaces (a skip), one that
/// ends after it is a failure of systemd.
const BOOTING: &str = "endless-test: private mounts done, starting systemd";

/// Whether CI asked for every test to run (then a missing prerequisite is a
/// failure, not a skip).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports that a test cannot run here: prints `skipped: …` and returns
/// `None`, or fails under `CI=true`.
pub fn skip<T>(reason: &str) -> Option<T> {
    assert!(!in_ci(), "CI=true, but this test cannot run: {reason}");
    eprintln!("skipped: {reason}");
    None
}

/// Why private PID namespaces (with their own `/proc`) cannot be made here,
/// if they cannot.
pub fn namespaces_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (unshare, mount)".into());
    }
    let out = Command::new("unshare")
        .args(UNSHARE)
        .arg("true")
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) => Some(format!("cannot run unshare: {e}")),
        Ok(o) if !o.status.success() => Some(format!(
            "unshare {} fails: {}",
            UNSHARE.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Why systemd cannot be booted here, if it cannot.
pub fn systemd_unavailable() -> Option<String> {
    if !Path::new(SYSTEMD).exists() {
        return Some(format!("{SYSTEMD} is not installed"));
    }
    for tool in ["nsenter", "systemctl"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    namespaces_unavailable()
}

/// A unit to install: its file name and text.
#[derive(Debug, Clone)]
pub struct Unit {
    pub name: String,
    pub text: String,
}

impl Unit {
    /// A unit shipped in `examples/systemd/`, as a user installs it: the
    /// binary path replaced by this boot's copy and the address
    /// `127.0.0.1:8080` by `127.0.0.1:PORT` (tests run in parallel).
    pub fn shipped(name: &str, port: u16) -> Unit {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/systemd")
            .join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Unit {
            name: name.to_owned(),
            text: text
                .replace(
                    "/usr/local/bin/endless-hello",
                    &format!("{INSIDE}/bin/endless-hello"),
                )
                .replace(
                    "/usr/local/bin/endlessctl",
                    &format!("{INSIDE}/bin/endlessctl"),
                )
                .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")),
        }
    }

    /// The drop-in every installed unit gets: no default dependencies (so
    /// nothing pulls in sysinit.target and its /tmp cleaning), and for
    /// services, their output (the fixture logs at `debug` by default) in
    /// `services.log`.
    fn drop_in(&self) -> String {
        let mut text = String::from("[Unit]\nDefaultDependencies=no\n");
        if self.name.ends_with(".service") {
            text.push_str(&format!(
                "[Service]\nStandardOutput=append:{INSIDE}/services.log\n\
                 StandardError=append:{INSIDE}/services.log\n"
            ));
        }
        text
    }
}

/// The `endlessctl` binary of this build, beside the test's examples.
pub fn endlessctl() -> std::path::PathBuf {
    let path = super::process::fixture()
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("endlessctl"))
        .expect("the target directory");
    assert!(
        path.exists(),
        "{} not built (cargo build --bins)",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1 (bound, then closed, so that a unit can bind it).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A booted systemd; powered off (or killed) and reaped on drop.
pub struct Systemd {
    dir: tempfile::TempDir,
    unshare: Child,
    /// The host PID of the namespaces' PID 1 (systemd).
    init: u32,
    reaped: bool,
}

impl Systemd {
    /// Boots systemd with `units` installed and `start` wanted by the boot
    /// target (and ordered before it, so that the boot is over when they
    /// have started). `binary` is copied to `{INSIDE}/bin/endless-hello`.
    ///
    /// `None` (after a `skipped:` line) when this machine cannot do it.
    pub fn boot(units: &[Unit], start: &[&str], binary: &Path) -> Option<Systemd> {
        if let Some(reason) = systemd_unavailable() {
            return skip(&reason);
        }
        let dir = tempfile::Builder::new()
            .prefix("endless-systemd-")
            .tempdir()
            .unwrap();
        let units_dir = dir.path().join("units");
        std::fs::create_dir_all(&units_dir).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::copy(binary, dir.path().join("bin/endless-hello")).unwrap();
        std::fs::copy(endlessctl(), dir.path().join("bin/endlessctl")).unwrap();
        std::fs::write(dir.path().join("services.log"), "").unwrap();
        for unit in units {
            std::fs::write(units_dir.join(&unit.name), &unit.text).unwrap();
            let d = units_dir.join(format!("{}.d", unit.name));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("endless-test.conf"), unit.drop_in()).unwrap();
        }
        let target = format!(
            "[Unit]\nDescription=endless test boot\nDefaultDependencies=no\n\
             Wants={0}\nAfter={0}\n",
            start.join(" ")
        );
        std::fs::write(units_dir.join(TARGET), target).unwrap();
        std::fs::write(dir.path().join("boot.sh"), BOOT_SCRIPT).unwrap();

        let console = std::fs::File::create(dir.path().join("console.log")).unwrap();
        let unshare = Command::new("unshare")
            .args(UNSHARE)
            .arg("/bin/sh")
            .arg(dir.path().join("boot.sh"))
            .arg(dir.path())
            .env("BOOTING", BOOTING)
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("start unshare");
        let mut sd = Systemd {
            dir,
            init: 0,
            unshare,
            reaped: false,
        };
        sd.init = sd.find_init();
        // The boot script runs as the namespaces' init, then execs systemd.
        // Booting, or ended: `Some(None)` or `Some(Some(status))`.
        let ended = within(Duration::from_secs(10), || {
            if sd.console().contains(BOOTING) {
                return Some(None);
            }
            let status = sd.unshare.try_wait().ok()??;
            Some(Some(status))
        })
        .unwrap_or_else(|| panic!("boot script stuck:\n{}", sd.console()));
        if let Some(status) = ended {
            sd.reaped = true;
            let reason = format!(
                "cannot set up the private mounts for systemd ({status}): {}",
                sd.console().trim()
            );
            return skip(&reason);
        }
        sd.wait_booted();
        Some(sd)
    }

    /// The host PID of unshare's child, the namespaces' PID 1 (the boot
    /// script, then systemd); 0 if unshare has ended.
    fn find_init(&mut self) -> u32 {
        let u = self.unshare.id();
        eventually(
            &format!("init under unshare {u}"),
            Duration::from_secs(10),
            || {
                let children = std::fs::read_to_string(format!("/proc/{u}/task/{u}/children"))
                    .unwrap_or_default();
                if let Some(pid) = children.split_whitespace().next() {
                    return Some(pid.parse().unwrap());
                }
                if let Ok(Some(_)) = self.unshare.try_wait() {
                    // Ended already: `boot` says why.
                    self.reaped = true;
                    return Some(0);
                }
                None
            },
        )
    }

    /// Waits until the boot target is active (its units have started).
    fn wait_booted(&mut self) {
        let booted = within(Duration::from_secs(30), || {
            let out = self.systemctl(&["is-active", TARGET]);
            if String::from_utf8_lossy(&out.stdout).trim() == "active" {
                return true;
            }
            if let Ok(Some(status)) = self.unshare.try_wait() {
                self.reaped = true;
                panic!(
                    "systemd exited during the boot ({status}):\n{}",
                    self.console()
                );
            }
            false
        });
        assert!(
            booted.is_some(),
            "{TARGET} not active after 30 s:\n{}\n{}",
            self.status_all(),
            self.console()
        );
    }

    /// Runs `argv` inside the namespaces (`nsenter -a`), bounded to 60 s.
    pub fn run(&self, argv: &[&str]) -> Output {
        Command::new("timeout")
            .args(["--kill-after=5", "60", "nsenter", "-t"])
            .arg(self.init.to_string())
            .arg("-a")
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// `systemctl ARGS` inside.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut argv = vec!["systemctl", "--no-pager"];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    /// `systemctl ARGS`, which must succeed.
    pub fn ok(&self, args: &[&str]) {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl {} failed: {}{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// One property of a unit (`systemctl show -p PROP --value UNIT`).
    pub fn show(&self, unit: &str, prop: &str) -> String {
        let out = self.systemctl(&["show", "-p", prop, "--value", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The unit's main PID, as seen inside (0 if none).
    pub fn main_pid(&self, unit: &str) -> u32 {
        self.show(unit, "MainPID").parse().unwrap_or(0)
    }

    /// Waits until the unit's main PID is neither 0 nor `old`; returns it.
    pub fn wait_main_pid_change(&self, unit: &str, old: u32, timeout: Duration) -> u32 {
        let what = format!("MainPID of {unit} other than 0 and {old}");
        self.eventually(&what, timeout, || match self.main_pid(unit) {
            0 => Err(0),
            pid if pid == old => Err(pid),
            pid => Ok(pid),
        })
    }

    /// [`eventually`](super::wait::eventually), with the services' log
    /// and the units' status in the panic message.
    pub fn eventually<T, A: Attempt<T>>(
        &self,
        what: &str,
        timeout: Duration,
        probe: impl FnMut() -> A,
    ) -> T {
        eventually_with(what, timeout, || self.log_tail(), probe)
    }

    /// The PIDs (as seen inside) in the unit's cgroup.
    pub fn cgroup_pids(&self, unit: &str) -> Vec<u32> {
        let path = format!("/sys/fs/cgroup/system.slice/{unit}/cgroup.procs");
        let out = self.run(&["cat", &path]);
        let mut pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        pids.sort();
        pids
    }

    /// A path inside the namespaces, as the host reaches it (through the
    /// root of the namespaces' init).
    pub fn host_path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.init))
    }

    /// This boot's directory on the host (`INSIDE` inside).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the services printed (the fixture's stdout and log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("services.log")).unwrap_or_default()
    }

    /// The last lines the services printed, and the units' status, for
    /// assertion messages.
    pub fn log_tail(&self) -> String {
        let log = super::strip_ansi(&self.log());
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!(
            "--- services.log (last 60 lines)\n{tail}\n--- units\n{}",
            self.status_all()
        )
    }

    fn status_all(&self) -> String {
        let out = self.systemctl(&["status", "--all", "--lines=0", "endless-*"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What unshare, the boot script and systemd printed.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Waits up to `timeout` for unshare (and so the namespaces) to end.
    fn wait_gone(&mut self, timeout: Duration) -> bool {
        let gone = within(timeout, || matches!(self.unshare.try_wait(), Ok(Some(_))));
        if gone.is_some() {
            self.reaped = true;
        }
        gone.is_some()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // `--no-block`: the call returns once the job is queued; the wait
        // below is what bounds the shutdown.
        let _ = self.systemctl(&["--no-block", "poweroff"]);
        if self.wait_gone(Duration::from_secs(10)) {
            return;
        }
        eprintln!("systemd did not power off in 10 s; killing its namespace");
        // Only while unshare is unreaped is `init` surely its child (and
        // not a reused PID): killing a PID namespace's init kills every
        // process in it.
        if std::fs::read_to_string(format!("/proc/{}/stat", self.init)).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                == Some(&self.unshare.id().to_string())
        }) {
            let _ = kill(Pid::from_raw(self.init as i32), Signal::SIGKILL);
        }
        if !self.wait_gone(Duration::from_secs(10)) {
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}
