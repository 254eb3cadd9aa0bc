//! Adversarial input on the data and NACK ports, on every backend: a frame
//! sent straight to the data port as unicast is refused before it reaches
//! the cache (`ricochet_dropped_total{reason="not_multicast"}`), while the
//! same frame multicast to its group is cached and served; a datagram too
//! long for its socket is `too_long` whichever backend reads it. With
//! `--ingress-allow`, multicast frames from any other source are refused
//! the same way (`source_not_allowed`): a stranger on an any-source fabric
//! can neither add a flow nor reset one.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use ricochet_e2e::{Engine, Publisher, drain, group_listener, nack_client, nack_for, tx_frame};
use ricochet_wire::control::{AckFlags, ResponseRepr};

/// Backends every test runs on (`--backend`).
const BACKENDS: &[&str] = &["epoll", "uring"];

/// `ricochet_dropped_total{reason=…}` summed over cores.
fn dropped(body: &str, reason: &str) -> f64 {
    let prefix = format!("ricochet_dropped_total{{reason=\"{reason}\",");
    body.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// What one NACK for `(hash_key, seq)` brings back: (responses, frames).
/// Every NACK here is answered (ACK or MISS), so the first datagram is
/// waited for generously (a loaded machine is slow), the rest until a
/// short silence.
fn ask(e: &Engine, hash_key: u64, seq: u64) -> (Vec<ResponseRepr>, Vec<Vec<u8>>) {
    let client = nack_client();
    client.send_to(&nack_for(hash_key, seq, 0), e.nack_addr()).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut first = vec![0u8; 65_536];
    let n = client.recv(&mut first).expect("the NACK is answered");
    first.truncate(n);
    let mut responses = Vec::new();
    let mut frames = Vec::new();
    for d in std::iter::once(first).chain(drain(&client, Duration::from_millis(400))) {
        match ResponseRepr::parse(&d) {
            Ok(r) => responses.push(r),
            Err(_) => frames.push(d),
        }
    }
    (responses, frames)
}

#[test]
fn unicast_to_the_data_port_is_refused_and_multicast_is_cached() {
    for backend in BACKENDS {
        let e = Engine::start(&["--backend", backend]);
        let key = 0xAD01;
        let frame = tx_frame(key, 1, b"forged?");
        // Straight to the data port, as anyone who can reach it could.
        let forger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let data_port = SocketAddr::from((Ipv4Addr::LOCALHOST, e.listen_port));
        forger.send_to(&frame, data_port).unwrap();
        let body = e.wait_metrics(Duration::from_secs(10), |b| dropped(b, "not_multicast") >= 1.0);
        assert_eq!(dropped(&body, "not_multicast"), 1.0, "{backend}: unicast counted\n{body}");
        assert_eq!(
            ricochet_e2e::metric_sum(&body, "ricochet_frames_cached_total"),
            0.0,
            "{backend}: nothing cached"
        );
        // Refused before parsing: not counted as malformed either.
        assert_eq!(ricochet_e2e::metric_sum(&body, "ricochet_fabric_malformed_total"), 0.0);
        let (responses, frames) = ask(&e, key, 1);
        assert_eq!(
            responses,
            vec![ResponseRepr::miss()],
            "{backend}: the forged frame is not served"
        );
        assert!(frames.is_empty(), "{backend}");

        // The same bytes, multicast to their group: cached and served.
        let group = ricochet_wire::group::shard_index(frame[8..40].try_into().unwrap(), 2).unwrap();
        Publisher::new(e.listen_port).send_raw(group, &frame);
        let body = e.wait_metrics(Duration::from_secs(10), |b| {
            ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 1.0
        });
        assert_eq!(
            ricochet_e2e::metric_sum(&body, "ricochet_frames_cached_total"),
            1.0,
            "{backend}: multicast frame cached\n{body}"
        );
        assert_eq!(dropped(&body, "not_multicast"), 1.0, "{backend}: multicast not refused");
        let (responses, _) = ask(&e, key, 1);
        assert_eq!(
            responses,
            vec![ResponseRepr::ack(1, AckFlags(AckFlags::MULTICAST))],
            "{backend}: the multicast frame is served"
        );
    }
}

/// The NACK socket reads a datagram into a 64 KiB slot on epoll and into a
/// few-hundred-byte provided buffer on io_uring, which truncates it: both
/// must say `too_long`, and count it as a NACK datagram.
#[test]
fn oversized_datagrams_get_the_same_label_on_every_backend() {
    let mut seen = Vec::new();
    for backend in BACKENDS {
        let e = Engine::start(&["--backend", backend]);
        let mut big = vec![0u8; 1000];
        big[..64].copy_from_slice(&nack_for(0xAD02, 1, 0));
        nack_client().send_to(&big, e.nack_addr()).unwrap();
        let body = e.wait_metrics(Duration::from_secs(10), |b| {
            dropped(b, "too_long") + dropped(b, "length_mismatch") >= 1.0
        });
        let labels: Vec<(&str, f64)> = ["too_long", "length_mismatch", "truncated"]
            .into_iter()
            .map(|r| (r, dropped(&body, r)))
            .collect();
        let nacks = ricochet_e2e::metric_sum(&body, "ricochet_nack_datagrams_total");
        seen.push((*backend, labels, nacks));
    }
    for (backend, labels, nacks) in &seen {
        assert_eq!(
            labels,
            &[("too_long", 1.0), ("length_mismatch", 0.0), ("truncated", 0.0)],
            "{backend}: {seen:?}"
        );
        assert_eq!(*nacks, 1.0, "{backend}: {seen:?}");
    }
}

/// On an any-source fabric three conflicting frames from a stranger would
/// confirm a "restart" of the flow and replace its frames. With the
/// publisher's address in `--ingress-allow`, the stranger's frames (127.0.0.2
/// here, another host) are dropped before parsing: the flow keeps its
/// frames, the stranger's own flow is never cached, nothing is reset.
#[test]
fn with_ingress_allow_a_strangers_multicast_frames_change_nothing() {
    for backend in BACKENDS {
        let e = Engine::start(&["--backend", backend, "--ingress-allow", "127.0.0.1/32"]);
        let genuine = Publisher::new(e.listen_port);
        let stranger = Publisher::from_address(Ipv4Addr::new(127, 0, 0, 2), e.listen_port);
        let (flow, strangers_flow) = (0xAD11, 0xAD12);
        let sent: Vec<_> = (1..=3).map(|seq| genuine.send_tx(flow, seq, b"genuine")).collect();
        let cached = |b: &str| ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total");
        e.wait_metrics(Duration::from_secs(10), |b| cached(b) >= 3.0);
        for seq in 1..=3 {
            stranger.send_tx(flow, seq, b"a stranger's restart");
        }
        stranger.send_tx(strangers_flow, 1, b"a stranger's flow");
        let body =
            e.wait_metrics(Duration::from_secs(10), |b| dropped(b, "source_not_allowed") >= 4.0);
        assert_eq!(dropped(&body, "source_not_allowed"), 4.0, "{backend}\n{body}");
        assert_eq!(cached(&body), 3.0, "{backend}: only the publisher's frames");
        assert_eq!(
            ricochet_e2e::metric_sum(&body, "ricochet_cache_epoch_candidates_total"),
            0.0,
            "{backend}: not even evidence of a restart"
        );
        for (seq, (bytes, group)) in (1..=3).zip(&sent) {
            let listener = group_listener(*group, e.egress_port);
            let (responses, _) = ask(&e, flow, seq);
            let multicast = AckFlags(AckFlags::MULTICAST);
            assert_eq!(responses, [ResponseRepr::ack(seq, multicast)], "{backend} seq {seq}");
            let got = drain(&listener, Duration::from_millis(500));
            assert_eq!(
                got,
                std::slice::from_ref(bytes),
                "{backend} seq {seq}: the publisher's bytes"
            );
        }
        let (responses, _) = ask(&e, strangers_flow, 1);
        assert_eq!(responses, [ResponseRepr::miss()], "{backend}: the stranger's flow");
        assert_eq!(e.metric_sum("ricochet_cache_epoch_resets_total"), 0.0, "{backend}");
    }
}
