//! The UDP socket quinn sees: one generation's copy of the shared socket,
//! plus its socket pairs, with every datagram routed to the generation
//! that owns its connection.
//!
//! quinn reads through [`Router::poll_recv`] and gets only the datagrams
//! for this generation; the others leave by a pair, or are dropped and
//! counted. Sends always go out through this generation's own copy of the
//! shared socket (the same bound address, so clients see no change).
//!
//! Sources and where a datagram may go from each (the rule that makes
//! loops impossible: a datagram moves either towards older generations
//! only, or one step towards the newer one and no further):
//!
//! | read from                | may go to                                   |
//! |--------------------------|---------------------------------------------|
//! | the shared socket        | here, the predecessor, the successor         |
//! | the successor's pair     | here, the predecessor (older still)          |
//! | the predecessor's pair   | here only                                   |
//!
//! Which generation a datagram is for:
//! - a short header or a Handshake packet carries a connection ID that a
//!   generation issued: its tag names the owner (see `cid`); one naming a
//!   generation nobody here knows is dropped (`dropped_unknown_generation`),
//!   one that is no CID of ours (the check fails, truncated) is dropped
//!   as malformed;
//! - an Initial or 0-RTT packet carries, in the client's first flight, a
//!   destination ID that the client chose. A generation that starts a
//!   handshake for one *claims* it for [`CLAIM_WINDOW`] and tells its
//!   neighbours, so that the rest of that client's first flight (a
//!   ClientHello spread over two packets, a retransmission) reaches the
//!   same generation whichever one reads it. A first-flight packet nobody
//!   claims is a new connection: it stays with a generation that accepts,
//!   and a draining one passes it to its successor. Later Initials carry
//!   the server's CID and are routed by its tag.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::sync::Notify;
use tracing::{debug, info, trace, warn};

use super::cid::{self, Kind};
use super::pair::PairSocket;
use super::wire::{self, Forwarded, Message};

/// How long a client-chosen destination ID stays claimed by the
/// generation that started its handshake: long past the client's switch
/// to the server's CID (one round trip) and its first retransmissions,
/// shorter than a handshake's time-out (quinn's idle time-out, 30 s).
pub(crate) const CLAIM_WINDOW: Duration = Duration::from_secs(10);

/// The most claims kept per table; beyond it the oldest go first, so a
/// flood of junk Initials cannot grow memory.
const MAX_CLAIMS: usize = 4096;

/// How many reads in one poll may route everything elsewhere before the
/// router yields to the runtime (quinn's own budget counts only what it
/// gets).
const READS_PER_POLL: usize = 32;

/// How many messages one poll reads from the pairs at most (routes,
/// claims and datagrams passed on count too): then the router yields, so
/// that a neighbour that keeps sending cannot hold the task.
const MESSAGES_PER_POLL: usize = 256;

/// After a readiness error on the shared socket, the pause before it is
/// read again: doubled at each error in a row, up to [`BACKOFF_MAX`], so
/// that a persistent error does not spin.
const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The largest message on a pair: a UDP datagram and its header.
const PAIR_MESSAGE: usize = 65_536 + wire::HEADER;

/// What the router counted: see [`Stats`](super::Stats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) forwarded_to_predecessor: AtomicU64,
    pub(crate) forwarded_to_successor: AtomicU64,
    pub(crate) received_forwarded: AtomicU64,
    pub(crate) dropped_unknown_generation: AtomicU64,
    pub(crate) dropped_malformed: AtomicU64,
    pub(crate) dropped_pair_full: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A set of generation tags.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tags([u64; 4]);

impl Tags {
    fn of(list: &[u8]) -> Tags {
        let mut t = Tags::default();
        for &tag in list {
            t.0[usize::from(tag >> 6)] |= 1 << (tag & 63);
        }
        t
    }
    fn has(&self, tag: u8) -> bool {
        self.0[usize::from(tag >> 6)] & (1 << (tag & 63)) != 0
    }
    fn list(&self) -> Vec<u8> {
        (0..=255u8).filter(|&t| self.has(t)).collect()
    }
}

/// A destination connection ID, as a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Dcid {
    len: u8,
    bytes: [u8; 20],
}

