//! The sans-IO retry core: cache shard, NACK rate limits, NACK service.
//!
//! # Contract
//! - No sockets, no threads, no clock reads. Time enters as a
//!   `now: std::time::Instant` argument to every call that needs it, and every
//!   decision is a pure function of the inputs and `now`; the only hidden
//!   input is the per-instance hash seed, which changes where entries sit in
//!   a hash table but never what any call returns. (One bounded exception:
//!   in [`SharedLimits`] the seed decides which keys share a cell set, which
//!   matters only past a set's capacity or on a 16-bit tag collision; see
//!   [`shared_limit`]. [`SharedLimits::with_seed`] fixes it for simulations.)
//! - One instance per worker core (a shard). Everything here is `Send` and
//!   owned by exactly one thread, so nothing takes a lock — except
//!   [`SharedLimits`], the endpoint-wide rate-limit tables every shard's
//!   limiter holds an `Arc` of, whose cells are atomics updated by
//!   compare-exchange (no lock either).
//! - Inputs are `(source, bytes)`; outputs are pushed into a caller-owned
//!   [`service::Outbox`] that the caller drains and reuses, so answering a
//!   NACK allocates nothing once the outbox and the tables have warmed up.
//!
//! # Modules
//! - [`allow`]: the downstream endpoints whose Proxied NACKs are honoured.
//! - [`cache`]: per-flow append-only logs of whole datagrams with TTLs per
//!   frame class, global key and byte budgets, and flow epochs that stop a
//!   restarted proxy's reused HashKey from being served stale frames.
//! - [`limit`]: the reference endpoint's four NACK rate-limit tiers in
//!   bounded memory, per endpoint whatever the number of shards.
//! - [`shared_limit`]: the fixed-size lock-free tables behind the tiers
//!   whose key does not decide the shard (IP, sequence, group).
//! - [`claims`]: time-boxed claims, the local half of retransmit and
//!   upstream-fetch dedup.
//! - [`recover`]: cross-domain recovery from upstream endpoints.
//! - [`service`]: the NACK state machine that ties the two together and
//!   decides what goes back on the wire.
//!
//! # Hashing
//! The tables here are keyed by HashKeys (XXH64 outputs, already uniform),
//! source addresses, sequence numbers and group indices. All of them use
//! `SeededState`, a keyed folded-multiply hasher whose random seed is drawn
//! once per table from std's `RandomState`:
//! - For HashKeys a bare multiply would do, because the key is already a
//!   uniform 64-bit hash and the fold only has to spread it over the table.
//! - Source addresses, StartSeqs and (source, HashKey) pairs are chosen by
//!   whoever sends NACKs, so an unkeyed hash would let a sender pick keys that
//!   all land in one probe sequence. The secret seed enters both operands of
//!   the multiply, so colliding keys cannot be chosen without it; foldhash
//!   and ahash's fallback are built on the same construction. Every table is
//!   also capped in size, which bounds the damage of any collision attack
//!   that does succeed. A map keyed by untrusted input must not use an
//!   unseeded hasher; keep std's SipHash there if in doubt.

#![warn(missing_docs)]

pub mod allow;
pub mod cache;
pub mod claims;
pub mod effects;
pub mod limit;
pub mod recover;
pub mod service;
pub mod shared_limit;
pub mod siblings;

pub use allow::{Prefix, PrefixError, ProxyAllow};
pub use cache::{Cache, CacheSettings, CacheStats, TtlClass, Ttls};
pub use claims::Claims;
pub use limit::{LimitSettings, Limiter, Tier};
pub use recover::{ClaimResult, Enqueued, Recovered, Recovery, RecoverySettings, RecoveryStats};
pub use service::{
    AMPLIFICATION_FACTOR, Budget, Dest, Effect, FrameOutcome, Lookup, NackEffects, Outbox, Payload,
    PendingMulticast, Service, Settings, Stats, Transmit,
};
pub use shared_limit::SharedLimits;
pub use siblings::{Holding, Sibling, Siblings};

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A per-table random key for [`FoldHasher`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeededState {
    k0: u64,
    k1: u64,
}

impl SeededState {
    /// Draws a fresh key from std's per-thread random state (which reads the
    /// OS's randomness once per thread, as `HashMap::new` does).
    pub(crate) fn random() -> Self {
        let rs = RandomState::new();
        SeededState { k0: rs.hash_one(0x5EED_0001_u64), k1: rs.hash_one(0x5EED_0002_u64) | 1 }
    }

    /// A key derived from `seed` (SplitMix64), for deterministic
    /// simulations and tests.
    pub(crate) fn from_seed(seed: u64) -> Self {
        let k0 = splitmix64(seed);
        SeededState { k0, k1: splitmix64(k0) | 1 }
    }
}

impl BuildHasher for SeededState {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher { acc: self.k0, mul: self.k1 }
    }
}

/// Folded-multiply hasher for small fixed-size keys: one keyed 64×64→128
/// multiply per word, high and low halves xored, and one unkeyed fold to
/// finish. The finishing fold matters: after a single fold the low output
/// bits (where hashbrown picks the bucket) depend on the key's high bits
/// only through the product's high half, and for a multiplier with trailing
/// zero bits in its upper half that spreads keys differing only in their
/// high bits over too few buckets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FoldHasher {
    acc: u64,
    mul: u64,
}

/// An odd constant with well-spread bits (2^64 / φ).
const FINISH: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective 64-bit mixer.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FoldHasher {
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.acc = fold(self.acc ^ x, self.mul);
    }

    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_u16(&mut self, x: u16) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    #[inline]
    fn write_u128(&mut self, x: u128) {
        self.write_u64(x as u64);
        self.write_u64((x >> 64) as u64);
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        // The length goes in the top byte so "ab" and "ab\0" differ.
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        self.write_u64(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold(self.acc, FINISH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_hasher_spreads_low_bit_collisions() {
        // Keys equal in their low 32 bits (or high bits) must still spread
        // over the table's low bits, where hashbrown picks the bucket, for
        // every seed: 1024 random keys fill about 647 of 1024 buckets.
        for _ in 0..200 {
            let s = SeededState::random();
            for shift in [0, 16, 32, 54] {
                let mut buckets = std::collections::HashSet::new();
                for i in 0..1024u64 {
                    buckets.insert(s.hash_one(i << shift) & 0x3FF);
                }
                assert!(buckets.len() > 560, "{s:?} << {shift}: {} buckets", buckets.len());
            }
        }
    }

    #[test]
    fn seeds_differ_per_table() {
        let (a, b) = (SeededState::random(), SeededState::random());
        assert_ne!(a.hash_one(7u64), b.hash_one(7u64));
    }

    #[test]
    fn everything_is_send() {
        fn send<T: Send>() {}
        send::<Service>();
        send::<Outbox>();
        fn shared<T: Send + Sync>() {}
        shared::<SharedLimits>();
    }
}
