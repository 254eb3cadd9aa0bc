//! Cluster cores on a virtual network: real [`Core`]s exchanging real,
//! MAC-sealed datagrams with a fixed 1 ms latency and seeded loss on a
//! virtual clock. No sockets, no sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_wire::frame::FrameKey;
use ricochet_wire::mac::{ClusterKey, Stamp};
use ricochet_wire::record::SigningKey;

use super::machine::{Core, CoreSettings, Identity, LIVE_TIMEOUT, Note};
use super::warm::{self, Outcome};
use crate::retry::Siblings;

const UNIX: u64 = 1_767_225_600_000;
const LATENCY: Duration = Duration::from_millis(1);
const KEY: [u8; 32] = [0x4B; 32];
/// G6 chunk size: what one default datagram carries.
const CHUNK: usize =
    crate::gossip::snapshot::chunk_budget(crate::gossip::snapshot::DEFAULT_MAX_DATAGRAM);
/// Steps [`Net::run`] may take at one virtual instant before it calls the
/// run a livelock.
const MAX_STEPS_AT_ONE_INSTANT: u32 = 10_000;

fn gossip_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 9310)
}

fn nack_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 9300)
}

struct Node {
    core: Core,
    /// What `export_hot` would return.
    cache: Vec<Bytes>,
    /// Frames imported by warm-ups.
    imported: Vec<Bytes>,
    /// The last gap-ownership view handed to the workers.
    siblings: Option<Siblings>,
    reports: Vec<super::machine::WarmReport>,
}

struct Net {
    now: Instant,
    start: Instant,
    nodes: BTreeMap<usize, Node>,
    in_flight: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    /// Drop one datagram in `loss` (0: none), decided by a seeded xorshift.
    loss: u64,
    rng: u64,
    /// Incarnations started so far, for distinct keys per restart.
    started: usize,
    /// Nodes cut off: every datagram from or to them is lost.
    cut: BTreeSet<SocketAddr>,
}

impl Net {
    fn new(loss: u64) -> Net {
        let now = Instant::now();
        Net {
            now,
            start: now,
            nodes: BTreeMap::new(),
            in_flight: Vec::new(),
            loss,
            rng: 0x9E37_79B9_7F4A_7C15,
            started: 0,
            cut: BTreeSet::new(),
        }
    }

    fn unix(&self) -> u64 {
        UNIX + self.now.duration_since(self.start).as_millis() as u64
    }

    /// Starts node `i` (again) with `seeds`.
    fn start(&mut self, i: usize, seeds: &[usize]) {
        self.started += 1;
        let mut seed = [0u8; 32];
        seed[0] = self.started as u8;
        let mut gossip = crate::gossip::Config::new(seed);
        gossip.max_datagram = 1232;
        let identity = Identity {
            key: SigningKey::from_bytes(&[self.started as u8; 32]),
            gossip: gossip_addr(i),
            nack: nack_addr(i),
            incarnation_ms: self.unix(),
        };
        let settings = CoreSettings { gossip, warm_max_bytes: warm::WARM_MAX_BYTES };
        let mut core =
            Core::new(identity, ClusterKey::new(KEY), settings, self.now, self.unix()).unwrap();
        core.set_seeds(seeds.iter().map(|&s| gossip_addr(s)).collect());
        let node = Node {
            core,
            cache: Vec::new(),
            imported: Vec::new(),
            siblings: None,
            reports: Vec::new(),
        };
        self.nodes.insert(i, node);
    }

