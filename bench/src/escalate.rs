//! The listener's NACK escalation, as the reference shard-listener does it
//! (research notes §5), as a sans-IO state machine.
//!
//! Time is `u64` nanoseconds on the caller's clock; nothing here reads a
//! clock, opens a socket or sleeps. The driver feeds gaps, fills, responses
//! and the time, and drains [`Transmit`]s and [`Event`]s:
//!
//! ```text
//! open(now, key, seq) ─▶ Waiting (jitter U[0, jitter_max])
//! Waiting ─timer─▶ Ready ─poll_transmit (≤ max_inflight)─▶ InFlight (timeout 300 ms)
//! InFlight ─MISS─▶ next endpoint at once (fail rounds reset); at the last: failed round
//!          ─THROTTLED b─▶ Waiting, hold 125 ms << b (≤ backoff_max), jittered [h/2, h];
//!                         same endpoint, no retry consumed
//!          ─timeout─▶ failed round
//!          ─ACK─▶ AwaitFrame (80 ms if the unicast flag is set, else 300 ms)
//! AwaitFrame ─timer─▶ next endpoint at once; at the last: failed round
//! failed round: rounds += 1; rounds ≥ max_retries → Abandoned; else Waiting
//!               base << (rounds−1) capped at backoff_max, jittered [b/2, b],
//!               endpoint index advances, clamped at the last
//! any state ─fill(frame arrived)─▶ Filled;   any state ─gap TTL─▶ Expired
//! ```
//!
//! One deliberate difference from the reference: an ACK does not close the
//! gap on trust. The load generator measures fills, so a gap closes only
//! when the frame's bytes arrive; an ACK whose frame never comes escalates
//! like a MISS once the wait runs out. Each attempt is identified by an
//! [`AttemptId`]; the reference sends each attempt from a fresh socket, and
//! the driver does the same, so a response names its attempt by the socket
//! it arrives on (MISS carries no SeqNum to match on).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use ricochet_wire::control::{ResponseKind, ResponseRepr};
use serde::Serialize;

use crate::rng::Rng;

/// One attempt (one NACK sent) of one gap.
pub type AttemptId = u64;

/// Escalation knobs; the defaults are the reference listener's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Endpoints in preference order (at least 1).
    pub endpoints: usize,
    /// Uniform wait before a gap's first NACK, `[0, jitter_max]` (200 ms).
    pub jitter_max: Duration,
    /// Wait for a response to one NACK (300 ms).
    pub attempt_timeout: Duration,
    /// First failed-round backoff (500 ms), doubled per round.
    pub backoff_base: Duration,
    /// Cap on any backoff or THROTTLED hold (5 s).
    pub backoff_max: Duration,
    /// Failed rounds before a gap is abandoned (5).
    pub max_retries: u32,
    /// A gap still open this long after detection expires (10 min).
    pub gap_ttl: Duration,
    /// After an ACK with the unicast flag, how long to wait for the copy (80 ms).
    pub unicast_wait: Duration,
    /// After an ACK without it, how long to wait for the multicast
    /// retransmit before escalating (300 ms).
    pub multicast_wait: Duration,
    /// Attempts in flight at once (64); further ready gaps queue.
    pub max_inflight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoints: 1,
            jitter_max: Duration::from_millis(200),
            attempt_timeout: Duration::from_millis(300),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(5),
            max_retries: 5,
            gap_ttl: Duration::from_secs(600),
            unicast_wait: Duration::from_millis(80),
            multicast_wait: Duration::from_millis(300),
            max_inflight: 64,
        }
    }
}

/// A NACK to send: single SeqNum, flags 0, to endpoint index `endpoint`,
/// from the socket the driver associates with `attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The attempt this NACK starts.
    pub attempt: AttemptId,
    /// Index into the driver's endpoint list.
    pub endpoint: usize,
    /// Flow.
    pub hash_key: u64,
    /// Missing SeqNum.
    pub seq: u64,
}

