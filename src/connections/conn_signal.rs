//! What one connection tells the drain and the sweeper: its [`ConnSignal`].
//!
//! The drain raises a connection's [`Level`] and wakes its task; the
//! connection's I/O and its per-request wrapper note, on the hot path, what
//! it has shown of itself ([`Seen`]), whether a request is arriving, and how
//! many bytes went each way; the sweeper reads those counts (and keeps, in
//! `active_ms`, when it last saw the connection busy). The level, the flags
//! and the arrival are each an atomic of their own, read and written only
//! through the accessors here, so that a level is never tested as a flag.

use std::future::Future;
#[cfg(unix)]
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use atomic_waker::AtomicWaker;
use hyper::Request;

use super::until;
#[cfg(not(unix))]
use crate::listener::RawFd;

/// How the drain reaches one connection: a [`Level`] that only rises, and
/// the connection task's waker.
///
/// A `CancellationToken` shared by every connection would do the same, but
/// each poll of its `cancelled()` future takes the token's mutex, and a
/// connection task polls it on every wake-up: with many connections on
/// several threads that lock is contended on the hot path (it cost 13% of
/// HTTP/2 throughput). This is an uncontended atomic load per poll.
///
/// It also carries what the connection has shown of itself ([`Seen`]) and
/// whether a request is arriving on it ([`Arrival`]). Each of the three is
/// its own atomic with its own type, read and written only through the
/// accessors below, so a level can never be tested as a flag.
#[derive(Debug, Default)]
pub(super) struct ConnSignal {
    /// A [`Level`], as its `u8`.
    level: AtomicU8,
    waker: AtomicWaker,
    /// [`Seen`] bits.
    seen: AtomicU8,
    /// An [`Arrival`], as its `u8`. Written on every read (when it changes),
    /// so kept apart from the rest.
    arrival: AtomicU8,
    /// Request heads parsed (HTTP/2: streams opened), and responses done
    /// with (written or abandoned): the connection is between requests (no
    /// stream open) when they are equal. Read by the sweeper.
    heads: AtomicU32,
    responses: AtomicU32,
    /// Bytes read from the client (HTTP bytes: over TLS, the plaintext),
    /// and how many the latest read brought: the sweeper's way to see an
    /// upload going on after its response, and where its body ends. One
    /// word, so that a read costs one load and one store: see [`Reads`].
    reads: AtomicU64,
    /// [`ConnSignal::reads`] at the previous HTTP/1 request head: where the
    /// read that completed that head started, so no later head starts
    /// before it.
    head_floor: AtomicU64,
    /// Where the body of the last HTTP/1 request ends, in
    /// [`ConnSignal::reads`] (as best known, never later than the truth
    /// but for a few bytes, see [`body_end`]); 0 for a request without a
    /// body. Bytes read past it belong to the next request head.
    body_end: AtomicU64,
    /// Bytes written (over TLS, the records), and whether the latest write
    /// (or flush) is waiting for the client to take more: a response still
    /// on its way (in hyper's buffer, h2's, or rustls's) keeps its
    /// connection busy. One word: see [`Written`].
    written: AtomicU64,
    /// When the sweeper first saw the connection, or last saw it busy or
    /// with a new request. Written by the sweeper only, never per request.
    pub(super) active_ms: ActiveMs,
    /// Whether [`Tracked`](super::counted_io::Tracked) counts the reads:
    /// not under TLS, where [`Plain`](super::counted_io::Plain) counts the
    /// plaintext above it instead (a body's length is counted in HTTP
    /// bytes). Set once, before the connection is served.
    pub(super) count_reads: bool,
}

/// Milliseconds since the [`Sockets`](super::sweeper::Sockets)' epoch;
/// `u64::MAX` (no time yet, for
/// [`Sockets::quiet_for`](super::sweeper::Sockets::quiet_for)) until the
/// sweeper first sees the connection.
#[derive(Debug)]
pub(super) struct ActiveMs(pub(super) AtomicU64);

impl Default for ActiveMs {
    fn default() -> Self {
        ActiveMs(AtomicU64::new(u64::MAX))
    }
}

