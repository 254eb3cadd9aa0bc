//! Cluster cores on the virtual network of [`ricochet_proto::sim`]: real
//! [`Core`]s exchanging real, MAC-sealed datagrams with a fixed 1 ms
//! latency and seeded loss on a virtual clock. No sockets, no sleeps.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_proto::sim::{self, Latency};
use ricochet_wire::frame::FrameKey;
use ricochet_wire::mac::{ClusterKey, Stamp};
use ricochet_wire::record::SigningKey;

use super::machine::{Core, CoreSettings, Identity, LIVE_TIMEOUT, Note};
use super::warm::{self, Outcome};
use crate::retry::Siblings;

const UNIX: u64 = 1_767_225_600_000;
const LATENCY: Duration = Duration::from_millis(1);
const KEY: [u8; 32] = [0x4B; 32];
/// Seed of the network's loss draws.
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
/// G6 chunk size: what one default datagram carries.
const CHUNK: usize =
    crate::gossip::snapshot::chunk_budget(crate::gossip::snapshot::DEFAULT_MAX_DATAGRAM);

fn gossip_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 9310)
}

fn nack_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 9300)
}

/// One member: its core and what the driver would do with the core's
/// notes.
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

impl sim::Node for Node {
    fn handle(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) {
        self.core.handle(now, from, payload);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.core.poll_timeout())
    }

    /// The core's datagrams, and its notes acted on as the driver would.
    fn drain_transmits(&mut self, now: Instant, out: &mut Vec<sim::Transmit>) {
        let from = self.core.me().gossip;
        let mut sent: Vec<_> = self.core.drain_transmits().collect();
        for note in self.core.take_notes() {
            match note {
                Note::BuildSnapshot { to, rid } => {
                    let unix = self.core.unix_ms(now);
                    let snap = warm::build_snapshot(&self.cache, usize::MAX, unix, CHUNK)
                        .map(|(s, _)| s)
                        .map_err(|e| e.to_string());
                    self.core.snapshot_built(now, to, rid, snap);
                }
                Note::Import { frames, .. } => {
                    let bytes = frames.iter().map(|f| f.len() as u64).sum();
                    let n = frames.len() as u64;
                    self.imported.extend(frames);
                    self.core.imported(now, n, bytes, 0);
                }
                Note::WarmupOver(r) => self.reports.push(*r),
                Note::MembersChanged { .. } => {}
            }
        }
        if let Some(v) = self.core.take_siblings() {
            self.siblings = Some(v);
        }
        // Notes may have queued more.
        sent.extend(self.core.drain_transmits());
        out.extend(sent.into_iter().map(|t| sim::Transmit {
            from,
            to: t.dest,
            payload: t.payload,
        }));
    }
}

struct Net {
    net: sim::Net<Node>,
    /// Incarnations started so far, for distinct keys per restart.
    started: usize,
}

impl Net {
    /// `loss`: the chance that a datagram is lost.
    fn new(loss: f64) -> Net {
        let mut net = sim::Net::new(Instant::now(), SEED);
        net.set_latency(Latency::Fixed(LATENCY));
        net.set_loss(loss);
        Net { net, started: 0 }
    }

    fn now(&self) -> Instant {
        self.net.now()
    }

    fn unix(&self) -> u64 {
        UNIX + self.net.elapsed().as_millis() as u64
    }

    fn node(&self, i: usize) -> &Node {
        self.net.node(i)
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        self.net.node_mut(i)
    }

