//! The Kademlia DHT node as a state machine (`ricochet_proto::dht::Node`):
//! any sequence of datagrams from eight sources, lookups, puts, bootstraps
//! and time steps is taken without panicking, and after every step:
//! - the routing table, record store, outstanding requests and running
//!   lookups stay within their configured caps;
//! - every datagram sent fits one DHT datagram (`DATAGRAM_BUDGET`);
//! - one datagram from a source draws at most one answer and one liveness
//!   probe back to it, and the answer is at most three times its size
//!   (docs/PROTOCOL.md, "Reply budget").
//!
//! The input is a list of operations (see the `match` below), each a tag
//! byte and its fields; the seed corpus wraps the DHT golden messages, so
//! the fuzzer reaches every request and response handler.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ricochet_fuzz::Input;
use ricochet_proto::dht::{Config, Node, NodeId, Outbox};
use ricochet_wire::dht::{DATAGRAM_BUDGET, MessageType, layout, reply_budget};

const UNIX_BASE: u64 = 1_767_225_600;

/// One of eight sources, in two /24s.
fn addr(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2 + (i >> 2) % 2, 1 + i % 4)), 9320)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let t0 = Instant::now();
    let mut now = t0;
    let mut config = Config::new([3; 32]);
    config.max_pending = 16;
    config.max_queries = 4;
    config.store.max_keys = 8;
    config.store.max_records_per_key = 2;
    let (max_pending, max_keys, per_key) =
        (config.max_pending, config.store.max_keys, config.store.max_records_per_key);
    let max_running = config.max_queries + config.max_refreshes + config.max_replications;
    let max_table = config.routing.k * 256 + config.routing.replacements * 256;
    let mut node = Node::new(&[7; 32], config, t0, UNIX_BASE);
    let mut out = Outbox::default();

    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        let mut from = None;
        let mut request_len = 0;
        match input.u8() % 7 {
            0 => {
                let src = addr(input.u8());
                let len = usize::from(input.u16() % 1500);
                let datagram = input.bytes(len);
                node.handle(now, src, datagram, &mut out);
                from = Some(src);
                request_len = datagram.len();
            }
            1 => now += Duration::from_millis(u64::from(input.u16()) * 16),
            2 => node.handle_timeout(now, &mut out),
            3 => {
                let target = NodeId(input.array32());
                node.find_node(now, target, &mut out);
            }
            4 => {
                let key = NodeId(input.array32());
                node.find_value(now, key, &mut out);
            }
            5 => {
                let len = usize::from(input.u16() % 1200);
                let _ = node.put(now, input.bytes(len), &mut out);
            }
            _ => {
                let n = input.u8() % 4;
                let addrs: Vec<SocketAddr> = (0..n).map(|_| addr(input.u8())).collect();
                node.bootstrap(now, &addrs, &mut out);
            }
        }
        assert!(node.table().len() <= max_table, "routing table {}", node.table().len());
        assert!(node.store().keys() <= max_keys, "{} keys > {max_keys}", node.store().keys());
        assert!(node.store().len() <= max_keys * per_key, "{} records", node.store().len());
        assert!(node.pending_requests() <= max_pending, "{} pending", node.pending_requests());
        assert!(node.running_queries() <= max_running, "{} lookups", node.running_queries());
        let mut back = 0;
        for t in out.transmits.drain(..) {
            assert!(t.payload.len() <= DATAGRAM_BUDGET, "a {}-byte datagram", t.payload.len());
            if Some(t.dest) == from {
                back += 1;
                let probe = t.payload[layout::TYPE] == MessageType::Ping.as_u8();
                assert!(
                    probe || t.payload.len() <= reply_budget(request_len),
                    "{} bytes answered {request_len}",
                    t.payload.len()
                );
            }
        }
        assert!(back <= 2, "one datagram drew {back} back to its source");
        out.events.clear();
    }
});
