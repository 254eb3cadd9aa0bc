//! Cross-domain recovery (seed 000): a frame missed here is fetched from an
//! upstream domain's endpoint with a Proxied NACK, re-cached and multicast
//! into this domain so its listeners' gaps fill.
//!
//! # Contract
//! - Sans-IO like the rest of `retry`: [`Recovery::enqueue`] and
//!   [`Recovery::on_datagram`] take `now` and push [`Transmit`]s with
//!   [`Dest::Upstream`] (to be sent from the worker's upstream socket, whose
//!   replies come back to it); [`Recovery::handle_timeouts`] advances jobs
//!   whose upstream stayed silent.
//! - A job tries the configured upstreams in order, waiting `timeout` for
//!   each, at most `max_endpoints` of them; an upstream MISS moves on at
//!   once. A job ends when a frame with its HashKey and SeqNum arrives
//!   (recovered) or the upstreams run out (failed).
//! - Bounded: at most `queue_depth` jobs in flight; more are dropped and
//!   counted (the listener will NACK again). Each (HashKey, SeqNum) is
//!   claimed for `dedup_window` from its first enqueue, so a gap costs one
//!   upstream fetch however many listeners NACK it.
//! - Siblings: with `shared_claims` on (a Redis server shared by sibling
//!   endpoints), a new job first waits for the caller's cross-instance
//!   claim ([`Enqueued::NeedsClaim`], answered by [`Recovery::on_claim`]):
//!   won or unanswerable (Redis down: local dedup only) → ask upstream;
//!   lost → a sibling fetches it, the job ends.
//! - Sibling fill: a job may name a sibling first ([`Recovery::enqueue`]'s
//!   `fill`, the sibling whose cache digest lists the frame): it is asked
//!   with a Proxied NACK like an upstream — it answers from its cache only,
//!   a unicast copy or a MISS, never fetching further — before the
//!   upstreams. The sibling counts as one more attempt, outside
//!   `max_endpoints`; with a sibling to ask, a job runs even when no
//!   upstream is configured.
//! - Never trusted: a datagram from the upstream socket is a frame only if
//!   it parses as one and its key matches a claimed gap; anything else is
//!   counted and dropped. Upstream MISS/ACK carry no HashKey, so a MISS is
//!   charged to the oldest job waiting on that upstream; if that guess is
//!   wrong the other job's frame is still accepted when it arrives (claims
//!   outlive jobs), so a wrong guess costs time, never a frame.

use std::collections::{HashMap, VecDeque};

use super::claims::Claims;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_wire::control::{NackFlags, NackRepr, ResponseKind, ResponseRepr};
use ricochet_wire::frame::{Frame, FrameKey};

use super::service::{Dest, Payload, Transmit};

/// Recovery knobs (`PROXY_*`, `UPSTREAM_RETRY_ENDPOINTS`).
#[derive(Debug, Clone, PartialEq)]
pub struct RecoverySettings {
    /// Upstream NACK addresses, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Wait per upstream (300 ms).
    pub timeout: Duration,
    /// Most upstreams tried per gap; 0 = all.
    pub max_endpoints: usize,
    /// How long a gap stays claimed after its first NACK (60 s).
    pub dedup_window: Duration,
    /// Jobs in flight before new ones are dropped (1024).
    pub queue_depth: usize,
    /// Each job waits for a cross-instance claim before asking upstream
    /// (`REDIS_ADDR` set).
    pub shared_claims: bool,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        RecoverySettings {
            upstreams: Vec::new(),
            timeout: Duration::from_millis(300),
            max_endpoints: 0,
            dedup_window: Duration::from_secs(60),
            queue_depth: 1024,
            shared_claims: false,
        }
    }
}

