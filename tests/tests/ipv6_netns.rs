//! IPv6 multicast end to end, inside a network namespace this test creates
//! and removes: an engine on one end of a veth pair joins the BRC-129 site
//! groups (ff05::b:i), a publisher and a listener on the other end.
//! Needs root and `ip` (iproute2); otherwise reported as skipped
//! ([`Netns::create`]).

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::process::Command;
use std::time::Duration;

use ricochet_e2e::netns::Netns;
use ricochet_e2e::{Engine, drain, ports, tx_frame};
use ricochet_wire::control::{AckFlags, NackFlags, NackRepr, ResponseRepr};
use ricochet_wire::group::{Scope, SourceMode, ipv6_group, shard_index};
use socket2::{Domain, Protocol, Socket, Type};

/// A namespace for `test` with a veth pair `v0` (fd00::1, the endpoint)
/// and `v1` (fd00::2, publisher and listener); `None` (reported as
/// skipped) where namespaces cannot be made.
fn link(test: &str) -> Option<Netns> {
    let ns = Netns::create(test)?;
    ns.veth("v0", "v1");
    ns.addr("v0", "fd00::1/64");
    ns.addr("v1", "fd00::2/64");
    Some(ns)
}

/// The endpoint's arguments: groups joined on `v0`, NACKs on fd00::1,
/// retransmits out of `egress`.
fn endpoint_args(egress: &str, backend: &str) -> Vec<String> {
    ["--mc-iface", "v0", "--egress-iface", egress, "--nack-addr", "fd00::1", "--backend", backend]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn group(index: u16) -> Ipv6Addr {
    ipv6_group(SourceMode::Asm, Scope::Site, 0x000B, index).unwrap()
}

#[test]
fn ipv6_site_groups_in_a_namespace() {
    let Some(ns) = link("ipv6_site_groups_in_a_namespace") else { return };
    for backend in ["epoll", "uring"] {
        ns.run(move || serve_one_nack(backend));
    }
}

fn serve_one_nack(backend: &str) {
    let p = ports();
    let admin = SocketAddr::from((Ipv6Addr::LOCALHOST, p.admin));
    let e = Engine::launch(&[], &endpoint_args("v0", backend), p, admin);
    let v1 = nix::net::if_::if_nametoindex("v1").expect("v1 index");

    // Listener for retransmits on the frame's group, on the far end.
    let frame = tx_frame(0x6601, 1, b"over IPv6");
    let txid: [u8; 32] = frame[8..40].try_into().unwrap();
    let idx = shard_index(&txid, 2).unwrap();
    let watcher = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    watcher.set_reuse_address(true).unwrap();
    watcher.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, e.egress_port)).into()).unwrap();
    watcher.join_multicast_v6(&group(idx), v1).unwrap();
    let watcher: UdpSocket = watcher.into();

    // Publish from the far end of the veth pair.
    let publisher = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    publisher.set_multicast_if_v6(v1).unwrap();
    publisher
        .bind(&SocketAddr::from(SocketAddrV6::new("fd00::2".parse().unwrap(), 0, 0, 0)).into())
        .unwrap();
    let to = SocketAddr::from(SocketAddrV6::new(group(idx), e.listen_port, 0, 0));
    publisher.send_to(&frame, &to.into()).unwrap();
    let body = e.wait_metrics(Duration::from_secs(10), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 1.0
    });
    assert_eq!(ricochet_e2e::metric_sum(&body, "ricochet_frames_cached_total"), 1.0, "{backend}");

    // NACK it from fd00::2 to the endpoint's NACK address.
    let client = UdpSocket::bind("[fd00::2]:0").unwrap();
    let mut nack = [0u8; 64];
    NackRepr {
        flags: NackFlags(0),
        hash_key: 0x6601,
        start_seq: 1,
        end_seq: 1,
        subtree_id: [0x20; 32],
    }
    .emit(&mut nack)
    .unwrap();
    client.send_to(&nack, ("fd00::1", e.nack_port)).unwrap();
    let replies = drain(&client, Duration::from_millis(500));
    assert_eq!(replies.len(), 1, "{backend}");
    assert_eq!(
        ResponseRepr::parse(&replies[0]),
        Ok(ResponseRepr::ack(1, AckFlags(AckFlags::MULTICAST))),
        "{backend}"
    );
    let got = drain(&watcher, Duration::from_millis(500));
    assert!(got.contains(&frame), "retransmit reached ff05::b:{idx:x} on the far end ({backend})");
}