impl Dcid {
    fn of(b: &[u8]) -> Option<Dcid> {
        let mut bytes = [0u8; 20];
        bytes.get_mut(..b.len())?.copy_from_slice(b);
        Some(Dcid {
            len: b.len() as u8,
            bytes,
        })
    }
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Client-chosen destination IDs claimed for a while.
#[derive(Debug, Default)]
struct Claims {
    until: HashMap<Dcid, Instant>,
    order: VecDeque<(Dcid, Instant)>,
}

impl Claims {
    fn has(&self, dcid: &[u8], now: Instant) -> bool {
        Dcid::of(dcid)
            .and_then(|d| self.until.get(&d))
            .is_some_and(|&until| until > now)
    }
    /// Claims `dcid`; whether it is new.
    fn insert(&mut self, dcid: &[u8], now: Instant) -> bool {
        let Some(d) = Dcid::of(dcid) else {
            return false;
        };
        while let Some(&(old, until)) = self.order.front() {
            if until > now && self.order.len() < MAX_CLAIMS {
                break;
            }
            self.order.pop_front();
            if self.until.get(&old) == Some(&until) {
                self.until.remove(&old);
            }
        }
        let until = now + CLAIM_WINDOW;
        self.order.push_back((d, until));
        self.until.insert(d, until).is_none_or(|was| was <= now)
    }
    fn live(&self, now: Instant) -> impl Iterator<Item = &Dcid> {
        self.until
            .iter()
            .filter(move |(_, &u)| u > now)
            .map(|(d, _)| d)
    }
}

/// Another generation, through a pair.
struct Link {
    sock: PairSocket,
    /// The tags it takes: a predecessor's own and those behind it, a
    /// successor's own.
    tags: Tags,
    claims: Claims,
    /// It has sent its routes: it reads its end of the pair, so it runs
    /// (and, a successor, reads the shared socket).
    routed: bool,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("tags", &self.tags.list())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Predecessor,
    Successor,
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Here,
    To(Side),
    Malformed,
    UnknownGeneration,
}

#[derive(Debug, Default)]
struct Links {
    predecessor: Option<Link>,
    successor: Option<Link>,
    own_claims: Claims,
    /// Where messages are built and read.
    out: Vec<u8>,
    inbuf: Vec<u8>,
    /// The pause after a readiness error on the shared socket, and the
    /// next one's length (zero: none yet).
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    next_backoff: Duration,
}

impl Links {
    fn link(&mut self, side: Side) -> &mut Option<Link> {
        match side {
            Side::Predecessor => &mut self.predecessor,
            Side::Successor => &mut self.successor,
        }
    }
    fn takes(&self, side: Side, tag: u8) -> bool {
        let link = match side {
            Side::Predecessor => &self.predecessor,
            Side::Successor => &self.successor,
        };
        link.as_ref().is_some_and(|l| l.tags.has(tag))
    }
    /// Whether a successor is there and has shown that it reads (its
    /// routes came): only then does it take the shared socket and new
    /// connections from us.
    fn successor_reads(&self) -> bool {
        self.successor.as_ref().is_some_and(|l| l.routed)
    }
    fn claimed_by(&self, side: Side, dcid: &[u8], now: Instant) -> bool {
        let link = match side {
            Side::Predecessor => &self.predecessor,
            Side::Successor => &self.successor,
        };
        link.as_ref().is_some_and(|l| l.claims.has(dcid, now))
    }
}

/// Whether a send error on a pair means the other end is closed (its
/// process exited or dropped it).
fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

/// One generation's view of the shared UDP socket.
pub(crate) struct Router {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    own: u8,
    /// Whether this generation reads the shared socket: until it drains
    /// and a successor that has shown it reads (its routes came) reads it
    /// instead, or, in a `keep_pid` temporary generation, until its parent
    /// reads it again (see [`Router::predecessor_reads_again`]).
    reading: AtomicBool,
    /// The predecessor reads the shared socket again and passes us our
    /// packets: we relay nothing for it, and need not wait for it to go.
    predecessor_reads: AtomicBool,
    /// Whether new connections stay here (until the drain).
    accepting: AtomicBool,
    links: Mutex<Links>,
    pub(crate) counters: Counters,
    /// quinn's receiving task, woken when there is something new to read
    /// from (a pair attached).
    recv_waker: AtomicWaker,
    /// Told whenever the links change (the drain waits for the
    /// predecessor to be gone).
    pub(crate) changed: Notify,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("tag", &self.own)
            .field("reading", &self.reading)
            .field("accepting", &self.accepting)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// The router of the generation tagged `own`, over its copy of the
    /// shared socket.
    pub(crate) fn new(socket: std::net::UdpSocket, own: u8) -> io::Result<Router> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let io = tokio::net::UdpSocket::from_std(socket)?;
        Ok(Router {
            io,
            state,
            own,
            reading: AtomicBool::new(true),
            predecessor_reads: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            links: Mutex::new(Links {
                inbuf: vec![0; PAIR_MESSAGE],
                ..Links::default()
            }),
            counters: Counters::default(),
            recv_waker: AtomicWaker::new(),
            changed: Notify::new(),
        })
    }

