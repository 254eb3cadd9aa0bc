//! Attacks on the NACK service's bookkeeping, against a real endpoint
//! (issue 18): a stranger answering recovery requests it was never sent, and
//! NACKs for other flows' SeqNums trying to use up a gap's sequence-tier
//! allowance. Each test asserts the defence from the outside: what a
//! legitimate listener is served, and the counters an operator sees.

use std::collections::HashSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use ricochet_e2e::{
    Engine, Publisher, drain, group_listener, metric_sum, nack_client, nack_for, tx_frame,
};
use ricochet_wire::control::{NackFlags, ResponseKind, ResponseRepr};
use ricochet_wire::frame::Frame;

const FLOW: u64 = 0x0BAD_F00D;

/// Every frame of `FLOW` with SeqNum `seq` that reaches `listeners` within
/// `wait`.
fn frames_seen(listeners: &[UdpSocket], seq: u64, wait: Duration) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        for l in listeners {
            for d in drain(l, Duration::from_millis(20)) {
                if Frame::new_checked(&d[..]).is_ok_and(|f| f.hash_key() == FLOW && f.seq() == seq)
                {
                    seen.push(d);
                }
            }
        }
    }
    seen
}

/// Attack 3: an answer to a recovery request is taken only from the
/// upstream that was asked, at the address it was asked on. A stranger
/// (another port on the same host, and another host address) that sends a
/// frame with the right key to the endpoint's upstream socket is dropped
/// and counted; nothing it sent is cached, served or multicast; the real
/// upstream's answer, arriving after the forgery, is the one that fills.
#[test]
fn forged_recovery_answers_from_strangers_are_refused() {
    let upstream = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    upstream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let up = upstream.local_addr().unwrap().to_string();
    let e = Engine::start(&[
        "--proxy-enabled",
        "--upstream-retry-endpoints",
        &up,
        "--proxy-timeout",
        "3s",
        "--cpus",
        "0",
    ]);
    let listeners: Vec<UdpSocket> = (0..4).map(|g| group_listener(g, e.egress_port)).collect();

    // A listener's gap: MISS at once, and a Proxied NACK goes upstream,
    // which shows the endpoint's upstream socket address.
    let client = nack_client();
    client.send_to(&nack_for(FLOW, 7, 0), e.nack_addr()).unwrap();
    let replies = drain(&client, Duration::from_millis(300));
    assert_eq!(replies.len(), 1);
    assert_eq!(ResponseRepr::parse(&replies[0]), Ok(ResponseRepr::miss()));
    let mut buf = [0u8; 128];
    let (n, asking) = upstream.recv_from(&mut buf).expect("a recovery request upstream");
    assert_eq!(n, 64);
    assert_ne!(buf[1] & NackFlags::PROXIED, 0, "the request upstream is Proxied");

    // Two strangers answer first, with forged bytes: same host other port,
    // and another loopback address.
    let forged = tx_frame(FLOW, 7, b"forged by a stranger");
    for from in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)] {
        let stranger = UdpSocket::bind((from, 0)).unwrap();
        stranger.send_to(&forged, asking).unwrap();
    }
    let body = e.wait_metrics(Duration::from_secs(5), |b| {
        metric_sum(b, "ricochet_recovery_refused_source_total") >= 2.0
    });
    assert_eq!(metric_sum(&body, "ricochet_recovery_refused_source_total"), 2.0, "{body}");
    assert_eq!(metric_sum(&body, "ricochet_frames_recovered_total"), 0.0);

    // The real upstream answers; its frame is cached and multicast.
    let genuine = tx_frame(FLOW, 7, b"the genuine frame");
    upstream.send_to(&genuine, asking).unwrap();
    let seen = frames_seen(&listeners, 7, Duration::from_millis(800));
    assert!(!seen.is_empty(), "the recovered frame is multicast into the domain");
    assert!(seen.iter().all(|d| *d == genuine), "only the genuine bytes are multicast");

    // Asked again, the endpoint serves the genuine frame from its cache.
    client.send_to(&nack_for(FLOW, 7, 0), e.nack_addr()).unwrap();
    let replies = drain(&client, Duration::from_millis(300));
    assert!(
        replies
            .iter()
            .any(|r| matches!(ResponseRepr::parse(r).map(|r| r.kind), Ok(ResponseKind::Ack(_)))),
        "a hit is ACKed: {replies:?}"
    );
    let seen = frames_seen(&listeners, 7, Duration::from_millis(500));
    assert!(!seen.is_empty() && seen.iter().all(|d| *d == genuine));
    let body = e.http("/metrics").unwrap().1;
    assert_eq!(metric_sum(&body, "ricochet_frames_recovered_total"), 1.0);
}

