//! Cross-domain recovery over IPv6: the scenario of `recovery.rs` with
//! BRC-129 site groups, in two network namespaces this test creates and
//! removes. Needs root and `ip` (iproute2); otherwise reported as skipped
//! ([`Netns::create`]).
//!
//! ```text
//!  namespace A: domain A, group id 0x0A0A   namespace B: domain B, group id 0x0B0B
//!
//!  publisher a1 ──veth── a0 endpoint U       endpoint D b0 ──veth── b1 listener
//!  fd0a::2               fd0a::1  │          fd0b::1  │             fd0b::2
//!                          bridge: taps a0 ─────────────────────▶ sends from b1
//!                                 │                   │
//!                        ab0 fd0c::1 ─────veth───── ab1 fd0c::2
//!                        (unicast only: D's Proxied NACKs to U and U's answers)
//! ```
//!
//! Each domain has its own group id and data port, so no frame of A could
//! reach B except through the bridge even on one link; the namespaces make
//! that structural, and put U's NACK address a routed hop away from D.

use std::collections::BTreeSet;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ricochet_e2e::netns::Netns;
use ricochet_e2e::{Engine, Ports, metric_sum, ports, tx_frame};
use ricochet_wire::control::{AckFlags, NackFlags, NackRepr, ResponseRepr};
use ricochet_wire::frame::Frame;
use ricochet_wire::group::{Scope, SourceMode, ipv6_group, shard_index};
use socket2::{Domain, Protocol, Socket, Type};

const FLOW: u64 = 0x00C0_FFEE;
const FRAMES: u64 = 200;
/// The bridge drops every 50th SeqNum: 2 %, the same frames every run.
const DROP_EVERY: u64 = 50;
const GROUP_ID_A: u16 = 0x0A0A;
const GROUP_ID_B: u16 = 0x0B0B;
/// The shard groups of 2 shard bits (the default), then block broadcast.
const INDICES: [u16; 5] = [0, 1, 2, 3, 0xFFFE];
/// Bound on every wait. Each should end in milliseconds; only a hang or a
/// lost datagram runs into this.
const PATIENCE: Duration = Duration::from_secs(20);

/// U's NACK and admin address (a0).
const U_IP: Ipv6Addr = Ipv6Addr::new(0xfd0a, 0, 0, 0, 0, 0, 0, 1);
/// The publisher (a1).
const PUBLISHER_IP: Ipv6Addr = Ipv6Addr::new(0xfd0a, 0, 0, 0, 0, 0, 0, 2);
/// D's NACK and admin address (b0); its Proxied NACKs come from here.
const D_IP: Ipv6Addr = Ipv6Addr::new(0xfd0b, 0, 0, 0, 0, 0, 0, 1);
/// The bridge's sending side and B's listener (b1).
const B_FAR_IP: Ipv6Addr = Ipv6Addr::new(0xfd0b, 0, 0, 0, 0, 0, 0, 2);

#[test]
fn gaps_caused_by_the_bridge_fill_through_the_upstream_over_ipv6() {
    let test = "gaps_caused_by_the_bridge_fill_through_the_upstream_over_ipv6";
    let Some(ns) = Namespaces::create(test) else { return };
    for backend in ["epoll", "uring"] {
        ns.b.run(|| two_domains(&ns.a, backend));
    }
}

