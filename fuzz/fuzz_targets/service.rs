//! The NACK service as a state machine (`ricochet_proto::retry`): any
//! sequence of frames, NACKs, store answers and time steps — well-formed
//! or not, from any source — is taken without panicking, and after every
//! step:
//! - the cache's memory stays within its budget;
//! - every effect has been routed (the outbox's effect list is empty);
//! - a NACK from a source that may not proxy drew at most
//!   `AMPLIFICATION × NACK_LEN` bytes of unicast back to it;
//! - only NACK sources and the upstream are sent unicast datagrams.
//!
//! The input's first byte picks the settings; the rest is a list of
//! operations (see [`Op`]), each a tag byte and its fields.
#![no_main]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ricochet_fuzz::Input;
use ricochet_proto::retry::effects::{Parts, Router, StoreAnswer, StoreOp};
use ricochet_proto::retry::{
    AMPLIFICATION, CacheSettings, ClaimResult, Claims, Dest, Outbox, Recovery,
    RecoverySettings, Service, Settings, Siblings,
};
use ricochet_wire::control::{NACK_LEN, NackFlags, NackRepr};
use ricochet_wire::frame::{Extra, FrameRepr, FrameVersion};

const UPSTREAM: SocketAddr =
    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xff)), 9000);
const MAX_BYTES: usize = 64 * 1024;

/// One of eight NACK sources.
fn source(i: u8) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, u16::from(i % 8))),
        40_000,
    )
}

/// A valid frame of flow `flow % 4` at `seq` with a payload of `len` bytes.
fn frame(flow: u8, seq: u64, len: u8, version: u8) -> Bytes {
    let payload = vec![0xAB; usize::from(len) * 8];
    let version = match version % 3 {
        0 => FrameVersion::Tx,
        1 => FrameVersion::Block,
        _ => FrameVersion::Beef,
    };
    let r = FrameRepr {
        version,
        byte7: 0,
        id: [flow; 32],
        hash_key: 0xF000 + u64::from(flow % 4),
        seq,
        subtree_id: [0x11; 32],
        extra: Extra::None,
        payload: &payload,
    };
    let mut buf = vec![0u8; r.buffer_len()];
    match r.emit(&mut buf) {
        Ok(_) => Bytes::from(buf),
        Err(_) => Bytes::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let knobs = input.u8();
    let t0 = Instant::now();
    let mut now = t0;
    let settings = Settings {
        cache: CacheSettings { max_bytes: MAX_BYTES, ..CacheSettings::default() },
        multicast_retransmit: knobs & 1 != 0,
        unicast_retransmit: knobs & 2 != 0,
        suppress_ack: knobs & 4 != 0,
        retransmit_dedup: knobs & 8 != 0,
        shared_cache: knobs & 16 != 0,
        proxy_enabled: knobs & 32 != 0,
        max_range: 1 + u64::from(knobs >> 6) * 40,
        ..Settings::default()
    };
    let mut service = Service::new(settings, t0);
    let mut recovery = Recovery::new(RecoverySettings {
        upstreams: vec![UPSTREAM],
        shared_claims: knobs & 8 != 0,
        ..RecoverySettings::default()
    });
    let siblings = Siblings::new(1, []);
    let mut local_dedup = Claims::new(Duration::from_secs(2), 1024);
    let mut outbox = Outbox::new();
    let mut router = Router::new(64);
    // Store requests waiting for an answer the input will give.
    let mut asked: VecDeque<(u64, StoreOp)> = VecDeque::new();

    // The router with the worker state it acts on and a fake store queue
    // that takes up to 32 requests, then refuses (as a full queue does).
    macro_rules! routed {
        (|$parts:ident, $store:ident| $call:expr) => {{
            let mut $parts = Parts {
                service: &mut service,
                recovery: &mut recovery,
                siblings: &siblings,
                local_dedup: &mut local_dedup,
                outbox: &mut outbox,
            };
            let mut $store = |t, op| {
                let take = asked.len() < 32;
                if take {
                    asked.push_back((t, op));
                }
                take
            };
            $call
        }};
    }

    let mut steps = 0;
    while !input.is_empty() && steps < 512 {
        steps += 1;
        let mut nack_from = None;
        match input.u8() % 8 {
            0 => {
                let (flow, seq, len, v) = (input.u8(), input.u16(), input.u8(), input.u8());
                let _ = service.on_frame(now, frame(flow, u64::from(seq), len, v), None);
            }
            1 => {
                let n = usize::from(input.u8());
                let _ = service.on_frame(now, Bytes::copy_from_slice(input.bytes(n)), None);
            }
            2 => {
                let (flow, start, span, flags, src) =
                    (input.u8(), input.u16(), input.u8(), input.u8(), input.u8());
                let nack = NackRepr {
                    flags: NackFlags(flags & 0x03),
                    hash_key: 0xF000 + u64::from(flow % 4),
                    start_seq: u64::from(start),
                    end_seq: u64::from(start) + u64::from(span),
                    subtree_id: [0x22; 32],
                };
                let mut buf = [0u8; 64];
                if nack.emit(&mut buf).is_ok() {
                    let src = source(src);
                    let _ = service.on_nack(now, src, &buf, &mut outbox);
                    nack_from = Some(src);
                }
            }
            3 => {
                let src = source(input.u8());
                let _ = service.on_nack(now, src, &input.bytes(64).to_vec(), &mut outbox);
                nack_from = Some(src);
            }
            4 => now += Duration::from_millis(u64::from(input.u16())),
            5 => {
                let _ = service.expire(now);
            }
            6 => {
                // The store answers the oldest request.
                let pick = input.u8();
                if let Some((token, op)) = asked.pop_front() {
                    let answer = match op {
                        StoreOp::Claim { .. } => StoreAnswer::Claim(match pick % 3 {
                            0 => ClaimResult::Won,
                            1 => ClaimResult::Lost,
                            _ => ClaimResult::Unavailable,
                        }),
                        StoreOp::Get { key } => StoreAnswer::Get(match pick % 3 {
                            0 => Ok(None),
                            1 => Err(()),
                            _ => Ok(Some(frame((key.hash_key & 3) as u8, key.seq, pick, 0))),
                        }),
                    };
                    routed!(
                        |parts, store| router.on_answer(now, token, answer, &mut parts, &mut store)
                    );
                }
            }
            _ => {
                routed!(|parts, store| router.expire(
                    now,
                    Duration::from_millis(500),
                    &mut parts,
                    &mut store
                ));
            }
        }
        // Route what the step produced.
        routed!(|parts, store| router.route(now, &mut parts, &mut store));
        assert!(outbox.effects().is_empty(), "an effect was left unrouted");

        let stats = service.cache().stats();
        assert!(stats.charged_bytes <= MAX_BYTES as u64, "{} > {MAX_BYTES}", stats.charged_bytes);

        let mut drawn = 0;
        for t in outbox.drain_transmits() {
            match t.dest {
                Dest::Unicast(to) => {
                    assert!((0..8).any(|i| source(i) == to), "unicast to a stranger: {to}");
                    if Some(to) == nack_from {
                        drawn += t.payload.as_bytes().len();
                    }
                }
                Dest::Upstream(to) => assert_eq!(to, UPSTREAM, "only the upstream is asked"),
                Dest::Group(_) => {}
            }
        }
        assert!(
            drawn <= AMPLIFICATION * NACK_LEN,
            "one NACK drew {drawn} bytes back to a source that may not proxy"
        );
    }
});
