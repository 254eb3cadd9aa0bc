//! The persisted peer cache: good routing-table peers as bytes, so a
//! restarted node can bootstrap without configured seeds.
//!
//! # Format (version 1)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"RDPC"` |
//! | 4 | 1 | version, 1 |
//! | 5 | 2 | count `n` ≤ [`MAX_PEERS`] |
//! | 7 | 51·n | nodes: id (32), family u8 (4 or 6), address (16, IPv4-mapped for family 4), port u16 |
//!
//! Nodes use the DHT *node list* encoding of `docs/PROTOCOL.md` § "DHT".
//!
//! # Contract
//! - The caller owns the file (write it atomically, mode 0600); this module
//!   only converts. [`decode`] treats the bytes as untrusted: it checks the
//!   magic, version, count and exact length and every address, never
//!   panics, and allocates at most `n` nodes.
//! - A cached peer is only a bootstrap address: it is pinged and enters the
//!   routing table when it answers, under whatever id it answers with.

use core::net::{IpAddr, Ipv6Addr, SocketAddr};

use ricochet_wire::Error;
use ricochet_wire::dht::{FAMILY_V4, FAMILY_V6, ID_LEN, NODE_LEN, NodeInfo};

/// First bytes of a peer cache.
pub const MAGIC: [u8; 4] = *b"RDPC";
/// The format version written and read.
pub const VERSION: u8 = 1;
/// Most peers in one cache.
pub const MAX_PEERS: usize = 1024;
const HEADER_LEN: usize = 7;

/// Encodes up to [`MAX_PEERS`] peers (the rest are left out).
pub fn encode(peers: &[NodeInfo]) -> Vec<u8> {
    let peers = &peers[..peers.len().min(MAX_PEERS)];
    let mut out = Vec::with_capacity(HEADER_LEN + peers.len() * NODE_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(peers.len() as u16).to_be_bytes());
    for p in peers {
        out.extend_from_slice(&p.id);
        let (family, v6) = match p.addr.ip() {
            IpAddr::V4(v4) => (FAMILY_V4, v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => (FAMILY_V6, v6),
        };
        out.push(family);
        out.extend_from_slice(&v6.octets());
        out.extend_from_slice(&p.addr.port().to_be_bytes());
    }
    out
}

/// Decodes a peer cache written by [`encode`].
///
/// Errors: [`Error::Truncated`], [`Error::BadMagic`], [`Error::BadVersion`],
/// [`Error::TooLong`] for a count over [`MAX_PEERS`],
/// [`Error::LengthMismatch`] for trailing bytes, [`Error::BadField`]
/// (`"dht.family"`, `"dht.addr"`) for a bad address.
pub fn decode(bytes: &[u8]) -> Result<Vec<NodeInfo>, Error> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(Error::Truncated { needed: HEADER_LEN, got: bytes.len() });
    };
    if header[..4] != MAGIC {
        return Err(Error::BadMagic);
    }
    if header[4] != VERSION {
        return Err(Error::BadVersion { got: header[4].into() });
    }
    let count = usize::from(u16::from_be_bytes([header[5], header[6]]));
    if count > MAX_PEERS {
        return Err(Error::TooLong { max: MAX_PEERS, got: count });
    }
    let expected = HEADER_LEN + count * NODE_LEN;
    if bytes.len() < expected {
        return Err(Error::Truncated { needed: expected, got: bytes.len() });
    }
    if bytes.len() > expected {
        return Err(Error::LengthMismatch { declared: expected, actual: bytes.len() });
    }
    body.chunks_exact(NODE_LEN).map(decode_node).collect()
}

fn decode_node(chunk: &[u8]) -> Result<NodeInfo, Error> {
    let truncated = Error::Truncated { needed: NODE_LEN, got: chunk.len() };
    let (id, rest) = chunk.split_first_chunk::<ID_LEN>().ok_or(truncated)?;
    let (&family, rest) = rest.split_first().ok_or(truncated)?;
    let (addr, rest) = rest.split_first_chunk::<16>().ok_or(truncated)?;
    let port = rest.first_chunk::<2>().ok_or(truncated)?;
    let v6 = Ipv6Addr::from(*addr);
    let ip = match family {
        FAMILY_V4 => IpAddr::V4(v6.to_ipv4_mapped().ok_or(Error::BadField("dht.addr"))?),
        FAMILY_V6 => IpAddr::V6(v6),
        _ => return Err(Error::BadField("dht.family")),
    };
    Ok(NodeInfo { id: *id, addr: SocketAddr::new(ip, u16::from_be_bytes(*port)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<NodeInfo> {
        vec![
            NodeInfo { id: [1; 32], addr: "192.0.2.1:9320".parse().unwrap() },
            NodeInfo { id: [2; 32], addr: "[2001:db8::2]:9320".parse().unwrap() },
        ]
    }

    #[test]
    fn round_trip_and_refusals() {
        let bytes = encode(&peers());
        assert_eq!(bytes.len(), 7 + 2 * 51);
        assert_eq!(decode(&bytes).unwrap(), peers());
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
        for len in 0..bytes.len() {
            assert!(matches!(decode(&bytes[..len]), Err(Error::Truncated { .. })), "len {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(Error::LengthMismatch { .. })));
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(decode(&b), Err(Error::BadMagic));
        let mut b = bytes.clone();
        b[4] = 2;
        assert_eq!(decode(&b), Err(Error::BadVersion { got: 2 }));
        let mut b = bytes.clone();
        b[5..7].copy_from_slice(&1025u16.to_be_bytes());
        assert_eq!(decode(&b), Err(Error::TooLong { max: 1024, got: 1025 }));
        let mut b = bytes.clone();
        b[7 + 32] = 5;
        assert_eq!(decode(&b), Err(Error::BadField("dht.family")));
        let mut b = bytes.clone();
        b[7 + 33] = 1;
        assert_eq!(decode(&b), Err(Error::BadField("dht.addr")));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = crate::dht::rng::Rng::seed_from_u64(77);
        let good = encode(&peers());
        for _ in 0..2000 {
            let mut b = good.clone();
            let n = rng.index(4) + 1;
            for _ in 0..n {
                let i = rng.index(b.len());
                b[i] = rng.next_u64() as u8;
            }
            b.truncate(rng.index(b.len() + 1));
            let _ = decode(&b);
        }
    }
}