/// Runs in namespace B (where the listener lives); what belongs to domain A
/// is opened in namespace `a_ns` and handed back.
fn two_domains(a_ns: &Netns, backend: &'static str) {
    let (pu, pd) = (ports(), ports());

    // U serves domain A. Its admin port is on its NACK address, which B
    // reaches through the routed link, so this thread can scrape it.
    let u_args = strings(&[
        "--mc-iface",
        "a0",
        "--egress-iface",
        "a0",
        "--nack-addr",
        &U_IP.to_string(),
        "--mc-group-id",
        &format!("{GROUP_ID_A:#06x}"),
        "--backend",
        backend,
        // D proxies through U: U must allow it.
        "--proxy-allow",
        &format!("{D_IP}/128"),
    ]);
    let u_admin = SocketAddr::from((U_IP, pu.admin));
    let upstream = a_ns.run(move || Engine::launch(&[], &u_args, pu, u_admin));

    // D serves domain B, recovering from U; its retransmits go to B's data
    // port, where B's listener listens. The listener sends its NACKs back to
    // back, so the per-IP bucket (not under test) gets room for all of them.
    let d_ports = Ports { egress: pd.listen, ..pd };
    let d_args = strings(&[
        "--mc-iface",
        "b0",
        "--egress-iface",
        "b0",
        "--nack-addr",
        &D_IP.to_string(),
        "--mc-group-id",
        &format!("{GROUP_ID_B:#06x}"),
        "--backend",
        backend,
        "--proxy-enabled",
        "--upstream-retry-endpoints",
        &SocketAddrV6::new(U_IP, upstream.nack_port, 0, 0).to_string(),
        "--rl-ip-burst",
        "100",
    ]);
    let downstream = Engine::launch(&[], &d_args, d_ports, SocketAddr::from((D_IP, pd.admin)));

    // B's listener: every frame that reaches B's groups, bridged or
    // retransmitted.
    let b1 = ifindex("b1");
    let listener: Vec<UdpSocket> =
        INDICES[..4].iter().map(|&i| group_socket(group(GROUP_ID_B, i), pd.listen, b1)).collect();

    // The bridge taps A's segment at U's side and sends into B from b1.
    let taps = a_ns.run(move || {
        let a0 = ifindex("a0");
        INDICES
            .iter()
            .map(|&i| group_socket(group(GROUP_ID_A, i), pu.listen, a0))
            .collect::<Vec<_>>()
    });
    let bridge = bridge(taps, multicast_sender(B_FAR_IP, b1), pd.listen);

    let publisher = a_ns.run(|| multicast_sender(PUBLISHER_IP, ifindex("a1")));
    for seq in 1..=FRAMES {
        let frame = tx_frame(FLOW, seq, &seq.to_be_bytes());
        let index = shard_index(frame[8..40].try_into().unwrap(), 2).unwrap();
        publisher
            .send_to(&frame, SocketAddrV6::new(group(GROUP_ID_A, index), pu.listen, 0, 0))
            .unwrap();
    }
    let bridged = bridge.join().unwrap();
    assert_eq!(
        bridged.dropped.len() + bridged.forwarded.len(),
        FRAMES as usize,
        "{backend}: the bridge saw every frame published in A"
    );
    assert!(!bridged.dropped.is_empty(), "the bridge dropped some frames");
    let body = upstream
        .wait_metrics(PATIENCE, |b| metric_sum(b, "ricochet_frames_cached_total") >= FRAMES as f64);
    assert_eq!(
        metric_sum(&body, "ricochet_frames_cached_total"),
        FRAMES as f64,
        "{backend}: U cached every frame of domain A"
    );

    // What reached B is exactly what the bridge forwarded.
    let mut have = BTreeSet::new();
    let deadline = Instant::now() + PATIENCE;
    while !bridged.forwarded.is_subset(&have) && Instant::now() < deadline {
        collect(&listener, &mut have);
    }
    let gaps: Vec<u64> = (1..=FRAMES).filter(|s| !have.contains(s)).collect();
    assert_eq!(
        gaps,
        bridged.dropped.iter().copied().collect::<Vec<_>>(),
        "{backend}: B's gaps are the bridge's drops"
    );
    let n = gaps.len() as f64;

    // The listener NACKs each gap to D: MISS at once, then the recovered
    // frame arrives on B's group.
    let client = UdpSocket::bind(SocketAddr::from((B_FAR_IP, 0))).unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let d_nack = SocketAddr::from((D_IP, downstream.nack_port));
    let ask = |seq: u64, flags: u8| {
        client.send_to(&nack(seq, flags), d_nack).unwrap();
        let mut buf = [0u8; 64];
        let len = client.recv(&mut buf).expect("D answers every NACK");
        ResponseRepr::parse(&buf[..len])
    };
    for &seq in &gaps {
        assert_eq!(ask(seq, 0), Ok(ResponseRepr::miss()), "{backend}: D lacks {seq}");
    }
    let deadline = Instant::now() + PATIENCE;
    while gaps.iter().any(|s| !have.contains(s)) && Instant::now() < deadline {
        collect(&listener, &mut have);
    }
    let unfilled: Vec<_> = gaps.iter().filter(|s| !have.contains(s)).collect();
    assert!(
        unfilled.is_empty(),
        "{backend}: unfilled gaps {unfilled:?}\nD:\n{}\nU:\n{}",
        downstream.http("/metrics").map(|r| r.1).unwrap_or_default(),
        upstream.http("/metrics").map(|r| r.1).unwrap_or_default()
    );
    let d = downstream.wait_metrics(PATIENCE, |b| {
        metric_sum(b, "ricochet_recovery_recovered_total") >= n
            && metric_sum(b, "ricochet_frames_recovered_total") >= n
    });
    assert_eq!(metric_sum(&d, "ricochet_recovery_recovered_total"), n, "{backend}");
    assert_eq!(metric_sum(&d, "ricochet_frames_recovered_total"), n, "{backend}");
    let u = upstream.wait_metrics(PATIENCE, |b| metric_sum(b, "ricochet_nacks_proxied_total") >= n);
    assert_eq!(metric_sum(&u, "ricochet_nacks_proxied_total"), n, "{backend}: one fetch per gap");

    // NACK every gap again: D now has them and retransmits from its cache.
    for &seq in &gaps {
        assert_eq!(
            ask(seq, 0),
            Ok(ResponseRepr::ack(seq, AckFlags(AckFlags::MULTICAST))),
            "{backend}: D serves recovered {seq} itself"
        );
    }

    // A Proxied NACK to D for a frame it lacks is answered, never forwarded.
    // Then a sentinel: a plain NACK for another missing frame, which D does
    // forward, from the same socket. Once U has counted the sentinel it has
    // counted anything D sent before it, so the totals below are final
    // without waiting for an absence.
    assert_eq!(ask(FRAMES + 50, NackFlags::PROXIED), Ok(ResponseRepr::miss()), "{backend}");
    assert_eq!(ask(FRAMES + 60, 0), Ok(ResponseRepr::miss()), "{backend}");
    let u = upstream
        .wait_metrics(PATIENCE, |b| metric_sum(b, "ricochet_nacks_proxied_total") >= n + 1.0);
    assert_eq!(
        metric_sum(&u, "ricochet_nacks_proxied_total"),
        n + 1.0,
        "{backend}: one Proxied NACK per gap and the sentinel's, no repeats"
    );
    assert_eq!(
        metric_sum(&u, "ricochet_nack_datagrams_total"),
        n + 1.0,
        "{backend}: the Proxied NACK sent to D was not forwarded upstream"
    );
    let d = downstream
        .wait_metrics(PATIENCE, |b| metric_sum(b, "ricochet_recovery_failed_total") >= 1.0);
    assert_eq!(
        metric_sum(&d, "ricochet_recovery_queued_total"),
        n + 1.0,
        "{backend}: D queued a recovery per gap and for the sentinel, none for the Proxied NACK"
    );
    assert_eq!(metric_sum(&d, "ricochet_recovery_failed_total"), 1.0, "{backend}: the sentinel");
    eprintln!("{backend}: gaps {gaps:?} filled in B through U");
}

