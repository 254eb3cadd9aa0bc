//! Replay protection for gossip datagrams (docs/PROTOCOL.md § "Gossip
//! envelope (v2)"): the sender side stamps, the receiver side acts on each
//! stamped datagram at most once.
//!
//! # Contract
//! - [`Sealer`]: one per sealing endpoint (the engine; each worker's ACK
//!   path). Its sender id is fixed for its life; its counter increases by
//!   one per datagram sealed, so a sealer never repeats a `(sender,
//!   counter)` pair. Time enters as unix ms from the caller.
//! - [`ReplayGuard`]: accepts a stamp only if its time is within
//!   [`WINDOW_MS`] of the receiver's clock (either side) and its `(sender,
//!   counter)` was not accepted before. Per sender it keeps the highest
//!   counter accepted and a map of the [`COUNTER_WINDOW`] − 1 counters
//!   below it (IPsec/DTLS anti-replay, RFC 4303 § 3.4.3, with the bitmap as
//!   a ring of words as in RFC 6479, so a higher counter clears words
//!   instead of shifting bits): a counter `COUNTER_WINDOW` or more below
//!   the highest is refused as a replay, whether or not it was seen. The
//!   window is wide enough for a burst of G1 chunks or G6 blocks to arrive
//!   reordered.
//! - **Bounded, and never forgetful of a live sender.** At most `capacity`
//!   senders are tracked. A sender's record may be dropped only once every
//!   datagram it accepted from that sender is outside the time window (the
//!   newest accepted stamp is older than `now − WINDOW_MS`): a replay of
//!   any of them is then refused by the window, so forgetting the record
//!   cannot let one through. A new sender that finds the table full of
//!   records still in the window is refused ([`Refusal::TableFull`]).
//!   Only datagrams whose MAC verified reach the guard, so only cluster
//!   key holders can create records.
//! - The receiver's clock is assumed not to step back by more than the
//!   window; siblings' clocks must agree within [`WINDOW_MS`] (NTP).

use std::collections::BTreeMap;

use ricochet_wire::mac::Stamp;

/// How far a stamp's time may be from the receiver's clock, either way:
/// 30 s.
pub const WINDOW_MS: u64 = 30_000;
/// A counter this far or further below the highest accepted from its
/// sender is refused: 960 (the ring's 1 024 bits, less the word the
/// highest counter is in).
pub const COUNTER_WINDOW: u64 = RING_BITS - WORD_BITS;

const WORD_BITS: u64 = u64::BITS as u64;
/// Words in a sender's ring of counter bits.
const RING_WORDS: usize = 16;
const RING_BITS: u64 = RING_WORDS as u64 * WORD_BITS;

/// Why a stamp was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its time is more than [`WINDOW_MS`] from ours (stale, replayed
    /// late, or a clock out of sync).
    OutOfWindow,
    /// Its counter was accepted before, or is too far below the highest.
    Replayed,
    /// A new sender, and every tracked sender is still in the window.
    TableFull,
}

impl Refusal {
    /// The drop reason it is counted under.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::OutOfWindow => "out_of_window",
            Refusal::Replayed => "replayed",
            Refusal::TableFull => "replay_table_full",
        }
    }
}

/// Stamps the datagrams of one sealing endpoint.
#[derive(Debug, Clone)]
pub struct Sealer {
    sender: u64,
    counter: u64,
}

impl Sealer {
    /// A sealer with the given id; its first counter is 1.
    pub fn new(sender: u64) -> Self {
        Sealer { sender, counter: 0 }
    }

    /// A sender id from seed material: the first 8 bytes of BLAKE3 over
    /// it. Production seeds are random per start, so ids differ per start.
    pub fn sender_from(material: &[&[u8]]) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(b"ricochet gossip sender");
        for m in material {
            h.update(&(m.len() as u64).to_be_bytes());
            h.update(m);
        }
        let b = h.finalize();
        u64::from_be_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]))
    }

    /// This sealer's id.
    pub fn sender(&self) -> u64 {
        self.sender
    }

    /// The stamp of the next datagram, sealed at `unix_ms`.
    pub fn next(&mut self, unix_ms: u64) -> Stamp {
        self.counter += 1;
        Stamp { sender: self.sender, time_ms: unix_ms, counter: self.counter }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    highest: u64,
    /// Bit `c % 64` of word `(c / 64) % RING_WORDS`: counter `c` was
    /// accepted (for `c` within the window below `highest`).
    seen: [u64; RING_WORDS],
    /// The newest stamp time accepted from this sender.
    newest_ms: u64,
}

