//! End-to-end: a real `ricochet` process on loopback (IPv4 lab groups),
//! real multicast frames, real NACKs. Run for every backend the machine
//! offers (`BACKENDS`).

use std::net::UdpSocket;
use std::time::Duration;

use ricochet_e2e::{Engine, Publisher, drain, group_listener, nack_client, tx_frame};
use ricochet_wire::control::{AckFlags, NackFlags, NackRepr, ResponseKind, ResponseRepr};
use ricochet_wire::frame::Frame;

/// Backends every behaviour test runs on.
const BACKENDS: &[&str] = &["epoll", "uring"];

fn nack_bytes(hash_key: u64, start: u64, end: u64, flags: u8) -> [u8; 64] {
    let mut b = [0u8; 64];
    NackRepr {
        flags: NackFlags(flags),
        hash_key,
        start_seq: start,
        end_seq: end,
        subtree_id: [0x20; 32],
    }
    .emit(&mut b)
    .unwrap();
    b
}

/// Splits what a NACK client received into (responses, frames).
fn split(datagrams: Vec<Vec<u8>>) -> (Vec<ResponseRepr>, Vec<Vec<u8>>) {
    let mut responses = Vec::new();
    let mut frames = Vec::new();
    for d in datagrams {
        match ResponseRepr::parse(&d) {
            Ok(r) => responses.push(r),
            Err(_) => frames.push(d),
        }
    }
    (responses, frames)
}

/// Publishes `count` frames of one flow and waits until the engine cached
/// them all.
fn publish_flow(e: &Engine, hash_key: u64, count: u64) -> Vec<(Vec<u8>, u16)> {
    // Wait for this flow's frames, on top of whatever is cached already.
    let want = e.metric_sum("ricochet_frames_cached_total") + count as f64;
    let p = Publisher::new(e.listen_port);
    let sent: Vec<_> =
        (1..=count).map(|seq| p.send_tx(hash_key, seq, &seq.to_be_bytes())).collect();
    let body = e.wait_metrics(Duration::from_secs(10), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= want
    });
    assert!(
        ricochet_e2e::metric_sum(&body, "ricochet_frames_cached_total") >= want,
        "frames not cached:\n{body}"
    );
    sent
}

fn ask(client: &UdpSocket, e: &Engine, nack: &[u8]) -> (Vec<ResponseRepr>, Vec<Vec<u8>>) {
    client.send_to(nack, e.nack_addr()).unwrap();
    split(drain(client, Duration::from_millis(400)))
}

#[test]
fn hit_is_acked_and_retransmitted_byte_identical_to_its_group() {
    for backend in BACKENDS {
        let e = Engine::start(&["--backend", backend]);
        let sent = publish_flow(&e, 0xAB01, 3);
        let (frame, group) = &sent[1];
        let watcher = group_listener(*group, e.egress_port);
        let client = nack_client();
        let (responses, unicast) = ask(&client, &e, &nack_bytes(0xAB01, 2, 2, 0));
        assert_eq!(
            responses,
            vec![ResponseRepr::ack(2, AckFlags(AckFlags::MULTICAST))],
            "{backend}"
        );
        assert!(unicast.is_empty(), "no unicast copy unless configured");
        let got = drain(&watcher, Duration::from_millis(400));
        assert!(got.contains(frame), "retransmit on group {group} is byte-identical ({backend})");
    }
}

#[test]
fn unicast_retransmit_when_configured_and_for_proxied_nacks() {
    for backend in BACKENDS {
        // Unicast copies of these frames to a source not in --proxy-allow
        // would exceed 3x the NACK's size: allow the client.
        let e = Engine::start(&[
            "--backend",
            backend,
            "--beacon-flags-unicast=true",
            "--proxy-allow",
            "127.0.0.1/32",
        ]);
        let sent = publish_flow(&e, 0xAB02, 2);
        let client = nack_client();
        let (responses, frames) = ask(&client, &e, &nack_bytes(0xAB02, 1, 1, 0));
        assert_eq!(
            responses,
            vec![ResponseRepr::ack(1, AckFlags(AckFlags::MULTICAST | AckFlags::UNICAST))]
        );
        assert_eq!(frames, vec![sent[0].0.clone()]);
        // The unicast copy and its ACK left as one UDP GSO send.
        assert!(e.metric_sum("ricochet_gso_sends_total") >= 1.0, "{backend}");
    }
    // Multicast-only endpoint still serves a Proxied NACK by unicast, to a
    // source allowed to proxy.
    let e = Engine::start(&["--proxy-allow", "127.0.0.1/32"]);
    let sent = publish_flow(&e, 0xAB03, 1);
    let client = nack_client();
    let (responses, frames) = ask(&client, &e, &nack_bytes(0xAB03, 1, 1, NackFlags::PROXIED));
    assert_eq!(responses.len(), 1);
    assert!(matches!(responses[0].kind, ResponseKind::Ack(f) if f.unicast()));
    assert_eq!(frames, vec![sent[0].0.clone()]);
}