/// Counters of the recovery path, exported as `ricochet_recovery_*_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryStats {
    /// Jobs started.
    pub queued: u64,
    /// Jobs refused because `queue_depth` were in flight.
    pub dropped_queue_full: u64,
    /// Requests for a gap already claimed (in flight or recently done).
    pub deduplicated: u64,
    /// Proxied NACKs sent upstream.
    pub upstream_nacks: u64,
    /// Upstream MISS answers.
    pub upstream_misses: u64,
    /// Upstreams that stayed silent past the timeout.
    pub upstream_timeouts: u64,
    /// Frames recovered (key matched a claimed gap).
    pub recovered: u64,
    /// Jobs that ran out of upstreams.
    pub failed: u64,
    /// Upstream datagrams that were neither a matching frame nor a MISS/ACK.
    pub garbage: u64,
    /// Sum of recovery latencies, microseconds (divide by `recovered`).
    pub latency_us_sum: u64,
    /// Jobs a sibling endpoint had claimed already (shared claims).
    pub claimed_by_sibling: u64,
    /// Jobs that went ahead without a cross-instance claim because the
    /// shared store could not answer.
    pub claims_unavailable: u64,
    /// Jobs in flight now (a gauge).
    pub in_flight: u64,
    /// Proxied NACKs sent to a sibling whose digest listed the frame.
    pub sibling_fill_nacks: u64,
    /// Frames a sibling sent back for them.
    pub sibling_filled: u64,
    /// Siblings' MISS answers to them (the job moved on upstream).
    pub sibling_fill_misses: u64,
    /// Frames for a claimed gap from an address that was not asked for it,
    /// dropped: anyone can open a gap by NACKing it, so anyone could answer
    /// it with forged bytes that would be cached, served and multicast.
    pub refused_source: u64,
}

/// What [`Recovery::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Recovery is off (no upstreams).
    Off,
    /// Claimed here already, or the queue was full: nothing to do.
    Refused,
    /// The first Proxied NACK is queued.
    Asked,
    /// The job waits for the cross-instance claim of this key; answer with
    /// [`Recovery::on_claim`].
    NeedsClaim,
}

/// The answer to a cross-instance claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimResult {
    /// This endpoint holds the claim.
    Won,
    /// Another endpoint holds it.
    Lost,
    /// The shared store did not answer (down, slow, or its queue full).
    Unavailable,
}

/// A recovered frame, to re-cache and multicast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The frame's key.
    pub key: FrameKey,
    /// The whole datagram as the upstream sent it.
    pub frame: Bytes,
}

#[derive(Debug, Clone)]
struct Job {
    subtree_id: [u8; 32],
    started: Instant,
    /// The sibling asked first (sibling fill), if any.
    fill: Option<SocketAddr>,
    /// Which target is being asked: 0 is `fill` when there is one, the
    /// rest index `upstreams` in order.
    attempt: usize,
    deadline: Instant,
    /// Waiting for the cross-instance claim; nothing sent yet.
    claiming: bool,
}

/// The recovery state machine of one worker.
#[derive(Debug)]
pub struct Recovery {
    settings: RecoverySettings,
    jobs: HashMap<FrameKey, Job>,
    /// Gaps claimed for the dedup window; trimmed in `handle_timeouts`.
    claims: Claims<FrameKey>,
    /// (deadline, key, attempt) in deadline order: every wait is `timeout`
    /// long, so pushing at the back keeps the queue sorted.
    timers: VecDeque<(Instant, FrameKey, usize)>,
    stats: RecoveryStats,
}

impl Recovery {
    /// A recovery path with these settings.
    pub fn new(settings: RecoverySettings) -> Self {
        Recovery {
            jobs: HashMap::new(),
            // A claim per job at most, plus those whose window still runs:
            // 64 windows' worth of a full queue.
            claims: Claims::new(settings.dedup_window, settings.queue_depth.saturating_mul(64)),
            timers: VecDeque::new(),
            stats: RecoveryStats::default(),
            settings,
        }
    }

    /// Replaces the upstream list (upstream discovery found a new one).
    /// Jobs in flight keep their position in the list: the next attempt of
    /// each goes to the new list's next entry, and an upstream MISS that
    /// arrives for an address no longer listed is left to the timeout.
    pub fn set_upstreams(&mut self, upstreams: Vec<SocketAddr>) {
        self.settings.upstreams = upstreams;
    }

