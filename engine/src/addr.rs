//! Socket-address helpers shared by the runtime and the drivers. A leaf:
//! depends on nothing else in the crate.

use std::net::SocketAddr;

/// IPv4-mapped IPv6 as IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
            SocketAddr::new(v6.ip().to_canonical(), v6.port())
        }
        _ => a,
    }
}
