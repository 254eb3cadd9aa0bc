//! Engine-level tests on a small synchronous network: security checks on
//! the receive path, ACK retries and rerouting, view mismatch fallback,
//! anti-entropy with chunking, pull, G4 reconciliation (fixed, rateless,
//! fallback, loss, hostile frames), queries, egress priorities and
//! backpressure. The N-member simulation lives in
//! `engine/proto/tests/gossip_sim.rs`.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::VecDeque;
use std::time::Instant;

use ricochet_wire::gossip::{
    Cells, DigestRepr, ExchangeRepr, GossipFrame, IbltCell, PullRepr, ReconcileKind, ReconcileMode,
    ReconcileRepr, RumorRepr, SnapshotRepr,
};
use ricochet_wire::mac::{ClusterKey, GOSSIP_OVERHEAD, Stamp};

use super::*;

const TOPIC: &[u8] = b"state";

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8)), 9310)
}

fn key() -> ClusterKey {
    ClusterKey::new([9; 32])
}

fn member(i: usize) -> Member {
    Member { id: *blake3::hash(&(i as u64).to_le_bytes()).as_bytes(), addr: addr(i) }
}

/// Seals frame bytes as a fresh v2 datagram from a test sender, stamped
/// `unix_ms` (the engines' clocks read 0 at the instant they were made).
fn seal_bytes_at(frame: &[u8], unix_ms: u64) -> Vec<u8> {
    thread_local! {
        static COUNTER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let counter = COUNTER.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let stamp = Stamp { sender: 0x7E57, time_ms: unix_ms, counter };
    key().seal_gossip_vec(frame, 0, &stamp).unwrap()
}

fn seal_at(frame: &GossipFrame<'_>, unix_ms: u64) -> Vec<u8> {
    let mut buf = vec![0u8; frame.buffer_len()];
    frame.emit(&mut buf).unwrap();
    seal_bytes_at(&buf, unix_ms)
}

/// A fresh datagram stamped at the engines' time 0.
fn seal(frame: &GossipFrame<'_>) -> Vec<u8> {
    seal_at(frame, 0)
}

/// The frame inside one of our engines' datagrams.
fn open(payload: &[u8]) -> &[u8] {
    key().open_gossip(payload).unwrap().frame
}

/// Frame number of a sealed datagram.
fn kind(payload: &[u8]) -> u8 {
    payload[1] - 0x30
}

/// Decides, per datagram `(from, to, bytes)`, whether the network drops it.
type Filter = Box<dyn FnMut(usize, usize, &[u8]) -> bool>;

struct Net {
    t0: Instant,
    now: Duration,
    nodes: Vec<Gossip>,
    /// In flight: (deliver at, to, from, bytes).
    queue: VecDeque<(Duration, usize, SocketAddr, Vec<u8>)>,
    out: Outbox,
    /// Drops every datagram for which this returns true.
    filter: Filter,
    sent: [u64; 7],
    events: Vec<(usize, Event)>,
    /// Per node, its workers' rumor dedup shards when the engines run with
    /// external dedup (as in the daemon); empty otherwise.
    shards: Vec<Vec<shard::RumorShard>>,
}

impl Net {
    fn new(n: usize, tweak: impl Fn(&mut Config)) -> Net {
        let t0 = Instant::now();
        let members: Vec<Member> = (0..n).map(member).collect();
        let nodes = (0..n)
            .map(|i| {
                let mut c = Config::new([i as u8 + 1; 32]);
                tweak(&mut c);
                let m = members[i];
                let mut g = Gossip::new(m.id, m.addr, key(), c, t0);
                g.register_topic(TOPIC, TopicMode::StatefulMerge(Box::new(MemStore::new())), 1)
                    .unwrap();
                g.register_topic(b"news", TopicMode::BroadcastOnly, 3).unwrap();
                g.subscribe(TOPIC).unwrap();
                g.subscribe(b"news").unwrap();
                g.set_members(&members);
                g
            })
            .collect();
        Net {
            t0,
            now: Duration::ZERO,
            nodes,
            queue: VecDeque::new(),
            out: Outbox::new(),
            filter: Box::new(|_, _, _| false),
            sent: [0; 7],
            events: Vec::new(),
            shards: Vec::new(),
        }
    }

    /// A network whose engines leave rumor dedup to `workers` shards per
    /// node, driven the way the daemon's workers drive them.
    fn sharded(n: usize, workers: usize, tweak: impl Fn(&mut Config)) -> Net {
        let mut net = Net::new(n, |c| {
            tweak(c);
            c.external_dedup = true;
        });
        let cfg = net.nodes[0].config().clone();
        net.shards = (0..n)
            .map(|i| {
                (0..workers)
                    .map(|w| {
                        let mut s =
                            shard::RumorShard::new(key(), &cfg, workers, (i * 64 + w) as u64);
                        s.set_unix_time(net.t0, 0);
                        s
                    })
                    .collect()
            })
            .collect();
        net
    }

    /// Delivers one datagram to node `to`: through its dedup shards when
    /// it is a rumor and the net is sharded, else to the engine.
    fn deliver(&mut self, to: usize, from: SocketAddr, bytes: &[u8]) {
        let now = self.instant();
        if self.shards.is_empty() || bytes.get(..2) != Some(&[0x47, 0x33][..]) {
            self.nodes[to].handle(now, from, bytes, &mut self.out);
            return;
        }
        // Read by any worker; decided by the one owning the id.
        let Some((id, owner, body)) = self.shards[to][0].open(now, bytes) else { return };
        let mut ack = Vec::new();
        let verdict = self.shards[to][owner].admit(now, from, &id, body, &mut ack);
        if !ack.is_empty() {
            let me = self.nodes[to].me().addr;
            self.out.transmits.push(Transmit { dest: from, payload: ack });
            debug_assert_eq!(self.index(me), Some(to));
        }
        if let shard::Verdict::Admitted(a) = verdict {
            self.nodes[to].handle_admitted(now, from, body, a, &mut self.out);
        }
    }

    fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    fn index(&self, a: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|g| g.me().addr == a)
    }

    fn flush(&mut self, from: usize) {
        let src = self.nodes[from].me().addr;
        for t in std::mem::take(&mut self.out.transmits) {
            assert!(t.payload.len() <= 1232);
            self.sent[usize::from(kind(&t.payload))] += 1;
            let Some(to) = self.index(t.dest) else { continue };
            if (self.filter)(from, to, &t.payload) {
                continue;
            }
            self.queue.push_back((self.now + Duration::from_millis(1), to, src, t.payload));
        }
        for e in self.out.events.drain(..) {
            self.events.push((from, e));
        }
        for (id, flags) in self.out.marks.drain(..) {
            let shards = &mut self.shards[from];
            let owner = dedup::shard_of(&id, shards.len());
            shards[owner].mark(id, flags);
        }
    }

    /// Delivers datagrams and fires timers until `end`.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_msg = self.queue.front().map(|m| m.0);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, g)| {
                    g.poll_timeout().map(|t| (t.saturating_duration_since(self.t0), i))
                })
                .min();
            let step = match (next_msg, next_timer) {
                (Some(m), Some((t, _))) if m <= t => Some(None),
                (Some(_), None) => Some(None),
                (_, Some((t, i))) => Some(Some((t, i))),
                (None, None) => None,
            };
            match step {
                Some(None) if next_msg.is_some_and(|m| m <= end) => {
                    let (at, to, from, bytes) = self.queue.pop_front().unwrap();
                    self.now = self.now.max(at);
                    self.deliver(to, from, &bytes);
                    self.flush(to);
                }
                Some(Some((t, i))) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.instant();
                    self.nodes[i].handle_timeout(now, &mut self.out);
                    self.flush(i);
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn publish(&mut self, i: usize, topic: &[u8], payload: &[u8]) -> Result<RumorId, PublishError> {
        let now = self.instant();
        let r = self.nodes[i].publish(now, topic, payload, 1, &mut self.out);
        self.flush(i);
        r
    }

    fn holds(&self, i: usize, k: &[u8]) -> bool {
        self.nodes[i]
            .store(TOPIC)
            .unwrap()
            .snapshot()
            .iter()
            .any(|r| MemStore::split(r).is_some_and(|(key, _, _)| key == k))
    }
}

