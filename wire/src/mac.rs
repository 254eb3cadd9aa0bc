//! Cluster MAC trailer: 16 bytes of BLAKE3 keyed hash over a control datagram.
//!
//! docs/PROTOCOL.md § "Cluster MAC". Gossip (and any cluster-internal control
//! datagram) is sent as `body ‖ MAC`, where `MAC = BLAKE3-keyed(cluster_key,
//! body)[0..16]`. A receiver strips and verifies the trailer before parsing
//! the body; comparison is constant-time. 128 bits is ample for a per-datagram
//! tag with a 256-bit key that never leaves the cluster.

use crate::error::{Error, Result};

/// Length of the MAC trailer.
pub const MAC_LEN: usize = 16;

/// A cluster key (32 bytes, from `--cluster-key-file`).
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl core::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

impl ClusterKey {
    /// Wraps raw key bytes.
    pub const fn new(key: [u8; 32]) -> Self {
        ClusterKey(key)
    }

    /// The 16-byte tag of `body`.
    pub fn tag(&self, body: &[u8]) -> [u8; MAC_LEN] {
        let h = blake3::keyed_hash(&self.0, body);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&h.as_bytes()[..MAC_LEN]);
        out
    }

    /// Appends the tag of `buf[..body_len]` at `body_len`, returning the
    /// sealed length.
    pub fn seal(&self, buf: &mut [u8], body_len: usize) -> Result<usize> {
        let total = body_len + MAC_LEN;
        if buf.len() < total {
            return Err(Error::Truncated { needed: total, got: buf.len() });
        }
        let tag = self.tag(&buf[..body_len]);
        buf[body_len..total].copy_from_slice(&tag);
        Ok(total)
    }

    /// Verifies the trailer of a sealed datagram and returns the body.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8]> {
        let Some(split) = datagram.len().checked_sub(MAC_LEN) else {
            return Err(Error::Truncated { needed: MAC_LEN, got: datagram.len() });
        };
        let (body, tag) = datagram.split_at(split);
        let want = self.tag(body);
        let diff = want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 { Ok(body) } else { Err(Error::BadMac) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let k = ClusterKey::new([7; 32]);
        let mut buf = [0u8; 40];
        buf[..24].copy_from_slice(b"twenty-four bytes body!!");
        let n = k.seal(&mut buf, 24).unwrap();
        assert_eq!(n, 40);
        assert_eq!(k.open(&buf[..n]), Ok(&buf[..24]));
        let mut bad = buf;
        bad[3] ^= 1;
        assert_eq!(k.open(&bad), Err(Error::BadMac));
        assert_eq!(ClusterKey::new([8; 32]).open(&buf), Err(Error::BadMac));
        assert!(matches!(k.open(&buf[..15]), Err(Error::Truncated { .. })));
        assert_eq!(format!("{k:?}"), "ClusterKey(<redacted>)");
    }
}