/// What the bridge did with domain A's frames, by SeqNum.
#[derive(Debug)]
struct Bridged {
    dropped: BTreeSet<u64>,
    forwarded: BTreeSet<u64>,
}

/// Forwards every frame heard on `taps` to the same group index in domain
/// B (`b_port`), dropping each SeqNum divisible by [`DROP_EVERY`]; returns
/// once every SeqNum of [`FLOW`] was seen (or [`PATIENCE`] ran out).
fn bridge(taps: Vec<UdpSocket>, out: UdpSocket, b_port: u16) -> JoinHandle<Bridged> {
    std::thread::spawn(move || {
        let mut b = Bridged { dropped: BTreeSet::new(), forwarded: BTreeSet::new() };
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 65_536];
        for t in &taps {
            t.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        }
        while ((b.dropped.len() + b.forwarded.len()) as u64) < FRAMES && Instant::now() < deadline {
            for t in &taps {
                while let Ok(len) = t.recv(&mut buf) {
                    let Ok(f) = Frame::new_checked(&buf[..len]) else { continue };
                    if f.hash_key() != FLOW {
                        continue;
                    }
                    if f.seq() % DROP_EVERY == 0 {
                        b.dropped.insert(f.seq());
                        continue;
                    }
                    let index = shard_index(f.id(), 2).unwrap();
                    let to = SocketAddrV6::new(group(GROUP_ID_B, index), b_port, 0, 0);
                    out.send_to(&buf[..len], to).expect("bridge into B");
                    b.forwarded.insert(f.seq());
                }
            }
        }
        b
    })
}

