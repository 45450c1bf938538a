//! Servers as real processes: start the fixture (or an example), read what
//! it prints, signal it, and reap every generation it leads to.
//!
//! Each started server gets its own process group, which every re-exec'd
//! generation inherits, and the test process is a child subreaper, so
//! generations orphaned by their parent's exit become our children. On drop
//! the whole group is killed and every member that is our child is reaped.
//!
//! Self-contained but for its sibling `wait` (as `super::wait`): the
//! benchmark's peers (`bench/peers`) include both by `#[path]`.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::wait::{eventually_with, within, Attempt};

/// The path of one of the library's examples (or the fixture), built.
pub fn example(name: &str) -> PathBuf {
    built(&Path::new("examples").join(name))
}

/// The path of one of the library's binaries (`endlessctl`), built.
pub fn binary(name: &str) -> PathBuf {
    built(Path::new(name))
}

fn built(relative: &Path) -> PathBuf {
    let (_, profile_dir, _) = target_dirs();
    build_once();
    let path = profile_dir.join(relative);
    assert!(path.exists(), "{} not built", path.display());
    path
}

/// The target directory, the profile's directory in it, and the cargo
/// arguments that select both, from the running test binary's path:
/// `<target>[/<triple>]/<profile>/deps/<test>`. `<target>` is the one
/// holding cargo's `.rustc_info.json`.
fn target_dirs() -> (PathBuf, PathBuf, Vec<String>) {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let above = profile_dir.parent().unwrap();
    let mut args = Vec::new();
    let target = if above.join(".rustc_info.json").exists() {
        above.to_path_buf()
    } else {
        let triple = above.file_name().unwrap().to_string_lossy();
        args.push(format!("--target={triple}"));
        above.parent().unwrap().to_path_buf()
    };
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => args.push("--release".into()),
        Some(other) => args.push(format!("--profile={other}")),
        None => {}
    }
    (target, profile_dir, args)
}

/// Builds the library's examples and binaries, and the fixture, once per
/// test process, so that a crate's tests run alone (`cargo test -p
/// endless-tests`, `-p endless-integrations`) start what the sources say
/// now: cargo builds a package's own examples for its tests, not another
/// package's. Plain `cargo test` at the root has built them already and
/// says so (`ENDLESS_TESTS_PREBUILT`, set by tests/suite.rs).
fn build_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("ENDLESS_TESTS_PREBUILT").is_some() {
            return;
        }
        let (target, _, args) = target_dirs();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let fixture_features = if cfg!(feature = "http3") {
            "--features=http3"
        } else {
            ""
        };
        let builds: [&[&str]; 2] = [
            &["-p", "hyper-endless", "--examples", "--bins"],
            &["-p", "endless-tests", "--examples", fixture_features],
        ];
        for build in builds {
            let status = Command::new(&cargo)
                .args(["build", "--quiet", "--manifest-path", manifest])
                .args(build.iter().filter(|a| !a.is_empty()))
                .arg("--target-dir")
                .arg(&target)
                .args(&args)
                .stdin(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("cannot run cargo to build {build:?}: {e}"));
            assert!(status.success(), "cargo build {build:?} failed: {status}");
        }
    });
}

pub fn fixture() -> PathBuf {
    example("fixture")
}

/// Makes generations orphaned by their parent's exit our children, so that
/// we can reap them. Linux only; elsewhere (the bench builds on macOS) they
/// go to init as usual.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(target_os = "linux")]
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    });
}

type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

/// A running server and all of its generations.
pub struct Proc {
    child: Child,
    reaped_first: bool,
    pgid: Pid,
    lines: Lines,
    stderr: tempfile::NamedTempFile,
}

pub struct Spec<'a> {
    pub bin: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(&'a str, String)>,
    /// Sockets to pass at FDs 3, 4, … as systemd's socket activation does,
    /// with `LISTEN_PID` set to the started process's own PID.
    activated: Option<(Vec<std::os::fd::RawFd>, String)>,
    /// The directory to start in (`PWD` is set to it, as a shell would) and
    /// the `argv[0]` to give, when not the binary's path.
    cwd: Option<PathBuf>,
    /// Leave `PWD` out of the environment (as systemd does).
    no_pwd: bool,
    arg0: Option<String>,
}

