//! Source-specific multicast (RFC 4607) end to end, inside a network
//! namespace this test creates and removes: an engine on `v0` (fd00::1)
//! started with `--source-mode ssm` joins each data group `(S,G)` from its
//! source lists; publishers on the far end `v1` send from listed and
//! unlisted addresses. The engine runs under `ip netns exec`, so a
//! `/etc/netns/<ns>/hosts` file this test writes is its `/etc/hosts`.
//! Listeners here are what a downstream SSM receiver is: sockets joined
//! `(S,G)` with `MCAST_JOIN_SOURCE_GROUP`, taking nothing else.
//! Needs root and `ip` (iproute2); otherwise reported as skipped
//! ([`Netns::create`]).

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use ricochet_e2e::netns::{McFilter, Netns};
use ricochet_e2e::{Engine, drain, ports, tx_frame};
use ricochet_wire::control::ResponseRepr;
use ricochet_wire::group::{Scope, SourceMode, ipv6_group, shard_index};
use socket2::{Domain, Protocol, Socket, Type};

/// The engine's address on `v0`.
const ENDPOINT: &str = "fd00::1";
/// Addresses on `v1`, the far end: publishers, listed or not.
const PUBLISHERS: [&str; 4] = ["fd00::2", "fd00::3", "fd00::4", "fd00::5"];
/// The endpoint's `--bind-source` where a test sets one (on `v0`, added by
/// [`add_bind_source`]).
const BIND_SOURCE: &str = "fd00::9";

/// A namespace for `test` with a veth pair `v0` (the endpoint) and `v1`
/// (every publisher address); `None` (reported as skipped) where
/// namespaces cannot be made.
fn link(test: &str) -> Option<Netns> {
    let ns = Netns::create(test)?;
    ns.veth("v0", "v1");
    ns.addr("v0", "fd00::1/64");
    for a in PUBLISHERS {
        ns.addr("v1", &format!("{a}/64"));
    }
    Some(ns)
}

/// Adds [`BIND_SOURCE`], a second address on the endpoint's side, for
/// `--bind-source`; deprecated, so the kernel never picks it as a source
/// by itself.
fn add_bind_source(ns: &Netns) {
    ns.deprecated_addr("v0", &format!("{BIND_SOURCE}/64"));
}

fn group(index: u16) -> Ipv6Addr {
    ipv6_group(SourceMode::Ssm, Scope::Site, 0x000B, index).unwrap()
}

