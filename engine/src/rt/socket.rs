//! Socket construction for workers: per-worker multicast ingress sockets
//! joined to that worker's groups only, and the SO_REUSEPORT NACK group;
//! and [`IngressFilter`], what an ingress socket's datagrams must have been
//! sent to (see the `rt` docs, "What ingress accepts").

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use ricochet_wire::group::SourceMode;

use super::{Addressing, Egress, Options};

/// Receive buffer asked for on every socket; the kernel caps it at
/// `net.core.rmem_max` (docs/OPERATIONS.md says how to raise that).
const RCVBUF: usize = 8 << 20;

fn udp(domain: Domain) -> io::Result<Socket> {
    let s = Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(RCVBUF);
    let _ = s.set_send_buffer_size(RCVBUF);
    Ok(s)
}

/// The ingress socket of one worker: bound to the listen port, joined to
/// `groups` (indices) and nothing else (MULTICAST_ALL off, so the kernel
/// delivers only the groups this socket joined, even though every worker's
/// socket is bound to the same port). Bound to the wildcard, because one
/// socket takes several groups, it also receives unicast to the port: it
/// reports each datagram's destination (IP_PKTINFO / IPV6_RECVPKTINFO) so
/// [`IngressFilter`] can refuse those.
pub(crate) fn ingress(opts: &Options, groups: &[u16]) -> io::Result<Socket> {
    use nix::sys::socket::{setsockopt, sockopt};
    match &opts.addressing {
        Addressing::Ipv4Lab { interface } => {
            let s = udp(Domain::IPV4)?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_multicast_all_v4(false)?;
            setsockopt(&s, sockopt::Ipv4PacketInfo, &true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, opts.listen_port)).into())?;
            for &g in groups {
                s.join_multicast_v4(&ricochet_wire::group::ipv4_lab_group(g), interface)?;
            }
            Ok(s)
        }
        Addressing::Ipv6 { mode, scope, group_id, interface_index } => {
            let s = udp(Domain::IPV6)?;
            s.set_only_v6(true)?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_multicast_all_v6(false)?;
            setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true)?;
            s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, opts.listen_port)).into())?;
            if *mode == SourceMode::Ssm {
                // Only (S,G) joins under SSM, made by `rt::ssm` once the
                // sources are known: a (*,G) join of an FF3x group is not
                // allowed (RFC 4607 § 1) and would take any source.
                return Ok(s);
            }
            for &g in groups {
                let addr = ricochet_wire::group::ipv6_group(*mode, *scope, *group_id, g)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                s.join_multicast_v6(&addr, *interface_index)?;
            }
            Ok(s)
        }
    }
}

/// The SSM driver's socket for BRC-139 shard manifests: bound to the
/// beacon group itself at the beacon port (manifests share both with
/// ADVERTs), so it takes only datagrams sent to that group and cannot
/// collide with the NACK socket when the ports are equal; `SO_REUSEADDR`
/// so listeners on the host can bind it too. Joined `(S,G)` by `rt::ssm`.
pub(crate) fn manifest(group: Ipv6Addr, port: u16) -> io::Result<Socket> {
    let s = udp(Domain::IPV6)?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_multicast_all_v6(false)?;
    s.bind(&SocketAddr::from((group, port)).into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind [{group}]:{port} for shard manifests (--beacon-port): {e}"),
        )
    })?;
    Ok(s)
}

/// What the ingress sockets accept: datagrams whose destination address
/// (from packet info) is one of the fabric's configured groups. Everything
/// else — unicast to the data port, broadcast, another group, or no packet
/// info at all — is refused before it is parsed. With `--ingress-allow`,
/// only datagrams from a listed source are taken as well.
#[derive(Debug, Clone)]
pub(crate) struct IngressFilter {
    addressing: Addressing,
    /// The configured group indices, sorted.
    groups: Vec<u16>,
    /// `--ingress-allow`; empty = every source.
    sources: crate::retry::AllowList,
}