impl Record {
    fn new(counter: u64, time_ms: u64) -> Record {
        let mut r = Record { highest: counter, seen: [0; RING_WORDS], newest_ms: time_ms };
        r.mark(counter);
        r
    }

    fn slot(counter: u64) -> (usize, u64) {
        ((counter / WORD_BITS) as usize % RING_WORDS, 1 << (counter % WORD_BITS))
    }

    fn mark(&mut self, counter: u64) {
        let (word, bit) = Record::slot(counter);
        self.seen[word] |= bit;
    }

    /// Records `c`, or refuses it as seen or too old.
    fn accept(&mut self, c: u64) -> Result<(), Refusal> {
        if c > self.highest {
            // Clear the words the window moves past (all of them if it
            // moves by a whole ring or more).
            let (from, to) = (self.highest / WORD_BITS, c / WORD_BITS);
            for w in (from + 1..=to).take(RING_WORDS) {
                self.seen[w as usize % RING_WORDS] = 0;
            }
            self.highest = c;
        } else if self.highest - c >= COUNTER_WINDOW {
            return Err(Refusal::Replayed);
        }
        let (word, bit) = Record::slot(c);
        if self.seen[word] & bit != 0 {
            return Err(Refusal::Replayed);
        }
        self.seen[word] |= bit;
        Ok(())
    }
}

/// The receiver's record of recently accepted stamps.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    senders: BTreeMap<u64, Record>,
    capacity: usize,
}

impl ReplayGuard {
    /// A guard tracking at most `capacity` senders (at least 1).
    pub fn new(capacity: usize) -> Self {
        ReplayGuard { senders: BTreeMap::new(), capacity: capacity.max(1) }
    }

    /// Senders tracked.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether no sender is tracked.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Accepts `stamp` at our clock `now_ms` (unix ms) and records it, or
    /// says why not. Nothing is recorded for a refused stamp.
    pub fn check(&mut self, now_ms: u64, stamp: &Stamp) -> Result<(), Refusal> {
        if stamp.time_ms.abs_diff(now_ms) > WINDOW_MS {
            return Err(Refusal::OutOfWindow);
        }
        if let Some(r) = self.senders.get_mut(&stamp.sender) {
            r.accept(stamp.counter)?;
            r.newest_ms = r.newest_ms.max(stamp.time_ms);
            return Ok(());
        }
        if self.senders.len() >= self.capacity {
            self.sweep(now_ms);
            if self.senders.len() >= self.capacity {
                return Err(Refusal::TableFull);
            }
        }
        self.senders.insert(stamp.sender, Record::new(stamp.counter, stamp.time_ms));
        Ok(())
    }

