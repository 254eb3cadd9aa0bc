//! Cluster MAC: the 16-byte BLAKE3 keyed-hash trailer, and the stamped
//! envelope every gossip datagram travels in.
//!
//! docs/PROTOCOL.md § "Cluster MAC" and § "Gossip envelope (v2)".
//!
//! **Raw trailer** ([`ClusterKey::seal`], [`ClusterKey::open`]): `body ‖
//! MAC`, `MAC = BLAKE3-keyed(cluster_key, body)[0..16]`. This is what gossip
//! version 1 sent; it carries no replay protection and is kept as a
//! primitive (and to recognise version-1 datagrams).
//!
//! **Gossip envelope v2** ([`ClusterKey::seal_gossip`],
//! [`ClusterKey::open_gossip`]): `frame ‖ padding ‖ stamp ‖ MAC`, where the
//! [`Stamp`] (27 bytes: version, padding length, sender, sender time in
//! unix ms, per-sender counter) is authenticated with the frame, and the MAC
//! is keyed with a key derived from the cluster key for version 2
//! ([`GOSSIP_KDF_CONTEXT`]). A version-1 datagram therefore never verifies
//! as version 2: [`ClusterKey::open_gossip`] tries the raw key only after
//! the v2 MAC failed, and reports a datagram that verifies under it as
//! [`Error::BadVersion`] `{ got: 1 }` — dropped and counted, never parsed.
//! Judging freshness (the time window) and replays (the counter) is the
//! receiver's engine's job; this module only carries the fields.
//!
//! 128 bits is ample for a per-datagram tag with a 256-bit key that never
//! leaves the cluster; comparisons are constant-time.

use crate::error::{Error, Result};
use crate::field::{u8_at, u16_at, u64_at};

/// Length of the MAC trailer.
pub const MAC_LEN: usize = 16;
/// The gossip envelope version this code speaks (the stamp's first byte).
pub const GOSSIP_VERSION: u8 = 2;
/// Length of the [`Stamp`].
pub const STAMP_LEN: usize = 27;
/// Bytes the v2 envelope adds to a frame without padding: stamp and MAC.
pub const GOSSIP_OVERHEAD: usize = STAMP_LEN + MAC_LEN;
/// Most padding one datagram may carry (the length travels in a `u16`).
pub const MAX_PADDING: usize = u16::MAX as usize;
/// BLAKE3 `derive_key` context of the version-2 MAC key.
pub const GOSSIP_KDF_CONTEXT: &str = "ricochet 2026-12 gossip datagram MAC v2";

/// Stamp fields, relative to the stamp's first byte.
mod stamp {
    use crate::field::Field;
    pub(super) const VERSION: usize = 0;
    pub(super) const PADDING: Field = 1..3;
    pub(super) const SENDER: Field = 3..11;
    pub(super) const TIME_MS: Field = 11..19;
    pub(super) const COUNTER: Field = 19..27;
}

const _: () = assert!(stamp::COUNTER.end == STAMP_LEN);

/// The authenticated header of a v2 gossip datagram (its fields besides
/// the version and the padding length).
///
/// `sender` names one sealing endpoint for one run (random per start and
/// per sealer: an engine, each worker's ACK path); `counter` increases by
/// one with every datagram that sealer seals, whatever its destination;
/// `time_ms` is the sealer's wall clock, unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The sealer's id for this run.
    pub sender: u64,
    /// The sealer's clock when sealing, unix ms.
    pub time_ms: u64,
    /// The sealer's datagram counter.
    pub counter: u64,
}

/// A v2 datagram whose MAC verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The gossip frame (padding, stamp and MAC removed).
    pub frame: &'a [u8],
    /// Its stamp.
    pub stamp: Stamp,
    /// Bytes of padding it carried.
    pub padding: usize,
}

/// A cluster key (32 bytes, from `--cluster-key-file`), with the key
/// derived from it for the v2 gossip MAC.
#[derive(Clone)]
pub struct ClusterKey {
    raw: [u8; 32],
    v2: [u8; 32],
}

impl core::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

impl ClusterKey {
    /// Wraps raw key bytes.
    pub fn new(key: [u8; 32]) -> Self {
        ClusterKey { raw: key, v2: blake3::derive_key(GOSSIP_KDF_CONTEXT, &key) }
    }

    /// The 16-byte raw tag of `body` (version 1; see the module docs).
    pub fn tag(&self, body: &[u8]) -> [u8; MAC_LEN] {
        truncate(blake3::keyed_hash(&self.raw, body))
    }

    /// Appends the raw tag of `buf[..body_len]` at `body_len`, returning the
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