fn rec(k: &str) -> Vec<u8> {
    MemStore::record(k.as_bytes(), 1, b"v").unwrap()
}

#[test]
fn broadcast_reaches_everyone_with_n_minus_one_messages() {
    for n in [2, 5, 8, 13] {
        let mut net = Net::new(n, |_| {});
        net.publish(0, TOPIC, &rec("a")).unwrap();
        net.run_for(Duration::from_millis(100));
        assert!((0..n).all(|i| net.holds(i, b"a")), "n={n}");
        assert_eq!((net.sent[3], net.sent[5]), (n as u64 - 1, n as u64 - 1), "n={n}");
        let delivered = net
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Delivered { changed: true, .. }))
            .count();
        assert_eq!(delivered, n - 1);
        assert!(net.nodes.iter().all(|g| g.pending_acks() == 0));
    }
}

#[test]
fn broadcast_only_topics_emit_events_and_dual_cube_doubles_the_trees() {
    let mut net = Net::new(8, |c| c.dual_cube = true);
    net.publish(3, b"news", b"hello").unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent[3], 14, "two trees of 7 edges");
    let got: Vec<usize> = net
        .events
        .iter()
        .filter_map(|(i, e)| {
            matches!(e, Event::Delivered { payload, .. } if payload == b"hello").then_some(*i)
        })
        .collect();
    assert_eq!(got.len(), 7, "each member delivers once: {got:?}");
    let dups: u64 = net.nodes.iter().map(|g| g.stats().rumor_duplicates).sum();
    assert_eq!(dups, 7);
}

#[test]
fn with_dedup_sharded_over_workers_broadcasts_cost_the_same_and_survive_loss() {
    // No loss: two trees of 7 edges, each member delivers once, and the
    // duplicate (the second tree's copy) is absorbed by a worker shard.
    let mut net = Net::sharded(8, 2, |c| c.dual_cube = true);
    net.publish(3, b"news", b"hello").unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!((net.sent[3], net.sent[5]), (14, 14));
    let delivered = net
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Delivered { payload, .. } if payload == b"hello"))
        .count();
    assert_eq!(delivered, 7);
    let stats = |net: &Net| {
        net.shards.iter().flatten().fold((0, 0, 0), |(a, d, m), s| {
            (a + s.stats.admitted, d + s.stats.duplicates, m + s.stats.marks)
        })
    };
    assert_eq!(stats(&net), (14, 0, 1), "the dual copy claims the dual route: admitted");
    assert!(net.nodes.iter().all(|g| g.pending_acks() == 0));

    // 5 % loss on every datagram: every record still reaches everyone
    // (G5 retries, then anti-entropy), and the engines' own LRUs hold
    // only what they originated.
    let n = 16;
    let mut net = Net::sharded(n, 2, |_| {});
    let mut rng = crate::dht::rng::Rng::from_seed([42; 32]);
    net.filter = Box::new(move |_, _, _| rng.next_u64() % 100 < 5);
    for i in 0..n {
        net.publish(i, TOPIC, &rec(&format!("k{i}"))).unwrap();
    }
    net.run_for(Duration::from_secs(60));
    for i in 0..n {
        for k in 0..n {
            assert!(net.holds(i, format!("k{k}").as_bytes()), "member {i} lacks k{k}");
        }
        assert_eq!(net.nodes[i].dedup_len(), 1);
    }
    let (admitted, dups, marks) = stats(&net);
    assert_eq!(marks, n as u64);
    assert!(admitted >= (n * (n - 1)) as u64 / 2, "admitted {admitted}");
    assert!(dups > 0, "retried copies are absorbed by the shards");
}

