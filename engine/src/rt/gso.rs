//! Which queued transmits leave as one UDP GSO send (`UDP_SEGMENT`), and
//! what this worker has learned the kernel will not segment.
//!
//! GSO lets a unicast retransmit and its ACK, or a burst of equal-size
//! ACKs, cross the kernel's UDP stack once. The kernel refuses a GSO send
//! with `EMSGSIZE` (`EINVAL` on older kernels) when a segment plus its IP
//! and UDP headers exceeds the route's MTU — a frame bigger than the path
//! MTU, which without GSO would simply leave IP-fragmented — and with `EIO`
//! when the device cannot checksum the segments. As in quinn-udp, a
//! refused send is sent again one datagram at a time (no datagram is lost)
//! and counted (`ricochet_gso_fallbacks_total`); unlike quinn-udp, an MTU
//! refusal only narrows GSO to the segments that fit that route
//! ([`GsoLimit`]) instead of turning it off, since the ACK bursts GSO helps
//! most are small.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::WorkerCounters;
use super::sys;
use crate::retry::{Dest, Payload, Transmit};

/// Most segments one UDP GSO send may carry (the kernel's UDP_MAX_SEGMENTS).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes one GSO send may carry (one IPv4 UDP datagram's worth).
pub(crate) const GSO_MAX_BYTES: usize = 65_507;

/// Splits queued transmits into runs that can leave as one UDP GSO send:
/// consecutive, to the same destination, every segment as long as the first
/// except the last, which may be shorter — so a unicast retransmit and the
/// ACK that follows it to the same requester, or a burst of equal-size
/// ACKs, cross the kernel's UDP stack once. Order is kept; [`GsoOrder`]
/// arranges a round first.
///
/// A run carries more than one segment only when its segments are at most
/// `max_segment` bytes long ([`GsoLimit::max_segment`]).
pub(crate) fn gso_runs(
    transmits: &[Transmit],
    max_segment: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= transmits.len() {
            return None;
        }
        let first = &transmits[start];
        let mut run = Run::start(first.payload.as_bytes().len(), max_segment);
        let mut end = start + 1;
        while end < transmits.len()
            && transmits[end].dest == first.dest
            && run.take(transmits[end].payload.as_bytes().len())
        {
            end += 1;
        }
        let range = start..end;
        start = end;
        Some(range)
    })
}

/// A GSO run being built: every segment as long as the first (`segment`)
/// but the last, at most [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`].
struct Run {
    segment: usize,
    last: usize,
    count: usize,
    total: usize,
    /// Whether this run may carry more than one segment at all.
    gso: bool,
}

impl Run {
    fn start(segment: usize, max_segment: usize) -> Run {
        let gso = segment > 0 && segment <= max_segment;
        Run { segment, last: segment, count: 1, total: segment, gso }
    }

    /// Whether a next segment of `len` bytes can join the run.
    fn fits(&self, len: usize) -> bool {
        self.gso
            && self.last == self.segment
            && len <= self.segment
            && self.count < GSO_MAX_SEGMENTS
            && self.total + len <= GSO_MAX_BYTES
    }

    /// Adds a segment of `len` bytes when it [fits](Run::fits).
    fn take(&mut self, len: usize) -> bool {
        let fits = self.fits(len);
        if fits {
            self.last = len;
            self.count += 1;
            self.total += len;
        }
        fits
    }
}

/// Orders a round's transmits so [`gso_runs`] needs fewer sends, without
/// reordering what a listener could care about. The round is grouped by
/// destination, multicast groups first, so a group's retransmits leave
/// before the ACKs that announce them, then requesters in the order the
/// round first reaches them. For one destination its frames keep
/// their order (a range still leaves in sequence) and its control messages
/// (ACK, MISS, THROTTLED: 16 bytes each) come after them: each frame run
/// that could still end on a shorter segment takes the next control
/// message as its last, and the rest leave together as one run. So a
/// group's equal-size retransmits merge into one send, a requester's frame
/// and ACK still share one, and a burst of ACKs to one requester leaves as
/// one send instead of one per frame. Every control message still leaves
/// after the frames queued before it.
///
/// It never needs more sends than the round as queued (the
/// `arranging_never_costs_a_send` property). The scratch vectors and the
/// address numbering are kept between rounds: no allocation once they
/// have grown to a round's size.
#[derive(Debug, Default)]
pub(crate) struct GsoOrder {
    /// The round's sort keys (see [`DEST_SHIFT`]), sorted: grouped by
    /// destination, frames first, each index in the low 32 bits.
    keys: Vec<u64>,
    /// The round's unicast and upstream addresses, numbered as first seen.
    seen: HashMap<SocketAddr, u32, foldhash::fast::FixedState>,
    /// The arranged order: `order[j]` is the index that goes to slot `j`.
    order: Vec<u32>,
}

