//! Sampled NACK spans, the workers' half: decide, record, hand over. The
//! control thread's half, turning a record into the span the exporter
//! sends, is `crate::otlp::trace`; the records cross in a bounded queue
//! this module owns, so the runtime does not depend on the exporter.
//!
//! # Contract
//! - The sampling decision is the OpenTelemetry SDK's
//!   `ParentBased(TraceIdRatioBased(ratio))` for a root span (a NACK has no
//!   parent context): sampled when the low 64 bits of the trace id, shifted
//!   right once, are below `ratio × 2⁶³`. The worker draws the trace id
//!   itself from a per-worker splitmix64 stream, so an unsampled NACK costs
//!   one add, one mix and one compare: no clock read, no allocation, no
//!   lock. A unit test checks the decision against the SDK's sampler.
//! - A sampled NACK is answered exactly as any other; around it the worker
//!   reads the retry service's counters before and after (a copy of a
//!   `Copy` struct), and the difference says what the answer was
//!   ([`Outcome::between`]). The record ([`NackRecord`], `Copy`, no heap)
//!   goes into a bounded queue with `try_send`; a full queue drops it and
//!   counts the drop. Nothing here ever blocks a worker.
//! - The span's start is the time the worker read the NACK's batch, its end
//!   the time the worker had answered it (effects settled), both as the
//!   worker saw them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use ricochet_wire::control::Nack;

use crate::dht::rng::Rng;
use crate::retry::{Service, Stats};

/// Sampled NACKs waiting for the control thread, per endpoint (the SDK
/// batch span processor's default queue size).
pub const QUEUE: usize = 2048;

/// What a worker needs to trace NACKs; cloned into every worker.
#[derive(Debug, Clone)]
pub struct NackTracing {
    /// Sampled when `trace_id_low >> 1 < bound`.
    bound: u64,
    tx: Sender<NackRecord>,
    /// Records a full queue refused.
    dropped: Arc<AtomicU64>,
}

/// How the service answered a sampled NACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one frame was held and answered (retransmitted, or ACKed).
    Ack,
    /// The first frame asked for is not held: MISS (unless suppressed).
    Miss,
    /// Refused by a rate-limit tier and answered THROTTLED.
    Throttled,
    /// Refused by a rate-limit tier silently (the IP tier always; the
    /// others when `--rl-throttle-response` is off).
    RateLimited,
    /// Not held here; the answer waits for the shared store
    /// (`CACHE_BACKEND=redis`), after the span ended.
    Lookup,
}

impl Outcome {
    /// The `outcome` attribute value.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Miss => "miss",
            Outcome::Throttled => "throttled",
            Outcome::RateLimited => "rate_limited",
            Outcome::Lookup => "lookup",
        }
    }

    /// What answering one NACK did, from the service's counters before and
    /// after: `(outcome, multicast retransmitted, unicast retransmitted)`.
    /// A range NACK that had any frame served is `Ack` even if a later
    /// frame missed or hit the group tier.
    pub fn between(before: &Stats, after: &Stats) -> (Outcome, bool, bool) {
        let e = after.since(before);
        let (multicast, unicast) = (e.multicast > 0, e.unicast > 0);
        let limited = if e.throttled > 0 { Outcome::Throttled } else { Outcome::RateLimited };
        let [ip, sequence, chain, group] = e.limited;
        let served = multicast || unicast || e.deduplicated > 0;
        let outcome = if ip + sequence + chain > 0 || (!served && group > 0) {
            limited
        } else if e.hits > 0 {
            Outcome::Ack
        } else if e.misses > 0 {
            Outcome::Miss
        } else {
            Outcome::Lookup
        };
        (outcome, multicast, unicast)
    }
}

/// One sampled NACK, as its worker answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackRecord {
    /// Trace id (nonzero), drawn by the worker's sampler.
    pub trace_id: u128,
    /// Span id (nonzero).
    pub span_id: u64,
    /// The worker that answered it.
    pub worker: u16,
    /// The NACK's HashKey.
    pub hash_key: u64,
    /// Its StartSeq.
    pub start_seq: u64,
    /// Its EndSeq.
    pub end_seq: u64,
    /// How it was answered.
    pub outcome: Outcome,
    /// A frame went to its multicast group.
    pub multicast: bool,
    /// A frame went back to the requester by unicast.
    pub unicast: bool,
    /// When its batch was read.
    pub start: Instant,
    /// When it was answered.
    pub end: Instant,
}

