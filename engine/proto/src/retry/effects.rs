//! What a worker does with the NACK service's [`Effect`]s: the policy
//! between the service, upstream recovery, the siblings and the shared
//! store, and the store requests parked for an answer.
//!
//! # Contract
//! - **Gap ownership.** A gap to recover that a live sibling owns
//!   ([`Siblings::owner`]) is forwarded to it as a Sibling-flagged NACK
//!   from the upstream socket, once, and not recovered here — unless the
//!   NACK came from a sibling already (`from_sibling`), or no upstream is
//!   configured. Otherwise the sibling whose digest lists the frame
//!   ([`Siblings::holder`]) is asked before the upstreams.
//! - **Shared store.** A recovery job that needs its cross-instance claim,
//!   a multicast retransmit siblings must not repeat (after the local
//!   claim: one already held here decides it at once, not sent), and a
//!   miss to look up in the shared cache are *parked* under a token and
//!   handed to the caller's [`StoreQueue`]; the caller brings the answer
//!   back with [`Router::on_answer`].
//! - **Redis down means go ahead.** A request the store cannot take (no
//!   store, its queue full, or [`MAX_PARKED`] already waiting) and one
//!   whose answer is overdue ([`Router::expire`]) is decided at once as if
//!   the store were down: a claim is `Unavailable` (the retransmit is sent,
//!   recovery asks upstream), a lookup finds nothing (a MISS). Each counts
//!   in [`RouterStats::store_unavailable`]. An answer that arrives after
//!   its request was decided is ignored, so nothing is decided twice.
//! - **Closure.** Deciding a request can make the service queue further
//!   effects (a shared-cache miss asks for recovery); every call routes
//!   them before it returns, so [`Outbox::effects`] is empty afterwards.
//! - **Bounded.** At most [`MAX_PARKED`] requests wait; the deadline queue
//!   never outgrows the parked set by more than the answered-in-time
//!   tokens of one sweep.
//! - No I/O and no clock: time enters as `now`, datagrams leave in the
//!   caller's [`Outbox`], store requests through [`StoreQueue`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_wire::control::{NackFlags, NackRepr};
use ricochet_wire::frame::FrameKey;

use super::{
    ClaimResult, Claims, Dest, Effect, Enqueued, Lookup, Outbox, Payload, PendingMulticast,
    Recovery, Service, Siblings, Transmit,
};

/// Most requests parked for the shared store; beyond that new ones are
/// decided as if the store were down.
pub const MAX_PARKED: usize = 16_384;

/// Which cross-instance claim a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// A multicast retransmit (`bre:dedup:`).
    Retransmit,
    /// An upstream fetch (`bre:proxy:`).
    Proxy,
}

/// A request to the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// Claim `key` for this endpoint (`SET … NX PX window`).
    Claim {
        /// Which claim.
        kind: ClaimKind,
        /// The frame.
        key: FrameKey,
    },
    /// Look `key` up in the shared cache (`GET bre:frame:…`).
    Get {
        /// The frame.
        key: FrameKey,
    },
}

/// The shared store's answer to a [`StoreOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAnswer {
    /// The claim's outcome.
    Claim(ClaimResult),
    /// The frame if the store held it; `Err(())` when it could not answer.
    Get(Result<Option<Bytes>, ()>),
}

/// Where parked requests go: the caller's queue to the shared store.
pub trait StoreQueue {
    /// Queues `op`, whose answer must come back to [`Router::on_answer`]
    /// with `token`; false when it cannot be queued (no store, queue full).
    fn try_send(&mut self, token: u64, op: StoreOp) -> bool;
}

/// No shared store: every request is decided at once as if it were down.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStore;

impl StoreQueue for NoStore {
    fn try_send(&mut self, _token: u64, _op: StoreOp) -> bool {
        false
    }
}

impl<F: FnMut(u64, StoreOp) -> bool> StoreQueue for F {
    fn try_send(&mut self, token: u64, op: StoreOp) -> bool {
        self(token, op)
    }
}

