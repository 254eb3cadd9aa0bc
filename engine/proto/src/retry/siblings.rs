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
//! # Sibling fill
//! The view also carries what each sibling said it holds
//! ([`Holding`]: per flow the SeqNum span of its cache and how many
//! SeqNums inside it are missing), gossiped about once a second. The
//! owner of a gap it does not hold asks the sibling most likely to hold
//! it ([`Siblings::holder`]) before going upstream.
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

/// What one sibling holds of one flow (its cache's digest entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Holding {
    /// The flow.
    pub hash_key: u64,
    /// Lowest SeqNum of the flow's log.
    pub lo: u64,
    /// Highest SeqNum of the flow's log.
    pub hi: u64,
    /// SeqNums in `lo..=hi` the sibling does not hold.
    pub missing: u32,
}

/// One endpoint's view of its live siblings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Siblings {
    me: u64,
    others: Vec<Sibling>,
    /// Per sibling id, its latest holdings digest.
    holdings: Vec<(u64, Vec<Holding>)>,
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
        Siblings { me, others, holdings: Vec::new() }
    }

    /// This view with `holdings` as sibling `id`'s digest (ignored for an
    /// id that is not a live sibling).
    pub fn with_holdings(mut self, id: u64, holdings: Vec<Holding>) -> Self {
        if self.others.iter().any(|s| s.id == id) {
            self.holdings.retain(|(i, _)| *i != id);
            self.holdings.push((id, holdings));
        }
        self
    }

    /// The digest sibling `id` last gave, if any.
    pub fn holdings_of(&self, id: u64) -> Option<&[Holding]> {
        self.holdings.iter().find(|(i, _)| *i == id).map(|(_, h)| h.as_slice())
    }

    /// The sibling to ask for `key` before going upstream (sibling fill),
    /// or `None` when no sibling's digest lists the flow down to `key`'s
    /// SeqNum. Preference: a sibling whose span covers the SeqNum with no
    /// hole (it holds it, unless it expired since), then one whose span
    /// covers it (fewest holes first), then one whose span ends below it
    /// (it is receiving the flow; the digest is up to a heartbeat old);
    /// ties go to the lower member id, so the choice is deterministic.
    pub fn holder(&self, key: FrameKey) -> Option<SocketAddr> {
        let mut best: Option<((u8, u32, u64), SocketAddr)> = None;
        for (id, held) in &self.holdings {
            let Some(h) = held.iter().find(|h| h.hash_key == key.hash_key) else { continue };
            if key.seq < h.lo {
                continue;
            }
            let rank = match (key.seq <= h.hi, h.missing) {
                (true, 0) => (0, 0, *id),
                (true, m) => (1, m, *id),
                (false, _) => (2, 0, *id),
            };
            let Some(sib) = self.others.iter().find(|s| s.id == *id) else { continue };
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, sib.nack));
            }
        }
        best.map(|(_, addr)| addr)
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

    /// Whether `addr` is a live sibling's NACK address (an IPv4-mapped
    /// IPv6 address matches its IPv4 form).
    pub fn is_sibling(&self, addr: std::net::IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.others.iter().any(|s| s.nack.ip().to_canonical() == addr)
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

    fn held(hash_key: u64, lo: u64, hi: u64, missing: u32) -> Holding {
        Holding { hash_key, lo, hi, missing }
    }

    #[test]
    fn the_holder_is_the_sibling_most_likely_to_have_the_frame() {
        let view = Siblings::new(1, [sib(2), sib(3), sib(4)])
            .with_holdings(2, vec![held(9, 10, 100, 3)])
            .with_holdings(3, vec![held(9, 50, 90, 0), held(8, 1, 5, 0)])
            .with_holdings(4, vec![held(9, 1, 40, 0)])
            // Not a live sibling: ignored.
            .with_holdings(5, vec![held(9, 1, 1000, 0)]);
        let k = |hash_key, seq| FrameKey { hash_key, seq };
        // Covered without holes by 3.
        assert_eq!(view.holder(k(9, 60)), Some(sib(3).nack));
        // Covered by 2 (with holes) and without holes by 4.
        assert_eq!(view.holder(k(9, 20)), Some(sib(4).nack));
        // Only 2's span reaches it.
        assert_eq!(view.holder(k(9, 95)), Some(sib(2).nack));
        // Beyond every span: the lowest id among those receiving the flow.
        assert_eq!(view.holder(k(9, 500)), Some(sib(2).nack));
        // Below every span, and an unknown flow.
        assert_eq!(view.holder(k(9, 0)), None);
        assert_eq!(view.holder(k(7, 3)), None);
        assert_eq!(view.holder(k(8, 3)), Some(sib(3).nack));
        assert_eq!(view.holdings_of(5), None);
        assert_eq!(Siblings::new(1, []).holder(k(9, 60)), None);
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