impl NackTracing {
    /// Tracing at `ratio` (0..=1): the workers' handle, the control
    /// thread's queue end, and the drop counter they share.
    pub fn new(ratio: f64) -> (NackTracing, Receiver<NackRecord>, Arc<AtomicU64>) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        (NackTracing { bound: ratio_bound(ratio), tx, dropped: dropped.clone() }, rx, dropped)
    }

    /// The sampler of worker `index`, on a trace-id stream of its own.
    pub fn sampler(&self, index: usize) -> NackSampler {
        use std::hash::BuildHasher as _;
        let seed = std::collections::hash_map::RandomState::new().hash_one(index);
        NackSampler { tracing: self.clone(), ids: Rng::seed_from_u64(seed), worker: index as u16 }
    }
}

/// The sampled-from-`ratio` bound on `trace_id_low >> 1`, as the SDK's
/// `TraceIdRatioBased` computes it (a ratio of 1 or more samples all).
fn ratio_bound(ratio: f64) -> u64 {
    if ratio >= 1.0 { u64::MAX } else { (ratio.max(0.0) * (1u64 << 63) as f64) as u64 }
}

/// One worker's sampler.
#[derive(Debug)]
pub struct NackSampler {
    tracing: NackTracing,
    /// The worker's trace and span id stream.
    ids: Rng,
    worker: u16,
}

/// A sampled NACK being answered.
#[derive(Debug, Clone, Copy)]
pub struct Begun {
    trace_id: u128,
    span_id: u64,
    start: Instant,
    before: Stats,
}

impl NackSampler {
    /// Decides whether the NACK about to be answered (read at `now`) is
    /// traced; if so, notes the service's counters.
    #[inline]
    pub fn begin(&mut self, now: Instant, service: &Service) -> Option<Begun> {
        let low = self.next();
        if low >> 1 >= self.tracing.bound {
            return None;
        }
        let trace_id = (u128::from(self.next()) << 64 | u128::from(low)).max(1);
        let span_id = self.next().max(1);
        Some(Begun { trace_id, span_id, start: now, before: service.stats() })
    }

