//! UDP GSO fallback end to end (issue 13 item 7): frames bigger than the
//! path MTU, retransmitted by unicast with their ACK. Merged into one GSO
//! send, such a segment exceeds the route's MTU and the kernel refuses the
//! send with EINVAL; the engine must send those datagrams one by one and
//! keep GSO only for segments that fit. Inside a network namespace this
//! test creates, whose loopback MTU is lowered below the frames' size
//! (without GSO the kernel fragments them, as it does on the fabric).
//! Needs root and `ip` (iproute2); otherwise reported as skipped.

use std::time::Duration;

use ricochet_e2e::netns::Netns;
use ricochet_e2e::{Engine, Publisher, drain, nack_client, nack_for};
use ricochet_wire::control::{AckFlags, ResponseRepr};

/// Loopback's MTU in the namespace.
const MTU: &str = "1280";
/// Payload bytes per frame: with the frame header, over [`MTU`].
const PAYLOAD: usize = 1_400;
const FRAMES: u64 = 5;
const HASH_KEY: u64 = 0x6501_0F00;
/// Unicast copies of frames to the NACK's source, which may exceed three
/// times the NACK's size only for a source allowed to proxy.
const UNICAST_COPIES: [&str; 3] = ["--beacon-flags-unicast=true", "--proxy-allow", "127.0.0.1/32"];

#[test]
fn frames_over_the_path_mtu_reach_every_nack() {
    let Some(ns) = Netns::create("frames_over_the_path_mtu_reach_every_nack") else { return };
    ns.ip(&["link", "set", "lo", "mtu", MTU]);
    for backend in ["epoll", "uring"] {
        ns.run(move || every_nack_gets_its_frame(backend));
    }
}

fn every_nack_gets_its_frame(backend: &str) {
    let mut e = Engine::start(&[&["--backend", backend][..], &UNICAST_COPIES].concat());
    let p = Publisher::new(e.listen_port);
    let frames: Vec<Vec<u8>> =
        (1..=FRAMES).map(|seq| p.send_tx(HASH_KEY, seq, &[seq as u8; PAYLOAD]).0).collect();
    assert!(frames.iter().all(|f| f.len() > 1280), "frames over the MTU");
    let body = e.wait_metrics(Duration::from_secs(10), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= FRAMES as f64
    });
    assert_eq!(
        ricochet_e2e::metric_sum(&body, "ricochet_frames_cached_total"),
        FRAMES as f64,
        "{backend}: frames not cached:\n{body}"
    );
    let client = nack_client();
    let flags = AckFlags(AckFlags::MULTICAST | AckFlags::UNICAST);
    for (seq, frame) in (1..=FRAMES).zip(&frames) {
        client.send_to(&nack_for(HASH_KEY, seq, 0), e.nack_addr()).unwrap();
        let got = drain(&client, Duration::from_millis(400));
        let acks: Vec<_> = got.iter().filter_map(|d| ResponseRepr::parse(d).ok()).collect();
        if acks != [ResponseRepr::ack(seq, flags)] {
            let body = e.http("/metrics").map(|r| r.1).unwrap_or_default();
            panic!("{backend}: NACK {seq} answered {acks:?}:\n{body}");
        }
        assert!(
            got.contains(frame),
            "{backend}: NACK {seq} got no frame ({} datagrams)",
            got.len()
        );
    }
    // The flow's owner learned from the first refusal: later frames and
    // their ACKs left one datagram per send without asking the kernel.
    let body = e.http("/metrics").unwrap().1;
    let sum = |name| ricochet_e2e::metric_sum(&body, name);
    assert_eq!(sum("ricochet_gso_fallbacks_total"), 1.0, "{backend}:\n{body}");
    assert_eq!(sum("ricochet_send_errors_total"), 0.0, "{backend}");
    // Said once, with what the worker does about it.
    let logs = e.kill_and_logs();
    let said: Vec<&str> = logs.lines().filter(|l| l.contains("refused a UDP GSO send")).collect();
    assert_eq!(said.len(), 1, "{backend}:\n{logs}");
    assert!(said[0].contains("WARN") && said[0].contains("MTU is 1280"), "{backend}: {}", said[0]);
}