/// Why [`IngressFilter::admit`] refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not multicast to a configured group.
    NotMulticast,
    /// From a source `--ingress-allow` does not list.
    SourceNotAllowed,
}

impl IngressFilter {
    pub(crate) fn new(opts: &Options) -> IngressFilter {
        let mut groups = opts.groups.clone();
        groups.sort_unstable();
        groups.dedup();
        IngressFilter {
            addressing: opts.addressing.clone(),
            groups,
            sources: opts.ingress_allow.clone(),
        }
    }

    /// Whether a datagram sent to `dest` is fabric multicast: the address
    /// maps back to a group index (no allocation, no socket call) and
    /// that index is configured.
    pub(crate) fn accepts(&self, dest: Option<IpAddr>) -> bool {
        let index = match (&self.addressing, dest) {
            (Addressing::Ipv4Lab { .. }, Some(IpAddr::V4(a))) => {
                ricochet_wire::group::ipv4_lab_index(a)
            }
            (Addressing::Ipv6 { mode, scope, group_id, .. }, Some(IpAddr::V6(a))) => {
                ricochet_wire::group::ipv6_group_index(a, *mode, *scope, *group_id)
            }
            _ => None,
        };
        index.is_some_and(|i| self.groups.binary_search(&i).is_ok())
    }

    /// Whether a datagram from `src` to `dest` is taken: fabric multicast
    /// ([`Self::accepts`]) from a listed source, when sources are listed
    /// (one with no source address then is refused too).
    pub(crate) fn admit(&self, src: Option<IpAddr>, dest: Option<IpAddr>) -> Result<(), Refused> {
        if !self.accepts(dest) {
            return Err(Refused::NotMulticast);
        }
        if !self.sources.is_empty() && !src.is_some_and(|ip| self.sources.contains(ip)) {
            return Err(Refused::SourceNotAllowed);
        }
        Ok(())
    }
}

/// How long [`nack_port_is_free`] waits for a held NACK port to be let go
/// before it calls the holder a conflict. A process that has just exited
/// can still hold its sockets for a moment: the kernel tears an io_uring
/// instance down (and drops the sockets its pending receives reference)
/// asynchronously after the process is reaped, so a restart by systemd or
/// a supervisor that starts the new process at once would otherwise fail.
const NACK_PORT_GRACE: Duration = Duration::from_secs(3);

/// Checks, before the NACK reuseport group is made, that nothing holds the
/// NACK address and port: `SO_REUSEPORT` would let a second process of the
/// same user join the group silently and take a share of its NACKs (the
/// kernel balances unicast across a group). A probe bind without
/// `SO_REUSEPORT`, released at once, fails if any socket — another
/// ricochet's or a stranger's — holds it; the probe is repeated for
/// [`NACK_PORT_GRACE`] so a predecessor's sockets still being torn down do
/// not count. The data port is not checked: multicast reaches every socket
/// joined on it, so siblings and listeners on one host share it without
/// taking frames from each other.
pub(crate) fn nack_port_is_free(opts: &Options) -> io::Result<()> {
    let bind = SocketAddr::new(opts.nack_bind, opts.nack_port);
    let deadline = Instant::now() + NACK_PORT_GRACE;
    let mut waiting = false;
    loop {
        match probe_bind(bind) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !waiting {
                    tracing::info!(
                        "UDP {bind} is held; waiting up to {}s for a previous process to let it go",
                        NACK_PORT_GRACE.as_secs()
                    );
                    waiting = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "--nack-port (NACK_PORT) = {}: another process already has UDP {bind} \
                         (see `ss -ulpn 'sport = :{}'`); stop it, or give this endpoint another \
                         port",
                        opts.nack_port, opts.nack_port
                    ),
                ));
            }
            other => return other,
        }
    }
}