    /// Starts node `i` (again, at the same addresses) with `seeds`.
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
            Core::new(identity, ClusterKey::new(KEY), settings, self.now(), self.unix()).unwrap();
        core.set_seeds(seeds.iter().map(|&s| gossip_addr(s)).collect());
        let node = Node {
            core,
            cache: Vec::new(),
            imported: Vec::new(),
            siblings: None,
            reports: Vec::new(),
        };
        if i < self.net.len() {
            self.net.replace(i, node);
        } else {
            assert_eq!(i, self.net.len(), "nodes start in order");
            self.net.add(gossip_addr(i), node);
        }
    }

    /// Stops node `i`: it neither sends nor receives any more.
    fn stop(&mut self, i: usize) {
        self.net.set_up(i, false);
    }

    /// Cuts node `i` off: every datagram it sends from now on, and every
    /// one sent to it, is lost.
    fn cut_off(&mut self, i: usize) {
        self.net.partition().isolate(gossip_addr(i));
    }

    /// Runs the network for `d` of virtual time, first putting on the
    /// network whatever the test made the cores send.
    fn run(&mut self, d: Duration) {
        self.net.flush_all();
        self.net.run_for(d);
    }

    fn live(&self, i: usize) -> BTreeSet<SocketAddr> {
        self.node(i).core.live().iter().map(|r| r.gossip).collect()
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
    let mut net = Net::new(0.0);
    net.start(0, &[]);
    net.start(1, &[0]);
    net.start(2, &[0]);
    net.run(Duration::from_secs(6));
    assert!(net.all_see(&[0, 1, 2]), "{:?}", (0..3).map(|i| net.live(i)).collect::<Vec<_>>());
    // 1 and 2 knew only the seed: they learnt each other, and by PEX too.
    assert!(
        net.node(1)
            .core
            .pex()
            .book()
            .get(&SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes())
            .is_some()
    );
    // Every member's workers got the same gap owners.
    let views: Vec<&Siblings> =
        (0..3).map(|i| net.node(i).siblings.as_ref().expect("a view")).collect();
    let ids: Vec<u64> = (0..3).map(|i| net.node(i).core.me().sibling_id()).collect();
    for seq in 0..200 {
        let key = FrameKey { hash_key: 0xABCD, seq };
        let owners: Vec<u64> =
            (0..3).map(|i| views[i].owner(key).map_or(ids[i], |s| s.id)).collect();
        assert!(owners.windows(2).all(|w| w[0] == w[1]), "seq {seq}: {owners:?}");
    }
    // Steady state is quiet: no drops of any kind.
    for i in 0..3 {
        let st = net.node(i).core.gossip().stats();
        assert_eq!(st.drops.total(), 0, "node {i}: {:?}", st.drops());
    }
}

#[test]
fn a_leaving_member_is_dropped_at_once_and_a_dead_one_after_the_timeout() {
    let mut net = Net::new(0.0);
    for i in 0..4 {
        net.start(i, &[0]);
    }
    net.run(Duration::from_secs(6));
    assert!(net.all_see(&[0, 1, 2, 3]));
    let now = net.now();
    net.node_mut(3).core.leave(now);
    net.run(Duration::from_millis(100));
    assert!(net.all_see(&[0, 1, 2]), "the leaving member is gone within 100 ms");
    net.stop(3);
    net.stop(2);
    net.run(LIVE_TIMEOUT - Duration::from_millis(1500));
    assert!(net.live(0).contains(&gossip_addr(2)), "not before the timeout");
    net.run(Duration::from_millis(2600));
    assert!(net.all_see(&[0, 1]), "{:?}", net.live(0));
}

