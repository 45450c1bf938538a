//! What an idle server costs: nothing wakes it up. (Linux: it counts
//! context switches in `/proc`.)
#![cfg(target_os = "linux")]

use endless_tests as support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{get, Spec};

/// Context switches so far of each thread of `pid`, by thread ID: a thread
/// that wakes up and sleeps again adds one.
fn switches(pid: u32) -> HashMap<String, u64> {
    let mut by_thread = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_thread;
    };
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let total: u64 = status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        by_thread.insert(task.file_name().to_string_lossy().into_owned(), total);
    }
    by_thread
}

/// Waits (up to `timeout`) for a quiet `window` of `pid`: no thread of it
/// woke up. Returns the wake-ups counted in the last window if none was.
/// (A thread that ends meanwhile is not counted; one that starts is, in
/// full.)
fn quiet_window(pid: u32, window: Duration, timeout: Duration) -> Result<(), u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let before = switches(pid);
        std::thread::sleep(window);
        let woke: u64 = switches(pid)
            .iter()
            .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
            .sum();
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