impl<'a> Spec<'a> {
    pub fn fixture() -> Self {
        Self::new(fixture())
    }

    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Spec {
            bin: bin.into(),
            args: Vec::new(),
            env: Vec::new(),
            activated: None,
            cwd: None,
            no_pwd: false,
            arg0: None,
        }
    }

    /// Starts in `dir` (through symlinks as given: `PWD` names it as a
    /// shell started there would).
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Starts without `PWD` in the environment, as a service manager that
    /// sets none (systemd) would.
    pub fn no_pwd(mut self) -> Self {
        self.no_pwd = true;
        self
    }

    /// Gives the program `arg0` as its `argv[0]` (say `./server`).
    pub fn arg0(mut self, arg0: impl Into<String>) -> Self {
        self.arg0 = Some(arg0.into());
        self
    }

    /// Passes `fds` as systemd would: at 3, 4, …, with `LISTEN_FDS` and
    /// `LISTEN_PID` = the PID of the started process (a shell sets it to
    /// `$$`, then execs the server), then the shell assignments in `extra`
    /// (such as `LISTEN_FDNAMES=a:b`, or an overriding `LISTEN_FDS=x`).
    pub fn activated(mut self, fds: Vec<std::os::fd::RawFd>, extra: &str) -> Self {
        self.activated = Some((fds, extra.to_owned()));
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.env.push((k, v.into()));
        self
    }

    pub fn bin(mut self, bin: impl AsRef<Path>) -> Self {
        self.bin = bin.as_ref().to_path_buf();
        self
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(self) -> Proc {
        become_subreaper();
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = match &self.activated {
            None => Command::new(&self.bin),
            Some((fds, extra)) => {
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c")
                    .arg(format!(
                        "LISTEN_PID=$$ LISTEN_FDS={} {extra} exec \"$0\" \"$@\"",
                        fds.len()
                    ))
                    .arg(&self.bin);
                let fds = fds.clone();
                // SAFETY: only dup2 between fork and exec, on FDs we own;
                // the sources are first moved above the target range.
                unsafe {
                    cmd_place_fds(&mut sh, fds);
                }
                sh
            }
        };
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir).env("PWD", dir);
        }
        if self.no_pwd {
            cmd.env_remove("PWD");
        }
        if let Some(arg0) = &self.arg0 {
            cmd.arg0(arg0);
        }
        // A binary the test has just written can be busy for a moment: a
        // fork in another test thread briefly holds the FD it was written
        // through, until that child's exec closes it.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r.expect("start the server"),
            }
        };
        let pgid = Pid::from_raw(child.id() as i32);
        let lines: Lines = Arc::default();
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let (lock, cv) = &*sink;
                lock.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        Proc {
            child,
            reaped_first: false,
            pgid,
            lines,
            stderr,
        }
    }

    /// Starts the process and waits for its first `READY` line.
    pub fn start(self) -> Proc {
        let p = self.spawn();
        p.wait_line(Duration::from_secs(20), |l| l.starts_with("READY"))
            .unwrap_or_else(|| panic!("server did not start:\n{}", p.report()));
        p
    }
}

/// A parsed `READY pid=P reloaded=B addrs=A,B` line.
#[derive(Debug, Clone)]
pub struct Ready {
    pub pid: u32,
    pub reloaded: bool,
    pub addrs: Vec<String>,
}

impl Ready {
    fn parse(line: &str) -> Option<Ready> {
        let rest = line.strip_prefix("READY ")?;
        let mut pid = None;
        let mut reloaded = false;
        let mut addrs = Vec::new();
        for part in rest.split(' ') {
            if let Some(v) = part.strip_prefix("pid=") {
                pid = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("reloaded=") {
                reloaded = v == "true";
            } else if let Some(v) = part.strip_prefix("addrs=") {
                addrs = v.split(',').map(str::to_owned).collect();
            }
        }
        Some(Ready {
            pid: pid?,
            reloaded,
            addrs,
        })
    }
}

impl Proc {
    pub fn first_pid(&self) -> u32 {
        self.child.id()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().clone()
    }

    /// Waits until `probe`, given every line printed so far, finds what it
    /// looks for; woken by each new line rather than polling. `None` on
    /// timeout. The one waiter on stdout the others are made of.
    pub fn wait_lines<T>(
        &self,
        timeout: Duration,
        mut probe: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let (lock, cv) = &*self.lines;
        let deadline = Instant::now() + timeout;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(found) = probe(&lines) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits for a line (already printed or to come) that `pred` accepts.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_lines(timeout, |lines| lines.iter().find(|l| pred(l)).cloned())
    }

    /// Waits until `probe`, given every `READY` line so far, finds what it
    /// looks for. `None` on timeout.
    pub fn wait_readies<T>(
        &self,
        timeout: Duration,
        mut probe: impl FnMut(&[Ready]) -> Option<T>,
    ) -> Option<T> {
        self.wait_lines(timeout, |lines| {
            let readies: Vec<Ready> = lines.iter().filter_map(|l| Ready::parse(l)).collect();
            probe(&readies)
        })
    }

