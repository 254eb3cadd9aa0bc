//! Rumor dedup: a bounded LRU of rumor ids (BLAKE3-256 of the payload).
//!
//! # Contract
//! - [`RumorLru::get`], [`RumorLru::insert`] and [`RumorLru::set_flags`]
//!   are O(1): a hash index over a slab of entries threaded on an intrusive
//!   doubly-linked recency list. Nothing allocates after construction.
//! - At most `capacity` ids are held; inserting into a full LRU evicts the
//!   least recently used one. Looking an id up refreshes it.
//! - Each id carries a byte of flags (delivered, forwarded per cube) so one
//!   lookup answers both "seen?" and "already forwarded on this cube?".
//! - The hash (foldhash) is keyed per instance (from the engine's seed);
//!   ids are BLAKE3 outputs, so no sender can aim collisions at one bucket.
//! - [`RumorLru::admit`] is the whole dedup decision for one copy of a
//!   rumor (deliver it? which forwarding routes may it claim?), the same
//!   function whether the engine keeps the LRU or a worker does.
//! - Nothing is shared: the daemon gives every worker one LRU, its shard
//!   of the ids by [`shard_of`], so each id always meets the same shard
//!   (`engine/src/rt/gossip_shard.rs`).

use std::collections::HashMap;

use foldhash::fast::FixedState;

/// Flag: the rumor was delivered here (applied, handed to subscribers).
pub const DELIVERED: u8 = 0x01;
/// Flag: forwarding over the primary cube is claimed.
pub const FWD_PRIMARY: u8 = 0x02;
/// Flag: forwarding over the dual cube is claimed.
pub const FWD_DUAL: u8 = 0x04;
/// Flag: random-peer (fallback) forwarding is claimed.
pub const FWD_FALLBACK: u8 = 0x08;

/// What one copy of a rumor may still do here, as decided by
/// [`RumorLru::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// First copy seen: deliver it (apply, hand to subscribers).
    pub deliver: bool,
    /// The forwarding routes (`FWD_*` flags) this copy claimed: no other
    /// copy of the rumor will be forwarded on them.
    pub claimed: u8,
}

/// The forwarding routes a copy that arrived with G3 from-dimension byte
/// `from_dimension` may forward on (`FWD_*` flags), or `None` for a value
/// the engine refuses (`bad_dimension`, see the module docs of
/// [`super`]).
///
/// An origin copy (`0xFF`) may forward on every cube (the dual one only
/// when `dual_cube`) or, when the cube is not valid, by fallback push; a
/// cube copy on its own cube or by fallback; a fallback copy by fallback
/// only.
pub fn arrival_routes(from_dimension: u8, dual_cube: bool) -> Option<u8> {
    const ORIGIN: u8 = ricochet_wire::gossip::ORIGIN_DIMENSION;
    const FALLBACK: u8 = super::engine::FALLBACK_DIMENSION;
    match from_dimension {
        ORIGIN => Some(FWD_PRIMARY | FWD_FALLBACK | if dual_cube { FWD_DUAL } else { 0 }),
        FALLBACK => Some(FWD_FALLBACK),
        b if b & 0x20 != 0 => None,
        b if b & super::engine::DUAL_BIT != 0 => Some(FWD_DUAL | FWD_FALLBACK),
        _ => Some(FWD_PRIMARY | FWD_FALLBACK),
    }
}