/// The engine's arguments under SSM, on `v0`, plus `extra`.
fn ssm_args(extra: &[&str]) -> Vec<String> {
    [
        "--source-mode",
        "ssm",
        "--mc-iface",
        "v0",
        "--egress-iface",
        "v0",
        "--nack-addr",
        ENDPOINT,
        "--backend",
        "epoll",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

fn launch(ns: &Netns, extra: &[&str]) -> Engine {
    let p = ports();
    let admin = SocketAddr::from((Ipv6Addr::LOCALHOST, p.admin));
    Engine::launch(&ns.exec(), &ssm_args(extra), p, admin)
}

/// Sends `frame` to its data group from `source` (an address on `v1`).
/// Must run inside the namespace.
fn publish(source: &str, frame: &[u8], port: u16) {
    let v1 = nix::net::if_::if_nametoindex("v1").expect("v1 index");
    let txid: [u8; 32] = frame[8..40].try_into().unwrap();
    let idx = shard_index(&txid, 2).unwrap();
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_multicast_if_v6(v1).unwrap();
    s.bind(&SocketAddr::from(SocketAddrV6::new(source.parse().unwrap(), 0, 0, 0)).into()).unwrap();
    let to = SocketAddr::from(SocketAddrV6::new(group(idx), port, 0, 0));
    s.send_to(frame, &to.into()).unwrap();
}

/// Every data group (shard bits 2: indices 0..4) has exactly `sources`
/// as its INCLUDE filter on `v0`.
fn assert_filters(ns: &Netns, sources: &[&str]) {
    assert_filters_with(ns, sources, &[]);
}

/// [`assert_filters`] when the control groups `extra` are joined too.
fn assert_filters_with(ns: &Netns, sources: &[&str], extra: &[u16]) {
    let filters = ns.mcfilter6();
    for idx in 0..4u16 {
        let mut got: Vec<Ipv6Addr> = filters
            .iter()
            .filter(|(dev, g, _, inc)| dev == "v0" && *g == group(idx) && *inc > 0)
            .map(|f| f.2)
            .collect();
        got.sort();
        let want: Vec<Ipv6Addr> = sources.iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(got, want, "(S,G) filters of ff35::b:{idx:x} on v0: {filters:?}");
    }
    // A group without a source is never joined, not even (*,G): the SSM
    // groups on v0 are the data groups that have sources, and `extra`.
    let mut ssm: Vec<Ipv6Addr> =
        ns.joined6("v0").into_iter().filter(|g| g.segments()[0] & 0xFFF0 == 0xFF30).collect();
    ssm.sort();
    let data = if sources.is_empty() { 0..0 } else { 0..4 };
    let mut want: Vec<Ipv6Addr> = data.chain(extra.iter().copied()).map(group).collect();
    want.sort();
    assert_eq!(ssm, want, "FF3x groups joined on v0");
}

/// Waits (up to 20 s) until the kernel's filters satisfy `cond`.
fn wait_filters(ns: &Netns, cond: impl Fn(&Filters) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond(&ns.mcfilter6()) {
        assert!(Instant::now() < deadline, "filters never changed: {:?}", ns.mcfilter6());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A static list: the listed publisher's frames are cached, the same
/// frames from an unlisted address on the same link never reach the
/// engine, and the kernel holds an INCLUDE filter per data group.
#[test]
fn ssm_caches_listed_sources_only() {
    let Some(ns) = link("ssm_caches_listed_sources_only") else { return };
    add_bind_source(&ns);
    ns.run(|| listed_sources_only(&ns));
}

fn listed_sources_only(ns: &Netns) {
    // fd00::9 is this node's own --bind-source: listed, but never joined.
    let e =
        launch(ns, &["--ssm-publishers-static", "fd00::2, fd00::9", "--bind-source", "fd00::9"]);
    assert_filters(ns, &["fd00::2"]);
    // ADVERTs leave from the bind source, to the ASM beacon group
    // (--control-group-compat asm-only, the default), at the beacon port
    // the harness sets to the NACK port.
    let v1 = nix::net::if_::if_nametoindex("v1").expect("v1 index");
    let beacons = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    beacons.set_reuse_address(true).unwrap();
    // Bound to the group itself: the NACK socket holds [fd00::1] at this port.
    let asm_beacon = ipv6_group(SourceMode::Asm, Scope::Site, 0x000B, 0xFFFD).unwrap();
    beacons.bind(&SocketAddr::from((asm_beacon, e.nack_port)).into()).unwrap();
    beacons.join_multicast_v6(&asm_beacon, v1).unwrap();
    let beacons: UdpSocket = beacons.into();
    beacons.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 128];
    let (n, from) = beacons.recv_from(&mut buf).expect("an ADVERT on ff05::b:fffd");
    assert!(ricochet_wire::control::AdvertRepr::parse(&buf[..n]).is_ok());
    assert_eq!(
        from.ip(),
        "fd00::9".parse::<std::net::IpAddr>().unwrap(),
        "sent from --bind-source"
    );
    let unlisted = tx_frame(0x5501, 1, b"from an unlisted source");
    let listed = tx_frame(0x5502, 1, b"from the listed publisher");
    publish("fd00::3", &unlisted, e.listen_port);
    publish("fd00::2", &listed, e.listen_port);
    let body = e.wait_metrics(Duration::from_secs(10), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 1.0
    });
    // Sent first, on the same link: had it passed the filter it would be
    // counted already.
    assert_eq!(ricochet_e2e::metric_sum(&body, "ricochet_frames_cached_total"), 1.0, "{body}");
    let ask = |key| {
        let client = UdpSocket::bind("[fd00::2]:0").unwrap();
        client.send_to(&ricochet_e2e::nack_for(key, 1, 0), (ENDPOINT, e.nack_port)).unwrap();
        drain(&client, Duration::from_millis(500))
            .iter()
            .map(|r| ResponseRepr::parse(r))
            .collect::<Vec<_>>()
    };
    let ack = ask(0x5502);
    assert_eq!(ack.len(), 1, "{ack:?}");
    assert!(
        ack[0].as_ref().is_ok_and(|r| *r != ResponseRepr::miss()),
        "the listed publisher's frame is served: {ack:?}"
    );
    assert_eq!(ask(0x5501), [Ok(ResponseRepr::miss())], "the unlisted frame was never cached");
    assert_eq!(
        ricochet_e2e::metric_value(&body, "ricochet_ssm_sources_joined{role=\"data\"}"),
        Some(4.0),
        "one source on each of the four data groups: {body}"
    );
    // The reference's own-source series, spelled like the per-source
    // counter's label, so its alerts can leave this address out.
    assert_eq!(
        ricochet_e2e::metric_value(&body, "bre_own_source_info{source=\"fd00::9\"}"),
        Some(1.0),
        "{body}"
    );
    assert!(body.contains("bre_cache_stored_total{otel_scope_name=\"retry-endpoint\",otel_scope_schema_url=\"\",otel_scope_version=\"\",source=\"fd00::2\"} 1"), "{body}");
    let (_, stats) = e.http("/debug/stats").unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let g0 = &stats["ssm"]["groups"][group(0).to_string()];
    assert_eq!(g0["sources"], serde_json::json!(["fd00::2"]), "{stats}");
    assert_eq!(g0["role"], "data");
}

/// Start is fail-closed: SSM without a source list, or with a name that
/// resolves to nothing, exits 2 naming the flag to set.
#[test]
fn ssm_start_is_fail_closed() {
    let Some(ns) = link("ssm_start_is_fail_closed") else { return };
    ns.write_hosts("");
    let run = |extra: &[&str]| {
        let out = Command::new("ip")
            .args(&ns.exec()[1..])
            .arg(ricochet_e2e::bin("ricochet"))
            .arg("run")
            .args(ssm_args(extra))
            .args(["--metrics-addr", "[::1]:0"])
            .output()
            .expect("run ricochet");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("fail-closed") && err.contains("--ssm-publishers-static"), "{err}");
    let (code, err) = run(&["--ssm-publishers-static", "nowhere.ricochet.invalid"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--ssm-publishers-static")
            && err.contains("resolved to no IPv6 address")
            && err.contains("nowhere.ricochet.invalid"),
        "{err}"
    );
    assert!(ns.mcfilter6().is_empty(), "nothing joined: {:?}", ns.mcfilter6());
}

/// A DNS name resolved from the namespace's hosts file: joined at start;
/// a refresh that fails keeps the last good source joined (and counts the
/// failure); a refresh that moves the name joins the new source and leaves
/// the old one.
#[test]
fn ssm_dns_bootstrap_refresh_keeps_the_last_good_set() {
    let Some(ns) = link("ssm_dns_bootstrap_refresh_keeps_the_last_good_set") else { return };
    ns.write_hosts("fd00::4 pub.ricochet.test\n");
    ns.run(|| dns_refresh(&ns));
}

fn dns_refresh(ns: &Netns) {
    let e = launch(
        ns,
        &["--ssm-publishers-static", "pub.ricochet.test", "--ssm-bootstrap-refresh", "200ms"],
    );
    assert_filters(ns, &["fd00::4"]);
    let port = e.listen_port;
    let cached = |e: &Engine, n: f64| {
        e.wait_metrics(Duration::from_secs(10), |b| {
            ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= n
        })
    };
    let f1 = tx_frame(0x6601, 1, b"named publisher");
    publish("fd00::4", &f1, port);
    cached(&e, 1.0);

    // The name stops resolving: the source stays joined.
    ns.write_hosts("");
    let failures = "ricochet_ssm_refresh_failures_total{list=\"publishers_static\"}";
    e.wait_metrics(Duration::from_secs(20), |b| {
        ricochet_e2e::metric_value(b, failures).is_some_and(|v| v >= 2.0)
    });
    assert_filters(ns, &["fd00::4"]);
    let f2 = tx_frame(0x6602, 1, b"still joined");
    publish("fd00::4", &f2, port);
    cached(&e, 2.0);

    // The name moves: fd00::5 joined, fd00::4 left.
    ns.write_hosts("fd00::5 pub.ricochet.test\n");
    let (g0, new) = (group(0), "fd00::5".parse::<Ipv6Addr>().unwrap());
    wait_filters(ns, |f| f.iter().any(|(_, g, s, _)| *g == g0 && *s == new));
    assert_filters(ns, &["fd00::5"]);
    let (old, fresh) = (tx_frame(0x6603, 1, b"left"), tx_frame(0x6604, 1, b"joined"));
    publish("fd00::4", &old, port);
    publish("fd00::5", &fresh, port);
    let body = cached(&e, 3.0);
    assert_eq!(ricochet_e2e::metric_sum(&body, "ricochet_frames_cached_total"), 3.0, "{body}");
    let changes = |op: &str, result: &str| {
        ricochet_e2e::metric_value(
            &body,
            &format!("ricochet_ssm_membership_changes_total{{op=\"{op}\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(changes("join", "ok"), Some(8.0), "4 groups at start, 4 after the move: {body}");
    assert_eq!(changes("leave", "ok"), Some(4.0), "{body}");
    assert_eq!(changes("join", "error"), Some(0.0), "{body}");
}

/// Publishers learned from BRC-139 shard manifests: the engine joins the
/// beacon and block groups from the `--ssm-bootstrap-manifest` emitter
/// only; the data groups stay unjoined until a manifest from it lists a
/// publisher, whose frames are then cached; a Shutdown manifest leaves it.
/// A manifest from an address that is not an emitter is never received.
#[test]
fn ssm_publishers_from_shard_manifests() {
    let Some(ns) = link("ssm_publishers_from_shard_manifests") else { return };
    ns.run(|| manifests(&ns));
}

/// Sends a shard manifest listing `sources` from `from` to the beacon
/// group at `port`.
fn send_manifest(from: &str, sources: &[&str], flags: u8, port: u16) {
    use ricochet_wire::manifest::{ManifestFlags, ShardManifestRepr};
    let repr = ShardManifestRepr {
        flags: ManifestFlags(flags),
        instance_id: 7,
        ttl_secs: 60,
        announce_interval_secs: 10,
        sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
        ..ShardManifestRepr::default()
    };
    let mut bytes = vec![0; repr.buffer_len()];
    repr.emit(&mut bytes).unwrap();
    let v1 = nix::net::if_::if_nametoindex("v1").expect("v1 index");
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_multicast_if_v6(v1).unwrap();
    s.bind(&SocketAddr::from(SocketAddrV6::new(from.parse().unwrap(), 0, 0, 0)).into()).unwrap();
    let to = SocketAddr::from(SocketAddrV6::new(group(0xFFFD), port, 0, 0));
    s.send_to(&bytes, &to.into()).unwrap();
}

fn manifests(ns: &Netns) {
    let e = launch(ns, &["--ssm-bootstrap-manifest", "fd00::4"]);
    // Manifests share the beacon group and port with ADVERTs; the test
    // harness points --beacon-port at the NACK port.
    let beacon_port = e.nack_port;
    assert_filters_with(ns, &[], &[0xFFFD, 0xFFFE]);
    let emitter: Ipv6Addr = "fd00::4".parse().unwrap();
    for g in [0xFFFD, 0xFFFE] {
        let f = ns.mcfilter6();
        assert!(
            f.iter()
                .any(|(d, grp, s, inc)| d == "v0" && *grp == group(g) && *s == emitter && *inc > 0),
            "(fd00::4, {g:#x}) joined: {f:?}"
        );
    }
    // Not an emitter: filtered by the kernel, nothing moves.
    send_manifest("fd00::3", &["fd00::3"], 0, beacon_port);
    send_manifest("fd00::4", &["fd00::2", "fd00::4"], 0, beacon_port);
    let g0 = group(0);
    let publisher: Ipv6Addr = "fd00::2".parse().unwrap();
    wait_filters(ns, |f| f.iter().any(|(_, g, s, _)| *g == g0 && *s == publisher));
    assert_filters_with(ns, &["fd00::2", "fd00::4"], &[0xFFFD, 0xFFFE]);
    let body = e.wait_metrics(Duration::from_secs(10), |b| {
        ricochet_e2e::metric_value(b, "ricochet_ssm_manifests_total{result=\"accepted\"}")
            == Some(1.0)
    });
    assert_eq!(
        ricochet_e2e::metric_sum(&body, "ricochet_ssm_manifests_total"),
        1.0,
        "the non-emitter's manifest never arrived: {body}"
    );
    let frame = tx_frame(0x7701, 1, b"announced publisher");
    publish("fd00::2", &frame, e.listen_port);
    e.wait_metrics(Duration::from_secs(10), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 1.0
    });

    // Shutdown: the publishers leave every data group.
    use ricochet_wire::manifest::ManifestFlags;
    send_manifest("fd00::4", &["fd00::2", "fd00::4"], ManifestFlags::SHUTDOWN, beacon_port);
    wait_filters(ns, |f| !f.iter().any(|(_, g, _, _)| *g == g0));
    assert_filters_with(ns, &[], &[0xFFFD, 0xFFFE]);
    let (_, page) = e.http("/debug/ssm").unwrap();
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["lists"]["manifest_publishers"], serde_json::json!([]), "{page}");
    assert_eq!(page["manifests_accepted"], 2, "the announcement and its Shutdown: {page}");
    assert_eq!(page["groups"][group(0xFFFD).to_string()]["worker"], serde_json::Value::Null);
}

/// The kernel's filters, as [`Netns::mcfilter6`] reads them.
type Filters = [McFilter];

/// Whether `source` is in the INCLUDE filter of every data group on `v0`.
fn on_every_data_group(f: &Filters, source: Ipv6Addr) -> bool {
    (0..4u16).all(|i| {
        f.iter().any(|(d, g, s, inc)| d == "v0" && *g == group(i) && *s == source && *inc > 0)
    })
}

/// Whether `source` is in any filter on `v0`.
fn on_any_group(f: &Filters, source: Ipv6Addr) -> bool {
    f.iter().any(|(d, _, s, inc)| d == "v0" && *s == source && *inc > 0)
}

/// Joins `(source, group)` on interface `dev` with
/// `MCAST_JOIN_SOURCE_GROUP`, as an SSM listener does (socket2 has no
/// IPv6 source-specific join).
fn join_source_group(s: &Socket, dev: &str, group: Ipv6Addr, source: Ipv6Addr) {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let index = nix::net::if_::if_nametoindex(dev).expect("interface index");
    let storage = |a: Ipv6Addr| {
        let sin6 = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr { s6_addr: a.octets() },
            sin6_scope_id: 0,
        };
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_storage is larger than sockaddr_in6 and at least
        // as aligned; the write stays in bounds.
        unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sin6) };
        ss
    };
    let req = libc::group_source_req {
        gsr_interface: index,
        gsr_group: storage(group),
        gsr_source: storage(source),
    };
    // SAFETY: `req` is a live, initialised group_source_req and the length
    // passed is its size; the kernel copies it and keeps no pointer.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::MCAST_JOIN_SOURCE_GROUP,
            (&raw const req).cast(),
            size_of::<libc::group_source_req>() as libc::socklen_t,
        )
    };
    let err = std::io::Error::last_os_error();
    assert_eq!(r, 0, "join ({source}, {group}) on {dev}: {err}");
}

