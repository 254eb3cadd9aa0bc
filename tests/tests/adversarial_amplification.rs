//! Amplification through the NACK service, against a real endpoint
//! (issue 18): a Proxied range NACK asks for a unicast copy of every frame
//! it names, so from a source that may set the flag one 64-byte datagram
//! could draw megabytes to whatever address it claims. Only sources in
//! `--proxy-allow` (and live siblings) get copies; from anyone else a NACK
//! draws at most 3× its size back, while a legitimate listener is served
//! in full. Each test asserts it from the outside: the bytes that arrive at
//! each socket, and the counters an operator sees.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use ricochet_e2e::{Engine, Publisher, drain, metric_sum};
use ricochet_wire::control::{AckFlags, NackFlags, NackRepr, ResponseKind, ResponseRepr};
use ricochet_wire::frame::Frame;

const FLOW: u64 = 0x00A3_F11F_0001;
/// Frames cached, SeqNums 1..=FRAMES.
const FRAMES: u64 = 16;
/// The bound the service documents: 3 × the 64-byte NACK.
const BOUND: usize = 3 * 64;

/// Frame `seq`'s payload size: 8, 24, 40 or 56 KB.
fn payload_len(seq: u64) -> usize {
    8_000 + (seq as usize % 4) * 16_000
}

/// An engine with `extra` args and FLOW's frames cached; returns the
/// frames' bytes by SeqNum (index 0 is SeqNum 1).
fn engine_with_large_frames(extra: &[&str]) -> (Engine, Vec<Vec<u8>>) {
    let e = Engine::start(extra);
    let p = Publisher::new(e.listen_port);
    let mut sent = Vec::new();
    for seq in 1..=FRAMES {
        let payload = vec![(seq as u8).wrapping_mul(31); payload_len(seq)];
        sent.push(p.send_tx(FLOW, seq, &payload).0);
        // Large datagrams one at a time: a receive buffer full of them
        // would drop some.
        std::thread::sleep(Duration::from_millis(5));
    }
    let body = e.wait_metrics(Duration::from_secs(10), |b| {
        metric_sum(b, "ricochet_frames_cached_total") >= FRAMES as f64
    });
    assert_eq!(metric_sum(&body, "ricochet_frames_cached_total"), FRAMES as f64, "{body}");
    (e, sent)
}

/// A NACK socket on `ip` (any 127/8 address is this host), with a receive
/// buffer large enough for a burst of large frames.
fn client(ip: Ipv4Addr) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(8 << 20);
    s.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    s.into()
}

fn range_nack(start: u64, end: u64, flags: u8) -> [u8; 64] {
    let mut b = [0u8; 64];
    let r = NackRepr {
        flags: NackFlags(flags),
        hash_key: FLOW,
        start_seq: start,
        end_seq: end,
        subtree_id: [0x20; 32],
    };
    r.emit(&mut b).unwrap();
    b
}

/// What came back to one socket: the control answers and the frames.
#[derive(Debug, Default)]
struct Back {
    bytes: usize,
    answers: Vec<ResponseRepr>,
    frames: Vec<Vec<u8>>,
}

fn back(sock: &UdpSocket) -> Back {
    let mut b = Back::default();
    for d in drain(sock, Duration::from_millis(500)) {
        b.bytes += d.len();
        if let Ok(r) = ResponseRepr::parse(&d) {
            b.answers.push(r);
        } else {
            assert!(Frame::new_checked(&d[..]).is_ok(), "neither an answer nor a frame: {d:?}");
            b.frames.push(d);
        }
    }
    b
}