/// How far the drain has gone for one connection. It only rises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[repr(u8)]
pub(super) enum Level {
    /// Serving as usual.
    #[default]
    Serving = 0,
    /// The drain has started.
    Draining = 1,
    /// The deadline has passed, or the connection stayed silent too long:
    /// cut it.
    Cut = 2,
}

impl Level {
    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Serving,
            1 => Level::Draining,
            _ => Level::Cut,
        }
    }
}

/// What a connection has shown of itself: a set of bits that are only ever
/// added.
///
/// | bit | constant          | set when                              |
/// |-----|-------------------|---------------------------------------|
/// | 0   | [`Seen::REQUEST`] | a request head was parsed             |
/// | 1   | [`Seen::HTTP2`]   | the HTTP/2 preface was read           |
/// | 2   | [`Seen::UPGRADED`]| a response handed the connection over |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Seen(u8);

impl Seen {
    /// At least one request arrived.
    pub(super) const REQUEST: Seen = Seen(1 << 0);
    /// The connection speaks HTTP/2.
    pub(super) const HTTP2: Seen = Seen(1 << 1);
    /// A response handed the connection over to the application (101
    /// Switching Protocols, or a CONNECT tunnel).
    pub(super) const UPGRADED: Seen = Seen(1 << 2);

    pub(super) fn contains(self, other: Seen) -> bool {
        self.0 & other.0 == other.0
    }

    pub(super) fn with(self, other: Seen) -> Seen {
        Seen(self.0 | other.0)
    }
}

/// Whether bytes of a request are on their way, which hyper cannot tell us:
/// it counts an HTTP/1 connection as idle until a whole request head is
/// parsed, and closes it as such on `graceful_shutdown`, request half read
/// or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Arrival {
    /// Nothing read since the last request head was parsed.
    None = 0,
    /// Bytes read since the last request head, and since the drain last
    /// looked.
    Recent = 1,
    /// Bytes read since the last request head, but none since the drain
    /// last looked.
    Stalled = 2,
}

impl ConnSignal {
    /// The signal of a connection just accepted; `count_reads`: see the
    /// field of that name.
    pub(super) fn new(count_reads: bool) -> Self {
        ConnSignal {
            count_reads,
            ..ConnSignal::default()
        }
    }

