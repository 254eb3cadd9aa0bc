//! Discovery on a virtual network: real [`Core`]s (and raw DHT nodes for
//! hostile publishers) exchanging real datagrams with a fixed 5 ms
//! latency on a virtual clock. No sockets, no sleeps.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;

use ricochet_wire::control::AdvertFlags;
use ricochet_wire::dht::NodeInfo;
use ricochet_wire::endpoint::domain_topic_key;
use ricochet_wire::record::{EndpointPayload, RecordRepr, RecordType, SigningKey};

use super::machine::{Note, OP_TIMEOUT, Trust, conclusive, ttl_for};
use super::*;
use crate::dht::{Node, Outbox};
use crate::rt::DhtShard;

const UNIX: u64 = 1_767_225_600;
const REFRESH: Duration = Duration::from_secs(2);
const LATENCY: Duration = Duration::from_millis(5);

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8 + 1)), 9320)
}

fn index(a: SocketAddr) -> Option<usize> {
    match a.ip() {
        IpAddr::V4(v4) if v4.octets()[..2] == [10, 0] => {
            let o = v4.octets();
            Some(usize::from(o[2]) << 8 | usize::from(o[3]).checked_sub(1)?)
        }
        _ => None,
    }
}

fn nack(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i as u8 + 1)), 9300)
}

/// DHT shards (workers) per simulated endpoint.
const SHARDS: usize = 2;

/// One endpoint as the daemon runs it: the discovery core and one DHT
/// shard per worker, glued the way the runtime glues them — each datagram
/// goes to the shard [`rt::dht_owner`] names, each command to
/// [`rt::DhtWhat::owner`], and results come back through a reply channel.
#[derive(Debug)]
struct Host {
    core: Core,
    shards: Vec<DhtShard>,
    seeds: Vec<SocketAddr>,
    tx: tokio::sync::mpsc::Sender<rt::DhtReply>,
    rx: tokio::sync::mpsc::Receiver<rt::DhtReply>,
}

impl Host {
    fn new(i: usize, settings: CoreSettings, now: Instant, seeds: Vec<SocketAddr>) -> Host {
        let key = SigningKey::from_bytes(&[i as u8 + 1; 32]);
        let opts = rt::DhtOptions {
            port: 9320,
            public_key: key.verifying_key().to_bytes(),
            config: dht::Config::new([i as u8 + 100; 32]),
        };
        let shards =
            (0..SHARDS).map(|w| DhtShard::new(w, SHARDS, &opts, addr(i).ip(), now, UNIX)).collect();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        Host { core: Core::new(key, settings, now, UNIX), shards, seeds, tx, rx }
    }

    fn poll_timeout(&self) -> Instant {
        let shards = self.shards.iter().filter_map(DhtShard::poll_timeout);
        shards.fold(self.core.poll_timeout(), Instant::min)
    }

    fn handle(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let w = rt::dht_owner(bytes, SHARDS);
        self.shards[w].on_datagram(now, from, bytes);
    }

    fn handle_timeout(&mut self, now: Instant) {
        let unix = self.core.now_unix(now);
        for s in &mut self.shards {
            s.tick(now, unix);
        }
        if self.core.poll_timeout() <= now {
            self.core.handle_timeout(now);
        }
    }

    /// Runs the driver's part: bootstrap when due (seeds plus the peers
    /// the shards know), commands to the shards, results to the core.
    fn pump(&mut self, now: Instant) {
        loop {
            let peers: Vec<usize> = self.shards.iter().map(|s| s.node().table().len()).collect();
            self.core.set_routing_peers(&peers);
            if self.core.bootstrap_due(now) {
                let mut addrs = self.seeds.clone();
                for p in self.known_peers(now, 64) {
                    if !addrs.contains(&p.addr) {
                        addrs.push(p.addr);
                    }
                }
                self.core.bootstrap(now, &addrs);
            }
            let commands = self.core.take_commands();
            let mut any = !commands.is_empty();
            for c in commands {
                let (op, what) = request(c);
                let targets: Vec<usize> = match what.owner(SHARDS) {
                    Some(w) => vec![w],
                    None => (0..SHARDS).collect(),
                };
                for w in targets {
                    let req = rt::DhtRequest { op, what: what.clone(), reply: self.tx.clone() };
                    self.shards[w].on_request(now, req);
                }
            }
            while let Ok(r) = self.rx.try_recv() {
                any = true;
                self.core.on_reply(now, r.op, r.result);
            }
            if !any {
                return;
            }
        }
    }

