//! The link between a generation and each generation it starts: a Unix
//! stream socket pair made for the spawn, one end kept by the parent, the
//! other handed to the child (see `handover`, kind `link`).
//!
//! Readiness stays a `SIGTERM` to the parent (it works before the child has
//! a runtime, and the signal mask carries it across the exec); everything
//! else the two say to each other travels here:
//!
//! | direction       | message            | meaning                                               |
//! |-----------------|--------------------|-------------------------------------------------------|
//! | child → parent  | `failed TEXT`      | `Server::run` failed before serving: why              |
//! | child → parent  | `panicked TEXT`    | a panic, with its message (before or after serving)   |
//! | child → parent  | `handed-over PID`  | the child handed over to a generation of its own: the parent's probation is over |
//! | child → parent  | `stopping`         | the child is stopping (a stop, not a failure)         |
//! | child → parent  | `settled`          | the child heard `let-go`, and whoever should be the service's main process has said so |
//! | parent → child  | `reload`           | a reload request the parent received but no longer serves |
//! | parent → child  | `stop`             | a stop request the parent received                    |
//! | parent → child  | `let-go`           | the parent's probation is over: it lets go of its sockets |
//!
//! A socket pair, not the environment or a file: it needs no name, nobody
//! else can open it, both ends see the other go (end of stream), and it is
//! gone with the two processes. Each message is one line, `KIND[ TEXT]`,
//! with `\` and newlines in the text escaped (`\\`, `\n`): a protocol this
//! small needs no crate, and a line reader whose buffer lives in the
//! reader is cancellation safe where `AsyncBufReadExt::read_line` is not.
//! Unknown kinds are skipped, so generations of different versions can
//! talk.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdStream;
use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

/// The most of one message that is kept.
const MAX_LINE: usize = 16 * 1024;

/// From a child to the generation that started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Up {
    Failed(String),
    Panicked(String),
    HandedOver(u32),
    Stopping,
    Settled,
}

/// From a generation to the child it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Down {
    Reload,
    Stop,
    LetGo,
    Drained { ms: u64, cut: u64 },
}

impl Up {
    fn encode(&self) -> Vec<u8> {
        match self {
            Up::Failed(t) => line("failed", Some(t)),
            Up::Panicked(t) => line("panicked", Some(t)),
            Up::HandedOver(pid) => line("handed-over", Some(&pid.to_string())),
            Up::Stopping => line("stopping", None),
            Up::Settled => line("settled", None),
        }
    }

    fn decode(kind: &str, text: String) -> Option<Up> {
        match kind {
            "failed" => Some(Up::Failed(text)),
            "panicked" => Some(Up::Panicked(text)),
            "handed-over" => text.parse().ok().map(Up::HandedOver),
            "stopping" => Some(Up::Stopping),
            "settled" => Some(Up::Settled),
            _ => None,
        }
    }
}

impl Down {
    fn encode(self) -> Vec<u8> {
        match self {
            Down::Reload => line("reload", None),
            Down::Stop => line("stop", None),
            Down::LetGo => line("let-go", None),
            Down::Drained { ms, cut } => line("drained", Some(&format!("{ms} {cut}"))),
        }
    }

    fn decode(kind: &str, text: String) -> Option<Down> {
        match kind {
            "reload" => Some(Down::Reload),
            "stop" => Some(Down::Stop),
            "let-go" => Some(Down::LetGo),
            "drained" => {
                let (ms, cut) = text.split_once(' ')?;
                Some(Down::Drained {
                    ms: ms.parse().ok()?,
                    cut: cut.parse().ok()?,
                })
            }
            _ => None,
        }
    }
}

fn line(kind: &str, text: Option<&str>) -> Vec<u8> {
    let mut out = kind.as_bytes().to_vec();
    if let Some(text) = text {
        out.push(b' ');
        let mut escaped = text.replace('\\', "\\\\").replace('\n', "\\n");
        if escaped.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !escaped.is_char_boundary(cut) {
                cut -= 1;
            }
            escaped.truncate(cut);
            // Never end on half an escape.
            if escaped.ends_with('\\') && !escaped.ends_with("\\\\") {
                escaped.pop();
            }
        }
        out.extend_from_slice(escaped.as_bytes());
    }
    out.push(b'\n');
    out
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// Reads lines from one end, keeping partial ones between calls.
#[derive(Debug)]
struct Lines {
    stream: UnixStream,
    buf: BytesMut,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
    ended: bool,
}