#[test]
fn unknown_frames_get_miss() {
    for backend in BACKENDS {
        let e = Engine::start(&["--backend", backend]);
        let client = nack_client();
        let (responses, frames) = ask(&client, &e, &nack_bytes(0xDEAD, 7, 7, 0));
        assert_eq!(responses, vec![ResponseRepr::miss()]);
        assert!(frames.is_empty());
    }
}

#[test]
fn ranges_ack_each_frame_then_miss_the_first_hole() {
    for backend in BACKENDS {
        let e = Engine::start(&["--backend", backend]);
        publish_flow(&e, 0xAB04, 3);
        let client = nack_client();
        let (responses, _) = ask(&client, &e, &nack_bytes(0xAB04, 1, 5, 0));
        let acks: Vec<u64> = responses
            .iter()
            .filter(|r| matches!(r.kind, ResponseKind::Ack(_)))
            .map(|r| r.seq)
            .collect();
        assert_eq!(acks, vec![1, 2, 3], "{backend}");
        assert_eq!(responses.last(), Some(&ResponseRepr::miss()));
    }
}

#[test]
fn suppress_flags_silence_acks_and_misses() {
    let e = Engine::start(&["--suppress-ack", "--suppress-miss"]);
    publish_flow(&e, 0xAB05, 1);
    let client = nack_client();
    let (hit, _) = ask(&client, &e, &nack_bytes(0xAB05, 1, 1, 0));
    let (miss, _) = ask(&client, &e, &nack_bytes(0xAB05, 9, 9, 0));
    assert!(hit.is_empty() && miss.is_empty(), "{hit:?} {miss:?}");
    // The retransmit still happened.
    assert!(e.metric_sum("ricochet_retransmits_multicast_total") >= 1.0);
}

#[test]
fn ip_flood_tier_is_silent_and_does_not_starve_other_sources() {
    // Burst 10 per source: the 11th NACK in a burst is dropped silently.
    let e = Engine::start(&["--rl-ip-burst", "10", "--rl-ip-rate", "1"]);
    let flooder = nack_client();
    for seq in 0..200u64 {
        flooder.send_to(&nack_bytes(0xF100, seq + 1, seq + 1, 0), e.nack_addr()).unwrap();
    }
    let answered = drain(&flooder, Duration::from_millis(500));
    assert_eq!(answered.len(), 10, "only the burst is answered; the rest is silent");
    // Another source (another port is the same IP on loopback, so use the
    // per-IP bucket of 127.0.0.2) is still served.
    let other = UdpSocket::bind(("127.0.0.2", 0)).unwrap();
    other.send_to(&nack_bytes(0xF100, 1, 1, 0), e.nack_addr()).unwrap();
    let got = drain(&other, Duration::from_millis(500));
    assert_eq!(got.len(), 1, "a second source is not starved by the first");
    assert!(e.metric_sum("ricochet_rate_limited_ip_total") >= 190.0);
}

#[test]
fn throttled_responses_carry_the_tier_bucket() {
    let e = Engine::start(&["--rl-throttle-response=true", "--rl-sequence-max", "2"]);
    let client = nack_client();
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let (r, _) = ask(&client, &e, &nack_bytes(0xAB06, 5, 5, 0));
        kinds.extend(r.into_iter().map(|r| r.kind));
    }
    assert_eq!(
        kinds,
        vec![ResponseKind::Miss, ResponseKind::Miss, ResponseKind::Throttled { bucket: 2 }]
    );
}