/// Binds a plain UDP socket (no `SO_REUSEPORT`) to `bind` and closes it.
fn probe_bind(bind: SocketAddr) -> io::Result<()> {
    let probe = udp(if bind.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 })?;
    if let IpAddr::V6(v6) = bind.ip() {
        probe.set_only_v6(!v6.is_unspecified())?;
    }
    probe.bind(&bind.into())
}

/// One member of the NACK reuseport group. Members must be created in
/// worker order: the steering program returns an index into the group in
/// the order sockets joined it.
pub(crate) fn nack_member(opts: &Options) -> io::Result<Socket> {
    let bind = SocketAddr::new(opts.nack_bind, opts.nack_port);
    let s = udp(if bind.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 })?;
    if bind.is_ipv6() {
        // Accept v4-mapped NACKs on a wildcard v6 socket unless bound to a
        // specific v6 address.
        s.set_only_v6(!bind.ip().is_unspecified())?;
    }
    s.set_reuse_port(true)?;
    if bind.ip().is_unspecified() {
        // Each NACK's local address, so its replies leave from it
        // (`rt::reply_source`); on `[::]`, v4-mapped for IPv4 NACKs.
        use nix::sys::socket::{setsockopt, sockopt};
        if bind.is_ipv4() {
            setsockopt(&s, sockopt::Ipv4PacketInfo, &true)?;
        } else {
            setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true)?;
        }
    }
    s.bind(&bind.into())?;
    egress_options(&s, opts)?;
    Ok(s)
}

/// One member of the DHT reuseport group, bound on `port` like the NACK
/// socket (the NACK bind address; `[::]` is dual-stack). Members must be
/// created in worker order, as the NACK group's. A bind error names the
/// flag.
pub(crate) fn dht_member(opts: &Options, port: u16) -> io::Result<Socket> {
    reuseport_member(
        SocketAddr::new(opts.nack_bind, port),
        "--dht-port (RICOCHET_DHT_PORT)",
        "is another DHT node or endpoint using the port? pick another with --dht-port",
    )
}

/// One member of the gossip reuseport group on `bind` (a worker's, or the
/// control thread's, which joins last): dual-stack when bound to `[::]`;
/// its 8 MiB receive buffer holds a window of G6 snapshot chunks.
pub(crate) fn gossip_member(bind: SocketAddr) -> io::Result<Socket> {
    reuseport_member(
        bind,
        "--gossip-port (RICOCHET_GOSSIP_PORT)",
        "is another endpoint using the port? pick another with --gossip-port",
    )
}

/// A UDP socket joining the SO_REUSEPORT group on `bind` (dual-stack when
/// bound to `[::]`); an error names `flag` and gives `fix`.
fn reuseport_member(bind: SocketAddr, flag: &str, fix: &str) -> io::Result<Socket> {
    let fail = |e: io::Error| {
        let port = bind.port();
        io::Error::new(e.kind(), format!("{flag} = {port}: cannot bind {bind}: {e} ({fix})"))
    };
    let s = udp(if bind.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 }).map_err(fail)?;
    if let IpAddr::V6(v6) = bind.ip() {
        s.set_only_v6(!v6.is_unspecified()).map_err(fail)?;
    }
    s.set_reuse_port(true).map_err(fail)?;
    s.bind(&bind.into()).map_err(fail)?;
    Ok(s)
}

/// The upstream socket of one worker: an ephemeral port on the NACK
/// address, so upstream endpoints see this endpoint's NACK address as the
/// source and their replies come back to this worker.
pub(crate) fn upstream(opts: &Options) -> io::Result<Socket> {
    let bind = SocketAddr::new(opts.nack_bind, 0);
    let s = udp(if bind.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 })?;
    if bind.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.bind(&bind.into())?;
    Ok(s)
}

/// Multicast egress options on the NACK socket, which sends retransmits
/// out of the first egress interface.
fn egress_options(s: &Socket, opts: &Options) -> io::Result<()> {
    match opts.egress.first() {
        Some(&egress) if opts.nack_bind.is_ipv4() == matches!(egress, Egress::V4(_)) => {
            multicast_out(s, opts, egress)
        }
        _ => Ok(()),
    }
}