/// A listener's socket at `[bind]:port` (`SO_REUSEADDR`, so it sits beside
/// the engine's own sockets at that port), taking only what it joined
/// (`IPV6_MULTICAST_ALL` off): `(source, group)` on `dev` for each of
/// `joins`. Must run inside the namespace.
fn ssm_listener(bind: Ipv6Addr, port: u16, dev: &str, joins: &[(Ipv6Addr, Ipv6Addr)]) -> UdpSocket {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_only_v6(true).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_multicast_all_v6(false).unwrap();
    s.bind(&SocketAddr::from((bind, port)).into()).unwrap();
    for &(source, group) in joins {
        join_source_group(&s, dev, group, source);
    }
    s.into()
}

/// Asks the engine for one frame of `key` from `client` and returns its
/// single answer.
fn ask_one(client: &UdpSocket, e: &Engine, key: u64, seq: u64) -> ResponseRepr {
    client.send_to(&ricochet_e2e::nack_for(key, seq, 0), (ENDPOINT, e.nack_port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).unwrap_or_else(|err| panic!("no answer for {seq}: {err}"));
    ResponseRepr::parse(&buf[..n]).unwrap()
}

/// Manifest churn without loss: while publisher A streams one flow, a
/// second manifest from the emitter adds publisher B and a third removes
/// it again. B's frames are cached only while B is listed; every frame of
/// A's flow, before, between and after the changes, is cached; and A's
/// `(S,G)` filters are present at every observation of the kernel's
/// filters, and never left.
#[test]
fn ssm_manifest_churn_keeps_the_steady_publisher() {
    let Some(ns) = link("ssm_manifest_churn_keeps_the_steady_publisher") else { return };
    ns.run(|| churn(&ns));
}

fn churn(ns: &Netns) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const FLOW_A: u64 = 0xA0A0;
    const FLOW_B: u64 = 0xB0B0;
    let e = launch(
        ns,
        &[
            "--ssm-bootstrap-manifest",
            "fd00::4",
            // Every frame is NACKed once at the end, from one address.
            "--rl-ip-rate",
            "100000",
            "--rl-ip-burst",
            "100000",
            "--rl-group-rate",
            "100000",
            "--rl-group-burst",
            "100000",
        ],
    );
    let (port, beacon_port) = (e.listen_port, e.nack_port);
    let (a, b): (Ipv6Addr, Ipv6Addr) = ("fd00::2".parse().unwrap(), "fd00::3".parse().unwrap());
    send_manifest("fd00::4", &["fd00::2"], 0, beacon_port);
    wait_filters(ns, |f| on_every_data_group(f, a));
    assert_filters_with(ns, &["fd00::2"], &[0xFFFD, 0xFFFE]);

    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    // Waits until A has sent `n` more frames: each phase spans frames of
    // A's flow, whatever the machine's speed.
    let advance = |n: u64| {
        let from = sent.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        while sent.load(Ordering::SeqCst) < from + n {
            assert!(Instant::now() < deadline, "publisher A stalled at {from}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    /// Stops the sender and the sampler however the scope ends: a failed
    /// assertion must not leave the scope waiting for them forever.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let (n_a, (observations, lost)) = std::thread::scope(|s| {
        let stopping = StopOnDrop(&stop);
        let sender = s.spawn(|| {
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                publish("fd00::2", &tx_frame(FLOW_A, seq, b"steady publisher"), port);
                sent.store(seq, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
            seq
        });
        // Observes the kernel's filters throughout; every snapshot without
        // A on all four data groups is kept.
        let sampler = s.spawn(|| {
            let (mut n, mut lost) = (0, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let f = ns.mcfilter6();
                n += 1;
                if !on_every_data_group(&f, a) {
                    lost.push(f);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (n, lost)
        });
        advance(20);

        // B added: its frames are cached.
        send_manifest("fd00::4", &["fd00::2", "fd00::3"], 0, beacon_port);
        wait_filters(ns, |f| on_every_data_group(f, b));
        assert_filters_with(ns, &["fd00::2", "fd00::3"], &[0xFFFD, 0xFFFE]);
        for seq in 1..=5 {
            publish("fd00::3", &tx_frame(FLOW_B, seq, b"listed for a while"), port);
        }
        advance(20);

        // B removed, A kept: B's frames no longer reach the engine.
        send_manifest("fd00::4", &["fd00::2"], 0, beacon_port);
        wait_filters(ns, |f| !on_any_group(f, b));
        assert_filters_with(ns, &["fd00::2"], &[0xFFFD, 0xFFFE]);
        for seq in 6..=10 {
            publish("fd00::3", &tx_frame(FLOW_B, seq, b"no longer listed"), port);
        }
        advance(20);
        drop(stopping);
        (sender.join().unwrap(), sampler.join().unwrap())
    });
    assert!(observations > 0 && lost.is_empty(), "A left a data group: {lost:?}");

    // A's N frames and B's 5 listed ones; B's unlisted frames were sent
    // before A's last ones on the same link, so they would be counted by now.
    let want = (n_a + 5) as f64;
    let body = e.wait_metrics(Duration::from_secs(10), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= want
    });
    assert_eq!(ricochet_e2e::metric_sum(&body, "ricochet_frames_cached_total"), want, "{body}");
    let client = UdpSocket::bind("[fd00::5]:0").unwrap();
    for seq in 1..=n_a {
        let r = ask_one(&client, &e, FLOW_A, seq);
        assert!(
            matches!(r.kind, ricochet_wire::control::ResponseKind::Ack(_)) && r.seq == seq,
            "A's frame {seq} of {n_a} is cached: {r:?}"
        );
    }
    for seq in 1..=10 {
        let r = ask_one(&client, &e, FLOW_B, seq);
        if seq <= 5 {
            assert!(
                matches!(r.kind, ricochet_wire::control::ResponseKind::Ack(_)) && r.seq == seq,
                "B's frame {seq}, sent while listed, is cached: {r:?}"
            );
        } else {
            assert_eq!(r, ResponseRepr::miss(), "B's frame {seq}, sent after the removal");
        }
    }
    // A was joined once and never left: the only leaves are B's four.
    let (_, body) = e.http("/metrics").unwrap();
    let changes = |op: &str| {
        ricochet_e2e::metric_value(
            &body,
            &format!("ricochet_ssm_membership_changes_total{{op=\"{op}\",result=\"ok\"}}"),
        )
    };
    assert_eq!(changes("leave"), Some(4.0), "{body}");
    // The emitter on the beacon and block groups, then A and B on four.
    assert_eq!(changes("join"), Some(10.0), "{body}");
    assert_eq!(
        ricochet_e2e::metric_value(&body, "ricochet_ssm_manifests_total{result=\"accepted\"}"),
        Some(3.0),
        "{body}"
    );
}

/// A lossy listener in SSM mode recovers every gap from the engine: it
/// hears the publisher's flow `(fd00::2, G)` on `v0`, where the engine
/// does, treats some SeqNums as lost, NACKs each gap to the engine's NACK
/// address, and receives each missing frame as the engine's multicast
/// retransmit across the link, on `v1`, joined `(S,G)` with S the engine's
/// egress source (its NACK address): every gap filled with the exact bytes.
#[test]
fn ssm_lossy_listener_recovers_every_gap() {
    let Some(ns) = link("ssm_lossy_listener_recovers_every_gap") else { return };
    ns.run(|| lossy_listener(&ns));
}

fn lossy_listener(ns: &Netns) {
    use std::collections::{BTreeMap, BTreeSet};
    const FLOW: u64 = 0x1055;
    const FRAMES: u64 = 40;
    // Runs of one and of several SeqNums; never the last, which a listener
    // could only find missing with a tail probe.
    let lost: BTreeSet<u64> = [3, 7, 8, 15, 22, 23, 24, 31].into();
    let e = launch(ns, &["--ssm-publishers-static", "fd00::2"]);
    assert_filters(ns, &["fd00::2"]);
    let (publisher, endpoint): (Ipv6Addr, Ipv6Addr) =
        ("fd00::2".parse().unwrap(), ENDPOINT.parse().unwrap());
    let data_joins: Vec<_> = (0..4).map(|i| (publisher, group(i))).collect();
    let data = ssm_listener(Ipv6Addr::UNSPECIFIED, e.listen_port, "v0", &data_joins);
    let retx_joins: Vec<_> = (0..4).map(|i| (endpoint, group(i))).collect();
    let retx = ssm_listener(Ipv6Addr::UNSPECIFIED, e.egress_port, "v1", &retx_joins);

    let frames: BTreeMap<u64, Vec<u8>> =
        (1..=FRAMES).map(|seq| (seq, tx_frame(FLOW, seq, &seq.to_be_bytes().repeat(4)))).collect();
    for f in frames.values() {
        publish("fd00::2", f, e.listen_port);
    }
    // The listener: takes frames until the flow's last, skipping `lost`.
    data.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut buf = [0u8; 65_536];
    while !got.contains_key(&FRAMES) {
        let n = data.recv(&mut buf).expect("the publisher's flow reaches the listener");
        let f = ricochet_wire::frame::Frame::new_checked(&buf[..n]).unwrap();
        assert_eq!(f.hash_key(), FLOW);
        if !lost.contains(&f.seq()) {
            got.insert(f.seq(), buf[..n].to_vec());
        }
    }
    let gaps: BTreeSet<u64> = (1..=FRAMES).filter(|s| !got.contains_key(s)).collect();
    assert_eq!(gaps, lost, "only the deliberate losses are missing");

    // One NACK per run of missing SeqNums, from the listener's address. A
    // MISS is answered by asking again after a back-off, as listeners do:
    // the listener took the flow's last frame as the engine did, and the
    // worker that answers a flow's NACKs may not have stored a frame
    // another worker read at that instant.
    let client = UdpSocket::bind("[fd00::5]:0").unwrap();
    retx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answers: Vec<ResponseRepr> = Vec::new();
    for round in 0..5 {
        let missing: Vec<u64> = gaps.iter().filter(|s| !got.contains_key(s)).copied().collect();
        if missing.is_empty() {
            break;
        }
        if round > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        for (start_seq, end_seq) in runs(&missing) {
            let mut nack = [0u8; 64];
            ricochet_wire::control::NackRepr {
                flags: ricochet_wire::control::NackFlags(0),
                hash_key: FLOW,
                start_seq,
                end_seq,
                subtree_id: [0x20; 32],
            }
            .emit(&mut nack)
            .unwrap();
            client.send_to(&nack, (ENDPOINT, e.nack_port)).unwrap();
        }
        // An ACK per frame served, a MISS where a range stops.
        let round: Vec<ResponseRepr> = drain(&client, Duration::from_millis(300))
            .iter()
            .map(|r| ResponseRepr::parse(r).unwrap())
            .collect();
        let acked: BTreeSet<u64> = round
            .iter()
            .filter(|r| matches!(r.kind, ricochet_wire::control::ResponseKind::Ack(_)))
            .map(|r| r.seq)
            .collect();
        while !acked.iter().all(|s| got.contains_key(s)) {
            let (n, from) = retx.recv_from(&mut buf).unwrap_or_else(|err| {
                panic!("no retransmit of every ACKed frame {acked:?}: {err}; answers {round:?}")
            });
            assert_eq!(from.ip(), endpoint, "retransmits leave from the NACK address");
            let f = ricochet_wire::frame::Frame::new_checked(&buf[..n]).unwrap();
            assert!(acked.contains(&f.seq()), "only ACKed gaps are retransmitted: {}", f.seq());
            assert!(got.insert(f.seq(), buf[..n].to_vec()).is_none(), "{} twice", f.seq());
        }
        answers.extend(round);
    }
    assert_eq!(got, frames, "every gap filled with the publisher's exact bytes: {answers:?}");
    let acks: Vec<u64> = answers
        .iter()
        .filter(|r| matches!(r.kind, ricochet_wire::control::ResponseKind::Ack(_)))
        .map(|r| r.seq)
        .collect();
    assert_eq!(acks.len(), gaps.len(), "one ACK per gap: {answers:?}");
    assert!(
        !answers
            .iter()
            .any(|r| matches!(r.kind, ricochet_wire::control::ResponseKind::Throttled { .. })),
        "never throttled: {answers:?}"
    );
}

/// The runs of consecutive SeqNums in `seqs` (ascending), as
/// `(start, end)`.
fn runs(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == s => *end = s,
            _ => runs.push((s, s)),
        }
    }
    runs
}

/// ADVERTs under `--control-group-compat derived` go to the SSM beacon
/// group only, from `--bind-source`: a listener joined
/// `(bind source, ff35::b:fffd)` receives them and they parse; listeners
/// joined with another source (the endpoint's own address), or to the
/// ASM beacon group, receive nothing.
#[test]
fn ssm_advert_reaches_listeners_joined_to_the_bind_source() {
    let Some(ns) = link("ssm_advert_reaches_listeners_joined_to_the_bind_source") else { return };
    add_bind_source(&ns);
    ns.run(|| advert_to_bind_source(&ns));
}

fn advert_to_bind_source(ns: &Netns) {
    let e = launch(
        ns,
        &[
            "--ssm-publishers-static",
            "fd00::2",
            "--bind-source",
            BIND_SOURCE,
            "--control-group-compat",
            "derived",
        ],
    );
    let beacon = group(0xFFFD);
    let (bind_source, endpoint): (Ipv6Addr, Ipv6Addr) =
        (BIND_SOURCE.parse().unwrap(), ENDPOINT.parse().unwrap());
    // Across the link, on v1; every socket at the group and beacon port,
    // so each datagram to the group is offered to all of them.
    let other = ssm_listener(beacon, e.nack_port, "v1", &[(endpoint, beacon)]);
    let asm_beacon = ipv6_group(SourceMode::Asm, Scope::Site, 0x000B, 0xFFFD).unwrap();
    let asm = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    asm.set_reuse_address(true).unwrap();
    asm.bind(&SocketAddr::from((asm_beacon, e.nack_port)).into()).unwrap();
    asm.join_multicast_v6(&asm_beacon, nix::net::if_::if_nametoindex("v1").unwrap()).unwrap();
    let asm: UdpSocket = asm.into();
    let listener = ssm_listener(beacon, e.nack_port, "v1", &[(bind_source, beacon)]);
    listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 128];
    // Two ADVERTs, both sent after every socket above was joined.
    for _ in 0..2 {
        let (n, from) =
            listener.recv_from(&mut buf).expect("an ADVERT on (bind source, ff35::b:fffd)");
        assert_eq!(from.ip(), std::net::IpAddr::V6(bind_source), "sent from --bind-source");
        let advert = ricochet_wire::control::AdvertRepr::parse(&buf[..n]).unwrap();
        assert_eq!((advert.nack_addr, advert.nack_port), (endpoint, e.nack_port), "{advert:?}");
    }
    for (name, sock) in [("(fd00::1, ff35::b:fffd)", &other), ("ff05::b:fffd", &asm)] {
        sock.set_nonblocking(true).unwrap();
        let r = sock.recv_from(&mut buf);
        assert!(
            r.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "a listener on {name} received {r:?}"
        );
    }
}