    /// Finishes a traced NACK (`datagram`, answered at `end`) and hands its
    /// record to the control thread; a malformed NACK has no span.
    pub fn end(&self, b: Begun, end: Instant, datagram: &[u8], service: &Service) {
        let Ok(nack) = Nack::new_checked(datagram) else { return };
        let (outcome, multicast, unicast) = Outcome::between(&b.before, &service.stats());
        let record = NackRecord {
            trace_id: b.trace_id,
            span_id: b.span_id,
            worker: self.worker,
            hash_key: nack.hash_key(),
            start_seq: nack.start_seq(),
            end_seq: nack.end_seq(),
            outcome,
            multicast,
            unicast,
            start: b.start,
            end,
        };
        if let Err(TrySendError::Full(_)) = self.tracing.tx.try_send(record) {
            self.tracing.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next value of this worker's id stream.
    fn next(&mut self) -> u64 {
        self.ids.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanKind, TraceId};
    use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};

    /// The worker's decision is the SDK's ParentBased(TraceIdRatioBased)
    /// for a root span, id for id.
    #[test]
    fn sampling_matches_the_sdk_sampler() {
        for ratio in [0.0, 1e-6, 0.01, 0.25, 0.5, 0.999, 1.0] {
            let (tracing, _rx, _) = NackTracing::new(ratio);
            let sdk = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
            let mut s = tracing.sampler(0);
            let mut sampled = 0;
            for _ in 0..20_000 {
                let low = s.next();
                let ours = low >> 1 < s.tracing.bound;
                let id = TraceId::from(u128::from(s.next()) << 64 | u128::from(low));
                let theirs =
                    sdk.should_sample(None, id, "nack", &SpanKind::Server, &[], &[]).decision
                        == SamplingDecision::RecordAndSample;
                assert_eq!(ours, theirs, "ratio {ratio}, id {id}");
                sampled += usize::from(ours);
            }
            let expect = ratio * 20_000.0;
            assert!((sampled as f64 - expect).abs() <= 5.0 * expect.sqrt() + 1.0, "{ratio}");
        }
    }

    #[test]
    fn a_zero_ratio_samples_nothing_and_one_samples_all() {
        let svc = Service::new(crate::retry::Settings::default(), Instant::now());
        let (none, _rx, _) = NackTracing::new(0.0);
        let mut s = none.sampler(1);
        assert!((0..10_000).all(|_| s.begin(Instant::now(), &svc).is_none()));
        let (all, _rx, _) = NackTracing::new(1.0);
        let mut s = all.sampler(1);
        let ids: std::collections::HashSet<_> =
            (0..1000).map(|_| s.begin(Instant::now(), &svc).unwrap().trace_id).collect();
        assert_eq!(ids.len(), 1000, "every trace id differs");
    }

    fn stats(f: impl FnOnce(&mut Stats)) -> Stats {
        let mut s = Stats::default();
        f(&mut s);
        s
    }

    #[test]
    fn outcomes_follow_the_counters() {
        let zero = Stats::default();
        let cases: [(Stats, (Outcome, bool, bool)); 9] = [
            (
                stats(|s| {
                    s.cache_hits = 1;
                    s.retransmits_multicast = 1;
                    s.acks_sent = 1;
                }),
                (Outcome::Ack, true, false),
            ),
            (
                stats(|s| {
                    s.cache_hits = 1;
                    s.retransmits_multicast = 1;
                    s.retransmits_unicast = 1;
                }),
                (Outcome::Ack, true, true),
            ),
            (
                stats(|s| {
                    s.cache_misses = 1;
                    s.misses_sent = 1;
                }),
                (Outcome::Miss, false, false),
            ),
            (stats(|s| s.rate_limited_ip = 1), (Outcome::RateLimited, false, false)),
            (
                stats(|s| {
                    s.rate_limited_sequence = 1;
                    s.throttled_sent = 1;
                }),
                (Outcome::Throttled, false, false),
            ),
            (
                // Group tier without THROTTLED: ACK with flags 0, nothing sent.
                stats(|s| {
                    s.cache_hits = 1;
                    s.rate_limited_group = 1;
                    s.acks_sent = 1;
                }),
                (Outcome::RateLimited, false, false),
            ),
            (
                // A range: two frames served, the third refused by the group tier.
                stats(|s| {
                    s.cache_hits = 3;
                    s.retransmits_multicast = 2;
                    s.rate_limited_group = 1;
                }),
                (Outcome::Ack, true, false),
            ),
            (
                // Multicast left to a sibling that sent it within the window.
                stats(|s| {
                    s.cache_hits = 1;
                    s.retransmits_deduplicated = 1;
                    s.acks_sent = 1;
                }),
                (Outcome::Ack, false, false),
            ),
            (Stats::default(), (Outcome::Lookup, false, false)),
        ];
        for (after, want) in cases {
            assert_eq!(Outcome::between(&zero, &after), want, "{after:?}");
        }
        // Only the difference counts.
        let before = stats(|s| s.rate_limited_ip = 7);
        let after = stats(|s| {
            s.rate_limited_ip = 7;
            s.cache_misses = 1;
        });
        assert_eq!(Outcome::between(&before, &after).0, Outcome::Miss);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tracing, rx, dropped) = NackTracing::new(1.0);
        let svc = Service::new(crate::retry::Settings::default(), Instant::now());
        let mut nack = [0u8; 64];
        ricochet_wire::control::NackRepr {
            flags: ricochet_wire::control::NackFlags(0),
            hash_key: 0xAB,
            start_seq: 3,
            end_seq: 4,
            subtree_id: [0; 32],
        }
        .emit(&mut nack)
        .unwrap();
        let mut s = tracing.sampler(2);
        for _ in 0..QUEUE + 5 {
            let b = s.begin(Instant::now(), &svc).unwrap();
            s.end(b, Instant::now(), &nack, &svc);
        }
        assert_eq!(rx.len(), QUEUE);
        assert_eq!(dropped.load(Ordering::Relaxed), 5);
        let r = rx.recv().unwrap();
        assert_eq!((r.worker, r.hash_key, r.start_seq, r.end_seq), (2, 0xAB, 3, 4));
        // A malformed datagram has no span.
        let b = s.begin(Instant::now(), &svc).unwrap();
        s.end(b, Instant::now(), b"short", &svc);
        assert_eq!(rx.len(), QUEUE - 1);
    }
}