/// The worker's state the router acts on, borrowed for one call.
#[derive(Debug)]
pub struct Parts<'a> {
    /// The NACK service, which decides parked multicasts and lookups.
    pub service: &'a mut Service,
    /// Upstream recovery.
    pub recovery: &'a mut Recovery,
    /// The live siblings' gap ownership and holdings.
    pub siblings: &'a Siblings,
    /// Multicast retransmit claims held on this endpoint.
    pub local_dedup: &'a mut Claims<FrameKey>,
    /// Where datagrams (and the service's further effects) go.
    pub outbox: &'a mut Outbox,
}

/// Counters of the routing policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Gaps forwarded to the live sibling that owns them.
    pub gaps_forwarded_to_owner: u64,
    /// Requests decided as if the store were down (not queued, or overdue).
    pub store_unavailable: u64,
}

/// A request waiting for the shared store's answer.
#[derive(Debug)]
enum Parked {
    /// A multicast retransmit waiting for its dedup claim.
    Multicast(PendingMulticast),
    /// A miss waiting for the shared-cache lookup.
    Lookup(Lookup),
    /// A recovery job waiting for its proxy claim.
    Proxy(FrameKey),
}

/// Routes the service's effects and holds the requests parked for the
/// shared store (see the module's contract).
#[derive(Debug)]
pub struct Router {
    next_token: u64,
    parked: HashMap<u64, (Instant, Parked)>,
    /// (parked at, token) in time order, for the deadline sweep.
    order: VecDeque<(Instant, u64)>,
    max_parked: usize,
    stats: RouterStats,
}

impl Default for Router {
    fn default() -> Self {
        Router::new(MAX_PARKED)
    }
}