/// Sends multicast out of `egress`, with the loop and hop settings.
pub(crate) fn multicast_out(s: &Socket, opts: &Options, egress: Egress) -> io::Result<()> {
    match egress {
        Egress::V4(interface) => {
            s.set_multicast_if_v4(&interface)?;
            s.set_multicast_loop_v4(opts.multicast_loop)?;
            s.set_multicast_ttl_v4(opts.multicast_hops)
        }
        Egress::V6(index) => {
            s.set_multicast_if_v6(index)?;
            s.set_multicast_loop_v6(opts.multicast_loop)?;
            s.set_multicast_hops_v6(opts.multicast_hops)
        }
    }
}

/// The egress sockets of one worker for the second and further egress
/// interfaces: each sends a copy of every multicast retransmit out of its
/// interface, as the reference's retransmitter writes each frame to every
/// `EGRESS_IFACE`. Bound to an ephemeral port on the wildcard address, so
/// the kernel picks each interface's own source address.
pub(crate) fn extra_egress(opts: &Options) -> io::Result<Vec<Socket>> {
    opts.egress
        .iter()
        .skip(1)
        .map(|&egress| {
            let s = match egress {
                Egress::V4(_) => udp(Domain::IPV4)?,
                Egress::V6(_) => {
                    let s = udp(Domain::IPV6)?;
                    s.set_only_v6(true)?;
                    s
                }
            };
            multicast_out(&s, opts, egress)?;
            let any: IpAddr = match egress {
                Egress::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                Egress::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            };
            s.bind(&SocketAddr::new(any, 0).into())?;
            Ok(s)
        })
        .collect()
}