#[test]
fn hostile_datagrams_are_dropped_and_counted() {
    let mut net = Net::new(2, |_| {});
    let now = net.instant();
    let g = &mut net.nodes[0];
    let from = addr(1);
    let mut out = Outbox::new();
    let digest = seal(&GossipFrame::Digest(DigestRepr { fingerprint: 1, matched: true }));
    // Forged (wrong key).
    let mut forged = digest.clone();
    ClusterKey::new([1; 32]).seal(&mut forged, 12).unwrap();
    g.handle(now, from, &forged, &mut out);
    // Tampered body, truncated, empty, oversized.
    let mut tampered = digest.clone();
    tampered[5] ^= 1;
    g.handle(now, from, &tampered, &mut out);
    g.handle(now, from, &digest[..10], &mut out);
    g.handle(now, from, &[], &mut out);
    g.handle(now, from, &vec![0u8; 1233], &mut out);
    // Authenticated garbage.
    g.handle(now, from, &seal_bytes_at(&[0x47, 0x39], 0), &mut out);
    // A version-1 datagram (raw MAC, no stamp) under the right key.
    let mut v1 = vec![0x47, 0x32, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
    v1.resize(12 + 16, 0);
    key().seal(&mut v1, 12).unwrap();
    g.handle(now, from, &v1, &mut out);
    // From ourselves.
    g.handle(now, addr(0), &digest, &mut out);
    // A G3 with a from-dimension this engine never uses.
    let bad_dim = seal(&GossipFrame::Rumor(RumorRepr {
        hop_count: 1,
        from_dimension: 0x33,
        priority: 0,
        topic: b"news",
        payload: b"x",
    }));
    g.handle(now, from, &bad_dim, &mut out);
    // A G1 chunk whose entries do not parse, and one for an unknown topic.
    let bad_entries = seal(&GossipFrame::Exchange(ExchangeRepr {
        full: false,
        exchange_id: 1,
        chunk_index: 0,
        chunk_count: 1,
        topic: TOPIC,
        watermark_ns: 0,
        entries: &[0, 0, 9],
    }));
    g.handle(now, from, &bad_entries, &mut out);
    let unknown = seal(&GossipFrame::Exchange(ExchangeRepr {
        full: false,
        exchange_id: 1,
        chunk_index: 0,
        chunk_count: 1,
        topic: b"nope",
        watermark_ns: 0,
        entries: &[0],
    }));
    g.handle(now, from, &unknown, &mut out);
    // An answer nobody asked for.
    let unsolicited = seal(&GossipFrame::Exchange(ExchangeRepr {
        full: false,
        exchange_id: 0x8000_0001,
        chunk_index: 0,
        chunk_count: 1,
        topic: TOPIC,
        watermark_ns: 0,
        entries: &[0],
    }));
    g.handle(now, from, &unsolicited, &mut out);
    let d = g.stats().drops;
    assert_eq!(d.get("bad_mac"), 2);
    assert_eq!(d.get("truncated"), 2);
    assert_eq!(d.get("too_long"), 1);
    assert_eq!(d.get("unknown_type"), 1);
    assert_eq!(d.get("bad_version"), 1);
    assert_eq!(d.self_source, 1);
    assert_eq!(d.bad_dimension, 1);
    assert_eq!(d.bad_entries, 1);
    assert_eq!(d.unknown_topic, 1);
    assert_eq!(d.unsolicited, 1);
    assert_eq!(d.total(), 12);
    assert!(out.transmits.is_empty(), "nothing answered: {:?}", out.transmits);
    assert_eq!(g.stats().rx_datagrams, 12);
}

#[test]
fn per_peer_rate_limit() {
    let mut net = Net::new(2, |_| {});
    let now = net.instant();
    let matched = || seal(&GossipFrame::Digest(DigestRepr { fingerprint: 1, matched: true }));
    let mut out = Outbox::new();
    for _ in 0..600 {
        net.nodes[0].handle(now, addr(1), &matched(), &mut out);
    }
    assert_eq!(net.nodes[0].stats().drops.rate_limited, 100);
    // Another source has its own bucket.
    net.nodes[0].handle(now, addr(7), &matched(), &mut out);
    assert_eq!(net.nodes[0].stats().drops.rate_limited, 100);
    // 100 msg/s refill.
    let later = now + Duration::from_millis(100);
    for _ in 0..10 {
        net.nodes[0].handle(later, addr(1), &matched(), &mut out);
    }
    assert_eq!(net.nodes[0].stats().drops.rate_limited, 100);
    net.nodes[0].handle(later, addr(1), &matched(), &mut out);
    assert_eq!(net.nodes[0].stats().drops.rate_limited, 101);
}

#[test]
fn a_lost_rumor_is_retried_over_the_same_edge() {
    let mut net = Net::new(4, |_| {});
    let mut dropped = false;
    net.filter = Box::new(move |_, to, p| {
        if kind(p) == 3 && to == 2 && !dropped {
            dropped = true;
            return true;
        }
        false
    });
    net.publish(0, TOPIC, &rec("a")).unwrap();
    net.run_for(Duration::from_secs(2));
    assert!((0..4).all(|i| net.holds(i, b"a")));
    let retries: u64 = net.nodes.iter().map(|g| g.stats().rumor_retries).sum();
    assert_eq!(retries, 1);
    assert_eq!(net.sent[3], 4);
    assert!(net.nodes.iter().all(|g| g.pending_acks() == 0));
}

#[test]
fn a_dead_member_is_routed_around_and_reported() {
    // 8 members; find the member the origin reaches on dimension 2 of the
    // primary cube (it has children on no higher dimension… so use dim 0,
    // whose receiver forwards on dims 1 and 2).
    let mut net = Net::new(8, |_| {});
    let origin = 0;
    let pos = net.nodes[origin].position();
    let dead_pos = pos ^ 1;
    let dead_addr = net.nodes[origin].members()[dead_pos].addr;
    let dead = net.index(dead_addr).unwrap();
    net.filter = Box::new(move |_, to, _| to == dead);
    net.publish(origin, TOPIC, &rec("a")).unwrap();
    net.run_for(Duration::from_secs(5));
    for i in 0..8 {
        assert_eq!(net.holds(i, b"a"), i != dead, "member {i}");
    }
    let s = net.nodes[origin].stats();
    assert_eq!(s.rumor_retries, 3);
    assert_eq!(s.rumor_reroutes, 2 * 2, "two retries around, two children each");
    assert_eq!(s.rumors_dropped, 1);
    assert!(net.events.iter().any(|(i, e)| *i == origin
        && matches!(e, Event::RumorDropped { peer, .. } if *peer == dead_addr)));
    assert!(net.nodes[origin].dimension_weights(false)[0] < 0.25);
    // The children got rerouted copies: no view mismatch.
    assert!(net.nodes.iter().all(|g| g.stats().view_mismatches == 0));
}

#[test]
fn a_view_mismatch_switches_to_random_push() {
    let mut net = Net::new(6, |_| {});
    let now = net.instant();
    // A rumor on dimension 0 from a member that is not our dimension-0
    // partner: the sender sorts the membership differently.
    let pos = net.nodes[1].position();
    let partner = net.nodes[1].members()[pos ^ 1].addr;
    let stranger = (0..6).map(addr).find(|a| *a != partner && *a != addr(1)).unwrap();
    let f = seal(&GossipFrame::Rumor(RumorRepr {
        hop_count: 1,
        from_dimension: 0,
        priority: 0,
        topic: b"news",
        payload: b"x",
    }));
    net.nodes[1].handle(now, stranger, &f, &mut net.out);
    net.flush(1);
    assert!(
        net.events.iter().any(|(i, e)| *i == 1 && *e == Event::ViewMismatch { from: stranger })
    );
    assert!(!net.nodes[1].cube_valid(now));
    assert!(net.nodes[1].cube_valid(now + Duration::from_secs(30)));
    // Our own rumors now go by random push.
    let sent = net.nodes[1].stats().fallback_sends;
    net.publish(1, b"news", b"y").unwrap();
    assert!(net.nodes[1].stats().fallback_sends > sent);
    net.run_for(Duration::from_secs(1));
    let got = net
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Delivered { payload, .. } if payload == b"y"))
        .count();
    assert!(got >= 1);
    // A membership change ends it at once.
    let mut view: Vec<Member> = (0..6).map(member).collect();
    view.pop();
    net.nodes[1].set_members(&view);
    assert!(net.nodes[1].cube_valid(net.instant()));
}

#[test]
fn fallback_push_respects_hop_limit_and_probability() {
    let mut net = Net::new(16, |c| {
        c.force_fallback = true;
        c.fallback_fanout = 3;
        c.max_hops = 2;
    });
    net.publish(0, b"news", b"x").unwrap();
    net.run_for(Duration::from_millis(200));
    // Origin sends 3 at hop 1; receivers forward with p = 1/2 at most once
    // each (3 more each), hop 2 is the limit.
    assert!(net.sent[3] >= 3 && net.sent[3] <= 3 + 3 * 3, "{}", net.sent[3]);
    assert!(net.nodes.iter().map(|g| g.stats().fallback_sends).sum::<u64>() == net.sent[3]);
}

