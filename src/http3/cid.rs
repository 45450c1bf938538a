//! Connection IDs that name the generation owning them, and the little of
//! a QUIC packet header the router reads to find one.
//!
//! Every connection ID this server issues (quinn asks
//! [`TaggedCids`] for each) is [`CID_LEN`] bytes:
//!
//! | bytes   | what                                                        |
//! |---------|-------------------------------------------------------------|
//! | 0       | the generation's tag (its number modulo 256)                |
//! | 1..8    | 7 random bytes (the system's CSPRNG)                        |
//! | 8..12   | FNV-1a (32-bit) of bytes 0..8, big-endian: the check        |
//!
//! The check is not a secret (anyone may forge a CID that passes it, as
//! anyone may forge a tag): it tells *our* CIDs from the random
//! destination IDs that clients choose for their first Initial packets,
//! which the router must never mistake for a generation's. A client's
//! 12-byte random DCID passes it with probability 2⁻³², so a new
//! connection is (almost) never sent to an old generation by chance, and
//! junk is counted as malformed rather than as a generation that is gone.
//!
//! Tags repeat after 256 reloads; only the live generations (two, three
//! during quick reloads) need distinct tags. The tag is the same in every
//! CID of a generation, so an observer learns which generation serves a
//! connection, and nothing about which connection (as in QUIC-LB's
//! plaintext mode); the other 11 bytes have 56 bits of entropy.

use std::time::Duration;

use quinn::ConnectionIdGenerator;

/// The length of every connection ID an [`Http3Listener`](super::Http3Listener) issues: a
/// generation tag, 7 random bytes and a 4-byte check (FNV-1a of the first 8).
pub(crate) const CID_LEN: usize = 12;
const RANDOM_LEN: usize = 7;
const CHECKED_LEN: usize = 1 + RANDOM_LEN;

/// The smallest short-header packet worth routing: the first byte, the
/// DCID, and the 20 bytes of packet number and sample that header
/// protection needs (quinn drops anything shorter anyway).
const MIN_SHORT: usize = 1 + CID_LEN + 20;

/// FNV-1a, 32 bits: stable across builds and Rust versions (two
/// generations may be different binaries), cheap, public.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The connection ID with `tag` and these random bytes.
pub(crate) fn compose(tag: u8, random: [u8; RANDOM_LEN]) -> [u8; CID_LEN] {
    let mut cid = [0u8; CID_LEN];
    cid[0] = tag;
    cid[1..CHECKED_LEN].copy_from_slice(&random);
    let check = fnv1a(&cid[..CHECKED_LEN]).to_be_bytes();
    cid[CHECKED_LEN..].copy_from_slice(&check);
    cid
}

/// The tag of `cid` if it is one of ours (the right length, the check
/// right), `None` for anything else.
pub(crate) fn tag_of(cid: &[u8]) -> Option<u8> {
    if cid.len() != CID_LEN {
        return None;
    }
    let check = u32::from_be_bytes(cid[CHECKED_LEN..].try_into().ok()?);
    (fnv1a(&cid[..CHECKED_LEN]) == check).then_some(cid[0])
}

/// quinn's source of connection IDs for one generation.
#[derive(Debug)]
pub(crate) struct TaggedCids {
    tag: u8,
    rng: ring::rand::SystemRandom,
}

impl TaggedCids {
    pub(crate) fn new(tag: u8) -> Self {
        TaggedCids {
            tag,
            rng: ring::rand::SystemRandom::new(),
        }
    }
}

impl ConnectionIdGenerator for TaggedCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom;
        let mut random = [0u8; RANDOM_LEN];
        if self.rng.fill(&mut random).is_err() {
            // The system's generator failed (it does not, short of a broken
            // kernel). A predictable CID is still routed right; quinn
            // checks each new one against those in use and asks again.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            random.copy_from_slice(&nanos.to_le_bytes()[..RANDOM_LEN]);
        }
        quinn::ConnectionId::new(&compose(self.tag, random))
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// What kind of packet a datagram starts with, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 1-RTT: the DCID is always one the server issued.
    Short,
    /// The client's Initial: its DCID is either one it chose at random (its
    /// first flight) or the server's (once it has heard from the server).
    Initial,
    /// 0-RTT: always the client's first-flight DCID.
    ZeroRtt,
    /// Handshake: always the server's DCID.
    Handshake,
    /// A long header of a version we do not speak: the newest generation's
    /// quinn answers it with version negotiation.
    OtherVersion,
}

/// The first packet of a datagram: its kind and destination connection ID
/// (packets coalesced after it must share the DCID, RFC 9000 §12.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packet<'a> {
    pub(crate) kind: Kind,
    pub(crate) dcid: &'a [u8],
}