#[test]
fn garbage_on_every_port_is_counted_and_the_engine_keeps_serving() {
    for backend in BACKENDS {
        let e = Engine::start(&["--backend", backend]);
        let p = Publisher::new(e.listen_port);
        let client = nack_client();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid_frame = tx_frame(0xAB07, 1, b"ok");
        let valid_nack = nack_bytes(0xAB07, 1, 1, 0);
        for i in 0..2000u64 {
            let r = next();
            let mut d: Vec<u8> = match i % 4 {
                // Random bytes.
                0 => (0..(r % 200) as usize).map(|_| next() as u8).collect(),
                // A valid frame, truncated.
                1 => valid_frame[..(r as usize % valid_frame.len())].to_vec(),
                // A valid NACK, truncated or bit-flipped.
                2 => valid_nack[..(r as usize % 64)].to_vec(),
                _ => {
                    let mut v = valid_nack.to_vec();
                    v[(r % 8) as usize] ^= 0xFF;
                    v
                }
            };
            if d.is_empty() {
                d.push(0);
            }
            if i % 2 == 0 {
                p.send_raw((r % 4) as u16, &d);
            } else {
                client.send_to(&d, e.nack_addr()).unwrap();
            }
        }
        let body = e.wait_metrics(Duration::from_secs(5), |b| {
            ricochet_e2e::metric_sum(b, "ricochet_dropped_total") >= 1500.0
        });
        let dropped = ricochet_e2e::metric_sum(&body, "ricochet_dropped_total");
        assert!(dropped >= 1500.0, "dropped {dropped}:\n{body}");
        for reason in ["truncated", "bad_magic"] {
            let by_reason: f64 = body
                .lines()
                .filter(|l| l.starts_with(&format!("ricochet_dropped_total{{reason=\"{reason}\"")))
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .sum();
            assert!(by_reason > 0.0, "reason {reason} counted");
        }
        // Still serving.
        publish_flow(&e, 0xAB08, 1);
        let fresh = nack_client();
        let (responses, _) = ask(&fresh, &e, &nack_bytes(0xAB08, 1, 1, 0));
        assert_eq!(
            responses,
            vec![ResponseRepr::ack(1, AckFlags(AckFlags::MULTICAST))],
            "{backend}"
        );
    }
}

#[test]
fn two_workers_each_serve_their_own_flows() {
    let allowed = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if allowed < 2 {
        ricochet_e2e::report_skip(
            "two_workers_each_serve_their_own_flows",
            "needs 2 CPUs in the affinity mask",
        );
        return;
    }
    for backend in BACKENDS {
        let e = Engine::start(&["--cpus", "0,1", "--backend", backend]);
        // Keys 2 and 4 belong to core 0, 3 and 5 to core 1 (low 32 bits mod
        // 2); their frames arrive on whichever core joined their group.
        for key in [2, 3, 4, 5] {
            publish_flow(&e, key, 4);
        }
        let client = nack_client();
        for key in [2, 3, 4, 5] {
            for seq in 1..=4 {
                assert_eq!(ask(&client, &e, &nack_bytes(key, seq, seq, 0)).0.len(), 1);
            }
        }
        let body = e.http("/metrics").unwrap().1;
        let v = |s: &str| ricochet_e2e::metric_value(&body, s).unwrap_or(-1.0);
        // Each core cached and served exactly its own flows.
        assert_eq!(v("ricochet_frames_cached_total{core=\"0\"}"), 8.0, "{backend}\n{body}");
        assert_eq!(v("ricochet_frames_cached_total{core=\"1\"}"), 8.0, "{backend}");
        assert_eq!(v("ricochet_cache_hits_total{core=\"0\"}"), 8.0, "{backend}");
        assert_eq!(v("ricochet_cache_hits_total{core=\"1\"}"), 8.0, "{backend}");
        // Frames crossed to their owner, and the owner was woken for them.
        let m = |name: &str| ricochet_e2e::metric_sum(&body, name);
        assert!(m("ricochet_handoffs_in_total") >= 1.0, "{backend}: some frames crossed cores");
        assert_eq!(m("ricochet_handoffs_in_total"), m("ricochet_handoffs_out_total"));
        assert!(m("ricochet_peer_wakes_total") >= 1.0, "{backend}");
        if *backend == "uring" {
            // Woken by MSG_RING, not by the eventfd fallback.
            assert_eq!(m("ricochet_peer_wake_fallbacks_total"), 0.0);
        }
        // With steering, no NACK had to be forwarded between cores.
        if e.http("/debug/stats").unwrap().1.contains("\"steering\":true") {
            assert_eq!(m("ricochet_nacks_forwarded_total"), 0.0, "{backend}");
        }
    }
}

