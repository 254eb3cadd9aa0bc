//! G3 rumors and their G5 ACKs: origination, hypercube and fallback
//! fan-out, delivery, retries and reroutes around silent members.
//!
//! Invariants kept by [`Retained`]: a rumor body is held exactly as long
//! as a send of it awaits an ACK (its reference count is the number of
//! tracked sends, and a body nobody waits on is dropped); at most one send
//! of a rumor to a target is tracked, and the `(rumor, target)` index names
//! exactly the tracked sends. The number of tracked sends is bounded by
//! [`Config::max_pending_acks`] (beyond it, sends go untracked).

use core::net::SocketAddr;
use std::collections::BTreeMap;
use std::time::Instant;

use ricochet_wire::gossip::{GossipFrame, ORIGIN_DIMENSION, RumorAckRepr, RumorRepr, rumor_id};

#[cfg(doc)]
use super::super::Config;
use super::super::dedup::{Admission, DELIVERED, FWD_DUAL, FWD_FALLBACK, FWD_PRIMARY};
use super::super::hypercube::{Cube, DimensionHealth, Sender, expected_sender, tree_targets};
use super::super::{Event, TopicMode};
use super::egress::emit;
use super::{
    DUAL_BIT, FALLBACK_DIMENSION, Gossip, MAX_DIMENSION, QUERY_HEADER, REROUTE_BIT, RESPONSE_BIT,
    RumorId, Timer,
};

/// Egress priority of G5 ACKs: above everything else.
const ACK_PRIORITY: u8 = u8::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Primary,
    Dual,
    Fallback,
}

