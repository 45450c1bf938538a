//! Talking to systemd (or any manager that speaks its notify protocol).
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the Unix socket named
//! by `$NOTIFY_SOCKET`. It is written by hand here rather than with the
//! `sd-notify` crate because that crate connects to the address as a path,
//! so the abstract-namespace addresses (`@name`) that systemd and test
//! harnesses use would not work; doing it right is a dozen lines.
//!
//! What endless says, and when:
//!
//! | moment                                   | who                 | message                         |
//! |------------------------------------------|---------------------|---------------------------------|
//! | the first generation serves              | it                  | `READY=1`                       |
//! | a reload starts                          | the old generation  | `RELOADING=1`, `MONOTONIC_USEC=` |
//! | the new generation serves                | the new generation  | `READY=1`                       |
//! | the old generation lets go (its probation is over) | the old generation | `MAINPID=<new pid>` |
//! | the new generation failed in probation   | the old generation  | `MAINPID=<its pid>`, `READY=1`  |
//! | the reload failed                        | the old generation  | `READY=1`                       |
//! | a graceful stop starts                   | the generation      | `STOPPING=1`                    |
//! | a stop's drain runs                      | the generation      | `EXTEND_TIMEOUT_USEC=` every 5 s |
//! | always, with `WatchdogSec=`              | each serving generation | `WATCHDOG=1` every half period |
//! | each step above                          | its generation      | `STATUS=` (what `systemctl status` shows) |
//!
//! The main PID moves to the new generation only when the old one lets go
//! of its sockets, before it exits, so the service manager follows the
//! service to the new PID (with `NotifyAccess=all`) and never sees its main
//! process die while an older one could still serve: a new generation that
//! dies within its probation is not the main process, and its predecessor,
//! which is, serves again.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixDatagram;

use tracing::{debug, warn};

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `message` if `$NOTIFY_SOCKET` is set; logs (and otherwise ignores)
/// a failure: a service manager that cannot be told is no reason to stop
/// serving.
pub(crate) fn notify(message: &str) {
    let Some(addr) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    match send(&addr, message) {
        Ok(()) => debug!(message = %message.replace('\n', " "), "told the service manager"),
        Err(e) => warn!(socket = ?addr, cause = %e, "cannot notify the service manager"),
    }
}

fn send(addr: &OsString, message: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(addr.as_os_str());
    match bytes.first() {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            socket.send_to_addr(message.as_bytes(), &addr)?;
        }
        Some(b'/') => {
            socket.send_to(message.as_bytes(), addr)?;
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an abstract address (@…)",
            ))
        }
    }
    Ok(())
}

/// The first generation is serving.
pub(crate) fn ready() {
    notify("READY=1");
}

/// This process serves, and is the service's main process (a new
/// generation whose predecessor is gone, or a generation serving again
/// after its successor failed).
pub(crate) fn main_pid_is_me() {
    notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
}

/// The service's main process is now `pid` (this one lets go).
pub(crate) fn main_pid(pid: u32) {
    notify(&format!("MAINPID={pid}"));
}

/// A reload is starting (for `Type=notify-reload`, which waits for this and
/// then for `READY=1`).
pub(crate) fn reloading() {
    let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as i128 * 1_000_000 + t.tv_nsec() as i128 / 1_000)
        .unwrap_or(0);
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// A graceful stop is starting.
pub(crate) fn stopping() {
    notify("STOPPING=1");
}

/// What `systemctl status` shows: `text`, on one line.
pub(crate) fn status(text: &str) {
    notify(&format!("STATUS={}", text.replace('\n', " ")));
}

/// How far each `EXTEND_TIMEOUT_USEC=` reaches: systemd then expects another
/// message within this, which comes every half of it.
const EXTEND_BY: std::time::Duration = std::time::Duration::from_secs(10);

/// While a stop's drain runs, keeps telling systemd that it is making
/// progress, so that a drain within endless's stop timeout is not killed
/// at a shorter `TimeoutStopSec=` (systemd honours this only past the
/// unit's own timeout, and only while messages keep coming). Ends when the
/// returned guard is dropped.
pub(crate) fn extend_stop_timeout() -> Option<Repeating> {
    std::env::var_os(NOTIFY_SOCKET)?;
    Some(Repeating(tokio::spawn(async {
        loop {
            notify(&format!("EXTEND_TIMEOUT_USEC={}", EXTEND_BY.as_micros()));
            tokio::time::sleep(EXTEND_BY / 2).await;
        }
    })))
}

/// A message sent again and again until this is dropped.
#[derive(Debug)]
pub(crate) struct Repeating(tokio::task::JoinHandle<()>);

impl Drop for Repeating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// With `WatchdogSec=` (`WATCHDOG_USEC` set), sends `WATCHDOG=1` every half
/// period from a task of the runtime, so a process whose runtime is stuck
/// stops sending them and systemd acts. `WATCHDOG_PID` names the first
/// generation only; every generation the service runs sends them (systemd
/// takes them from any process of the unit with `NotifyAccess=all`).
pub(crate) fn watchdog() -> Option<Repeating> {
    std::env::var_os(NOTIFY_SOCKET)?;
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if usec == 0 {
        return None;
    }
    let every =
        std::time::Duration::from_micros(usec / 2).max(std::time::Duration::from_millis(10));
    debug!(?every, "systemd watchdog: pinging");
    Some(Repeating(tokio::spawn(async move {
        loop {
            notify("WATCHDOG=1");
            tokio::time::sleep(every).await;
        }
    })))
}