/// Something the driver should know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The gap's frame arrived.
    Filled {
        /// Flow.
        hash_key: u64,
        /// SeqNum.
        seq: u64,
        /// From detection to fill, ns.
        latency_ns: u64,
        /// From the first NACK to fill, ns (None: filled before any NACK).
        since_nack_ns: Option<u64>,
        /// NACKs sent for it.
        attempts: u32,
    },
    /// Given up after `max_retries` failed rounds.
    Abandoned {
        /// Flow.
        hash_key: u64,
        /// SeqNum.
        seq: u64,
    },
    /// Still open when the gap TTL ran out.
    Expired {
        /// Flow.
        hash_key: u64,
        /// SeqNum.
        seq: u64,
    },
    /// The attempt is over: its socket may be closed (a reply to it now
    /// would be stale).
    AttemptDone(AttemptId),
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Stats {
    /// Gaps opened.
    pub gaps_opened: u64,
    /// Gaps whose frame arrived.
    pub filled: u64,
    /// Gaps abandoned after max retries.
    pub abandoned: u64,
    /// Gaps expired by TTL.
    pub expired: u64,
    /// Gaps dropped because their flow restarted.
    pub voided: u64,
    /// NACKs sent.
    pub nacks_sent: u64,
    /// ACKs received (stray ones included, as for every response kind).
    pub acks: u64,
    /// ACKs with the unicast flag.
    pub acks_unicast: u64,
    /// MISSes received.
    pub misses: u64,
    /// THROTTLEDs received.
    pub throttled: u64,
    /// Attempts that got no response in time.
    pub timeouts: u64,
    /// ACKed attempts whose frame did not arrive in time.
    pub frame_waits_expired: u64,
    /// Moves to the next endpoint.
    pub endpoint_hops: u64,
    /// Failed rounds (timeouts, and MISS / missing frame at the last endpoint).
    pub failed_rounds: u64,
    /// Responses for attempts that are over (or unknown).
    pub stray_responses: u64,
    /// NACKs answered by an ACK (the response that ended the attempt).
    #[serde(default)]
    pub answered_ack: u64,
    /// NACKs answered by a MISS.
    #[serde(default)]
    pub answered_miss: u64,
    /// NACKs answered by a THROTTLED.
    #[serde(default)]
    pub answered_throttled: u64,
    /// NACKs whose frame arrived (a retransmit, usually the unicast copy
    /// sent just before the ACK) before any response: the attempt ended
    /// there, and the response, if any, found its socket closed.
    #[serde(default)]
    pub frame_first: u64,
    /// NACKs still waiting for a response when their gap expired or its
    /// flow restarted.
    #[serde(default)]
    pub cut_short: u64,
}

