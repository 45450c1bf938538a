//! The control socket ([`Server::control_socket`]): a Unix socket on which a
//! deploy script, or systemd's `ExecReload=`, asks for a reload and waits
//! for its outcome, or asks for the status.
//!
//! It is a listener like the others, registered as `control:PATH` after
//! the program's own: bound (or adopted from the previous generation, so
//! its path stays through reloads), given its permissions, served only
//! while the generation serves, and held through a probation. What it
//! serves is a line protocol, not HTTP: one command per line, one answer
//! line each (see [`Server::control_socket`]). Hand-written: a dozen lines
//! of parsing, where an HTTP or RPC stack would be most of the code, and
//! the client can be `nc` or the shipped `endlessctl`.
//!
//! Who may talk: the socket file's mode (by default `0o600`), and, checked
//! on every connection whatever the mode, the client's credentials: only
//! this process's user and root.
//!
//! [`Server::control_socket`]: crate::Server::control_socket

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::config::Endpoint;
use crate::connections::{Connections, Launch, Tls};
use crate::events::Requests;
use crate::lifecycle::{Lifecycle, Phase};
use crate::listener::{BindSpec, Listener, LocalAddr, Peer, Stream, UnixPermissions};

/// The longest command line.
const MAX_LINE: usize = 1024;
/// How long a client may take to send a whole command.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket at `path`, as an endpoint (after the program's own).
pub(crate) fn endpoint(
    path: &Path,
    perms: UnixPermissions,
    requests: Requests,
    life: Arc<Lifecycle>,
) -> Endpoint {
    Endpoint {
        addr: format!("control:{}", path.display()),
        spec: BindSpec::Unix(path.to_path_buf()),
        perms: Some(perms),
        tls: None,
        svc: Box::new(Control { requests, life }),
        given: None,
    }
}

/// What the control socket serves.
struct Control {
    requests: Requests,
    life: Arc<Lifecycle>,
}

impl Launch for Control {
    fn launch(&self, conns: &Connections, name: String, listener: Arc<Listener>, _: Tls) {
        let (requests, life) = (self.requests.clone(), self.life.clone());
        let spawner = conns.spawner();
        conns.spawn_other_accept_loop(async move {
            info!(socket = %name, "control socket ready");
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let (requests, life) = (requests.clone(), life.clone());
                        spawner.spawn(serve(stream, peer, requests, life));
                    }
                    Err(e) => {
                        debug!(cause = %e, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }

    fn probe(
        &self,
        _: String,
        _: LocalAddr,
        _: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<StatusCode, String>> + Send>> {
        Box::pin(async { Err("the control socket serves no HTTP".to_owned()) })
    }
}

/// Whether `peer` may use the control socket: this process's user or root.
fn allowed(peer: &Peer) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    match peer {
        Peer::Unix(Some(creds)) => creds.uid == me || creds.uid == 0,
        _ => false,
    }
}

/// One client: commands until it hangs up, says nothing for too long,
/// sends a line that is too long, or this generation stops serving.
async fn serve(mut stream: Stream, peer: Peer, requests: Requests, life: Arc<Lifecycle>) {
    if !allowed(&peer) {
        warn!(?peer, "control socket: a client of another user refused");
        let _ = stream.write_all(b"error permission denied\n").await;
        return;
    }
    let mut buf = Vec::with_capacity(128);
    let mut phase = life.subscribe();
    loop {
        let read = tokio::time::timeout(READ_TIMEOUT, read_line(&mut stream, &mut buf));
        let not_serving = async {
            let _ = phase
                .wait_for(|p| !matches!(p, Phase::Serving | Phase::Starting))
                .await;
        };
        let line = tokio::select! {
            read = read => match read {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) | Ok(Err(_)) => return,
                Err(_) => {
                    let _ = stream.write_all(b"error no command within 10s\n").await;
                    return;
                }
            },
            // This generation no longer serves: a client that stays
            // connected must not hold its drain (nor, with `keep_pid`, its
            // re-exec). The answer to its last command is written.
            () = not_serving => return,
        };
        let Some(line) = line else {
            let _ = stream
                .write_all(b"error line too long (at most 1024 bytes)\n")
                .await;
            return;
        };
        let answer = answer(line.trim(), &requests, &life).await;
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The next line: `Ok(Some(Some(line)))`, `Ok(Some(None))` if it is too
/// long, `Ok(None)` at the end of the stream.
async fn read_line(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Option<String>>> {
    loop {
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            return Ok(Some(Some(
                String::from_utf8_lossy(&line[..end]).into_owned(),
            )));
        }
        if buf.len() > MAX_LINE {
            return Ok(Some(None));
        }
        let mut chunk = [0u8; 256];
        match stream.read(&mut chunk).await? {
            0 if buf.is_empty() => return Ok(None),
            // A last command without its newline.
            0 => {
                return Ok(Some(Some(
                    String::from_utf8_lossy(&std::mem::take(buf)).into_owned(),
                )))
            }
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The answer line to one command.
async fn answer(command: &str, requests: &Requests, life: &Lifecycle) -> String {
    match command {
        "reload" => {
            if life.phase() != Phase::Serving {
                return "error this generation is not serving (draining or stopping)\n".into();
            }
            info!("reload requested on the control socket");
            match requests.reload("control socket").await {
                Ok(r) => format!(
                    "ok pid={} generation={} executable={} identity={} same-executable={} probation={}\n",
                    r.pid,
                    r.generation,
                    r.executable.display(),
                    r.identity,
                    r.same_executable,
                    r.probation.as_millis()
                ),
                Err(e) => format!("error {}\n", one_line(&e.to_string())),
            }
        }
        "status" => status(life),
        "" => String::new(),
        other => format!(
            "error unknown command {:?} (commands: reload, status)\n",
            one_line(&other.chars().take(64).collect::<String>())
        ),
    }
}

fn status(life: &Lifecycle) -> String {
    let s = life.stats();
    format!(
        "ok pid={} generation={} draining={} in-probation={} connections={} reloads-requested={} reloads-succeeded={} reloads-failed={} reloads-rolled-back={} last-error={}\n",
        std::process::id(),
        s.generation,
        s.draining,
        s.in_probation,
        s.connections,
        s.reloads_requested,
        s.reloads_succeeded,
        s.reloads_failed,
        s.reloads_rolled_back,
        s.last_reload_error.as_deref().map_or("-".to_owned(), one_line),
    )
}

/// `text` on one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}
