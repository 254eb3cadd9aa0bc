//! The whisper gossip engine as a state machine
//! (`ricochet_proto::gossip::Gossip`): any sequence of datagrams — frames
//! sealed with the cluster key from members and from a stranger, raw
//! unsealed bytes, replays — publishes, pulls, reconciliations, queries
//! and time steps is taken without panicking, and after every step:
//! - the egress queue, pending ACKs, rumor dedup and member view stay
//!   within their configured caps;
//! - a replayed datagram reaches no frame handler;
//! - a source outside the view has drawn, over the whole run, at most
//!   `AMPLIFICATION` times the bytes it sent.
//!
//! The input is a list of operations (see the `match` below), each a tag
//! byte and its fields; frame bodies come from the input, so the seed
//! corpus (valid G1–G6 frames) lets the fuzzer reach every handler.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ricochet_fuzz::Input;
use ricochet_proto::gossip::{
    AMPLIFICATION, Config, Gossip, MemStore, Member, Outbox, Responder, TopicMode,
};
use ricochet_wire::mac::{ClusterKey, Stamp};

const TOPICS: [&[u8]; 3] = [b"state", b"news", b"ask"];

/// Members 0–2 are in the view (0 is the engine); 3 is a stranger.
fn addr(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + i % 4)), 9310)
}

fn member(i: u8) -> Member {
    Member { id: *blake3::hash(&[i]).as_bytes(), addr: addr(i) }
}

struct Echo;

impl Responder for Echo {
    fn respond(&mut self, _origin: &[u8; 32], query: &[u8]) -> Option<Vec<u8>> {
        Some(query.to_vec())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let key = ClusterKey::new([9; 32]);
    let t0 = Instant::now();
    let mut now = t0;
    let mut config = Config::new([1; 32]);
    config.max_queue = 64;
    config.max_pending_acks = 32;
    config.dedup_capacity = 128;
    config.max_members = 8;
    let (max_queue, max_acks, max_dedup) =
        (config.max_queue, config.max_pending_acks, config.dedup_capacity);
    let me = member(0);
    let mut g = Gossip::new(me.id, me.addr, key.clone(), config, t0);
    g.set_members(&[me, member(1), member(2)]);
    let _ = g.register_topic(TOPICS[0], TopicMode::StatefulMerge(Box::new(MemStore::new())), 1);
    let _ = g.register_topic(TOPICS[1], TopicMode::BroadcastOnly, 3);
    let _ = g.register_topic(TOPICS[2], TopicMode::RequestResponse(Box::new(Echo)), 2);
    for t in TOPICS {
        let _ = g.subscribe(t);
    }
    let mut out = Outbox::default();
    let mut counter = 0u64;
    let mut last: Option<(SocketAddr, Vec<u8>)> = None;
    let (mut from_stranger, mut to_stranger) = (0usize, 0usize);

    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        let mut replayed = None;
        match input.u8() % 8 {
            0 => {
                // A frame sealed with the cluster key, stamped now.
                let peer = 1 + input.u8() % 3;
                let from = addr(peer);
                let len = usize::from(input.u16() % 1400);
                counter += 1;
                let stamp =
                    Stamp { sender: 0x5E00 + u64::from(peer), time_ms: g.unix_ms(now), counter };
                if let Ok(d) = key.seal_gossip_vec(input.bytes(len), 0, &stamp) {
                    from_stranger += if from == addr(3) { d.len() } else { 0 };
                    g.handle(now, from, &d, &mut out);
                    last = Some((from, d));
                }
            }
            1 => {
                let from = addr(1 + input.u8() % 3);
                let len = usize::from(input.u16() % 1500);
                let d = input.bytes(len).to_vec();
                from_stranger += if from == addr(3) { d.len() } else { 0 };
                g.handle(now, from, &d, &mut out);
            }
            2 => {
                if let Some((from, d)) = last.clone() {
                    from_stranger += if from == addr(3) { d.len() } else { 0 };
                    replayed = Some(g.stats().received);
                    g.handle(now, from, &d, &mut out);
                }
            }
            3 => now += Duration::from_millis(u64::from(input.u16())),
            4 => g.handle_timeout(now, &mut out),
            5 => {
                let topic = TOPICS[usize::from(input.u8() % 3)];
                let len = usize::from(input.u8());
                let payload = input.bytes(len).to_vec();
                let _ = g.publish(now, topic, &payload, input.u8() % 4, &mut out);
                let _ = g.query(now, topic, &payload, &mut out);
            }
            6 => {
                let peer = addr(1 + input.u8() % 2);
                let _ = g.pull(now, peer, TOPICS[0], &mut out);
            }
            _ => {
                let peer = addr(1 + input.u8() % 2);
                let _ = g.reconcile(now, peer, TOPICS[0], &mut out);
            }
        }
        if let Some(before) = replayed {
            assert_eq!(g.stats().received, before, "a replayed datagram reached a handler");
        }
        assert!(g.queued() <= max_queue, "egress queue {} > {max_queue}", g.queued());
        assert!(g.pending_acks() <= max_acks, "pending ACKs {} > {max_acks}", g.pending_acks());
        assert!(g.dedup_len() <= max_dedup, "dedup {} > {max_dedup}", g.dedup_len());
        assert!(g.members().len() <= 8, "view grew to {}", g.members().len());
        for t in out.transmits.drain(..) {
            if t.dest == addr(3) {
                to_stranger += t.payload.len();
            }
        }
        assert!(
            to_stranger <= AMPLIFICATION * from_stranger,
            "a stranger drew {to_stranger} bytes for {from_stranger}"
        );
        out.events.clear();
        out.marks.clear();
    }
});
