//! Cross-domain recovery end to end: domain A (publisher → endpoint U), a
//! bridge that forwards A's frames into domain B and drops some, endpoint D
//! in B with U as its upstream, and a listener in B that NACKs its gaps to
//! D. Every gap must fill through D's recovery, with exactly one Proxied
//! NACK reaching U per gap. Both domains run on loopback with their own
//! ports (the IPv4 lab groups are shared; ports keep them apart).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use ricochet_e2e::{
    Engine, Ports, Publisher, bridge, drain, group_listener, nack_client, nack_for, ports,
};
use ricochet_wire::control::{NackFlags, ResponseRepr};
use ricochet_wire::frame::Frame;

const FLOW: u64 = 0x00C0_FFEE;
const FRAMES: u64 = 200;

fn nack(seq: u64, flags: u8) -> [u8; 64] {
    nack_for(FLOW, seq, flags)
}

#[test]
fn gaps_caused_by_the_bridge_fill_through_the_upstream_with_one_fetch_each() {
    for backend in ["epoll", "uring"] {
        two_domains(backend);
    }
}

fn two_domains(backend: &str) {
    // D proxies through U from 127.0.0.1: U must allow it.
    let upstream = Engine::start(&["--backend", backend, "--proxy-allow", "127.0.0.1/32"]);
    // D's retransmits go to B's data port, where B's listener listens.
    let b = ports();
    let admin = b.admin_addr();
    let up = format!("127.0.0.1:{}", upstream.nack_port);
    let args: Vec<String> =
        ["--ipv4-lab", "--backend", backend, "--proxy-enabled", "--upstream-retry-endpoints", &up]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let b_ports = Ports { egress: b.listen, ..b }; // egress port = B's listen port
    let downstream = Engine::launch(&[], &args, b_ports, admin);

    // B's listener: every frame that reaches B's groups, bridged or
    // retransmitted.
    let listener: Vec<UdpSocket> = (0..4).map(|g| group_listener(g, b.listen)).collect();
    let bridge = bridge(upstream.listen_port, b.listen, FRAMES, 50);
    let publisher = Publisher::new(upstream.listen_port);
    for seq in 1..=FRAMES {
        publisher.send_tx(FLOW, seq, &seq.to_be_bytes());
    }
    let dropped = bridge.join().unwrap();
    assert!(!dropped.is_empty(), "the bridge dropped some frames");

    let mut have = BTreeSet::new();
    let collect = |have: &mut BTreeSet<u64>| {
        for l in &listener {
            for d in drain(l, Duration::from_millis(50)) {
                if let Ok(f) = Frame::new_checked(&d)
                    && f.hash_key() == FLOW
                {
                    have.insert(f.seq());
                }
            }
        }
    };
    collect(&mut have);
    let gaps: Vec<u64> = (1..=FRAMES).filter(|s| !have.contains(s)).collect();
    assert_eq!(gaps, dropped.iter().copied().collect::<Vec<_>>(), "{backend}: gaps are the drops");

    // The listener NACKs each gap to D: MISS at once, then the recovered
    // frame arrives on B's group.
    let client = nack_client();
    for &seq in &gaps {
        client.send_to(&nack(seq, 0), downstream.nack_addr()).unwrap();
        let replies = drain(&client, Duration::from_millis(100));
        assert_eq!(replies.first().map(|r| ResponseRepr::parse(r)), Some(Ok(ResponseRepr::miss())));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while gaps.iter().any(|s| !have.contains(s)) && Instant::now() < deadline {
        collect(&mut have);
    }
    let unfilled: Vec<_> = gaps.iter().filter(|s| !have.contains(s)).collect();
    assert!(
        unfilled.is_empty(),
        "{backend}: unfilled gaps {unfilled:?}\nD:\n{}\nU:\n{}",
        downstream.http("/metrics").unwrap().1,
        upstream.http("/metrics").unwrap().1
    );

    // NACK every gap again: D now has them (no new upstream fetch).
    for &seq in &gaps {
        client.send_to(&nack(seq, 0), downstream.nack_addr()).unwrap();
    }
    drain(&client, Duration::from_millis(200));
    let u = upstream.http("/metrics").unwrap().1;
    let d = downstream.http("/metrics").unwrap().1;
    let m = |body: &str, name: &str| ricochet_e2e::metric_sum(body, name);
    assert_eq!(
        m(&u, "ricochet_nacks_proxied_total"),
        gaps.len() as f64,
        "{backend}: one fetch per gap"
    );
    assert_eq!(m(&d, "ricochet_recovery_recovered_total"), gaps.len() as f64, "{backend}");
    assert_eq!(m(&d, "ricochet_frames_recovered_total"), gaps.len() as f64, "{backend}");

    // A Proxied NACK to D for a frame it lacks is answered, never forwarded.
    let before = m(&u, "ricochet_nack_datagrams_total");
    client.send_to(&nack(FRAMES + 50, NackFlags::PROXIED), downstream.nack_addr()).unwrap();
    let replies = drain(&client, Duration::from_millis(300));
    assert_eq!(
        replies.iter().map(|r| ResponseRepr::parse(r)).collect::<Vec<_>>(),
        vec![Ok(ResponseRepr::miss())]
    );
    let u = upstream.http("/metrics").unwrap().1;
    assert_eq!(m(&u, "ricochet_nack_datagrams_total"), before, "{backend}: not forwarded upstream");
}

#[test]
fn a_silent_upstream_and_garbage_replies_are_bounded_and_counted() {
    // An "upstream" that answers every NACK with garbage, and one that says
    // nothing: D answers MISS at once, counts, and keeps serving.
    let garbage = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let g_addr = garbage.local_addr().unwrap();
    let s_addr = silent.local_addr().unwrap();
    let responder = std::thread::spawn(move || {
        garbage.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let mut buf = [0u8; 128];
        let mut answered = 0;
        while let Ok((_, from)) = garbage.recv_from(&mut buf) {
            garbage.send_to(b"\xE3\xE1\xF3\xE8 not a frame", from).unwrap();
            answered += 1;
        }
        answered
    });
    let ups = format!("{g_addr},{s_addr}");
    let e = Engine::start(&[
        "--proxy-enabled",
        "--upstream-retry-endpoints",
        &ups,
        "--proxy-queue-depth",
        "4",
        "--cpus",
        "0",
        "--rl-ip-burst",
        "100",
    ]);
    let client = nack_client();
    for seq in 1..=20 {
        client.send_to(&nack(seq, 0), e.nack_addr()).unwrap();
    }
    let replies = drain(&client, Duration::from_millis(300));
    assert_eq!(replies.len(), 20, "every NACK got its MISS at once");
    assert!(replies.iter().all(|r| ResponseRepr::parse(r) == Ok(ResponseRepr::miss())));
    let answered = responder.join().unwrap();
    assert_eq!(answered, 4, "only the queue's worth reached the first upstream");
    let body = e.wait_metrics(Duration::from_secs(3), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_recovery_failed_total") >= 4.0
    });
    let m = |name: &str| ricochet_e2e::metric_sum(&body, name);
    assert_eq!(m("ricochet_recovery_queued_total"), 4.0);
    assert_eq!(m("ricochet_recovery_dropped_queue_full_total"), 16.0);
    assert_eq!(m("ricochet_recovery_garbage_total"), 4.0);
    assert_eq!(
        m("ricochet_recovery_upstream_timeouts_total"),
        8.0,
        "each upstream timed out once per job"
    );
    assert_eq!(m("ricochet_recovery_failed_total"), 4.0);
    assert_eq!(m("ricochet_recovery_in_flight"), 0.0);
    // Still serving.
    client.send_to(&nack(999, 0), e.nack_addr()).unwrap();
    assert_eq!(drain(&client, Duration::from_millis(300)).len(), 1);
}