/// Attack 5: the sequence tier limits NACKs per gap — (HashKey, StartSeq) —
/// not per SeqNum. A flood of NACKs for SeqNums 1..=200 under random
/// HashKeys, more than the tier's allowance for each SeqNum, leaves a
/// legitimate listener's NACKs for the same SeqNums on its own flow fully
/// answered. (Keyed by StartSeq alone, as older references were, every one
/// of those 200 NACKs would be refused for the whole window.)
#[test]
fn nacks_for_other_flows_do_not_use_up_a_gaps_allowance() {
    const SEQS: u64 = 200;
    const PER_SEQ: u64 = 130; // over the default --rl-sequence-max of 100
    const CONTROL: u64 = 5;
    let e = Engine::start(&[
        // The per-source tiers are not what this test measures.
        "--rl-ip-rate",
        "1000000",
        "--rl-ip-burst",
        "1000000",
        "--rl-group-burst",
        "100000",
        "--cpus",
        "0",
    ]);
    let publisher = Publisher::new(e.listen_port);
    for seq in 1..=SEQS + CONTROL {
        publisher.send_tx(FLOW, seq, &seq.to_be_bytes());
    }
    e.wait_metrics(Duration::from_secs(5), |b| {
        metric_sum(b, "ricochet_cache_entries") >= SEQS as f64
    });

    // The flood: PER_SEQ NACKs per SeqNum, each under a HashKey of its own,
    // from several source addresses.
    let attackers: Vec<UdpSocket> =
        (1..=4u8).map(|i| UdpSocket::bind((Ipv4Addr::new(127, 0, 1, i), 0)).unwrap()).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut sent = 0u64;
    for round in 0..PER_SEQ {
        for seq in 1..=SEQS + CONTROL {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // The control SeqNums are flooded under the flow's own
            // HashKey: the same volume does use up those gaps' allowance.
            let key = if seq > SEQS { FLOW } else { x | 1 };
            let a = &attackers[((round + seq) % 4) as usize];
            a.send_to(&nack_for(key, seq, 0), e.nack_addr()).unwrap();
            sent += 1;
        }
        // Pace per round so the flood reaches the tier instead of
        // overflowing the socket's receive queue.
        e.wait_metrics(Duration::from_secs(5), |b| {
            metric_sum(b, "ricochet_nack_datagrams_total") >= sent as f64 * 0.98
        });
    }
    let body = e.http("/metrics").unwrap().1;
    let received = metric_sum(&body, "ricochet_nack_datagrams_total");
    assert!(
        received >= ((SEQS + CONTROL) * 101) as f64,
        "the flood reached the service: {received} of {sent} NACKs"
    );

    // The listener's own NACKs for the same SeqNums: every one is a hit
    // and answered. (The control gaps, flooded under the flow's own key,
    // are over the tier: that volume is enough to silence a gap.)
    let client = nack_client();
    let mut acked = HashSet::new();
    for seq in 1..=SEQS + CONTROL {
        client.send_to(&nack_for(FLOW, seq, 0), e.nack_addr()).unwrap();
        if seq % 20 == 0 || seq == SEQS + CONTROL {
            for r in drain(&client, Duration::from_millis(150)) {
                if let Ok(ResponseRepr { kind: ResponseKind::Ack(_), seq, .. }) =
                    ResponseRepr::parse(&r)
                {
                    acked.insert(seq);
                }
            }
        }
    }
    let missing: Vec<u64> = (1..=SEQS).filter(|s| !acked.contains(s)).collect();
    let body = e.http("/metrics").unwrap().1;
    let control: Vec<u64> = (SEQS + 1..=SEQS + CONTROL).filter(|s| acked.contains(s)).collect();
    assert!(control.is_empty(), "control gaps over the tier were answered: {control:?}");
    assert!(
        missing.is_empty(),
        "unanswered: {missing:?}\nsequence-tier refusals: {}",
        metric_sum(&body, "ricochet_rate_limited_sequence_total")
    );
}