/// Adds the SeqNums of [`FLOW`] waiting on `sockets` to `have`.
fn collect(sockets: &[UdpSocket], have: &mut BTreeSet<u64>) {
    let mut buf = [0u8; 65_536];
    for s in sockets {
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        while let Ok(len) = s.recv(&mut buf) {
            if let Ok(f) = Frame::new_checked(&buf[..len])
                && f.hash_key() == FLOW
            {
                have.insert(f.seq());
            }
        }
    }
}

fn nack(seq: u64, flags: u8) -> [u8; 64] {
    let mut b = [0u8; 64];
    NackRepr {
        flags: NackFlags(flags),
        hash_key: FLOW,
        start_seq: seq,
        end_seq: seq,
        subtree_id: [0x20; 32],
    }
    .emit(&mut b)
    .unwrap();
    b
}

fn group(group_id: u16, index: u16) -> Ipv6Addr {
    ipv6_group(SourceMode::Asm, Scope::Site, group_id, index).unwrap()
}

/// A socket on `port` joined to `group` on interface `ifindex` only
/// (MULTICAST_ALL off: other groups joined on the host stay out).
fn group_socket(group: Ipv6Addr, port: u16, ifindex: u32) -> UdpSocket {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_only_v6(true).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_multicast_all_v6(false).unwrap();
    // A whole run's frames fit even if this socket is read late.
    let _ = s.set_recv_buffer_size(1 << 20);
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into()).unwrap();
    s.join_multicast_v6(&group, ifindex).unwrap();
    s.into()
}

/// A socket sending multicast out of `ifindex` from `source`.
fn multicast_sender(source: Ipv6Addr, ifindex: u32) -> UdpSocket {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_multicast_if_v6(ifindex).unwrap();
    s.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    s.into()
}

fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("interface {name}: {e}"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Domain A's and domain B's namespaces, wired as in the module diagram;
/// both are deleted on drop, so a failing run leaves nothing behind.
#[derive(Debug)]
struct Namespaces {
    a: Netns,
    b: Netns,
}

impl Namespaces {
    /// `None` (reported as skipped) where namespaces cannot be made.
    fn create(test: &str) -> Option<Namespaces> {
        let (a, b) = (Netns::create(test)?, Netns::create(test)?);
        a.veth("a0", "a1");
        b.veth("b0", "b1");
        a.veth_to("ab0", &b, "ab1");
        a.addr("a0", "fd0a::1/64");
        a.addr("a1", "fd0a::2/64");
        a.addr("ab0", "fd0c::1/64");
        b.addr("b0", "fd0b::1/64");
        b.addr("b1", "fd0b::2/64");
        b.addr("ab1", "fd0c::2/64");
        a.route6("fd0b::/64", "fd0c::2", "ab0");
        b.route6("fd0a::/64", "fd0c::1", "ab1");
        Some(Namespaces { a, b })
    }
}