    fn drop_this(&mut self) -> bool {
        if self.loss == 0 {
            return false;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % self.loss == 0
    }

    /// Collects every node's output: datagrams onto the wire, notes acted
    /// on as the driver would.
    fn collect(&mut self) {
        let now = self.now;
        let ids: Vec<usize> = self.nodes.keys().copied().collect();
        for i in ids {
            let mut sent = Vec::new();
            let Some(node) = self.nodes.get_mut(&i) else { continue };
            for t in node.core.drain_transmits() {
                sent.push((t.dest, t.payload));
            }
            for note in node.core.take_notes() {
                match note {
                    Note::BuildSnapshot { to, rid } => {
                        let unix = node.core.unix_ms(now);
                        let snap = warm::build_snapshot(&node.cache, usize::MAX, unix, CHUNK)
                            .map(|(s, _)| s)
                            .map_err(|e| e.to_string());
                        node.core.snapshot_built(now, to, rid, snap);
                    }
                    Note::Import { frames, .. } => {
                        let bytes = frames.iter().map(|f| f.len() as u64).sum();
                        let n = frames.len() as u64;
                        node.imported.extend(frames);
                        node.core.imported(now, n, bytes, 0);
                    }
                    Note::WarmupOver(r) => node.reports.push(*r),
                    Note::MembersChanged { .. } => {}
                }
            }
            if let Some(v) = node.core.take_siblings() {
                node.siblings = Some(v);
            }
            // Notes may have queued more.
            for t in node.core.drain_transmits() {
                sent.push((t.dest, t.payload));
            }
            for (dest, payload) in sent {
                if !self.drop_this() {
                    self.in_flight.push((now + LATENCY, gossip_addr(i), dest, payload));
                }
            }
        }
    }

    /// Runs the network for `d` of virtual time.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        // Steps taken without the clock moving: a core that keeps asking
        // for a timer at `now` without acting is a livelock, and the test
        // fails on it instead of spinning.
        let mut stuck = 0u32;
        loop {
            self.collect();
            let next_timer = self.nodes.values().map(|n| n.core.poll_timeout()).min();
            let next_packet = self.in_flight.iter().map(|p| p.0).min();
            let Some(next) = [next_timer, next_packet].into_iter().flatten().min() else { break };
            if next > end {
                break;
            }
            if next <= self.now {
                stuck += 1;
                assert!(
                    stuck < MAX_STEPS_AT_ONE_INSTANT,
                    "virtual time stuck at {:?}: timers {:?}",
                    self.now.duration_since(self.start),
                    self.nodes
                        .iter()
                        .map(|(i, n)| (
                            *i,
                            n.core.poll_timeout().saturating_duration_since(self.start)
                        ))
                        .collect::<Vec<_>>()
                );
            } else {
                stuck = 0;
            }
            self.now = self.now.max(next);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.in_flight).into_iter().partition(|p| p.0 <= now);
            self.in_flight = later;
            for (_, from, to, bytes) in due {
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                if let Some((_, node)) = self.nodes.iter_mut().find(|(i, _)| gossip_addr(**i) == to)
                {
                    node.core.handle(now, from, &bytes);
                }
            }
            for node in self.nodes.values_mut() {
                if node.core.poll_timeout() <= now {
                    node.core.handle_timeout(now);
                }
            }
        }
        self.now = end;
    }

    fn live(&self, i: usize) -> BTreeSet<SocketAddr> {
        self.nodes[&i].core.live().iter().map(|r| r.gossip).collect()
    }

    fn all_see(&self, members: &[usize]) -> bool {
        members.iter().all(|&i| {
            let want: BTreeSet<SocketAddr> =
                members.iter().filter(|&&j| j != i).map(|&j| gossip_addr(j)).collect();
            self.live(i) == want
        })
    }
}

fn frames(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("frame {i} {}", "x".repeat(i % 700)))).collect()
}

/// BLAKE3 over `frames` in snapshot order: a warm-up imports the senders'
/// frames in that order, whatever order their caches listed them in.
fn digest(frames: &[Bytes]) -> blake3::Hash {
    let mut f = frames.to_vec();
    warm::snapshot_order(&mut f);
    blake3::hash(&warm::frame_blob(&f, usize::MAX).0)
}

#[test]
fn three_members_find_each_other_through_one_seed_and_agree_on_owners() {
    let mut net = Net::new(0);
    net.start(0, &[]);
    net.start(1, &[0]);
    net.start(2, &[0]);
    net.run(Duration::from_secs(6));
    assert!(net.all_see(&[0, 1, 2]), "{:?}", (0..3).map(|i| net.live(i)).collect::<Vec<_>>());
    // 1 and 2 knew only the seed: they learnt each other, and by PEX too.
    assert!(
        net.nodes[&1]
            .core
            .pex()
            .book()
            .get(&SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes())
            .is_some()
    );
    // Every member's workers got the same gap owners.
    let views: Vec<&Siblings> =
        (0..3).map(|i| net.nodes[&i].siblings.as_ref().expect("a view")).collect();
    let ids: Vec<u64> = (0..3).map(|i| net.nodes[&i].core.me().sibling_id()).collect();
    for seq in 0..200 {
        let key = FrameKey { hash_key: 0xABCD, seq };
        let owners: Vec<u64> =
            (0..3).map(|i| views[i].owner(key).map_or(ids[i], |s| s.id)).collect();
        assert!(owners.windows(2).all(|w| w[0] == w[1]), "seq {seq}: {owners:?}");
    }
    // Steady state is quiet: no drops of any kind.
    for i in 0..3 {
        let st = net.nodes[&i].core.gossip().stats();
        assert_eq!(st.drops.total(), 0, "node {i}: {:?}", st.drops());
    }
}