#[test]
fn anti_entropy_converges_with_chunked_exchanges() {
    let mut net = Net::new(3, |_| {});
    // 300 records of ~100 bytes on node 0, written without rumors: only
    // G2/G1 can carry them (about 30 KB: dozens of chunks).
    for k in 0..300 {
        let r = MemStore::record(format!("key-{k:04}").as_bytes(), 7, &[k as u8; 90]).unwrap();
        net.nodes[0].store_mut(TOPIC).unwrap().apply(&r).unwrap();
    }
    assert_ne!(net.nodes[0].fingerprint(), net.nodes[1].fingerprint());
    net.run_for(Duration::from_secs(60));
    let fp = net.nodes[0].fingerprint();
    assert!(net.nodes.iter().all(|g| g.fingerprint() == fp), "converged");
    assert!(net.sent[1] > 40, "chunked: {} G1 datagrams", net.sent[1]);
    let s: Vec<Stats> = net.nodes.iter().map(Gossip::stats).collect();
    // First contact: full syncs are due, so they ran as G4 reconciliations;
    // 300 differences overflow a one-datagram table, so the stream went
    // rateless, and the records travelled as chunked G1.
    assert!(s.iter().map(|s| s.reconcile_completed).sum::<u64>() > 0);
    assert!(s.iter().map(|s| s.reconcile_flips).sum::<u64>() > 0);
    assert!(s.iter().map(|s| s.digest_matches).sum::<u64>() > 0, "idle rounds after");
    // Applied events were emitted.
    assert!(net.events.iter().any(|(_, e)| matches!(e, Event::Applied { .. })));
    // Once converged, rounds are idle and the interval grows.
    net.run_for(Duration::from_secs(200));
    assert!(net.nodes.iter().all(|g| g.interval() >= Duration::from_secs(20)));
    // A new record travels by anti-entropy too; where a pair has
    // watermarks the exchange is a delta.
    net.nodes[2].store_mut(TOPIC).unwrap().apply(&rec("late")).unwrap();
    net.run_for(Duration::from_secs(150));
    assert!((0..3).all(|i| net.holds(i, b"late")));
    let s: Vec<Stats> = net.nodes.iter().map(Gossip::stats).collect();
    let started: u64 = s.iter().map(|s| s.exchanges_started).sum();
    let full: u64 = s.iter().map(|s| s.full_syncs).sum();
    assert!(started > full, "some delta exchanges: {started} started, {full} full");
    let cadence = (0..3).flat_map(|i| (0..3).map(move |j| (i, j))).find_map(|(i, j)| {
        let peer = net.nodes[j].me().addr;
        net.nodes[i].full_sync_every(peer, TOPIC)
    });
    assert!(cadence.is_some_and(|n| (5..=20).contains(&n)), "{cadence:?}");
}

#[test]
fn pull_catches_up_in_one_round_trip() {
    let mut net = Net::new(2, |c| c.interval_min = Duration::from_secs(3600));
    for k in 0..50 {
        let r = MemStore::record(format!("k{k}").as_bytes(), 1, &[1; 60]).unwrap();
        net.nodes[0].store_mut(TOPIC).unwrap().apply(&r).unwrap();
    }
    let now = net.instant();
    let peer = net.nodes[0].me().addr;
    net.nodes[1].pull(now, peer, TOPIC, &mut net.out).unwrap();
    assert_eq!(net.nodes[1].pull(now, peer, TOPIC, &mut net.out), Err(PublishError::Busy));
    net.flush(1);
    net.run_for(Duration::from_millis(50));
    assert_eq!(net.nodes[1].store(TOPIC).unwrap().snapshot().len(), 50);
    assert!(
        net.events
            .iter()
            .any(|(i, e)| *i == 1
                && matches!(e, Event::PullDone { records: 50, complete: true, .. }))
    );
    // A second pull asks from the watermark: nothing new.
    net.nodes[0].store_mut(TOPIC).unwrap().apply(&rec("new")).unwrap();
    let now = net.instant();
    net.nodes[1].pull(now, peer, TOPIC, &mut net.out).unwrap();
    net.flush(1);
    net.run_for(Duration::from_millis(50));
    assert!(
        net.events.iter().any(
            |(i, e)| *i == 1 && matches!(e, Event::PullDone { records: 1, complete: true, .. })
        )
    );
    assert_eq!(net.nodes[0].stats().pulls_answered, 2);
    assert_eq!(net.nodes[1].pull(now, peer, b"news", &mut net.out), Err(PublishError::WrongMode));
}

#[derive(Debug)]
struct Echo(u8);

impl Responder for Echo {
    fn respond(&mut self, _origin: &[u8; 32], query: &[u8]) -> Option<Vec<u8>> {
        self.0.is_multiple_of(2).then(|| [query, &[self.0]].concat())
    }
}

#[test]
fn queries_collect_replies_from_responders() {
    let mut net = Net::new(6, |_| {});
    for (i, g) in net.nodes.iter_mut().enumerate() {
        g.register_topic(b"ask", TopicMode::RequestResponse(Box::new(Echo(i as u8))), 2).unwrap();
    }
    let now = net.instant();
    let q = net.nodes[1].query(now, b"ask", b"who", &mut net.out).unwrap();
    net.flush(1);
    net.run_for(Duration::from_secs(3));
    let mut replies: Vec<Vec<u8>> = net
        .events
        .iter()
        .filter_map(|(i, e)| match e {
            Event::QueryReply { query, payload, .. } if *i == 1 && *query == q => {
                Some(payload.clone())
            }
            _ => None,
        })
        .collect();
    replies.sort();
    // Members 0, 2, 4 answer (even); 1 is the origin.
    assert_eq!(replies, vec![b"who\x00".to_vec(), b"who\x02".to_vec(), b"who\x04".to_vec()]);
    assert!(net.events.iter().any(|(_, e)| *e == Event::QueryDone { query: q, replies: 3 }));
    assert_eq!(net.nodes[1].query(now, TOPIC, b"x", &mut net.out), Err(PublishError::WrongMode));
    assert_eq!(net.publish(1, b"ask", b"x"), Err(PublishError::WrongMode));
}

#[test]
fn publish_limits() {
    let mut net = Net::new(2, |c| {
        // A trickle of egress: everything queues.
        c.egress_rate = 1.0;
        c.egress_burst = 1300.0;
        c.overload_threshold = 3;
    });
    let max = net.nodes[0].max_rumor_payload(4);
    assert_eq!(max, 1232 - GOSSIP_OVERHEAD - 10 - 4);
    assert_eq!(net.publish(0, b"news", &vec![0; max + 1]), Err(PublishError::TooLarge { max }));
    assert_eq!(net.publish(0, b"nope", b"x"), Err(PublishError::UnknownTopic));
    assert_eq!(net.publish(0, TOPIC, b"\x09bad"), Err(PublishError::Rejected));
    // The first datagram uses the burst; later ones queue until the
    // overload threshold refuses new work.
    let mut results = Vec::new();
    for k in 0..6 {
        results.push(net.publish(0, b"news", &vec![k; 1000]));
    }
    assert!(results[..4].iter().all(Result::is_ok), "{results:?}");
    assert_eq!(results[5], Err(PublishError::Backpressure));
    assert!(net.nodes[0].overloaded());
    assert!(net.nodes[0].stats().egress_deferred > 0);
    assert!(net.nodes[0].poll_timeout().is_some());
}

#[test]
fn egress_sends_acks_before_rumors_before_sync() {
    let mut net = Net::new(2, |c| {
        c.egress_rate = 1.0;
        c.egress_burst = 1.0; // one datagram per second at most
        c.sync_priority = 0;
        c.ack_timeout = Duration::from_secs(3600);
    });
    let now = net.instant();
    let mut out = Outbox::new();
    // Use up the burst.
    net.nodes[0].publish(now, b"news", b"w", 9, &mut out).unwrap();
    assert_eq!(out.transmits.len(), 1);
    out.transmits.clear();
    // Queue, in this order: a rumor (priority 9), a probe answer (sync
    // priority 0), an ACK.
    net.nodes[0].publish(now, b"news", b"x", 9, &mut out).unwrap();
    let fingerprint = net.nodes[0].fingerprint();
    let probe = seal(&GossipFrame::Digest(DigestRepr { fingerprint, matched: false }));
    net.nodes[0].handle(now, addr(7), &probe, &mut out);
    let rumor = seal(&GossipFrame::Rumor(RumorRepr {
        hop_count: 1,
        from_dimension: 0,
        priority: 0,
        topic: b"news",
        payload: b"y",
    }));
    net.nodes[0].handle(now, addr(1), &rumor, &mut out);
    assert!(out.transmits.is_empty());
    assert_eq!(net.nodes[0].queued(), 3);
    for k in 1..=3 {
        net.nodes[0].handle_timeout(now + Duration::from_millis(1100 * k), &mut out);
    }
    let kinds: Vec<u8> = out.transmits.iter().map(|t| kind(&t.payload)).collect();
    assert_eq!(kinds, vec![5, 3, 2]);
}