    fn links(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tags a successor should send us: ours and those behind us.
    fn routes_for_successor(&self, links: &Links) -> Vec<u8> {
        let mut tags = links
            .predecessor
            .as_ref()
            .map_or(Tags::default(), |p| p.tags);
        tags.0[usize::from(self.own >> 6)] |= 1 << (self.own & 63);
        tags.list()
    }

    /// Attaches a neighbour's end of a pair and tells it what to send us
    /// and which handshakes are ours. A neighbour already on that side is
    /// replaced.
    pub(crate) fn attach(&self, side: Side, sock: PairSocket) {
        let mut links = self.links();
        let routes = match side {
            // A predecessor sends us only what is ours.
            Side::Predecessor => vec![self.own],
            Side::Successor => self.routes_for_successor(&links),
        };
        let now = Instant::now();
        let claims: Vec<Vec<u8>> = links
            .own_claims
            .live(now)
            .map(|d| wire::claim(d.as_slice()))
            .collect();
        *links.link(side) = Some(Link {
            sock,
            tags: Tags::default(),
            claims: Claims::default(),
            routed: false,
        });
        self.send(&mut links, side, &wire::routes(&routes));
        for c in claims {
            self.send(&mut links, side, &c);
        }
        if side == Side::Predecessor {
            // Whatever it queued for us (its routes) is read before the
            // shared socket, in the first poll.
            info!(tag = self.own, "HTTP/3: predecessor attached");
        } else {
            info!(tag = self.own, "HTTP/3: successor attached");
        }
        drop(links);
        self.recv_waker.wake();
        self.changed.notify_waiters();
    }

    /// Detaches the neighbour on `side` (if any), telling it we are gone.
    pub(crate) fn detach(&self, side: Side) {
        let mut links = self.links();
        if links.link(side).is_some() {
            self.send(&mut links, side, &wire::routes(&[]));
            *links.link(side) = None;
            debug!(tag = self.own, ?side, "HTTP/3: neighbour detached");
        }
        drop(links);
        self.changed.notify_waiters();
    }

    /// Stops reading the shared socket if a successor has shown that it
    /// reads it (its routes came; if they come later, then), or else keeps
    /// reading so that the connections still get their packets: a
    /// successor that never routes (it died, its release has no HTTP/3
    /// here, it speaks another wire version) leaves them with us. New
    /// connections go to a successor that reads, or are refused.
    pub(crate) fn begin_drain(&self) {
        // Under the links' lock, as `take_routes` and `resume`: whether we
        // read follows the last of them.
        let mut links = self.links();
        self.accepting.store(false, Ordering::Release);
        self.take_successor_routes(&mut links);
        if links.successor_reads() {
            self.stop_reading("the successor reads the shared socket");
        }
        drop(links);
        self.recv_waker.wake();
    }

    /// Takes the successor's routes now if they wait at the head of its
    /// pair (it sends them first, when it attaches), rather than at the next
    /// poll: a drain that begins just after the successor attached knows
    /// at once that it reads, and passes it the next new connection.
    fn take_successor_routes(&self, links: &mut Links) {
        let Some(link) = links.successor.as_ref().filter(|l| !l.routed) else {
            return;
        };
        // The longest routes message: 3 bytes and 256 tags.
        let mut head = [0u8; 3 + 256];
        let n = match link.sock.try_peek(&mut head) {
            Ok(n) if n < head.len() => n,
            _ => return,
        };
        if !matches!(wire::parse(&head[..n]), Some(Message::Routes(_))) {
            return;
        }
        if link.sock.try_take(&mut head).is_ok_and(|taken| taken == n) {
            if let Some(Message::Routes(tags)) = wire::parse(&head[..n]) {
                self.take_routes(links, Side::Successor, tags);
            }
        }
    }

    fn stop_reading(&self, why: &'static str) {
        if self.reading.swap(false, Ordering::AcqRel) {
            info!(
                tag = self.own,
                why, "HTTP/3: this generation stops reading the shared socket"
            );
        }
    }

    /// A `keep_pid` temporary generation is handed back: if its parent is
    /// still there (its re-exec failed, and it serves again), the parent
    /// reads the shared socket and passes us our packets, so we stop
    /// reading, and may leave without waiting for it. If it re-executed,
    /// its end of the pair closed with the exec: we read on (the
    /// re-executed image reads only once we have gone). Whether the parent
    /// was there.
    pub(crate) fn predecessor_reads_again(&self) -> bool {
        self.probe_predecessor();
        if !self.has_predecessor() {
            return false;
        }
        self.predecessor_reads.store(true, Ordering::Release);
        self.stop_reading("the predecessor reads the shared socket again");
        self.recv_waker.wake();
        self.changed.notify_waiters();
        true
    }

    /// Whether the drain must wait for the predecessor to go (we may relay
    /// for it): it is attached, and does not read the shared socket itself.
    pub(crate) fn relays_for_predecessor(&self) -> bool {
        self.has_predecessor() && !self.predecessor_reads.load(Ordering::Acquire)
    }

    /// Reads the shared socket and takes new connections again (the
    /// generation serves again after its successor failed).
    pub(crate) fn resume(&self) {
        let links = self.links();
        self.accepting.store(true, Ordering::Release);
        self.reading.store(true, Ordering::Release);
        drop(links);
        self.recv_waker.wake();
    }

    /// Whether a predecessor is attached (and not known to be gone).
    pub(crate) fn has_predecessor(&self) -> bool {
        self.links().predecessor.is_some()
    }

    /// Sends our routes to the predecessor again: a send to an end whose
    /// process is gone fails, which detaches it (a predecessor that died
    /// without saying so).
    pub(crate) fn probe_predecessor(&self) {
        let mut links = self.links();
        if links.predecessor.is_some() {
            self.send(&mut links, Side::Predecessor, &wire::routes(&[self.own]));
        }
    }

    /// Says goodbye to both neighbours (the generation is done).
    pub(crate) fn leave(&self) {
        self.detach(Side::Successor);
        self.detach(Side::Predecessor);
    }

    /// Sends `msg` to the neighbour on `side`. A full pair drops it
    /// (counted); a neighbour that is gone is detached.
    fn send(&self, links: &mut Links, side: Side, msg: &[u8]) -> bool {
        let Some(link) = links.link(side) else {
            return false;
        };
        match link.sock.try_send(msg) {
            Ok(_) => true,
            Err(e) if !gone(&e) => {
                // Full (`EAGAIN`, `ENOBUFS`), or a message too large for
                // the pair (`EMSGSIZE`): this message is lost, the
                // neighbour is not.
                bump(&self.counters.dropped_pair_full);
                trace!(?side, cause = %e, "HTTP/3: the pair refused a message; dropped");
                false
            }
            Err(e) => {
                info!(tag = self.own, ?side, cause = %e, "HTTP/3: neighbour gone");
                *links.link(side) = None;
                if side == Side::Predecessor {
                    self.announce_routes(links);
                }
                self.changed.notify_waiters();
                false
            }
        }
    }

    /// Tells the successor (if any) the tags it should send us now.
    fn announce_routes(&self, links: &mut Links) {
        if links.successor.is_some() {
            let routes = wire::routes(&self.routes_for_successor(links));
            self.send(links, Side::Successor, &routes);
        }
    }

    /// Forwards `datagram`, received as `from`, to the neighbour on `side`.
    fn forward(&self, links: &mut Links, side: Side, from: &Forwarded, datagram: &[u8]) {
        let mut out = std::mem::take(&mut links.out);
        wire::datagram(&mut out, from, datagram);
        if self.send(links, side, &out) {
            bump(match side {
                Side::Predecessor => &self.counters.forwarded_to_predecessor,
                Side::Successor => &self.counters.forwarded_to_successor,
            });
        }
        links.out = out;
    }

    /// A connection ID's owner: here, a neighbour, or nobody we know.
    fn by_tag(&self, links: &Links, dcid: &[u8], towards_successor: bool) -> Verdict {
        match cid::tag_of(dcid) {
            None => Verdict::Malformed,
            Some(t) if t == self.own => Verdict::Here,
            Some(t) if links.takes(Side::Predecessor, t) => Verdict::To(Side::Predecessor),
            Some(t) if towards_successor && links.takes(Side::Successor, t) => {
                Verdict::To(Side::Successor)
            }
            Some(_) => Verdict::UnknownGeneration,
        }
    }

    /// Where a datagram read from the shared socket goes.
    fn route_shared(&self, links: &mut Links, datagram: &[u8], now: Instant) -> Verdict {
        let Some(p) = cid::parse(datagram) else {
            return Verdict::Malformed;
        };
        match p.kind {
            Kind::Short | Kind::Handshake => self.by_tag(links, p.dcid, true),
            Kind::Initial | Kind::ZeroRtt => {
                if links.own_claims.has(p.dcid, now) {
                    return Verdict::Here;
                }
                for side in [Side::Predecessor, Side::Successor] {
                    if links.claimed_by(side, p.dcid, now) {
                        return Verdict::To(side);
                    }
                }
                match self.by_tag(links, p.dcid, true) {
                    v @ (Verdict::Here | Verdict::To(_)) => v,
                    // A client's random ID (or one of a generation that is
                    // gone, whose handshake is lost anyway): a new connection.
                    _ => self.new_connection(links, p.dcid, now),
                }
            }
            Kind::OtherVersion => {
                if self.accepting.load(Ordering::Acquire) || !links.successor_reads() {
                    Verdict::Here
                } else {
                    Verdict::To(Side::Successor)
                }
            }
        }
    }

    /// A first-flight packet nobody claims.
    fn new_connection(&self, links: &mut Links, dcid: &[u8], now: Instant) -> Verdict {
        if self.accepting.load(Ordering::Acquire) {
            if links.own_claims.insert(dcid, now)
                && (links.predecessor.is_some() || links.successor.is_some())
            {
                let claim = wire::claim(dcid);
                self.send(links, Side::Predecessor, &claim);
                self.send(links, Side::Successor, &claim);
            }
            Verdict::Here
        } else if links.successor_reads() {
            Verdict::To(Side::Successor)
        } else {
            // Stopping without a successor that reads: quinn refuses it.
            Verdict::Here
        }
    }

    /// Where a datagram the successor passed us goes: here or further back.
    fn route_from_successor(&self, links: &Links, datagram: &[u8], now: Instant) -> Verdict {
        let Some(p) = cid::parse(datagram) else {
            return Verdict::Malformed;
        };
        match p.kind {
            Kind::Short | Kind::Handshake => self.by_tag(links, p.dcid, false),
            Kind::Initial | Kind::ZeroRtt => {
                if links.own_claims.has(p.dcid, now) {
                    Verdict::Here
                } else if links.claimed_by(Side::Predecessor, p.dcid, now) {
                    Verdict::To(Side::Predecessor)
                } else {
                    match self.by_tag(links, p.dcid, false) {
                        v @ Verdict::To(_) => v,
                        _ => Verdict::Here,
                    }
                }
            }
            Kind::OtherVersion => Verdict::Here,
        }
    }

    fn count_drop(&self, v: Verdict) {
        match v {
            Verdict::Malformed => bump(&self.counters.dropped_malformed),
            Verdict::UnknownGeneration => bump(&self.counters.dropped_unknown_generation),
            _ => {}
        }
    }

    /// Reads what the neighbours sent, routing datagrams and taking in
    /// routes and claims, until `bufs` is full or nothing is left; returns
    /// how many datagrams it put in `bufs` for quinn.
    fn poll_links(
        &self,
        links: &mut Links,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> usize {
        let mut out = 0;
        let mut messages = 0;
        let now = Instant::now();
        for side in [Side::Successor, Side::Predecessor] {
            while out < bufs.len().min(meta.len()) {
                if messages == MESSAGES_PER_POLL {
                    // More may wait: poll again once others have run.
                    cx.waker().wake_by_ref();
                    return out;
                }
                let Some(link) = links.link(side).as_ref() else {
                    break;
                };
                match link.sock.poll_recv_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_)) => {}
                    Poll::Ready(Ok(())) => {}
                }
                let mut inbuf = std::mem::take(&mut links.inbuf);
                let read = links
                    .link(side)
                    .as_ref()
                    .map(|l| l.sock.try_recv(&mut inbuf));
                messages += 1;
                let n = match read {
                    Some(Ok(n)) => n,
                    Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        links.inbuf = inbuf;
                        continue;
                    }
                    Some(Err(e)) => {
                        warn!(tag = self.own, ?side, cause = %e, "HTTP/3: cannot read the pair; detaching it");
                        *links.link(side) = None;
                        links.inbuf = inbuf;
                        self.changed.notify_waiters();
                        break;
                    }
                    None => {
                        links.inbuf = inbuf;
                        break;
                    }
                };
                if self.take_message(
                    links,
                    side,
                    &inbuf[..n],
                    now,
                    &mut bufs[out],
                    &mut meta[out],
                ) {
                    out += 1;
                }
                links.inbuf = inbuf;
            }
        }
        out
    }

    /// Handles one message from the neighbour on `side`; whether it put a
    /// datagram in `buf` for quinn.
    fn take_message(
        &self,
        links: &mut Links,
        side: Side,
        msg: &[u8],
        now: Instant,
        buf: &mut IoSliceMut<'_>,
        meta: &mut RecvMeta,
    ) -> bool {
        match wire::parse(msg) {
            None => {
                bump(&self.counters.dropped_malformed);
                debug!(
                    ?side,
                    len = msg.len(),
                    "HTTP/3: malformed message on the pair"
                );
                false
            }
            Some(Message::Routes(tags)) => {
                self.take_routes(links, side, tags);
                false
            }
            Some(Message::Claim(dcid)) => {
                if let Some(link) = links.link(side) {
                    link.claims.insert(dcid, now);
                }
                false
            }
            Some(Message::Datagram(from, datagram)) => {
                bump(&self.counters.received_forwarded);
                let verdict = match side {
                    // From the older one: ours, never passed on.
                    Side::Predecessor => Verdict::Here,
                    Side::Successor => self.route_from_successor(links, datagram, now),
                };
                match verdict {
                    Verdict::Here if datagram.len() <= buf.len() => {
                        buf[..datagram.len()].copy_from_slice(datagram);
                        *meta = RecvMeta {
                            addr: from.peer,
                            len: datagram.len(),
                            stride: datagram.len(),
                            ecn: from.ecn,
                            dst_ip: from.dst_ip,
                        };
                        true
                    }
                    Verdict::Here => {
                        bump(&self.counters.dropped_malformed);
                        false
                    }
                    Verdict::To(Side::Predecessor) => {
                        self.forward(links, Side::Predecessor, &from, datagram);
                        false
                    }
                    v => {
                        self.count_drop(v);
                        false
                    }
                }
            }
        }
    }

    /// The neighbour on `side` says which tags it takes (none: it is gone).
    fn take_routes(&self, links: &mut Links, side: Side, tags: &[u8]) {
        let tags = Tags::of(tags);
        if tags == Tags::default() {
            info!(tag = self.own, ?side, "HTTP/3: neighbour says it is gone");
            *links.link(side) = None;
        } else if let Some(link) = links.link(side) {
            if tags.has(self.own) {
                warn!(
                    tag = self.own,
                    ?side,
                    "HTTP/3: a neighbour uses our tag; its packets cannot be told from ours"
                );
            }
            link.tags = tags;
            link.routed = true;
            if side == Side::Successor && !self.accepting.load(Ordering::Acquire) {
                self.stop_reading("the successor reads the shared socket");
            }
        }
        if side == Side::Predecessor {
            self.announce_routes(links);
        }
        self.changed.notify_waiters();
    }

    /// Routes the `n` buffers just read from the shared socket, splitting
    /// GRO batches into their datagrams: what is ours is compacted to the
    /// front (each buffer keeping its stride), the rest forwarded or
    /// dropped. Returns how many buffers quinn gets.
    fn route_batch(
        &self,
        links: &mut Links,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        n: usize,
    ) -> usize {
        let now = Instant::now();
        let mut out = 0;
        for i in 0..n.min(bufs.len()).min(meta.len()) {
            let m = meta[i];
            let len = m.len.min(bufs[i].len());
            let stride = if m.stride == 0 { len } else { m.stride };
            let from = Forwarded {
                peer: m.addr,
                dst_ip: m.dst_ip,
                ecn: m.ecn,
            };
            if len == 0 {
                // An empty datagram: no packet at all.
                bump(&self.counters.dropped_malformed);
                continue;
            }
            let mut kept = 0;
            let mut at = 0;
            while at < len {
                let end = (at + stride).min(len);
                match self.route_shared(links, &bufs[i][at..end], now) {
                    Verdict::Here => {
                        // Nothing to move while everything so far stayed
                        // (the usual case: a batch of one connection's).
                        if at != kept {
                            bufs[i].copy_within(at..end, kept);
                        }
                        kept += end - at;
                    }
                    Verdict::To(side) => self.forward(links, side, &from, &bufs[i][at..end]),
                    v => self.count_drop(v),
                }
                at = end;
            }
            if kept == 0 {
                continue;
            }
            if out != i {
                let (front, back) = bufs.split_at_mut(i);
                front[out][..kept].copy_from_slice(&back[0][..kept]);
            }
            meta[out] = RecvMeta {
                len: kept,
                stride,
                ..m
            };
            out += 1;
        }
        out
    }
}

