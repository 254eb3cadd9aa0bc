//! ADVERT beacons (BRC-126), sent from the control thread to the beacon
//! group (index 0xFFFD) of each configured scope every interval, with the
//! Draining flag set once a drain starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ricochet_wire::control::{AdvertFlags, AdvertRepr, AdvertScope, Control};
use ricochet_wire::group::{INDEX_BEACON, Scope, SourceMode};

use super::{Addressing, Egress, Options, Shared};

/// What a beacon advertises.
#[derive(Debug, Clone)]
pub struct BeaconSettings {
    /// Scopes to announce on (the reference's `all` is every one of them).
    pub scopes: Vec<Scope>,
    /// Every ADVERT's scope byte is 0xFF rather than its group's scope
    /// (`BEACON_SCOPE=all`/`both`, as the reference marks them).
    pub all_scopes: bool,
    /// Address listeners should send NACKs to.
    pub nack_addr: std::net::Ipv6Addr,
    /// NACK port.
    pub nack_port: u16,
    /// UDP port ADVERTs are sent to (9300: where listeners listen,
    /// whatever the NACK port).
    pub port: u16,
    /// Tier 0–254.
    pub tier: u8,
    /// Preference.
    pub preference: u8,
    /// Interval.
    pub interval: Duration,
    /// Flags besides Draining (HasParent, Unicast, Multicast).
    pub flags: u16,
    /// Draining from the start (BEACON_FLAGS_DRAINING).
    pub draining: bool,
    /// The beacon group prefixes each ADVERT goes to: the configured mode's
    /// under ASM; under SSM per `--control-group-compat` (asm-only: FF0x,
    /// both: FF0x and FF3x, derived: FF3x). Empty means the configured mode.
    pub prefixes: Vec<SourceMode>,
    /// `--bind-source`: the IPv6 address ADVERTs leave from, so SSM peers
    /// that list this endpoint in `--ssm-bootstrap-beacon` receive them.
    pub bind_source: Option<std::net::Ipv6Addr>,
    /// CRC-32C of the instance id.
    pub instance_id: u32,
}

/// Builds the ADVERT for `scope`, Draining when asked.
pub fn advert(b: &BeaconSettings, scope: Scope, draining: bool) -> AdvertRepr {
    let mut flags = b.flags;
    if draining || b.draining {
        flags |= AdvertFlags::DRAINING;
    }
    AdvertRepr {
        scope: if b.all_scopes { AdvertScope::All } else { AdvertScope::Group(scope) },
        nack_addr: b.nack_addr,
        nack_port: b.nack_port,
        tier: b.tier,
        preference: b.preference,
        interval_secs: b.interval.as_secs().clamp(1, u16::MAX as u64) as u16,
        flags: AdvertFlags(flags),
        instance_id: b.instance_id,
    }
}

/// Where the ADVERTs for `scope` go: the beacon group of each prefix in
/// `prefixes` (the configured mode's when empty), at the beacon port. A
/// prefix with no group at that scope (SSM at link or org) is skipped.
fn destinations(
    opts: &Options,
    prefixes: &[SourceMode],
    scope: Scope,
    port: u16,
) -> Vec<SocketAddr> {
    match &opts.addressing {
        Addressing::Ipv4Lab { .. } => {
            vec![SocketAddr::from((ricochet_wire::group::ipv4_lab_group(INDEX_BEACON), port))]
        }
        Addressing::Ipv6 { mode, group_id, .. } => {
            let own = [*mode];
            let modes = if prefixes.is_empty() { &own[..] } else { prefixes };
            modes
                .iter()
                .filter_map(|m| {
                    ricochet_wire::group::ipv6_group(*m, scope, *group_id, INDEX_BEACON).ok()
                })
                .map(|a| SocketAddr::from((a, port)))
                .collect()
        }
    }
}

/// Sends beacons until the task is dropped. Send errors are logged and
/// counted, never fatal: a missing route must not take the endpoint down.
pub async fn run(opts: Options, b: BeaconSettings, shared: Arc<Shared>) {
    let sock = match beacon_socket(&opts, b.bind_source) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "beacon socket failed; no ADVERTs will be sent");
            return;
        }
    };
    let mut tick = tokio::time::interval(b.interval);
    let mut buf = [0u8; 64];
    loop {
        tick.tick().await;
        for &scope in &b.scopes {
            let msg = Control::Advert(advert(&b, scope, shared.draining()));
            let Ok(n) = msg.emit(&mut buf) else { continue };
            for dest in destinations(&opts, &b.prefixes, scope, b.port) {
                match sock.send_to(&buf[..n], dest).await {
                    Ok(_) => shared.beacons_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(%dest, error = %e, "ADVERT send failed");
                        0
                    }
                };
            }
        }
    }
}