impl Lines {
    fn new(stream: UnixStream) -> Lines {
        Lines {
            stream,
            buf: BytesMut::with_capacity(1024),
            skipping: false,
            ended: false,
        }
    }

    /// The next message `decode` understands; `None` at the end of the
    /// stream. Cancellation safe.
    async fn next<T>(&mut self, decode: fn(&str, String) -> Option<T>) -> Option<T> {
        loop {
            while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let raw = self.buf.split_to(end + 1);
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                let text = String::from_utf8_lossy(&raw[..end]);
                let (kind, rest) = text.split_once(' ').unwrap_or((&text, ""));
                if let Some(m) = decode(kind, unescape(rest)) {
                    return Some(m);
                }
            }
            if self.buf.len() > MAX_LINE + 64 {
                self.buf.clear();
                self.skipping = true;
            }
            if self.ended {
                return None;
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => self.ended = true,
                Ok(_) => {}
            }
        }
    }

    /// Writes `bytes` if the socket takes them now (a few bytes to a
    /// socket buffer that holds hundreds of kilobytes: it always does
    /// unless the other end stopped reading, and then nobody listens).
    /// Straight to the socket, not through tokio's `try_write`, which
    /// answers "would block" until the reactor has first seen the socket
    /// writable (a link adopted a moment ago, after a re-exec).
    fn send(&self, bytes: &[u8]) -> bool {
        use nix::sys::socket::{send, MsgFlags};
        use std::os::fd::AsRawFd;
        // No SIGPIPE if the other end is gone (where the flag exists; Rust
        // programs ignore SIGPIPE anyway).
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let flags = MsgFlags::MSG_DONTWAIT;
        matches!(send(self.stream.as_raw_fd(), bytes, flags), Ok(n) if n == bytes.len())
    }
}

/// Makes the pair for a spawn: the parent's end, and the child's end to
/// hand over. Both close-on-exec (the child's crosses the exec only through
/// the hand-over).
pub(crate) fn pair() -> std::io::Result<(Pending, OwnedFd)> {
    let (ours, theirs) = StdStream::pair()?;
    Ok((Pending(ours), theirs.into()))
}

/// The parent's end, before the runtime has it.
#[derive(Debug)]
pub(crate) struct Pending(StdStream);

impl Pending {
    /// The parent's end, ready to read (in the runtime).
    pub(crate) fn open(self) -> std::io::Result<Link> {
        self.0.set_nonblocking(true)?;
        Ok(Link(Lines::new(UnixStream::from_std(self.0)?)))
    }
}

/// The parent's end of the link to a child.
#[derive(Debug)]
pub(crate) struct Link(Lines);

impl Link {
    /// The child's next message; `None` once it is gone (or closed its
    /// end). Cancellation safe.
    pub(crate) async fn next(&mut self) -> Option<Up> {
        self.0.next(Up::decode).await
    }

    /// Tells the child; `false` if it could not be told (it is gone).
    pub(crate) fn send(&self, message: Down) -> bool {
        self.0.send(&message.encode())
    }

    /// The raw FD, to hand across an in-place re-exec (`keep_pid`).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.stream.as_raw_fd()
    }

    /// Adopts the parent's end inherited across an in-place re-exec.
    pub(crate) fn adopt(fd: OwnedFd) -> std::io::Result<Link> {
        Pending(StdStream::from(fd)).open()
    }
}

/// The child's end: written from anywhere (a panic hook included), read by
/// the events ([`Upstream`]).
static CHILD_END: Mutex<Option<StdStream>> = Mutex::new(None);

fn child_end() -> std::sync::MutexGuard<'static, Option<StdStream>> {
    CHILD_END.lock().unwrap_or_else(|e| e.into_inner())
}