/// The worker shard that owns a rumor id: its first 8 bytes mod `shards`.
pub fn shard_of(id: &[u8; 32], shards: usize) -> usize {
    let mut w = [0u8; 8];
    w.copy_from_slice(&id[..8]);
    if shards == 0 { 0 } else { (u64::from_le_bytes(w) % shards as u64) as usize }
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Slot {
    id: [u8; 32],
    flags: u8,
    prev: u32,
    next: u32,
}

/// A bounded, O(1) LRU set of rumor ids with a flag byte each.
#[derive(Debug, Clone)]
pub struct RumorLru {
    index: HashMap<[u8; 32], u32, FixedState>,
    slots: Vec<Slot>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    capacity: usize,
}

impl RumorLru {
    /// An empty LRU holding at most `capacity` ids (at least 1), its hash
    /// keyed by `hash_key`.
    pub fn new(capacity: usize, hash_key: u64) -> Self {
        let capacity = capacity.clamp(1, NIL as usize - 1);
        RumorLru {
            index: HashMap::with_capacity_and_hasher(capacity, FixedState::with_seed(hash_key)),
            slots: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The most ids held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The flags of `id` if held, refreshing it.
    pub fn get(&mut self, id: &[u8; 32]) -> Option<u8> {
        let i = *self.index.get(id)?;
        self.touch(i);
        Some(self.slots[i as usize].flags)
    }

    /// Whether `id` is held (no refresh).
    pub fn contains(&self, id: &[u8; 32]) -> bool {
        self.index.contains_key(id)
    }

    /// Inserts `id` with `flags` (or overwrites its flags), making it the
    /// most recent. Returns the id evicted to make room, if any.
    pub fn insert(&mut self, id: [u8; 32], flags: u8) -> Option<[u8; 32]> {
        if let Some(&i) = self.index.get(&id) {
            self.slots[i as usize].flags = flags;
            self.touch(i);
            return None;
        }
        let mut evicted = None;
        let i = if self.slots.len() < self.capacity {
            self.slots.push(Slot { id, flags, prev: NIL, next: NIL });
            (self.slots.len() - 1) as u32
        } else {
            let i = self.tail;
            self.unlink(i);
            let slot = &mut self.slots[i as usize];
            self.index.remove(&slot.id);
            evicted = Some(slot.id);
            *slot = Slot { id, flags, prev: NIL, next: NIL };
            i
        };
        self.index.insert(id, i);
        self.push_front(i);
        evicted
    }

    /// Decides what one copy of rumor `id`, able to forward on `routes`
    /// ([`arrival_routes`]), may still do here, and records it: the first
    /// copy is delivered; each route is claimed by the first copy that
    /// could use it. `None`: a pure duplicate (only to be ACKed). O(1).
    pub fn admit(&mut self, id: &[u8; 32], routes: u8) -> Option<Admission> {
        let before = match self.get(id) {
            Some(f) => f,
            None => {
                self.insert(*id, DELIVERED | routes);
                return Some(Admission { deliver: true, claimed: routes });
            }
        };
        let new = (DELIVERED | routes) & !before;
        if new == 0 {
            return None;
        }
        self.set_flags(id, new);
        Some(Admission { deliver: new & DELIVERED != 0, claimed: new & routes })
    }

    /// Takes back an [`Admission`] that could not be acted on (its
    /// consumer's queue was full), so the next copy is admitted again.
    pub fn revoke(&mut self, id: &[u8; 32], a: Admission) {
        let mask = a.claimed | if a.deliver { DELIVERED } else { 0 };
        if let Some(&i) = self.index.get(id) {
            self.slots[i as usize].flags &= !mask;
        }
    }

    /// ORs `flags` into a held id's flags (refreshing it); returns the
    /// flags before, or `None` if `id` is not held.
    pub fn set_flags(&mut self, id: &[u8; 32], flags: u8) -> Option<u8> {
        let i = *self.index.get(id)?;
        self.touch(i);
        let slot = &mut self.slots[i as usize];
        let before = slot.flags;
        slot.flags |= flags;
        Some(before)
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        if old == NIL {
            self.tail = i;
        } else {
            self.slots[old as usize].prev = i;
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn id(i: u32) -> [u8; 32] {
        ricochet_wire::gossip::rumor_id(&i.to_be_bytes())
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut l = RumorLru::new(3, 7);
        assert_eq!(l.insert(id(1), 1), None);
        assert_eq!(l.insert(id(2), 2), None);
        assert_eq!(l.insert(id(3), 3), None);
        assert_eq!(l.get(&id(1)), Some(1)); // 1 is now the newest
        assert_eq!(l.insert(id(4), 4), Some(id(2)));
        assert!(!l.contains(&id(2)));
        assert_eq!(l.set_flags(&id(3), 0x10), Some(3));
        assert_eq!(l.get(&id(3)), Some(0x13));
        assert_eq!(l.insert(id(5), 5), Some(id(1)));
        assert_eq!(l.len(), 3);
        assert_eq!(l.set_flags(&id(9), 1), None);
        assert_eq!(l.insert(id(4), 0x40), None); // overwrite, no eviction
        assert_eq!(l.get(&id(4)), Some(0x40));
    }

    #[test]
    fn capacity_one_and_shards() {
        let mut l = RumorLru::new(0, 1);
        assert_eq!(l.capacity(), 1);
        l.insert(id(1), 0);
        assert_eq!(l.insert(id(2), 0), Some(id(1)));
        assert_eq!(l.len(), 1);
        for i in 0..100 {
            assert!(shard_of(&id(i), 4) < 4);
        }
        assert_eq!(shard_of(&id(1), 0), 0);
    }

    #[test]
    fn arrivals_claim_the_routes_they_could_forward_on() {
        assert_eq!(arrival_routes(0xFF, false), Some(FWD_PRIMARY | FWD_FALLBACK));
        assert_eq!(arrival_routes(0xFF, true), Some(FWD_PRIMARY | FWD_DUAL | FWD_FALLBACK));
        assert_eq!(arrival_routes(0xFE, true), Some(FWD_FALLBACK));
        assert_eq!(arrival_routes(0x03, true), Some(FWD_PRIMARY | FWD_FALLBACK));
        assert_eq!(arrival_routes(0x43, true), Some(FWD_PRIMARY | FWD_FALLBACK));
        assert_eq!(arrival_routes(0x83, true), Some(FWD_DUAL | FWD_FALLBACK));
        assert_eq!(arrival_routes(0xC3, false), Some(FWD_DUAL | FWD_FALLBACK));
        for b in (0x20..0x40).chain(0x60..0x80).chain(0xA0..0xC0).chain(0xE0..0xFE) {
            assert_eq!(arrival_routes(b, true), None, "{b:#x}");
        }

        let mut l = RumorLru::new(4, 1);
        let cube = FWD_PRIMARY | FWD_FALLBACK;
        assert_eq!(l.admit(&id(1), cube), Some(Admission { deliver: true, claimed: cube }));
        assert_eq!(l.admit(&id(1), cube), None);
        assert_eq!(l.admit(&id(1), FWD_FALLBACK), None);
        assert_eq!(
            l.admit(&id(1), FWD_DUAL | FWD_FALLBACK),
            Some(Admission { deliver: false, claimed: FWD_DUAL })
        );
        let a = l.admit(&id(2), FWD_FALLBACK).unwrap();
        l.revoke(&id(2), a);
        assert_eq!(l.admit(&id(2), FWD_FALLBACK), Some(a), "revoked: admitted again");
    }

    proptest! {
        /// Whatever copies of one rumor arrive, in whatever order: exactly
        /// one is delivered, each route is claimed at most once and only
        /// by a copy able to use it, and a copy is a pure duplicate exactly
        /// when it could claim nothing new.
        #[test]
        fn each_rumor_is_delivered_once_and_each_route_claimed_once(
            dims in prop::collection::vec(any::<u8>(), 1..40),
            dual in any::<bool>(),
        ) {
            let mut l = RumorLru::new(8, 3);
            let (mut delivered, mut claimed) = (0, 0u8);
            for d in dims {
                let Some(routes) = arrival_routes(d, dual) else { continue };
                let before = claimed;
                match l.admit(&id(7), routes) {
                    Some(a) => {
                        delivered += u32::from(a.deliver);
                        prop_assert_eq!(a.claimed & !routes, 0);
                        prop_assert_eq!(a.claimed & claimed, 0);
                        prop_assert_eq!(a.claimed, routes & !before);
                        prop_assert!(a.deliver || a.claimed != 0);
                        claimed |= a.claimed;
                    }
                    None => prop_assert_eq!(routes & !before, 0),
                }
            }
            prop_assert!(delivered <= 1);
            prop_assert_eq!(delivered == 1, claimed != 0);
        }

        /// Agrees with a naive model (a recency deque) on every operation.
        #[test]
        fn matches_a_naive_lru(cap in 1usize..8, ops in prop::collection::vec((0u8..3, 0u32..12), 0..200)) {
            let mut l = RumorLru::new(cap, 99);
            let mut model: VecDeque<([u8; 32], u8)> = VecDeque::new();
            for (op, k) in ops {
                let key = id(k);
                match op {
                    0 => {
                        let got = l.get(&key);
                        let pos = model.iter().position(|(x, _)| *x == key);
                        let want = pos.map(|p| {
                            let e = model.remove(p).unwrap();
                            model.push_front(e);
                            e.1
                        });
                        prop_assert_eq!(got, want);
                    }
                    1 => {
                        let flags = (k % 7) as u8;
                        let got = l.insert(key, flags);
                        let want = if let Some(p) = model.iter().position(|(x, _)| *x == key) {
                            model.remove(p);
                            model.push_front((key, flags));
                            None
                        } else {
                            let ev = if model.len() == cap { model.pop_back().map(|e| e.0) } else { None };
                            model.push_front((key, flags));
                            ev
                        };
                        prop_assert_eq!(got, want);
                    }
                    _ => {
                        let got = l.set_flags(&key, 0x80);
                        let want = model.iter().position(|(x, _)| *x == key).map(|p| {
                            let mut e = model.remove(p).unwrap();
                            let before = e.1;
                            e.1 |= 0x80;
                            model.push_front(e);
                            before
                        });
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(l.len(), model.len());
            }
        }
    }
}