#[test]
fn a_restarted_member_warms_its_cache_from_a_sibling_despite_loss() {
    let mut net = Net::new(0.025); // 2.5 % of datagrams lost, both ways
    net.start(0, &[]);
    net.start(1, &[0]);
    net.start(2, &[0]);
    // More than the engine's 1 MiB egress burst per sender: the transfer
    // runs into the egress byte-rate cap and its wake-ups.
    let cache = frames(16000);
    for i in 0..3 {
        net.node_mut(i).cache = cache.clone();
    }
    net.run(Duration::from_secs(8));
    assert!(net.all_see(&[0, 1, 2]));
    // Node 2 restarts at the same addresses with an empty cache.
    net.start(2, &[0, 1]);
    let now = net.now();
    net.node_mut(2).core.start_warmup(now, Duration::from_secs(10));
    assert!(net.node(2).core.warming());
    net.run(Duration::from_secs(10));
    let node = net.node(2);
    assert!(!node.core.warming());
    let report = node.reports.last().expect("a report");
    assert_eq!(report.outcome, Outcome::Done, "{report:?}");
    assert!(digest(&node.imported) == digest(&cache), "the senders' frames, all of them");
    assert_eq!(report.frames, cache.len() as u64);
    assert!(report.fetch.chunks > 0 && report.fetch.repair_rounds >= 1, "{report:?}");
    assert!(net.all_see(&[0, 1, 2]), "the old incarnation was replaced");
    let served: u64 = (0..2).map(|i| net.node(i).core.server().stats().snapshots_served).sum();
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
    let mut net = Net::new(0.025); // 2.5 % of datagrams lost, both ways
    for i in 0..4 {
        net.start(i, &[0]);
    }
    let cache = frames(6000);
    for i in 0..3 {
        // The same frames, listed in another order by each sibling.
        let mut mine = cache.clone();
        mine.rotate_left(i * 1000);
        net.node_mut(i).cache = mine;
    }
    net.run(Duration::from_secs(8));
    assert!(net.all_see(&[0, 1, 2, 3]));
    net.start(3, &[0, 1, 2]);
    let now = net.now();
    net.node_mut(3).core.start_warmup(now, Duration::from_secs(20));
    // Node 1 is cut off once it has sent half a shard of its share.
    let (k, per_shard) = coding(&cache);
    let cut = net.now() + Duration::from_secs(10);
    while net.node(1).core.server().stats().chunks_sent < per_shard / 2 {
        assert!(net.now() < cut, "node 1 never served its share");
        net.run(Duration::from_millis(1));
    }
    net.cut_off(1);
    let before = net.node(3).core.fetch().map(|f| f.stats()).expect("still fetching");
    net.run(Duration::from_secs(20));
    let node = net.node(3);
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
    let mut net = Net::new(0.025);
    for i in 0..4 {
        net.start(i, &[0]);
    }
    let cache = frames(3000);
    for i in 0..3 {
        // Every sibling holds something else: no two manifests agree.
        net.node_mut(i).cache = cache[i * 200..].to_vec();
    }
    net.run(Duration::from_secs(8));
    assert!(net.all_see(&[0, 1, 2, 3]));
    net.start(3, &[0, 1, 2]);
    let now = net.now();
    net.node_mut(3).core.start_warmup(now, Duration::from_secs(20));
    net.run(Duration::from_secs(20));
    let node = net.node(3);
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
    let mut net = Net::new(0.0);
    net.start(0, &[1]);
    let now = net.now();
    net.node_mut(0).core.start_warmup(now, Duration::from_secs(60));
    net.run(warm::MEMBERS_WAIT + Duration::from_millis(10));
    let node = net.node(0);
    assert!(!node.core.warming());
    assert_eq!(node.reports.last().map(|r| r.outcome), Some(Outcome::NoSibling));
}

#[test]
fn forged_truncated_and_oversized_datagrams_are_dropped_and_counted() {
    let mut net = Net::new(0.0);
    net.start(0, &[]);
    net.start(1, &[0]);
    net.run(Duration::from_secs(4));
    assert!(net.all_see(&[0, 1]));
    let now = net.now();
    let from = gossip_addr(1);
    let core = &mut net.node_mut(0).core;
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
    let mut net = Net::new(0.0);
    for i in 0..3 {
        net.start(i, &[0]);
    }
    net.run(Duration::from_secs(6));
    assert!(net.all_see(&[0, 1, 2]));
    let held = vec![
        Holding { hash_key: 0xF1, lo: 100, hi: 199, missing: 0 },
        Holding { hash_key: 0xF2, lo: 1, hi: 50, missing: 7 },
    ];
    net.node_mut(1).core.set_holdings(held.clone());
    // A heartbeat later (1 s) every other member's workers know it.
    net.run(Duration::from_millis(1100));
    let id1 = net.node(1).core.me().sibling_id();
    for i in [0, 2] {
        let view = net.node(i).siblings.as_ref().expect("a view");
        assert_eq!(view.holdings_of(id1), Some(&held[..]), "node {i}");
        assert_eq!(view.holder(FrameKey { hash_key: 0xF1, seq: 150 }), Some(nack_addr(1)));
        assert_eq!(view.holder(FrameKey { hash_key: 0xF1, seq: 99 }), None);
        assert_eq!(view.holder(FrameKey { hash_key: 0xF3, seq: 150 }), None);
        assert!(net.node(i).core.counters().holdings_updates >= 1);
    }
    // Membership did not change for it.
    assert!((0..3).all(|i| net.node(i).core.counters().membership_changes <= 3));
    // An emptied cache: the digest goes away again.
    net.node_mut(1).core.set_holdings(Vec::new());
    net.run(Duration::from_millis(1100));
    let view = net.node(0).siblings.as_ref().expect("a view");
    assert_eq!(view.holdings_of(id1), None);
}