#[test]
fn sigterm_drains_then_exits_cleanly() {
    let mut e = Engine::start(&["--drain-timeout", "1s"]);
    publish_flow(&e, 0xAB09, 1);
    e.terminate();
    // Draining: not ready, still serving.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while e.http("/readyz").map(|r| r.0).unwrap_or(0) != 503 {
        assert!(std::time::Instant::now() < deadline, "readyz never turned 503 after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = nack_client();
    let (responses, _) = ask(&client, &e, &nack_bytes(0xAB09, 1, 1, 0));
    assert_eq!(responses.len(), 1, "serves while draining");
    let status = e.wait_exit(Duration::from_secs(5)).expect("exits after the drain");
    assert!(status.success(), "{status}");
}

#[test]
fn a_restarted_proxy_reusing_its_hashkey_never_gets_pre_restart_frames_served() {
    for backend in BACKENDS {
        let e = Engine::start(&[
            "--backend",
            backend,
            "--beacon-flags-unicast=true",
            "--rl-ip-burst",
            "100",
            "--proxy-allow",
            "127.0.0.1/32",
        ]);
        let p = Publisher::new(e.listen_port);
        let before: Vec<_> = (1..=50).map(|s| p.send_tx(0xAB10, s, b"epoch one").0).collect();
        e.wait_metrics(Duration::from_secs(10), |b| {
            ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 50.0
        });
        // The proxy restarts: same HashKey, SeqNum from 1 again, new frames.
        let after: Vec<_> = (1..=10).map(|s| p.send_tx(0xAB10, s, b"epoch two!").0).collect();
        // The first of them starts the new epoch; all ten are then cached.
        let body = e.wait_metrics(Duration::from_secs(10), |b| {
            ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 60.0
        });
        assert_eq!(ricochet_e2e::metric_sum(&body, "ricochet_cache_epoch_resets_total"), 1.0);
        let client = nack_client();
        for seq in 1..=50u64 {
            client.send_to(&nack_bytes(0xAB10, seq, seq, 0), e.nack_addr()).unwrap();
        }
        let (responses, frames) = split(drain(&client, Duration::from_millis(400)));
        assert_eq!(responses.len(), 50, "{backend}: every NACK answered");
        for f in &frames {
            assert!(!before.contains(f), "{backend}: a pre-restart frame was served");
            assert!(after.contains(f), "{backend}: an unknown frame was served");
        }
        assert_eq!(frames.len(), 10, "{backend}: the post-restart frames are served");
    }
}

#[test]
fn adverts_announce_the_endpoint_and_turn_draining_on_sigterm() {
    use ricochet_wire::control::{AdvertFlags, AdvertRepr};
    let mut e = Engine::start(&["--instance", "edge-test", "--drain-timeout", "3s"]);
    // ADVERTs go to the beacon group (0xFFFD) at the beacon port (9300 by
    // default, whatever the NACK port; the fixture gives each engine its
    // own, its NACK port); this socket joins that group beside the engine.
    let beacons = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], e.nack_port)).into()).unwrap();
        let group = ricochet_wire::group::ipv4_lab_group(ricochet_wire::group::INDEX_BEACON);
        s.join_multicast_v4(&group, &std::net::Ipv4Addr::LOCALHOST).unwrap();
        UdpSocket::from(s)
    };
    let next_advert = |want_draining: bool| -> AdvertRepr {
        beacons.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 128];
        loop {
            assert!(std::time::Instant::now() < deadline, "no ADVERT (draining={want_draining})");
            let Ok(n) = beacons.recv(&mut buf) else { continue };
            if let Ok(a) = AdvertRepr::parse(&buf[..n])
                && a.flags.has(AdvertFlags::DRAINING) == want_draining
            {
                return a;
            }
        }
    };
    let a = next_advert(false);
    assert_eq!(a.nack_port, e.nack_port);
    assert_eq!(a.nack_addr, std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped());
    assert_eq!(a.interval_secs, 1);
    assert!(a.flags.has(AdvertFlags::MULTICAST_RETRANSMIT));
    assert!(!a.flags.has(AdvertFlags::HAS_PARENT | AdvertFlags::UNICAST_RETRANSMIT));
    assert_eq!(a.instance_id, ricochet_wire::crc32c::crc32c(b"edge-test"));
    e.terminate();
    let draining = next_advert(true);
    assert_eq!(draining.instance_id, a.instance_id);
    assert!(e.wait_exit(Duration::from_secs(8)).is_some_and(|s| s.success()));
}