impl Stats {
    /// NACKs not yet accounted for by a response, a timeout, the frame
    /// arriving first or the gap ending: attempts still in flight.
    pub fn in_flight(&self) -> u64 {
        self.nacks_sent.saturating_sub(
            self.answered_ack
                + self.answered_miss
                + self.answered_throttled
                + self.timeouts
                + self.frame_first
                + self.cut_short,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between transitions (an attempt just ended).
    Idle,
    Waiting,
    Ready,
    InFlight(AttemptId),
    AwaitFrame(AttemptId),
}

#[derive(Debug, Clone)]
struct Gap {
    hash_key: u64,
    seq: u64,
    uid: u64,
    detected: u64,
    first_nack: Option<u64>,
    endpoint: usize,
    fail_rounds: u32,
    attempts: u32,
    state: State,
    gen_: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    State,
    Ttl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: u64,
    slot: u32,
    uid: u64,
    gen_: u32,
    kind: Kind,
}

/// The escalation state of every open gap of one listener.
#[derive(Debug)]
pub struct Recovery {
    cfg: Config,
    rng: Rng,
    slots: Vec<Option<Gap>>,
    free: Vec<u32>,
    index: HashMap<(u64, u64), u32>,
    attempts: HashMap<AttemptId, u32>,
    timers: BinaryHeap<Reverse<Timer>>,
    ready: VecDeque<(u32, u64)>,
    inflight: usize,
    next_attempt: AttemptId,
    next_uid: u64,
    events: VecDeque<Event>,
    stats: Stats,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Recovery {
    /// No gaps; jitter drawn from a generator seeded with `seed`.
    pub fn new(cfg: Config, seed: u64) -> Self {
        Recovery {
            cfg: Config {
                endpoints: cfg.endpoints.max(1),
                max_inflight: cfg.max_inflight.max(1),
                ..cfg
            },
            rng: Rng::new(seed),
            slots: Vec::with_capacity(1024),
            free: Vec::with_capacity(1024),
            index: HashMap::with_capacity(1024),
            attempts: HashMap::with_capacity(cfg.max_inflight.max(1) * 2),
            timers: BinaryHeap::with_capacity(2048),
            ready: VecDeque::with_capacity(256),
            inflight: 0,
            next_attempt: 1,
            next_uid: 1,
            events: VecDeque::with_capacity(256),
            stats: Stats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Gaps open (any state).
    pub fn open_gaps(&self) -> usize {
        self.index.len()
    }

    /// Attempts in flight (sent, not yet answered, or ACKed and waiting for
    /// the frame).
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Whether `(hash_key, seq)` is an open gap.
    pub fn is_open(&self, hash_key: u64, seq: u64) -> bool {
        self.index.contains_key(&(hash_key, seq))
    }

    /// Opens a gap detected at `now`. Returns false if it was already open.
    pub fn open(&mut self, now: u64, hash_key: u64, seq: u64) -> bool {
        if self.index.contains_key(&(hash_key, seq)) {
            return false;
        }
        let uid = self.next_uid;
        self.next_uid += 1;
        let gap = Gap {
            hash_key,
            seq,
            uid,
            detected: now,
            first_nack: None,
            endpoint: 0,
            fail_rounds: 0,
            attempts: 0,
            state: State::Waiting,
            gen_: 0,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(gap);
                s
            }
            None => {
                self.slots.push(Some(gap));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert((hash_key, seq), slot);
        self.stats.gaps_opened += 1;
        let jitter = self.rng.range_inclusive(0, ns(self.cfg.jitter_max));
        self.wait(slot, now + jitter);
        let ttl_at = now.saturating_add(ns(self.cfg.gap_ttl));
        self.timers.push(Reverse(Timer { at: ttl_at, slot, uid, gen_: 0, kind: Kind::Ttl }));
        true
    }

    /// The frame `(hash_key, seq)` arrived at `now`. Returns whether it
    /// filled an open gap (else it is a duplicate or was never missing).
    pub fn fill(&mut self, now: u64, hash_key: u64, seq: u64) -> bool {
        let Some(slot) = self.index.remove(&(hash_key, seq)) else { return false };
        self.stats.frame_first += u64::from(matches!(self.gap(slot).state, State::InFlight(_)));
        let gap = self.release(slot);
        self.stats.filled += 1;
        self.events.push_back(Event::Filled {
            hash_key,
            seq,
            latency_ns: now.saturating_sub(gap.detected),
            since_nack_ns: gap.first_nack.map(|t| now.saturating_sub(t)),
            attempts: gap.attempts,
        });
        true
    }

    /// The flow restarted: its open gaps are void. Returns how many.
    pub fn void_flow(&mut self, hash_key: u64) -> usize {
        let slots: Vec<u32> =
            self.index.iter().filter(|((k, _), _)| *k == hash_key).map(|(_, &s)| s).collect();
        for &slot in &slots {
            self.stats.cut_short += u64::from(matches!(self.gap(slot).state, State::InFlight(_)));
            let gap = self.release(slot);
            self.index.remove(&(gap.hash_key, gap.seq));
        }
        self.stats.voided += slots.len() as u64;
        slots.len()
    }

    /// A response arrived for `attempt` at `now`.
    pub fn on_response(&mut self, now: u64, attempt: AttemptId, resp: ResponseRepr) {
        match resp.kind {
            ResponseKind::Miss => self.stats.misses += 1,
            ResponseKind::Ack(f) => {
                self.stats.acks += 1;
                self.stats.acks_unicast += u64::from(f.unicast());
            }
            ResponseKind::Throttled { .. } => self.stats.throttled += 1,
        }
        let Some(&slot) = self.attempts.get(&attempt) else {
            self.stats.stray_responses += 1;
            return;
        };
        let state = self.gap(slot).state;
        if state != State::InFlight(attempt) {
            // A second response to an attempt already answered.
            self.stats.stray_responses += 1;
            return;
        }
        match resp.kind {
            ResponseKind::Miss => self.stats.answered_miss += 1,
            ResponseKind::Ack(_) => self.stats.answered_ack += 1,
            ResponseKind::Throttled { .. } => self.stats.answered_throttled += 1,
        }
        match resp.kind {
            ResponseKind::Miss => {
                self.end_attempt(slot);
                self.next_endpoint_or_fail(now, slot);
            }
            ResponseKind::Ack(flags) => {
                let wait =
                    if flags.unicast() { self.cfg.unicast_wait } else { self.cfg.multicast_wait };
                let g = self.gap_mut(slot);
                g.state = State::AwaitFrame(attempt);
                g.gen_ += 1;
                self.arm(slot, now + ns(wait));
            }
            ResponseKind::Throttled { bucket } => {
                self.end_attempt(slot);
                let hold = (125_000_000u64 << (bucket & 0x0F)).min(ns(self.cfg.backoff_max));
                let at = now + self.rng.range_inclusive(hold / 2, hold);
                self.wait(slot, at);
            }
        }
    }

    /// Processes every timer due at `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        while let Some(&Reverse(t)) = self.timers.peek() {
            if t.at > now {
                break;
            }
            self.timers.pop();
            let Some(gap) = self.slots.get(t.slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            if gap.uid != t.uid {
                continue;
            }
            match t.kind {
                Kind::Ttl => {
                    self.stats.cut_short += u64::from(matches!(gap.state, State::InFlight(_)));
                    let (hash_key, seq) = (gap.hash_key, gap.seq);
                    self.index.remove(&(hash_key, seq));
                    self.release(t.slot);
                    self.stats.expired += 1;
                    self.events.push_back(Event::Expired { hash_key, seq });
                }
                Kind::State if gap.gen_ == t.gen_ => match gap.state {
                    State::Waiting => {
                        self.gap_mut(t.slot).state = State::Ready;
                        self.ready.push_back((t.slot, t.uid));
                    }
                    State::InFlight(_) => {
                        self.stats.timeouts += 1;
                        self.end_attempt(t.slot);
                        self.failed_round(now, t.slot);
                    }
                    State::AwaitFrame(_) => {
                        self.stats.frame_waits_expired += 1;
                        self.end_attempt(t.slot);
                        self.next_endpoint_or_fail(now, t.slot);
                    }
                    State::Ready | State::Idle => {}
                },
                Kind::State => {}
            }
        }
    }

    /// The next NACK to send now, if a gap is ready and an attempt slot is free.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Transmit> {
        while self.inflight < self.cfg.max_inflight {
            let (slot, uid) = self.ready.pop_front()?;
            let attempt = self.next_attempt;
            let Some(g) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            if g.uid != uid || g.state != State::Ready {
                continue;
            }
            self.next_attempt += 1;
            g.state = State::InFlight(attempt);
            g.gen_ += 1;
            g.attempts += 1;
            g.first_nack.get_or_insert(now);
            let t = Transmit { attempt, endpoint: g.endpoint, hash_key: g.hash_key, seq: g.seq };
            self.inflight += 1;
            self.attempts.insert(attempt, slot);
            self.stats.nacks_sent += 1;
            self.arm(slot, now + ns(self.cfg.attempt_timeout));
            return Some(t);
        }
        None
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Recovery::handle_timeout`] should next run (may be early: stale
    /// timers are skipped then).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse(t)| t.at)
    }

    // ───────────────────────────── internals ─────────────────────────────

    fn gap(&self, slot: u32) -> &Gap {
        self.slots[slot as usize].as_ref().expect("live gap slot")
    }

    fn gap_mut(&mut self, slot: u32) -> &mut Gap {
        self.slots[slot as usize].as_mut().expect("live gap slot")
    }

    fn arm(&mut self, slot: u32, at: u64) {
        let g = self.gap(slot);
        let t = Timer { at, slot, uid: g.uid, gen_: g.gen_, kind: Kind::State };
        self.timers.push(Reverse(t));
    }

    fn wait(&mut self, slot: u32, at: u64) {
        let g = self.gap_mut(slot);
        g.state = State::Waiting;
        g.gen_ += 1;
        self.arm(slot, at);
    }

    fn make_ready(&mut self, slot: u32) {
        let g = self.gap_mut(slot);
        g.state = State::Ready;
        g.gen_ += 1;
        let uid = g.uid;
        self.ready.push_back((slot, uid));
    }

    /// Ends the gap's current attempt, if any, telling the driver.
    fn end_attempt(&mut self, slot: u32) {
        if let State::InFlight(a) | State::AwaitFrame(a) = self.gap(slot).state {
            let g = self.gap_mut(slot);
            g.state = State::Idle;
            g.gen_ += 1;
            self.attempts.remove(&a);
            self.inflight -= 1;
            self.events.push_back(Event::AttemptDone(a));
        }
    }

    /// Removes a gap from its slot (not from the index), ending its attempt.
    fn release(&mut self, slot: u32) -> Gap {
        self.end_attempt(slot);
        self.free.push(slot);
        self.slots[slot as usize].take().expect("live gap slot")
    }

    fn next_endpoint_or_fail(&mut self, now: u64, slot: u32) {
        let last = self.cfg.endpoints - 1;
        let g = self.gap_mut(slot);
        if g.endpoint < last {
            g.endpoint += 1;
            g.fail_rounds = 0;
            self.stats.endpoint_hops += 1;
            self.make_ready(slot);
        } else {
            self.failed_round(now, slot);
        }
    }

    fn failed_round(&mut self, now: u64, slot: u32) {
        self.stats.failed_rounds += 1;
        let (max_retries, base, cap, last) = (
            self.cfg.max_retries,
            ns(self.cfg.backoff_base),
            ns(self.cfg.backoff_max),
            self.cfg.endpoints - 1,
        );
        let g = self.gap_mut(slot);
        g.fail_rounds += 1;
        if g.fail_rounds >= max_retries {
            let (hash_key, seq) = (g.hash_key, g.seq);
            self.index.remove(&(hash_key, seq));
            self.release(slot);
            self.stats.abandoned += 1;
            self.events.push_back(Event::Abandoned { hash_key, seq });
            return;
        }
        let b = base.checked_shl(g.fail_rounds - 1).unwrap_or(u64::MAX).min(cap);
        g.endpoint = (g.endpoint + 1).min(last);
        let at = now + self.rng.range_inclusive(b / 2, b);
        self.wait(slot, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ricochet_wire::control::AckFlags;

    const MS: u64 = 1_000_000;

    fn cfg(endpoints: usize) -> Config {
        Config { endpoints, ..Config::default() }
    }

    /// Advances virtual time until a NACK goes out (at most `limit` ns),
    /// returning it and the time it went.
    fn next_nack(r: &mut Recovery, now: &mut u64, limit: u64) -> Option<Transmit> {
        let end = *now + limit;
        loop {
            r.handle_timeout(*now);
            if let Some(t) = r.poll_transmit(*now) {
                return Some(t);
            }
            let next = r.poll_timeout()?;
            if next > end {
                return None;
            }
            *now = next.max(*now);
        }
    }

    fn drain(r: &mut Recovery) -> Vec<Event> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    #[test]
    fn first_nack_waits_for_jitter_then_a_unicast_ack_and_frame_fill_the_gap() {
        let mut r = Recovery::new(cfg(1), 1);
        assert!(r.open(0, 7, 42));
        assert!(!r.open(0, 7, 42), "already open");
        assert_eq!(r.poll_transmit(0), None, "jitter first");
        let mut now = 0;
        let t = next_nack(&mut r, &mut now, 10 * 1000 * MS).unwrap();
        assert!(now <= 200 * MS, "jitter is at most 200 ms, was {now}");
        assert_eq!((t.endpoint, t.hash_key, t.seq), (0, 7, 42));
        assert_eq!(r.inflight(), 1);
        r.on_response(now + MS, t.attempt, ResponseRepr::ack(42, AckFlags(AckFlags::UNICAST)));
        assert!(r.fill(now + 2 * MS, 7, 42));
        let ev = drain(&mut r);
        assert_eq!(ev[0], Event::AttemptDone(t.attempt));
        assert_eq!(
            ev[1],
            Event::Filled {
                hash_key: 7,
                seq: 42,
                latency_ns: now + 2 * MS,
                since_nack_ns: Some(2 * MS),
                attempts: 1
            }
        );
        assert_eq!((r.open_gaps(), r.inflight()), (0, 0));
        assert!(!r.fill(now + 3 * MS, 7, 42), "a second copy is a duplicate");
        let s = r.stats();
        assert_eq!((s.gaps_opened, s.filled, s.nacks_sent, s.acks_unicast), (1, 1, 1, 1));
        assert_eq!((s.answered_ack, s.frame_first, s.in_flight()), (1, 0, 0));
    }

    #[test]
    fn miss_moves_to_the_next_endpoint_at_once_and_at_the_last_is_a_failed_round() {
        let mut r = Recovery::new(Config { jitter_max: Duration::ZERO, ..cfg(2) }, 2);
        r.open(0, 1, 5);
        let mut now = 0;
        let a = next_nack(&mut r, &mut now, MS).unwrap();
        assert_eq!((a.endpoint, now), (0, 0));
        r.on_response(10 * MS, a.attempt, ResponseRepr::miss());
        let b = r.poll_transmit(10 * MS).expect("retry at once, no backoff");
        assert_eq!(b.endpoint, 1);
        assert_eq!(r.stats().endpoint_hops, 1);
        r.on_response(11 * MS, b.attempt, ResponseRepr::miss());
        assert_eq!(r.poll_transmit(11 * MS), None, "last endpoint: backoff");
        assert_eq!(r.stats().failed_rounds, 1);
        let mut now = 11 * MS;
        let c = next_nack(&mut r, &mut now, 10_000 * MS).unwrap();
        let waited = now - 11 * MS;
        assert!((250 * MS..=500 * MS).contains(&waited), "first backoff in [b/2, b]: {waited}");
        assert_eq!(c.endpoint, 1, "clamped at the last endpoint");
    }

    #[test]
    fn timeouts_back_off_exponentially_and_abandon_after_max_retries() {
        let mut r = Recovery::new(Config { jitter_max: Duration::ZERO, ..cfg(3) }, 3);
        r.open(0, 9, 1);
        let mut now = 0;
        let mut sent_at = vec![];
        let mut endpoints = vec![];
        while let Some(t) = next_nack(&mut r, &mut now, 60_000 * MS) {
            sent_at.push(now);
            endpoints.push(t.endpoint);
            // No response: let the 300 ms attempt timeout fire.
        }
        assert_eq!(sent_at.len(), 5, "max_retries = 5 failed rounds");
        assert_eq!(endpoints, vec![0, 1, 2, 2, 2], "advance on timeout, clamped");
        for (i, w) in sent_at.windows(2).enumerate() {
            let gap = w[1] - w[0] - 300 * MS; // minus the attempt timeout
            let b = ((500 * MS) << i).min(5_000 * MS);
            assert!((b / 2..=b).contains(&gap), "round {i}: backoff {gap} not in [{}, {b}]", b / 2);
        }
        let ev = drain(&mut r);
        assert!(ev.contains(&Event::Abandoned { hash_key: 9, seq: 1 }));
        let s = r.stats();
        assert_eq!((s.timeouts, s.abandoned, s.failed_rounds), (5, 1, 5));
        assert_eq!((r.open_gaps(), r.inflight()), (0, 0));
    }

    #[test]
    fn backoff_is_capped_at_backoff_max() {
        let c = Config { jitter_max: Duration::ZERO, max_retries: 10, ..cfg(1) };
        let mut r = Recovery::new(c, 4);
        r.open(0, 1, 1);
        let mut now = 0;
        let mut sent_at = vec![];
        while next_nack(&mut r, &mut now, 60_000 * MS).is_some() {
            sent_at.push(now);
        }
        assert_eq!(sent_at.len(), 10);
        let backoffs: Vec<u64> = sent_at.windows(2).map(|w| w[1] - w[0] - 300 * MS).collect();
        // 500 ms << 4 = 8 s is past the 5 s cap: from the fifth round on,
        // every backoff is within [2.5 s, 5 s].
        assert!(
            backoffs[4..].iter().all(|&b| (2_500 * MS..=5_000 * MS).contains(&b)),
            "{backoffs:?}"
        );
    }

    #[test]
    fn throttled_holds_on_the_same_endpoint_without_using_a_retry() {
        let mut r = Recovery::new(Config { jitter_max: Duration::ZERO, ..cfg(2) }, 5);
        r.open(0, 3, 8);
        let mut now = 0;
        let a = next_nack(&mut r, &mut now, MS).unwrap();
        r.on_response(MS, a.attempt, ResponseRepr::throttled(8, 2));
        assert_eq!(r.poll_transmit(MS), None);
        let mut now = MS;
        let b = next_nack(&mut r, &mut now, 10_000 * MS).unwrap();
        let held = now - MS;
        assert!((250 * MS..=500 * MS).contains(&held), "125 ms << 2 jittered: {held}");
        assert_eq!(b.endpoint, 0, "same endpoint");
        assert_eq!(r.stats().failed_rounds, 0, "no retry consumed");
        // A huge bucket is capped at backoff_max.
        let t0 = now;
        r.on_response(t0, b.attempt, ResponseRepr::throttled(8, 6));
        let _ = next_nack(&mut r, &mut now, 60_000 * MS).unwrap();
        assert!((2_500 * MS..=5_000 * MS).contains(&(now - t0)));
        assert_eq!(r.stats().throttled, 2);
    }

    #[test]
    fn an_ack_whose_frame_never_comes_escalates() {
        let mut r = Recovery::new(Config { jitter_max: Duration::ZERO, ..cfg(2) }, 6);
        r.open(0, 3, 8);
        let mut now = 0;
        let a = next_nack(&mut r, &mut now, MS).unwrap();
        r.on_response(MS, a.attempt, ResponseRepr::ack(8, AckFlags(AckFlags::MULTICAST)));
        assert_eq!(r.inflight(), 1, "the attempt stays open while waiting for the frame");
        r.handle_timeout(MS + 299 * MS);
        assert_eq!(r.poll_transmit(MS + 299 * MS), None);
        r.handle_timeout(MS + 300 * MS);
        let b = r.poll_transmit(MS + 300 * MS).expect("next endpoint at once");
        assert_eq!(b.endpoint, 1);
        assert_eq!(r.stats().frame_waits_expired, 1);
        // Unicast ACKs wait only 80 ms.
        r.on_response(400 * MS, b.attempt, ResponseRepr::ack(8, AckFlags(AckFlags::UNICAST)));
        r.handle_timeout(480 * MS);
        assert_eq!(r.stats().frame_waits_expired, 2);
        assert_eq!(r.stats().failed_rounds, 1, "at the last endpoint it is a failed round");
    }

    #[test]
    fn stray_and_duplicate_responses_are_counted_and_ignored() {
        let mut r = Recovery::new(Config { jitter_max: Duration::ZERO, ..cfg(1) }, 7);
        r.on_response(0, 99, ResponseRepr::miss());
        r.open(0, 1, 1);
        let mut now = 0;
        let a = next_nack(&mut r, &mut now, MS).unwrap();
        r.on_response(MS, a.attempt, ResponseRepr::ack(1, AckFlags(AckFlags::MULTICAST)));
        r.on_response(MS, a.attempt, ResponseRepr::miss());
        assert_eq!(r.stats().stray_responses, 2);
        assert_eq!((r.stats().acks, r.stats().misses), (1, 2), "every response is counted by kind");
    }

    #[test]
    fn inflight_is_capped_and_queued_gaps_go_when_a_slot_frees() {
        let c = Config { jitter_max: Duration::ZERO, max_inflight: 2, ..cfg(1) };
        let mut r = Recovery::new(c, 8);
        for s in 1..=3 {
            r.open(0, 1, s);
        }
        r.handle_timeout(0);
        let a = r.poll_transmit(0).unwrap();
        let _b = r.poll_transmit(0).unwrap();
        assert_eq!(r.poll_transmit(0), None, "two in flight");
        r.fill(MS, 1, a.seq);
        let c = r.poll_transmit(MS).expect("slot freed");
        assert_eq!(c.seq, 3);
    }

    #[test]
    fn a_gap_filled_before_its_first_nack_sends_nothing() {
        let mut r = Recovery::new(cfg(1), 9);
        r.open(0, 1, 1);
        assert!(r.fill(MS, 1, 1));
        let mut now = MS;
        assert_eq!(next_nack(&mut r, &mut now, 10_000 * MS), None);
        match drain(&mut r)[..] {
            [Event::Filled { since_nack_ns: None, attempts: 0, .. }] => {}
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gaps_expire_at_their_ttl_and_restarts_void_them() {
        let c = Config { gap_ttl: Duration::from_secs(1), max_retries: 100, ..cfg(1) };
        let mut r = Recovery::new(c, 10);
        r.open(0, 1, 1);
        let mut now = 0;
        while now < 2_000 * MS {
            r.handle_timeout(now);
            while r.poll_transmit(now).is_some() {}
            now += 10 * MS;
        }
        assert!(drain(&mut r).contains(&Event::Expired { hash_key: 1, seq: 1 }));
        assert_eq!((r.open_gaps(), r.inflight()), (0, 0));
        r.open(now, 2, 5);
        r.open(now, 2, 6);
        r.open(now, 3, 6);
        assert_eq!(r.void_flow(2), 2);
        assert_eq!(r.open_gaps(), 1);
        assert_eq!(r.stats().voided, 2);
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let run = |seed| {
            let mut r = Recovery::new(cfg(1), seed);
            let mut times = vec![];
            for s in 1..=20 {
                r.open(0, 1, s);
            }
            let mut now = 0;
            while let Some(_t) = next_nack(&mut r, &mut now, 1_000 * MS) {
                times.push(now);
            }
            times
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }
}
