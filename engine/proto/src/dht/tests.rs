//! Node-level tests: wire-facing security checks, record rules, routing
//! under floods, and a small synchronous network end to end. The 1 000-node
//! simulation lives in `engine/proto/tests/dht_sim.rs`.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::VecDeque;
use std::time::Instant;

use ricochet_wire::dht::{
    Body, BodyRepr, Message, MessageRepr, MessageType, NodeInfo, NodeList, PADDED_REQUEST_LEN,
    REQUEST_PADDING, StoreStatus, reply_budget,
};
use ricochet_wire::record::{Record, RecordRepr, RecordType, SigningKey};

use super::routing::{Contact, Failure, Filter, Observed, Refusal as RoutingRefusal, RoutingTable};
use super::*;

const UNIX: u64 = 1_767_225_600;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, (i >> 8) as u8, i as u8, 1)), 9320)
}

fn config(seed: u8) -> Config {
    Config::new([seed; 32])
}

fn node(i: u8) -> Node {
    Node::new(&[i; 32], config(i), Instant::now(), UNIX)
}

fn encode(txid: u64, sender: [u8; 32], body: BodyRepr<'_>) -> Vec<u8> {
    let m = MessageRepr { transaction_id: txid, sender, body };
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf).unwrap();
    buf
}

fn signed(
    key: &SigningKey,
    dht_key: [u8; 32],
    seq: u64,
    ts: u64,
    ttl: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut r = RecordRepr::unsigned(RecordType::Topic, dht_key, seq, ts, ttl, payload);
    r.sign(key).unwrap();
    let mut buf = vec![0u8; r.buffer_len()];
    r.emit(&mut buf).unwrap();
    buf
}

fn store_msg(txid: u64, record: &[u8]) -> Vec<u8> {
    encode(txid, [0xEE; 32], BodyRepr::Store(RecordRepr::parse(record).unwrap()))
}

/// Sends one request to `n` and returns the reply's bytes, which are at
/// most three times the request's.
fn ask(n: &mut Node, now: Instant, from: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut out = Outbox::new();
    n.handle(now, from, bytes, &mut out);
    assert_eq!(out.transmits.len(), 1, "one reply");
    let t = out.transmits.pop().unwrap();
    assert_eq!(t.dest, from);
    assert!(
        t.payload.len() <= reply_budget(bytes.len()),
        "{} for {}",
        t.payload.len(),
        bytes.len()
    );
    t.payload
}

fn find_node(txid: u64, target: [u8; 32], padding: u16) -> Vec<u8> {
    encode(txid, [0xEE; 32], BodyRepr::FindNode { target, padding })
}

fn find_value(txid: u64, key: [u8; 32], padding: u16) -> Vec<u8> {
    encode(txid, [0xEE; 32], BodyRepr::FindValue { key, padding })
}

fn ack_status(reply: &[u8]) -> StoreStatus {
    match Message::new_checked(reply).unwrap().body() {
        Body::StoreAck(s) => s,
        other => panic!("not a STORE_ACK: {other:?}"),
    }
}

/// The ed25519 group order L, little-endian.
const GROUP_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