#[test]
fn a_leaving_member_is_dropped_at_once_and_a_dead_one_after_the_timeout() {
    let mut net = Net::new(0);
    for i in 0..4 {
        net.start(i, &[0]);
    }
    net.run(Duration::from_secs(6));
    assert!(net.all_see(&[0, 1, 2, 3]));
    let now = net.now;
    net.nodes.get_mut(&3).unwrap().core.leave(now);
    net.run(Duration::from_millis(100));
    assert!(net.all_see(&[0, 1, 2]), "the leaving member is gone within 100 ms");
    net.nodes.remove(&3);
    net.nodes.remove(&2);
    net.run(LIVE_TIMEOUT - Duration::from_millis(1500));
    assert!(net.live(0).contains(&gossip_addr(2)), "not before the timeout");
    net.run(Duration::from_millis(2600));
    assert!(net.all_see(&[0, 1]), "{:?}", net.live(0));
}

#[test]
fn a_restarted_member_warms_its_cache_from_a_sibling_despite_loss() {
    let mut net = Net::new(40); // 2.5 % of datagrams lost, both ways
    net.start(0, &[]);
    net.start(1, &[0]);
    net.start(2, &[0]);
    // More than the engine's 1 MiB egress burst per sender: the transfer
    // runs into the egress byte-rate cap and its wake-ups.
    let cache = frames(16000);
    for i in 0..3 {
        net.nodes.get_mut(&i).unwrap().cache = cache.clone();
    }
    net.run(Duration::from_secs(8));
    assert!(net.all_see(&[0, 1, 2]));
    // Node 2 restarts at the same addresses with an empty cache.
    net.start(2, &[0, 1]);
    let now = net.now;
    net.nodes.get_mut(&2).unwrap().core.start_warmup(now, Duration::from_secs(10));
    assert!(net.nodes[&2].core.warming());
    net.run(Duration::from_secs(10));
    let node = &net.nodes[&2];
    assert!(!node.core.warming());
    let report = node.reports.last().expect("a report");
    assert_eq!(report.outcome, Outcome::Done, "{report:?}");
    assert!(digest(&node.imported) == digest(&cache), "the senders' frames, all of them");
    assert_eq!(report.frames, cache.len() as u64);
    assert!(report.fetch.chunks > 0 && report.fetch.repair_rounds >= 1, "{report:?}");
    assert!(net.all_see(&[0, 1, 2]), "the old incarnation was replaced");
    let served: u64 = (0..2).map(|i| net.nodes[&i].core.server().stats().snapshots_served).sum();
    assert!(served >= 1);
}

/// The coding of `cache`'s snapshot: `(k, chunks per shard)`.
fn coding(cache: &[Bytes]) -> (u64, u64) {
    let (snap, _) = warm::build_snapshot(cache, usize::MAX, 0, CHUNK).unwrap();
    let m = snap.manifest();
    (u64::from(m.data_shards), u64::from(m.chunks_per_shard()))
}