    /// Waits (up to 30 s) for the `n`-th `READY` line, counting from 1, and
    /// returns it.
    pub fn nth_ready(&self, n: usize) -> Ready {
        let timeout = Duration::from_secs(30);
        self.wait_readies(timeout, |readies| readies.get(n - 1).cloned())
            .unwrap_or_else(|| panic!("no READY #{n} within {timeout:?}:\n{}", self.report()))
    }

    pub fn readies(&self) -> Vec<Ready> {
        self.lines()
            .iter()
            .filter_map(|l| Ready::parse(l))
            .collect()
    }

    /// The generation that printed `READY` last.
    pub fn current(&self) -> Ready {
        self.readies().pop().expect("no READY line yet")
    }

    pub fn addr(&self) -> String {
        self.current().addrs[0].clone()
    }

    /// Waits for a `READY` line from a generation other than `pid`'s.
    pub fn wait_ready_after(&self, pid: u32, timeout: Duration) -> Option<Ready> {
        let seen = self.readies().len();
        self.wait_readies(timeout, |readies| {
            readies
                .iter()
                .skip(seen.saturating_sub(1))
                .find(|r| r.pid != pid && r.reloaded)
                .cloned()
        })
    }

    /// Sends a reload signal to the current generation and waits for the
    /// next one to be ready.
    pub fn reload(&self, signal: Signal) -> Ready {
        let old = self.current().pid;
        signal_pid(old, signal);
        self.wait_ready_after(old, Duration::from_secs(20))
            .unwrap_or_else(|| {
                panic!(
                    "no new generation after {signal} to {old}:\n{}",
                    self.report()
                )
            })
    }

    /// Waits for `pid` (one of this server's generations) to exit, reaping it
    /// if it is our child (the first one always is; later ones become ours
    /// when their parent exits). `None` on timeout.
    pub fn wait_exit(&mut self, pid: u32, timeout: Duration) -> Option<WaitStatus> {
        within(timeout, || {
            if pid == self.child.id() {
                let status = self.child.try_wait().unwrap()?;
                self.reaped_first = true;
                use std::os::unix::process::ExitStatusExt;
                let p = Pid::from_raw(pid as i32);
                return Some(match status.signal() {
                    Some(sig) => WaitStatus::Signaled(p, Signal::try_from(sig).unwrap(), false),
                    None => WaitStatus::Exited(p, status.code().unwrap()),
                });
            }
            match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => None,
                Ok(status) => Some(status),
                // Not our child (yet): its parent is still alive, or it
                // was reaped by its parent.
                Err(_) => {
                    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(WaitStatus::StillAlive)
                }
            }
        })
    }

    /// The PIDs of this server's processes that are alive (not zombies).
    pub fn alive(&self) -> Vec<u32> {
        group_members(self.pgid)
            .into_iter()
            .filter(|m| m.state != 'Z')
            .map(|m| m.pid)
            .collect()
    }

