//! IPv6 multicast end to end, inside a network namespace this test creates
//! and removes: an engine on one end of a veth pair joins the BRC-129 site
//! groups (ff05::b:i), a publisher and a listener on the other end.
//! Needs root and `ip` (iproute2); otherwise skipped with a message.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use ricochet_e2e::{Engine, drain, ports, tx_frame};
use ricochet_wire::control::{AckFlags, NackFlags, NackRepr, ResponseRepr};
use ricochet_wire::group::{Scope, SourceMode, ipv6_group, shard_index};
use socket2::{Domain, Protocol, Socket, Type};

/// A network namespace with a veth pair `v0` (fd00::1, the endpoint) and
/// `v1` (fd00::2, publisher and listener); deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Option<Netns> {
        let root = nix::unistd::Uid::effective().is_root();
        let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
        if !root || !ip {
            eprintln!("SKIPPED: IPv6 netns test needs root and iproute2 (root={root}, ip={ip})");
            return None;
        }
        let ns = Netns(format!("ricochet-e2e-{}", std::process::id()));
        let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
        let steps: [&[&str]; 8] = [
            &["netns", "add", &ns.0],
            &["-n", &ns.0, "link", "set", "lo", "up"],
            &["-n", &ns.0, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            &["-n", &ns.0, "addr", "add", "fd00::1/64", "dev", "v0", "nodad"],
            &["-n", &ns.0, "addr", "add", "fd00::2/64", "dev", "v1", "nodad"],
            &["-n", &ns.0, "link", "set", "v0", "up"],
            &["-n", &ns.0, "link", "set", "v1", "up"],
            &["-n", &ns.0, "link", "set", "v1", "multicast", "on"],
        ];
        for step in steps {
            let out = Command::new("ip").args(step).output().expect("run ip");
            assert!(out.status.success(), "ip {step:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Some(ns)
    }

    /// Runs `f` on a thread that has entered the namespace; processes it
    /// spawns start there too.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn group(index: u16) -> Ipv6Addr {
    ipv6_group(SourceMode::Asm, Scope::Site, 0x000B, index).unwrap()
}

#[test]
fn ipv6_site_groups_in_a_namespace() {
    let Some(ns) = Netns::create() else { return };
    for backend in ["epoll", "uring"] {
        ns.run(move || serve_one_nack(backend));
    }
}

fn serve_one_nack(backend: &str) {
    let p = ports();
    let admin = SocketAddr::from((Ipv6Addr::LOCALHOST, p[2]));
    let args: Vec<String> = ["--mc-iface", "v0", "--nack-addr", "fd00::1", "--backend", backend]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let e = Engine::launch(&[], &args, p, admin);
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