#[test]
fn a_restarted_member_warms_from_three_siblings_and_survives_losing_one() {
    let mut net = Net::new(40); // 2.5 % of datagrams lost, both ways
    for i in 0..4 {
        net.start(i, &[0]);
    }
    let cache = frames(6000);
    for i in 0..3 {
        // The same frames, listed in another order by each sibling.
        let mut mine = cache.clone();
        mine.rotate_left(i * 1000);
        net.nodes.get_mut(&i).unwrap().cache = mine;
    }
    net.run(Duration::from_secs(8));
    assert!(net.all_see(&[0, 1, 2, 3]));
    net.start(3, &[0, 1, 2]);
    let now = net.now;
    net.nodes.get_mut(&3).unwrap().core.start_warmup(now, Duration::from_secs(20));
    // Node 1 is cut off once it has sent half a shard of its share.
    let (k, per_shard) = coding(&cache);
    let cut = net.now + Duration::from_secs(10);
    while net.nodes[&1].core.server().stats().chunks_sent < per_shard / 2 {
        assert!(net.now < cut, "node 1 never served its share");
        net.run(Duration::from_millis(1));
    }
    net.cut.insert(gossip_addr(1));
    let before = net.nodes[&3].core.fetch().map(|f| f.stats()).expect("still fetching");
    net.run(Duration::from_secs(20));
    let node = &net.nodes[&3];
    assert!(!node.core.warming());
    let report = node.reports.last().expect("a report");
    assert_eq!(report.outcome, Outcome::Done, "{report:?}");
    assert!(digest(&node.imported) == digest(&cache), "the senders' frames, all of them");
    assert_eq!(report.frames, cache.len() as u64);
    let f = report.fetch;
    assert_eq!(f.senders_used, 3, "{f:?}");
    let lost = f.senders.iter().find(|s| s.addr == Some(gossip_addr(1))).expect("node 1 sent");
    assert!(lost.chunks > 0 && lost.silent, "{f:?}");
    assert!(f.parity_used >= 1, "parity covered node 1's share: {f:?}");
    // Not started over: one transfer, and after the cut fewer chunks than
    // the k shards of a whole snapshot.
    assert_eq!((f.transfers, f.transfers_failed), (1, 0), "{f:?}");
    let after = f.chunks + f.chunks_redundant - before.chunks - before.chunks_redundant;
    assert!(after < k * per_shard, "{after} chunks after the cut, {k} × {per_shard} in all");
    assert!(f.chunks + f.chunks_redundant < (k + 3) * per_shard, "{f:?}");
}

#[test]
fn siblings_with_different_caches_warm_a_restart_from_one_of_them() {
    let mut net = Net::new(40);
    for i in 0..4 {
        net.start(i, &[0]);
    }
    let cache = frames(3000);
    for i in 0..3 {
        // Every sibling holds something else: no two manifests agree.
        net.nodes.get_mut(&i).unwrap().cache = cache[i * 200..].to_vec();
    }
    net.run(Duration::from_secs(8));
    assert!(net.all_see(&[0, 1, 2, 3]));
    net.start(3, &[0, 1, 2]);
    let now = net.now;
    net.nodes.get_mut(&3).unwrap().core.start_warmup(now, Duration::from_secs(20));
    net.run(Duration::from_secs(20));
    let node = &net.nodes[&3];
    let report = node.reports.last().expect("a report");
    assert_eq!(report.outcome, Outcome::Done, "{report:?}");
    let f = report.fetch;
    assert_eq!((f.senders_used, f.transfers, f.transfers_failed), (1, 1, 0), "{f:?}");
    let from = report.from.expect("a sibling");
    let i = (0..3).find(|&i| gossip_addr(i) == from).expect("one of the siblings");
    assert!(digest(&node.imported) == digest(&cache[i * 200..]), "that sibling's frames");
}

#[test]
fn warm_up_ends_at_once_when_no_sibling_is_there() {
    let mut net = Net::new(0);
    net.start(0, &[1]);
    let now = net.now;
    net.nodes.get_mut(&0).unwrap().core.start_warmup(now, Duration::from_secs(60));
    net.run(warm::MEMBERS_WAIT + Duration::from_millis(10));
    let node = &net.nodes[&0];
    assert!(!node.core.warming());
    assert_eq!(node.reports.last().map(|r| r.outcome), Some(Outcome::NoSibling));
}