    pub(super) fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Acquire))
    }

    pub(super) fn seen(&self) -> Seen {
        Seen(self.seen.load(Ordering::Relaxed))
    }

    /// Adds `seen`; one load and no write when nothing is new (the case
    /// for every request after a connection's first).
    pub(super) fn note(&self, seen: Seen) {
        if !self.seen().contains(seen) {
            self.seen.fetch_or(seen.0, Ordering::Relaxed);
        }
    }

    pub(super) fn draining(&self) -> bool {
        self.level() >= Level::Draining
    }

    pub(super) fn raise(&self, level: Level) {
        if self.level.fetch_max(level as u8, Ordering::AcqRel) < level as u8 {
            self.waker.wake();
        }
    }

    /// Resolves once the level is at least `level`. Only the connection's
    /// own task waits on it, so the waker is registered once, at the first
    /// poll (a task's waker stays valid for the task's life): each later
    /// poll, one per wake-up of the connection, is a single atomic load.
    /// A raise takes the registered waker, so a task must not keep two of
    /// these alive at once (the second would not hear a later raise).
    pub(super) fn reached(&self, level: Level) -> impl Future<Output = ()> + '_ {
        until(&self.waker, move || self.level() >= level)
    }

    /// Bytes arrived: one relaxed load and, at most, one relaxed store.
    #[inline]
    pub(super) fn note_arrival(&self) {
        if self.arrival.load(Ordering::Relaxed) != Arrival::Recent as u8 {
            self.arrival.store(Arrival::Recent as u8, Ordering::Relaxed);
        }
    }

    /// `n` bytes were read from the connection: the hot path, relaxed
    /// loads and stores only.
    #[inline]
    pub(super) fn note_read(&self, n: usize) {
        self.note_arrival();
        // One reader at a time (the connection's task, or the task an
        // upgrade handed the connection to): no read-modify-write needed.
        let reads = Reads(self.reads.load(Ordering::Relaxed));
        self.reads.store(reads.add(n).0, Ordering::Relaxed);
    }

    /// Bytes read so far.
    pub(super) fn reads(&self) -> u64 {
        Reads(self.reads.load(Ordering::Relaxed)).count()
    }

    /// Whether bytes read so far may still be the last HTTP/1 request's
    /// body (read after its response, by a handler that answered early).
    pub(super) fn may_be_uploading(&self, reads: u64) -> bool {
        reads <= self.body_end.load(Ordering::Relaxed)
    }

    /// `n` bytes were written: nothing waits for the client. The hot path
    /// again: one relaxed load and one relaxed store, one writer at a
    /// time.
    #[inline]
    pub(super) fn note_write(&self, n: usize) {
        let written = Written(self.written.load(Ordering::Relaxed));
        self.written.store(written.add(n).0, Ordering::Relaxed);
    }

    /// A flush is done: nothing waits for the client (one load, and a store
    /// only if something did).
    #[inline]
    pub(super) fn note_flushed(&self) {
        let written = Written(self.written.load(Ordering::Relaxed));
        if written.blocked() {
            self.written.store(written.add(0).0, Ordering::Relaxed);
        }
    }

    /// A write or flush must wait for the client to take more.
    #[inline]
    pub(super) fn note_write_blocked(&self) {
        let written = Written(self.written.load(Ordering::Relaxed));
        if !written.blocked() {
            self.written
                .store(written.blocked_now().0, Ordering::Relaxed);
        }
    }

    /// Bytes written so far, and whether the latest write waits for the
    /// client.
    pub(super) fn written(&self) -> (u64, bool) {
        let written = Written(self.written.load(Ordering::Relaxed));
        (written.count(), written.blocked())
    }

    /// A request head was parsed: the bytes read so far were its own.
    /// `body`: for an HTTP/1 request with a body, its head and length
    /// (`None` if unknown: chunked). A few relaxed loads and stores, the
    /// walk over a head with a body kept out of line.
    pub(super) fn note_request_head<T>(
        &self,
        http1: bool,
        body: Option<(&Request<T>, Option<u64>)>,
    ) {
        if self.arrival.load(Ordering::Relaxed) != Arrival::None as u8 {
            self.arrival.store(Arrival::None as u8, Ordering::Relaxed);
        }
        let earlier = self.heads.fetch_add(1, Ordering::Relaxed);
        if http1 {
            // The read that completed this head started at `read_start`
            // (hyper parses a head as soon as a read completes it, and
            // reads nothing while a whole head waits in its buffer), so the
            // next head starts after it. But the first: hyper's first read
            // is two (the bytes read to tell HTTP/1 from HTTP/2, then the
            // socket's next, see `http::Prefixed`), and the first head
            // starts at 0 in any case.
            let read_start = if earlier == 0 {
                0
            } else {
                Reads(self.reads.load(Ordering::Relaxed)).read_start()
            };
            match body {
                None => {
                    if self.body_end.load(Ordering::Relaxed) != 0 {
                        self.body_end.store(0, Ordering::Relaxed);
                    }
                }
                Some((req, len)) => self.note_body(req, len, read_start),
            }
            self.head_floor.store(read_start, Ordering::Relaxed);
        }
    }

    /// Where the body of `req` ends (see [`body_end`]).
    #[inline(never)]
    fn note_body<T>(&self, req: &Request<T>, len: Option<u64>, read_start: u64) {
        let floor = self.head_floor.load(Ordering::Relaxed);
        let end = body_end(req, len, floor, read_start);
        self.body_end.store(end, Ordering::Relaxed);
    }

    /// A response is done with: written (hyper holds all of it), or
    /// abandoned.
    #[inline]
    pub(super) fn note_response_done(&self) {
        self.responses.fetch_add(1, Ordering::Relaxed);
    }

    /// Request heads parsed, and whether a request is in progress (its
    /// head parsed, its response not yet done with).
    pub(super) fn requests(&self) -> (u32, bool) {
        let heads = self.heads.load(Ordering::Relaxed);
        (heads, heads != self.responses.load(Ordering::Relaxed))
    }

    /// Whether a request may be arriving on the connection whose socket is
    /// `fd`: bytes were read since its last request head and since the last
    /// call, or bytes wait in the kernel. A connection whose partial request
    /// made no progress since the last call counts as idle: its client has
    /// stalled for a whole idle grace.
    pub(super) fn request_arriving(&self, fd: RawFd) -> bool {
        let recent = self
            .arrival
            .compare_exchange(
                Arrival::Recent as u8,
                Arrival::Stalled as u8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        recent || bytes_waiting(fd)
    }
}

