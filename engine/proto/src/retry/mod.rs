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
//! `SeededState`, foldhash's keyed folded-multiply hasher, whose key is
//! drawn once per table from std's `RandomState`:
//! - For HashKeys a bare multiply would do, because the key is already a
//!   uniform 64-bit hash and the fold only has to spread it over the table.
//! - Source addresses, StartSeqs and (source, HashKey) pairs are chosen by
//!   whoever sends NACKs, so an unkeyed hash would let a sender pick keys that
//!   all land in one probe sequence. The secret seed enters both operands of
//!   the multiply, so colliding keys cannot be chosen without it (ahash's
//!   fallback is built on the same construction). Every table is also
//!   capped in size, which bounds the damage of any collision attack that
//!   does succeed. A map keyed by untrusted input must not use an unseeded
//!   hasher; keep std's SipHash there if in doubt.

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

pub use allow::{AllowList, Prefix, PrefixError};
pub use cache::{Cache, CacheSettings, CacheStats, EpochReset, TtlClass, Ttls};
pub use claims::Claims;
pub use limit::{LimitSettings, Limiter, Tier};
pub use recover::{ClaimResult, Enqueued, Recovered, Recovery, RecoverySettings, RecoveryStats};
pub use service::{
    AMPLIFICATION, Budget, Dest, Effect, FrameOutcome, Lookup, NackEffects, Outbox, Payload,
    PendingMulticast, Service, Settings, Stats, Transmit,
};
pub use shared_limit::SharedLimits;
pub use siblings::{Holding, Sibling, Siblings};

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::quality::{FoldHasher, SeedableRandomState};

/// A per-table key for foldhash's folded-multiply hasher, in its `quality`
/// form: after the keyed fold, one unkeyed fold mixes the whole product
/// into the low bits of the hash, where hashbrown picks the bucket. With
/// `foldhash::fast`'s single fold, 1024 consecutive keys fill about 500 of
/// 1024 buckets; random keys fill about 647.
#[derive(Debug, Clone)]
pub(crate) struct SeededState(SeedableRandomState);

impl SeededState {
    /// Draws a fresh key from std's per-thread random state (which reads the
    /// OS's randomness once per thread, as `HashMap::new` does). foldhash's
    /// own random seed comes from addresses and the time of day; the tables
    /// keyed by what NACK senders choose want the OS's randomness instead.
    pub(crate) fn random() -> Self {
        static SHARED: OnceLock<SharedSeed> = OnceLock::new();
        let rs = RandomState::new();
        let shared = SHARED.get_or_init(|| SharedSeed::from_u64(rs.hash_one(0x5EED_0001_u64)));
        SeededState(SeedableRandomState::with_seed(rs.hash_one(0x5EED_0002_u64), shared))
    }

    /// A key derived from `seed` alone, for deterministic simulations and
    /// tests.
    pub(crate) fn from_seed(seed: u64) -> Self {
        SeededState(SeedableRandomState::with_seed(seed, SharedSeed::global_fixed()))
    }
}

impl BuildHasher for SeededState {
    type Hasher = FoldHasher<'static>;

    #[inline]
    fn build_hasher(&self) -> FoldHasher<'static> {
        self.0.build_hasher()
    }
}

/// SplitMix64's output function: a bijective 64-bit mixer (test data).
#[cfg(test)]
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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