#[test]
fn forged_truncated_and_oversized_datagrams_are_dropped_and_counted() {
    let mut net = Net::new(0);
    net.start(0, &[]);
    net.start(1, &[0]);
    net.run(Duration::from_secs(4));
    assert!(net.all_see(&[0, 1]));
    let now = net.now;
    let from = gossip_addr(1);
    let core = &mut net.nodes.get_mut(&0).unwrap().core;
    let before = core.gossip().stats().drops;
    // A valid G2 probe sealed with another key.
    let mut forged = vec![0x47, 0x32, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    forged.extend([0u8; 16]);
    ClusterKey::new([1; 32]).seal(&mut forged, 12).unwrap();
    core.handle(now, from, &forged);
    // A G6 shard request with a wrong MAC from a live member: the fast path
    // must hand it to the engine, which counts it.
    let mut chunk = vec![0x47, 0x36, 0, 0, 0, 10, 0x12, 0, 0, 0, 1, 0, 0, 0, 0, 1];
    chunk.extend([0u8; 16]);
    core.handle(now, from, &chunk);
    core.handle(now, from, &[0x47, 0x32, 1, 2, 3]);
    core.handle(now, from, &vec![0u8; 2000]);
    // Correct MAC and a fresh stamp, truncated frame; the same datagram
    // again (a replay), and once more stamped 31 s in the past.
    let stamp = |counter, time_ms| Stamp { sender: 0x0BAD, time_ms, counter };
    let unix = core.unix_ms(now);
    let key = ClusterKey::new(KEY);
    let cut = key.seal_gossip_vec(&[0x47, 0x31, 0, 0], 0, &stamp(1, unix)).unwrap();
    core.handle(now, from, &cut);
    core.handle(now, from, &cut);
    let stale = key.seal_gossip_vec(&[0x47, 0x31, 0, 0], 0, &stamp(2, unix - 31_000)).unwrap();
    core.handle(now, from, &stale);
    // A version-1 datagram (raw MAC, no stamp) under the right key.
    let mut v1 = vec![0x47, 0x32, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    v1.extend([0u8; 16]);
    key.seal(&mut v1, 12).unwrap();
    core.handle(now, from, &v1);
    let after = core.gossip().stats().drops;
    let reason = |d: &crate::gossip::Drops, r: &str| d.get(r);
    assert_eq!(reason(&after, "bad_mac") - reason(&before, "bad_mac"), 2);
    assert_eq!(reason(&after, "truncated") - reason(&before, "truncated"), 2);
    assert_eq!(reason(&after, "too_long") - reason(&before, "too_long"), 1);
    assert_eq!(reason(&after, "replayed") - reason(&before, "replayed"), 1);
    assert_eq!(reason(&after, "out_of_window") - reason(&before, "out_of_window"), 1);
    assert_eq!(reason(&after, "bad_version") - reason(&before, "bad_version"), 1);
    net.run(Duration::from_secs(3));
    assert!(net.all_see(&[0, 1]), "still a cluster");
}

#[test]
fn holdings_digests_reach_the_siblings_views_for_sibling_fill() {
    use crate::retry::Holding;
    let mut net = Net::new(0);
    for i in 0..3 {
        net.start(i, &[0]);
    }
    net.run(Duration::from_secs(6));
    assert!(net.all_see(&[0, 1, 2]));
    let held = vec![
        Holding { hash_key: 0xF1, lo: 100, hi: 199, missing: 0 },
        Holding { hash_key: 0xF2, lo: 1, hi: 50, missing: 7 },
    ];
    net.nodes.get_mut(&1).unwrap().core.set_holdings(held.clone());
    // A heartbeat later (1 s) every other member's workers know it.
    net.run(Duration::from_millis(1100));
    let id1 = net.nodes[&1].core.me().sibling_id();
    for i in [0, 2] {
        let view = net.nodes[&i].siblings.as_ref().expect("a view");
        assert_eq!(view.holdings_of(id1), Some(&held[..]), "node {i}");
        assert_eq!(view.holder(FrameKey { hash_key: 0xF1, seq: 150 }), Some(nack_addr(1)));
        assert_eq!(view.holder(FrameKey { hash_key: 0xF1, seq: 99 }), None);
        assert_eq!(view.holder(FrameKey { hash_key: 0xF3, seq: 150 }), None);
        assert!(net.nodes[&i].core.counters().holdings_updates >= 1);
    }
    // Membership did not change for it.
    assert!((0..3).all(|i| net.nodes[&i].core.counters().membership_changes <= 3));
    // An emptied cache: the digest goes away again.
    net.nodes.get_mut(&1).unwrap().core.set_holdings(Vec::new());
    net.run(Duration::from_millis(1100));
    let view = net.nodes[&0].siblings.as_ref().expect("a view");
    assert_eq!(view.holdings_of(id1), None);
}