/// Whether a pause after a readiness error still runs (it wakes the task
/// when it is over).
fn backing_off(links: &mut Links, cx: &mut Context<'_>) -> bool {
    let Some(pause) = links.backoff.as_mut() else {
        return false;
    };
    if pause.as_mut().poll(cx).is_pending() {
        return true;
    }
    links.backoff = None;
    false
}

impl Router {
    /// A readiness error on the shared socket: reads pause for a while,
    /// longer at each error in a row.
    fn back_off(
        &self,
        links: &mut Links,
        cx: &mut Context<'_>,
        e: &io::Error,
    ) -> Poll<io::Result<usize>> {
        let pause = match links.next_backoff {
            Duration::ZERO => BACKOFF_FIRST,
            d => d,
        };
        links.next_backoff = (pause * 2).min(BACKOFF_MAX);
        warn!(tag = self.own, local = ?self.io.local_addr().ok(), cause = %e, ?pause, "HTTP/3: the UDP socket reports an error; reading it again after a pause");
        links.backoff = Some(Box::pin(tokio::time::sleep(pause)));
        if !backing_off(links, cx) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl AsyncUdpSocket for Router {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            router: self,
            fut: None,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.recv_waker.register(cx.waker());
        let mut links = self.links();
        let n = self.poll_links(&mut links, cx, bufs, meta);
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        if !self.reading.load(Ordering::Acquire) || backing_off(&mut links, cx) {
            return Poll::Pending;
        }
        for _ in 0..READS_PER_POLL {
            match self.io.poll_recv_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return self.back_off(&mut links, cx, &e),
                Poll::Ready(Ok(())) => {}
            }
            match self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) {
                Ok(n) => {
                    links.next_backoff = Duration::ZERO;
                    let kept = self.route_batch(&mut links, bufs, meta, n);
                    if kept > 0 {
                        return Poll::Ready(Ok(kept));
                    }
                }
                // try_io cleared the readiness: the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // ICMP errors and the like (as quinn's own socket does, they
                // are ignored: QUIC does not trust them).
                Err(e) => trace!(cause = %e, "HTTP/3: UDP receive error"),
            }
        }
        // Everything read went elsewhere: let others run, then read on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

/// Waits for the shared socket to be writable (quinn's sender).
struct Writable {
    router: Arc<Router>,
    fut: Option<Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send + Sync>>>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.fut.is_none() {
            let router = self.router.clone();
            self.fut = Some(Box::pin(async move { router.io.writable().await }));
        }
        let fut = self.fut.as_mut().expect("set above");
        let result = fut.as_mut().poll(cx);
        if result.is_ready() {
            self.fut = None;
        }
        result
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A router on a socket of its own (call within a runtime).
    fn router(tag: u8) -> Router {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        Router::new(sock, tag).unwrap()
    }