/// A stranger's Proxied range NACKs for 16 large frames (560 KB) each draw
/// at most 3 × 64 bytes back — no frame copy, twelve ACKs at most, and the
/// range stops there — while a listener at another address asking for the
/// same frames gets every one of them sent to its group and ACKed.
#[test]
fn a_proxied_range_nack_from_a_stranger_draws_at_most_three_times_its_size() {
    let (e, sent) = engine_with_large_frames(&[]);
    let attacker = client(Ipv4Addr::LOCALHOST);
    let listener = client(Ipv4Addr::new(127, 0, 0, 3));
    let groups: Vec<UdpSocket> =
        (0..4).map(|g| ricochet_e2e::group_listener(g, e.egress_port)).collect();

    for round in 0..4u64 {
        let n = range_nack(1, FRAMES, NackFlags::PROXIED);
        attacker.send_to(&n, e.nack_addr()).unwrap();
        // Meanwhile the listener asks for one frame each round.
        let seq = round * 4 + 2;
        listener.send_to(&range_nack(seq, seq, 0), e.nack_addr()).unwrap();

        let got = back(&attacker);
        assert!(got.bytes <= BOUND, "round {round}: {} bytes back to the stranger", got.bytes);
        assert!(got.frames.is_empty(), "round {round}: a frame copy reached the stranger");
        assert!(!got.answers.is_empty(), "round {round}: the stranger is still answered");
        for a in &got.answers {
            assert!(matches!(a.kind, ResponseKind::Ack(f) if !f.unicast()), "round {round}: {a:?}");
        }

        let mine = back(&listener);
        assert_eq!(
            mine.answers,
            [ResponseRepr::ack(seq, AckFlags(AckFlags::MULTICAST))],
            "round {round}: the listener is answered in full"
        );
        let on_groups: Vec<Vec<u8>> =
            groups.iter().flat_map(|g| drain(g, Duration::from_millis(200))).collect();
        assert!(
            on_groups.contains(&sent[seq as usize - 1]),
            "round {round}: SeqNum {seq} was multicast to its group"
        );
    }
    let body = e.http("/metrics").unwrap().1;
    assert_eq!(metric_sum(&body, "ricochet_nacks_proxied_not_allowed_total"), 4.0, "{body}");
    assert_eq!(metric_sum(&body, "ricochet_retransmits_unicast_total"), 0.0);
    assert!(metric_sum(&body, "ricochet_budget_exhausted_total") >= 4.0, "{body}");
}

/// With the source listed in `--proxy-allow`, the same kind of NACK is a
/// downstream endpoint's and is served in full: a byte-identical unicast
/// copy of every frame, each ACKed with the unicast flag.
#[test]
fn a_proxied_range_nack_from_an_allowed_source_gets_the_unicast_copies() {
    let (e, sent) = engine_with_large_frames(&["--proxy-allow", "127.0.0.1/32"]);
    let downstream = client(Ipv4Addr::LOCALHOST);
    // Four frames (128 KB), so the socket's buffer holds them all.
    downstream.send_to(&range_nack(1, 4, NackFlags::PROXIED), e.nack_addr()).unwrap();
    let got = back(&downstream);
    assert_eq!(got.frames, sent[..4], "every frame, byte-identical, in order");
    assert_eq!(got.answers.len(), 4, "{:?}", got.answers);
    for (a, seq) in got.answers.iter().zip(1..) {
        assert_eq!(a.seq, seq);
        assert!(matches!(a.kind, ResponseKind::Ack(f) if f.unicast() && f.multicast()), "{a:?}");
    }
    assert!(got.bytes > 100 * BOUND, "{} bytes", got.bytes);
    let body = e.http("/metrics").unwrap().1;
    assert_eq!(metric_sum(&body, "ricochet_nacks_proxied_not_allowed_total"), 0.0, "{body}");
    assert_eq!(metric_sum(&body, "ricochet_retransmits_unicast_total"), 4.0, "{body}");
    assert_eq!(metric_sum(&body, "ricochet_budget_exhausted_total"), 0.0, "{body}");

    // Another address on the same host is not listed: it gets no copies.
    let stranger = client(Ipv4Addr::new(127, 0, 0, 4));
    stranger.send_to(&range_nack(1, 4, NackFlags::PROXIED), e.nack_addr()).unwrap();
    let got = back(&stranger);
    assert!(got.frames.is_empty() && got.bytes <= BOUND, "{got:?}");
}
