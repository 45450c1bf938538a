//! What travels between two generations over their socket pair: one
//! message per datagram (a `SOCK_DGRAM` pair keeps the boundaries).
//!
//! | byte  | what                                                         |
//! |-------|--------------------------------------------------------------|
//! | 0     | [`VERSION`]                                                  |
//! | 1     | the kind: 1 a datagram, 2 routes, 3 a claim                  |
//!
//! A datagram (a QUIC datagram read from the shared socket by one
//! generation, for the other):
//!
//! | bytes  | what                                                        |
//! |--------|-------------------------------------------------------------|
//! | 2      | ECN bits as received (0 none, 1 ECT(1), 2 ECT(0), 3 CE)     |
//! | 3      | flags: 1 the client's address is IPv6, 2 a local address follows, 4 it is IPv6 |
//! | 4..6   | the client's port, big-endian                               |
//! | 6..22  | the client's IP address (IPv4 in the first 4 bytes)         |
//! | 22..38 | the local (destination) IP address, if flag 2               |
//! | 38..   | the datagram, as received                                   |
//!
//! Routes (`2, n, tag × n`): the generation tags whose packets the sender
//! wants; a predecessor lists its own and those behind it, a successor its
//! own; an empty list says "I am gone".
//!
//! A claim (`3, n, dcid × n bytes`): a client-chosen destination CID of a
//! handshake the sender started, whose further Initial and 0-RTT packets
//! belong to it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use quinn::udp::EcnCodepoint;

/// The protocol's version: a generation drops (and counts) messages of
/// another, so two binaries that disagree lose packets rather than
/// misread them.
pub(crate) const VERSION: u8 = 1;
const DATAGRAM: u8 = 1;
const ROUTES: u8 = 2;
const CLAIM: u8 = 3;
/// The header of a forwarded datagram.
pub(crate) const HEADER: usize = 38;

const PEER_V6: u8 = 1;
const HAS_DST: u8 = 2;
const DST_V6: u8 = 4;

/// A message read from the pair.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    Datagram(Forwarded, &'a [u8]),
    Routes(&'a [u8]),
    Claim(&'a [u8]),
}

/// Where a forwarded datagram came from and went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forwarded {
    pub(crate) peer: SocketAddr,
    pub(crate) dst_ip: Option<IpAddr>,
    pub(crate) ecn: Option<EcnCodepoint>,
}

fn put_ip(out: &mut [u8], ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            false
        }
        IpAddr::V6(v6) => {
            out[..16].copy_from_slice(&v6.octets());
            true
        }
    }
}

fn get_ip(bytes: &[u8], v6: bool) -> IpAddr {
    let mut b16 = [0u8; 16];
    b16.copy_from_slice(&bytes[..16]);
    if v6 {
        IpAddr::V6(Ipv6Addr::from(b16))
    } else {
        IpAddr::V4(Ipv4Addr::new(b16[0], b16[1], b16[2], b16[3]))
    }
}

/// Writes a forwarded datagram into `out` (cleared first).
pub(crate) fn datagram(out: &mut Vec<u8>, from: &Forwarded, payload: &[u8]) {
    out.clear();
    out.resize(HEADER, 0);
    out[0] = VERSION;
    out[1] = DATAGRAM;
    out[2] = from.ecn.map_or(0, |e| e as u8);
    let mut flags = 0;
    if put_ip(&mut out[6..22], from.peer.ip()) {
        flags |= PEER_V6;
    }
    out[4..6].copy_from_slice(&from.peer.port().to_be_bytes());
    if let Some(dst) = from.dst_ip {
        flags |= HAS_DST;
        if put_ip(&mut out[22..38], dst) {
            flags |= DST_V6;
        }
    }
    out[3] = flags;
    out.extend_from_slice(payload);
}

/// A routes message listing `tags`.
pub(crate) fn routes(tags: &[u8]) -> Vec<u8> {
    let mut out = vec![VERSION, ROUTES, tags.len().min(255) as u8];
    out.extend_from_slice(&tags[..tags.len().min(255)]);
    out
}

/// A claim of `dcid` (at most 255 bytes; QUIC's are at most 20).
pub(crate) fn claim(dcid: &[u8]) -> Vec<u8> {
    let mut out = vec![VERSION, CLAIM, dcid.len().min(255) as u8];
    out.extend_from_slice(&dcid[..dcid.len().min(255)]);
    out
}

/// Reads a message; `None` for anything malformed or of another version.
pub(crate) fn parse(msg: &[u8]) -> Option<Message<'_>> {
    if *msg.first()? != VERSION {
        return None;
    }
    match *msg.get(1)? {
        DATAGRAM => {
            if msg.len() < HEADER {
                return None;
            }
            let flags = msg[3];
            let port = u16::from_be_bytes([msg[4], msg[5]]);
            let peer = SocketAddr::new(get_ip(&msg[6..22], flags & PEER_V6 != 0), port);
            let dst_ip = (flags & HAS_DST != 0).then(|| get_ip(&msg[22..38], flags & DST_V6 != 0));
            let ecn = EcnCodepoint::from_bits(msg[2]);
            Some(Message::Datagram(
                Forwarded { peer, dst_ip, ecn },
                &msg[HEADER..],
            ))
        }
        kind @ (ROUTES | CLAIM) => {
            let n = usize::from(*msg.get(2)?);
            let list = msg.get(3..3 + n)?;
            if msg.len() != 3 + n {
                return None;
            }
            Some(if kind == ROUTES {
                Message::Routes(list)
            } else {
                Message::Claim(list)
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let mut buf = Vec::new();
        for (peer, dst) in [
            ("127.0.0.1:443", Some("127.0.0.2")),
            ("[2001:db8::1]:9", Some("::1")),
            ("[::1]:1", None),
            ("10.1.2.3:65535", Some("2001:db8::2")),
        ] {
            let from = Forwarded {
                peer: peer.parse().unwrap(),
                dst_ip: dst.map(|d| d.parse().unwrap()),
                ecn: Some(EcnCodepoint::Ce),
            };
            datagram(&mut buf, &from, b"quic");
            assert_eq!(parse(&buf), Some(Message::Datagram(from, b"quic")));
        }
        assert_eq!(parse(&routes(&[1, 2])), Some(Message::Routes(&[1, 2])));
        assert_eq!(parse(&routes(&[])), Some(Message::Routes(&[])));
        assert_eq!(parse(&claim(&[9; 8])), Some(Message::Claim(&[9; 8])));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let mut buf = Vec::new();
        let from = Forwarded {
            peer: "127.0.0.1:1".parse().unwrap(),
            dst_ip: None,
            ecn: None,
        };
        datagram(&mut buf, &from, b"");
        for n in 0..HEADER {
            assert_eq!(parse(&buf[..n]), None, "{n} bytes");
        }
        buf[0] = VERSION + 1;
        assert_eq!(parse(&buf), None);
        assert_eq!(parse(&[VERSION, 9]), None);
        assert_eq!(parse(&[VERSION, ROUTES, 3, 1]), None);
        assert_eq!(parse(&[VERSION, CLAIM, 1, 1, 1]), None);
    }
}