    fn short(tag: u8) -> Vec<u8> {
        let mut d = vec![0x40];
        d.extend_from_slice(&cid::compose(tag, [1; 7]));
        d.resize(60, 0);
        d
    }

    fn initial(dcid: &[u8]) -> Vec<u8> {
        let mut d = vec![0xc0, 0, 0, 0, 1, dcid.len() as u8];
        d.extend_from_slice(dcid);
        d.push(0);
        d.resize(1200, 0);
        d
    }

    #[test]
    fn tag_sets_hold_every_tag() {
        let t = Tags::of(&[0, 63, 64, 255]);
        assert!(t.has(0) && t.has(63) && t.has(64) && t.has(255) && !t.has(1));
        assert_eq!(t.list(), vec![0, 63, 64, 255]);
    }

    #[test]
    fn claims_expire_and_stay_bounded() {
        let mut c = Claims::default();
        let t0 = Instant::now();
        assert!(c.insert(&[1; 8], t0));
        assert!(!c.insert(&[1; 8], t0));
        assert!(c.has(&[1; 8], t0 + CLAIM_WINDOW / 2));
        assert!(!c.has(&[1; 8], t0 + CLAIM_WINDOW));
        assert!(!c.has(&[1; 21], t0));
        for i in 0..(MAX_CLAIMS as u32 * 2) {
            c.insert(&i.to_be_bytes(), t0);
        }
        assert!(c.order.len() <= MAX_CLAIMS && c.until.len() <= MAX_CLAIMS);
    }