#[test]
fn backpressure_backs_the_initiator_off() {
    // Node 0 is permanently overloaded (threshold 0): it answers exchanges
    // with a backpressure-flagged empty chunk. (G1 only: the first full sync
    // would otherwise be a G4 reconciliation.)
    let mut net = Net::new(2, |c| c.reconcile = false);
    net.nodes[1].store_mut(TOPIC).unwrap().apply(&rec("a")).unwrap();
    let n0 = net.nodes[0].me().addr;
    // Node 0 probes; node 1 sees a mismatch and starts an exchange; node 0
    // (overloaded from here on) answers with backpressure.
    let now = net.instant();
    let probe = seal(&GossipFrame::Digest(DigestRepr {
        fingerprint: net.nodes[0].fingerprint(),
        matched: false,
    }));
    net.nodes[1].handle(now, n0, &probe, &mut net.out);
    net.flush(1);
    let mut cfg = net.nodes[0].config().clone();
    cfg.overload_threshold = 0;
    // Rebuild node 0 with the overloaded config, same identity and store.
    let me = net.nodes[0].me();
    let mut g = Gossip::new(me.id, me.addr, key(), cfg, now);
    g.register_topic(TOPIC, TopicMode::StatefulMerge(Box::new(MemStore::new())), 1).unwrap();
    g.set_members(&[member(0), member(1)]);
    net.nodes[0] = g;
    net.run_for(Duration::from_millis(20));
    assert!(net.nodes[0].stats().backpressure_sent >= 1);
    assert!(net.nodes[1].stats().backpressure_received >= 1);
    let until = net.nodes[1].peer_backoff(n0).unwrap();
    assert_eq!(until.duration_since(net.t0).as_secs(), 30);
    // Records still flowed to the overloaded node (it applies before
    // answering), but node 1 advanced no watermark for it.
    assert!(net.holds(0, b"a"));
}

#[test]
fn snapshot_frames_are_handed_to_the_caller() {
    let mut net = Net::new(2, |_| {});
    let now = net.instant();
    let f = seal(&GossipFrame::Snapshot(SnapshotRepr::ManifestRequest { request_id: 3 }));
    let mut out = Outbox::new();
    net.nodes[0].handle(now, addr(1), &f, &mut out);
    assert!(
        matches!(&out.events[..], [Event::Frame { bytes, .. }] if bytes[..] == f[..f.len() - GOSSIP_OVERHEAD])
    );
    assert_eq!(net.nodes[0].stats().frames_handed_off, 1);
    // And a driver can send one back, sealed.
    let mut raw = vec![0u8; 11];
    GossipFrame::Snapshot(SnapshotRepr::ManifestRequest { request_id: 4 }).emit(&mut raw).unwrap();
    net.nodes[0].send_frame(now, addr(1), &raw, 0, &mut out).unwrap();
    let t = out.transmits.pop().unwrap();
    assert_eq!(open(&t.payload), &raw[..]);
    assert_eq!(net.nodes[0].stats().sent.get(6), 1);
}

#[test]
fn duplicate_rumors_are_acked_but_not_forwarded_again() {
    let mut net = Net::new(4, |_| {});
    let now = net.instant();
    let pos = net.nodes[0].position();
    // Deliver the same rumor twice to node 0 from its dimension-0 partner.
    let partner = net.nodes[0].members()[pos ^ 1].addr;
    // Two copies: two datagrams (the same bytes twice would be a replay).
    let f = || {
        seal(&GossipFrame::Rumor(RumorRepr {
            hop_count: 1,
            from_dimension: 0,
            priority: 0,
            topic: b"news",
            payload: b"z",
        }))
    };
    let mut out = Outbox::new();
    net.nodes[0].handle(now, partner, &f(), &mut out);
    let first: Vec<u8> = out.transmits.drain(..).map(|t| kind(&t.payload)).collect();
    net.nodes[0].handle(now, partner, &f(), &mut out);
    let second: Vec<u8> = out.transmits.drain(..).map(|t| kind(&t.payload)).collect();
    assert_eq!(first, vec![5, 3], "ACK, then forward on dimension 1");
    assert_eq!(second, vec![5], "ACK only");
    assert_eq!(net.nodes[0].stats().rumor_duplicates, 1);
    assert_eq!(net.nodes[0].stats().rumor_forwards, 1);
    assert!(net.nodes[0].dedup_len() == 1 && net.nodes[0].pending_acks() == 1);
}

// ---------------------------------------------------------------------------
// G4 reconciliation
// ---------------------------------------------------------------------------

/// Two members without probe rounds (so only what a test starts runs):
/// `common` records on both, `only0` more on node 0, `only1` on node 1.
fn diverged(common: usize, only0: usize, only1: usize, tweak: impl Fn(&mut Config)) -> Net {
    let mut net = Net::new(2, |c| {
        c.interval_min = Duration::from_secs(3600);
        c.interval_base = Duration::from_secs(3600);
        c.interval_max = Duration::from_secs(3600);
        tweak(c);
    });
    let put = |net: &mut Net, i: usize, name: String| {
        let r = MemStore::record(name.as_bytes(), 1, b"value").unwrap();
        net.nodes[i].store_mut(TOPIC).unwrap().apply(&r).unwrap();
    };
    for k in 0..common {
        put(&mut net, 0, format!("c{k}"));
        put(&mut net, 1, format!("c{k}"));
    }
    for k in 0..only0 {
        put(&mut net, 0, format!("a{k}"));
    }
    for k in 0..only1 {
        put(&mut net, 1, format!("b{k}"));
    }
    net
}

/// Node 1 reconciles with node 0 now.
fn start(net: &mut Net) {
    let now = net.instant();
    let peer = net.nodes[0].me().addr;
    net.nodes[1].reconcile(now, peer, TOPIC, &mut net.out).unwrap();
    net.flush(1);
}

fn converged(net: &Net) -> bool {
    net.nodes[0].fingerprint() == net.nodes[1].fingerprint()
}

#[test]
fn a_small_difference_decodes_from_one_fixed_table() {
    let mut net = diverged(200, 5, 3, |_| {});
    start(&mut net);
    let (now, peer) = (net.instant(), net.nodes[0].me().addr);
    assert_eq!(
        net.nodes[1].reconcile(now, peer, TOPIC, &mut net.out),
        Err(PublishError::Busy),
        "one session per peer and topic"
    );
    assert_eq!(
        net.nodes[1].reconcile(now, peer, b"news", &mut net.out),
        Err(PublishError::WrongMode)
    );
    net.run_for(Duration::from_millis(50));
    assert!(converged(&net));
    assert_eq!(net.nodes[0].store(TOPIC).unwrap().snapshot().len(), 208);
    let (i, r) = (net.nodes[1].stats(), net.nodes[0].stats());
    assert_eq!((i.reconcile_started, i.reconcile_completed, i.reconcile_flips), (1, 1, 0));
    assert_eq!(i.reconcile_cells_sent, 58, "one datagram of cells");
    assert_eq!((r.reconcile_decoded, r.reconcile_differences), (1, 8));
    assert_eq!(r.reconcile_key_cells_sent, 3, "the responder asks for node 1's 3");
    assert_eq!((r.reconcile_records_sent, i.reconcile_records_sent), (5, 3));
    // Table, reply; records both ways in one chunk each.
    assert_eq!((net.sent[4], net.sent[1]), (2, 2));
    assert!(net.nodes.iter().all(|g| g.stats().drops.total() == 0));
    // It counted as a full sync: watermarks are set, the next is a delta.
    let peer = net.nodes[0].me().addr;
    assert!(net.nodes[1].full_sync_every(peer, TOPIC).is_some());
    let ps = net.nodes[1].sync_state(peer, TOPIC).unwrap();
    assert!(ps.recv.is_some() && ps.sent.is_some() && !ps.full_due() && !ps.rateless);
}

