//! Sampled NACK spans, the control thread's half: turn a [`NackRecord`]
//! from a worker's sampler ([`crate::rt::nack_trace`], where the sampling
//! contract is) into the span the exporter sends. The span's start is the
//! time the worker read the NACK's batch, its end the time the worker had
//! answered it (effects settled), both as the worker saw them, mapped to
//! wall-clock time by one [`Clock`] reading.

use std::time::{Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::rt::nack_trace::NackRecord;
#[cfg(test)]
use crate::rt::nack_trace::Outcome;

/// The span name.
pub const SPAN_NAME: &str = "nack";

/// Maps the workers' monotonic clock to wall-clock time, from one reading
/// of both.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: Instant,
    wall: SystemTime,
}

impl Clock {
    /// Reads both clocks now.
    pub fn now() -> Clock {
        Clock { at: Instant::now(), wall: SystemTime::now() }
    }

    /// The wall-clock time of `t`.
    pub fn wall(&self, t: Instant) -> SystemTime {
        if t >= self.at { self.wall + (t - self.at) } else { self.wall - (self.at - t) }
    }
}

/// The span of one record.
pub fn span(r: &NackRecord, clock: &Clock, scope: &InstrumentationScope) -> SpanData {
    let context = SpanContext::new(
        TraceId::from(r.trace_id),
        SpanId::from(r.span_id),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    SpanData {
        span_context: context,
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Server,
        name: SPAN_NAME.into(),
        start_time: clock.wall(r.start),
        end_time: clock.wall(r.end.max(r.start)),
        attributes: vec![
            KeyValue::new("hash_key", format!("{:#018x}", r.hash_key)),
            KeyValue::new("start_seq", r.start_seq as i64),
            KeyValue::new("end_seq", r.end_seq as i64),
            KeyValue::new("outcome", r.outcome.name()),
            KeyValue::new("retransmit.multicast", r.multicast),
            KeyValue::new("retransmit.unicast", r.unicast),
            KeyValue::new("worker", i64::from(r.worker)),
        ],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_carry_the_record() {
        let t0 = Instant::now();
        let clock = Clock::now();
        let r = NackRecord {
            trace_id: 0x1234,
            span_id: 0x56,
            worker: 3,
            hash_key: 0xDEAD_BEEF,
            start_seq: 7,
            end_seq: 9,
            outcome: Outcome::Throttled,
            multicast: false,
            unicast: true,
            start: t0,
            end: t0 + std::time::Duration::from_micros(250),
        };
        let scope = InstrumentationScope::builder("ricochet").build();
        let s = span(&r, &clock, &scope);
        assert_eq!(s.name, "nack");
        assert_eq!(s.span_context.trace_id(), TraceId::from(0x1234u128));
        assert!(s.span_context.is_sampled());
        assert_eq!(
            s.end_time.duration_since(s.start_time).unwrap(),
            std::time::Duration::from_micros(250)
        );
        let attr = |k: &str| {
            s.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("hash_key").as_deref(), Some("0x00000000deadbeef"));
        assert_eq!(attr("start_seq").as_deref(), Some("7"));
        assert_eq!(attr("end_seq").as_deref(), Some("9"));
        assert_eq!(attr("outcome").as_deref(), Some("throttled"));
        assert_eq!(attr("retransmit.unicast").as_deref(), Some("true"));
        assert_eq!(attr("retransmit.multicast").as_deref(), Some("false"));
        assert_eq!(attr("worker").as_deref(), Some("3"));
    }
}