    #[test]
    fn the_shared_socket_routes_by_tag_and_new_connections_by_drain() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _e = rt.enter();
        let r = router(5);
        let now = Instant::now();
        let mut links = Links::default();
        assert_eq!(r.route_shared(&mut links, &short(5), now), Verdict::Here);
        assert_eq!(
            r.route_shared(&mut links, &short(4), now),
            Verdict::UnknownGeneration
        );
        assert_eq!(
            r.route_shared(&mut links, &[0x40; 60], now),
            Verdict::Malformed
        );
        assert_eq!(
            r.route_shared(&mut links, &[0x40; 5], now),
            Verdict::Malformed
        );
        // A predecessor takes 4 and 3 (3 behind it).
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        links.predecessor = Some(Link {
            sock: super::super::pair::adopt(a).unwrap(),
            tags: Tags::of(&[4, 3]),
            claims: Claims::default(),
            routed: true,
        });
        assert_eq!(
            r.route_shared(&mut links, &short(4), now),
            Verdict::To(Side::Predecessor)
        );
        assert_eq!(
            r.route_shared(&mut links, &short(3), now),
            Verdict::To(Side::Predecessor)
        );
        assert_eq!(
            r.route_shared(&mut links, &short(2), now),
            Verdict::UnknownGeneration
        );
        // A new connection stays and is claimed; the predecessor's claim wins.
        assert_eq!(
            r.route_shared(&mut links, &initial(&[7; 8]), now),
            Verdict::Here
        );
        assert!(links.own_claims.has(&[7; 8], now));
        links
            .predecessor
            .as_mut()
            .unwrap()
            .claims
            .insert(&[8; 8], now);
        assert_eq!(
            r.route_shared(&mut links, &initial(&[8; 8]), now),
            Verdict::To(Side::Predecessor)
        );
        // The server's CID in a later Initial: by tag.
        assert_eq!(
            r.route_shared(&mut links, &initial(&cid::compose(4, [2; 7])), now),
            Verdict::To(Side::Predecessor)
        );
        // From the successor, nothing goes back to it; unknown stays here.
        assert_eq!(
            r.route_from_successor(&links, &short(4), now),
            Verdict::To(Side::Predecessor)
        );
        assert_eq!(
            r.route_from_successor(&links, &short(9), now),
            Verdict::UnknownGeneration
        );
        assert_eq!(
            r.route_from_successor(&links, &initial(&[9; 8]), now),
            Verdict::Here
        );
        // Draining without a successor: new connections stay (to be refused).
        r.begin_drain();
        assert_eq!(
            r.route_shared(&mut links, &initial(&[6; 8]), now),
            Verdict::Here
        );
        assert!(!links.own_claims.has(&[6; 8], now));
    }