impl Route {
    fn flag(self) -> u8 {
        match self {
            Route::Primary => FWD_PRIMARY,
            Route::Dual => FWD_DUAL,
            Route::Fallback => FWD_FALLBACK,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    Origin,
    Cube { route: Route, dim: u32, rerouted: bool },
    Fallback,
}

fn decode_dimension(b: u8) -> Option<Arrival> {
    match b {
        ORIGIN_DIMENSION => Some(Arrival::Origin),
        FALLBACK_DIMENSION => Some(Arrival::Fallback),
        _ if b & 0x20 != 0 => None,
        _ => {
            let route = if b & DUAL_BIT != 0 { Route::Dual } else { Route::Primary };
            Some(Arrival::Cube {
                route,
                dim: u32::from(b & MAX_DIMENSION),
                rerouted: b & REROUTE_BIT != 0,
            })
        }
    }
}

fn encode_dimension(route: Route, dim: u32, rerouted: bool) -> u8 {
    let d = (dim as u8) & MAX_DIMENSION;
    let r = if rerouted { REROUTE_BIT } else { 0 };
    match route {
        Route::Primary => d | r,
        Route::Dual => DUAL_BIT | d | r,
        Route::Fallback => FALLBACK_DIMENSION,
    }
}

/// A rumor body kept while sends of it await ACKs.
#[derive(Debug)]
struct Held {
    topic: Vec<u8>,
    payload: Vec<u8>,
    priority: u8,
    refs: u32,
}

#[derive(Debug, Clone, Copy)]
struct PendingAck {
    rumor: RumorId,
    target: SocketAddr,
    route: Route,
    dim: u32,
    target_pos: usize,
    epoch: u64,
    hop: u8,
    attempt: u8,
    /// Fallback: the member we got the rumor from (never pushed back to).
    source: Option<SocketAddr>,
}

/// Rumor bodies held for the sends awaiting their ACKs, and those sends.
#[derive(Debug, Default)]
pub(super) struct Retained {
    held: BTreeMap<RumorId, Held>,
    /// Tracked sends by sequence number (their `Timer::Ack`).
    pending: BTreeMap<u64, PendingAck>,
    /// The tracked send of each rumor to each target.
    index: BTreeMap<(RumorId, SocketAddr), u64>,
}

impl Retained {
    /// Sends awaiting an ACK.
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    fn body(&self, id: &RumorId) -> Option<&Held> {
        self.held.get(id)
    }

    fn hold(&mut self, id: RumorId, topic: &[u8], payload: &[u8], priority: u8) {
        self.held.entry(id).or_insert_with(|| Held {
            topic: topic.to_vec(),
            payload: payload.to_vec(),
            priority,
            refs: 0,
        });
    }

    /// Drops a held body nobody waits on.
    fn release(&mut self, id: &RumorId) {
        if self.held.get(id).is_some_and(|h| h.refs == 0) {
            self.held.remove(id);
        }
    }

    fn unref(&mut self, id: &RumorId) {
        if let Some(h) = self.held.get_mut(id) {
            h.refs = h.refs.saturating_sub(1);
        }
        self.release(id);
    }

    /// Tracks send `seq` of a held rumor; the body stays held until the
    /// send is settled. A tracked send it replaces (same rumor, same
    /// target) is settled now.
    fn track(&mut self, seq: u64, p: PendingAck) {
        if let Some(h) = self.held.get_mut(&p.rumor) {
            h.refs += 1;
        }
        if let Some(old) = self.index.insert((p.rumor, p.target), seq)
            && self.pending.remove(&old).is_some()
        {
            self.unref(&p.rumor);
        }
        self.pending.insert(seq, p);
    }

    /// Settles the tracked send of `id` to `from`, which ACKed it; `None`
    /// if no send of it to `from` is tracked.
    fn acked(&mut self, from: SocketAddr, id: &RumorId) -> Option<PendingAck> {
        let seq = self.index.remove(&(*id, from))?;
        let p = self.pending.remove(&seq)?;
        self.unref(id);
        Some(p)
    }

    /// Stops tracking send `seq`, whose ACK did not come in time. Its body
    /// stays held (for a retry) until the caller `unref`s it.
    fn expired(&mut self, seq: u64) -> Option<PendingAck> {
        let p = self.pending.remove(&seq)?;
        if self.index.get(&(p.rumor, p.target)) == Some(&seq) {
            self.index.remove(&(p.rumor, p.target));
        }
        Some(p)
    }
}

impl Gossip {
    /// Starts a rumor here: remembers it as delivered and fans it out.
    pub(super) fn originate(
        &mut self,
        now: Instant,
        topic: &[u8],
        payload: &[u8],
        priority: u8,
    ) -> RumorId {
        let id = rumor_id(payload);
        self.retained.hold(id, topic, payload, priority);
        if self.cube_valid(now) {
            let dual = if self.config.dual_cube { FWD_DUAL } else { 0 };
            // Fallback push too: the whole cube has it, as a cube copy
            // claims fallback wherever it arrives (dedup::arrival_routes).
            self.mark(id, DELIVERED | FWD_PRIMARY | dual | FWD_FALLBACK);
            self.cube_fanout(now, id, Route::Primary, None, 1);
            if self.config.dual_cube {
                self.cube_fanout(now, id, Route::Dual, None, 1);
            }
        } else {
            self.mark(id, DELIVERED | FWD_FALLBACK);
            self.fallback_fanout(now, id, 1, None);
        }
        self.retained.release(&id);
        id
    }

    /// Records a rumor originated here as delivered and forwarded on
    /// `flags`, in our LRU and, with external dedup, for the caller.
    fn mark(&mut self, id: RumorId, flags: u8) {
        self.dedup.insert(id, flags);
        if self.config.external_dedup {
            self.marks.push((id, flags));
        }
    }

    pub(super) fn on_rumor(&mut self, now: Instant, from: SocketAddr, r: &RumorRepr<'_>) {
        let Some(routes) =
            super::super::dedup::arrival_routes(r.from_dimension, self.config.dual_cube)
        else {
            self.stats.drops.bad_dimension += 1;
            return;
        };
        let id = rumor_id(r.payload);
        // ACK every copy, duplicates too: the sender may have missed our
        // first ACK and must stop retrying.
        self.send(from, ACK_PRIORITY, &GossipFrame::RumorAck(RumorAckRepr { rumor_id: id }));
        match self.dedup.admit(&id, routes) {
            Some(a) => self.on_admitted(now, from, r, a),
            None => self.stats.rumor_duplicates += 1,
        }
    }

    /// Acts on a copy of a rumor as far as its [`Admission`] allows:
    /// delivers it if it is the first, forwards it on the routes it
    /// claimed (the cube ones while the cube is valid, else by fallback
    /// push).
    pub(super) fn on_admitted(
        &mut self,
        now: Instant,
        from: SocketAddr,
        r: &RumorRepr<'_>,
        a: Admission,
    ) {
        let Some(arrival) = decode_dimension(r.from_dimension) else {
            self.stats.drops.bad_dimension += 1;
            return;
        };
        let id = rumor_id(r.payload);
        if a.deliver {
            self.stats.rumors_delivered += 1;
            self.deliver(from, r);
        } else {
            self.stats.rumor_duplicates += 1;
        }
        let claimed = a.claimed;
        let hop = r.hop_count.saturating_add(1);
        let forwarded_before = self.egress.rumors_queued();
        self.retained.hold(id, r.topic, r.payload, r.priority);
        match arrival {
            Arrival::Origin => {
                if self.cube_valid(now) {
                    for route in self.cube_routes() {
                        if claimed & route.flag() != 0 {
                            self.cube_fanout(now, id, route, None, hop);
                        }
                    }
                } else if claimed & FWD_FALLBACK != 0 {
                    self.fallback_fanout(now, id, hop, Some(from));
                }
            }
            Arrival::Cube { route, dim, rerouted } => {
                if claimed & route.flag() != 0 {
                    if !rerouted && !self.sender_consistent(route, dim, from) {
                        self.view_mismatch(now, from);
                    }
                    if self.cube_valid(now) {
                        self.cube_fanout(now, id, route, Some(dim), hop);
                    } else if claimed & FWD_FALLBACK != 0 {
                        self.fallback_forward(now, id, r.hop_count, from);
                    }
                }
            }
            Arrival::Fallback => {
                if claimed & FWD_FALLBACK != 0 {
                    self.fallback_forward(now, id, r.hop_count, from);
                }
            }
        }
        self.stats.rumor_forwards += self.egress.rumors_queued() - forwarded_before;
        self.retained.release(&id);
    }

    /// Local effects of a rumor seen for the first time.
    fn deliver(&mut self, from: SocketAddr, r: &RumorRepr<'_>) {
        let Some(t) = self.topics.get_mut(r.topic) else {
            self.stats.unknown_topic_rumors += 1;
            return;
        };
        let subscribed = t.subscribed;
        let event = |changed| Event::Delivered {
            topic: r.topic.to_vec(),
            payload: r.payload.to_vec(),
            from,
            hops: r.hop_count,
            changed,
        };
        match &mut t.mode {
            TopicMode::BroadcastOnly => {
                if subscribed {
                    self.events.push(event(false));
                }
            }
            TopicMode::StatefulMerge(store) => match store.apply(r.payload) {
                Ok(changed) => {
                    if subscribed {
                        self.events.push(event(changed));
                    }
                }
                Err(_) => self.stats.drops.apply_rejected += 1,
            },
            TopicMode::RequestResponse(responder) => {
                let Some((head, query)) = r.payload.split_first_chunk::<QUERY_HEADER>() else {
                    self.stats.drops.bad_query += 1;
                    return;
                };
                let qid = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                let mut origin = [0u8; 32];
                origin.copy_from_slice(&head[4..]);
                if origin == self.me.id || qid & RESPONSE_BIT != 0 {
                    return;
                }
                if let Some(reply) = responder.respond(&origin, query) {
                    self.send_reply(r.topic, qid, &origin, &reply);
                }
            }
        }
    }

    fn cube_routes(&self) -> Vec<Route> {
        if self.config.dual_cube { vec![Route::Primary, Route::Dual] } else { vec![Route::Primary] }
    }

    fn cube(&self, route: Route) -> &Cube {
        if route == Route::Dual { &self.dual } else { &self.primary }
    }

    fn health_mut(&mut self, route: Route) -> &mut DimensionHealth {
        &mut self.health[usize::from(route == Route::Dual)]
    }

    /// Sends on every tree edge below us in `route`'s cube.
    fn cube_fanout(&mut self, now: Instant, id: RumorId, route: Route, from: Option<u32>, hop: u8) {
        let cube = self.cube(route);
        let Some(me) = cube.position_of(self.self_index) else { return };
        let targets: Vec<(u32, usize, SocketAddr)> = tree_targets(cube.len(), me, from)
            .into_iter()
            .filter_map(|(d, p)| cube.member_at(p).map(|m| (d, p, self.members[m].addr)))
            .collect();
        for (dim, pos, addr) in targets {
            self.send_rumor(now, id, addr, route, dim, pos, hop, 0, None, false);
        }
    }

    /// Random-peer push to `fallback_fanout` members other than us and
    /// `exclude`.
    fn fallback_fanout(&mut self, now: Instant, id: RumorId, hop: u8, exclude: Option<SocketAddr>) {
        let mut cands: Vec<SocketAddr> = self
            .members
            .iter()
            .map(|m| m.addr)
            .filter(|a| *a != self.me.addr && Some(*a) != exclude)
            .collect();
        let k = self.config.fallback_fanout.min(cands.len());
        for i in 0..k {
            let j = i + self.rng.index(cands.len() - i);
            cands.swap(i, j);
        }
        for &addr in &cands[..k] {
            self.send_rumor(now, id, addr, Route::Fallback, 0, 0, hop, 0, exclude, false);
        }
    }

    /// Fallback forwarding of a rumor that travelled `hop` hops: with
    /// probability `P / (1 + hop)`, below the hop limit.
    fn fallback_forward(&mut self, now: Instant, id: RumorId, hop: u8, from: SocketAddr) {
        if hop >= self.config.max_hops {
            return;
        }
        let p = self.config.fallback_forward_p / (1.0 + f64::from(hop));
        if self.rng.chance(p) {
            self.fallback_fanout(now, id, hop.saturating_add(1), Some(from));
        }
    }

    /// Sends one G3 copy of a held rumor and tracks its ACK.
    #[allow(clippy::too_many_arguments)]
    fn send_rumor(
        &mut self,
        now: Instant,
        id: RumorId,
        dest: SocketAddr,
        route: Route,
        dim: u32,
        target_pos: usize,
        hop: u8,
        attempt: u8,
        source: Option<SocketAddr>,
        rerouted: bool,
    ) {
        if dest == self.me.addr {
            return;
        }
        let Some(h) = self.retained.body(&id) else { return };
        let priority = h.priority;
        let frame = GossipFrame::Rumor(RumorRepr {
            hop_count: hop,
            from_dimension: encode_dimension(route, dim, rerouted),
            priority,
            topic: &h.topic,
            payload: &h.payload,
        });
        let Some(bytes) = emit(&frame) else { return };
        self.enqueue(dest, priority, 3, bytes, 0);
        if route == Route::Fallback {
            self.stats.fallback_sends += 1;
        }
        if self.retained.pending() >= self.config.max_pending_acks {
            self.stats.untracked_sends += 1;
            return;
        }
        let seq = self.next_seq();
        let p = PendingAck {
            rumor: id,
            target: dest,
            route,
            dim,
            target_pos,
            epoch: self.epoch,
            hop,
            attempt,
            source,
        };
        self.retained.track(seq, p);
        self.timers.insert((now + self.config.ack_timeout, Timer::Ack(seq)));
    }

    pub(super) fn on_ack(&mut self, from: SocketAddr, id: &RumorId) {
        let Some(p) = self.retained.acked(from, id) else {
            self.stats.acks_unmatched += 1;
            return;
        };
        self.stats.acks_matched += 1;
        if p.route != Route::Fallback {
            self.health_mut(p.route).success(p.dim);
        }
    }

    pub(super) fn ack_timeout(&mut self, now: Instant, seq: u64) {
        let Some(p) = self.retained.expired(seq) else { return };
        if p.route != Route::Fallback {
            self.health_mut(p.route).loss(p.dim);
        }
        if p.attempt >= self.config.rumor_retries {
            self.stats.rumors_dropped += 1;
            self.events.push(Event::RumorDropped { rumor: p.rumor, peer: p.target });
            self.retained.unref(&p.rumor);
            return;
        }
        self.stats.rumor_retries += 1;
        let attempt = p.attempt + 1;
        match p.route {
            Route::Fallback => {
                let cands: Vec<SocketAddr> = self
                    .members
                    .iter()
                    .map(|m| m.addr)
                    .filter(|a| *a != self.me.addr && *a != p.target && Some(*a) != p.source)
                    .collect();
                let dest =
                    if cands.is_empty() { p.target } else { cands[self.rng.index(cands.len())] };
                self.send_rumor(now, p.rumor, dest, p.route, 0, 0, p.hop, attempt, p.source, false);
            }
            route => {
                let weight = self.health[usize::from(route == Route::Dual)].weight(p.dim);
                let direct =
                    (attempt == 1 && weight >= self.config.reroute_below) || p.epoch != self.epoch;
                let cube = self.cube(route);
                let around: Vec<(u32, usize, SocketAddr)> = if direct {
                    Vec::new()
                } else {
                    tree_targets(cube.len(), p.target_pos, Some(p.dim))
                        .into_iter()
                        .filter_map(|(d, q)| {
                            cube.member_at(q).map(|m| (d, q, self.members[m].addr))
                        })
                        .collect()
                };
                // The target itself always gets another copy (it may only
                // have lost our datagram); a reroute adds its subtree.
                self.send_rumor(
                    now,
                    p.rumor,
                    p.target,
                    route,
                    p.dim,
                    p.target_pos,
                    p.hop,
                    attempt,
                    None,
                    false,
                );
                let hop = p.hop.saturating_add(1);
                for (d, q, addr) in around {
                    self.stats.rumor_reroutes += 1;
                    self.send_rumor(now, p.rumor, addr, route, d, q, hop, attempt, None, true);
                }
            }
        }
        self.retained.unref(&p.rumor);
    }

    /// Whether a rumor that arrived on `dim` of `route`'s cube came from
    /// the member our view puts there.
    fn sender_consistent(&self, route: Route, dim: u32, from: SocketAddr) -> bool {
        let cube = self.cube(route);
        let Some(me) = cube.position_of(self.self_index) else { return false };
        match expected_sender(cube.len(), me, dim) {
            None => false,
            // The partner is virtual: its nearest real ancestor, some member,
            // sends in its place.
            Some(Sender::Virtual) => self.by_addr.contains_key(&from),
            Some(Sender::Partner(p)) => {
                cube.member_at(p).map(|m| self.members[m].addr) == Some(from)
            }
        }
    }

    fn view_mismatch(&mut self, now: Instant, from: SocketAddr) {
        self.stats.view_mismatches += 1;
        if self.mismatch_until.is_none_or(|t| now >= t) {
            self.events.push(Event::ViewMismatch { from });
        }
        self.mismatch_until = Some(now + self.config.fallback_hold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_holds_a_body_while_a_send_awaits_its_ack() {
        let id = [7; 32];
        let (a, b) = (SocketAddr::from(([10, 0, 0, 1], 1)), SocketAddr::from(([10, 0, 0, 2], 1)));
        let send = |target| PendingAck {
            rumor: id,
            target,
            route: Route::Primary,
            dim: 0,
            target_pos: 0,
            epoch: 0,
            hop: 1,
            attempt: 0,
            source: None,
        };
        let mut r = Retained::default();
        r.hold(id, b"topic", b"payload", 0);
        r.track(1, send(a));
        r.track(2, send(b));
        // A resend to the same target replaces the tracked send.
        r.track(3, send(a));
        assert_eq!(r.pending(), 2);
        r.release(&id);
        assert!(r.body(&id).is_some());
        assert_eq!(r.acked(a, &id).map(|p| p.target), Some(a));
        assert!(r.acked(a, &id).is_none());
        assert!(r.expired(1).is_none());
        assert_eq!(r.expired(2).map(|p| p.target), Some(b));
        // Held for the retry until the caller lets go.
        assert!(r.body(&id).is_some());
        r.unref(&id);
        assert!(r.body(&id).is_none());
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn from_dimension_codes_round_trip() {
        for dim in 0..=u32::from(MAX_DIMENSION) {
            for route in [Route::Primary, Route::Dual] {
                for rerouted in [false, true] {
                    let b = encode_dimension(route, dim, rerouted);
                    assert_eq!(decode_dimension(b), Some(Arrival::Cube { route, dim, rerouted }));
                }
            }
        }
        assert_eq!(decode_dimension(0xFF), Some(Arrival::Origin));
        assert_eq!(decode_dimension(0xFE), Some(Arrival::Fallback));
        for bad in [0x20, 0x3F, 0x60, 0xA0, 0xE0, 0xFD] {
            assert_eq!(decode_dimension(bad), None, "{bad:#x}");
        }
    }
}