/// A sort key's bits: the destination's class (groups, then unicast, then
/// upstream) and number above `DEST_SHIFT`, then whether the transmit is a
/// control message, then its index in the round.
const DEST_SHIFT: u32 = 33;
const CONTROL: u64 = 1 << 32;
const CLASS_SHIFT: u32 = 62;

impl GsoOrder {
    /// The key bits of `dest`: a group by its index, an address by the
    /// order this round first saw it in, so equal bits mean the same
    /// destination.
    fn dest_bits(
        seen: &mut HashMap<SocketAddr, u32, foldhash::fast::FixedState>,
        dest: Dest,
    ) -> u64 {
        let mut number = |a: SocketAddr| {
            let next = seen.len() as u32;
            u64::from(*seen.entry(a).or_insert(next))
        };
        // A round holds far fewer than 2^29 transmits, so a number always
        // fits below CLASS_SHIFT.
        let (class, n) = match dest {
            Dest::Group(g) => (0, u64::from(g)),
            Dest::Unicast(a) => (1, number(a)),
            Dest::Upstream(a) => (2, number(a)),
        };
        (class << CLASS_SHIFT) | (n << DEST_SHIFT)
    }

    /// Arranges `transmits` in place for [`gso_runs`] with the same
    /// `max_segment`.
    pub(crate) fn arrange(&mut self, transmits: &mut [Transmit], max_segment: usize) {
        let n = transmits.len();
        if n < 2 {
            return;
        }
        let len = |i: u32| transmits[i as usize].payload.as_bytes().len();
        // One integer key per transmit, so the sort compares integers and
        // not addresses (a closed-loop round holds a few hundred).
        self.seen.clear();
        self.keys.clear();
        let mut last: Option<(Dest, u64)> = None;
        for (i, t) in transmits.iter().enumerate() {
            // A frame and its ACK, or a range's frames, share a destination.
            let bits = match last {
                Some((d, bits)) if d == t.dest => bits,
                _ => Self::dest_bits(&mut self.seen, t.dest),
            };
            last = Some((t.dest, bits));
            let control = if matches!(t.payload, Payload::Control { .. }) { CONTROL } else { 0 };
            self.keys.push(bits | control | i as u64);
        }
        self.keys.sort_unstable();
        let order = &mut self.order;
        order.clear();
        for block in self.keys.chunk_by(|a, b| a >> DEST_SHIFT == b >> DEST_SHIFT) {
            let (frames, controls) = block.split_at(block.partition_point(|k| k & CONTROL == 0));
            let mut controls = controls.iter().map(|&k| k as u32).peekable();
            let mut frames = frames.iter().map(|&k| k as u32).peekable();
            while let Some(first) = frames.next() {
                let mut run = Run::start(len(first), max_segment);
                order.push(first);
                while let Some(f) = frames.next_if(|&f| run.take(len(f))) {
                    order.push(f);
                }
                // Only a control message queued before the frames still to
                // come: none overtakes a frame queued ahead of it.
                let next_frame = frames.peek().copied();
                let due = |c: u32| next_frame.is_none_or(|f| c < f);
                if let Some(c) = controls.next_if(|&c| due(c) && run.fits(len(c))) {
                    order.push(c);
                }
            }
            order.extend(controls);
        }
        // Apply the permutation in place, cycle by cycle: afterwards
        // transmits[j] is what was at order[j]. Visited slots are marked.
        const DONE: u32 = u32::MAX;
        for start in 0..n {
            let mut j = start;
            while order[j] != DONE {
                let k = order[j] as usize;
                order[j] = DONE;
                if k == start {
                    break;
                }
                transmits.swap(j, k);
                j = k;
            }
        }
    }
}

/// The longest segment this worker may hand the kernel in a GSO send:
/// every segment at first, narrowed by the kernel's refusals. It only ever
/// shrinks, and is one value for every destination — a refusal on the
/// route with the smallest MTU narrows it for all, which costs only the
/// merging of frames too big for that route.
#[derive(Debug)]
pub(crate) struct GsoLimit {
    max_segment: usize,
}