/// The reference's systemd unit runs the bare binary with an environment
/// file, and its Helm chart sets env vars only: ricochet started exactly
/// so (no subcommand, no flag) is ready, serves the `bre_*` metrics,
/// finds its NACK address on the first egress interface and binds it, and
/// sends ADVERTs to the beacon group at UDP 9300 although its NACK port is
/// another.
#[test]
fn started_as_the_reference_unit_starts_it() {
    let Some(ns) = link("started_as_the_reference_unit_starts_it") else { return };
    // An address on another interface: a NACK to it must find no socket,
    // as the NACK socket binds the detected address, not the wildcard.
    ns.ip(&["addr", "add", "fd00::3/128", "dev", "lo"]);
    ns.run(reference_unit);
}

/// What an operator's `/etc/retry-endpoint/config.env` holds (the Helm
/// chart renders the same names), with the chart's ASM override.
const ENV_FILE: &str = "\
# retry-endpoint configuration
MC_IFACE=v0
EGRESS_IFACE=v0
SOURCE_MODE=asm
MC_SCOPE=site
MC_GROUP_ID=0x000B
SHARD_BITS=2
NACK_PORT=9301
NACK_WORKERS=1
CACHE_BACKEND=memory
CACHE_TTL=60s
CACHE_MAX_KEYS=0
BEEF_ENABLED=false
BEEF_SHARD_BITS=0
BEACON_ENABLED=true
BEACON_INTERVAL=1s
BEACON_SCOPE=site
BEACON_FLAGS_MULTICAST=true
RL_IP_RATE=100
RL_CHAIN_RATE=500
PROXY_WORKERS=4
INSTANCE_ID=edge-unit
LOG_FORMAT=text
LOG_LEVEL=info
DEBUG=false
DRAIN_TIMEOUT=0s
METRICS_ADDR=:9400
";

