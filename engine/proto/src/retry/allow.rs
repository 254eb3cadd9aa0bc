//! Address prefix lists: which sources a rule lets in.
//!
//! Two rules use them:
//! - `--proxy-allow`, the downstream endpoints a Proxied NACK is honoured
//!   from. A Proxied NACK asks for unicast copies of the frames it names, so
//!   a source that may set the flag can draw far more bytes than it sends
//!   (one 64-byte range NACK, 64 frames of 50 KB: 3 MB). Only the endpoints
//!   listed, and live siblings, get that; from anyone else the flag grants
//!   nothing beyond a plain NACK (see the service's "Amplification").
//! - `--ingress-allow`, the publishers whose multicast frames are cached:
//!   on an any-source (ASM) fabric any host that can reach a group can send
//!   frames to it, and the list keeps strangers' frames out of the cache.
//!
//! # Contract
//! - A list of address prefixes (CIDR). IPv4 prefixes also match the same
//!   addresses as v4-mapped IPv6 (`::ffff:a.b.c.d`), as the rate limits
//!   count them: a dual-stack socket sees IPv4 peers that way.
//! - Pure and allocation-free per check: a linear scan, which is what a
//!   list of a few endpoints or publisher networks wants.

use std::fmt;
use std::net::IpAddr;

use super::limit::ip_key;

/// One address prefix: `addr/len`, host bits zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// The network, as [`ip_key`] maps it (IPv4 as v4-mapped IPv6).
    net: u128,
    /// Prefix length in the 128-bit space (an IPv4 `/n` is `96 + n`).
    len: u8,
    /// How to print it back.
    v4: bool,
}

/// Why a prefix was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixError {
    /// Longer than the address (over 32 for IPv4, 128 for IPv6).
    TooLong,
    /// Bits set after the prefix (`10.1.2.3/8`): the network is ambiguous.
    HostBits,
}

impl Prefix {
    /// `addr/len`; `len` counts bits of `addr`'s own family.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        let (v4, max) = match addr {
            IpAddr::V4(_) => (true, 32),
            IpAddr::V6(_) => (false, 128),
        };
        if len > max {
            return Err(PrefixError::TooLong);
        }
        let len = len + (128 - max);
        let net = ip_key(addr);
        if net & !mask(len) != 0 {
            return Err(PrefixError::HostBits);
        }
        Ok(Prefix { net, len, v4 })
    }

    /// The single address `addr` (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Prefix {
        Prefix { net: ip_key(addr), len: 128, v4: addr.is_ipv4() }
    }

    /// `addr` with the host bits cleared: the prefix an operator who wrote
    /// `addr/len` most likely meant (for the error message).
    pub fn masked(addr: IpAddr, len: u8) -> Option<Prefix> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then(|| {
            let len = len + (128 - max);
            Prefix { net: ip_key(addr) & mask(len), len, v4: addr.is_ipv4() }
        })
    }

    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip_key(ip) & mask(self.len) == self.net
    }
}

fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        n => u128::MAX << (128 - u32::from(n.min(128))),
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v4 {
            let a = std::net::Ipv4Addr::from(self.net as u32);
            write!(f, "{a}/{}", self.len - 96)
        } else {
            write!(f, "{}/{}", std::net::Ipv6Addr::from(self.net), self.len)
        }
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A list of address prefixes. What an empty list means is the rule's:
/// `--proxy-allow` empty honours no Proxied NACK but live siblings,
/// `--ingress-allow` empty lets every source in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AllowList {
    prefixes: Vec<Prefix>,
}

impl AllowList {
    /// These prefixes.
    pub fn new(prefixes: impl IntoIterator<Item = Prefix>) -> Self {
        AllowList { prefixes: prefixes.into_iter().collect() }
    }

    /// Whether `ip` is inside one of the prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.prefixes.iter().any(|p| p.contains(ip))
    }

    /// Whether no source is listed.
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// The prefixes, in the order given.
    pub fn prefixes(&self) -> &[Prefix] {
        &self.prefixes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_match_their_addresses_in_both_spellings_of_ipv4() {
        let p = Prefix::new(ip("10.1.0.0"), 16).unwrap();
        assert!(p.contains(ip("10.1.255.3")) && p.contains(ip("::ffff:10.1.0.9")));
        assert!(!p.contains(ip("10.2.0.1")) && !p.contains(ip("::a01:1")));
        assert_eq!(p.to_string(), "10.1.0.0/16");
        let h = Prefix::new(ip("127.0.0.1"), 32).unwrap();
        assert!(h.contains(ip("127.0.0.1")) && !h.contains(ip("127.0.0.2")));
        assert_eq!(h, Prefix::host(ip("127.0.0.1")));
        let v6 = Prefix::new(ip("fd00:1::"), 32).unwrap();
        assert!(v6.contains(ip("fd00:1::7")) && !v6.contains(ip("fd00:2::7")));
        assert!(!v6.contains(ip("10.1.0.1")));
        assert_eq!(v6.to_string(), "fd00:1::/32");
        let all4 = Prefix::new(ip("0.0.0.0"), 0).unwrap();
        assert!(all4.contains(ip("192.0.2.1")) && !all4.contains(ip("2001:db8::1")));
        assert!(Prefix::new(ip("::"), 0).unwrap().contains(ip("2001:db8::1")));
    }

    #[test]
    fn ambiguous_or_impossible_prefixes_are_refused() {
        assert_eq!(Prefix::new(ip("10.1.2.3"), 8), Err(PrefixError::HostBits));
        assert_eq!(Prefix::masked(ip("10.1.2.3"), 8).unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Prefix::new(ip("10.0.0.0"), 33), Err(PrefixError::TooLong));
        assert_eq!(Prefix::new(ip("::"), 129), Err(PrefixError::TooLong));
    }

    #[test]
    fn an_empty_list_allows_nobody() {
        let none = AllowList::default();
        assert!(none.is_empty() && !none.contains(ip("127.0.0.1")));
        let some = AllowList::new([Prefix::host(ip("::1")), Prefix::host(ip("127.0.0.1"))]);
        assert!(some.contains(ip("::1")) && some.contains(ip("127.0.0.1")));
        assert!(!some.contains(ip("127.0.0.2")));
    }
}