/// How a refusal narrowed [`GsoLimit`], for its one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Narrowed {
    /// The route's MTU is `mtu`: segments over `max_segment` bytes leave
    /// one datagram per send from now on.
    PathMtu { mtu: usize, max_segment: usize },
    /// GSO is off on this worker.
    Off,
}

impl Default for GsoLimit {
    fn default() -> Self {
        GsoLimit { max_segment: GSO_MAX_BYTES }
    }
}

impl GsoLimit {
    /// The longest segment a GSO send may carry now; 0: GSO is off.
    pub(crate) fn max_segment(&self) -> usize {
        self.max_segment
    }

    /// The kernel refused (`errno`, [`sys::gso_refused`]) a GSO send of
    /// `segment`-byte segments to `to` (from a chosen local address when
    /// `sourced`), whose datagrams the caller sends again one by one:
    /// counts it, narrows the limit, and logs a narrowing once at WARN.
    pub(crate) fn on_refused(
        &mut self,
        worker: usize,
        errno: i32,
        segment: usize,
        to: Option<SocketAddr>,
        sourced: bool,
        counters: &mut WorkerCounters,
    ) {
        counters.gso_fallbacks += 1;
        let error = std::io::Error::from_raw_os_error(errno);
        let to_text = to.map_or_else(|| "?".to_string(), |a| a.to_string());
        match self.narrow(errno, segment, to, sourced, sys::path_mtu) {
            Some(Narrowed::PathMtu { mtu, max_segment }) => tracing::warn!(
                worker,
                "the kernel refused a UDP GSO send of {segment}-byte segments to {to_text} \
                 ({error}): the route's MTU is {mtu}, so segments over {max_segment} bytes \
                 now leave one datagram per send (these were sent one by one; \
                 ricochet_gso_fallbacks_total counts refusals)"
            ),
            Some(Narrowed::Off) => tracing::warn!(
                worker,
                "the kernel refused a UDP GSO send of {segment}-byte segments to {to_text} \
                 ({error}; EIO: the device cannot checksum segments, EINVAL: GSO refused on \
                 this socket): GSO is off on this worker (these were sent one by one; \
                 ricochet_gso_fallbacks_total counts refusals)"
            ),
            None => {}
        }
    }