    /// Reads everything `r` has on its pairs, as quinn's poll would.
    fn drain_links(r: &Router) -> Vec<Vec<u8>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut store = vec![vec![0u8; 2048]; 4];
        let mut got = Vec::new();
        loop {
            let mut bufs: Vec<IoSliceMut<'_>> =
                store.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let mut meta = [RecvMeta::default(); 4];
            let mut links = r.links();
            let n = r.poll_links(&mut links, &mut cx, &mut bufs, &mut meta);
            drop(links);
            for i in 0..n {
                got.push(bufs[i][..meta[i].len].to_vec());
            }
            if n == 0 {
                return got;
            }
        }
    }

    #[test]
    fn a_handshake_started_by_one_generation_is_sent_to_it_by_the_other() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _e = rt.enter();
        let (old, new) = (router(1), router(2));
        let (a, b) = super::super::pair::socket_pair().unwrap();
        old.attach(Side::Successor, super::super::pair::adopt(a).unwrap());
        new.attach(Side::Predecessor, super::super::pair::adopt(b).unwrap());
        rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
        // Each learns the other's routes.
        assert!(drain_links(&old).is_empty());
        assert!(drain_links(&new).is_empty());
        let now = Instant::now();
        {
            let links = new.links();
            assert!(links.takes(Side::Predecessor, 1));
        }
        // Both read the shared socket (the new one is starting): the old
        // one starts a handshake for X, the new one for Y.
        assert_eq!(
            old.route_shared(&mut old.links(), &initial(&[0xaa; 8]), now),
            Verdict::Here
        );
        assert_eq!(
            new.route_shared(&mut new.links(), &initial(&[0xbb; 9]), now),
            Verdict::Here
        );
        rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
        drain_links(&old);
        drain_links(&new);
        // The rest of each first flight reaches the one that started it.
        assert_eq!(
            new.route_shared(&mut new.links(), &initial(&[0xaa; 8]), now),
            Verdict::To(Side::Predecessor)
        );
        assert_eq!(
            old.route_shared(&mut old.links(), &initial(&[0xbb; 9]), now),
            Verdict::To(Side::Successor)
        );
        // The old one drains: a new connection goes to the new one.
        old.begin_drain();
        assert_eq!(
            old.route_shared(&mut old.links(), &initial(&[0xcc; 8]), now),
            Verdict::To(Side::Successor)
        );
        // The new one's packets for the old one arrive there, and the old
        // one's forwarded ones (as any from the successor) are not passed
        // back; nothing loops.
        let mut links = new.links();
        new.forward(
            &mut links,
            Side::Predecessor,
            &Forwarded {
                peer: "127.0.0.1:9".parse().unwrap(),
                dst_ip: None,
                ecn: None,
            },
            &short(1),
        );
        drop(links);
        rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
        assert_eq!(drain_links(&old), vec![short(1)]);
        // Gone: a predecessor that leaves is forgotten, its tag unknown.
        old.leave();
        rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
        drain_links(&new);
        assert!(!new.has_predecessor());
        assert_eq!(
            new.route_shared(&mut new.links(), &short(1), now),
            Verdict::UnknownGeneration
        );
    }

    #[test]
    fn a_draining_generation_reads_until_its_successor_has_routed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _e = rt.enter();
        let old = router(1);
        let now = Instant::now();
        // A successor that never routes (its release has no HTTP/3 here, it
        // died, it speaks another wire version): the old one reads on, and
        // a new connection is not passed to it.
        let (a, silent) = super::super::pair::socket_pair().unwrap();
        old.attach(Side::Successor, super::super::pair::adopt(a).unwrap());
        old.begin_drain();
        assert!(old.reading.load(Ordering::Acquire));
        assert_eq!(
            old.route_shared(&mut old.links(), &initial(&[0xdd; 8]), now),
            Verdict::Here
        );
        drop(silent);
        old.detach(Side::Successor);
        assert!(old.reading.load(Ordering::Acquire));
        // A successor whose routes wait in the pair when the drain begins:
        // taken at once, and the old one stops reading.
        old.resume();
        let (a, b) = super::super::pair::socket_pair().unwrap();
        old.attach(Side::Successor, super::super::pair::adopt(a).unwrap());
        let new = router(2);
        new.attach(Side::Predecessor, super::super::pair::adopt(b).unwrap());
        old.begin_drain();
        assert!(!old.reading.load(Ordering::Acquire));
        assert_eq!(
            old.route_shared(&mut old.links(), &initial(&[0xee; 8]), now),
            Verdict::To(Side::Successor)
        );
    }

    #[test]
    fn one_poll_reads_a_bounded_number_of_messages_from_the_pairs() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _e = rt.enter();
        let r = router(2);
        let (a, b) = super::super::pair::socket_pair().unwrap();
        r.attach(Side::Predecessor, super::super::pair::adopt(a).unwrap());
        // Claims only: nothing for quinn, each read all the same.
        b.set_nonblocking(true).unwrap();
        for i in 0..(MESSAGES_PER_POLL as u32 + 44) {
            // (Fails, rather than blocks, if `net.unix.max_dgram_qlen` is
            // below 300.)
            b.send(&wire::claim(&i.to_be_bytes())).unwrap();
        }
        rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut store = vec![vec![0u8; 2048]; 4];
        let mut bufs: Vec<IoSliceMut<'_>> = store.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = [RecvMeta::default(); 4];
        let n = r.poll_links(&mut r.links(), &mut cx, &mut bufs, &mut meta);
        assert_eq!(n, 0);
        assert!(
            woken.0.load(Ordering::Acquire),
            "it asks to be polled again"
        );
        let claims = |r: &Router| {
            let links = r.links();
            links.predecessor.as_ref().unwrap().claims.until.len()
        };
        assert_eq!(claims(&r), MESSAGES_PER_POLL);
        drain_links(&r);
        assert_eq!(claims(&r), MESSAGES_PER_POLL + 44);
    }

    #[derive(Default)]
    struct Woken(AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
    }

    #[test]
    fn gro_batches_are_split_and_what_stays_is_compacted_in_order() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _e = rt.enter();
        let (r, pred) = (router(2), router(1));
        let (a, b) = super::super::pair::socket_pair().unwrap();
        pred.attach(Side::Successor, super::super::pair::adopt(a).unwrap());
        r.attach(Side::Predecessor, super::super::pair::adopt(b).unwrap());
        rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
        drain_links(&r);
        drain_links(&pred);
        // Buffer 0: [ours, theirs, ours, junk, ours (short)] with stride 60;
        // buffer 1: all theirs; buffer 2: one of ours.
        let seg = |tag: u8, fill: u8, len: usize| {
            let mut d = short(tag);
            d[40..].fill(fill);
            d.truncate(len);
            d
        };
        let mut b0 = Vec::new();
        for s in [
            seg(2, 1, 60),
            seg(1, 2, 60),
            seg(2, 3, 60),
            vec![0x40; 60],
            seg(2, 4, 50),
        ] {
            b0.extend_from_slice(&s);
        }
        let b1 = [seg(1, 5, 60), seg(1, 6, 60)].concat();
        let b2 = seg(2, 7, 60);
        let mut store = [b0.clone(), b1.clone(), b2.clone()];
        for s in store.iter_mut() {
            s.resize(400, 0);
        }
        let lens = [b0.len(), b1.len(), b2.len()];
        let mut bufs: Vec<IoSliceMut<'_>> = store.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = [RecvMeta::default(); 3];
        for (m, len) in meta.iter_mut().zip(lens) {
            m.len = len;
            m.stride = 60;
            m.addr = "127.0.0.1:5".parse().unwrap();
        }
        let n = r.route_batch(&mut r.links(), &mut bufs, &mut meta, 3);
        assert_eq!(n, 2);
        assert_eq!(meta[0].len, 170);
        assert_eq!(meta[0].stride, 60);
        assert_eq!(
            &bufs[0][..170],
            &[seg(2, 1, 60), seg(2, 3, 60), seg(2, 4, 50)].concat()[..]
        );
        assert_eq!(meta[1].len, 60);
        assert_eq!(&bufs[1][..60], &seg(2, 7, 60)[..]);
        assert_eq!(r.counters.dropped_malformed.load(Ordering::Relaxed), 1);
        assert_eq!(
            r.counters.forwarded_to_predecessor.load(Ordering::Relaxed),
            3
        );
        rt.block_on(tokio::time::sleep(Duration::from_millis(20)));
        assert_eq!(
            drain_links(&pred),
            vec![seg(1, 2, 60), seg(1, 5, 60), seg(1, 6, 60)]
        );
    }
}
