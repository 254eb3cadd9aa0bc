//! Replies leave from the address the NACK was sent to (issue 13 item 7),
//! on a NACK socket bound to the wildcard address: the engine reads each
//! NACK's local address from IP_PKTINFO / IPV6_PKTINFO and sends the ACK,
//! MISS and unicast retransmit from it. Without that, on a multihomed host
//! the kernel picks the source by route, and a listener that NACKed one
//! address sees answers from another.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use ricochet_e2e::netns::Netns;
use ricochet_e2e::{Engine, Publisher, nack_for};
use ricochet_wire::control::{AckFlags, ResponseKind, ResponseRepr};

const BACKENDS: [&str; 2] = ["epoll", "uring"];
const HASH_KEY: u64 = 0x50C1_0001;

/// An endpoint on `backend` sending unicast copies of frames (to sources
/// `extra` allows to proxy: a copy may then exceed three times the NACK).
fn start(backend: &str, extra: &[&str]) -> Engine {
    Engine::start(&[&["--backend", backend, "--beacon-flags-unicast=true"][..], extra].concat())
}

/// Every datagram `client` receives until a quiet spell, with its source.
fn drain_from(client: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
    client.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65_536];
    while let Ok((n, src)) = client.recv_from(&mut buf) {
        out.push((buf[..n].to_vec(), src));
    }
    out
}

/// Publishes one frame of [`HASH_KEY`] (seq 1) and waits for it to be
/// cached; returns its bytes.
fn publish_one(e: &Engine) -> Vec<u8> {
    let (frame, _) = Publisher::new(e.listen_port).send_tx(HASH_KEY, 1, b"from where?");
    let body = e.wait_metrics(Duration::from_secs(10), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 1.0
    });
    assert_eq!(ricochet_e2e::metric_sum(&body, "ricochet_frames_cached_total"), 1.0);
    frame
}

/// NACKs sent from `client` to each of `locals` (port `nack_port`): the
/// hit (frame by unicast and its ACK, one GSO send) and the miss (MISS)
/// both come back from the address the NACK went to.
fn every_reply_from_the_nacked_address(
    client: &UdpSocket,
    locals: &[IpAddr],
    nack_port: u16,
    frame: &[u8],
    what: &str,
) {
    for &local in locals {
        let to = SocketAddr::new(local, nack_port);
        client.send_to(&nack_for(HASH_KEY, 1, 0), to).unwrap();
        let got = drain_from(client);
        assert_eq!(got.len(), 2, "{what}: frame and ACK for a NACK to {to}: {got:?}");
        assert!(got.iter().any(|(d, _)| d == frame), "{what}: the frame, to {to}");
        let ack = ResponseRepr::ack(1, AckFlags(AckFlags::MULTICAST | AckFlags::UNICAST));
        assert!(got.iter().any(|(d, _)| ResponseRepr::parse(d) == Ok(ack)), "{what}: ACK");
        for (_, src) in &got {
            assert_eq!(*src, to, "{what}: a reply to a NACK sent to {to} came from {src}");
        }
        client.send_to(&nack_for(HASH_KEY + 1, 1, 0), to).unwrap();
        let got = drain_from(client);
        assert_eq!(got.len(), 1, "{what}: one MISS for a NACK to {to}: {got:?}");
        let miss = ResponseRepr::parse(&got[0].0).expect("a response");
        assert_eq!(miss.kind, ResponseKind::Miss, "{what}");
        assert_eq!(got[0].1, to, "{what}: the MISS to a NACK sent to {to} came from {}", got[0].1);
    }
}

/// 127.0.0.2 and 127.0.0.3 are loopback addresses like 127.0.0.1, but the
/// kernel answers 127.0.0.1 from 127.0.0.1 unless told otherwise.
#[test]
fn replies_leave_from_the_ipv4_address_the_nack_was_sent_to() {
    let locals: Vec<IpAddr> =
        [[127, 0, 0, 2], [127, 0, 0, 1], [127, 0, 0, 3]].map(|a| Ipv4Addr::from(a).into()).into();
    for backend in BACKENDS {
        let e = start(backend, &["--proxy-allow", "127.0.0.1/32"]);
        let frame = publish_one(&e);
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        every_reply_from_the_nacked_address(&client, &locals, e.nack_port, &frame, backend);
    }
}

/// A dual-stack NACK socket (`--nack-addr ::`) in a namespace whose
/// loopback holds fd00::1 and fd00::2: IPv6 NACKs are answered from the
/// IPv6 address they were sent to, IPv4 ones (v4-mapped on the socket)
/// from theirs.
#[test]
fn replies_leave_from_the_ipv6_address_the_nack_was_sent_to() {
    let Some(ns) = Netns::create("replies_leave_from_the_ipv6_address_the_nack_was_sent_to") else {
        return;
    };
    ns.addr("lo", "fd00::1/128");
    ns.addr("lo", "fd00::2/128");
    for backend in BACKENDS {
        ns.run(move || {
            let e =
                start(backend, &["--nack-addr", "::", "--proxy-allow", "127.0.0.1/32,fd00::1/128"]);
            let frame = publish_one(&e);
            let six: Vec<IpAddr> = ["fd00::2", "fd00::1"].map(|a| a.parse().unwrap()).into();
            let client = UdpSocket::bind("[fd00::1]:0").unwrap();
            every_reply_from_the_nacked_address(&client, &six, e.nack_port, &frame, backend);
            let four: Vec<IpAddr> = ["127.0.0.2", "127.0.0.1"].map(|a| a.parse().unwrap()).into();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            every_reply_from_the_nacked_address(&client, &four, e.nack_port, &frame, backend);
        });
    }
}