/// [`ConnSignal::reads`]: bytes read (the high 48 bits, wrapping) and the
/// size of the latest read (the low 16 bits; `u16::MAX` for that many or
/// more: unknown).
#[derive(Debug, Clone, Copy)]
struct Reads(u64);

impl Reads {
    const LAST_BITS: u32 = 16;
    const UNKNOWN: u64 = (1 << Self::LAST_BITS) - 1;

    #[inline]
    fn count(self) -> u64 {
        self.0 >> Self::LAST_BITS
    }

    /// `n` more bytes, in one read.
    #[inline]
    fn add(self, n: usize) -> Reads {
        let n = n as u64;
        let count = self.count().wrapping_add(n);
        Reads(count << Self::LAST_BITS | n.min(Self::UNKNOWN))
    }

    /// Where the latest read started, or 0 if that is not known (a read of
    /// 64 KiB or more): never later than the truth.
    #[inline]
    fn read_start(self) -> u64 {
        match self.0 & Self::UNKNOWN {
            Self::UNKNOWN => 0,
            last => self.count().saturating_sub(last),
        }
    }
}

/// [`ConnSignal::written`]: bytes written (the high 63 bits, wrapping) and
/// whether the latest write waits for the client (the low bit).
#[derive(Debug, Clone, Copy)]
struct Written(u64);

impl Written {
    #[inline]
    fn count(self) -> u64 {
        self.0 >> 1
    }

    #[inline]
    fn blocked(self) -> bool {
        self.0 & 1 == 1
    }

    /// `n` more bytes written, and none waiting.
    #[inline]
    fn add(self, n: usize) -> Written {
        Written(self.count().wrapping_add(n as u64) << 1)
    }

    #[inline]
    fn blocked_now(self) -> Written {
        Written(self.0 | 1)
    }
}

/// Where the body of HTTP/1 request `req` ends in the connection's byte
/// count, `len` its length if known: an estimate never later than the
/// truth but for the few bytes of line ends and spaces a client may leave
/// out (at most two per header line), so that bytes past it are taken for
/// the next request head, whose timeout then applies (a client cannot
/// dribble a head for ever by calling it a body). The head starts at or
/// after `floor` (where the read that completed the previous head
/// started) and ends after `read_start` (where the read that completed it
/// started); its length is at least what it says, written as clients
/// write it. A body of unknown length (chunked) gets no allowance: bytes
/// read after its response are the next head's. Only requests with a body
/// pay for this (a walk over the headers).
fn body_end<T>(req: &Request<T>, len: Option<u64>, floor: u64, read_start: u64) -> u64 {
    let Some(len) = len else {
        return read_start;
    };
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    // `METHOD target HTTP/1.1\r\n`, `name: value\r\n` each, `\r\n`.
    let head = req.method().as_str().len()
        + 1
        + target
        + 1
        + "HTTP/1.1\r\n".len()
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
            .sum::<usize>()
        + 2;
    let head_end = floor
        .saturating_add(head as u64)
        .max(read_start.saturating_add(1));
    head_end.saturating_add(len)
}

/// Whether bytes wait in the kernel's receive buffer of socket `fd`, not yet
/// read by the connection. (An end of stream is not a request.)
#[cfg(unix)]
fn bytes_waiting(fd: RawFd) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut byte = [0u8; 1];
    matches!(
        recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT),
        Ok(n) if n > 0
    )
}