impl Router {
    /// A router parking at most `max_parked` requests.
    pub fn new(max_parked: usize) -> Self {
        Router {
            next_token: 0,
            parked: HashMap::new(),
            order: VecDeque::new(),
            max_parked,
            stats: RouterStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    /// Requests waiting for the store's answer.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Carries out the effects in `parts.outbox` until none are left.
    pub fn route(&mut self, now: Instant, parts: &mut Parts<'_>, store: &mut impl StoreQueue) {
        while !parts.outbox.effects.is_empty() {
            let mut effects = std::mem::take(&mut parts.outbox.effects);
            for e in effects.drain(..) {
                match e {
                    Effect::Recover { hash_key, seq, subtree_id, from_sibling } => {
                        let key = FrameKey { hash_key, seq };
                        if !from_sibling && self.forward_to_owner(key, subtree_id, parts) {
                            continue;
                        }
                        let fill = parts.siblings.holder(key);
                        let out = &mut parts.outbox.transmits;
                        if parts.recovery.enqueue(now, key, subtree_id, fill, out)
                            == Enqueued::NeedsClaim
                        {
                            self.park(now, Parked::Proxy(key), parts, store);
                        }
                    }
                    Effect::Multicast(m) => {
                        if parts.local_dedup.try_claim(now, m.key) {
                            self.park(now, Parked::Multicast(m), parts, store);
                        } else {
                            parts.service.on_multicast_claim(m, false, parts.outbox);
                        }
                    }
                    Effect::Lookup(l) => self.park(now, Parked::Lookup(l), parts, store),
                }
            }
            // Keep the vector's capacity: no allocation per miss.
            if parts.outbox.effects.is_empty() {
                parts.outbox.effects = effects;
            }
        }
    }

    /// The store answered request `token`; an answer for a request already
    /// decided is ignored.
    pub fn on_answer(
        &mut self,
        now: Instant,
        token: u64,
        answer: StoreAnswer,
        parts: &mut Parts<'_>,
        store: &mut impl StoreQueue,
    ) {
        if let Some((_, p)) = self.parked.remove(&token) {
            self.settle(now, p, Some(answer), parts, store);
        }
    }

    /// Decides, as if the store were down, every request parked for
    /// `deadline` or longer.
    pub fn expire(
        &mut self,
        now: Instant,
        deadline: Duration,
        parts: &mut Parts<'_>,
        store: &mut impl StoreQueue,
    ) {
        while let Some(&(at, token)) = self.order.front() {
            if now.saturating_duration_since(at) < deadline {
                break;
            }
            self.order.pop_front();
            if let Some((_, p)) = self.parked.remove(&token) {
                self.stats.store_unavailable += 1;
                self.settle(now, p, None, parts, store);
            }
        }
        // Tokens answered in time leave stale entries behind; keep the
        // queue from outgrowing the parked set.
        if self.parked.is_empty() {
            self.order.clear();
        }
    }

    /// When a live sibling owns the gap `key`, queues a Sibling-flagged
    /// NACK for it to that sibling and returns true.
    fn forward_to_owner(
        &mut self,
        key: FrameKey,
        subtree_id: [u8; 32],
        parts: &mut Parts<'_>,
    ) -> bool {
        if !parts.recovery.enabled() {
            return false;
        }
        let Some(owner) = parts.siblings.owner(key) else { return false };
        let nack = NackRepr {
            flags: NackFlags(NackFlags::SIBLING),
            hash_key: key.hash_key,
            start_seq: key.seq,
            end_seq: key.seq,
            subtree_id,
        };
        let mut buf = [0u8; 64];
        let Ok(len) = nack.emit(&mut buf) else { return false };
        self.stats.gaps_forwarded_to_owner += 1;
        parts.outbox.transmits.push(Transmit {
            dest: Dest::Upstream(owner.nack),
            payload: Payload::Control { buf, len: len as u8 },
        });
        true
    }

    /// Parks `p` and queues its store request; when that is impossible it
    /// is decided at once as if the store were down.
    fn park(
        &mut self,
        now: Instant,
        p: Parked,
        parts: &mut Parts<'_>,
        store: &mut impl StoreQueue,
    ) {
        let token = self.next_token;
        let op = match &p {
            Parked::Multicast(m) => StoreOp::Claim { kind: ClaimKind::Retransmit, key: m.key },
            Parked::Proxy(key) => StoreOp::Claim { kind: ClaimKind::Proxy, key: *key },
            Parked::Lookup(l) => StoreOp::Get { key: l.key },
        };
        if self.parked.len() >= self.max_parked || !store.try_send(token, op) {
            self.stats.store_unavailable += 1;
            return self.settle(now, p, None, parts, store);
        }
        self.next_token += 1;
        self.parked.insert(token, (now, p));
        self.order.push_back((now, token));
    }

    /// Decides a parked request with the store's answer (`None`: as if the
    /// store were down), then routes what that queued.
    fn settle(
        &mut self,
        now: Instant,
        p: Parked,
        answer: Option<StoreAnswer>,
        parts: &mut Parts<'_>,
        store: &mut impl StoreQueue,
    ) {
        let claim = match answer {
            Some(StoreAnswer::Claim(c)) => c,
            _ => ClaimResult::Unavailable,
        };
        match p {
            Parked::Multicast(m) => {
                let send = claim != ClaimResult::Lost;
                parts.service.on_multicast_claim(m, send, parts.outbox);
            }
            Parked::Proxy(key) => {
                parts.recovery.on_claim(now, key, claim, &mut parts.outbox.transmits)
            }
            Parked::Lookup(l) => {
                let found = match answer {
                    Some(StoreAnswer::Get(Ok(found))) => found,
                    _ => None,
                };
                parts.service.on_lookup(now, l, found, parts.outbox);
            }
        }
        self.route(now, parts, store);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use ricochet_wire::control::{Nack, ResponseKind, ResponseRepr};

    use super::*;
    use crate::retry::{RecoverySettings, Settings, Sibling};

    const UPSTREAM: &str = "192.0.2.1:9000";

    fn listener() -> SocketAddr {
        "[2001:db8::7]:40000".parse().unwrap()
    }

    /// A worker's state, owned, lent to the router as [`Parts`].
    struct World {
        t0: Instant,
        service: Service,
        recovery: Recovery,
        siblings: Siblings,
        local_dedup: Claims<FrameKey>,
        outbox: Outbox,
        router: Router,
        /// What the fake store was asked, in order.
        asked: Vec<(u64, StoreOp)>,
        /// Whether the fake store takes requests.
        store_up: bool,
    }

    impl World {
        fn new(max_parked: usize, upstream: bool, shared_claims: bool) -> World {
            let t0 = Instant::now();
            let upstreams = if upstream { vec![UPSTREAM.parse().unwrap()] } else { vec![] };
            World {
                t0,
                service: Service::new(Settings::default(), t0),
                recovery: Recovery::new(RecoverySettings {
                    upstreams,
                    shared_claims,
                    ..RecoverySettings::default()
                }),
                siblings: Siblings::new(1, []),
                local_dedup: Claims::new(Duration::from_secs(2), 1024),
                outbox: Outbox::new(),
                router: Router::new(max_parked),
                asked: Vec::new(),
                store_up: true,
            }
        }

        /// Runs `f` with the parts and a fake store that records requests.
        fn with<R>(
            &mut self,
            f: impl FnOnce(&mut Router, &mut Parts<'_>, &mut dyn FnMut(u64, StoreOp) -> bool) -> R,
        ) -> R {
            let (asked, up) = (&mut self.asked, self.store_up);
            let mut store = |token: u64, op: StoreOp| {
                asked.push((token, op));
                up
            };
            let mut parts = Parts {
                service: &mut self.service,
                recovery: &mut self.recovery,
                siblings: &self.siblings,
                local_dedup: &mut self.local_dedup,
                outbox: &mut self.outbox,
            };
            f(&mut self.router, &mut parts, &mut store)
        }

        fn route(&mut self, now: Instant, effect: Effect) {
            self.outbox.effects.push(effect);
            self.with(|r, p, s| r.route(now, p, &mut DynStore(s)));
            assert!(self.outbox.effects.is_empty(), "every effect is routed");
        }

        fn answer(&mut self, now: Instant, token: u64, a: StoreAnswer) {
            self.with(|r, p, s| r.on_answer(now, token, a, p, &mut DynStore(s)));
        }

        fn expire(&mut self, now: Instant, deadline: Duration) {
            self.with(|r, p, s| r.expire(now, deadline, p, &mut DynStore(s)));
        }

        /// What was sent, rendered: `("group", seq)`, `("ack", flags)`,
        /// `("miss", 0)`, `("upstream", start)`, `("sibling", start)`.
        fn sent(&mut self) -> Vec<(&'static str, u64)> {
            self.outbox
                .drain_transmits()
                .map(|t| match (t.dest, &t.payload) {
                    (Dest::Group(_), Payload::Frame(_)) => ("group", 0),
                    (Dest::Unicast(_), p) => {
                        match ResponseRepr::parse(p.as_bytes()).unwrap().kind {
                            ResponseKind::Ack(f) => ("ack", u64::from(f.0)),
                            ResponseKind::Miss => ("miss", 0),
                            ResponseKind::Throttled { .. } => ("throttled", 0),
                        }
                    }
                    (Dest::Upstream(a), p) => {
                        let n = Nack::new_checked(p.as_bytes()).unwrap();
                        let up: SocketAddr = UPSTREAM.parse().unwrap();
                        (if a == up { "upstream" } else { "sibling" }, n.start_seq())
                    }
                    other => panic!("unexpected transmit {other:?}"),
                })
                .collect()
        }
    }

    /// Adapts the test's `dyn FnMut` store to [`StoreQueue`].
    struct DynStore<'a, 'b>(&'a mut (dyn FnMut(u64, StoreOp) -> bool + 'b));

    impl StoreQueue for DynStore<'_, '_> {
        fn try_send(&mut self, token: u64, op: StoreOp) -> bool {
            (self.0)(token, op)
        }
    }

    fn key(seq: u64) -> FrameKey {
        FrameKey { hash_key: 0xF10, seq }
    }

    fn multicast(seq: u64) -> Effect {
        Effect::Multicast(PendingMulticast {
            key: key(seq),
            group: 3,
            frame: Bytes::from_static(b"frame"),
            ack_to: Some(listener()),
            ack_flags: 0,
        })
    }

    fn recover(seq: u64, from_sibling: bool) -> Effect {
        Effect::Recover { hash_key: key(seq).hash_key, seq, subtree_id: [7; 32], from_sibling }
    }

    fn lookup(seq: u64) -> Effect {
        Effect::Lookup(Lookup {
            key: key(seq),
            src: listener(),
            subtree_id: [7; 32],
            proxied: false,
            from_sibling: false,
            charge_chain: true,
            allowed: false,
            budget: crate::retry::Budget::for_request(false),
        })
    }

    const MULTICAST_ACK: u64 = ricochet_wire::control::AckFlags::MULTICAST as u64;

    #[test]
    fn a_store_that_cannot_take_the_claim_means_go_ahead() {
        let mut w = World::new(MAX_PARKED, false, false);
        w.store_up = false;
        w.route(w.t0, multicast(1));
        assert_eq!(w.sent(), [("group", 0), ("ack", MULTICAST_ACK)]);
        assert_eq!(w.router.stats().store_unavailable, 1);
        assert_eq!(w.router.parked(), 0);
    }

    #[test]
    fn a_parked_claim_waits_for_the_store_and_a_lost_one_is_not_sent() {
        let mut w = World::new(MAX_PARKED, false, false);
        w.route(w.t0, multicast(1));
        assert_eq!(w.sent(), [], "nothing before the claim is decided");
        assert_eq!(w.router.parked(), 1);
        let (token, op) = w.asked[0];
        assert_eq!(op, StoreOp::Claim { kind: ClaimKind::Retransmit, key: key(1) });
        w.answer(w.t0, token, StoreAnswer::Claim(ClaimResult::Lost));
        assert_eq!(w.sent(), [("ack", 0)], "a sibling sends it; the ACK says not multicast");
        // A second answer for the same token decides nothing again.
        w.answer(w.t0, token, StoreAnswer::Claim(ClaimResult::Won));
        assert_eq!(w.sent(), []);
        assert_eq!(w.router.stats().store_unavailable, 0);
    }

    #[test]
    fn a_local_claim_decides_a_repeat_without_asking_the_store() {
        let mut w = World::new(MAX_PARKED, false, false);
        w.route(w.t0, multicast(1));
        w.route(w.t0, multicast(1));
        assert_eq!(w.asked.len(), 1, "the store is asked once");
        assert_eq!(w.sent(), [("ack", 0)], "the repeat is answered, not multicast");
        let token = w.asked[0].0;
        w.answer(w.t0, token, StoreAnswer::Claim(ClaimResult::Won));
        assert_eq!(w.sent(), [("group", 0), ("ack", MULTICAST_ACK)]);
    }

    #[test]
    fn an_overdue_answer_is_decided_as_store_down_and_a_late_one_ignored() {
        let mut w = World::new(MAX_PARKED, false, false);
        let deadline = Duration::from_millis(500);
        w.route(w.t0, multicast(1));
        w.route(w.t0 + Duration::from_millis(300), multicast(2));
        w.expire(w.t0 + Duration::from_millis(499), deadline);
        assert_eq!(w.sent(), [], "nothing is overdue yet");
        w.expire(w.t0 + deadline, deadline);
        assert_eq!(w.sent(), [("group", 0), ("ack", MULTICAST_ACK)], "the first goes ahead");
        assert_eq!((w.router.stats().store_unavailable, w.router.parked()), (1, 1));
        let first = w.asked[0].0;
        w.answer(w.t0 + deadline, first, StoreAnswer::Claim(ClaimResult::Lost));
        assert_eq!(w.sent(), [], "decided once");
        w.expire(w.t0 + Duration::from_secs(1), deadline);
        assert_eq!(w.sent(), [("group", 0), ("ack", MULTICAST_ACK)]);
        assert_eq!((w.router.stats().store_unavailable, w.router.parked()), (2, 0));
    }

    #[test]
    fn beyond_the_parking_cap_requests_go_ahead_at_once() {
        let mut w = World::new(1, false, false);
        w.route(w.t0, lookup(1));
        w.route(w.t0, lookup(2));
        assert_eq!(w.asked.len(), 1, "the second is not queued");
        assert_eq!(w.router.parked(), 1);
        assert_eq!(w.sent(), [("miss", 0)], "the second is a miss at once");
        assert_eq!(w.router.stats().store_unavailable, 1);
    }

    #[test]
    fn a_shared_cache_miss_goes_on_to_recovery_in_the_same_call() {
        let mut w = World::new(MAX_PARKED, true, true);
        w.service = Service::new(Settings { proxy_enabled: true, ..Settings::default() }, w.t0);
        w.route(w.t0, lookup(5));
        let (token, op) = w.asked[0];
        assert_eq!(op, StoreOp::Get { key: key(5) });
        // Not found: the service's MISS asks for recovery, which needs
        // its proxy claim: parked again, in the same call.
        w.answer(w.t0, token, StoreAnswer::Get(Ok(None)));
        assert!(w.outbox.effects.is_empty());
        assert_eq!(w.asked.len(), 2);
        assert_eq!(w.asked[1].1, StoreOp::Claim { kind: ClaimKind::Proxy, key: key(5) });
        let claim = w.asked[1].0;
        w.answer(w.t0, claim, StoreAnswer::Claim(ClaimResult::Won));
        let sent = w.sent();
        assert!(sent.contains(&("upstream", 5)), "{sent:?}");
    }

    #[test]
    fn a_gap_a_sibling_owns_is_forwarded_to_it_once() {
        let mut w = World::new(MAX_PARKED, true, false);
        let sib = Sibling { id: 2, nack: "192.0.2.2:9001".parse().unwrap() };
        w.siblings = Siblings::new(1, [sib]);
        let owned = (1..).find(|&s| w.siblings.owner(key(s)).is_some()).unwrap();
        let mine = (1..).find(|&s| w.siblings.owner(key(s)).is_none()).unwrap();
        w.route(w.t0, recover(owned, false));
        let flags = Nack::new_checked(w.outbox.transmits[0].payload.as_bytes()).unwrap().flags();
        assert!(flags.sibling() && !flags.proxied(), "forwarded as a Sibling NACK");
        assert_eq!(w.sent(), [("sibling", owned)]);
        assert_eq!(w.router.stats().gaps_forwarded_to_owner, 1);
        // Forwarded to us by a sibling: recovered here, not bounced back.
        w.route(w.t0, recover(owned, true));
        assert_eq!(w.sent(), [("upstream", owned)]);
        w.route(w.t0, recover(mine, false));
        assert_eq!(w.sent(), [("upstream", mine)]);
        assert_eq!(w.router.stats().gaps_forwarded_to_owner, 1);
    }

    #[test]
    fn without_upstreams_a_gap_is_not_forwarded_but_filled_from_a_holder() {
        let mut w = World::new(MAX_PARKED, false, false);
        let sib = Sibling { id: 2, nack: "192.0.2.2:9001".parse().unwrap() };
        let owned = (1..).find(|&s| Siblings::new(1, [sib]).owner(key(s)).is_some()).unwrap();
        let holding = crate::retry::Holding {
            hash_key: key(owned).hash_key,
            lo: owned,
            hi: owned,
            missing: 0,
        };
        w.siblings = Siblings::new(1, [sib]).with_holdings(2, vec![holding]);
        w.route(w.t0, recover(owned, false));
        assert_eq!(w.router.stats().gaps_forwarded_to_owner, 0);
        let sent = w.sent();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].1, owned, "the holder is asked for the frame");
    }
}