/// A round that queues more answers than the io_uring worker holds back
/// hands them to the kernel in parts, before the round ends
/// (`ricochet_uring_early_submits_total`): every frame and every ACK still
/// arrives, frames in SeqNum order, each ACK after its frame. Epoll sends
/// after every receive batch and must give the same.
#[test]
fn a_long_round_sends_in_parts_and_loses_or_reorders_nothing() {
    // Without min_wait (Linux 6.12) a round ends at its first completion,
    // and the two NACKs below seldom share one.
    let batched = ricochet_e2e::kernel_at_least(6, 12);
    for backend in BACKENDS {
        let e = Engine::start(&[
            "--backend",
            backend,
            // Long enough that both NACKs land in one round.
            "--uring-batch-wait",
            "10ms",
            "--beacon-flags-unicast=true",
            "--beacon-flags-multicast=false",
            "--proxy-allow",
            "127.0.0.1/32",
            "--rl-group-burst",
            "10000",
        ]);
        let client = nack_client();
        let mut early = 0.0;
        // The NACKs of an attempt could straddle a round boundary (a
        // window of microseconds in 10 ms): up to three tries, each on a
        // flow of its own so no earlier answer is in the way.
        for key in 0xAB10..0xAB13u64 {
            publish_flow(&e, key, 66);
            // 64 frames and 64 ACKs: the first NACK alone queues 128
            // answers, with the second still to serve.
            client.send_to(&nack_bytes(key, 1, 64, 0), e.nack_addr()).unwrap();
            client.send_to(&nack_bytes(key, 65, 66, 0), e.nack_addr()).unwrap();
            let mut order = Vec::new();
            for d in drain(&client, Duration::from_millis(600)) {
                match ResponseRepr::parse(&d) {
                    Ok(r) => {
                        assert!(matches!(r.kind, ResponseKind::Ack(_)), "{backend}: {r:?}");
                        order.push((false, r.seq));
                    }
                    Err(_) => {
                        let f = Frame::new_checked(&d[..]).expect("neither an answer nor a frame");
                        order.push((true, f.seq()));
                    }
                }
            }
            let seqs = |frames: bool| -> Vec<u64> {
                order.iter().filter(|o| o.0 == frames).map(|o| o.1).collect()
            };
            assert_eq!(seqs(true), (1..=66).collect::<Vec<_>>(), "{backend}: frames");
            assert_eq!(seqs(false), (1..=66).collect::<Vec<_>>(), "{backend}: ACKs");
            for (at, &(frame, seq)) in order.iter().enumerate() {
                if !frame {
                    assert!(
                        order[..at].contains(&(true, seq)),
                        "{backend}: the ACK of {seq} came before its frame"
                    );
                }
            }
            early = e.metric_sum("ricochet_uring_early_submits_total");
            if early >= 1.0 || *backend == "epoll" || !batched {
                break;
            }
        }
        if *backend == "uring" && batched {
            assert!(early >= 1.0, "the round's answers left in one part");
        } else if *backend == "epoll" {
            assert_eq!(early, 0.0);
        }
    }
}

/// The batch wait each io_uring worker waits with is exported per core:
/// the configured one while the worker is quiet (it shortens only above
/// 32 datagrams per wait), 0 on epoll.
#[test]
fn batch_wait_is_exported_per_core() {
    // min_wait_usec needs Linux 6.12; older kernels ignore the flag, and
    // the gauge says so with 0.
    let supported = ricochet_e2e::kernel_at_least(6, 12);
    for (backend, wait, want) in [
        ("uring", "300us", if supported { 300.0 } else { 0.0 }),
        ("uring", "0", 0.0),
        ("epoll", "300us", 0.0),
    ] {
        let e = Engine::start(&["--backend", backend, "--uring-batch-wait", wait]);
        publish_flow(&e, 7, 2);
        let client = nack_client();
        assert_eq!(ask(&client, &e, &nack_bytes(7, 1, 1, 0)).0.len(), 1, "{backend}");
        let series = "ricochet_uring_batch_wait_microseconds{core=\"0\"}";
        let body = e.wait_metrics(Duration::from_secs(5), |b| {
            ricochet_e2e::metric_value(b, series) == Some(want)
        });
        assert_eq!(
            ricochet_e2e::metric_value(&body, series),
            Some(want),
            "{backend} --uring-batch-wait {wait}\n{body}"
        );
    }
}
