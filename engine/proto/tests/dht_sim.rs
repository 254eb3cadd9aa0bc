//! Deterministic simulation of the DHT: 1 000 `ricochet_proto::dht::Node`s on
//! the virtual network of `ricochet_proto::sim` (seeded latency and loss, a
//! virtual clock, churn).
//!
//! Everything is a pure function of `SEED`: the nodes' generators, the
//! network's latency and loss draws, who bootstraps from whom and which
//! nodes churn. The assertions are on counts for that seed, never on wall
//! time. `dht_sim_report` (ignored) prints the markdown table kept in
//! `perf/dht.md`:
//!
//! ```text
//! cargo test -p ricochet-proto --test dht_sim -- --ignored --nocapture dht_sim_report
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ricochet_proto::dht::rng::Rng;
use ricochet_proto::dht::{Config, Event, Node, NodeId, Outbox, PutAcks, QueryId};
use ricochet_proto::sim::{self, Latency, Net};
use ricochet_wire::record::{EndpointPayload, RecordRepr, RecordType, SigningKey, Slot};

const SEED: u64 = 0x0D47_2026;
const NODES: usize = 1000;
const UNIX_BASE: u64 = 1_767_225_600;
const K: usize = 20;

/// One DHT node and its outbox.
struct Peer {
    node: Node,
    out: Outbox,
    addr: SocketAddr,
    /// The top 64 bits of the node id.
    prefix: u64,
}

impl sim::Node for Peer {
    fn handle(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) {
        self.node.handle(now, from, payload, &mut self.out);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now, &mut self.out);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout()
    }

    fn drain_transmits(&mut self, _now: Instant, out: &mut Vec<sim::Transmit>) {
        let from = self.addr;
        out.extend(self.out.transmits.drain(..).map(|t| sim::Transmit {
            from,
            to: t.dest,
            payload: t.payload,
        }));
    }
}

struct Sim {
    net: Net<Peer>,
    events: Vec<(usize, Event)>,
    /// Whether new nodes run replication maintenance (off only to show
    /// what it is worth).
    replicate: bool,
}