    fn known_peers(&mut self, now: Instant, max: usize) -> Vec<NodeInfo> {
        let snaps: Vec<rt::DhtSnapshot> = self.snapshots(now);
        merge_peers(snaps.iter().map(|s| &s.export[..]), max)
    }

    fn snapshots(&mut self, now: Instant) -> Vec<rt::DhtSnapshot> {
        self.shards.iter_mut().map(|s| s.snapshot(now)).collect()
    }
}

#[derive(Debug)]
enum Member {
    Host(Box<Host>),
    Raw(Box<Node>),
}

impl Member {
    fn poll_timeout(&self) -> Instant {
        match self {
            Member::Host(h) => h.poll_timeout(),
            Member::Raw(n) => n.poll_timeout().expect("a node always has a tick"),
        }
    }

    fn host(&mut self) -> &mut Host {
        match self {
            Member::Host(h) => h,
            Member::Raw(_) => panic!("not a host"),
        }
    }
}

/// The virtual network. Member 0 is the seed everyone else bootstraps from.
#[derive(Debug)]
struct Net {
    now: Instant,
    members: Vec<Option<Member>>,
    queue: BTreeMap<(Instant, u64), (usize, usize, Vec<u8>)>,
    sent: u64,
}

impl Net {
    fn new() -> Net {
        Net { now: Instant::now(), members: Vec::new(), queue: BTreeMap::new(), sent: 0 }
    }

    fn settings(publish: Option<Publish>, upstream: Option<&str>) -> CoreSettings {
        CoreSettings {
            publish,
            upstream_domain: upstream.map(str::to_owned),
            trust: Trust::Any,
            static_upstreams: Vec::new(),
            family: Family::V4,
            refresh: REFRESH,
            bootstrap_retry: Duration::from_secs(1),
            shards: SHARDS,
        }
    }

    fn add_core(&mut self, settings: CoreSettings) -> usize {
        let i = self.members.len();
        let seeds = if i == 0 { vec![] } else { vec![addr(0)] };
        let host = Host::new(i, settings, self.now, seeds);
        self.members.push(Some(Member::Host(Box::new(host))));
        i
    }

    fn add_endpoint(&mut self, domain: &str, tier: u8, preference: u8) -> usize {
        let i = self.members.len();
        let publish = Publish {
            domain: domain.into(),
            nack: nack(i),
            tier,
            preference,
            flags: AdvertFlags::MULTICAST_RETRANSMIT,
            shard_bits: 2,
        };
        self.add_core(Net::settings(Some(publish), None))
    }

    fn add_raw(&mut self) -> usize {
        let i = self.members.len();
        let mut node =
            Node::new(&[0xE0 + i as u8; 32], dht::Config::new([i as u8; 32]), self.now, UNIX);
        let mut out = Outbox::new();
        node.bootstrap(self.now, &[addr(0)], &mut out);
        self.members.push(Some(Member::Raw(Box::new(node))));
        self.send(i, &mut out);
        i
    }

    fn host(&mut self, i: usize) -> &mut Host {
        self.members[i].as_mut().expect("running").host()
    }

    fn core(&mut self, i: usize) -> &mut Core {
        &mut self.host(i).core
    }

    fn stop(&mut self, i: usize) {
        self.members[i] = None;
    }

    fn send(&mut self, from: usize, out: &mut Outbox) {
        for t in out.drain_transmits() {
            self.queue_datagram(from, t);
        }
        out.events.clear();
    }

    fn queue_datagram(&mut self, from: usize, t: dht::Transmit) {
        if let Some(to) = index(t.dest) {
            self.sent += 1;
            self.queue.insert((self.now + LATENCY, self.sent), (from, to, t.payload));
        }
    }