    /// The upstreams asked, in order.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.settings.upstreams
    }

    /// Whether any upstream is configured.
    pub fn enabled(&self) -> bool {
        !self.settings.upstreams.is_empty()
    }

    /// Counters (with the in-flight gauge).
    pub fn stats(&self) -> RecoveryStats {
        RecoveryStats { in_flight: self.jobs.len() as u64, ..self.stats }
    }

    /// Starts recovering `key` unless it is claimed already or the queue
    /// is full; queues the first Proxied NACK — to the sibling `fill` when
    /// given, else to the first upstream — or with shared claims waits for
    /// [`Recovery::on_claim`].
    pub fn enqueue(
        &mut self,
        now: Instant,
        key: FrameKey,
        subtree_id: [u8; 32],
        fill: Option<SocketAddr>,
        out: &mut Vec<Transmit>,
    ) -> Enqueued {
        if !self.enabled() && fill.is_none() {
            return Enqueued::Off;
        }
        if self.claims.is_claimed(now, key) {
            self.stats.deduplicated += 1;
            return Enqueued::Refused;
        }
        if self.jobs.len() >= self.settings.queue_depth {
            self.stats.dropped_queue_full += 1;
            return Enqueued::Refused;
        }
        self.claims.try_claim(now, key);
        self.stats.queued += 1;
        let job =
            Job { subtree_id, started: now, fill, attempt: 0, deadline: now, claiming: false };
        if self.settings.shared_claims {
            self.jobs.insert(key, Job { claiming: true, ..job });
            return Enqueued::NeedsClaim;
        }
        self.jobs.insert(key, job);
        self.ask(now, key, out);
        Enqueued::Asked
    }

    /// The cross-instance claim of a job that [`Recovery::enqueue`] left
    /// waiting: won or unavailable → ask upstream; lost → a sibling is
    /// fetching the frame, the job ends (and its local claim stays, so this
    /// endpoint does not ask again within the window).
    pub fn on_claim(
        &mut self,
        now: Instant,
        key: FrameKey,
        result: ClaimResult,
        out: &mut Vec<Transmit>,
    ) {
        let Some(job) = self.jobs.get_mut(&key).filter(|j| j.claiming) else { return };
        match result {
            ClaimResult::Lost => {
                self.jobs.remove(&key);
                self.stats.claimed_by_sibling += 1;
            }
            ClaimResult::Won | ClaimResult::Unavailable => {
                job.claiming = false;
                if result == ClaimResult::Unavailable {
                    self.stats.claims_unavailable += 1;
                }
                self.ask(now, key, out);
            }
        }
    }

    /// A datagram from the upstream socket: a frame for a claimed gap is
    /// returned for re-caching; a MISS moves the oldest job on that upstream
    /// to the next one.
    pub fn on_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Vec<Transmit>,
    ) -> Option<Recovered> {
        if let Ok(frame) = Frame::new_checked(datagram) {
            let key = frame.key()?;
            if !self.claims.contains(key) {
                self.stats.garbage += 1;
                return None;
            }
            if !self.was_asked(key, from) {
                self.stats.refused_source += 1;
                return None;
            }
            // The claim stays until the window ends: later copies of the
            // same frame are duplicates for the cache, not new recoveries.
            match self.jobs.remove(&key) {
                Some(job) => {
                    self.stats.recovered += 1;
                    if job.fill == Some(from) {
                        self.stats.sibling_filled += 1;
                    }
                    self.stats.latency_us_sum += now.duration_since(job.started).as_micros() as u64;
                }
                None => {
                    // Recovered after the job gave up on this upstream.
                    self.stats.recovered += 1;
                }
            }
            return Some(Recovered { key, frame: Bytes::copy_from_slice(datagram) });
        }
        match ResponseRepr::parse(datagram) {
            Ok(ResponseRepr { kind: ResponseKind::Miss, .. }) => {
                let Some(key) = self.oldest_waiting_on(from) else {
                    self.stats.upstream_misses += 1;
                    return None;
                };
                if self.jobs.get(&key).is_some_and(|j| j.attempt == 0 && j.fill == Some(from)) {
                    self.stats.sibling_fill_misses += 1;
                } else {
                    self.stats.upstream_misses += 1;
                }
                self.advance(now, key, out);
            }
            // The frame itself carries the news; an ACK or THROTTLED adds
            // nothing the timeout does not handle.
            Ok(_) => {}
            Err(_) => self.stats.garbage += 1,
        }
        None
    }

    /// Moves on every job whose upstream stayed silent, and forgets expired
    /// claims.
    pub fn handle_timeouts(&mut self, now: Instant, out: &mut Vec<Transmit>) {
        while let Some(&(deadline, key, attempt)) = self.timers.front() {
            if deadline > now {
                break;
            }
            self.timers.pop_front();
            // Skip timers of jobs that finished or moved on since.
            if self.jobs.get(&key).is_some_and(|j| j.attempt == attempt && j.deadline == deadline) {
                self.stats.upstream_timeouts += 1;
                self.advance(now, key, out);
            }
        }
        self.claims.expire(now);
    }

    /// When [`Recovery::handle_timeouts`] next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.front().map(|t| t.0)
    }

    /// Whether a job is waiting for an answer from `from` (an upstream or
    /// a sibling asked for a fill).
    pub fn is_waiting_on(&self, from: SocketAddr) -> bool {
        self.jobs.values().any(|j| !j.claiming && self.target(j) == Some(from))
    }

    /// Attempts a job makes: its fill sibling, then at most
    /// `max_endpoints` upstreams.
    fn limit(&self, job: &Job) -> usize {
        let upstreams = match self.settings.max_endpoints {
            0 => self.settings.upstreams.len(),
            n => n.min(self.settings.upstreams.len()),
        };
        upstreams + usize::from(job.fill.is_some())
    }

    /// Who `job` is asking now.
    fn target(&self, job: &Job) -> Option<SocketAddr> {
        self.target_at(job, job.attempt)
    }

    /// Who `job` asks at `attempt`.
    fn target_at(&self, job: &Job, attempt: usize) -> Option<SocketAddr> {
        match (job.fill, attempt) {
            (Some(sibling), 0) => Some(sibling),
            (Some(_), n) => self.settings.upstreams.get(n - 1).copied(),
            (None, n) => self.settings.upstreams.get(n).copied(),
        }
    }

    /// Whether `from` was asked for `key`: by its job, at this attempt or
    /// an earlier one; or, the job having ended, by the upstreams every
    /// ended job asked (a late answer). A job still waiting for its
    /// cross-instance claim has asked no one.
    fn was_asked(&self, key: FrameKey, from: SocketAddr) -> bool {
        match self.jobs.get(&key) {
            Some(job) => {
                !job.claiming && (0..=job.attempt).any(|a| self.target_at(job, a) == Some(from))
            }
            None => {
                let asked = match self.settings.max_endpoints {
                    0 => self.settings.upstreams.len(),
                    n => n,
                };
                self.settings.upstreams.iter().take(asked).any(|&u| u == from)
            }
        }
    }

    fn oldest_waiting_on(&self, from: SocketAddr) -> Option<FrameKey> {
        self.jobs
            .iter()
            .filter(|(_, j)| !j.claiming && self.target(j) == Some(from))
            .min_by_key(|(_, j)| j.deadline)
            .map(|(k, _)| *k)
    }

    fn advance(&mut self, now: Instant, key: FrameKey, out: &mut Vec<Transmit>) {
        let Some(job) = self.jobs.get(&key) else { return };
        let attempt = job.attempt + 1;
        if attempt >= self.limit(job) {
            self.jobs.remove(&key);
            self.stats.failed += 1;
            return;
        }
        if let Some(job) = self.jobs.get_mut(&key) {
            job.attempt = attempt;
        }
        self.ask(now, key, out);
    }

    fn ask(&mut self, now: Instant, key: FrameKey, out: &mut Vec<Transmit>) {
        let Some(job) = self.jobs.get(&key) else { return };
        let Some(upstream) = self.target(job) else { return };
        let fill = job.fill == Some(upstream) && job.attempt == 0;
        let Some(job) = self.jobs.get_mut(&key) else { return };
        job.deadline = now + self.settings.timeout;
        self.timers.push_back((job.deadline, key, job.attempt));
        let mut buf = [0u8; 64];
        let nack = NackRepr {
            flags: NackFlags(NackFlags::PROXIED),
            hash_key: key.hash_key,
            start_seq: key.seq,
            end_seq: key.seq,
            subtree_id: job.subtree_id,
        };
        if let Ok(len) = nack.emit(&mut buf) {
            if fill {
                self.stats.sibling_fill_nacks += 1;
            } else {
                self.stats.upstream_nacks += 1;
            }
            out.push(Transmit {
                dest: Dest::Upstream(upstream),
                payload: Payload::Control { buf, len: len as u8 },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ricochet_wire::frame::{Extra, FrameRepr, FrameVersion};

    const U1: &str = "10.0.0.1:9300";
    const U2: &str = "10.0.0.2:9300";

    fn rec(upstreams: &[&str]) -> Recovery {
        Recovery::new(RecoverySettings {
            upstreams: upstreams.iter().map(|u| u.parse().unwrap()).collect(),
            ..RecoverySettings::default()
        })
    }

    fn key(seq: u64) -> FrameKey {
        FrameKey { hash_key: 77, seq }
    }

    fn frame(k: FrameKey) -> Vec<u8> {
        let r = FrameRepr {
            version: FrameVersion::Tx,
            byte7: 0,
            id: [1; 32],
            hash_key: k.hash_key,
            seq: k.seq,
            subtree_id: [2; 32],
            extra: Extra::None,
            payload: b"tx",
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b).unwrap();
        b
    }

    fn miss() -> [u8; 16] {
        let mut b = [0u8; 16];
        ResponseRepr::miss().emit(&mut b).unwrap();
        b
    }

    fn targets(out: &[Transmit]) -> Vec<SocketAddr> {
        out.iter()
            .map(|t| match t.dest {
                Dest::Upstream(a) => a,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn asks_upstreams_in_order_with_a_proxied_nack() {
        let (mut r, t0, mut out) = (rec(&[U1, U2]), Instant::now(), Vec::new());
        r.enqueue(t0, key(5), [9; 32], None, &mut out);
        assert_eq!(targets(&out), [U1.parse().unwrap()]);
        let n = NackRepr::parse(out[0].payload.as_bytes()).unwrap();
        assert!(n.flags.proxied());
        assert_eq!((n.hash_key, n.start_seq, n.end_seq, n.subtree_id), (77, 5, 5, [9; 32]));
        out.clear();
        // Silent for 299 ms: nothing; at 300 ms: the second upstream.
        r.handle_timeouts(t0 + Duration::from_millis(299), &mut out);
        assert!(out.is_empty());
        r.handle_timeouts(t0 + Duration::from_millis(300), &mut out);
        assert_eq!(targets(&out), [U2.parse().unwrap()]);
        out.clear();
        r.handle_timeouts(t0 + Duration::from_millis(600), &mut out);
        assert!(out.is_empty());
        let s = r.stats();
        assert_eq!((s.upstream_timeouts, s.failed, s.in_flight), (2, 1, 0));
    }

    #[test]
    fn a_miss_moves_on_at_once_and_a_matching_frame_recovers() {
        let (mut r, t0, mut out) = (rec(&[U1, U2]), Instant::now(), Vec::new());
        r.enqueue(t0, key(5), [0; 32], None, &mut out);
        out.clear();
        assert_eq!(r.on_datagram(t0, U1.parse().unwrap(), &miss(), &mut out), None);
        assert_eq!(targets(&out), [U2.parse().unwrap()]);
        let t1 = t0 + Duration::from_millis(3);
        let got = r.on_datagram(t1, U2.parse().unwrap(), &frame(key(5)), &mut out).unwrap();
        assert_eq!(got.key, key(5));
        assert_eq!(&got.frame[..], &frame(key(5))[..]);
        let s = r.stats();
        assert_eq!(
            (s.recovered, s.upstream_misses, s.in_flight, s.latency_us_sum),
            (1, 1, 0, 3000)
        );
    }

    #[test]
    fn a_frame_is_taken_only_from_an_address_that_was_asked() {
        let (mut r, t0, mut out) = (rec(&[U1, U2]), Instant::now(), Vec::new());
        let stranger: SocketAddr = "10.9.9.9:4000".parse().unwrap();
        r.enqueue(t0, key(5), [0; 32], None, &mut out);
        // Asking U1: neither a stranger nor U2 (not asked yet) may answer.
        assert_eq!(r.on_datagram(t0, stranger, &frame(key(5)), &mut out), None);
        assert_eq!(r.on_datagram(t0, U2.parse().unwrap(), &frame(key(5)), &mut out), None);
        assert_eq!(r.stats().refused_source, 2);
        // U1 stayed silent; U2 is asked now, and U1's late answer counts too.
        r.handle_timeouts(t0 + Duration::from_millis(300), &mut out);
        let got = r.on_datagram(t0, U1.parse().unwrap(), &frame(key(5)), &mut out);
        assert_eq!(got.map(|g| g.key), Some(key(5)));
        // The job ended: a later copy from an upstream is a late answer, a
        // stranger's is still refused.
        assert_eq!(r.on_datagram(t0, stranger, &frame(key(5)), &mut out), None);
        assert!(r.on_datagram(t0, U2.parse().unwrap(), &frame(key(5)), &mut out).is_some());
        assert_eq!((r.stats().refused_source, r.stats().recovered), (3, 2));
    }

    #[test]
    fn one_fetch_per_gap_within_the_window() {
        let (mut r, t0, mut out) = (rec(&[U1]), Instant::now(), Vec::new());
        for _ in 0..5 {
            r.enqueue(t0, key(5), [0; 32], None, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(r.stats().deduplicated, 4);
        // After the window the gap may be fetched again.
        r.handle_timeouts(t0 + Duration::from_secs(61), &mut out);
        out.clear();
        r.enqueue(t0 + Duration::from_secs(61), key(5), [0; 32], None, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn the_queue_is_bounded_and_drops_are_counted() {
        let mut r = Recovery::new(RecoverySettings {
            upstreams: vec![U1.parse().unwrap()],
            queue_depth: 3,
            ..RecoverySettings::default()
        });
        let (t0, mut out) = (Instant::now(), Vec::new());
        for seq in 1..=10 {
            r.enqueue(t0, key(seq), [0; 32], None, &mut out);
        }
        let s = r.stats();
        assert_eq!((s.queued, s.dropped_queue_full, s.in_flight), (3, 7, 3));
    }

    #[test]
    fn garbage_and_unclaimed_frames_are_dropped() {
        let (mut r, t0, mut out) = (rec(&[U1]), Instant::now(), Vec::new());
        r.enqueue(t0, key(5), [0; 32], None, &mut out);
        let u1 = U1.parse().unwrap();
        assert_eq!(r.on_datagram(t0, u1, b"\x00garbage", &mut out), None);
        assert_eq!(r.on_datagram(t0, u1, &frame(key(6)), &mut out), None);
        let mut truncated = frame(key(5));
        truncated.truncate(60);
        assert_eq!(r.on_datagram(t0, u1, &truncated, &mut out), None);
        assert_eq!(r.stats().garbage, 3);
        assert_eq!(r.stats().in_flight, 1, "the job still waits for its frame");
    }

    #[test]
    fn a_late_frame_after_the_job_gave_up_is_still_taken() {
        let (mut r, t0, mut out) = (rec(&[U1]), Instant::now(), Vec::new());
        r.enqueue(t0, key(5), [0; 32], None, &mut out);
        r.handle_timeouts(t0 + Duration::from_millis(300), &mut out);
        assert_eq!(r.stats().failed, 1);
        let late = r.on_datagram(
            t0 + Duration::from_millis(310),
            U1.parse().unwrap(),
            &frame(key(5)),
            &mut out,
        );
        assert!(late.is_some());
    }

    #[test]
    fn disabled_without_upstreams() {
        let (mut r, mut out) = (rec(&[]), Vec::new());
        r.enqueue(Instant::now(), key(1), [0; 32], None, &mut out);
        assert!(out.is_empty());
        assert_eq!(r.stats().queued, 0);
    }

    #[test]
    fn shared_claims_wait_then_ask_or_stand_down() {
        let t0 = Instant::now();
        let mut r = Recovery::new(RecoverySettings {
            upstreams: vec![U1.parse().unwrap()],
            shared_claims: true,
            ..RecoverySettings::default()
        });
        let mut out = Vec::new();
        assert_eq!(r.enqueue(t0, key(1), [0; 32], None, &mut out), Enqueued::NeedsClaim);
        assert_eq!(r.enqueue(t0, key(2), [0; 32], None, &mut out), Enqueued::NeedsClaim);
        assert_eq!(r.enqueue(t0, key(3), [0; 32], None, &mut out), Enqueued::NeedsClaim);
        assert!(out.is_empty(), "nothing is sent before the claim");
        // A job waiting for its claim never times out upstream.
        r.handle_timeouts(t0 + Duration::from_secs(5), &mut out);
        assert!(out.is_empty());
        r.on_claim(t0, key(1), ClaimResult::Won, &mut out);
        r.on_claim(t0, key(2), ClaimResult::Lost, &mut out);
        r.on_claim(t0, key(3), ClaimResult::Unavailable, &mut out);
        assert_eq!(out.len(), 2, "won and unavailable ask upstream");
        let st = r.stats();
        assert_eq!((st.claimed_by_sibling, st.claims_unavailable, st.in_flight), (1, 1, 2));
        // The lost gap stays claimed here: asking again is deduplicated.
        assert_eq!(r.enqueue(t0, key(2), [0; 32], None, &mut out), Enqueued::Refused);
        // A late or repeated answer changes nothing.
        r.on_claim(t0, key(1), ClaimResult::Won, &mut out);
        assert_eq!(out.len(), 2);
    }

    const SIB: &str = "10.0.0.9:9300";

    #[test]
    fn a_fill_sibling_is_asked_first_then_the_upstreams() {
        let (mut r, t0, mut out) = (rec(&[U1, U2]), Instant::now(), Vec::new());
        let sib: SocketAddr = SIB.parse().unwrap();
        assert_eq!(r.enqueue(t0, key(5), [0; 32], Some(sib), &mut out), Enqueued::Asked);
        assert_eq!(targets(&out), [sib]);
        assert!(NackRepr::parse(out[0].payload.as_bytes()).unwrap().flags.proxied());
        assert!(r.is_waiting_on(sib) && !r.is_waiting_on(U1.parse().unwrap()));
        out.clear();
        // The sibling's MISS moves on to the first upstream at once.
        r.on_datagram(t0, sib, &miss(), &mut out);
        assert_eq!(targets(&out), [U1.parse().unwrap()]);
        out.clear();
        // Silence from U1: U2; silence again: failed after three attempts.
        r.handle_timeouts(t0 + Duration::from_millis(300), &mut out);
        assert_eq!(targets(&out), [U2.parse().unwrap()]);
        out.clear();
        r.handle_timeouts(t0 + Duration::from_millis(600), &mut out);
        assert!(out.is_empty());
        let s = r.stats();
        assert_eq!(
            (s.sibling_fill_nacks, s.sibling_fill_misses, s.upstream_nacks, s.failed),
            (1, 1, 2, 1)
        );
    }

    #[test]
    fn a_fill_sibling_that_answers_recovers_the_frame_without_upstream() {
        let (mut r, t0, mut out) = (rec(&[U1]), Instant::now(), Vec::new());
        let sib: SocketAddr = SIB.parse().unwrap();
        r.enqueue(t0, key(5), [0; 32], Some(sib), &mut out);
        out.clear();
        let got = r.on_datagram(t0 + Duration::from_millis(1), sib, &frame(key(5)), &mut out);
        assert_eq!(got.map(|g| g.key), Some(key(5)));
        r.handle_timeouts(t0 + Duration::from_secs(1), &mut out);
        assert!(out.is_empty(), "nothing goes upstream");
        let s = r.stats();
        assert_eq!((s.sibling_filled, s.recovered, s.upstream_nacks), (1, 1, 0));
    }

    #[test]
    fn with_no_upstream_a_fill_sibling_still_runs_a_job() {
        let (mut r, t0, mut out) = (rec(&[]), Instant::now(), Vec::new());
        let sib: SocketAddr = SIB.parse().unwrap();
        assert_eq!(r.enqueue(t0, key(1), [0; 32], None, &mut out), Enqueued::Off);
        assert_eq!(r.enqueue(t0, key(2), [0; 32], Some(sib), &mut out), Enqueued::Asked);
        assert_eq!(targets(&out), [sib]);
        out.clear();
        // A silent sibling: the job fails after its one attempt.
        r.handle_timeouts(t0 + Duration::from_millis(300), &mut out);
        assert!(out.is_empty());
        assert_eq!((r.stats().failed, r.stats().in_flight), (1, 0));
    }
}