fn sim_config(seed: u64) -> Config {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    let mut c = Config::new(s);
    c.request_timeout = Duration::from_millis(800);
    // Idle refreshes would dominate the run; the sim's phases are shorter.
    c.refresh_interval = Duration::from_secs(3600);
    c.replicate_interval = Duration::from_secs(600);
    // The sim compresses time (10 joins per second), so samples age faster.
    c.estimate_window = Duration::from_secs(300);
    c
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut net = Net::new(Instant::now(), seed);
        net.set_loss(0.01);
        net.set_latency(Latency::uniform(
            Duration::from_millis(5),
            Duration::from_millis(60),
            Duration::from_millis(1),
        ));
        Sim { net, events: Vec::new(), replicate: true }
    }

    fn instant(&self) -> Instant {
        self.net.now()
    }

    fn now(&self) -> Duration {
        self.net.elapsed()
    }

    fn rng(&mut self) -> &mut Rng {
        self.net.rng()
    }

    fn node(&self, idx: usize) -> &Node {
        &self.net.node(idx).node
    }

    /// Node `idx` and its outbox.
    fn peer(&mut self, idx: usize) -> (&mut Node, &mut Outbox) {
        let p = self.net.node_mut(idx);
        (&mut p.node, &mut p.out)
    }

    /// Adds a node (fresh key, fresh /24) and bootstraps it from up to
    /// three random live nodes.
    fn add_node(&mut self, refresh_on_bootstrap: bool) -> usize {
        let idx = self.net.len();
        let mut secret = [0u8; 32];
        self.rng().fill(&mut secret);
        let public = SigningKey::from_bytes(&secret).verifying_key().to_bytes();
        let addr = addr_of(idx);
        let seed = self.rng().next_u64();
        let now = self.instant();
        let mut config = sim_config(seed);
        config.refresh_on_bootstrap = refresh_on_bootstrap;
        if !self.replicate {
            config.replicate_interval = Duration::from_secs(365 * 86_400);
        }
        let node = Node::new(&public, config, now, UNIX_BASE + self.now().as_secs());
        let live = self.live();
        let prefix = node.id().words()[0];
        self.net.add(addr, Peer { node, out: Outbox::new(), addr, prefix });
        if !live.is_empty() {
            let seeds: Vec<SocketAddr> = (0..3)
                .map(|_| {
                    let i = live[self.rng().index(live.len())];
                    self.net.addr(i)
                })
                .collect();
            let (node, out) = self.peer(idx);
            node.bootstrap(now, &seeds, out);
        }
        self.flush(idx);
        idx
    }

    fn kill(&mut self, idx: usize) {
        self.net.set_up(idx, false);
    }

    /// Moves node `idx`'s outbox onto the network, keeps its events and
    /// re-arms its timer.
    fn flush(&mut self, idx: usize) {
        self.net.flush(idx);
        keep_events(&mut self.net, &mut self.events, idx);
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now() + d;
        let events = &mut self.events;
        self.net.run_until(end, |net, idx| {
            keep_events(net, events, idx);
            false
        });
    }

    fn live(&self) -> Vec<usize> {
        (0..self.net.len()).filter(|&i| self.net.is_up(i)).collect()
    }

    /// The `n` live nodes closest to `target` (brute force on the top 64
    /// bits of the distance; a tie there has probability 2^-64).
    fn true_closest(&self, target: &NodeId, n: usize) -> Vec<usize> {
        let t = target.words()[0];
        let mut v: Vec<(u64, usize)> = (0..self.net.len())
            .filter(|&i| self.net.is_up(i))
            .map(|i| (self.net.node(i).prefix ^ t, i))
            .collect();
        if v.len() > n {
            v.select_nth_unstable(n);
            v.truncate(n);
        }
        v.sort_unstable();
        v.into_iter().map(|(_, i)| i).collect()
    }

    fn random_live(&mut self) -> usize {
        let live = self.live();
        live[self.rng().index(live.len())]
    }

    fn take_events(&mut self) -> Vec<(usize, Event)> {
        std::mem::take(&mut self.events)
    }
}

/// Moves the events of node `idx`'s last step into `events`.
fn keep_events(net: &mut Net<Peer>, events: &mut Vec<(usize, Event)>, idx: usize) {
    events.extend(net.node_mut(idx).out.events.drain(..).map(|e| (idx, e)));
}

/// Node `i` listens on 10.(i / 256).(i % 256).1:9320.
fn addr_of(idx: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, (idx >> 8) as u8, idx as u8, 1)), 9320)
}

/// A published record and its slot.
struct Published {
    bytes: Vec<u8>,
    key: NodeId,
    slot: Slot,
}

fn make_records(rng: &mut Rng, publishers: usize, per_publisher: usize) -> Vec<Published> {
    let mut out = Vec::new();
    for p in 0..publishers {
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        let signing = SigningKey::from_bytes(&secret);
        for r in 0..per_publisher {
            let mut key = [0u8; 32];
            rng.fill(&mut key);
            let domain = format!("domain-{p}-{r}");
            let payload = EndpointPayload {
                nack_addr: Ipv4Addr::new(192, 0, 2, p as u8).to_ipv6_mapped(),
                nack_port: 9300,
                tier: 1,
                preference: 128,
                flags: 0x0018,
                shard_bits: 2,
                domain: domain.as_bytes(),
            };
            let mut pbuf = [0u8; 128];
            let n = payload.emit(&mut pbuf).unwrap();
            let mut repr =
                RecordRepr::unsigned(RecordType::Endpoint, key, 1, UNIX_BASE, 4 * 3600, &pbuf[..n]);
            repr.sign(&signing).unwrap();
            let mut bytes = vec![0u8; repr.buffer_len()];
            repr.emit(&mut bytes).unwrap();
            out.push(Published { bytes, key: NodeId(key), slot: repr.slot() });
        }
    }
    out
}