fn reference_unit() {
    use ricochet_wire::control::AdvertRepr;
    use std::io::Read;

    // Listen for ADVERTs on the far end before the endpoint starts.
    let v1 = nix::net::if_::if_nametoindex("v1").expect("v1 index");
    let beacons = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    beacons.set_reuse_address(true).unwrap();
    beacons.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 9300)).into()).unwrap();
    beacons.join_multicast_v6(&group(0xFFFD), v1).unwrap();
    let beacons: UdpSocket = beacons.into();

    let mut cmd = Command::new(ricochet_e2e::bin("ricochet"));
    cmd.env_clear();
    for line in ENV_FILE.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (k, v) = line.split_once('=').expect("KEY=VALUE");
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ricochet");
    let admin = SocketAddr::from((Ipv6Addr::LOCALHOST, 9400));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ready = loop {
        match ricochet_e2e::http_get(admin, "/readyz") {
            Ok((200, body)) => break body,
            _ if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let mut log = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut log);
                panic!("not ready in 20 s:\n{log}");
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["workers_total"], 1, "NACK_WORKERS=1");

    // The ADVERT: at 9300 on the beacon group, advertising the detected
    // address and the configured NACK port.
    beacons.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 128];
    let n = beacons.recv(&mut buf).expect("an ADVERT at [ff05::b:fffd]:9300");
    let advert = AdvertRepr::parse(&buf[..n]).unwrap();
    assert_eq!(advert.nack_addr, "fd00::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(advert.nack_port, 9301);

    // NACKs: answered on the detected address, not on another one.
    let client = UdpSocket::bind("[fd00::2]:0").unwrap();
    let nack = ricochet_e2e::nack_for(0x7701, 1, 0);
    client.send_to(&nack, ("fd00::1", 9301)).unwrap();
    let replies = drain(&client, Duration::from_millis(500));
    assert_eq!(replies.len(), 1, "a MISS from fd00::1");
    assert_eq!(ResponseRepr::parse(&replies[0]), Ok(ResponseRepr::miss()));
    let elsewhere = UdpSocket::bind("[fd00::3]:0").unwrap();
    elsewhere.send_to(&nack, ("fd00::3", 9301)).unwrap();
    assert!(drain(&elsewhere, Duration::from_millis(300)).is_empty(), "the wildcard is not bound");

    // The reference's metric names, with the values of what happened.
    let (_, body) = ricochet_e2e::http_get(admin, "/metrics").unwrap();
    let value = |series: &str| ricochet_e2e::metric_value(&body, series);
    assert_eq!(
        value(
            "bre_nack_requests_total{otel_scope_name=\"retry-endpoint\",otel_scope_schema_url=\"\",otel_scope_version=\"\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(ricochet_e2e::metric_sum(&body, "bre_beacon_adverts_sent_total") >= 1.0, "{body}");
    assert!(body.contains("service_instance_id=\"edge-unit\""), "{body}");
    let _ = child.kill();
    let _ = child.wait();
}

/// `EGRESS_IFACE=v0,w0`: every multicast retransmit leaves on each listed
/// interface, as the reference's retransmitter writes it to each.
#[test]
fn retransmits_leave_on_every_egress_interface() {
    let Some(ns) = link("retransmits_leave_on_every_egress_interface") else { return };
    ns.veth("w0", "w1");
    ns.addr("w0", "fd01::1/64");
    for backend in ["epoll", "uring"] {
        ns.run(move || retransmit_on_two_interfaces(backend));
    }
}

fn retransmit_on_two_interfaces(backend: &str) {
    let p = ports();
    let admin = SocketAddr::from((Ipv6Addr::LOCALHOST, p.admin));
    let e = Engine::launch(&[], &endpoint_args("v0,w0", backend), p, admin);
    let frame = tx_frame(0x6602, 1, b"two ways");
    let txid: [u8; 32] = frame[8..40].try_into().unwrap();
    let idx = shard_index(&txid, 2).unwrap();
    // A watcher on the far end of each pair, joined on that side only.
    let watch = |iface: &str| -> UdpSocket {
        let index = nix::net::if_::if_nametoindex(iface).expect("interface index");
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_reuse_port(true).unwrap();
        s.set_multicast_all_v6(false).unwrap();
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, e.egress_port)).into()).unwrap();
        s.join_multicast_v6(&group(idx), index).unwrap();
        s.bind_device(Some(iface.as_bytes())).unwrap();
        s.into()
    };
    let (on_v1, on_w1) = (watch("v1"), watch("w1"));

    let v1 = nix::net::if_::if_nametoindex("v1").expect("v1 index");
    let publisher = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    publisher.set_multicast_if_v6(v1).unwrap();
    publisher
        .bind(&SocketAddr::from(SocketAddrV6::new("fd00::2".parse().unwrap(), 0, 0, 0)).into())
        .unwrap();
    let to = SocketAddr::from(SocketAddrV6::new(group(idx), e.listen_port, 0, 0));
    publisher.send_to(&frame, &to.into()).unwrap();
    e.wait_metrics(Duration::from_secs(10), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 1.0
    });
    // The publisher's own copy reached v1's watcher too: start clean.
    drain(&on_v1, Duration::from_millis(200));

    let client = UdpSocket::bind("[fd00::2]:0").unwrap();
    client.send_to(&ricochet_e2e::nack_for(0x6602, 1, 0), ("fd00::1", e.nack_port)).unwrap();
    let replies = drain(&client, Duration::from_millis(500));
    assert_eq!(
        replies.iter().map(|r| ResponseRepr::parse(r)).collect::<Vec<_>>(),
        [Ok(ResponseRepr::ack(1, AckFlags(AckFlags::MULTICAST)))],
        "{backend}"
    );
    assert_eq!(
        drain(&on_v1, Duration::from_millis(500)),
        std::slice::from_ref(&frame),
        "out of v0 ({backend})"
    );
    assert_eq!(drain(&on_w1, Duration::from_millis(500)), [frame], "out of w0 ({backend})");
}
