//! The test support of the workspace, one concept a module:
//!
//! - [`process`]: start the fixture (or an example) as a real process, read
//!   what it prints, signal it, and reap every generation it leads to;
//! - [`wait`]: bounded polling (`eventually`), for every "wait until X";
//! - [`load`]: the load generator that counts every failed request;
//! - [`systemd`]: a real systemd booted in private namespaces;
//! - [`fixture`]: the fixture server's settings, typed, written by the
//!   tests through [`Spec`]'s methods and read by the fixture;
//! - [`tls`]: the test certificate, and TLS clients that trust it (or a
//!   CA of the test's own);
//! - here: a blocking HTTP client for single requests, and the lock that
//!   serialises the heavy tests.
//!
//! Used by the library's tests (`testing/tests`, as `support`), by
//! `grpc/`, `integrations/` and `bench/`. `process`, `wait` and `load` are
//! self-contained (std and nix) so that `bench/peers`, a workspace of its
//! own, can include them by `#[path]`.
#![allow(missing_docs)]

pub mod fixture;
pub mod load;
pub mod process;
pub mod systemd;
pub mod tls;
pub mod wait;

// The names tests have always used (`support::Proc`, `support::get`, ...),
// and the waits, at the top. Not every test uses each.
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use wait::{eventually, eventually_with, within};

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

/// Serialises the tests that put the machine under load, so that they do not
/// starve each other (and the timing-sensitive tests) on a 2-core machine.
pub static HEAVY: Mutex<()> = Mutex::new(());

pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `/` on `addr` is answered by `pid` (within 5 s). Right after
/// a new generation is ready the old one may still take a connection or two
/// from the shared accept queue (and answers them): that is not a failure.
pub fn wait_served_by(addr: &str, pid: u32) {
    wait_served_by_within(addr, pid, Duration::from_secs(5));
}

/// [`wait_served_by`] with its timeout: every answer on the way must be a
/// `200`.
pub fn wait_served_by_within(addr: &str, pid: u32, timeout: Duration) {
    eventually(&format!("{pid} answers on {addr}"), timeout, || {
        let (status, body) = get(addr, "/").expect("GET /");
        assert_eq!(status, 200);
        if served_pid(&body) == pid {
            Ok(())
        } else {
            Err(body)
        }
    })
}

/// [`get`] in a thread of its own: for a slow request (`/sleep/MS`) that
/// must survive what the test does meanwhile. Join it for the response.
pub fn get_in_background(addr: &str, path: &str) -> JoinHandle<std::io::Result<(u16, String)>> {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    std::thread::spawn(move || get(&addr, &path))
}

/// A blocking HTTP/1.1 GET over a fresh connection: status and body.
/// `addr` is `host:port` or `unix:/path`.
pub fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    match addr.strip_prefix("unix:") {
        #[cfg(target_os = "linux")]
        Some(name) if name.starts_with('@') => {
            use std::os::linux::net::SocketAddrExt;
            let sa = std::os::unix::net::SocketAddr::from_abstract_name(&name[1..])?;
            let mut s = std::os::unix::net::UnixStream::connect_addr(&sa)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(request.as_bytes())?;
            s.read_to_string(&mut buf)?;
        }
        Some(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(request.as_bytes())?;
            s.read_to_string(&mut buf)?;
        }
        None => {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(request.as_bytes())?;
            s.read_to_string(&mut buf)?;
        }
    }
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {buf:?}")))?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `pid=N` as served by the fixture's `/`.
pub fn served_pid(body: &str) -> u32 {
    body.trim()
        .strip_prefix("pid=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected body {body:?}"))
}

/// Starts a server expecting it to refuse to start (exit status 2), and
/// returns the message it printed.
pub fn start_error(spec: Spec) -> String {
    let mut p = spec.spawn();
    let pid = p.first_pid();
    let status = p.wait_exit(pid, Duration::from_secs(20));
    assert_eq!(
        status,
        Some(WaitStatus::Exited(Pid::from_raw(pid as i32), 2)),
        "{}",
        p.report()
    );
    let line = p
        .wait_line(Duration::from_secs(1), |l| l.starts_with("ERROR"))
        .unwrap();
    // "ERROR pid=P message"
    line.splitn(3, ' ').nth(2).unwrap().to_owned()
}
/// Waits until `/` on `addr`, fetched with `get`, is answered by `pid` (an
/// HTTPS variant of [`wait_served_by`]).
pub fn wait_served_by_tls(
    addr: &str,
    pid: u32,
    get: impl Fn(&str) -> std::io::Result<(u16, String)>,
) {
    wait::eventually(
        &format!("{pid} answers on {addr}"),
        Duration::from_secs(5),
        || {
            let (status, body) = get(addr).expect("GET /");
            assert_eq!(status, 200);
            if served_pid(&body) == pid {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
}
