//! Node ids, DHT keys and the XOR metric.
//!
//! # Contract
//! - A [`NodeId`] is 32 bytes; a node's id is `BLAKE3(ed25519 public key)`
//!   ([`NodeId::from_public_key`]). DHT keys live in the same space.
//! - [`Distance`] orders exactly as the 256-bit big-endian integer
//!   `a XOR b`, so sorting by `Distance` sorts by closeness.
//! - Bucket `i` of a node holds the ids whose distance from it has its
//!   highest set bit at position `i` (0 = nearest, 255 = the far half of
//!   the space); an id has no bucket relative to itself.

use core::fmt;

use ricochet_wire::record;

use super::rng::Rng;

/// Bits in an id; also the number of k-buckets.
pub const ID_BITS: usize = 256;

/// A 256-bit node id or DHT key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The id of the node holding `public_key`: `BLAKE3(public_key)`.
    pub fn from_public_key(public_key: &[u8; 32]) -> Self {
        NodeId(record::node_id(public_key))
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `self XOR other` as an ordered distance.
    pub fn distance(&self, other: &NodeId) -> Distance {
        Distance::between(&self.words(), &other.words())
    }

    /// The id as four big-endian 64-bit words, most significant first
    /// (cache it where one id is compared against many).
    pub const fn words(&self) -> [u64; 4] {
        // Destructuring avoids 32 bounds checks, which debug builds (the
        // simulation) pay for on every candidate of every lookup.
        let [
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            b0,
            b1,
            b2,
            b3,
            b4,
            b5,
            b6,
            b7,
            c0,
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
            d0,
            d1,
            d2,
            d3,
            d4,
            d5,
            d6,
            d7,
        ] = self.0;
        [
            u64::from_be_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
            u64::from_be_bytes([c0, c1, c2, c3, c4, c5, c6, c7]),
            u64::from_be_bytes([d0, d1, d2, d3, d4, d5, d6, d7]),
        ]
    }

    /// A uniformly random id whose distance from `self` falls in bucket
    /// `bucket` (highest differing bit at position `bucket`, < 256).
    pub fn random_in_bucket(&self, bucket: usize, rng: &mut Rng) -> NodeId {
        let bucket = bucket.min(ID_BITS - 1);
        let mut d = [rng.next_u64(), rng.next_u64(), rng.next_u64(), rng.next_u64()];
        // Word 0 holds bits 255..192; bit `bucket` is in word 3 - bucket / 64.
        let word = 3 - bucket / 64;
        let bit = bucket % 64;
        for w in d.iter_mut().take(word) {
            *w = 0;
        }
        let keep = if bit == 63 { u64::MAX } else { (1u64 << (bit + 1)) - 1 };
        d[word] = (d[word] & keep) | (1u64 << bit);
        let mut out = self.0;
        for (i, w) in d.iter().enumerate() {
            for (o, b) in out[i * 8..i * 8 + 8].iter_mut().zip(w.to_be_bytes()) {
                *o ^= b;
            }
        }
        NodeId(out)
    }

    /// A uniformly random id.
    pub fn random(rng: &mut Rng) -> NodeId {
        let mut id = [0u8; 32];
        rng.fill(&mut id);
        NodeId(id)
    }
}

impl From<[u8; 32]> for NodeId {
    fn from(bytes: [u8; 32]) -> Self {
        NodeId(bytes)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeId(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…)")
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The XOR distance between two ids, as four big-endian 64-bit words
/// (most significant first), ordered as the 256-bit integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Distance(pub [u64; 4]);

impl Ord for Distance {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        let (a, b) = (&self.0, &other.0);
        if a[0] != b[0] {
            a[0].cmp(&b[0])
        } else if a[1] != b[1] {
            a[1].cmp(&b[1])
        } else if a[2] != b[2] {
            a[2].cmp(&b[2])
        } else {
            a[3].cmp(&b[3])
        }
    }
}

impl PartialOrd for Distance {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Distance {
    /// The largest distance.
    pub const MAX: Distance = Distance([u64::MAX; 4]);