/// QUIC v1 and the drafts quinn still speaks (29 to 34) share v1's long
/// header types.
fn v1_like(version: u32) -> bool {
    version == 1 || (0xff00_001d..=0xff00_0022).contains(&version)
}

/// Reads the header of `datagram`; `None` if it is no client packet we
/// can route (truncated, a length out of range, a version negotiation or
/// Retry packet, which only servers send).
pub(crate) fn parse(datagram: &[u8]) -> Option<Packet<'_>> {
    let first = *datagram.first()?;
    if first & 0x80 == 0 {
        // Short header: the DCID has our length, the only one we issue.
        // (The fixed bit 0x40 is not checked: it may be greased, RFC 9287.)
        if datagram.len() < MIN_SHORT {
            return None;
        }
        return Some(Packet {
            kind: Kind::Short,
            dcid: &datagram[1..1 + CID_LEN],
        });
    }
    let version = u32::from_be_bytes(datagram.get(1..5)?.try_into().ok()?);
    if version == 0 {
        return None;
    }
    let dcid_len = usize::from(*datagram.get(5)?);
    let dcid = datagram.get(6..6 + dcid_len)?;
    if !v1_like(version) {
        return Some(Packet {
            kind: Kind::OtherVersion,
            dcid,
        });
    }
    let scid_len = usize::from(*datagram.get(6 + dcid_len)?);
    if dcid_len > 20 || scid_len > 20 || datagram.len() < 7 + dcid_len + scid_len {
        return None;
    }
    let kind = match (first >> 4) & 0b11 {
        0 => Kind::Initial,
        1 => Kind::ZeroRtt,
        2 => Kind::Handshake,
        _ => return None, // Retry: servers only
    };
    Some(Packet { kind, dcid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cid_carries_its_tag_and_a_check_that_random_bytes_fail() {
        let mut gen = TaggedCids::new(7);
        let cid = gen.generate_cid();
        assert_eq!(cid.len(), CID_LEN);
        assert_eq!(tag_of(&cid), Some(7));
        // One flipped bit anywhere spoils the check.
        for i in 0..CID_LEN {
            let mut bad = cid.to_vec();
            bad[i] ^= 0x10;
            assert_eq!(tag_of(&bad), None, "byte {i}");
        }
        assert_eq!(tag_of(&cid[..CID_LEN - 1]), None);
        // The documented layout, computed by hand.
        let c = compose(0xab, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(&c[..8], &[0xab, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            u32::from_be_bytes(c[8..].try_into().unwrap()),
            fnv1a(&c[..8])
        );
    }

    fn long(first: u8, version: u32, dcid: &[u8], scid: &[u8], rest: usize) -> Vec<u8> {
        let mut p = vec![first];
        p.extend_from_slice(&version.to_be_bytes());
        p.push(dcid.len() as u8);
        p.extend_from_slice(dcid);
        p.push(scid.len() as u8);
        p.extend_from_slice(scid);
        p.resize(p.len() + rest, 0);
        p
    }

    #[test]
    fn headers_are_read_and_truncated_ones_refused() {
        let cid = compose(3, [9; 7]);
        let mut short = vec![0x40];
        short.extend_from_slice(&cid);
        short.resize(MIN_SHORT, 0);
        assert_eq!(
            parse(&short),
            Some(Packet {
                kind: Kind::Short,
                dcid: &cid
            })
        );
        assert_eq!(parse(&short[..MIN_SHORT - 1]), None);
        assert_eq!(parse(&[]), None);

        let initial = long(0xc0, 1, &[5; 8], &[6; 8], 1200);
        assert_eq!(parse(&initial).unwrap().kind, Kind::Initial);
        assert_eq!(parse(&initial).unwrap().dcid, &[5; 8]);
        assert_eq!(
            parse(&long(0xd0, 1, &[5; 8], &[], 30)).unwrap().kind,
            Kind::ZeroRtt
        );
        assert_eq!(
            parse(&long(0xe0, 1, &cid, &[], 30)).unwrap().kind,
            Kind::Handshake
        );
        assert_eq!(parse(&long(0xf0, 1, &cid, &[], 30)), None); // Retry
        assert_eq!(parse(&long(0xc0, 0, &cid, &[], 30)), None); // VN
        assert_eq!(
            parse(&long(0xc0, 0x1a2a_3a4a, &[1; 40], &[], 0))
                .unwrap()
                .kind,
            Kind::OtherVersion
        );
        // A DCID longer than v1 allows, lengths past the end.
        assert_eq!(parse(&long(0xc0, 1, &[1; 21], &[], 30)), None);
        let cut = long(0xc0, 1, &[5; 8], &[6; 8], 0);
        for n in 0..cut.len() {
            assert_eq!(parse(&cut[..n]), None, "{n} bytes");
        }
    }
}