    /// Runs member `i`'s driver step and sends what its shards queued.
    fn pump(&mut self, i: usize) {
        let now = self.now;
        let Some(Member::Host(h)) = self.members[i].as_mut() else { return };
        h.pump(now);
        let queued: Vec<dht::Transmit> =
            h.shards.iter_mut().flat_map(|s| s.drain_transmits().collect::<Vec<_>>()).collect();
        for t in queued {
            self.queue_datagram(i, t);
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        let mut out = Outbox::new();
        loop {
            for i in 0..self.members.len() {
                self.pump(i);
            }
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let next_timer = self.members.iter().flatten().map(Member::poll_timeout).min();
            let Some(next) = [next_msg, next_timer].into_iter().flatten().min() else { break };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            if next_msg == Some(next) {
                let (_, (from, to, bytes)) = self.queue.pop_first().expect("queued");
                match self.members[to].as_mut() {
                    Some(Member::Host(h)) => h.handle(now, addr(from), &bytes),
                    Some(Member::Raw(n)) => {
                        n.handle(now, addr(from), &bytes, &mut out);
                        self.send(to, &mut out);
                    }
                    None => {}
                }
            } else {
                for i in 0..self.members.len() {
                    match self.members[i].as_mut() {
                        Some(Member::Host(h)) if h.poll_timeout() <= now => h.handle_timeout(now),
                        Some(Member::Raw(n)) if n.poll_timeout().is_some_and(|t| t <= now) => {
                            n.handle_timeout(now, &mut out);
                            self.send(i, &mut out);
                        }
                        _ => {}
                    }
                }
            }
        }
        self.now = end;
    }
}

fn upstream_addrs(c: &Core) -> Vec<SocketAddr> {
    c.upstreams().iter().map(|u| u.addr).collect()
}

fn signed(key: &SigningKey, t: RecordType, topic: [u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut r = RecordRepr::unsigned(t, topic, 1, UNIX, 600, payload);
    r.sign(key).unwrap();
    let mut buf = vec![0u8; r.buffer_len()];
    r.emit(&mut buf).unwrap();
    buf
}

fn endpoint_payload(domain: &[u8], nack: SocketAddr, flags: u16) -> Vec<u8> {
    let mut p = EndpointPayload {
        nack_addr: Ipv6Addr::UNSPECIFIED,
        nack_port: 0,
        tier: 0,
        preference: 255,
        flags,
        shard_bits: 0,
        domain,
    };
    p.set_nack(nack);
    let mut buf = vec![0u8; p.buffer_len()];
    p.emit(&mut buf).unwrap();
    buf
}

#[test]
fn discovery_lists_static_then_endpoints_by_tier_and_preference() {
    let mut net = Net::new();
    let u1 = net.add_endpoint("a", 0, 100);
    let u2 = net.add_endpoint("a", 0, 200);
    let u3 = net.add_endpoint("a", 1, 255);
    let _other = net.add_endpoint("b", 0, 255);
    let mut s = Net::settings(None, Some("a"));
    let fixed: SocketAddr = "192.0.2.9:9300".parse().unwrap();
    s.static_upstreams = vec![fixed, nack(u1)];
    let d = net.add_core(s);
    // The static list is what the workers start with: nothing to hand over.
    assert_eq!(net.core(d).take_upstreams(), None);
    net.run_for(REFRESH * 4);

    let want = vec![fixed, nack(u1), nack(u2), nack(u3)];
    assert_eq!(upstream_addrs(net.core(d)), want);
    assert_eq!(net.core(d).take_upstreams(), Some(want.clone()));
    assert_eq!(net.core(d).take_upstreams(), None, "handed over once");
    let sources: Vec<Source> = net.core(d).upstreams().iter().map(|u| u.source).collect();
    assert_eq!(sources[0], Source::Static);
    assert_eq!(sources[1], Source::Static, "a discovered duplicate of a static entry stays static");
    assert!(matches!(sources[2], Source::Dht(_)));
    assert_eq!(net.core(d).discovered().len(), 3, "domain b's endpoint is not ours");
    let c = net.core(d).counters();
    assert!(c.lookups_found >= 1, "{c:?}");
    assert_eq!(c.rejected.wrong_domain, 0, "b's records live under b's key");

    // A refused hand-over is offered again.
    net.core(d).upstreams_not_taken();
    assert_eq!(net.core(d).take_upstreams(), Some(want));

    // Each endpoint's own record is refreshed with a growing seq.
    let p1 = net.core(u1).published().unwrap();
    net.run_for(REFRESH);
    let p2 = net.core(u1).published().unwrap();
    assert!(p2.seq > p1.seq, "{p1:?} {p2:?}");
    assert_eq!(p2.ttl, ttl_for(REFRESH));
    assert!(p2.acks.is_some_and(|(targets, a)| targets >= 4 && a.stored >= 4), "{p2:?}");
}

#[test]
fn discovery_drops_a_draining_endpoint_and_a_stopped_one() {
    let mut net = Net::new();
    let _seed = net.add_core(Net::settings(None, None));
    let u1 = net.add_endpoint("a", 0, 200);
    let u2 = net.add_endpoint("a", 1, 128);
    let u3 = net.add_endpoint("a", 2, 128);
    let d = net.add_core(Net::settings(None, Some("a")));
    net.run_for(REFRESH * 4);
    assert_eq!(upstream_addrs(net.core(d)), vec![nack(u1), nack(u2), nack(u3)]);

    // U3 starts draining: it republishes at once with the Draining flag,
    // and D drops it at its next lookup, long before the old record's TTL.
    let now = net.now;
    net.core(u3).set_draining(now, true);
    net.pump(u3);
    assert!(net.core(u3).published().unwrap().draining);
    net.run_for(REFRESH * 2);
    assert_eq!(upstream_addrs(net.core(d)), vec![nack(u1), nack(u2)]);
    assert!(net.core(d).counters().rejected.draining >= 1);
    // Older copies of its record cannot bring it back.
    net.run_for(REFRESH * 3);
    assert_eq!(upstream_addrs(net.core(d)), vec![nack(u1), nack(u2)]);

    // U1 stops: its record is no longer refreshed and expires everywhere
    // within its TTL; D's list follows within a refresh after that.
    net.stop(u1);
    net.run_for(Duration::from_secs(u64::from(ttl_for(REFRESH))) + REFRESH * 2);
    assert_eq!(upstream_addrs(net.core(d)), vec![nack(u2)]);
    let c = net.core(d).counters();
    assert_eq!(c.upstreams_missed + c.upstreams_expired, 1, "{c:?}");
    // U2 stays, although its puts now wait out U1's request timeouts.
    net.run_for(REFRESH * 10);
    assert_eq!(upstream_addrs(net.core(d)), vec![nack(u2)]);
}

/// Member `i`'s public key (`Net` gives member `i` the seed `[i + 1; 32]`).
fn public_key(i: usize) -> [u8; 32] {
    SigningKey::from_bytes(&[i as u8 + 1; 32]).verifying_key().to_bytes()
}

/// Anyone can sign a record under a domain's key: with `--upstream-keys`,
/// only the listed publishers become upstreams, however well the others
/// rank; with an empty list, none does.
#[test]
fn discovery_lists_only_the_trusted_publishers() {
    let mut net = Net::new();
    let u1 = net.add_endpoint("a", 1, 100);
    let rogue = net.add_endpoint("a", 0, 255);
    let u3 = net.add_endpoint("a", 1, 50);
    let mut s = Net::settings(None, Some("a"));
    s.trust = Trust::Keys(vec![public_key(u1), public_key(u3)]);
    let d = net.add_core(s);
    let mut s = Net::settings(None, Some("a"));
    s.trust = Trust::Keys(Vec::new());
    let nobody = net.add_core(s);
    net.run_for(REFRESH * 4);
    assert_eq!(upstream_addrs(net.core(d)), vec![nack(u1), nack(u3)], "not {:?}", nack(rogue));
    assert_eq!(net.core(d).discovered().len(), 2);
    assert!(net.core(d).counters().rejected.untrusted >= 1);
    assert!(upstream_addrs(net.core(nobody)).is_empty());
    assert!(net.core(nobody).counters().rejected.untrusted >= 3);
    assert!(Trust::Any.allows(&public_key(rogue)));
}

#[test]
fn discovery_ignores_records_that_are_not_usable_endpoints() {
    let mut net = Net::new();
    let u1 = net.add_endpoint("a", 0, 128);
    let mut s = Net::settings(None, Some("a"));
    s.family = Family::V4;
    let d = net.add_core(s);
    let evil = net.add_raw();
    net.run_for(REFRESH * 2);
    assert_eq!(upstream_addrs(net.core(d)), vec![nack(u1)]);

    let topic = domain_topic_key(b"a");
    let bad: Vec<Vec<u8>> = vec![
        // Another domain's payload under a's key.
        endpoint_payload(b"b", "10.9.9.1:9300".parse().unwrap(), 0),
        // Not a NACK address anyone can use.
        endpoint_payload(b"a", "10.9.9.2:0".parse().unwrap(), 0),
        endpoint_payload(b"a", "0.0.0.0:9300".parse().unwrap(), 0),
        // IPv6, which D's IPv4 upstream socket cannot reach.
        endpoint_payload(b"a", "[2001:db8::1]:9300".parse().unwrap(), 0),
        // Not an endpoint payload at all.
        b"\x00garbage".to_vec(),
    ];
    let now = net.now;
    let mut out = Outbox::new();
    for (i, payload) in bad.iter().enumerate() {
        let key = SigningKey::from_bytes(&[0x70 + i as u8; 32]);
        let rec = signed(&key, RecordType::Endpoint, topic, payload);
        let Some(Member::Raw(n)) = net.members[evil].as_mut() else { unreachable!() };
        n.put(now, &rec, &mut out).unwrap();
    }
    // A topic record under the key, and one signed with D's own key.
    let key = SigningKey::from_bytes(&[0x7F; 32]);
    let rec = signed(&key, RecordType::Topic, topic, b"x");
    let d_key = SigningKey::from_bytes(&[d as u8 + 1; 32]);
    let own = signed(&d_key, RecordType::Endpoint, topic, &endpoint_payload(b"a", nack(9), 0));
    let Some(Member::Raw(n)) = net.members[evil].as_mut() else { unreachable!() };
    n.put(now, &rec, &mut out).unwrap();
    n.put(now, &own, &mut out).unwrap();
    net.send(evil, &mut out);
    net.run_for(REFRESH * 6);

    assert_eq!(upstream_addrs(net.core(d)), vec![nack(u1)], "only U1 counts");
    let r = net.core(d).counters().rejected;
    assert!(r.wrong_domain >= 1, "{r:?}");
    assert!(r.address >= 1, "{r:?}");
    assert!(r.malformed >= 1, "{r:?}");
    assert!(r.wrong_type >= 1, "{r:?}");
    assert!(r.own >= 1, "{r:?}");
    // Eight records under the key: no lookup is conclusive, so U1 never
    // flaps out even when a reply leaves its record out.
    assert_eq!(net.core(d).counters().upstreams_missed, 0);
}

#[test]
fn discovery_seed_node_bootstraps_once_contacted() {
    let mut net = Net::new();
    let seed = net.add_endpoint("a", 0, 128);
    net.run_for(Duration::from_secs(3));
    assert!(!net.core(seed).bootstrapped(), "nobody to join yet");
    assert_eq!(net.core(seed).counters().bootstrap_failures, 0, "a seed does not fail");
    let d = net.add_core(Net::settings(None, Some("a")));
    net.run_for(REFRESH * 3);
    assert!(net.core(d).bootstrapped());
    assert!(net.core(seed).bootstrapped(), "joined through the peer that contacted it");
    assert_eq!(upstream_addrs(net.core(d)), vec![nack(seed)]);
    // The peer cache holds the seed, once although both shards know it.
    let now = net.now;
    let cache = dht::peers::encode(&net.host(d).known_peers(now, 8));
    let peers = dht::peers::decode(&cache).unwrap();
    assert_eq!(peers.iter().map(|p| p.addr).collect::<Vec<_>>(), vec![addr(seed)]);
    // Every shard of both joined: the seed's shards learned from each other.
    for h in [seed, d] {
        for s in net.host(h).snapshots(now) {
            assert!(!s.peers.is_empty(), "{h}: a shard without peers");
        }
    }
}

#[test]
fn discovery_failed_bootstrap_is_retried() {
    let mut net = Net::new();
    let _dead_seed = net.add_core(Net::settings(None, None));
    net.stop(0);
    let d = net.add_core(Net::settings(None, Some("a")));
    net.run_for(Duration::from_secs(12));
    let c = net.core(d).counters();
    assert!(c.bootstraps >= 2 && c.bootstrap_failures >= 2, "{c:?}");
    assert!(net.core(d).upstreams().is_empty());
}

#[test]
fn discovery_conclusive_lookups_leave_room_for_another_record() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let topic = domain_topic_key(b"a");
    let small = signed(&key, RecordType::Endpoint, topic, &endpoint_payload(b"a", nack(1), 0));
    let rec = |bytes: &[u8]| {
        let r = ricochet_wire::record::Record::new_checked(bytes).unwrap();
        dht::RecordBuf::new_verified(&r).unwrap()
    };
    assert!(conclusive(&[rec(&small)]));
    assert!(conclusive(&vec![rec(&small); 4]));
    assert!(!conclusive(&vec![rec(&small); 6]), "six small records may be a full reply");
    let big = signed(&key, RecordType::Topic, topic, &[0u8; 900]);
    assert!(!conclusive(&[rec(&big)]));
}

#[test]
fn discovery_ttl_and_family() {
    assert_eq!(ttl_for(Duration::from_secs(30)), 90);
    assert_eq!(ttl_for(Duration::from_millis(200)), 10);
    assert_eq!(ttl_for(Duration::from_millis(1500)), 10);
    assert_eq!(ttl_for(Duration::from_millis(4500)), 15);
    assert_eq!(ttl_for(Duration::from_secs(86_400)), 86_400);
    let v4: SocketAddr = "192.0.2.1:9300".parse().unwrap();
    let mapped: SocketAddr = "[::ffff:192.0.2.1]:9300".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:9300".parse().unwrap();
    assert_eq!(Family::V4.fit(v4), Some(v4));
    assert_eq!(Family::V4.fit(mapped), Some(v4));
    assert_eq!(Family::V4.fit(v6), None);
    assert_eq!(Family::V6.fit(v4), None);
    assert_eq!(Family::V6.fit(v6), Some(v6));
    assert_eq!(Family::Dual.fit(v4), Some(mapped));
    assert_eq!(Family::Dual.fit(v6), Some(v6));
    assert_eq!(Family::of_bind("0.0.0.0".parse().unwrap()), Family::V4);
    assert_eq!(Family::of_bind("::".parse().unwrap()), Family::Dual);
    assert_eq!(Family::of_bind("2001:db8::1".parse().unwrap()), Family::V6);
    assert_eq!(canonical(mapped), v4);
    assert_eq!(canonical(v6), v6);
}

#[test]
fn discovery_admin_section_reports_the_list_and_the_table() {
    let mut net = Net::new();
    let u1 = net.add_endpoint("a", 0, 128);
    let mut s = Net::settings(None, Some("a"));
    s.static_upstreams = vec!["192.0.2.9:9300".parse().unwrap()];
    let d = net.add_core(s);
    net.run_for(REFRESH * 3);
    let now = net.now;
    let Some(Member::Host(mut host)) = net.members[d].take() else { unreachable!() };
    let mut workers = host.snapshots(now);
    workers[1].send_errors = 1;
    let state = State { core: host.core, bound: addr(d), started: now };
    let mut m = String::new();
    section::render_metrics(&state, &workers, true, &mut m);
    for series in [
        "ricochet_dht_rx_datagrams_total ",
        "ricochet_dht_dropped_total{reason=\"unsolicited\"} 0",
        "ricochet_dht_socket_errors_total{op=\"send\"} 1",
        "ricochet_dht_forwarded_total 0",
        "ricochet_dht_steering 1",
        "ricochet_dht_lookups_started_total ",
        "ricochet_dht_lookups_total{result=\"found\"} ",
        // U1 is in both of D's shards' tables.
        "ricochet_dht_routing_peers 2",
        "ricochet_dht_worker_routing_peers{worker=\"0\"} 1",
        "ricochet_dht_worker_routing_peers{worker=\"1\"} 1",
        "ricochet_dht_worker_unsolicited_total{worker=\"1\"} 0",
        "ricochet_dht_worker_store_keys{worker=\"0\"} ",
        "ricochet_dht_upstreams{source=\"static\"} 1",
        "ricochet_dht_upstreams{source=\"dht\"} 1",
        "ricochet_dht_upstreams_discovered 1",
        "ricochet_dht_store_records ",
        "# TYPE ricochet_dht_size_estimate gauge",
    ] {
        assert!(m.contains(series), "missing {series:?} in\n{m}");
    }
    // Every sample line belongs to a declared family.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(m.contains(&format!("# TYPE {name} ")), "{name} undeclared");
    }
    // Each store shard holds only the keys its worker owns.
    for (w, snap) in workers.iter().enumerate() {
        for r in snap.records.iter() {
            assert_eq!(rt::key_owner(&r.key, SHARDS), w);
        }
    }
    let v = section::render_debug(&state, &workers, true, now);
    assert_eq!(v["upstreams"][0]["source"], "static");
    assert_eq!(v["upstreams"][1]["source"], "dht");
    assert_eq!(v["upstreams"][1]["addr"], nack(u1).to_string());
    assert_eq!(v["upstreams"][1]["tier"], 0);
    assert_eq!(v["routing"]["peers"], 2);
    assert_eq!(v["routing"]["buckets"][0]["peers"][0]["addr"], addr(u1).to_string());
    assert_eq!(v["routing"]["buckets"][0]["peers"][0]["health"], "Good");
    assert_eq!(v["routing"]["buckets"][0]["peers"][0]["workers"], json!([0, 1]));
    assert_eq!(v["workers"][1]["routing_peers"], 1);
    assert_eq!(v["steering"], true);
    assert!(v["store"]["records"].as_u64().unwrap() >= 1);
    assert_eq!(v["upstream_discovery"]["domain"], "a");
    assert_eq!(v["node_id"].as_str().unwrap().len(), 64);
    assert_eq!(v["stats"]["drops"]["unsolicited"], 0);
    assert!(v["stats"]["rx_datagrams"].as_u64().unwrap() > 0);
}

