//! `endlessctl`: asks a server's control socket for a reload or its status
//! (see `Server::control_socket`), and exits with the outcome, for
//! systemd's `ExecReload=` and deploy scripts.
//!
//! ```text
//! endlessctl reload /run/app/control.sock [--timeout SECONDS]
//! endlessctl status /run/app/control.sock
//! ```
//!
//! Prints the server's answer; exits 0 if it begins with `ok`, 1 if the
//! server answered an error (the reload failed, and the old generation
//! serves on), 2 if it could not ask (bad usage, no server at the socket,
//! no answer in time). Only the standard library: it builds in a second and
//! runs anywhere the server does.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

/// Longer than any ready timeout a server is likely to have (60 s by
/// default), so that a reload's answer is waited for.
const DEFAULT_TIMEOUT: u64 = 120;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, socket, timeout) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    match ask(&command, &socket, timeout) {
        Ok(answer) => {
            println!("{answer}");
            if answer.starts_with("ok") {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("endlessctl: {socket}: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: &[String]) -> Result<(String, String, Duration), String> {
    let usage = "usage: endlessctl reload|status SOCKET [--timeout SECONDS]".to_owned();
    let (command, socket) = match args {
        [c, s, ..] if c == "reload" || c == "status" => (c.clone(), s.clone()),
        _ => return Err(usage),
    };
    let timeout = match &args[2..] {
        [] => DEFAULT_TIMEOUT,
        [flag, n] if flag == "--timeout" => n.parse().map_err(|_| usage.clone())?,
        _ => return Err(usage),
    };
    Ok((command, socket, Duration::from_secs(timeout.max(1))))
}

fn ask(command: &str, socket: &str, timeout: Duration) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    // A server that refuses (too many control connections, say) writes its
    // answer and closes before reading our command: the write then fails
    // (EPIPE or a reset) but the refusal is still there to be read.
    let written = stream.write_all(format!("{command}\n").as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    if answer.is_empty() {
        written?;
        read?;
        return Err(std::io::Error::other(
            "the server closed the connection without an answer",
        ));
    }
    Ok(answer.trim_end().to_owned())
}
