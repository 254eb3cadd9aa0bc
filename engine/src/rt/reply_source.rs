//! Which local address a reply to a requester leaves from, when the NACK
//! socket is bound to a wildcard address: the one its NACK was sent to
//! (the packet info's `ipi_spec_dst` / `ipi6_addr`). On a multihomed host
//! the kernel would otherwise pick the source by route, and a listener that
//! sent to one address may drop answers from another (quinn-udp replies
//! from the arrival address for the same reason).
//!
//! Replies are not always sent in the round their NACK arrived in (a
//! shared-cache lookup parks the NACK until Redis answers), so the address
//! is remembered per requester rather than per NACK. The common case — every
//! NACK sent to one address — costs a comparison per NACK and no map.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Most requesters remembered once NACKs arrive on several addresses;
/// past it the memory starts over (at the end of a send round, so the
/// round's own replies keep theirs).
const MAX_REQUESTERS: usize = 65_536;

/// The local address each requester last sent a NACK to.
#[derive(Debug, Default)]
pub(crate) struct ReplySources {
    /// Off when the NACK socket is bound to one address: replies leave from
    /// it anyway.
    enabled: bool,
    /// The address every NACK since the last reset was sent to, until a
    /// NACK to another one arrives.
    first: Option<IpAddr>,
    /// Requesters whose NACK went to an address other than `first`, once
    /// there are several.
    others: HashMap<SocketAddr, IpAddr>,
}

impl ReplySources {
    /// Remembers nothing unless `nack_bind` is a wildcard address.
    pub(crate) fn new(nack_bind: IpAddr) -> Self {
        ReplySources { enabled: nack_bind.is_unspecified(), ..Default::default() }
    }

    /// A NACK from `requester` was sent to the local address `local` (its
    /// packet info; `None` when there was none). A multicast or unspecified
    /// address cannot be a source and is not remembered.
    pub(crate) fn note(&mut self, requester: SocketAddr, local: Option<IpAddr>) {
        let Some(local) = local.filter(|_| self.enabled) else { return };
        if local.is_multicast() || local.is_unspecified() {
            return;
        }
        match self.first {
            None => self.first = Some(local),
            Some(first) if first == local => {
                if !self.others.is_empty() {
                    self.others.remove(&requester);
                }
            }
            Some(_) => {
                self.others.insert(requester, local);
            }
        }
    }

    /// The address a reply to `requester` leaves from (`None`: the
    /// kernel's choice).
    pub(crate) fn get(&self, requester: SocketAddr) -> Option<IpAddr> {
        if self.others.is_empty() {
            return self.first;
        }
        self.others.get(&requester).copied().or(self.first)
    }

    /// Bounds the memory, between send rounds.
    pub(crate) fn trim(&mut self) {
        if self.others.len() > MAX_REQUESTERS {
            self.others = HashMap::new();
            self.first = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn replies_leave_from_the_address_each_requester_nacked() {
        let mut r = ReplySources::new("0.0.0.0".parse().unwrap());
        assert_eq!(r.get(a("10.0.0.9:1")), None);
        r.note(a("10.0.0.9:1"), ip("10.0.0.1"));
        r.note(a("10.0.0.8:1"), ip("10.0.0.1"));
        assert_eq!(r.get(a("10.0.0.9:1")), ip("10.0.0.1"));
        assert!(r.others.is_empty(), "one address: no map");
        r.note(a("10.0.0.8:1"), ip("192.168.1.1"));
        assert_eq!(r.get(a("10.0.0.8:1")), ip("192.168.1.1"));
        assert_eq!(r.get(a("10.0.0.9:1")), ip("10.0.0.1"));
        // Back to the first address.
        r.note(a("10.0.0.8:1"), ip("10.0.0.1"));
        assert_eq!(r.get(a("10.0.0.8:1")), ip("10.0.0.1"));
        // No packet info, or an address no datagram may come from.
        r.note(a("10.0.0.7:1"), None);
        r.note(a("10.0.0.7:1"), ip("239.1.1.1"));
        r.note(a("10.0.0.7:1"), ip("0.0.0.0"));
        assert_eq!(r.get(a("10.0.0.7:1")), ip("10.0.0.1"));
    }

    #[test]
    fn a_socket_bound_to_one_address_needs_none() {
        for (bind, want) in
            [("10.0.0.1", None), ("0.0.0.0", ip("10.0.0.1")), ("::", ip("10.0.0.1"))]
        {
            let mut r = ReplySources::new(bind.parse().unwrap());
            r.note(a("10.0.0.9:1"), ip("10.0.0.1"));
            assert_eq!(r.get(a("10.0.0.9:1")), want, "bound to {bind}");
        }
    }

    #[test]
    fn the_memory_is_bounded() {
        let mut r = ReplySources::new("0.0.0.0".parse().unwrap());
        r.note(a("10.0.0.1:1"), ip("10.0.0.1"));
        for i in 0..=MAX_REQUESTERS as u32 {
            let requester = SocketAddr::from((std::net::Ipv4Addr::from(0x0B00_0000 + i), 1));
            r.note(requester, ip("10.0.0.2"));
        }
        r.trim();
        assert!(r.others.is_empty() && r.first.is_none());
        assert_eq!(r.get(a("10.0.0.1:1")), None);
    }
}