/// Not looked at without Unix (peeking takes the raw socket): hyper reads
/// whatever arrives while the drain waits, and such reads count.
#[cfg(not(unix))]
fn bytes_waiting(_fd: RawFd) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head written as clients write it is measured exactly: bytes past
    /// its body are the next head's, however they arrived.
    #[test]
    fn a_body_ends_where_its_content_length_says() {
        let head = "POST /upload?x=1 HTTP/1.1\r\nhost: example.com\r\ncontent-length: 10\r\n\r\n";
        let req = Request::post("/upload?x=1")
            .header("host", "example.com")
            .header("content-length", "10")
            .body(())
            .unwrap();
        let len = head.len() as u64;
        // The first request, its head in one read (or with its body).
        assert_eq!(body_end(&req, Some(10), 0, 0), len + 10);
        // A later request that starts at 1,000 (the previous head's read
        // started at 900), completed by a read that started at 1,020: its
        // head ends after 1,020 (truly at 1,000 + its length), so its body
        // at 1,021 + 10 at the earliest, which is where the estimate puts
        // it (never later than the truth).
        assert!(900 + len < 1_021 && 1_021 < 1_000 + len);
        assert_eq!(body_end(&req, Some(10), 900, 1_020), 1_021 + 10);
        // Completed by a read that started at 910: the floor decides.
        assert_eq!(body_end(&req, Some(10), 900, 910), 900 + len + 10);
        // A head known to end later than it measures (its read started
        // past where it would end): never before that read.
        assert_eq!(body_end(&req, Some(10), 0, 500), 501 + 10);
        // No length: no allowance past the read that completed the head.
        assert_eq!(body_end(&req, None, 0, 40), 40);
        // Huge lengths saturate.
        assert_eq!(body_end(&req, Some(u64::MAX), 0, 0), u64::MAX);
    }

    #[test]
    fn read_and_write_counts_share_their_words_with_what_comes_with_them() {
        let r = Reads(0).add(100).add(20);
        assert_eq!((r.count(), r.read_start()), (120, 100));
        // A read too large to note: where it started is not known (0).
        let big = r.add(70_000);
        assert_eq!((big.count(), big.read_start()), (70_120, 0));
        assert_eq!(big.add(1).read_start(), 70_120);
        let w = Written(0).add(10).blocked_now();
        assert_eq!((w.count(), w.blocked()), (10, true));
        let w = w.add(5);
        assert_eq!((w.count(), w.blocked()), (15, false));
        assert_eq!(w.add(0).count(), 15);
    }

    /// A first head shorter than the bytes read to tell HTTP/1 from
    /// HTTP/2 (24), with a request with a body in the same packet: the
    /// sniff's read (24 bytes) and hyper's (the rest) are one read for
    /// hyper, so the first head counts from 0, not from the second read,
    /// and the second body's end is not placed later than it is.
    #[test]
    fn the_first_head_starts_at_zero_whatever_the_reads() {
        let first = "GET / HTTP/1.1\r\n\r\n"; // 18 bytes
        let second = "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n";
        let packet = first.len() + second.len() + 5;
        let signal = ConnSignal::default();
        signal.note_read(24);
        signal.note_read(packet - 24);
        signal.note_request_head::<()>(true, None);
        let post = Request::post("/")
            .header("content-length", "5")
            .body(())
            .unwrap();
        signal.note_request_head(true, Some((&post, Some(5))));
        let end = signal.body_end.load(Ordering::Relaxed);
        assert!(
            end <= packet as u64,
            "the body placed to end at {end}, past the packet's {packet} bytes"
        );
        assert!(!signal.may_be_uploading(packet as u64 + 1));
    }

    #[test]
    fn levels_and_seen_bits_are_apart() {
        let signal = ConnSignal::default();
        assert_eq!(signal.level(), Level::Serving);
        signal.note(Seen::REQUEST);
        assert_eq!(signal.level(), Level::Serving, "a flag is not a level");
        assert!(signal.seen().contains(Seen::REQUEST));
        assert!(!signal.seen().contains(Seen::HTTP2));
        signal.raise(Level::Cut);
        signal.raise(Level::Draining);
        assert_eq!(signal.level(), Level::Cut, "levels only rise");
        assert!(
            !signal.seen().contains(Seen::HTTP2),
            "a level is not a flag"
        );
    }
}
