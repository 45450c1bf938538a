//! What an idle server costs: nothing wakes it up. (Linux: it counts
//! context switches in `/proc`.)
#![cfg(target_os = "linux")]

mod support;

use std::time::{Duration, Instant};

use support::{get, Spec};

/// Context switches of every thread of `pid` so far: a thread that wakes up
/// and sleeps again adds one.
fn switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches:")
                || line.starts_with("nonvoluntary_ctxt_switches:")
            {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Waits (up to `timeout`) for a quiet `window` of `pid`: no thread of it
/// woke up. Returns the switches counted in the last window if none was.
fn quiet_window(pid: u32, window: Duration, timeout: Duration) -> Result<(), u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let before = switches(pid);
        std::thread::sleep(window);
        let woke = switches(pid) - before;
        if woke == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(woke);
        }
    }
}

/// A server with no connection has no timer running: the header-read
/// sweeper sleeps until a connection opens, and again once the last one has
/// closed. (It used to tick every second, connections or not.)
#[test]
fn an_idle_server_wakes_up_for_nothing() {
    let server = Spec::fixture().start();
    let pid = server.current().pid;
    let window = Duration::from_millis(2500);
    // Right after start-up, and after serving a request: the sweeper ran
    // while the connection was open (its interval is 1 s here) and parks
    // once it finds none.
    quiet_window(pid, window, Duration::from_secs(8))
        .unwrap_or_else(|woke| panic!("woke up {woke} times while idle:\n{}", server.report()));
    let (status, _) = get(&server.addr(), "/").unwrap();
    assert_eq!(status, 200);
    quiet_window(pid, window, Duration::from_secs(8)).unwrap_or_else(|woke| {
        panic!(
            "woke up {woke} times while idle after serving:\n{}",
            server.report()
        )
    });
}