/// Checks at startup that `--bind-source` is an address of this host (a
/// socket can bind it), so a typo fails the start instead of silencing
/// every ADVERT later.
pub fn check_bind_source(addr: std::net::Ipv6Addr) -> Result<(), String> {
    std::net::UdpSocket::bind(SocketAddr::from((addr, 0))).map(drop).map_err(|e| {
        format!(
            "--bind-source (BIND_SOURCE) = {addr}: cannot bind it ({e}); set it to an IPv6 \
             address of this host (see `ip -6 addr`), or unset it"
        )
    })
}

/// The beacon socket: out of the first egress interface, as the
/// reference's beacon, from `bind_source` when set (IPv6 only).
fn beacon_socket(
    opts: &Options,
    bind_source: Option<std::net::Ipv6Addr>,
) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let egress = opts.egress.first().copied().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no egress interface")
    })?;
    let s = match egress {
        Egress::V4(interface) => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
            super::socket::multicast_out(&s, opts, egress)?;
            s.bind(&SocketAddr::from((interface, 0)).into())?;
            s
        }
        Egress::V6(_) => {
            let s = Socket::new(Domain::IPV6, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
            super::socket::multicast_out(&s, opts, egress)?;
            let from = bind_source.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
            s.bind(&SocketAddr::from((from, 0)).into()).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "--bind-source (BIND_SOURCE) = {from}: cannot bind the beacon socket: \
                         {e}; set it to an address of this host (see `ip -6 addr`)"
                    ),
                )
            })?;
            s
        }
    };
    tokio::net::UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Site-scope settings, not draining, as a test's starting point.
    fn settings() -> BeaconSettings {
        BeaconSettings {
            scopes: vec![Scope::Site],
            all_scopes: false,
            nack_addr: "::1".parse().unwrap(),
            nack_port: 9300,
            port: 9300,
            tier: 0,
            preference: 128,
            interval: Duration::from_secs(60),
            flags: 0,
            draining: false,
            prefixes: Vec::new(),
            bind_source: None,
            instance_id: 7,
        }
    }

    #[test]
    fn draining_sets_the_flag() {
        let b = BeaconSettings { flags: AdvertFlags::MULTICAST_RETRANSMIT, ..settings() };
        assert!(!advert(&b, Scope::Site, false).flags.has(AdvertFlags::DRAINING));
        let a = advert(&b, Scope::Site, true);
        assert!(a.flags.has(AdvertFlags::DRAINING | AdvertFlags::MULTICAST_RETRANSMIT));
        assert_eq!(a.interval_secs, 60);
        assert_eq!(a.scope, AdvertScope::Group(Scope::Site));
    }

    #[test]
    fn control_group_compat_picks_the_beacon_prefixes() {
        let mut o = crate::rt::dht_shard::tests::options(1);
        o.addressing = Addressing::Ipv6 {
            mode: SourceMode::Ssm,
            scope: Scope::Site,
            group_id: 0xB,
            interface_index: 1,
        };
        let dests = |prefixes: &[SourceMode], scope| -> Vec<String> {
            destinations(&o, prefixes, scope, 9300).iter().map(|d| d.to_string()).collect()
        };
        assert_eq!(dests(&[], Scope::Site), ["[ff35::b:fffd]:9300"], "the mode's own");
        assert_eq!(dests(&[SourceMode::Asm], Scope::Site), ["[ff05::b:fffd]:9300"]);
        assert_eq!(
            dests(&[SourceMode::Asm, SourceMode::Ssm], Scope::Global),
            ["[ff0e::b:fffd]:9300", "[ff3e::b:fffd]:9300"]
        );
        assert_eq!(dests(&[SourceMode::Asm, SourceMode::Ssm], Scope::Org), ["[ff08::b:fffd]:9300"]);
    }

    #[test]
    fn all_scopes_mark_every_advert_0xff_as_the_reference() {
        let b = BeaconSettings {
            scopes: vec![Scope::Site, Scope::Org, Scope::Global],
            all_scopes: true,
            ..settings()
        };
        for scope in [Scope::Site, Scope::Org, Scope::Global] {
            assert_eq!(advert(&b, scope, false).scope, AdvertScope::All);
        }
    }
}