    /// Narrows the limit after a refusal; `path_mtu` asks the kernel for
    /// the route's MTU (only on `EMSGSIZE` or `EINVAL`). A refusal the MTU
    /// explains keeps GSO for the segments that fit; anything else turns
    /// GSO off — except an `EINVAL` of a send from a chosen local address
    /// (`sourced`), which a source address no longer on the host causes
    /// too, GSO or not. `None` when nothing narrowed: the limit already
    /// excluded the refused send (one queued before an earlier refusal
    /// narrowed it), or the refusal says nothing about GSO.
    fn narrow(
        &mut self,
        errno: i32,
        segment: usize,
        to: Option<SocketAddr>,
        sourced: bool,
        path_mtu: impl FnOnce(SocketAddr) -> Option<usize>,
    ) -> Option<Narrowed> {
        let header = match to {
            Some(SocketAddr::V6(a)) if a.ip().to_ipv4_mapped().is_none() => 40 + 8,
            _ => 20 + 8,
        };
        let size = matches!(errno, libc::EMSGSIZE | libc::EINVAL);
        let mtu = to.filter(|_| size).and_then(path_mtu);
        let (max_segment, why) = match mtu {
            Some(mtu) if segment + header > mtu && mtu > header => {
                (mtu - header, Narrowed::PathMtu { mtu, max_segment: mtu - header })
            }
            _ if sourced && errno == libc::EINVAL => return None,
            _ => (0, Narrowed::Off),
        };
        if max_segment >= self.max_segment {
            return None;
        }
        self.max_segment = max_segment;
        Some(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{Dest, Payload};
    use bytes::Bytes;

    fn t(dest: Dest, len: usize) -> Transmit {
        let payload = if len <= 64 {
            Payload::Control { buf: [0; 64], len: len as u8 }
        } else {
            Payload::Frame(Bytes::from(vec![0u8; len]))
        };
        Transmit { dest, payload }
    }

    fn runs(ts: &[Transmit]) -> Vec<std::ops::Range<usize>> {
        gso_runs(ts, GSO_MAX_BYTES).collect()
    }

    #[test]
    fn a_frame_and_its_ack_to_one_requester_merge() {
        let a = Dest::Unicast("127.0.0.1:5000".parse().unwrap());
        let g = Dest::Group(1);
        // Multicast retransmit, unicast copy, ACK: the last two merge.
        assert_eq!(runs(&[t(g, 300), t(a, 300), t(a, 16)]), vec![0..1, 1..3]);
    }

    #[test]
    fn equal_acks_merge_and_a_longer_segment_breaks_the_run() {
        let a = Dest::Unicast("127.0.0.1:5000".parse().unwrap());
        let b = Dest::Unicast("127.0.0.1:5001".parse().unwrap());
        assert_eq!(runs(&[t(a, 16), t(a, 16), t(a, 16)]), vec![0..3]);
        // A shorter segment must be the last one.
        assert_eq!(runs(&[t(a, 300), t(a, 16), t(a, 16)]), vec![0..2, 2..3]);
        assert_eq!(runs(&[t(a, 16), t(a, 300)]), vec![0..1, 1..2]);
        assert_eq!(runs(&[t(a, 16), t(b, 16)]), vec![0..1, 1..2]);
        assert_eq!(runs(&[]), Vec::<std::ops::Range<usize>>::new());
    }

    fn arranged(ts: &[Transmit]) -> Vec<Transmit> {
        let mut v = ts.to_vec();
        GsoOrder::default().arrange(&mut v, GSO_MAX_BYTES);
        v
    }

    fn shape(ts: &[Transmit]) -> Vec<(Dest, usize)> {
        ts.iter().map(|t| (t.dest, t.payload.as_bytes().len())).collect()
    }

    #[test]
    fn a_round_is_grouped_by_destination_frames_before_acks() {
        let a = Dest::Unicast("127.0.0.1:5000".parse().unwrap());
        let b = Dest::Unicast("127.0.0.1:5001".parse().unwrap());
        let g = Dest::Group(3);
        // Multicast retransmits each with its ACK, as the service queues
        // them: six sends. Arranged: the group's frames, then the ACKs.
        let round = [t(g, 300), t(a, 16), t(g, 300), t(a, 16), t(g, 300), t(a, 16)];
        assert_eq!(runs(&round).len(), 6);
        let v = arranged(&round);
        assert_eq!(v.iter().map(|t| t.dest).collect::<Vec<_>>(), [g, g, g, a, a, a]);
        assert_eq!(runs(&v), vec![0..3, 3..6]);
        // Unicast, equal frames: one run of frames ending on an ACK, one
        // of the other ACKs — two sends instead of three.
        let round = [t(a, 300), t(a, 16), t(a, 300), t(a, 16), t(a, 300), t(a, 16)];
        let v = arranged(&round);
        assert_eq!(shape(&v), [(a, 300), (a, 300), (a, 300), (a, 16), (a, 16), (a, 16)]);
        assert_eq!(runs(&v), vec![0..4, 4..6]);
        // Frames of different sizes keep their order; each run that can
        // still end on a shorter segment takes an ACK.
        let round = [t(a, 300), t(a, 16), t(b, 500), t(b, 16), t(a, 400), t(a, 16)];
        let v = arranged(&round);
        assert_eq!(shape(&v), [(a, 300), (a, 16), (a, 400), (a, 16), (b, 500), (b, 16)]);
        assert_eq!(runs(&v), vec![0..2, 2..4, 4..6]);
        let round = [t(a, 500), t(a, 16), t(a, 400), t(a, 16), t(a, 400), t(a, 16)];
        assert_eq!(
            shape(&arranged(&round)),
            [(a, 500), (a, 400), (a, 400), (a, 16), (a, 16), (a, 16)]
        );
    }

    #[test]
    fn equal_datagrams_to_one_destination_keep_their_order() {
        let a = Dest::Unicast("127.0.0.1:5000".parse().unwrap());
        let g = Dest::Group(1);
        let frame =
            |seq: u8| Transmit { dest: g, payload: Payload::Frame(Bytes::from(vec![seq; 300])) };
        let ack = |seq: u8| {
            let mut buf = [0; 64];
            buf[0] = seq;
            Transmit { dest: a, payload: Payload::Control { buf, len: 16 } }
        };
        let round: Vec<_> = (0..40u8).flat_map(|s| [frame(s), ack(s)]).collect();
        let v = arranged(&round);
        let firsts: Vec<u8> = v.iter().map(|t| t.payload.as_bytes()[0]).collect();
        let want: Vec<u8> = (0..40).chain(0..40).collect();
        assert_eq!(firsts, want);
        // Already arranged: left as it is.
        assert_eq!(arranged(&v), v);
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits() {
        let a = Dest::Unicast("127.0.0.1:5000".parse().unwrap());
        let many: Vec<_> = (0..130).map(|_| t(a, 16)).collect();
        assert_eq!(runs(&many), vec![0..64, 64..128, 128..130]);
        let big: Vec<_> = (0..5).map(|_| t(a, 20_000)).collect();
        assert_eq!(runs(&big), vec![0..3, 3..5]);
    }

    #[test]
    fn segments_over_the_limit_leave_alone() {
        let a = Dest::Unicast("127.0.0.1:5000".parse().unwrap());
        let ts = [t(a, 1400), t(a, 16), t(a, 16), t(a, 16)];
        assert_eq!(gso_runs(&ts, 1399).collect::<Vec<_>>(), vec![0..1, 1..4]);
        assert_eq!(gso_runs(&ts, 1400).collect::<Vec<_>>(), vec![0..2, 2..4]);
        // Off: every transmit its own send.
        assert_eq!(gso_runs(&ts, 0).collect::<Vec<_>>(), vec![0..1, 1..2, 2..3, 3..4]);
    }

    #[test]
    fn an_mtu_refusal_narrows_gso_to_the_segments_that_fit() {
        let v4: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let v6: SocketAddr = "[fd00::2]:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.2]:5000".parse().unwrap();
        let mut l = GsoLimit::default();
        assert_eq!(l.max_segment(), GSO_MAX_BYTES);
        let n = l.narrow(libc::EMSGSIZE, 1400, Some(v4), false, |_| Some(1280));
        assert_eq!(n, Some(Narrowed::PathMtu { mtu: 1280, max_segment: 1252 }));
        assert_eq!(l.max_segment(), 1252);
        // A send queued before the narrowing, refused after it: nothing new.
        assert_eq!(l.narrow(libc::EINVAL, 1400, Some(v4), false, |_| Some(1280)), None);
        // IPv6 headers are 40 bytes; a v4-mapped destination is IPv4.
        assert_eq!(
            l.narrow(libc::EINVAL, 1200, Some(v6), false, |_| Some(1220)),
            Some(Narrowed::PathMtu { mtu: 1220, max_segment: 1172 })
        );
        assert_eq!(
            l.narrow(libc::EINVAL, 1100, Some(mapped), false, |_| Some(1100)),
            Some(Narrowed::PathMtu { mtu: 1100, max_segment: 1072 })
        );
        assert_eq!(l.max_segment(), 1072);
    }

    #[test]
    fn a_refusal_the_mtu_does_not_explain_turns_gso_off() {
        let to: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let asked = std::cell::Cell::new(false);
        let probe = |_| {
            asked.set(true);
            Some(1500)
        };
        // EIO: the device; the MTU is not asked.
        let mut l = GsoLimit::default();
        assert_eq!(l.narrow(libc::EIO, 1400, Some(to), false, probe), Some(Narrowed::Off));
        assert!(!asked.get());
        assert_eq!(l.max_segment(), 0);
        assert_eq!(l.narrow(libc::EIO, 16, Some(to), false, |_| None), None);
        // EINVAL with segments that fit the route, or an MTU unknown.
        let mut l = GsoLimit::default();
        assert_eq!(
            l.narrow(libc::EINVAL, 1400, Some(to), false, |_| Some(1500)),
            Some(Narrowed::Off)
        );
        let mut l = GsoLimit::default();
        assert_eq!(l.narrow(libc::EINVAL, 1400, Some(to), false, |_| None), Some(Narrowed::Off));
        let mut l = GsoLimit::default();
        assert_eq!(l.narrow(libc::EINVAL, 1400, None, false, |_| Some(1280)), Some(Narrowed::Off));
        // From a chosen source address, EINVAL may be the address's fault.
        let mut l = GsoLimit::default();
        assert_eq!(l.narrow(libc::EINVAL, 1400, Some(to), true, |_| Some(1500)), None);
        assert_eq!(l.max_segment(), GSO_MAX_BYTES);
        assert_eq!(l.narrow(libc::EIO, 1400, Some(to), true, |_| None), Some(Narrowed::Off));
    }

    #[test]
    fn on_refused_counts_every_fallback() {
        let mut counters = WorkerCounters::default();
        let mut l = GsoLimit::default();
        // EIO needs no probe: nothing here touches the network.
        l.on_refused(0, libc::EIO, 1400, None, false, &mut counters);
        l.on_refused(0, libc::EIO, 1400, None, false, &mut counters);
        assert_eq!((counters.gso_fallbacks, l.max_segment()), (2, 0));
    }

    proptest::proptest! {
        /// Arranging a round is a permutation that puts each destination's
        /// transmits together, groups first, keeps each destination's
        /// frames in order, lets no control message overtake a frame queued
        /// before it, and never needs more sends.
        #[test]
        fn arranging_never_costs_a_send(
            round in proptest::collection::vec((0u8..6, 0usize..6), 0..200),
            max_segment in proptest::sample::select(vec![0, 400, 1400, GSO_MAX_BYTES]),
        ) {
            const LENS: [usize; 6] = [16, 16, 64, 300, 1400, 20_000];
            // Two groups, and one address both as a requester and as an
            // upstream: different destinations.
            let dest = |d: u8| match d {
                0 => Dest::Group(1),
                1 => Dest::Group(2),
                2 => Dest::Unicast("127.0.0.1:5000".parse().unwrap()),
                3 => Dest::Unicast("[::1]:5000".parse().unwrap()),
                4 => Dest::Upstream("127.0.0.1:5000".parse().unwrap()),
                _ => Dest::Upstream("127.0.0.2:6000".parse().unwrap()),
            };
            // Each frame's first byte is its position, to follow it.
            let ts: Vec<Transmit> = round
                .iter()
                .enumerate()
                .map(|(i, &(d, l))| {
                    let mut x = t(dest(d), LENS[l]);
                    x.payload = match x.payload {
                        Payload::Frame(_) => {
                            let mut b = vec![0u8; LENS[l]];
                            b[0] = i as u8;
                            Payload::Frame(Bytes::from(b))
                        }
                        Payload::Control { mut buf, len } => {
                            buf[0] = i as u8;
                            Payload::Control { buf, len }
                        }
                    };
                    x
                })
                .collect();
            let mut v = ts.clone();
            GsoOrder::default().arrange(&mut v, max_segment);
            let before = gso_runs(&ts, max_segment).count();
            let after = gso_runs(&v, max_segment).count();
            proptest::prop_assert!(after <= before, "{after} sends after, {before} before");
            let mut left: Vec<_> = ts.iter().map(|t| (t.dest, t.payload.as_bytes().to_vec())).collect();
            let mut right: Vec<_> = v.iter().map(|t| (t.dest, t.payload.as_bytes().to_vec())).collect();
            let pos = |t: &Transmit| t.payload.as_bytes()[0];
            let control = |t: &Transmit| matches!(t.payload, Payload::Control { .. });
            // Each destination's transmits are one block; groups lead.
            let blocks: Vec<Dest> = v.chunk_by(|a, b| a.dest == b.dest).map(|b| b[0].dest).collect();
            let mut distinct = blocks.clone();
            distinct.sort();
            distinct.dedup();
            proptest::prop_assert_eq!(blocks.len(), distinct.len(), "{:?}", blocks);
            let groups = blocks.iter().take_while(|d| matches!(d, Dest::Group(_))).count();
            proptest::prop_assert!(blocks[groups..].iter().all(|d| !matches!(d, Dest::Group(_))));
            for (j, x) in v.iter().enumerate() {
                for y in &v[j + 1..] {
                    if x.dest != y.dest {
                        continue;
                    }
                    // One destination's frames, and its control messages,
                    // keep their order.
                    if control(x) == control(y) {
                        proptest::prop_assert!(pos(x) < pos(y));
                    }
                    // No control message overtakes a frame queued before it.
                    if control(x) && !control(y) {
                        proptest::prop_assert!(pos(x) < pos(y), "{:?} before {:?}", x, y);
                    }
                }
            }
            left.sort();
            right.sort();
            proptest::prop_assert_eq!(left, right);
        }
    }

    /// The route MTU the kernel reports is the one it checks segments
    /// against: loopback's, capped at IP's 65 535.
    #[test]
    fn path_mtu_reads_the_route() {
        let lo = std::fs::read_to_string("/sys/class/net/lo/mtu").unwrap();
        let want = lo.trim().parse::<usize>().unwrap().min(65_535);
        assert_eq!(sys::path_mtu("127.0.0.1:9".parse().unwrap()), Some(want));
        assert_eq!(sys::path_mtu("[::ffff:127.0.0.1]:9".parse().unwrap()), Some(want));
    }
}
