//! One worker's share of the rumor path (sans-IO): authenticate a G3
//! datagram, rate-limit its source, decide its dedup in the shard of rumor
//! ids this worker owns, and ACK it — so duplicates never leave the
//! worker, and the [`Gossip`](super::Gossip) engine on the control thread
//! only sees what a copy may still do ([`super::Config::external_dedup`]).
//!
//! # Contract
//! - Two steps, because the worker that reads a datagram is not always
//!   the one owning its rumor id: [`RumorShard::open`] on the reader
//!   (envelope — MAC, time window, replay — size and frame checks; the id
//!   and its owner,
//!   [`super::dedup::shard_of`]) and [`RumorShard::admit`] on the owner
//!   (rate limit, from-dimension, dedup, ACK). A body that passed `open`
//!   is authenticated; the owner trusts it.
//! - Every copy that reaches `admit` and passes the rate limit and the
//!   from-dimension check is ACKed (G5, sealed under the cluster MAC with
//!   this shard's own stamp sender and counter), duplicates too, exactly
//!   as the engine does on its own.
//! - Replays ([`super::replay`]): each shard keeps its own replay guard
//!   over the datagrams it reads. With the steering program the same bytes
//!   always reach the same reader (it picks by the MAC's last word), and
//!   without it the kernel picks by source address; a copy that still gets
//!   past a guard is a duplicate rumor, which the dedup absorbs. Time
//!   enters as unix ms through [`RumorShard::set_unix_time`].
//! - Bounded and O(1) per datagram: the LRU holds `⌈dedup_capacity /
//!   shards⌉` ids; the per-source token bucket of each shard refills at
//!   `peer_rate / shards` with burst `peer_burst / shards`, so a sender
//!   spreading rumors evenly over the shards (ids are BLAKE3 outputs) gets
//!   the engine's per-peer budget in total.
//! - Drops are counted by reason in [`ShardStats::drops`] (the same
//!   reasons as the engine's), never a panic.

use core::net::SocketAddr;
use std::time::Instant;

use ricochet_wire::Error as WireError;
use ricochet_wire::gossip::{GossipFrame, RumorAckRepr, rumor_id};
use ricochet_wire::mac::{ClusterKey, GOSSIP_OVERHEAD, Opened};

use super::Config;
use super::dedup::{Admission, RumorLru, arrival_routes, shard_of};
use super::engine::RumorId;
use super::limit::PeerLimiter;
use super::replay::{ReplayGuard, Sealer};
use super::stats::Drops;

/// Counters of one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShardStats {
    /// Rumors that passed [`RumorShard::open`] here (read by this worker).
    pub opened: u64,
    /// Rumors decided here (this worker owns their id).
    pub decided: u64,
    /// Copies handed on to the engine (first copies, or copies claiming a
    /// route no earlier copy could).
    pub admitted: u64,
    /// Copies absorbed here: ACKed, nothing else to do.
    pub duplicates: u64,
    /// G5 ACKs sealed here.
    pub acks: u64,
    /// Admissions taken back because the engine's queue was full.
    pub revoked: u64,
    /// Rumors originated by this member, recorded here.
    pub marks: u64,
    /// Everything dropped, by reason.
    pub drops: Drops,
}

/// What [`RumorShard::admit`] decided for one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped and counted (rate limit, from-dimension, malformed).
    Dropped,
    /// ACKed; a duplicate with nothing left to do.
    Duplicate,
    /// ACKed; hand the body to the engine with this admission.
    Admitted(Admission),
}

/// One worker's rumor dedup shard, with its rate limiter and the key to
/// check MACs and seal ACKs.
#[derive(Debug)]
pub struct RumorShard {
    key: ClusterKey,
    lru: RumorLru,
    limiter: PeerLimiter,
    dual_cube: bool,
    max_datagram: usize,
    shards: usize,
    sealer: Sealer,
    guard: ReplayGuard,
    clock: Option<(Instant, u64)>,
    /// This shard's counters.
    pub stats: ShardStats,
}

