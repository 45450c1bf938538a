//! Runs the gRPC server binary as a real process, reads what it prints, and
//! reaps every generation its reloads lead to.
//!
//! The same approach as the root crate's `tests/support` (kept apart so that
//! this crate does not depend on that module's own dependencies): the server
//! gets its own process group, which every re-exec'd generation inherits,
//! and the test process is a child subreaper, so generations orphaned by
//! their parent's exit become our children. On drop the whole group is
//! killed and every member is reaped.
#![allow(unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

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

/// A running server and all of its generations.
pub struct Proc {
    child: Child,
    pgid: Pid,
    stdout: Lines,
    stderr: Lines,
}

/// Reads `from` line by line into `into`, waking the waiters.
fn collect(from: impl Read + Send + 'static, into: Lines) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let (lock, cv) = &*into;
            lock.lock().unwrap().push(line);
            cv.notify_all();
        }
    });
}

impl Proc {
    /// Starts `bin` with `args` and waits for its first `READY` line.
    pub fn start(bin: &str, args: &[&str]) -> Proc {
        // Linux only, as is this test: orphaned generations become ours.
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let stdout = Lines::default();
        let stderr = Lines::default();
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        let p = Proc {
            pgid: Pid::from_raw(child.id() as i32),
            child,
            stdout,
            stderr,
        };
        if p.first_ready(Duration::from_secs(20)).is_none() {
            panic!("the server did not start:\n{}", p.report());
        }
        p
    }

    /// Everything printed on stdout so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.0.lock().unwrap().clone()
    }

    /// The first generation's `READY`.
    pub fn first_ready(&self, timeout: Duration) -> Option<Ready> {
        self.wait_lines(timeout, |lines| lines.iter().find_map(|l| Ready::parse(l)))
    }

    /// Waits for the `READY` of the generation that follows `pid`'s (the
    /// first one printed after `pid`'s own `READY`).
    pub fn wait_ready_after(&self, pid: u32, timeout: Duration) -> Option<Ready> {
        self.wait_lines(timeout, |lines| {
            lines
                .iter()
                .skip_while(|l| Ready::parse(l).is_none_or(|r| r.pid != pid))
                .skip(1)
                .find_map(|l| Ready::parse(l))
        })
    }

    /// Waits until `pick` finds something in the stdout lines (those already
    /// printed and those to come).
    pub fn wait_lines<T>(
        &self,
        timeout: Duration,
        pick: impl Fn(&[String]) -> Option<T>,
    ) -> Option<T> {
        let (lock, cv) = &*self.stdout;
        let deadline = Instant::now() + timeout;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(found) = pick(&lines) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// The PIDs of this server's processes that are still alive (not
    /// zombies), reaping those that became our children.
    pub fn alive(&mut self) -> Vec<u32> {
        let _ = self.child.try_wait();
        let me = std::process::id();
        let mut alive = Vec::new();
        for m in group_members(self.pgid) {
            if m.state == 'Z' && m.ppid == me {
                let _ = waitpid(Pid::from_raw(m.pid as i32), Some(WaitPidFlag::WNOHANG));
            } else if m.state != 'Z' {
                alive.push(m.pid);
            }
        }
        alive
    }

    /// Waits until every generation has exited (and reaps them); false on
    /// timeout.
    pub fn wait_all_exited(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.alive().is_empty() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// What the server printed, for assertion messages.
    pub fn report(&self) -> String {
        let err = self.stderr.0.lock().unwrap();
        let tail = &err[err.len().saturating_sub(60)..];
        format!(
            "--- stdout\n{}\n--- stderr (last 60 lines)\n{}",
            self.lines().join("\n"),
            tail.join("\n")
        )
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
        let _ = self.child.wait();
        // Reap every generation that became our child; bounded in time.
        let me = std::process::id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let members = group_members(self.pgid);
            if members.is_empty() || Instant::now() >= deadline {
                break;
            }
            for m in members.iter().filter(|m| m.ppid == me) {
                let _ = waitpid(Pid::from_raw(m.pid as i32), Some(WaitPidFlag::WNOHANG));
            }
            let _ = killpg(self.pgid, Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