    /// Verifies the raw trailer of a sealed datagram and returns the body.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8]> {
        let (body, tag) = split_tag(datagram)?;
        if equal(&self.tag(body), tag) { Ok(body) } else { Err(Error::BadMac) }
    }

    /// Seals a gossip frame held in `buf[..frame_len]` as a v2 datagram:
    /// writes `padding` zero bytes, the stamp and the v2 MAC after it and
    /// returns the datagram's length, `frame_len + padding + GOSSIP_OVERHEAD`.
    pub fn seal_gossip(
        &self,
        buf: &mut [u8],
        frame_len: usize,
        padding: usize,
        stamp: &Stamp,
    ) -> Result<usize> {
        if padding > MAX_PADDING {
            return Err(Error::TooLong { max: MAX_PADDING, got: padding });
        }
        let at = frame_len + padding;
        let total = at + GOSSIP_OVERHEAD;
        if buf.len() < total {
            return Err(Error::Truncated { needed: total, got: buf.len() });
        }
        buf[frame_len..at].fill(0);
        let s = &mut buf[at..at + STAMP_LEN];
        s[stamp::VERSION] = GOSSIP_VERSION;
        s[stamp::PADDING].copy_from_slice(&(padding as u16).to_be_bytes());
        s[stamp::SENDER].copy_from_slice(&stamp.sender.to_be_bytes());
        s[stamp::TIME_MS].copy_from_slice(&stamp.time_ms.to_be_bytes());
        s[stamp::COUNTER].copy_from_slice(&stamp.counter.to_be_bytes());
        let body = at + STAMP_LEN;
        let tag = self.tag_v2(&buf[..body]);
        buf[body..total].copy_from_slice(&tag);
        Ok(total)
    }

    /// [`ClusterKey::seal_gossip`] into a new buffer.
    pub fn seal_gossip_vec(&self, frame: &[u8], padding: usize, stamp: &Stamp) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; frame.len() + padding + GOSSIP_OVERHEAD];
        buf[..frame.len()].copy_from_slice(frame);
        self.seal_gossip(&mut buf, frame.len(), padding, stamp)?;
        Ok(buf)
    }

    /// Verifies a v2 gossip datagram and splits it into frame and stamp.
    ///
    /// Refusals, in the order they are checked: shorter than a MAC →
    /// [`Error::Truncated`]; the v2 MAC fails but the raw (version-1) MAC
    /// verifies → [`Error::BadVersion`] `{ got: 1 }`; both fail →
    /// [`Error::BadMac`]; shorter than a stamp → [`Error::Truncated`]; a
    /// stamp version other than [`GOSSIP_VERSION`] → [`Error::BadVersion`];
    /// a padding length beyond the bytes before the stamp →
    /// [`Error::LengthMismatch`]; a non-zero padding byte →
    /// [`Error::BadField`]`("gossip.padding")`.
    pub fn open_gossip<'a>(&self, datagram: &'a [u8]) -> Result<Opened<'a>> {
        let (body, tag) = split_tag(datagram)?;
        if !equal(&self.tag_v2(body), tag) {
            return Err(if equal(&self.tag(body), tag) {
                Error::BadVersion { got: 1 }
            } else {
                Error::BadMac
            });
        }
        let Some(at) = body.len().checked_sub(STAMP_LEN) else {
            return Err(Error::Truncated { needed: GOSSIP_OVERHEAD, got: datagram.len() });
        };
        let s = &body[at..];
        let version = u8_at(s, stamp::VERSION);
        if version != GOSSIP_VERSION {
            return Err(Error::BadVersion { got: u16::from(version) });
        }
        let padding = usize::from(u16_at(s, stamp::PADDING.start));
        let Some(frame_len) = at.checked_sub(padding) else {
            return Err(Error::LengthMismatch { declared: padding, actual: at });
        };
        if body[frame_len..at].iter().any(|&b| b != 0) {
            return Err(Error::BadField("gossip.padding"));
        }
        let stamp = Stamp {
            sender: u64_at(s, stamp::SENDER.start),
            time_ms: u64_at(s, stamp::TIME_MS.start),
            counter: u64_at(s, stamp::COUNTER.start),
        };
        Ok(Opened { frame: &body[..frame_len], stamp, padding })
    }

    fn tag_v2(&self, body: &[u8]) -> [u8; MAC_LEN] {
        truncate(blake3::keyed_hash(&self.v2, body))
    }
}

fn truncate(h: blake3::Hash) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&h.as_bytes()[..MAC_LEN]);
    out
}

fn split_tag(datagram: &[u8]) -> Result<(&[u8], &[u8])> {
    let Some(split) = datagram.len().checked_sub(MAC_LEN) else {
        return Err(Error::Truncated { needed: MAC_LEN, got: datagram.len() });
    };
    Ok(datagram.split_at(split))
}