    /// Waits until every process of this server has exited, reaping those
    /// that are our children; false on timeout.
    pub fn wait_all_exited(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let me = std::process::id();
        loop {
            let _ = self.child.try_wait();
            let mut alive = false;
            for m in group_members(self.pgid) {
                if m.state == 'Z' && m.ppid == me {
                    let _ = waitpid(Pid::from_raw(m.pid as i32), Some(WaitPidFlag::WNOHANG));
                } else if m.state != 'Z' {
                    alive = true;
                }
            }
            if !alive {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The PIDs of this server's processes that exited but were not reaped
    /// by the generation that started them. (Generations orphaned to the test
    /// process are the test's to reap, in `wait_exit` or on drop.)
    pub fn zombies(&self) -> Vec<u32> {
        let me = std::process::id();
        group_members(self.pgid)
            .into_iter()
            .filter(|m| m.state == 'Z' && m.ppid != me)
            .map(|m| m.pid)
            .collect()
    }

    /// Waits until this server has a live process not in `known` (a
    /// generation that is starting), and returns its PID.
    pub fn wait_new_process(&self, known: &[u32], timeout: Duration) -> u32 {
        self.eventually("a new process", timeout, || {
            self.alive().into_iter().find(|p| !known.contains(p))
        })
    }

    /// Waits until one process of this server is alive and none is a
    /// zombie (the last exits reaped by whoever owns them); returns its PID.
    pub fn wait_settled(&self, timeout: Duration) -> u32 {
        self.eventually("one process alive, no zombie", timeout, || {
            let (alive, zombies) = (self.alive(), self.zombies());
            match alive[..] {
                [one] if zombies.is_empty() => Ok(one),
                _ => Err(format!("alive {alive:?}, zombies {zombies:?}")),
            }
        })
    }

    /// Everything the server printed, for assertion messages.
    pub fn report(&self) -> String {
        let err = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- stdout\n{}\n--- stderr (last 60 lines)\n{}",
            self.lines().join("\n"),
            tail.join("\n")
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// The address of the `skip`+1-th `listening addr=…` event in the log,
    /// waiting for it (for programs that print no `READY` line).
    pub fn listening_addr(&self, skip: usize) -> String {
        let what = format!("listening event #{}", skip + 1);
        self.eventually(&what, Duration::from_secs(20), || {
            strip_ansi(&self.log())
                .lines()
                .filter(|l| l.contains("listening"))
                .filter_map(|l| l.split("addr=").nth(1))
                .map(|a| a.split_whitespace().next().unwrap().to_owned())
                .nth(skip)
        })
    }

    /// Waits until the server's log (stderr) contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        self.eventually(&format!("logged {needle:?}"), timeout, || {
            self.log().contains(needle)
        })
    }

    /// [`eventually`](super::wait::eventually), with this server's output
    /// in the panic message.
    pub fn eventually<T, A: Attempt<T>>(
        &self,
        what: &str,
        timeout: Duration,
        probe: impl FnMut() -> A,
    ) -> T {
        eventually_with(what, timeout, || self.report(), probe)
    }
}

/// Places `fds` at 3, 4, … in the child (not close-on-exec).
///
/// # Safety
/// Same contract as `CommandExt::pre_exec`.
unsafe fn cmd_place_fds(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>) {
    let mut moved = vec![-1; fds.len()];
    unsafe {
        cmd.pre_exec(move || {
            let above = 3 + fds.len() as i32;
            for (src, slot) in fds.iter().zip(moved.iter_mut()) {
                let fd = nix::libc::fcntl(*src, nix::libc::F_DUPFD_CLOEXEC, above);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                *slot = fd;
            }
            for (i, fd) in moved.iter().enumerate() {
                if nix::libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

pub fn signal_pid(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
}

struct Member {
    pid: u32,
    ppid: u32,
    state: char,
}

/// The processes in process group `pgid`, zombies included, from /proc.
fn group_members(pgid: Pid) -> Vec<Member> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split(' ').collect();
        if fields.len() < 3 {
            continue;
        }
        if fields[2].parse::<i32>().ok() == Some(pgid.as_raw()) {
            out.push(Member {
                pid,
                ppid: fields[1].parse().unwrap_or(0),
                state: fields[0].chars().next().unwrap_or('?'),
            });
        }
    }
    out
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
        if !self.reaped_first {
            let _ = self.child.wait();
        }
        // Reap every generation that became our child; bounded in time.
        let me = std::process::id();
        within(Duration::from_secs(10), || {
            let members = group_members(self.pgid);
            for m in members.iter().filter(|m| m.ppid == me) {
                let _ = waitpid(Pid::from_raw(m.pid as i32), Some(WaitPidFlag::WNOHANG));
            }
            let _ = killpg(self.pgid, Signal::SIGKILL);
            members.is_empty()
        });
    }
}

/// Removes the colour codes tracing puts in its output.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Proc {
    /// Waits for the old generation `pid` to exit and checks that it exited
    /// with status 0. A generation whose parent was still alive when it
    /// exited was reaped by that parent, so its status is not ours to read:
    /// then the fixture's `EXIT pid=P ok` line (printed when `run` returned
    /// `Ok`, just before `main` returns) must be there instead.
    pub fn assert_exited_0(&mut self, pid: u32, timeout: Duration) {
        match self.wait_exit(pid, timeout) {
            Some(WaitStatus::Exited(p, 0)) if p.as_raw() == pid as i32 => {}
            Some(WaitStatus::StillAlive) => {
                let exit = format!("EXIT pid={pid} ok");
                assert!(
                    self.wait_line(Duration::from_secs(2), |l| l == exit)
                        .is_some(),
                    "generation {pid} (reaped by its parent) never printed {exit:?}\n{}",
                    self.report()
                );
            }
            other => panic!("generation {pid} ended with {other:?}\n{}", self.report()),
        }
    }
}

/// The status of a process that exited with 0, as [`Proc::wait_exit`]
/// returns it: for `assert_eq!` on a generation we must reap ourselves
/// (stricter than [`Proc::assert_exited_0`], which also accepts one reaped
/// by its parent).
pub fn exited_0(pid: u32) -> Option<WaitStatus> {
    Some(WaitStatus::Exited(Pid::from_raw(pid as i32), 0))
}