#[test]
fn discovery_bootstrap_waits_for_every_shard_and_lost_results_free_their_slot() {
    let t0 = Instant::now();
    let publish = Publish {
        domain: "a".into(),
        nack: nack(1),
        tier: 0,
        preference: 1,
        flags: 0,
        shard_bits: 0,
    };
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut c = Core::new(key, Net::settings(Some(publish), Some("b")), t0, UNIX);
    assert!(c.bootstrap_due(t0));
    c.bootstrap(t0, &[addr(0)]);
    let cmds = c.take_commands();
    let [Command::Bootstrap { op, addrs }] = cmds.as_slice() else { panic!("{cmds:?}") };
    assert_eq!(addrs, &vec![addr(0)]);
    // One shard joined, the other could not take it: joined, once both
    // answered.
    c.on_reply(t0, *op, Ok(dht::Event::Bootstrapped { peers: 3 }));
    assert!(!c.bootstrapped(), "waits for the second shard");
    c.on_reply(t0, *op, Err("busy".into()));
    assert!(c.bootstrapped());
    assert_eq!(c.take_notes(), vec![Note::Bootstrapped(3)]);
    // Publish and lookup go out at once, each to be run by a shard.
    c.handle_timeout(t0);
    let cmds = c.take_commands();
    assert!(matches!(cmds[0], Command::Put { .. }), "{cmds:?}");
    assert!(matches!(cmds[1], Command::FindValue { key, .. } if key == domain_topic_key(b"b")));
    assert_eq!(c.puts_running(), 1);
    // Their results never come: the slots are given up after OP_TIMEOUT.
    let late = t0 + OP_TIMEOUT + Duration::from_secs(1);
    c.set_routing_peers(&[3, 1]);
    c.handle_timeout(late);
    assert_eq!(c.counters().ops_lost, 2);
    assert_eq!(c.puts_running(), 1, "only the new period's put runs");
    // A shard that refuses a put is a publish failure.
    let cmds = c.take_commands();
    let Some(Command::Put { op, .. }) = cmds.iter().find(|c| matches!(c, Command::Put { .. }))
    else {
        panic!("{cmds:?}")
    };
    c.on_reply(late, *op, Err("refused".into()));
    assert_eq!(c.counters().publish_failures, 1);
    assert_eq!(c.puts_running(), 0);
    // A shard with an empty table makes a bootstrap due again.
    c.set_routing_peers(&[3, 0]);
    c.handle_timeout(late + Duration::from_secs(2));
    assert!(c.bootstrap_due(late + Duration::from_secs(5)));
}