#[test]
fn store_enforces_the_record_rules() {
    let now = Instant::now();
    let mut cfg = config(1);
    cfg.store.max_record_len = 400;
    cfg.store.max_keys = 3;
    cfg.store.max_records_per_key = 2;
    let mut n = Node::new(&[1; 32], cfg, now, UNIX);
    let from = addr(9);
    let alice = SigningKey::from_bytes(&[0xA1; 32]);
    let k = [0x11; 32];
    let mut tx = 0;
    let mut put = |n: &mut Node, rec: &[u8]| {
        tx += 1;
        ack_status(&ask(n, now, from, &store_msg(tx, rec)))
    };

    let v2 = signed(&alice, k, 2, UNIX, 600, b"two");
    assert_eq!(put(&mut n, &v2), StoreStatus::Stored);
    let verified = n.stats().verifications;
    // An identical copy is accepted without a second verification.
    assert_eq!(put(&mut n, &v2), StoreStatus::Stored);
    assert_eq!(n.stats().verifications, verified);
    assert_eq!(n.stats().records_refreshed, 1);
    // Equal or older seq for the same slot: stale, even with new content.
    assert_eq!(put(&mut n, &signed(&alice, k, 2, UNIX, 600, b"other")), StoreStatus::StaleSeq);
    assert_eq!(put(&mut n, &signed(&alice, k, 1, UNIX, 600, b"one")), StoreStatus::StaleSeq);
    // Tampered payload.
    let mut tampered = signed(&alice, k, 3, UNIX, 600, b"three");
    tampered[58] ^= 1;
    assert_eq!(put(&mut n, &tampered), StoreStatus::Rejected);
    // Wrong key: a valid signature by alice presented under bob's key.
    let bob = SigningKey::from_bytes(&[0xB0; 32]);
    let mut wrong = signed(&alice, k, 4, UNIX, 600, b"four");
    let pk_at = wrong.len() - 96;
    wrong[pk_at..pk_at + 32].copy_from_slice(&bob.verifying_key().to_bytes());
    assert_eq!(put(&mut n, &wrong), StoreStatus::Rejected);
    // Non-canonical S (S + L): the same signature, malleated.
    let mut malleated = signed(&alice, k, 5, UNIX, 600, b"five");
    let s_at = malleated.len() - 32;
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(malleated[s_at + i]) + u16::from(GROUP_ORDER[i]) + carry;
        malleated[s_at + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    assert_eq!(put(&mut n, &malleated), StoreStatus::Rejected);
    // Liveness: expired, future-dated, TTL too long.
    assert_eq!(put(&mut n, &signed(&alice, k, 6, UNIX - 700, 600, b"old")), StoreStatus::Rejected);
    assert_eq!(
        put(&mut n, &signed(&alice, k, 7, UNIX + 3600, 600, b"future")),
        StoreStatus::Rejected
    );
    assert_eq!(put(&mut n, &signed(&alice, k, 8, UNIX, 90_000, b"forever")), StoreStatus::Rejected);
    // Oversize for this store (400 bytes), though valid on the wire.
    assert_eq!(put(&mut n, &signed(&alice, k, 9, UNIX, 600, &[7u8; 300])), StoreStatus::Rejected);
    let d = n.stats().drops;
    assert_eq!(
        (d.record_stale, d.record_bad_signature, d.record_expired, d.record_future_timestamp),
        (2, 3, 1, 1)
    );
    assert_eq!((d.record_ttl_too_long, d.record_oversize), (1, 1));
    // Capacity: a second slot under k fits, a third does not; three keys max.
    assert_eq!(put(&mut n, &signed(&bob, k, 1, UNIX, 600, b"bob")), StoreStatus::Stored);
    let carol = SigningKey::from_bytes(&[0xC0; 32]);
    assert_eq!(put(&mut n, &signed(&carol, k, 1, UNIX, 600, b"carol")), StoreStatus::StoreFull);
    assert_eq!(put(&mut n, &signed(&alice, [0x22; 32], 1, UNIX, 600, b"")), StoreStatus::Stored);
    assert_eq!(put(&mut n, &signed(&alice, [0x33; 32], 1, UNIX, 600, b"")), StoreStatus::Stored);
    assert_eq!(put(&mut n, &signed(&alice, [0x44; 32], 1, UNIX, 600, b"")), StoreStatus::StoreFull);
    let d = n.stats().drops;
    assert_eq!((d.record_key_full, d.record_store_full), (1, 1));
    // A newer seq replaces the slot.
    assert_eq!(put(&mut n, &signed(&alice, k, 10, UNIX, 600, b"ten")), StoreStatus::Stored);
    let held: Vec<u64> = n.store().get(&k, UNIX).map(|r| r.view().seq()).collect();
    assert_eq!(held, vec![10, 1]);
}

#[test]
fn expired_records_are_never_served() {
    let t0 = Instant::now();
    let mut n = Node::new(&[1; 32], config(1), t0, UNIX);
    let alice = SigningKey::from_bytes(&[0xA1; 32]);
    let k = [0x11; 32];
    let rec = signed(&alice, k, 1, UNIX, 60, b"short-lived");
    assert_eq!(ack_status(&ask(&mut n, t0, addr(9), &store_msg(1, &rec))), StoreStatus::Stored);
    let find = encode(2, [0xEE; 32], BodyRepr::FindValue { key: k, padding: REQUEST_PADDING });
    let count = |reply: &[u8]| match Message::new_checked(reply).unwrap().body() {
        Body::Value { records, .. } => records.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(count(&ask(&mut n, t0 + Duration::from_secs(59), addr(9), &find)), 1);
    // One second later the record is expired: not served, before any purge.
    let t1 = t0 + Duration::from_secs(60);
    assert_eq!(count(&ask(&mut n, t1, addr(9), &find)), 0);
    assert_eq!(n.store().len(), 1);
    let mut out = Outbox::new();
    n.handle_timeout(t1 + Duration::from_secs(60), &mut out);
    assert_eq!(n.store().len(), 0);
    assert_eq!(n.stats().records_expired, 1);
}

#[derive(Debug)]
struct OnlyKey([u8; 32]);

impl RecordPolicy for OnlyKey {
    fn allow(&self, record: &Record<'_>) -> bool {
        *record.key() == self.0
    }
}

#[test]
fn record_policy_hook_refuses() {
    let now = Instant::now();
    let mut n = Node::with_policy(&[1; 32], config(1), Box::new(OnlyKey([0x11; 32])), now, UNIX);
    let alice = SigningKey::from_bytes(&[0xA1; 32]);
    let ok = signed(&alice, [0x11; 32], 1, UNIX, 600, b"ok");
    let no = signed(&alice, [0x22; 32], 1, UNIX, 600, b"no");
    assert_eq!(ack_status(&ask(&mut n, now, addr(9), &store_msg(1, &ok))), StoreStatus::Stored);
    assert_eq!(ack_status(&ask(&mut n, now, addr(9), &store_msg(2, &no))), StoreStatus::Rejected);
    assert_eq!(n.stats().drops.record_policy, 1);
    // put() applies the same checks to our own records.
    let mut out = Outbox::new();
    assert_eq!(n.put(now, &no, &mut out), Err(PutError::Refused(Refusal::Policy)));
    assert!(matches!(n.put(now, &no[..10], &mut out), Err(PutError::Malformed(_))));
}

#[test]
fn malformed_own_id_and_bad_source_are_dropped() {
    let now = Instant::now();
    let mut n = node(1);
    let mut out = Outbox::new();
    let ping = encode(1, [2; 32], BodyRepr::Ping);
    n.handle(now, addr(2), &ping[..20], &mut out);
    n.handle(now, addr(2), b"", &mut out);
    let mut bad_magic = ping.clone();
    bad_magic[0] = 0;
    n.handle(now, addr(2), &bad_magic, &mut out);
    let own = encode(1, n.id().0, BodyRepr::Ping);
    n.handle(now, addr(2), &own, &mut out);
    n.handle(now, SocketAddr::from(([10, 0, 0, 2], 0)), &ping, &mut out);
    n.handle(now, SocketAddr::from(([224, 0, 0, 1], 9320)), &ping, &mut out);
    assert!(out.transmits.is_empty());
    let s = n.stats();
    let by_reason: std::collections::BTreeMap<_, _> = s.drops().into_iter().collect();
    assert_eq!(by_reason["truncated"], 2);
    assert_eq!(by_reason["bad_magic"], 1);
    assert_eq!(by_reason["own_id"], 1);
    assert_eq!(by_reason["bad_source"], 2);
    assert_eq!(s.drops.total(), 6);
    assert_eq!(s.rx_datagrams, 6);
}

#[test]
fn responses_must_match_an_outstanding_request() {
    let now = Instant::now();
    let mut a = node(1);
    let b_id = NodeId::from_public_key(&[2; 32]);
    let mut out = Outbox::new();
    // A PONG nobody asked for.
    let stray = encode(77, b_id.0, BodyRepr::Pong { observed: addr(1) });
    a.handle(now, addr(2), &stray, &mut out);
    assert_eq!(a.stats().drops.unsolicited, 1);
    // Bootstrap pings B; pick the transaction id off the wire.
    a.bootstrap(now, &[addr(2)], &mut out);
    let ping = out.transmits.pop().unwrap();
    assert_eq!(ping.dest, addr(2));
    let txid = Message::new_checked(&ping.payload).unwrap().transaction_id();
    let pong = encode(txid, b_id.0, BodyRepr::Pong { observed: addr(1) });
    // Right id, wrong source address; right address, wrong type.
    a.handle(now, addr(3), &pong, &mut out);
    assert_eq!(a.stats().drops.addr_mismatch, 1);
    let nodes = encode(txid, b_id.0, BodyRepr::Nodes(NodeList::new()));
    a.handle(now, addr(2), &nodes, &mut out);
    assert_eq!(a.stats().drops.type_mismatch, 1);
    assert!(out.transmits.is_empty(), "mismatches trigger nothing");
    // The real PONG: B enters the table and the self-lookup starts.
    a.handle(now, addr(2), &pong, &mut out);
    assert_eq!(a.stats().responses_matched, 1);
    assert_eq!(a.external_addr(), Some(addr(1)));
    assert!(out.events.contains(&Event::ExternalAddr(addr(1))));
    assert!(a.table().get(&b_id).is_some());
    // The same PONG again: the request is gone.
    a.handle(now, addr(2), &pong, &mut out);
    assert_eq!(a.stats().drops.unsolicited, 2);
    let find = out.transmits.pop().unwrap();
    let m = Message::new_checked(&find.payload).unwrap();
    assert_eq!(m.message_type(), MessageType::FindNode);
    // B's address answers under another id: dropped, and a failure of B.
    let imposter = encode(m.transaction_id(), [9; 32], BodyRepr::Nodes(NodeList::new()));
    a.handle(now, addr(2), &imposter, &mut out);
    assert_eq!(a.stats().drops.id_mismatch, 1);
    assert_eq!(a.table().get(&b_id).unwrap().failures(), 1);
    // With nobody left to ask, the bootstrap lookup ends.
    assert!(out.events.iter().any(|e| matches!(e, Event::Bootstrapped { peers: 1 })));
}

/// The transaction id of the one request `out` holds for `dest`.
fn txid_to(out: &mut Outbox, dest: SocketAddr) -> u64 {
    let i = out.transmits.iter().position(|t| t.dest == dest).expect("a request to dest");
    let t = out.transmits.remove(i);
    Message::new_checked(&t.payload).unwrap().transaction_id()
}

#[test]
fn lookups_skip_peers_the_table_holds_as_bad() {
    let t0 = Instant::now();
    let mut a = node(1);
    let b = NodeId::from_public_key(&[2; 32]);
    let c = NodeId::from_public_key(&[3; 32]);
    let mut out = Outbox::new();
    // B and C contact A: both enter its table.
    for (id, from) in [(b, addr(2)), (c, addr(3))] {
        a.handle(t0, from, &encode(1, id.0, BodyRepr::Ping), &mut out);
    }
    out.transmits.clear();
    // A lookup asks both; B answers, C never does (asked twice: two
    // failures make it Bad).
    a.find_node(t0, NodeId([0x55; 32]), &mut out);
    let tx = txid_to(&mut out, addr(2));
    a.handle(t0, addr(2), &encode(tx, b.0, BodyRepr::Nodes(NodeList::new())), &mut out);
    let timeout = a.config().request_timeout;
    a.handle_timeout(t0 + timeout, &mut out);
    a.handle_timeout(t0 + timeout * 2, &mut out);
    let t1 = t0 + timeout * 2;
    let settings = a.table().settings().clone();
    assert_eq!(a.table().get(&c).unwrap().health(t1, &settings), Health::Bad);
    out.transmits.clear();
    out.events.clear();
    // The next lookup starts at B (the table's seeds skip C), and B's
    // reply lists C: C is not asked, and the lookup ends on B's answer.
    a.find_node(t1, NodeId([0x66; 32]), &mut out);
    assert!(out.transmits.iter().all(|t| t.dest != addr(3)));
    let tx = txid_to(&mut out, addr(2));
    let mut list = NodeList::new();
    list.push(NodeInfo { id: c.0, addr: addr(3) }).unwrap();
    a.handle(t1, addr(2), &encode(tx, b.0, BodyRepr::Nodes(list)), &mut out);
    assert!(out.transmits.iter().all(|t| t.dest != addr(3)), "C was asked: {out:?}");
    assert_eq!(a.stats().drops.bad_peer_skipped, 1);
    assert!(out.events.iter().any(|e| matches!(e, Event::FindNodeDone { requests: 1, .. })));
}

#[test]
fn tagged_transaction_ids_name_their_shard() {
    let t0 = Instant::now();
    for (shard, shards) in [(0u8, 2u8), (1, 2), (2, 3), (6, 7)] {
        let mut cfg = config(shard + 10);
        cfg.txid_tag = Some((shard, shards));
        let mut n = Node::new(&[9; 32], cfg, t0, UNIX);
        let mut out = Outbox::new();
        let peers: Vec<SocketAddr> = (2..60).map(addr).collect();
        n.bootstrap(t0, &peers, &mut out);
        assert_eq!(out.transmits.len(), peers.len());
        for t in &out.transmits {
            // Byte 4 of the datagram is the id's first byte.
            assert_eq!(t.payload[4] % shards, shard, "{:02x?}", &t.payload[..12]);
        }
    }
    // The tag keeps every other byte and stays within a byte.
    assert_eq!(node::tag_txid(0xFF11_2233_4455_6677, Some((2, 3))), 0xFE11_2233_4455_6677);
    assert_eq!(node::tag_txid(0xFF11_2233_4455_6677, Some((0, 3))), 0xFF11_2233_4455_6677);
    assert_eq!(node::tag_txid(0xFF11_2233_4455_6677, Some((1, 3))), 0xFD11_2233_4455_6677);
    assert_eq!(node::tag_txid(0x0011_2233_4455_6677, Some((1, 2))), 0x0111_2233_4455_6677);
    assert_eq!(node::tag_txid(0xAB, None), 0xAB);
    assert_eq!(node::tag_txid(0xAB, Some((0, 1))), 0xAB);
}

#[test]
fn bootstrap_without_answers_fails_after_the_timeout() {
    let t0 = Instant::now();
    let mut n = Node::new(&[1; 32], config(1), t0, UNIX);
    let mut out = Outbox::new();
    n.bootstrap(t0, &[addr(2), addr(2), SocketAddr::from(([0, 0, 0, 0], 9320))], &mut out);
    assert_eq!(out.transmits.len(), 1, "duplicates and unusable addresses skipped");
    let deadline = n.poll_timeout().unwrap();
    assert!(deadline <= t0 + n.config().request_timeout);
    n.handle_timeout(t0 + n.config().request_timeout, &mut out);
    assert!(out.events.contains(&Event::BootstrapFailed));
    assert_eq!(n.stats().timeouts, 1);
    // Nothing to contact at all fails at once.
    let mut m = node(3);
    let mut out = Outbox::new();
    m.bootstrap(t0, &[], &mut out);
    assert_eq!(out.events, vec![Event::BootstrapFailed]);
}

#[test]
fn request_flood_is_rate_limited() {
    let now = Instant::now();
    let mut n = node(1);
    let mut out = Outbox::new();
    let mut rng = rng::Rng::seed_from_u64(3);
    for i in 0..1000u64 {
        let id = NodeId::random(&mut rng);
        let m = encode(i, id.0, BodyRepr::FindNode { target: id.0, padding: 0 });
        n.handle(now, addr(2), &m, &mut out);
    }
    let burst = n.config().rate.per_ip_burst as usize;
    assert_eq!(out.transmits.len(), burst);
    assert_eq!(n.stats().drops.rate_limited, 1000 - burst as u64);
    // The flood's ids share one /24: at most `table_subnet_limit` made it
    // into the table.
    assert!(n.table().len() <= 10, "{}", n.table().len());
}

fn table_with_good_bucket(now: Instant) -> (RoutingTable, Vec<NodeId>) {
    let own = NodeId([0; 32]);
    let mut t = RoutingTable::new(own, RoutingSettings::default());
    let mut rng = rng::Rng::seed_from_u64(8);
    let mut good = Vec::new();
    for i in 0..20u16 {
        let id = own.random_in_bucket(255, &mut rng);
        let o = t.observe(now, id, addr(100 + i), Contact::Reply { rtt: Duration::from_millis(5) });
        assert_eq!(o, Observed::Inserted);
        good.push(id);
    }
    (t, good)
}

#[test]
fn a_flood_of_new_ids_cannot_evict_good_entries() {
    let now = Instant::now();
    let (mut t, good) = table_with_good_bucket(now);
    let mut rng = rng::Rng::seed_from_u64(9);
    let own = t.own_id();
    let mut refused = 0;
    let mut probes = 0;
    // 5 000 newcomers for the full bucket: half from one address, half
    // from 2 500 different /24s; requests and even replies.
    for i in 0..5000u32 {
        let id = own.random_in_bucket(255, &mut rng);
        let from = if i % 2 == 0 { addr(7) } else { addr((1000 + i) as u16) };
        let contact =
            if i % 3 == 0 { Contact::Reply { rtt: Duration::ZERO } } else { Contact::Request };
        match t.observe(now + Duration::from_secs(120), id, from, contact) {
            Observed::Refused(RoutingRefusal::SubnetLimit) => refused += 1,
            Observed::Probe(_) => probes += 1,
            Observed::Cached => {}
            other => panic!("newcomer got {other:?}"),
        }
    }
    // The single address keeps at most two places in the replacement cache.
    assert!(refused >= 1900, "{refused}");
    assert_eq!(probes, 1, "one probe at a time per bucket");
    assert!(t.replacements_len() <= t.settings().replacements);
    for id in &good {
        assert!(t.get(id).is_some(), "good entry evicted");
    }
    assert_eq!(t.len(), 20);
}

#[test]
fn full_bucket_evicts_only_after_repeated_failures() {
    let t0 = Instant::now();
    let (mut t, good) = table_with_good_bucket(t0);
    let own = t.own_id();
    let mut rng = rng::Rng::seed_from_u64(10);
    let later = t0 + Duration::from_secs(120);
    // A newcomer: the least-recently-seen entry (the first inserted) is
    // probed.
    let newcomer = own.random_in_bucket(255, &mut rng);
    let Observed::Probe(lrs) = t.observe(later, newcomer, addr(900), Contact::Request) else {
        panic!("no probe")
    };
    assert_eq!(NodeId(lrs.id), good[0]);
    // It answers: it stays and moves to the back; no eviction.
    t.observe(later, good[0], lrs.addr, Contact::Reply { rtt: Duration::ZERO });
    assert!(t.get(&good[0]).is_some());
    // Next newcomer probes the next LRS, which fails twice (Bad after 2).
    let n2 = own.random_in_bucket(255, &mut rng);
    let Observed::Probe(lrs2) = t.observe(later, n2, addr(901), Contact::Request) else {
        panic!("no probe")
    };
    assert_eq!(NodeId(lrs2.id), good[1]);
    assert_eq!(t.on_failure(later, &good[1], lrs2.addr), Failure::Marked);
    let e = t.get(&good[1]).unwrap();
    assert_eq!(e.health(later, t.settings()), Health::Good, "one failure: not bad yet");
    assert!(e.in_backoff(later));
    assert_eq!(t.on_failure(later, &good[1], lrs2.addr), Failure::Removed);
    assert!(t.get(&good[1]).is_none());
    // The most recent replacement took its place.
    assert!(t.get(&n2).is_some());
    assert_eq!(t.len(), 20);
}

#[test]
fn bad_entries_are_replaced_by_newcomers() {
    let t0 = Instant::now();
    let s = RoutingSettings { replacements: 0, ..RoutingSettings::default() };
    let own = NodeId([0; 32]);
    let mut t = RoutingTable::new(own, s);
    let mut rng = rng::Rng::seed_from_u64(11);
    let ids: Vec<NodeId> = (0..20u16)
        .map(|i| {
            let id = own.random_in_bucket(255, &mut rng);
            t.observe(t0, id, addr(i), Contact::Reply { rtt: Duration::ZERO });
            id
        })
        .collect();
    // No replacement cache: two failures leave the entry Bad but present.
    assert_eq!(t.on_failure(t0, &ids[5], addr(5)), Failure::Marked);
    assert_eq!(t.on_failure(t0, &ids[5], addr(5)), Failure::Marked);
    assert_eq!(t.get(&ids[5]).unwrap().health(t0, t.settings()), Health::Bad);
    let newcomer = own.random_in_bucket(255, &mut rng);
    assert_eq!(
        t.observe(t0, newcomer, addr(50), Contact::Request),
        Observed::Replaced { evicted: ids[5] }
    );
    // Bad entries are not handed out; five failures remove outright.
    let all = t.closest(t0, &own, 40, Filter { skip_bad: true, ..Filter::default() });
    assert_eq!(all.len(), 20);
    for _ in 0..5 {
        t.on_failure(t0, &ids[6], addr(6));
    }
    assert!(t.get(&ids[6]).is_none());
    assert_eq!(t.len(), 19);
}

#[test]
fn subnet_limits_and_loopback_exemption() {
    let t0 = Instant::now();
    let own = NodeId([0; 32]);
    let mut rng = rng::Rng::seed_from_u64(12);
    let mut t = RoutingTable::new(own, RoutingSettings::default());
    let same24 = |i: u8| SocketAddr::from(([192, 0, 2, i], 9320));
    let mut inserted = 0;
    for i in 0..40u8 {
        let id = NodeId::random(&mut rng);
        if t.observe(t0, id, same24(i), Contact::Request) == Observed::Inserted {
            inserted += 1;
        }
    }
    assert!(inserted <= 10, "table-wide /24 limit: {inserted}");
    let v6 = |i: u16| SocketAddr::new(IpAddr::V6([0x2001, 0xdb8, 0, 1, 0, 0, 0, i].into()), 9320);
    let mut v6_in = 0;
    for i in 0..40u16 {
        if t.observe(t0, own.random_in_bucket(255, &mut rng), v6(i), Contact::Request)
            == Observed::Inserted
        {
            v6_in += 1;
        }
    }
    assert_eq!(v6_in, 2, "per-bucket /64 limit");
    let mut lo = RoutingTable::new(own, RoutingSettings::default());
    for i in 0..20u16 {
        let a = SocketAddr::from(([127, 0, 0, 1], 9320 + i));
        assert_eq!(
            lo.observe(t0, own.random_in_bucket(255, &mut rng), a, Contact::Request),
            Observed::Inserted
        );
    }
    let strict = RoutingSettings { limit_loopback: true, ..RoutingSettings::default() };
    let mut lo = RoutingTable::new(own, strict);
    let a = |i: u16| SocketAddr::from(([127, 0, 0, 1], 9320 + i));
    for i in 0..2 {
        lo.observe(t0, own.random_in_bucket(255, &mut rng), a(i), Contact::Request);
    }
    assert!(matches!(
        lo.observe(t0, own.random_in_bucket(255, &mut rng), a(5), Contact::Request),
        Observed::Refused(RoutingRefusal::SubnetLimit) | Observed::Cached
    ));
    assert_eq!(lo.len(), 2);
}

#[test]
fn a_good_entry_keeps_its_address() {
    let t0 = Instant::now();
    let own = NodeId([0; 32]);
    let mut t = RoutingTable::new(own, RoutingSettings::default());
    let x = NodeId([0x80; 32]);
    t.observe(t0, x, addr(1), Contact::Reply { rtt: Duration::ZERO });
    assert_eq!(
        t.observe(t0, x, addr(2), Contact::Request),
        Observed::Refused(RoutingRefusal::AddrConflict)
    );
    assert_eq!(
        t.observe(t0, x, addr(2), Contact::Reply { rtt: Duration::ZERO }),
        Observed::Refused(RoutingRefusal::AddrConflict)
    );
    // Once no longer Good (no reply for good_for), a reply from a new
    // address moves it.
    let later = t0 + t.settings().good_for;
    assert_eq!(
        t.observe(later, x, addr(2), Contact::Reply { rtt: Duration::ZERO }),
        Observed::Updated
    );
    assert_eq!(t.get(&x).unwrap().addr(), addr(2));
    assert_eq!(
        t.observe(later, own, addr(3), Contact::Request),
        Observed::Refused(RoutingRefusal::OwnId)
    );
}

#[test]
fn closest_agrees_with_brute_force() {
    let t0 = Instant::now();
    let mut rng = rng::Rng::seed_from_u64(13);
    let own = NodeId::random(&mut rng);
    let mut t = RoutingTable::new(own, RoutingSettings::default());
    for i in 0..2000u16 {
        t.observe(t0, NodeId::random(&mut rng), addr(i), Contact::Request);
    }
    for j in 0..20u16 {
        t.observe(
            t0,
            own.random_in_bucket(usize::from(j % 8), &mut rng),
            addr(3000 + j),
            Contact::Request,
        );
    }
    let all: Vec<NodeId> = t.iter().map(|(_, e)| e.id()).collect();
    assert!(all.len() > 100);
    let mut targets: Vec<NodeId> = (0..50).map(|_| NodeId::random(&mut rng)).collect();
    targets.push(own);
    targets.extend((0..20).map(|b| own.random_in_bucket(b, &mut rng)));
    for target in targets {
        for count in [1, 7, 20, 60] {
            let got: Vec<NodeId> =
                t.closest(t0, &target, count, Filter::default()).iter().map(|e| e.id()).collect();
            let mut want = all.clone();
            want.sort_by_key(|id| id.distance(&target));
            want.truncate(count);
            assert_eq!(got, want, "target {target:?} count {count}");
        }
    }
}

#[test]
fn value_replies_fit_the_datagram_budget() {
    let now = Instant::now();
    let mut n = node(1);
    let k = [0x55; 32];
    for i in 0..12u8 {
        let key = SigningKey::from_bytes(&[i + 1; 32]);
        let rec = signed(&key, k, 1, UNIX, 600, &[i; 300]);
        assert_eq!(
            ack_status(&ask(&mut n, now, addr(9), &store_msg(u64::from(i), &rec))),
            StoreStatus::Stored
        );
    }
    ping_from_peers(&mut n, now, 30);
    let reply = ask(&mut n, now, addr(9), &find_value(5, k, REQUEST_PADDING));
    let Body::Value { records, nodes } = Message::new_checked(&reply).unwrap().body() else {
        panic!()
    };
    assert_eq!(records.len(), 2, "two 456-byte records fit 1232 bytes, three do not");
    assert_eq!(nodes.len(), 5, "then as many nodes as still fit");
    assert!(records.iter().all(|r| r.verify().is_ok() && *r.key() == k));
    assert_eq!(n.stats().replies_trimmed, 0);
}

/// `count` peers PING `n`, each from its own address: its routing table
/// holds them.
fn ping_from_peers(n: &mut Node, now: Instant, count: u16) {
    for i in 0..count {
        let id = NodeId::random(&mut rng::Rng::seed_from_u64(u64::from(i)));
        n.handle(now, addr(200 + i), &encode(99, id.0, BodyRepr::Ping), &mut Outbox::new());
    }
}

/// A node with 30 peers and a 456-byte record under `k`.
fn populated(now: Instant, k: [u8; 32]) -> Node {
    let mut n = node(1);
    let key = SigningKey::from_bytes(&[0x31; 32]);
    let rec = signed(&key, k, 1, UNIX, 600, &[7; 300]);
    assert_eq!(ack_status(&ask(&mut n, now, addr(9), &store_msg(1, &rec))), StoreStatus::Stored);
    ping_from_peers(&mut n, now, 30);
    n
}

/// A FIND_NODE or FIND_VALUE from an unproven address draws at most three
/// times its size: unpadded (76 bytes), three nodes and no 456-byte
/// record; padded (411 bytes), all 20 nodes and the record. The cut is
/// counted.
#[test]
fn replies_are_at_most_three_times_the_request_and_padding_buys_a_full_one() {
    let now = Instant::now();
    let k = [0x55; 32];
    let mut n = populated(now, k);
    let nodes_of = |reply: &[u8]| match Message::new_checked(reply).unwrap().body() {
        Body::Nodes(nodes) => nodes.len(),
        other => panic!("not NODES: {other:?}"),
    };
    let small = find_node(2, [0x77; 32], 0);
    let reply = ask(&mut n, now, addr(9), &small);
    assert_eq!((small.len(), reply.len(), nodes_of(&reply)), (76, 45 + 3 * 51, 3));
    assert_eq!(n.stats().replies_trimmed, 1);
    let padded = find_node(3, [0x77; 32], REQUEST_PADDING);
    let reply = ask(&mut n, now, addr(9), &padded);
    assert_eq!((padded.len(), nodes_of(&reply)), (PADDED_REQUEST_LEN, 20));
    assert_eq!(n.stats().replies_trimmed, 1);

    let records_of = |reply: &[u8]| match Message::new_checked(reply).unwrap().body() {
        Body::Value { records, nodes } => (records.len(), nodes.len()),
        other => panic!("not VALUE: {other:?}"),
    };
    let reply = ask(&mut n, now, addr(9), &find_value(4, k, 0));
    assert_eq!(records_of(&reply), (0, 3), "the record does not fit 228 bytes");
    assert_eq!(n.stats().replies_trimmed, 2);
    let reply = ask(&mut n, now, addr(9), &find_value(5, k, REQUEST_PADDING));
    assert_eq!(records_of(&reply), (1, 14), "the record, then the nodes that fit");
    // A partly padded request buys what its size pays for.
    let reply = ask(&mut n, now, addr(9), &find_value(6, k, 60));
    assert_eq!(records_of(&reply), (0, 7), "408 bytes: no record, 7 nodes");
    let reply = ask(&mut n, now, addr(9), &find_value(7, k, 120));
    assert_eq!(records_of(&reply), (1, 1), "588 bytes: the record and one node");
    assert_eq!(n.stats().replies_trimmed, 4);
}

/// Whatever request arrives (any type, any padding, any target), every
/// datagram the node sends back to its source is at most three times it.
#[test]
fn no_request_draws_more_than_three_times_its_size() {
    let now = Instant::now();
    let k = [0x55; 32];
    let mut n = populated(now, k);
    let mut rng = rng::Rng::seed_from_u64(21);
    let alice = SigningKey::from_bytes(&[0xA1; 32]);
    for i in 0..2000u64 {
        let mut target = [0u8; 32];
        target.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
        if rng.chance(0.5) {
            target = k;
        }
        let padding = rng.index(usize::from(REQUEST_PADDING) + 50) as u16;
        let req = match i % 4 {
            0 => find_node(i, target, padding),
            1 => find_value(i, target, padding),
            2 => encode(i, [0xEE; 32], BodyRepr::Ping),
            _ => store_msg(i, &signed(&alice, target, i + 1, UNIX, 600, &[1; 40])),
        };
        let from = addr(1000 + (i % 500) as u16);
        let mut out = Outbox::new();
        n.handle(now + Duration::from_secs(i), from, &req, &mut out);
        let back: usize =
            out.transmits.iter().filter(|t| t.dest == from).map(|t| t.payload.len()).sum();
        assert!(back <= 3 * req.len(), "{back} bytes back for {} ({i})", req.len());
    }
    assert!(n.stats().requests_answered >= 1900, "{:?}", n.stats());
}

/// A lossless, zero-latency network of nodes for small end-to-end checks.
struct Net {
    now: Instant,
    nodes: Vec<(SocketAddr, Node)>,
    queue: VecDeque<(SocketAddr, Transmit)>,
    events: Vec<(usize, Event)>,
    wire: Vec<Vec<u8>>,
}

impl Net {
    fn new(n: u16, seed: u8) -> Net {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| {
                let mut pk = [seed; 32];
                pk[..2].copy_from_slice(&i.to_be_bytes());
                let mut cfg = config(seed);
                cfg.seed[..2].copy_from_slice(&i.to_be_bytes());
                (addr(i), Node::new(&pk, cfg, now, UNIX))
            })
            .collect();
        Net { now, nodes, queue: VecDeque::new(), events: Vec::new(), wire: Vec::new() }
    }

    fn absorb(&mut self, i: usize, out: &mut Outbox) {
        let from = self.nodes[i].0;
        for t in out.drain_transmits() {
            self.queue.push_back((from, t));
        }
        for e in out.drain_events() {
            self.events.push((i, e));
        }
    }

    fn pump(&mut self) {
        let mut out = Outbox::new();
        while let Some((from, t)) = self.queue.pop_front() {
            self.wire.push(t.payload.clone());
            if let Some(i) = self.nodes.iter().position(|(a, _)| *a == t.dest) {
                self.nodes[i].1.handle(self.now, from, &t.payload, &mut out);
                self.absorb(i, &mut out);
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        let mut out = Outbox::new();
        loop {
            let next = self.nodes.iter().filter_map(|(_, n)| n.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for i in 0..self.nodes.len() {
                        if self.nodes[i].1.poll_timeout().is_some_and(|t| t <= self.now) {
                            let now = self.now;
                            self.nodes[i].1.handle_timeout(now, &mut out);
                            self.absorb(i, &mut out);
                        }
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Node, Instant, &mut Outbox) -> R) -> R {
        let mut out = Outbox::new();
        let now = self.now;
        let r = f(&mut self.nodes[i].1, now, &mut out);
        self.absorb(i, &mut out);
        self.pump();
        r
    }

    fn build(n: u16, seed: u8) -> Net {
        let mut net = Net::new(n, seed);
        for i in 1..usize::from(n) {
            let seed_addr = net.nodes[i / 2].0;
            net.with(i, |node, now, out| node.bootstrap(now, &[seed_addr], out));
        }
        net.advance(Duration::from_secs(5));
        net
    }
}

#[test]
fn small_network_end_to_end() {
    let mut net = Net::build(40, 21);
    let booted = net.events.iter().filter(|(_, e)| matches!(e, Event::Bootstrapped { .. })).count();
    assert_eq!(booted, 39);
    // Publish from node 3, fetch from node 30.
    let alice = SigningKey::from_bytes(&[0xA1; 32]);
    let key = [0x42; 32];
    let rec = signed(&alice, key, 1, UNIX, 3600, b"upstream at 192.0.2.1:9300");
    let q = net.with(3, |n, now, out| n.put(now, &rec, out)).unwrap();
    let acks = net
        .events
        .iter()
        .find_map(|(_, e)| match e {
            Event::PutDone { query, acks, targets, .. } if *query == q => Some((*acks, *targets)),
            _ => None,
        })
        .expect("put finished");
    assert_eq!(acks.0.stored, acks.1);
    assert_eq!(acks.1, 20);
    let holders = net.nodes.iter().filter(|(_, n)| n.store().get(&key, UNIX).count() == 1).count();
    assert!(holders >= 20, "{holders}");
    let q = net.with(30, |n, now, out| n.find_value(now, NodeId(key), out));
    let found = net
        .events
        .iter()
        .find_map(|(i, e)| match e {
            Event::FindValueDone { query, records, .. } if *i == 30 && *query == q => {
                Some(records.clone())
            }
            _ => None,
        })
        .expect("lookup finished");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].as_bytes(), &rec[..]);
    // FIND_NODE for an existing node's id finds it first.
    let target = net.nodes[17].1.id();
    let q = net.with(5, |n, now, out| n.find_node(now, target, out));
    let nodes = net
        .events
        .iter()
        .find_map(|(_, e)| match e {
            Event::FindNodeDone { query, nodes, .. } if *query == q => Some(nodes.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(NodeId(nodes[0].id), target);
    // A key nobody holds: empty result.
    let q = net.with(5, |n, now, out| n.find_value(now, NodeId([0x99; 32]), out));
    assert!(net.events.iter().any(|(_, e)| matches!(e,
        Event::FindValueDone { query, records, .. } if *query == q && records.is_empty())));
    // Peer cache: export, decode, bootstrap a newcomer from it alone.
    let cache = net.nodes[8].1.export_peers(net.now, 50);
    let peers = peers::decode(&cache).unwrap();
    assert!(peers.len() >= 20);
    let addrs: Vec<SocketAddr> = peers.iter().map(|p: &NodeInfo| p.addr).collect();
    assert!(net.nodes[8].1.size_estimate(net.now).is_some());
    let mut newcomer = Net::new(1, 99).nodes.pop().unwrap();
    newcomer.0 = addr(500);
    net.nodes.push(newcomer);
    let last = net.nodes.len() - 1;
    net.with(last, |n, now, out| n.bootstrap(now, &addrs, out));
    net.advance(Duration::from_secs(5));
    assert!(net.events.iter().any(|(i, e)| *i == last && matches!(e, Event::Bootstrapped { .. })));
    assert!(net.nodes[last].1.table().len() >= 20);
}

#[test]
fn replication_restores_replicas_after_holders_leave() {
    let mut net = Net::build(60, 22);
    let alice = SigningKey::from_bytes(&[0xA1; 32]);
    let key = [0x24; 32];
    let rec = signed(&alice, key, 1, UNIX, 7200, b"replicate me");
    net.with(0, |n, now, out| n.put(now, &rec, out)).unwrap();
    let holders: Vec<usize> = (0..net.nodes.len())
        .filter(|&i| net.nodes[i].1.store().get(&key, UNIX).count() == 1)
        .collect();
    assert!(holders.len() >= 20);
    // Ten holders leave the network.
    let gone: Vec<SocketAddr> =
        holders.iter().filter(|&&h| h != 0).take(10).map(|&h| net.nodes[h].0).collect();
    net.nodes.retain(|(a, _)| !gone.contains(a));
    let live_holders = |net: &Net| {
        net.nodes.iter().filter(|(_, n)| n.store().get(&key, UNIX).count() == 1).count()
    };
    assert!(live_holders(&net) < 20);
    let interval = net.nodes[0].1.config().replicate_interval;
    net.advance(interval + interval / 4 + Duration::from_secs(60));
    assert!(live_holders(&net) >= 20, "{}", live_holders(&net));
    let replications: u64 = net.nodes.iter().map(|(_, n)| n.stats().replications).sum();
    // One holder per interval does the work (plus a few whose jitter fired
    // before the STORE reached them), not every holder.
    assert!((1..=6).contains(&replications), "{replications}");
}

#[test]
fn identical_inputs_give_identical_outputs() {
    let run = || {
        let mut net = Net::build(25, 23);
        let q = net.with(4, |n, now, out| n.find_node(now, NodeId([7; 32]), out));
        net.advance(Duration::from_secs(100));
        (q, net.wire)
    };
    let (q1, w1) = run();
    let (q2, w2) = run();
    assert_eq!(q1, q2);
    assert_eq!(w1.len(), w2.len());
    assert!(w1 == w2, "the same datagrams, byte for byte");
}

#[test]
fn everything_is_send() {
    fn send<T: Send>() {}
    send::<Node>();
    send::<Outbox>();
    send::<Event>();
}

#[test]
fn garbage_never_panics() {
    let now = Instant::now();
    let mut n = node(1);
    let mut out = Outbox::new();
    let mut rng = rng::Rng::seed_from_u64(14);
    let alice = SigningKey::from_bytes(&[0xA1; 32]);
    let rec = signed(&alice, [1; 32], 1, UNIX, 600, b"x");
    n.bootstrap(now, &[addr(2)], &mut out);
    let nodes: Vec<NodeInfo> =
        (0..20).map(|i| NodeInfo { id: [i; 32], addr: addr(u16::from(i)) }).collect();
    let samples = [
        encode(1, [2; 32], BodyRepr::Ping),
        encode(1, [2; 32], BodyRepr::Pong { observed: addr(1) }),
        encode(1, [2; 32], BodyRepr::FindNode { target: [3; 32], padding: 0 }),
        encode(1, [2; 32], BodyRepr::Nodes(NodeList::from_slice(&nodes).unwrap())),
        encode(1, [2; 32], BodyRepr::FindValue { key: [1; 32], padding: 9 }),
        store_msg(1, &rec),
        encode(1, [2; 32], BodyRepr::StoreAck(StoreStatus::Stored)),
    ];
    for i in 0..20_000 {
        let mut b = samples[i % samples.len()].clone();
        for _ in 0..1 + rng.index(3) {
            let at = rng.index(b.len());
            b[at] = rng.next_u64() as u8;
        }
        if rng.chance(0.2) {
            b.truncate(rng.index(b.len() + 1));
        }
        let from = addr(rng.index(50) as u16);
        n.handle(now + Duration::from_millis(i as u64), from, &b, &mut out);
        out.transmits.clear();
    }
    n.handle_timeout(now + Duration::from_secs(100), &mut out);
    assert!(n.stats().drops.total() > 0);
}