    /// The distance between two ids given as [`NodeId::words`].
    pub const fn between(a: &[u64; 4], b: &[u64; 4]) -> Distance {
        Distance([a[0] ^ b[0], a[1] ^ b[1], a[2] ^ b[2], a[3] ^ b[3]])
    }

    /// Number of leading zero bits (256 for a zero distance).
    pub fn leading_zeros(&self) -> u32 {
        let mut n = 0;
        for w in self.0 {
            if w != 0 {
                return n + w.leading_zeros();
            }
            n += 64;
        }
        n
    }

    /// The k-bucket this distance falls in: the position of its highest set
    /// bit, or `None` for a zero distance.
    pub fn bucket(&self) -> Option<usize> {
        let lz = self.leading_zeros() as usize;
        (lz < ID_BITS).then(|| ID_BITS - 1 - lz)
    }

    /// The distance as a fraction of the id space, in `[0, 1)` (the top
    /// 128 bits are used; that resolves networks far beyond 2^60 nodes).
    pub fn as_fraction(&self) -> f64 {
        const TWO_64: f64 = 18_446_744_073_709_551_616.0;
        self.0[0] as f64 / TWO_64 + self.0[1] as f64 / (TWO_64 * TWO_64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte0: u8, last: u8) -> NodeId {
        let mut b = [0u8; 32];
        b[0] = byte0;
        b[31] = last;
        NodeId(b)
    }

    #[test]
    fn distance_orders_like_integers() {
        let zero = NodeId::default();
        assert_eq!(zero.distance(&zero), Distance::default());
        assert_eq!(zero.distance(&zero).bucket(), None);
        assert_eq!(zero.distance(&id(0, 1)).bucket(), Some(0));
        assert_eq!(zero.distance(&id(0x80, 0)).bucket(), Some(255));
        assert_eq!(zero.distance(&id(0x01, 0)).bucket(), Some(248));
        assert!(zero.distance(&id(0, 0xFF)) < zero.distance(&id(1, 0)));
        let a = id(0xAA, 3);
        assert_eq!(a.distance(&id(0xAB, 3)), zero.distance(&id(1, 0)));
        assert_eq!(Distance::MAX.leading_zeros(), 0);
        let mut rng = Rng::seed_from_u64(4);
        for _ in 0..200 {
            let (x, y, t) =
                (NodeId::random(&mut rng), NodeId::random(&mut rng), NodeId::random(&mut rng));
            let (dx, dy) = (x.distance(&t), y.distance(&t));
            let xor = |n: &NodeId| -> [u8; 32] { core::array::from_fn(|i| n.0[i] ^ t.0[i]) };
            assert_eq!(dx.cmp(&dy), xor(&x).cmp(&xor(&y)));
            assert_eq!(dx.0[0].to_be_bytes(), xor(&x)[..8]);
        }
        assert!((zero.distance(&id(0x80, 0)).as_fraction() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn random_in_bucket_lands_in_the_bucket() {
        let mut rng = Rng::seed_from_u64(9);
        let own = NodeId::random(&mut rng);
        for bucket in [0, 1, 7, 63, 64, 65, 127, 128, 191, 192, 200, 254, 255] {
            for _ in 0..20 {
                let t = own.random_in_bucket(bucket, &mut rng);
                assert_eq!(own.distance(&t).bucket(), Some(bucket), "bucket {bucket}");
            }
        }
    }

    #[test]
    fn id_of_public_key_is_blake3() {
        let pk = [7u8; 32];
        assert_eq!(NodeId::from_public_key(&pk).0, record::node_id(&pk));
        assert_eq!(format!("{}", NodeId([0xAB; 32])).len(), 64);
        assert_eq!(format!("{:?}", NodeId([0xAB; 32])), "NodeId(abababababab…)");
    }
}