/// The destination of a retransmit to group `index`.
pub(crate) fn group_dest(opts: &Options, index: u16) -> Option<SockAddr> {
    let ip: IpAddr = match &opts.addressing {
        Addressing::Ipv4Lab { .. } => ricochet_wire::group::ipv4_lab_group(index).into(),
        Addressing::Ipv6 { mode, scope, group_id, .. } => {
            ricochet_wire::group::ipv6_group(*mode, *scope, *group_id, index).ok()?.into()
        }
    };
    Some(SocketAddr::new(ip, opts.egress_port).into())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;
    use std::time::Instant;

    use ricochet_wire::frame::{Extra, FrameRepr, FrameVersion};
    use ricochet_wire::group::{Scope, SourceMode};

    use super::{IngressFilter, Refused};
    use crate::rt::{Addressing, Shared, sys::EventFd, worker};

    fn opts(addressing: Addressing, groups: &[u16]) -> crate::rt::Options {
        let mut o = crate::rt::dht_shard::tests::options(1);
        o.dht = None;
        o.addressing = addressing;
        o.groups = groups.to_vec();
        o
    }

    const LAB: Addressing = Addressing::Ipv4Lab { interface: Ipv4Addr::LOCALHOST };

    #[test]
    fn only_configured_groups_pass() {
        let f = IngressFilter::new(&opts(LAB, &[3, 0, 0xFFFE]));
        let v4 = |a: Ipv4Addr| Some(IpAddr::from(a));
        for g in [0, 3, 0xFFFE] {
            assert!(f.accepts(v4(ricochet_wire::group::ipv4_lab_group(g))), "group {g}");
        }
        for refused in [
            v4(ricochet_wire::group::ipv4_lab_group(1)),
            v4(Ipv4Addr::LOCALHOST),
            v4(Ipv4Addr::BROADCAST),
            v4(Ipv4Addr::new(239, 12, 0, 0)),
            Some(IpAddr::from(Ipv6Addr::LOCALHOST)),
            None,
        ] {
            assert!(!f.accepts(refused), "{refused:?}");
        }
        let (mode, scope, group_id) = (SourceMode::Asm, Scope::Site, 0x000B);
        let v6 = Addressing::Ipv6 { mode, scope, group_id, interface_index: 1 };
        let f = IngressFilter::new(&opts(v6, &[2]));
        let group = |g| ricochet_wire::group::ipv6_group(mode, scope, group_id, g).unwrap();
        assert!(f.accepts(Some(group(2).into())));
        for refused in [
            Some(group(5).into()),
            Some(ricochet_wire::group::ipv6_group(mode, scope, 0x000C, 2).unwrap().into()),
            Some(Ipv6Addr::LOCALHOST.into()),
            Some(ricochet_wire::group::ipv4_lab_group(2).into()),
            None,
        ] {
            assert!(!f.accepts(refused), "{refused:?}");
        }
    }

    /// The one worker of an endpoint run with `o`.
    fn lone_core(o: &crate::rt::Options) -> worker::Core {
        let (tx, rx) = crossbeam_channel::bounded(8);
        let wakers = vec![Arc::new(EventFd::new().unwrap())];
        worker::Core::new(0, o, rx, vec![tx], wakers, Shared::for_test(1))
    }

    /// A transaction frame of flow 0xAB, SeqNum 1.
    fn tx_frame(payload: &[u8]) -> Vec<u8> {
        let repr = FrameRepr {
            version: FrameVersion::Tx,
            byte7: 0,
            id: [7; 32],
            hash_key: 0xAB,
            seq: 1,
            subtree_id: [0; 32],
            extra: Extra::None,
            payload,
        };
        let mut frame = vec![0u8; repr.buffer_len()];
        repr.emit(&mut frame).unwrap();
        frame
    }

    /// The worker refuses a frame that was not multicast to a group before
    /// parsing it (counted `not_multicast`), and caches the same frame
    /// multicast; a datagram on the NACK socket longer than
    /// `MAX_NACK_DATAGRAM` is `too_long`, a shorter misfit
    /// `length_mismatch`.
    #[test]
    fn the_worker_drops_unicast_frames_and_labels_oversized_nacks() {
        let mut core = lone_core(&opts(LAB, &[0, 1, 2, 3]));
        let frame = tx_frame(b"forged");
        let now = Instant::now();
        let src = Some(IpAddr::from(Ipv4Addr::LOCALHOST));
        for dest in [Some(Ipv4Addr::LOCALHOST.into()), None] {
            core.on_ingress(now, &frame, src, dest);
        }
        let c = &core.counters;
        assert_eq!(c.dropped.get(crate::rt::NOT_MULTICAST), Some(&2));
        assert_eq!((c.ingress_datagrams, c.fabric_frames, c.fabric_malformed), (2, 0, 0));
        core.on_ingress(now, &frame, src, Some(ricochet_wire::group::ipv4_lab_group(2).into()));
        assert_eq!(core.counters.fabric_frames_cached, 1);
        assert_eq!(core.counters.dropped.get(crate::rt::NOT_MULTICAST), Some(&2));

        let nack_src = "127.0.0.1:5000".parse().unwrap();
        core.on_nack(now, nack_src, None, &[0u8; crate::rt::MAX_NACK_DATAGRAM + 1]);
        assert_eq!(core.counters.dropped.get("too_long"), Some(&1));
        let mut long_nack = [0u8; 100];
        ricochet_wire::control::NackRepr {
            flags: ricochet_wire::control::NackFlags(0),
            hash_key: 0xAB,
            start_seq: 1,
            end_seq: 1,
            subtree_id: [0; 32],
        }
        .emit(&mut long_nack[..64])
        .unwrap();
        core.on_nack(now, nack_src, None, &long_nack);
        assert_eq!(core.counters.dropped.get("too_long"), Some(&1));
        assert_eq!(core.counters.dropped.get("length_mismatch"), Some(&1));
        assert_eq!(core.counters.nack_datagrams, 2);

        // Too long for the data port: `too_long` if it was multicast to a
        // group, `not_multicast` (and not malformed) if it was not.
        let group = Some(ricochet_wire::group::ipv4_lab_group(1).into());
        core.on_oversized(worker::Oversized::Ingress { src, dest: group }, 70_000, 70_001);
        assert_eq!(core.counters.dropped.get("too_long"), Some(&2));
        assert_eq!(core.counters.fabric_malformed, 1);
        core.on_oversized(worker::Oversized::Ingress { src, dest: src }, 70_000, 70_001);
        assert_eq!(core.counters.dropped.get("too_long"), Some(&2));
        assert_eq!(core.counters.dropped.get(crate::rt::NOT_MULTICAST), Some(&3));
        assert_eq!(core.counters.fabric_malformed, 1);
    }

    fn allow(list: &[&str]) -> crate::retry::AllowList {
        crate::retry::AllowList::new(list.iter().map(|s| {
            let (ip, len) = s.split_once('/').unwrap();
            crate::retry::Prefix::new(ip.parse().unwrap(), len.parse().unwrap()).unwrap()
        }))
    }

    #[test]
    fn with_sources_listed_only_their_multicast_passes() {
        let group = Some(IpAddr::from(ricochet_wire::group::ipv4_lab_group(0)));
        let from = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let mut o = opts(LAB, &[0]);
        let any = IngressFilter::new(&o);
        assert_eq!(any.admit(from("192.0.2.9"), group), Ok(()), "no list: every source");
        assert_eq!(any.admit(None, group), Ok(()));
        o.ingress_allow = allow(&["10.1.0.0/16", "fd00::/64"]);
        let f = IngressFilter::new(&o);
        for ok in ["10.1.2.3", "::ffff:10.1.0.1", "fd00::7"] {
            assert_eq!(f.admit(from(ok), group), Ok(()), "{ok}");
        }
        for refused in ["10.2.0.1", "fd00:0:0:1::7", "127.0.0.1"] {
            assert_eq!(f.admit(from(refused), group), Err(Refused::SourceNotAllowed), "{refused}");
        }
        assert_eq!(f.admit(None, group), Err(Refused::SourceNotAllowed), "no source address");
        // The destination is judged first: unicast from a listed source is
        // still not multicast.
        assert_eq!(f.admit(from("10.1.2.3"), from("127.0.0.1")), Err(Refused::NotMulticast));
    }

    /// A frame from an unlisted source is dropped before it is parsed
    /// (counted `source_not_allowed`, not malformed, never cached), an
    /// oversized one too; a listed source's frame is cached.
    #[test]
    fn the_worker_caches_only_listed_sources_frames() {
        let mut o = opts(LAB, &[0, 1, 2, 3]);
        o.ingress_allow = allow(&["127.0.0.1/32"]);
        let mut core = lone_core(&o);
        let frame = tx_frame(b"from a stranger");
        let now = Instant::now();
        let group = Some(ricochet_wire::group::ipv4_lab_group(2).into());
        let stranger = Some(IpAddr::from(Ipv4Addr::new(127, 0, 0, 2)));
        core.on_ingress(now, &frame, stranger, group);
        core.on_ingress(now, b"garbage", stranger, group);
        core.on_oversized(worker::Oversized::Ingress { src: stranger, dest: group }, 9, 10);
        let c = &core.counters;
        assert_eq!(c.dropped.get(crate::rt::SOURCE_NOT_ALLOWED), Some(&3));
        assert_eq!((c.ingress_datagrams, c.fabric_frames, c.fabric_malformed), (3, 0, 0));
        assert_eq!(c.fabric_frames_cached, 0);
        core.on_ingress(now, &frame, Some(Ipv4Addr::LOCALHOST.into()), group);
        assert_eq!(core.counters.fabric_frames_cached, 1);
        assert_eq!(core.counters.dropped.get(crate::rt::SOURCE_NOT_ALLOWED), Some(&3));
    }
}