#[test]
fn a_failed_table_flips_to_rateless() {
    let mut net = diverged(300, 150, 150, |_| {});
    start(&mut net);
    net.run_for(Duration::from_secs(1));
    assert!(converged(&net));
    let (i, r) = (net.nodes[1].stats(), net.nodes[0].stats());
    assert_eq!((i.reconcile_started, i.reconcile_rateless, i.reconcile_flips), (2, 1, 1));
    assert_eq!((i.reconcile_completed, i.reconcile_timeouts, i.reconcile_fallbacks), (1, 0, 0));
    assert_eq!((r.reconcile_decode_failed, r.reconcile_decoded), (1, 1));
    assert_eq!(r.reconcile_differences, 300);
    assert!(r.reconcile_requests > 0, "bursts are asked for");
    let used = r.reconcile_symbols_used as f64 / 300.0;
    assert!((1.0..2.5).contains(&used), "{used} symbols per difference");
    // Symbols sent: the failed table, then the stream with at most a third
    // of overshoot.
    let sent = i.reconcile_cells_sent - 58;
    assert!(
        sent >= r.reconcile_symbols_used
            && sent as f64 <= 1.5 * r.reconcile_symbols_used as f64 + 59.0
    );
    // Back to fixed mode for next time.
    let peer = net.nodes[0].me().addr;
    assert!(!net.nodes[1].sync_state(peer, TOPIC).unwrap().rateless);
    assert!(net.nodes.iter().all(|g| g.stats().drops.total() == 0));
}

#[test]
fn a_stream_over_the_cap_falls_back_to_g1() {
    let mut net = diverged(100, 150, 150, |c| c.reconcile_max_symbols = 200);
    start(&mut net);
    net.run_for(Duration::from_secs(1));
    assert!(converged(&net));
    let (i, r) = (net.nodes[1].stats(), net.nodes[0].stats());
    assert_eq!((i.reconcile_flips, i.reconcile_fallbacks, i.reconcile_completed), (1, 1, 0));
    assert_eq!(r.reconcile_decode_failed, 2, "the table, then the stream");
    assert!(r.reconcile_cells_received <= 59 + 200);
    assert_eq!((i.exchanges_started, i.exchanges_completed, i.full_syncs), (1, 1, 1));
}

#[test]
fn a_lost_frame_inside_a_burst_is_asked_for_again() {
    let mut net = diverged(300, 150, 150, |_| {});
    // Drop the fifth table frame node 1 sends (a rateless burst): the
    // responder waits an ACK timeout for it, then asks again.
    let mut tables = 0;
    net.filter = Box::new(move |from, _, p| {
        let body = &p[..p.len() - 16];
        if from == 1 && kind(p) == 4 && body[2] == 0 {
            tables += 1;
            return tables == 5;
        }
        false
    });
    start(&mut net);
    net.run_for(Duration::from_secs(1));
    assert!(converged(&net));
    let (i, r) = (net.nodes[1].stats(), net.nodes[0].stats());
    assert_eq!((i.reconcile_completed, i.reconcile_timeouts), (1, 0));
    let plain = diverged(300, 150, 150, |_| {});
    let mut plain = plain;
    start(&mut plain);
    plain.run_for(Duration::from_secs(1));
    let p = plain.nodes[0].stats();
    assert_eq!(r.reconcile_requests, p.reconcile_requests + 1, "one gap request");
}

#[test]
fn a_lost_reply_times_out_and_the_next_full_sync_is_g1() {
    let mut net = diverged(50, 2, 2, |_| {});
    net.filter = Box::new(|from, _, p| from == 0 && kind(p) == 4);
    start(&mut net);
    net.run_for(Duration::from_secs(5));
    let i = net.nodes[1].stats();
    assert_eq!((i.reconcile_timeouts, i.reconcile_completed), (1, 0));
    let peer = net.nodes[0].me().addr;
    assert!(net.nodes[1].sync_state(peer, TOPIC).unwrap().g1_next);
    // A mismatching probe now starts a G1 exchange, not a session.
    net.filter = Box::new(|_, _, _| false);
    let now = net.instant();
    let probe = seal(&GossipFrame::Digest(DigestRepr { fingerprint: 1, matched: false }));
    net.nodes[1].handle(now, peer, &probe, &mut net.out);
    net.flush(1);
    net.run_for(Duration::from_millis(50));
    assert!(converged(&net));
    let i = net.nodes[1].stats();
    assert_eq!((i.reconcile_started, i.exchanges_started, i.full_syncs), (1, 1, 1));
    assert!(!net.nodes[1].sync_state(peer, TOPIC).unwrap().g1_next);
}

#[test]
fn an_overloaded_responder_backs_the_initiator_off() {
    let mut net = diverged(10, 0, 200, |_| {});
    let mut cfg = net.nodes[0].config().clone();
    cfg.overload_threshold = 0;
    let me = net.nodes[0].me();
    let now = net.instant();
    let mut g = Gossip::new(me.id, me.addr, key(), cfg, now);
    g.register_topic(TOPIC, TopicMode::StatefulMerge(Box::new(MemStore::new())), 1).unwrap();
    g.set_members(&[member(0), member(1)]);
    net.nodes[0] = g;
    start(&mut net);
    net.run_for(Duration::from_millis(50));
    let (i, r) = (net.nodes[1].stats(), net.nodes[0].stats());
    assert_eq!(r.backpressure_sent, 1, "one signal per session");
    assert_eq!(i.backpressure_received, 1);
    assert_eq!((i.reconcile_completed, i.reconcile_timeouts), (0, 0));
    assert!(net.nodes[1].peer_backoff(me.addr).is_some());
    assert!(net.nodes.iter().all(|g| g.stats().drops.total() == 0));
}

