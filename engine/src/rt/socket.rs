//! Socket construction for workers: per-worker multicast ingress sockets
//! joined to that worker's groups only, and the SO_REUSEPORT NACK group.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

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
/// socket is bound to the same port).
pub(crate) fn ingress(opts: &Options, groups: &[u16]) -> io::Result<Socket> {
    match &opts.addressing {
        Addressing::Ipv4Lab { interface } => {
            let s = udp(Domain::IPV4)?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_multicast_all_v4(false)?;
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
            s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, opts.listen_port)).into())?;
            for &g in groups {
                let addr = ricochet_wire::group::ipv6_group(*mode, *scope, *group_id, g)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                s.join_multicast_v6(&addr, *interface_index)?;
            }
            Ok(s)
        }
    }
}

/// Checks, before the NACK reuseport group is made, that nothing holds the
/// NACK address and port: `SO_REUSEPORT` would let a second process of the
/// same user join the group silently and take a share of its NACKs (the
/// kernel balances unicast across a group). A probe bind without
/// `SO_REUSEPORT`, released at once, fails if any socket — another
/// ricochet's or a stranger's — holds it. The data port is not checked:
/// multicast reaches every socket joined on it, so siblings and listeners
/// on one host share it without taking frames from each other.
pub(crate) fn nack_port_is_free(opts: &Options) -> io::Result<()> {
    let bind = SocketAddr::new(opts.nack_bind, opts.nack_port);
    let probe = udp(if bind.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 })?;
    if let IpAddr::V6(v6) = bind.ip() {
        probe.set_only_v6(!v6.is_unspecified())?;
    }
    probe.bind(&bind.into()).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => io::Error::new(
            e.kind(),
            format!(
                "--nack-port (NACK_PORT) = {}: another process already has UDP {bind} (see `ss \
                 -ulpn 'sport = :{}'`); stop it, or give this endpoint another port",
                opts.nack_port, opts.nack_port
            ),
        ),
        _ => e,
    })
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