fn holds(sim: &Sim, idx: usize, rec: &Published) -> bool {
    let now_unix = UNIX_BASE + sim.now().as_secs();
    sim.node(idx).store().get(&rec.key.0, now_unix).any(|r| r.view().slot() == rec.slot)
}

/// Mean number of the true k closest live nodes holding each record.
fn replica_coverage(sim: &Sim, records: &[Published]) -> f64 {
    let total: usize = records
        .iter()
        .map(|rec| {
            sim.true_closest(&rec.key, K).into_iter().filter(|&i| holds(sim, i, rec)).count()
        })
        .sum();
    total as f64 / records.len() as f64
}

/// Records held by no live node at all.
fn lost_records(sim: &Sim, records: &[Published]) -> usize {
    records.iter().filter(|rec| !sim.live().into_iter().any(|i| holds(sim, i, rec))).count()
}

#[derive(Debug, Default)]
struct LookupStats {
    issued: usize,
    ok: usize,
    hops: Vec<u8>,
    requests: Vec<u32>,
}

impl LookupStats {
    fn median_hops(&self) -> f64 {
        median(&self.hops.iter().map(|&h| f64::from(h)).collect::<Vec<_>>())
    }
    fn p90_hops(&self) -> u8 {
        percentile(&self.hops, 0.9)
    }
    fn mean_requests(&self) -> f64 {
        self.requests.iter().map(|&r| f64::from(r)).sum::<f64>() / self.requests.len().max(1) as f64
    }
    fn rate(&self) -> f64 {
        self.ok as f64 / self.issued.max(1) as f64
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

fn percentile<T: Copy + Ord + Default>(v: &[T], p: f64) -> T {
    let mut v = v.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return T::default();
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Issues FIND_NODE lookups for random ids, 20 per virtual second, and
/// checks each found the true closest live node.
fn find_node_round(sim: &mut Sim, count: usize) -> LookupStats {
    let mut asked: BTreeMap<(usize, QueryId), NodeId> = BTreeMap::new();
    for i in 0..count {
        let src = sim.random_live();
        let target = NodeId::random(sim.rng());
        let now = sim.instant();
        let (node, out) = sim.peer(src);
        let q = node.find_node(now, target, out);
        sim.flush(src);
        asked.insert((src, q), target);
        if i % 20 == 19 {
            sim.run_for(Duration::from_secs(1));
        }
    }
    sim.run_for(Duration::from_secs(30));
    let mut st = LookupStats { issued: count, ..LookupStats::default() };
    for (idx, e) in sim.take_events() {
        if let Event::FindNodeDone { query, target, nodes, hops, requests } = e {
            let Some(t) = asked.get(&(idx, query)) else { continue };
            assert_eq!(*t, target);
            let best = sim.true_closest(&target, 1)[0];
            // The source itself may be the closest node; lookups return
            // other nodes only.
            let best_id = if best == idx { sim.true_closest(&target, 2)[1] } else { best };
            if nodes.first().is_some_and(|n| n.id == sim.node(best_id).id().0) {
                st.ok += 1;
            }
            st.hops.push(hops);
            st.requests.push(requests);
        }
    }
    st
}

/// Fetches every record from `per_record` random live nodes.
fn find_value_round(sim: &mut Sim, records: &[Published], per_record: usize) -> LookupStats {
    let mut asked: BTreeMap<(usize, QueryId), usize> = BTreeMap::new();
    let mut n = 0;
    for (ri, rec) in records.iter().enumerate() {
        for _ in 0..per_record {
            let src = sim.random_live();
            let now = sim.instant();
            let (node, out) = sim.peer(src);
            let q = node.find_value(now, rec.key, out);
            sim.flush(src);
            asked.insert((src, q), ri);
            n += 1;
            if n % 20 == 0 {
                sim.run_for(Duration::from_secs(1));
            }
        }
    }
    sim.run_for(Duration::from_secs(30));
    let mut st = LookupStats { issued: n, ..LookupStats::default() };
    for (idx, e) in sim.take_events() {
        if let Event::FindValueDone { query, records: found, hops, requests, .. } = e {
            let Some(&ri) = asked.get(&(idx, query)) else { continue };
            if found.iter().any(|r| r.view().slot() == records[ri].slot) {
                st.ok += 1;
            }
            st.hops.push(hops);
            st.requests.push(requests);
        }
    }
    st
}

#[derive(Debug)]
struct SizeStats {
    median_error: f64,
    p90_error: f64,
    covered: usize,
    nodes: usize,
    median_points: u32,
}

fn size_round(sim: &Sim) -> SizeStats {
    let now = sim.instant();
    let n = sim.live().len() as f64;
    let mut errors = Vec::new();
    let mut covered = 0;
    let mut points = Vec::new();
    for i in sim.live() {
        if let Some(est) = sim.node(i).size_estimate(now) {
            errors.push((est.nodes - n).abs() / n);
            if est.low <= n && n <= est.high {
                covered += 1;
            }
            points.push(est.points);
        } else {
            errors.push(1.0);
        }
    }
    let p90 = {
        let mut e = errors.clone();
        e.sort_by(f64::total_cmp);
        e[((e.len() - 1) as f64 * 0.9).round() as usize]
    };
    SizeStats {
        median_error: median(&errors),
        p90_error: p90,
        covered,
        nodes: errors.len(),
        median_points: percentile(&points, 0.5),
    }
}

#[derive(Debug)]
struct Report {
    refresh_on_join: bool,
    join_datagrams: u64,
    nodes: usize,
    join: Duration,
    find_node: LookupStats,
    find_value: LookupStats,
    put_acks: Vec<PutAcks>,
    coverage_after_put: f64,
    size: SizeStats,
    size_steady: SizeStats,
    churned: usize,
    coverage_after_churn: f64,
    coverage_after_repair: f64,
    lost_after_repair: usize,
    find_value_after_churn: LookupStats,
    find_node_after_churn: LookupStats,
    records: usize,
    delivered: u64,
    lost: u64,
    virtual_time: Duration,
    verifications: u64,
    replications: u64,
    unsolicited: u64,
    table_median: usize,
}

/// `n` random live nodes leave at once; `n` new ones join, one per 100 ms
/// (default config: bucket refresh after bootstrap on).
fn churn(sim: &mut Sim, n: usize) {
    for _ in 0..n {
        let victim = sim.random_live();
        sim.kill(victim);
    }
    for _ in 0..n {
        sim.add_node(true);
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_secs(20));
    sim.take_events();
}

/// One round of the repeated-churn study.
#[derive(Debug)]
struct ChurnRound {
    replaced: usize,
    coverage_after_churn: f64,
    coverage_after_interval: f64,
    lost: usize,
    find_value: LookupStats,
}

/// Repeated churn: `rounds` times, `fraction` of the nodes are replaced
/// and one replication interval (plus jitter) passes; with replication
/// maintenance on or off.
fn churn_study(replicate: bool, rounds: usize, fraction: f64) -> Vec<ChurnRound> {
    let mut sim = Sim::new(SEED ^ 0xC4);
    sim.replicate = replicate;
    for _ in 0..NODES {
        sim.add_node(false);
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_secs(60));
    let records = make_records(sim.rng(), 8, 8);
    for rec in &records {
        let src = sim.random_live();
        let now = sim.instant();
        let (node, out) = sim.peer(src);
        node.put(now, &rec.bytes, out).unwrap();
        sim.flush(src);
        sim.run_for(Duration::from_millis(200));
    }
    sim.run_for(Duration::from_secs(20));
    sim.take_events();
    let n = (NODES as f64 * fraction) as usize;
    (1..=rounds)
        .map(|round| {
            churn(&mut sim, n);
            let coverage_after_churn = replica_coverage(&sim, &records);
            sim.run_for(Duration::from_secs(600 + 150 + 60));
            sim.take_events();
            ChurnRound {
                replaced: round * n,
                coverage_after_churn,
                coverage_after_interval: replica_coverage(&sim, &records),
                lost: lost_records(&sim, &records),
                find_value: find_value_round(&mut sim, &records, 2),
            }
        })
        .collect()
}

fn churn_markdown(with: &[ChurnRound], without: &[ChurnRound]) -> String {
    let mut s = String::from(
        "| round | nodes replaced so far | replicas among each key's true k closest, after churn → \
         after one interval: with replication / without | records held by no live node: with / \
         without | FIND_VALUE success: with / without |\n|---|---|---|---|---|\n",
    );
    for (i, (a, b)) in with.iter().zip(without).enumerate() {
        s.push_str(&format!(
            "| {} | {} | {:.1} → {:.1} / {:.1} → {:.1} | {} / {} | {}/{} / {}/{} |\n",
            i + 1,
            a.replaced,
            a.coverage_after_churn,
            a.coverage_after_interval,
            b.coverage_after_churn,
            b.coverage_after_interval,
            a.lost,
            b.lost,
            a.find_value.ok,
            a.find_value.issued,
            b.find_value.ok,
            b.find_value.issued,
        ));
    }
    s
}

/// Runs the whole scenario. `refresh_on_join` is `Config::refresh_on_bootstrap`
/// for the 1 000 initial nodes (the 100 that join during churn always use
/// the default, on): off halves the join traffic, which the debug-build
/// test cannot afford; the report runs both.
fn scenario(refresh_on_join: bool) -> Report {
    let mut sim = Sim::new(SEED);
    // Join: one node every 100 ms, each bootstrapping from 3 earlier ones.
    for _ in 0..NODES {
        sim.add_node(refresh_on_join);
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_secs(60));
    let join = sim.now();
    let join_datagrams = sim.net.stats().delivered + sim.net.stats().lost();
    let bootstrapped =
        sim.take_events().iter().filter(|(_, e)| matches!(e, Event::Bootstrapped { .. })).count();
    assert_eq!(bootstrapped, NODES - 1, "every node after the first bootstraps");

    let size = size_round(&sim);
    let find_node = find_node_round(&mut sim, 500);

    // Publish: 8 publishers × 8 records, each put from a random node.
    let records = make_records(sim.rng(), 8, 8);
    for rec in &records {
        let src = sim.random_live();
        let now = sim.instant();
        let (node, out) = sim.peer(src);
        node.put(now, &rec.bytes, out).unwrap();
        sim.flush(src);
        sim.run_for(Duration::from_millis(200));
    }
    sim.run_for(Duration::from_secs(20));
    let put_acks: Vec<PutAcks> = sim
        .take_events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::PutDone { acks, .. } => Some(acks),
            _ => None,
        })
        .collect();
    let coverage_after_put = replica_coverage(&sim, &records);
    let find_value = find_value_round(&mut sim, &records, 4);

    // Churn: 10 % of the nodes leave, as many new ones join.
    let churned = NODES / 10;
    churn(&mut sim, churned);
    let coverage_after_churn = replica_coverage(&sim, &records);
    // Let replication run: one interval plus its jitter and slack.
    sim.run_for(Duration::from_secs(600 + 150 + 60));
    sim.take_events();
    let coverage_after_repair = replica_coverage(&sim, &records);
    let lost_after_repair = lost_records(&sim, &records);
    let find_value_after_churn = find_value_round(&mut sim, &records, 4);
    let find_node_after_churn = find_node_round(&mut sim, 200);
    let size_steady = size_round(&sim);

    let mut verifications = 0;
    let mut replications = 0;
    let mut unsolicited = 0;
    let mut tables = Vec::new();
    for (i, n) in sim.net.nodes().enumerate() {
        let s = n.node.stats();
        verifications += s.verifications;
        replications += s.replications;
        unsolicited += s.drops.unsolicited;
        if sim.net.is_up(i) {
            tables.push(n.node.table().len());
        }
    }
    Report {
        refresh_on_join,
        join_datagrams,
        nodes: NODES,
        join,
        find_node,
        find_value,
        put_acks,
        coverage_after_put,
        size,
        size_steady,
        churned,
        coverage_after_churn,
        coverage_after_repair,
        lost_after_repair,
        find_value_after_churn,
        find_node_after_churn,
        records: records.len(),
        delivered: sim.net.stats().delivered,
        lost: sim.net.stats().lost(),
        virtual_time: sim.now(),
        verifications,
        replications,
        unsolicited,
        table_median: percentile(&tables, 0.5),
    }
}

impl Report {
    fn markdown(&self) -> String {
        let log2n = (self.nodes as f64).log2();
        let stored: Vec<u32> = self.put_acks.iter().map(|a| a.stored).collect();
        let mean_stored =
            stored.iter().map(|&s| f64::from(s)).sum::<f64>() / stored.len().max(1) as f64;
        let mut s = String::new();
        s.push_str(&format!(
            "Simulated network: {} nodes (k = {K}, α = 3), one-way latency 5–60 ms, 1 % loss, \
             request timeout 800 ms, seed {SEED:#x}; {} datagrams delivered, {} lost, \
             {:.0} s of virtual time.\n\n",
            self.nodes,
            self.delivered,
            self.lost,
            self.virtual_time.as_secs_f64()
        ));
        s.push_str("| measure | result |\n|---|---|\n");
        let mut row = |k: &str, v: String| s.push_str(&format!("| {k} | {v} |\n"));
        row(
            &format!(
                "join: 1 node / 100 ms, each bootstrapping from 3 random earlier nodes; bucket \
                 refresh right after bootstrap {}",
                if self.refresh_on_join { "on (default)" } else { "off" }
            ),
            format!(
                "{:.0} s virtual; {} datagrams ({:.0} per join); median routing table {} entries \
                 at the end",
                self.join.as_secs_f64(),
                self.join_datagrams,
                self.join_datagrams as f64 / self.nodes as f64,
                self.table_median
            ),
        );
        row(
            "FIND_NODE: true closest live node found",
            format!(
                "{}/{} ({:.1} %)",
                self.find_node.ok,
                self.find_node.issued,
                100.0 * self.find_node.rate()
            ),
        );
        row(
            "FIND_NODE hops: median / p90 (log2 N)",
            format!(
                "{:.1} / {} ({log2n:.2})",
                self.find_node.median_hops(),
                self.find_node.p90_hops()
            ),
        );
        row(
            "FIND_NODE requests per lookup, mean",
            format!("{:.1}", self.find_node.mean_requests()),
        );
        row(
            "put: STOREs acknowledged per record, mean",
            format!("{mean_stored:.1} of {K} ({} puts)", self.put_acks.len()),
        );
        row(
            "replicas among each key's true k closest: after put",
            format!("{:.1} of {K}", self.coverage_after_put),
        );
        row(
            "FIND_VALUE success (64 records × 4 random nodes)",
            format!(
                "{}/{} ({:.1} %)",
                self.find_value.ok,
                self.find_value.issued,
                100.0 * self.find_value.rate()
            ),
        );
        row(
            "FIND_VALUE hops: median / p90 (log2 N)",
            format!(
                "{:.1} / {} ({log2n:.2})",
                self.find_value.median_hops(),
                self.find_value.p90_hops()
            ),
        );
        row(
            "FIND_VALUE requests per lookup, mean",
            format!("{:.1}", self.find_value.mean_requests()),
        );
        row(
            &format!("churn: {} nodes removed, {} new nodes joined", self.churned, self.churned),
            format!(
                "replicas among true k closest: {:.1} right after, {:.1} after one replication interval",
                self.coverage_after_churn, self.coverage_after_repair
            ),
        );
        row(
            "records lost (held by no live node) after churn",
            format!("{}/{}", self.lost_after_repair, self.records),
        );
        row(
            "FIND_VALUE success after churn",
            format!(
                "{}/{} ({:.1} %), median hops {:.1}",
                self.find_value_after_churn.ok,
                self.find_value_after_churn.issued,
                100.0 * self.find_value_after_churn.rate(),
                self.find_value_after_churn.median_hops()
            ),
        );
        row(
            "FIND_NODE success after churn",
            format!(
                "{}/{} ({:.1} %), median hops {:.1}",
                self.find_node_after_churn.ok,
                self.find_node_after_churn.issued,
                100.0 * self.find_node_after_churn.rate(),
                self.find_node_after_churn.median_hops()
            ),
        );
        for (when, st) in [
            ("steady state (end of run)", &self.size_steady),
            ("right after the join (N grew 1 → 1000 in 100 s)", &self.size),
        ] {
            row(
                &format!("size estimate, {when}: error median / p90"),
                format!(
                    "{:.1} % / {:.1} %; true N inside the node's 95 % interval at {:.1} % of \
                     nodes (median {} points pooled)",
                    100.0 * st.median_error,
                    100.0 * st.p90_error,
                    100.0 * st.covered as f64 / st.nodes as f64,
                    st.median_points
                ),
            );
        }
        row("signature verifications (all nodes)", format!("{}", self.verifications));
        row("replication lookups (all nodes)", format!("{}", self.replications));
        row(
            "responses dropped as unsolicited (late after timeout, all nodes)",
            format!("{}", self.unsolicited),
        );
        s
    }
}

#[test]
fn dht_sim_thousand_nodes() {
    let r = scenario(false);
    eprintln!("{}", r.markdown());
    assert!(r.find_node.rate() >= 0.99, "FIND_NODE success {:.3}", r.find_node.rate());
    assert!(r.find_value.rate() >= 0.99, "FIND_VALUE success {:.3}", r.find_value.rate());
    assert!(
        r.find_value_after_churn.rate() >= 0.99,
        "after churn {:.3}",
        r.find_value_after_churn.rate()
    );
    assert!(
        r.find_node_after_churn.rate() >= 0.99,
        "FIND_NODE after churn {:.3}",
        r.find_node_after_churn.rate()
    );
    assert_eq!(r.lost_after_repair, 0);
    assert!(r.coverage_after_repair > r.coverage_after_churn, "replication repaired replicas");
    assert!(r.coverage_after_repair >= 0.9 * K as f64, "coverage {:.1}", r.coverage_after_repair);
    assert!(r.find_node.median_hops() <= (r.nodes as f64).log2());
    assert!(
        r.size_steady.median_error < 0.25,
        "size estimate error {:.3}",
        r.size_steady.median_error
    );
}

#[test]
#[ignore = "prints the report table for perf/dht.md"]
fn dht_sim_report() {
    for refresh_on_join in [true, false] {
        let t0 = Instant::now();
        let r = scenario(refresh_on_join);
        println!("{}", r.markdown());
        println!("(wall time {:.1} s)\n", t0.elapsed().as_secs_f64());
    }
    let t0 = Instant::now();
    let with = churn_study(true, 5, 0.2);
    let without = churn_study(false, 5, 0.2);
    println!(
        "Repeated churn, 20 % of 1 000 nodes per round:\n\n{}",
        churn_markdown(&with, &without)
    );
    println!("(wall time {:.1} s)", t0.elapsed().as_secs_f64());
}