    /// Forgets the senders whose every accepted datagram is outside the
    /// window at `now_ms`.
    pub fn sweep(&mut self, now_ms: u64) {
        let floor = now_ms.saturating_sub(WINDOW_MS);
        self.senders.retain(|_, r| r.newest_ms >= floor);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T: u64 = 1_767_225_600_000;

    fn stamp(sender: u64, time_ms: u64, counter: u64) -> Stamp {
        Stamp { sender, time_ms, counter }
    }

    #[test]
    fn each_stamp_is_accepted_once() {
        let mut g = ReplayGuard::new(8);
        assert_eq!(g.check(T, &stamp(1, T, 5)), Ok(()));
        assert_eq!(g.check(T, &stamp(1, T, 5)), Err(Refusal::Replayed));
        // Reordered within the counter window: accepted once.
        assert_eq!(g.check(T, &stamp(1, T, 3)), Ok(()));
        assert_eq!(g.check(T, &stamp(1, T, 3)), Err(Refusal::Replayed));
        assert_eq!(g.check(T, &stamp(1, T, 965)), Ok(()));
        assert_eq!(g.check(T, &stamp(1, T, 6)), Ok(()), "965 − 6 < 960");
        assert_eq!(g.check(T, &stamp(1, T, 5)), Err(Refusal::Replayed), "965 − 5 = 960: too old");
        assert_eq!(g.check(T, &stamp(1, T, 4)), Err(Refusal::Replayed), "older still");
        assert_eq!(g.check(T, &stamp(1, T, 965)), Err(Refusal::Replayed));
        // A jump of more than the ring forgets every bit; what is left in
        // the window is new and accepted once.
        assert_eq!(g.check(T, &stamp(1, T, 5_000)), Ok(()));
        assert_eq!(g.check(T, &stamp(1, T, 4_100)), Ok(()));
        assert_eq!(g.check(T, &stamp(1, T, 4_100)), Err(Refusal::Replayed));
        assert_eq!(g.check(T, &stamp(1, T, 965)), Err(Refusal::Replayed));
        // Another sender has its own counters.
        assert_eq!(g.check(T, &stamp(2, T, 5)), Ok(()));
    }

    #[test]
    fn the_time_window_is_inclusive_both_ways() {
        let mut g = ReplayGuard::new(8);
        assert_eq!(g.check(T, &stamp(1, T - WINDOW_MS, 1)), Ok(()));
        assert_eq!(g.check(T, &stamp(1, T + WINDOW_MS, 2)), Ok(()));
        assert_eq!(g.check(T, &stamp(1, T - WINDOW_MS - 1, 3)), Err(Refusal::OutOfWindow));
        assert_eq!(g.check(T, &stamp(1, T + WINDOW_MS + 1, 4)), Err(Refusal::OutOfWindow));
        // Refused stamps are not recorded: fresh later, they pass.
        assert_eq!(g.check(T + 1, &stamp(1, T, 3)), Ok(()));
    }

    #[test]
    fn a_full_table_forgets_only_senders_out_of_the_window() {
        let mut g = ReplayGuard::new(2);
        assert_eq!(g.check(T, &stamp(1, T, 1)), Ok(()));
        assert_eq!(g.check(T, &stamp(2, T + 10, 1)), Ok(()));
        assert_eq!(g.check(T + 5, &stamp(3, T + 5, 1)), Err(Refusal::TableFull));
        // Sender 1's newest stamp leaves the window; sender 2's has not.
        let later = T + WINDOW_MS + 1;
        assert_eq!(g.check(later, &stamp(3, later, 1)), Ok(()));
        assert_eq!(g.len(), 2);
        // Sender 1's old datagram replayed now: refused by the window.
        assert_eq!(g.check(later, &stamp(1, T, 1)), Err(Refusal::OutOfWindow));
        assert_eq!(g.check(later, &stamp(2, T + 10, 1)), Err(Refusal::Replayed));
    }

    #[test]
    fn sealers_count_up_from_one() {
        let mut s = Sealer::new(Sealer::sender_from(&[b"seed", b"id"]));
        assert_ne!(s.sender(), Sealer::sender_from(&[b"seed", b"id2"]));
        assert_eq!(s.next(T).counter, 1);
        let st = s.next(T + 1);
        assert_eq!((st.counter, st.time_ms, st.sender), (2, T + 1, s.sender()));
    }

    proptest! {
        /// Whatever order and repetition stamps arrive in, each counter is
        /// accepted at most once, and every counter in a strictly
        /// increasing sequence is accepted.
        #[test]
        fn at_most_once(counters in proptest::collection::vec(1u64..3_000, 1..3_000)) {
            let mut g = ReplayGuard::new(4);
            let mut accepted = std::collections::BTreeSet::new();
            for c in &counters {
                if g.check(T, &stamp(9, T, *c)).is_ok() {
                    prop_assert!(accepted.insert(*c), "counter {} accepted twice", c);
                }
            }
            let mut fresh = ReplayGuard::new(4);
            let mut sorted = counters.clone();
            sorted.sort_unstable();
            sorted.dedup();
            for c in sorted {
                prop_assert_eq!(fresh.check(T, &stamp(9, T, c)), Ok(()));
            }
        }

        /// The ring of words agrees with a plain set: a counter is accepted
        /// exactly when it was not accepted before and is less than
        /// `COUNTER_WINDOW` below the highest accepted so far (jumps of
        /// more than the ring included).
        #[test]
        fn agrees_with_a_set_model(
            steps in proptest::collection::vec((0u64..3, 0u64..1_200), 1..2_000),
        ) {
            let mut g = ReplayGuard::new(4);
            let (mut seen, mut highest) = (std::collections::BTreeSet::new(), 0u64);
            for (kind, n) in steps {
                // Mostly near the top of the window, sometimes a jump ahead.
                let c = match kind {
                    0 => highest + n * 3 + 1,
                    _ => (highest + 20).saturating_sub(n).max(1),
                };
                let want = !seen.contains(&c) && (c > highest || highest - c < COUNTER_WINDOW);
                prop_assert_eq!(g.check(T, &stamp(9, T, c)).is_ok(), want, "counter {}", c);
                if want {
                    seen.insert(c);
                    highest = highest.max(c);
                }
            }
        }
    }
}