/// Constant-time comparison of two tags.
fn equal(want: &[u8; MAC_LEN], got: &[u8]) -> bool {
    want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

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

    /// PROTOCOL.md § "Gossip envelope (v2)": the G2 vector of § "G2",
    /// sealed under key 32 × `4b` with no padding, sender
    /// `0x0102030405060708`, time 1767225600000 ms, counter 1.
    const V2_VECTOR: &str = "47320123456789abcdef0001 02 0000 0102030405060708 \
                             0000019b76daa800 0000000000000001 48ebb36a3f0d00ea3cf8efbf5e213ca2";

    fn vector_stamp() -> Stamp {
        Stamp { sender: 0x0102_0304_0506_0708, time_ms: 1_767_225_600_000, counter: 1 }
    }

    #[test]
    fn golden_vector_both_ways() {
        let k = ClusterKey::new([0x4B; 32]);
        let frame = hex("47320123456789abcdef0001");
        let want = hex(V2_VECTOR);
        let sealed = k.seal_gossip_vec(&frame, 0, &vector_stamp()).unwrap();
        assert_eq!(
            sealed,
            want,
            "emit: {}",
            sealed.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let o = k.open_gossip(&want).unwrap();
        assert_eq!((o.frame, o.stamp, o.padding), (&frame[..], vector_stamp(), 0));
    }

    #[test]
    fn version_1_datagrams_are_recognised_not_parsed() {
        let k = ClusterKey::new([0x4B; 32]);
        let frame = hex("47320123456789abcdef0001");
        let mut v1 = frame.clone();
        v1.resize(frame.len() + MAC_LEN, 0);
        k.seal(&mut v1, frame.len()).unwrap();
        assert_eq!(k.open_gossip(&v1), Err(Error::BadVersion { got: 1 }));
        // Under another key it is just a forgery.
        assert_eq!(ClusterKey::new([1; 32]).open_gossip(&v1), Err(Error::BadMac));
        // A v2 datagram does not open as v1.
        let v2 = k.seal_gossip_vec(&frame, 0, &vector_stamp()).unwrap();
        assert_eq!(k.open(&v2), Err(Error::BadMac));
    }

    #[test]
    fn stamp_refusals() {
        let k = ClusterKey::new([3; 32]);
        let reseal = |body: &[u8]| {
            let mut b = body.to_vec();
            b.extend([0u8; MAC_LEN]);
            let tag = k.tag_v2(body);
            let n = body.len();
            b[n..].copy_from_slice(&tag);
            b
        };
        assert!(matches!(k.open_gossip(&reseal(&[2; 10])), Err(Error::Truncated { .. })));
        let good = k.seal_gossip_vec(b"G2", 2, &vector_stamp()).unwrap();
        let body = &good[..good.len() - MAC_LEN];
        let mut v3 = body.to_vec();
        v3[4] = 3; // version byte (frame 2 + padding 2)
        assert_eq!(k.open_gossip(&reseal(&v3)), Err(Error::BadVersion { got: 3 }));
        let mut long_pad = body.to_vec();
        long_pad[5..7].copy_from_slice(&5u16.to_be_bytes());
        assert!(matches!(k.open_gossip(&reseal(&long_pad)), Err(Error::LengthMismatch { .. })));
        let mut dirty = body.to_vec();
        dirty[3] = 1;
        assert_eq!(k.open_gossip(&reseal(&dirty)), Err(Error::BadField("gossip.padding")));
        assert!(matches!(
            k.seal_gossip(&mut [0u8; 8], 2, 0, &vector_stamp()),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            k.seal_gossip_vec(b"", MAX_PADDING + 1, &vector_stamp()),
            Err(Error::TooLong { .. })
        ));
    }

    proptest! {
        /// The stamp codec round-trips every field and any padding.
        #[test]
        fn envelope_round_trips(
            frame in proptest::collection::vec(any::<u8>(), 0..200),
            padding in 0usize..300,
            sender: u64, time_ms: u64, counter: u64,
        ) {
            let k = ClusterKey::new([9; 32]);
            let stamp = Stamp { sender, time_ms, counter };
            let d = k.seal_gossip_vec(&frame, padding, &stamp).unwrap();
            prop_assert_eq!(d.len(), frame.len() + padding + GOSSIP_OVERHEAD);
            let o = k.open_gossip(&d).unwrap();
            prop_assert_eq!(o.frame, &frame[..]);
            prop_assert_eq!(o.stamp, stamp);
            prop_assert_eq!(o.padding, padding);
        }

        /// Flipping any bit of a sealed datagram makes it fail to open.
        #[test]
        fn any_flip_is_refused(
            frame in proptest::collection::vec(any::<u8>(), 0..64),
            counter: u64,
            at: prop::sample::Index,
            bit in 0u8..8,
        ) {
            let k = ClusterKey::new([9; 32]);
            let stamp = Stamp { sender: 1, time_ms: 2, counter };
            let mut d = k.seal_gossip_vec(&frame, 0, &stamp).unwrap();
            let i = at.index(d.len());
            d[i] ^= 1 << bit;
            prop_assert!(k.open_gossip(&d).is_err());
        }

        /// Arbitrary bytes never panic and never open.
        #[test]
        fn arbitrary_bytes_do_not_open(d in proptest::collection::vec(any::<u8>(), 0..128)) {
            prop_assert!(ClusterKey::new([9; 32]).open_gossip(&d).is_err());
        }
    }
}