#[test]
fn hostile_reconcile_frames_are_counted_never_answered_wrongly() {
    let mut net = diverged(20, 0, 0, |c| {
        c.reconcile_max_cells = 600;
        c.reconcile_max_symbols = 30;
    });
    let now = net.instant();
    let from = net.nodes[1].me().addr;
    let frame = |kind, session_id, mode, first_cell, end_cell, cells: &[IbltCell]| {
        seal(&GossipFrame::Reconcile(ReconcileRepr {
            kind,
            session_id,
            mode,
            first_cell,
            end_cell,
            topic: TOPIC,
            cells: Cells::from(cells),
        }))
    };
    let junk = [IbltCell { count: 3, key_sum: 9, hash_sum: 1 }; 5];
    let mut out = Outbox::new();
    let g = &mut net.nodes[0];
    use ReconcileKind::*;
    use ReconcileMode::*;
    // Frames for sessions we never started.
    for k in [Reply, DecodeFailed] {
        let (e, c) = if k == Reply { (5, &junk[..]) } else { (0, &junk[..0]) };
        g.handle(now, from, &frame(k, 7, Fixed, 0, e, c), &mut out);
    }
    g.handle(now, from, &frame(Request, 7, Rateless, 0, 9, &[]), &mut out);
    assert_eq!(g.stats().drops.unsolicited, 3);
    // Requests naming keys: not served.
    g.handle(now, from, &frame(Request, 7, Fixed, 0, 5, &junk), &mut out);
    assert_eq!(g.stats().drops.reconcile_mismatch, 1);
    // A "table" of 2 cells is no IBLT.
    g.handle(now, from, &frame(Table, 8, Fixed, 0, 2, &junk[..2]), &mut out);
    assert_eq!(g.stats().drops.reconcile_mismatch, 2);
    assert!(out.transmits.is_empty());
    // A table larger than we accept, and a junk table that cannot decode:
    // both answered with decode-failed, once.
    g.handle(now, from, &frame(Table, 9, Fixed, 0, 601, &junk), &mut out);
    g.handle(now, from, &frame(Table, 9, Fixed, 5, 601, &junk), &mut out);
    g.handle(now, from, &frame(Table, 10, Fixed, 0, 5, &junk), &mut out);
    assert_eq!(g.stats().reconcile_decode_failed, 2);
    // A frame disagreeing with its session's size.
    g.handle(now, from, &frame(Table, 11, Fixed, 0, 10, &junk), &mut out);
    g.handle(now, from, &frame(Table, 11, Fixed, 5, 12, &junk), &mut out);
    g.handle(now, from, &frame(Table, 11, Rateless, 0, 10, &junk), &mut out);
    assert_eq!(g.stats().drops.reconcile_mismatch, 4);
    // A junk stream fails (its cells cannot come from two sets) or reaches
    // the cap; either way it is refused once, never a panic.
    for at in 0..8u32 {
        let end = 30.max(at * 5 + 5);
        g.handle(now, from, &frame(Table, 12, Rateless, at * 5, end, &junk), &mut out);
    }
    assert_eq!(g.stats().reconcile_decode_failed, 3);
    let kinds: Vec<u8> = out.transmits.iter().map(|t| open(&t.payload)[2]).collect();
    assert_eq!(kinds, vec![0x03, 0x03, 0x03]);
    assert_eq!(g.stats().frames_handed_off, 0);
    // The session table is bounded.
    let mut net = diverged(0, 0, 0, |c| c.max_reconcile_sessions = 2);
    let g = &mut net.nodes[0];
    for id in 0..5 {
        g.handle(now, from, &frame(Table, 100 + id, Fixed, 0, 10, &junk), &mut out);
    }
    assert_eq!(g.stats().drops.reconcile_table_full, 3);
}

#[test]
fn probes_reconcile_on_first_contact_then_exchange_deltas() {
    let mut net = Net::new(2, |_| {});
    for k in 0..40 {
        net.nodes[0].store_mut(TOPIC).unwrap().apply(&rec(&format!("x{k}"))).unwrap();
    }
    net.run_for(Duration::from_secs(30));
    assert!(converged(&net));
    // Later changes, on either side: each member's first sync with the
    // other was a reconciliation (no watermark yet), later ones are deltas.
    for k in 0..4 {
        net.nodes[k % 2].store_mut(TOPIC).unwrap().apply(&rec(&format!("later{k}"))).unwrap();
        net.run_for(Duration::from_secs(150));
        assert!(converged(&net), "{k}");
    }
    let s: Vec<Stats> = net.nodes.iter().map(Gossip::stats).collect();
    let completed: u64 = s.iter().map(|s| s.reconcile_completed).sum();
    let deltas: u64 = s.iter().map(|s| s.exchanges_started - s.full_syncs).sum();
    assert_eq!(completed, 2, "one per direction");
    assert!(deltas >= 2, "{deltas} deltas");
    assert!(s.iter().all(|s| s.drops.total() == 0));
}

#[test]
fn requests_for_our_table_are_served_within_a_budget() {
    let mut net = diverged(30, 0, 0, |_| {});
    start(&mut net);
    // The table frame node 1 put on the wire names the session.
    let (_, _, _, table) = net.queue.pop_front().unwrap();
    let Ok(GossipFrame::Reconcile(t)) = GossipFrame::parse(open(&table)) else {
        panic!("not a G4 frame")
    };
    assert_eq!(
        (t.kind, t.mode, t.first_cell, t.end_cell),
        (ReconcileKind::Table, ReconcileMode::Fixed, 0, 58)
    );
    let request = || {
        seal(&GossipFrame::Reconcile(ReconcileRepr {
            kind: ReconcileKind::Request,
            cells: Cells::from(&[][..]),
            ..t
        }))
    };
    let (now, from) = (net.instant(), net.nodes[0].me().addr);
    let mut out = Outbox::new();
    for _ in 0..5 {
        net.nodes[1].handle(now, from, &request(), &mut out);
    }
    // Three more copies of the table, then refused.
    assert_eq!(out.transmits.len(), 3);
    let s = net.nodes[1].stats();
    assert_eq!((s.reconcile_cells_sent, s.drops.reconcile_mismatch), (4 * 58, 2));
    // From anyone else, or for another topic, nothing.
    net.nodes[1].handle(now, addr(7), &request(), &mut out);
    assert_eq!(net.nodes[1].stats().drops.unsolicited, 1);
    assert_eq!(out.transmits.len(), 3);
}

// ---------------------------------------------------------------------------
// Replay protection and the amplification bound
// ---------------------------------------------------------------------------

/// Delivers `bytes` to node 0 from `from` at engine time `at_ms` (the
/// engines' clocks read 0 at `t0`) and returns the sealed answers.
fn deliver_at(net: &mut Net, from: SocketAddr, bytes: &[u8], at_ms: u64) -> Vec<Transmit> {
    let now = net.t0 + Duration::from_millis(at_ms);
    let mut out = Outbox::new();
    net.nodes[0].handle(now, from, bytes, &mut out);
    out.transmits
}

/// The window edge, as the engine sees it.
const WINDOW: u64 = replay::WINDOW_MS;

#[test]
fn a_replayed_digest_is_not_answered_a_fresh_one_is() {
    let mut net = Net::new(2, |c| c.interval_min = Duration::from_secs(3600));
    let fingerprint = net.nodes[0].fingerprint();
    let from = addr(1);
    let probe_at =
        |ms| seal_at(&GossipFrame::Digest(DigestRepr { fingerprint, matched: false }), ms);
    let probe = probe_at(1_000);
    let answered = deliver_at(&mut net, from, &probe, 1_000);
    assert_eq!(answered.len(), 1, "a matching probe draws one matched G2");
    assert!(matches!(
        GossipFrame::parse(open(&answered[0].payload)),
        Ok(GossipFrame::Digest(DigestRepr { matched: true, .. }))
    ));
    // The exact bytes again, later but within the window: not answered.
    assert!(deliver_at(&mut net, from, &probe, 1_000 + WINDOW / 2).is_empty());
    assert_eq!(net.nodes[0].stats().drops.replayed, 1);
    // Beyond the window: not answered either, for the other reason.
    assert!(deliver_at(&mut net, from, &probe, 1_000 + WINDOW + 1).is_empty());
    assert_eq!(net.nodes[0].stats().drops.out_of_window, 1);
    // A fresh probe at that time is answered.
    let later = 1_000 + WINDOW + 1;
    assert_eq!(deliver_at(&mut net, from, &probe_at(later), later).len(), 1);
    let d = net.nodes[0].stats().drops;
    assert_eq!((d.replayed, d.out_of_window, d.total()), (1, 1, 2));
}