/// In a generation started by a reload: takes the link and installs a panic
/// hook that tells the parent (then calls the hook that was there before).
/// Runs before `main`.
pub(crate) fn init() {
    let Some(inherited) = crate::handover::take(crate::handover::Kind::Link, None) else {
        return;
    };
    *child_end() = Some(StdStream::from(inherited.take()));
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // `try_lock`: a panic while the lock is held must not deadlock.
        if let Ok(end) = CHILD_END.try_lock() {
            if let Some(mut end) = end.as_ref() {
                let _ = end.write_all(&Up::Panicked(format!("panicked: {info}")).encode());
            }
        }
        previous(info);
    }));
}

/// Tells the parent, if there is one listening (best effort: a parent that
/// is gone hears nothing).
pub(crate) fn report(message: Up) {
    if let Some(mut end) = child_end().as_ref() {
        let _ = end.write_all(&message.encode());
    }
}

/// The parent is gone: our end goes too (nobody reads it any more).
pub(crate) fn close() {
    child_end().take();
}

/// `Server::run` failed before this generation served: say why.
pub(crate) fn failed(error: &crate::Error) {
    report(Up::Failed(error.to_string()));
}

/// What the parent says, read by the events of the child.
#[derive(Debug)]
pub(crate) struct Upstream(Lines);

impl Upstream {
    /// The parent's messages, if this process has a parent link (once; in
    /// the runtime).
    pub(crate) fn take() -> Option<Upstream> {
        let end = child_end();
        let reader = end.as_ref()?.try_clone().ok()?;
        // Shared with the writer (the file description is one): small
        // writes to a socket buffer that is not full never block anyway.
        reader.set_nonblocking(true).ok()?;
        Some(Upstream(Lines::new(UnixStream::from_std(reader).ok()?)))
    }

    /// The next message; `None` once the parent is gone. Cancellation safe.
    pub(crate) async fn next(&mut self) -> Option<Down> {
        self.0.next(Down::decode).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_cross_both_ways_with_any_text() {
        let (pending, child) = pair().unwrap();
        let mut parent = pending.open().unwrap();
        let child = StdStream::from(child);
        let mut w = &child;
        let text = "cannot listen on a;b: in use\nline two \\ backslash";
        w.write_all(&Up::Failed(text.into()).encode()).unwrap();
        w.write_all(b"some-future-kind with text\n").unwrap();
        w.write_all(&Up::HandedOver(42).encode()).unwrap();
        w.write_all(&Up::Stopping.encode()).unwrap();
        assert_eq!(parent.next().await, Some(Up::Failed(text.into())));
        assert_eq!(parent.next().await, Some(Up::HandedOver(42)));
        assert_eq!(parent.next().await, Some(Up::Stopping));

        child.set_nonblocking(true).unwrap();
        let mut up = Upstream(Lines::new(UnixStream::from_std(child).unwrap()));
        assert!(parent.send(Down::Reload));
        assert!(parent.send(Down::LetGo));
        assert!(parent.send(Down::Drained { ms: 1234, cut: 2 }));
        assert_eq!(up.next().await, Some(Down::Reload));
        assert_eq!(up.next().await, Some(Down::LetGo));
        assert_eq!(up.next().await, Some(Down::Drained { ms: 1234, cut: 2 }));
        drop(up);
        assert_eq!(parent.next().await, None, "the other end is gone");
    }

    #[tokio::test]
    async fn an_overlong_line_is_cut_and_the_next_one_still_reads() {
        let (pending, child) = pair().unwrap();
        let mut parent = pending.open().unwrap();
        let child = StdStream::from(child);
        let long = "x".repeat(100_000);
        let encoded = Up::Failed(long).encode();
        assert!(encoded.len() <= MAX_LINE + 16, "{}", encoded.len());
        (&child).write_all(&encoded).unwrap();
        (&child).write_all(b"failed ").unwrap();
        (&child).write_all(&vec![b'y'; 40_000]).unwrap();
        (&child).write_all(b"\nstopping\n").unwrap();
        drop(child);
        assert!(matches!(parent.next().await, Some(Up::Failed(t)) if t.len() == MAX_LINE));
        assert_eq!(parent.next().await, Some(Up::Stopping));
        assert_eq!(parent.next().await, None);
    }
}