impl RumorShard {
    /// Shard `index` of `shards`, sized and rated from the engine's
    /// configuration (see the module contract); `hash_key` keys its LRU.
    pub fn new(key: ClusterKey, config: &Config, shards: usize, hash_key: u64) -> Self {
        let n = shards.max(1);
        RumorShard {
            key,
            lru: RumorLru::new(config.dedup_capacity.div_ceil(n), hash_key),
            limiter: PeerLimiter::new(
                config.peer_rate / n as f64,
                (config.peer_burst / n as f64).max(1.0),
                config.max_tracked_peers,
            ),
            dual_cube: config.dual_cube,
            max_datagram: config.max_datagram,
            shards: n,
            sealer: Sealer::new(Sealer::sender_from(&[
                &config.seed,
                &hash_key.to_be_bytes(),
                b"rumor shard",
            ])),
            guard: ReplayGuard::new(config.max_replay_senders),
            clock: None,
            stats: ShardStats::default(),
        }
    }

    /// Sets the wall clock: `unix_ms` at `now`. Until the first call the
    /// clock reads 0 (every stamp is then out of the window).
    pub fn set_unix_time(&mut self, now: Instant, unix_ms: u64) {
        self.clock = Some((now, unix_ms));
    }

    /// The wall clock at `now`, unix ms.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let Some((at, ms)) = self.clock else { return 0 };
        let ahead = now.saturating_duration_since(at).as_millis() as u64;
        let behind = at.saturating_duration_since(now).as_millis() as u64;
        ms.saturating_add(ahead).saturating_sub(behind)
    }

    /// This shard's stamp sender id (its G5 ACKs carry it).
    pub fn sender_id(&self) -> u64 {
        self.sealer.sender()
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// The most ids held.
    pub fn capacity(&self) -> usize {
        self.lru.capacity()
    }

    /// Reader step: authenticates a datagram read as a rumor and returns
    /// its id, the shard owning it and the frame (envelope removed), or
    /// drops and counts it (replays and stale stamps included).
    pub fn open<'a>(
        &mut self,
        now: Instant,
        bytes: &'a [u8],
    ) -> Option<(RumorId, usize, &'a [u8])> {
        if bytes.len() > self.max_datagram {
            self.stats
                .drops
                .malformed(WireError::TooLong { max: self.max_datagram, got: bytes.len() });
            return None;
        }
        let body = match self.key.open_gossip(bytes) {
            Ok(Opened { frame, stamp, .. }) => match self.guard.check(self.unix_ms(now), &stamp) {
                Ok(()) => frame,
                Err(r) => {
                    self.stats.drops.refused(r);
                    return None;
                }
            },
            Err(e) => {
                self.stats.drops.malformed(e);
                return None;
            }
        };
        let id = match GossipFrame::parse(body) {
            Ok(GossipFrame::Rumor(r)) => rumor_id(r.payload),
            Ok(_) => {
                // Authenticated but not a rumor: the caller routes frames
                // by their magic first, so only a confused caller gets here.
                self.stats.drops.wrong_mode += 1;
                return None;
            }
            Err(e) => {
                self.stats.drops.malformed(e);
                return None;
            }
        };
        self.stats.opened += 1;
        Some((id, shard_of(&id, self.shards), body))
    }

    /// Owner step: decides one copy of rumor `id` (`body` as returned by
    /// [`RumorShard::open`]) from `from`; an ACK to send back to `from`
    /// is written to `ack` (cleared first; left empty when dropped).
    pub fn admit(
        &mut self,
        now: Instant,
        from: SocketAddr,
        id: &RumorId,
        body: &[u8],
        ack: &mut Vec<u8>,
    ) -> Verdict {
        ack.clear();
        self.stats.decided += 1;
        if !self.limiter.allow(now, from) {
            self.stats.drops.rate_limited += 1;
            return Verdict::Dropped;
        }
        let dimension = match GossipFrame::parse(body) {
            Ok(GossipFrame::Rumor(r)) => r.from_dimension,
            Ok(_) => {
                self.stats.drops.wrong_mode += 1;
                return Verdict::Dropped;
            }
            Err(e) => {
                self.stats.drops.malformed(e);
                return Verdict::Dropped;
            }
        };
        let Some(routes) = arrival_routes(dimension, self.dual_cube) else {
            self.stats.drops.bad_dimension += 1;
            return Verdict::Dropped;
        };
        let frame = GossipFrame::RumorAck(RumorAckRepr { rumor_id: *id });
        let len = frame.buffer_len();
        ack.resize(len + GOSSIP_OVERHEAD, 0);
        let stamp = self.sealer.next(self.unix_ms(now));
        if frame.emit(ack).is_ok() && self.key.seal_gossip(ack, len, 0, &stamp).is_ok() {
            self.stats.acks += 1;
        } else {
            ack.clear();
        }
        match self.lru.admit(id, routes) {
            Some(a) => {
                self.stats.admitted += 1;
                Verdict::Admitted(a)
            }
            None => {
                self.stats.duplicates += 1;
                Verdict::Duplicate
            }
        }
    }

    /// Takes back an admission the engine could not be given, so the
    /// sender's retry (or another copy) is admitted again.
    pub fn revoke(&mut self, id: &RumorId, a: Admission) {
        self.stats.revoked += 1;
        self.lru.revoke(id, a);
    }

    /// Records a rumor this member originated ([`super::Outbox::marks`]),
    /// so copies coming back are not delivered here again.
    pub fn mark(&mut self, id: RumorId, flags: u8) {
        self.stats.marks += 1;
        if self.lru.set_flags(&id, flags).is_none() {
            self.lru.insert(id, flags);
        }
    }

    /// Forgets idle rate-limit entries and senders out of the window.
    pub fn sweep(&mut self, now: Instant) {
        self.limiter.sweep(now);
        self.guard.sweep(self.unix_ms(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::dedup::{DELIVERED, FWD_FALLBACK, FWD_PRIMARY};
    use ricochet_wire::gossip::RumorRepr;

    fn key() -> ClusterKey {
        ClusterKey::new([7; 32])
    }

    const T: u64 = 1_767_225_600_000;

    /// A shard whose clock reads `T` at `now`.
    fn shard(shards: usize, now: Instant) -> RumorShard {
        let mut s = RumorShard::new(key(), &Config::new([1; 32]), shards, 5);
        s.set_unix_time(now, T);
        s
    }

    fn seal(frame: &[u8]) -> Vec<u8> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let stamp = ricochet_wire::mac::Stamp {
            sender: 77,
            time_ms: T,
            counter: COUNTER.fetch_add(1, Ordering::Relaxed),
        };
        key().seal_gossip_vec(frame, 0, &stamp).unwrap()
    }

    fn rumor(dim: u8, payload: &[u8]) -> Vec<u8> {
        let f = GossipFrame::Rumor(RumorRepr {
            hop_count: 1,
            from_dimension: dim,
            priority: 0,
            topic: b"t",
            payload,
        });
        let mut buf = vec![0u8; f.buffer_len()];
        f.emit(&mut buf).unwrap();
        seal(&buf)
    }

    fn from() -> SocketAddr {
        "10.0.0.2:9310".parse().unwrap()
    }

    #[test]
    fn first_copy_is_admitted_duplicates_are_absorbed_and_every_copy_is_acked() {
        let now = Instant::now();
        let mut s = shard(1, now);
        let mut ack = Vec::new();
        let d = rumor(0, b"hello");
        let (id, owner, body) = s.open(now, &d).unwrap();
        assert_eq!((id, owner), (rumor_id(b"hello"), 0));
        let v = s.admit(now, from(), &id, body, &mut ack);
        assert_eq!(
            v,
            Verdict::Admitted(Admission { deliver: true, claimed: FWD_PRIMARY | FWD_FALLBACK })
        );
        let sent = key().open_gossip(&ack).unwrap().frame;
        assert!(
            matches!(GossipFrame::parse(sent), Ok(GossipFrame::RumorAck(a)) if a.rumor_id == id)
        );
        assert_eq!(s.admit(now, from(), &id, body, &mut ack), Verdict::Duplicate);
        assert!(!ack.is_empty(), "duplicates are ACKed too");
        // A fallback copy: fallback was claimed by the cube copy.
        let d2 = rumor(0xFE, b"hello");
        let (_, _, b2) = s.open(now, &d2).unwrap();
        assert_eq!(s.admit(now, from(), &id, b2, &mut ack), Verdict::Duplicate);
        assert_eq!((s.stats.admitted, s.stats.duplicates, s.stats.acks), (1, 2, 3));
    }

    #[test]
    fn revoked_admissions_are_admitted_again_and_marks_suppress_delivery() {
        let now = Instant::now();
        let mut s = shard(1, now);
        let mut ack = Vec::new();
        let d = rumor(3, b"x");
        let (id, _, body) = s.open(now, &d).unwrap();
        let Verdict::Admitted(a) = s.admit(now, from(), &id, body, &mut ack) else { panic!() };
        s.revoke(&id, a);
        assert_eq!(s.admit(now, from(), &id, body, &mut ack), Verdict::Admitted(a));
        let mine = rumor_id(b"mine");
        s.mark(mine, DELIVERED | FWD_PRIMARY);
        let d = rumor(0xFE, b"mine");
        let (_, _, body) = s.open(now, &d).unwrap();
        assert_eq!(
            s.admit(now, from(), &mine, body, &mut ack),
            Verdict::Admitted(Admission { deliver: false, claimed: FWD_FALLBACK })
        );
    }

    proptest::proptest! {
        /// Any bytes, raw or sealed under the right key (so they reach the
        /// frame decoder), are dropped and counted or decided — never a
        /// panic; every datagram is accounted for exactly once.
        #[test]
        fn any_datagram_is_decided_or_counted(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            sealed in proptest::prelude::any::<bool>(),
        ) {
            let now = Instant::now();
            let mut s = shard(2, now);
            let mut d = raw.clone();
            if sealed && raw.first().is_some_and(|b| b & 1 == 0) {
                // A well-formed rumor with any from-dimension and payload.
                d = rumor(raw[0], &raw[1..]);
            } else if sealed {
                d = seal(&raw);
            }
            let mut ack = Vec::new();
            match s.open(now, &d) {
                Some((id, owner, body)) => {
                    proptest::prop_assert!(owner < 2);
                    let _ = s.admit(now, from(), &id, body, &mut ack);
                    let st = s.stats;
                    proptest::prop_assert_eq!(
                        st.admitted + st.duplicates + st.drops.total(),
                        1
                    );
                }
                None => proptest::prop_assert_eq!(s.stats.drops.total(), 1),
            }
        }
    }

    #[test]
    fn hostile_datagrams_are_dropped_and_counted() {
        let now = Instant::now();
        let mut s = shard(2, now);
        let mut ack = Vec::new();
        let good = rumor(0, b"p");
        let mut forged = good.clone();
        let n = forged.len();
        forged[n - 1] ^= 1;
        assert!(s.open(now, &forged).is_none());
        // The right key, but version 1 (no stamp): recognised, not parsed.
        let mut v1 = vec![0x47, 0x33, 0, 0xFF, 0, 1, b't', 0, 0, 0, 1, b'p'];
        let n1 = v1.len();
        v1.resize(n1 + 16, 0);
        key().seal(&mut v1, n1).unwrap();
        assert!(s.open(now, &v1).is_none());
        assert_eq!(s.stats.drops.get("bad_version"), 1);
        // The exact bytes again: a replay; and stale.
        let (_, _, _) = s.open(now, &good).unwrap();
        assert!(s.open(now, &good).is_none());
        assert_eq!(s.stats.drops.replayed, 1);
        let later = now + std::time::Duration::from_millis(super::super::replay::WINDOW_MS + 1);
        assert!(s.open(later, &rumor(0, b"q")).is_none());
        assert_eq!(s.stats.drops.out_of_window, 1);
        assert!(s.open(now, &good[..good.len() - 3]).is_none());
        assert!(s.open(now, &[]).is_none());
        assert!(s.open(now, &vec![0x47; 4000]).is_none());
        let bad_dim = rumor(0x20, b"p");
        let (id, _, body) = s.open(now, &bad_dim).unwrap();
        assert_eq!(s.admit(now, from(), &id, body, &mut ack), Verdict::Dropped);
        assert!(ack.is_empty());
        assert_eq!(s.stats.drops.get("bad_mac"), 2);
        assert_eq!(s.stats.drops.get("truncated"), 1, "shorter than a MAC");
        assert_eq!(s.stats.drops.get("too_long"), 1);
        assert_eq!(s.stats.drops.bad_dimension, 1);
        // Over the per-shard burst (500 / 2 shards).
        let good = rumor(0, b"p");
        let (id, _, body) = s.open(now, &good).unwrap();
        let verdicts: Vec<Verdict> =
            (0..300).map(|_| s.admit(now, from(), &id, body, &mut ack)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Dropped).count(), 300 - 249);
        assert_eq!(s.stats.drops.rate_limited, 51);
    }
}