#[test]
fn a_replayed_mismatching_digest_starts_no_second_exchange() {
    let mut net = Net::new(2, |c| {
        c.interval_min = Duration::from_secs(3600);
        c.reconcile = false;
    });
    for k in 0..30 {
        net.nodes[0].store_mut(TOPIC).unwrap().apply(&rec(&format!("r{k}"))).unwrap();
    }
    let probe = seal_at(&GossipFrame::Digest(DigestRepr { fingerprint: 1, matched: false }), 0);
    let first = deliver_at(&mut net, addr(1), &probe, 0);
    assert!(first.iter().all(|t| kind(&t.payload) == 1) && !first.is_empty());
    assert_eq!(net.nodes[0].stats().exchanges_started, 1);
    // After the exchange timed out (so a new one could start), the same
    // bytes start nothing, within or beyond the window.
    let t = net.nodes[0].config().exchange_timeout.as_millis() as u64 + 1;
    let mut out = Outbox::new();
    net.nodes[0].handle_timeout(net.t0 + Duration::from_millis(t), &mut out);
    assert!(deliver_at(&mut net, addr(1), &probe, t).is_empty());
    assert!(deliver_at(&mut net, addr(1), &probe, WINDOW + 1).is_empty());
    assert_eq!(net.nodes[0].stats().exchanges_started, 1);
    let fresh = seal_at(&GossipFrame::Digest(DigestRepr { fingerprint: 1, matched: false }), t);
    assert!(!deliver_at(&mut net, addr(1), &fresh, t).is_empty());
    assert_eq!(net.nodes[0].stats().exchanges_started, 2);
}

#[test]
fn a_replayed_pull_is_not_answered_a_fresh_one_is() {
    let mut net = Net::new(2, |c| c.interval_min = Duration::from_secs(3600));
    for k in 0..20 {
        net.nodes[0].store_mut(TOPIC).unwrap().apply(&rec(&format!("p{k}"))).unwrap();
    }
    let pull_at = |ms| {
        seal_at(&GossipFrame::Pull(PullRepr { topic: TOPIC, since_ns: 0, max_response: 0 }), ms)
    };
    let pull = pull_at(5_000);
    let answer = deliver_at(&mut net, addr(1), &pull, 5_000);
    assert!(!answer.is_empty() && answer.iter().all(|t| kind(&t.payload) == 1));
    assert!(deliver_at(&mut net, addr(1), &pull, 6_000).is_empty(), "replay in the window");
    assert!(deliver_at(&mut net, addr(1), &pull, 5_000 + WINDOW + 1).is_empty(), "stale");
    assert_eq!(net.nodes[0].stats().pulls_answered, 1);
    let later = 5_000 + WINDOW + 1;
    assert_eq!(deliver_at(&mut net, addr(1), &pull_at(later), later).len(), answer.len());
    let s = net.nodes[0].stats();
    assert_eq!((s.pulls_answered, s.drops.replayed, s.drops.out_of_window), (2, 1, 1));
}

#[test]
fn a_sibling_whose_clock_is_off_by_more_than_the_window_is_refused() {
    let mut net = Net::new(2, |c| c.interval_min = Duration::from_secs(3600));
    // Node 1 runs 31 s ahead: its datagrams are refused; node 0 does not
    // answer them.
    net.nodes[1].set_unix_time(net.t0, WINDOW + 1_000);
    net.nodes[0].store_mut(TOPIC).unwrap().apply(&rec("a")).unwrap();
    let (now, peer) = (net.instant(), net.nodes[0].me().addr);
    net.nodes[1].pull(now, peer, TOPIC, &mut net.out).unwrap();
    net.flush(1);
    net.run_for(Duration::from_millis(50));
    assert!(!net.holds(1, b"a"));
    assert_eq!(net.nodes[0].stats().drops.out_of_window, 1);
    // Back in sync (within the window), once the first pull timed out: the
    // next pull is answered.
    let timeout = net.nodes[1].config().exchange_timeout;
    net.run_for(timeout + Duration::from_millis(1));
    let now = net.instant();
    let theirs = net.nodes[0].unix_ms(now);
    net.nodes[1].set_unix_time(now, theirs + WINDOW - 1_000);
    net.nodes[1].pull(now, peer, TOPIC, &mut net.out).unwrap();
    net.flush(1);
    net.run_for(Duration::from_millis(50));
    assert!(net.holds(1, b"a"));
}

#[test]
fn answers_to_a_source_outside_the_view_are_bounded() {
    let mut net = Net::new(2, |c| {
        c.interval_min = Duration::from_secs(3600);
        c.reconcile = false;
    });
    for k in 0..200 {
        let r = MemStore::record(format!("k{k}").as_bytes(), 1, &[7; 40]).unwrap();
        net.nodes[0].store_mut(TOPIC).unwrap().apply(&r).unwrap();
    }
    let stranger = addr(9);
    let bytes = |ts: &[Transmit]| ts.iter().map(|t| t.payload.len()).sum::<usize>();
    let pull = |ms| {
        seal_at(&GossipFrame::Pull(PullRepr { topic: TOPIC, since_ns: 0, max_response: 0 }), ms)
    };
    // A bare pull (no padding) from a stranger: at most 3× its size.
    let p = pull(0);
    let a = deliver_at(&mut net, stranger, &p, 0);
    assert!(!a.is_empty() && bytes(&a) <= AMPLIFICATION * p.len(), "{} vs {}", bytes(&a), p.len());
    // The same request from a member draws everything.
    let m = deliver_at(&mut net, addr(1), &pull(1), 1);
    assert!(bytes(&m) > 20 * p.len(), "{}", bytes(&m));
    // A mismatching probe from a stranger draws a G1 request without
    // records, within the bound; from a member, its records.
    let probe =
        |ms| seal_at(&GossipFrame::Digest(DigestRepr { fingerprint: 1, matched: false }), ms);
    let d = probe(2);
    let a = deliver_at(&mut net, stranger, &d, 2);
    assert_eq!(a.len(), 1);
    assert!(bytes(&a) <= AMPLIFICATION * d.len(), "{} vs {}", bytes(&a), d.len());
    let Ok(GossipFrame::Exchange(x)) = GossipFrame::parse(open(&a[0].payload)) else { panic!() };
    assert_eq!(entries::parse(x.entries).unwrap().iter().count(), 0);
    let m = deliver_at(&mut net, addr(1), &probe(3), 3);
    assert!(bytes(&m) > 20 * d.len());
    // Our own pulls are padded so a peer that does not know us yet can
    // answer with one full datagram.
    let mut out = Outbox::new();
    let peer = net.nodes[0].me().addr;
    let now = net.instant();
    net.nodes[1].pull(now, peer, TOPIC, &mut out).unwrap();
    let sent = &out.transmits[0].payload;
    assert_eq!(sent.len(), 1232usize.div_ceil(AMPLIFICATION));
    let a = deliver_at(&mut net, stranger, sent, 4);
    assert!(bytes(&a) <= AMPLIFICATION * sent.len() && bytes(&a) > 1000, "{}", bytes(&a));
}
