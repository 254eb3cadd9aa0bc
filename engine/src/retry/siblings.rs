//! Gap ownership among sibling endpoints by rendezvous hashing.
//!
//! Siblings serve one domain and all see the same gaps. Without a shared
//! store, each would fetch every gap upstream; instead the live members
//! (learnt by gossip) agree, with no messages, which one fetches a given
//! gap: the member with the highest score `mix(member id, HashKey, SeqNum)`
//! (highest random weight). A sibling asked for a gap it does not own
//! forwards the NACK to the owner, flagged [`NackFlags::SIBLING`] so the
//! owner recovers it whatever its own view says (views can disagree while
//! membership changes; the flag stops a forward from bouncing).
//!
//! # Contract
//! - Every member with the same member list computes the same owner for
//!   every key.
//! - When a member leaves, only the keys it owned move; when one joins, it
//!   takes about `1/n` of the keys from the others.
//! - Pure and allocation-free per lookup: O(members) multiplications.
//!
//! [`NackFlags::SIBLING`]: ricochet_wire::control::NackFlags::SIBLING

use std::net::SocketAddr;

use ricochet_wire::frame::FrameKey;

/// A live sibling: its member id (from gossip) and where it takes NACKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sibling {
    /// Member id; the same on every member's view.
    pub id: u64,
    /// Its NACK address.
    pub nack: SocketAddr,
}

/// One endpoint's view of its live siblings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Siblings {
    me: u64,
    others: Vec<Sibling>,
}

/// SplitMix64's finaliser: a bijective 64-bit mix.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn score(member: u64, key: FrameKey) -> u64 {
    mix(member ^ mix(key.hash_key ^ mix(key.seq)))
}

impl Siblings {
    /// This endpoint (`me`) and its live siblings (`me` is skipped if
    /// listed).
    pub fn new(me: u64, others: impl IntoIterator<Item = Sibling>) -> Self {
        let mut others: Vec<Sibling> = others.into_iter().filter(|s| s.id != me).collect();
        others.sort_unstable_by_key(|s| s.id);
        others.dedup_by_key(|s| s.id);
        Siblings { me, others }
    }

    /// Live siblings besides this endpoint.
    pub fn others(&self) -> &[Sibling] {
        &self.others
    }

    /// The sibling that fetches `key` upstream, or `None` when it is this
    /// endpoint (always, with no siblings).
    pub fn owner(&self, key: FrameKey) -> Option<&Sibling> {
        let mine = score(self.me, key);
        let best = self.others.iter().max_by_key(|s| (score(s.id, key), s.id))?;
        (score(best.id, key), best.id).gt(&(mine, self.me)).then_some(best)
    }

    /// Whether `addr` is a sibling's NACK address.
    pub fn is_sibling(&self, addr: std::net::IpAddr) -> bool {
        self.others.iter().any(|s| s.nack.ip() == addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sib(id: u64) -> Sibling {
        Sibling { id, nack: SocketAddr::from(([10, 0, 0, id as u8], 9300)) }
    }

    /// The owner's id as `me` sees it.
    fn owner_id(view: &Siblings, key: FrameKey) -> u64 {
        view.owner(key).map_or(view.me, |s| s.id)
    }

    #[test]
    fn alone_owns_everything() {
        let v = Siblings::new(7, []);
        assert!(v.owner(FrameKey { hash_key: 1, seq: 1 }).is_none());
        assert!(Siblings::new(7, [sib(7)]).owner(FrameKey { hash_key: 1, seq: 2 }).is_none());
    }

    #[test]
    fn ownership_is_spread_evenly() {
        let ids = [11, 22, 33, 44];
        let view = Siblings::new(11, ids.iter().map(|&i| sib(i)));
        let mut counts = std::collections::HashMap::new();
        for seq in 0..40_000u64 {
            *counts.entry(owner_id(&view, FrameKey { hash_key: 0xABCD, seq })).or_insert(0) += 1;
        }
        for id in ids {
            let c = counts[&id];
            assert!((9_000..11_000).contains(&c), "{id}: {c} of 40000");
        }
    }

    proptest! {
        #[test]
        fn every_member_agrees(ids in proptest::collection::btree_set(1u64..1000, 1..8),
                               hash_key: u64, seq: u64) {
            let ids: Vec<u64> = ids.into_iter().collect();
            let key = FrameKey { hash_key, seq };
            let owners: Vec<u64> = ids
                .iter()
                .map(|&me| owner_id(&Siblings::new(me, ids.iter().map(|&i| sib(i))), key))
                .collect();
            prop_assert!(owners.windows(2).all(|w| w[0] == w[1]), "{owners:?}");
        }

        #[test]
        fn a_leaver_moves_only_its_own_keys(ids in proptest::collection::btree_set(1u64..1000, 3..8),
                                            hash_key: u64, seq: u64) {
            let ids: Vec<u64> = ids.into_iter().collect();
            let key = FrameKey { hash_key, seq };
            let me = ids[0];
            let before = owner_id(&Siblings::new(me, ids.iter().map(|&i| sib(i))), key);
            let leaver = ids[1];
            let after = owner_id(
                &Siblings::new(me, ids.iter().filter(|&&i| i != leaver).map(|&i| sib(i))),
                key,
            );
            if before != leaver {
                prop_assert_eq!(before, after);
            }
        }
    }
}
