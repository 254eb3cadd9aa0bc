//! The downstream side of invalidation push (issue 5, scope 3; seed 003):
//! this endpoint subscribes to every `--upstream-events` endpoint's
//! `/events` stream and drops the flows they invalidate.
//!
//! # Contract
//! - Registration *is* the subscription: one task per upstream on the
//!   control thread holds `GET /events` open with the bearer token from
//!   `--upstream-events-token-file`. It registers at start and, after any
//!   disconnect or refusal, again after a backoff of 250 ms doubling to
//!   10 s (jittered; back to 250 ms after a registration that lasted
//!   [`HEALTHY_AFTER`]).
//! - What is applied: an SSE event of type `invalidate` whose data is a
//!   JSON object with a non-zero `hash_key` (`"0x…"` hex, decimal string or
//!   number) and `reason` `"admin"` (`POST /admin/invalidate` upstream) or
//!   `"epoch_reset"` (the upstream saw the flow's proxy restart). Both mean
//!   "drop every cached frame of the flow": [`Control::invalidate`] on the
//!   owning core. Events of another type or with another reason are
//!   counted as ignored; malformed ones as `bad_event` errors.
//! - Cascade: every event applied is re-sent on this endpoint's own
//!   `/events` with `hops` one higher, so a chain of domains stays
//!   coherent. An event that has already crossed [`MAX_HOPS`] endpoints is
//!   dropped and counted (`loop`): it only gets that far around a cycle of
//!   subscriptions.
//! - Liveness: the upstream sends a comment every
//!   [`EVENTS_KEEP_ALIVE`](super::EVENTS_KEEP_ALIVE); three intervals of
//!   silence count as a disconnect.
//! - Bounds: a hostile upstream cannot make this allocate without bound —
//!   the response head (hyper's read buffer, 8 KiB), chunk-size lines and
//!   trailers (hyper's own limits), SSE lines and one event's data each
//!   have a fixed cap, and exceeding one ends the connection.
//!
//! hyper's HTTP/1.1 client (`client.rs`) reads the response; the event
//! stream in its body is decoded by the sans-IO [`Decoder`]: bytes in,
//! [`Item`]s out, the same items however the bytes are split.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::sse::Event;
use tokio::net::TcpStream;

pub use super::sse::{
    DecodeError, Decoder, Item, MAX_CHUNK_LINE, MAX_EVENT, MAX_HEAD, MAX_LINE, MAX_REJECTION,
    SseEvent,
};
use super::{AdminState, client};
use crate::config::{Host, HostPort};
use crate::metrics::{escape, family};
use crate::rt::Control;

/// An invalidation that has crossed this many endpoints is not applied or
/// forwarded again: it is going round a cycle of subscriptions.
pub const MAX_HOPS: u64 = 8;
/// First wait before re-registering, and the wait after a healthy
/// registration.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest wait between registration attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A registration that lasted this long was healthy: the next attempt
/// after it waits [`BACKOFF_MIN`] again. Shorter ones keep doubling the
/// backoff, so an upstream that accepts and then fails at once is not
/// hammered.
pub const HEALTHY_AFTER: Duration = BACKOFF_MAX;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `Control::invalidate` refuses while the owner's inbox is full: retry this
/// often, this many times.
const APPLY_RETRY: Duration = Duration::from_millis(10);
const APPLY_ATTEMPTS: u32 = 50;

/// Every upstream this endpoint subscribes to, with its counters; the
/// `upstream-events` admin section.
#[derive(Debug)]
pub struct UpstreamEvents {
    upstreams: Vec<Arc<Upstream>>,
    token: Secret,
    keep_alive: Duration,
}

/// The bearer token, kept out of `Debug` output.
#[derive(Clone)]
struct Secret(Arc<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<token>")
    }
}

impl UpstreamEvents {
    /// Subscriptions to `upstreams` (admin `host:port`s) with `token`,
    /// expecting a keep-alive every `keep_alive`.
    pub fn new(upstreams: &[HostPort], token: Arc<str>, keep_alive: Duration) -> Arc<Self> {
        Arc::new(UpstreamEvents {
            upstreams: upstreams
                .iter()
                .map(|hp| {
                    Arc::new(Upstream {
                        addr: hp.clone(),
                        label: hp.to_string(),
                        stats: Stats::default(),
                        status: Mutex::new(Status::new()),
                    })
                })
                .collect(),
            token: Secret(token),
            keep_alive,
        })
    }

    /// Starts one subscription task per upstream on the current runtime;
    /// they apply invalidations through `state.control` and re-send them on
    /// `state.events`, and run until the process exits.
    pub fn spawn(&self, state: &AdminState) {
        let labels: Vec<&str> = self.upstreams.iter().map(|u| u.label.as_str()).collect();
        tracing::info!(upstreams = ?labels, "subscribing to upstream invalidations");
        for up in &self.upstreams {
            let ctx = Ctx {
                control: state.control.clone(),
                events: state.events.clone(),
                token: self.token.clone(),
                silence: self.keep_alive * 3,
            };
            tokio::spawn(run(up.clone(), ctx));
        }
    }
}

impl crate::metrics::Section for UpstreamEvents {
    fn name(&self) -> &'static str {
        "upstream-events"
    }

    fn metrics(&self, out: &mut String) {
        let each = |out: &mut String, name: &str, f: &dyn Fn(&Stats) -> u64| {
            for up in &self.upstreams {
                let _ =
                    writeln!(out, "{name}{{upstream=\"{}\"}} {}", escape(&up.label), f(&up.stats));
            }
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let name = "ricochet_upstream_events_connected";
        family(out, name, "gauge", "1 while registered with the upstream's /events.");
        each(out, name, &|s| u64::from(s.connected.load(Ordering::Relaxed)));
        for (name, help, field) in [
            (
                "ricochet_upstream_events_connects_total",
                "Registrations with the upstream's /events that succeeded.",
                (|s| &s.connects) as fn(&Stats) -> &AtomicU64,
            ),
            (
                "ricochet_upstream_events_disconnects_total",
                "Registered /events streams that ended.",
                |s| &s.disconnects,
            ),
            (
                "ricochet_upstream_events_invalidations_applied_total",
                "Invalidations from the upstream applied here (and re-sent on this /events).",
                |s| &s.applied,
            ),
            (
                "ricochet_upstream_events_ignored_total",
                "Well-formed upstream events that are not invalidations this endpoint applies.",
                |s| &s.ignored,
            ),
        ] {
            family(out, name, "counter", help);
            each(out, name, &|s| get(field(s)));
        }
        let name = "ricochet_upstream_events_errors_total";
        family(out, name, "counter", "Subscription failures and bad upstream events, by reason.");
        for up in &self.upstreams {
            for kind in ErrorKind::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",reason=\"{}\"}} {}",
                    escape(&up.label),
                    kind.as_str(),
                    get(&up.stats.errors[kind as usize])
                );
            }
        }
    }

    fn debug(&self) -> serde_json::Value {
        let now = Instant::now();
        let upstreams: Vec<_> = self
            .upstreams
            .iter()
            .map(|up| {
                let s = &up.stats;
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let errors: serde_json::Map<_, _> = ErrorKind::ALL
                    .iter()
                    .map(|&k| (k.as_str().to_string(), get(&s.errors[k as usize]).into()))
                    .collect();
                let status =
                    up.status.lock().map(|g| g.clone()).unwrap_or_else(|p| p.into_inner().clone());
                serde_json::json!({
                    "upstream": up.label,
                    "state": status.state,
                    "state_seconds": now.saturating_duration_since(status.since).as_secs_f64(),
                    "connected": s.connected.load(Ordering::Relaxed),
                    "connects": get(&s.connects),
                    "disconnects": get(&s.disconnects),
                    "invalidations_applied": get(&s.applied),
                    "events_ignored": get(&s.ignored),
                    "errors": errors,
                    "backoff_ms": status.backoff.as_millis() as u64,
                    "last_error": status.last_error.map(|e| serde_json::json!({
                        "reason": e.kind.as_str(),
                        "detail": e.detail,
                        "seconds_ago": now.saturating_duration_since(e.at).as_secs_f64(),
                    })),
                })
            })
            .collect();
        serde_json::json!({
            "keep_alive_seconds": self.keep_alive.as_secs_f64(),
            "silence_timeout_seconds": (self.keep_alive * 3).as_secs_f64(),
            "upstreams": upstreams,
        })
    }
}

/// Why a subscription failed or an upstream event was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The upstream could not be resolved or reached.
    Connect,
    /// 401: the token is not the upstream's.
    Unauthorized,
    /// 403: the upstream has no `--admin-token-file`.
    Forbidden,
    /// 503: the upstream is at `--max-downstreams`.
    Refused,
    /// Another status, or a 200 that is not an event stream.
    HttpStatus,
    /// Malformed HTTP framing or SSE.
    BadResponse,
    /// A head, line or event over its cap.
    TooLarge,
    /// No bytes for three keep-alive intervals.
    Silence,
    /// The upstream ended the stream.
    Closed,
    /// A socket error mid-stream.
    Io,
    /// An `invalidate` event whose data is not a valid invalidation.
    BadEvent,
    /// The owning core's inbox stayed full; the flow was not dropped here.
    ApplyBusy,
    /// An event that went round a cycle of subscriptions.
    Loop,
}

impl ErrorKind {
    /// Every kind, in metric order.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::Connect,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::Refused,
        ErrorKind::HttpStatus,
        ErrorKind::BadResponse,
        ErrorKind::TooLarge,
        ErrorKind::Silence,
        ErrorKind::Closed,
        ErrorKind::Io,
        ErrorKind::BadEvent,
        ErrorKind::ApplyBusy,
        ErrorKind::Loop,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Refused => "refused",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Silence => "silence",
            ErrorKind::Closed => "closed",
            ErrorKind::Io => "io",
            ErrorKind::BadEvent => "bad_event",
            ErrorKind::ApplyBusy => "apply_busy",
            ErrorKind::Loop => "loop",
        }
    }
}

impl ErrorKind {
    /// The reason a decoding error counts under.
    pub fn of_decode(e: DecodeError) -> ErrorKind {
        match e {
            DecodeError::HeadTooLong
            | DecodeError::ChunkLineTooLong
            | DecodeError::LineTooLong
            | DecodeError::EventTooLarge => ErrorKind::TooLarge,
            _ => ErrorKind::BadResponse,
        }
    }
}

/// Why a flow is invalidated upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `POST /admin/invalidate`.
    Admin,
    /// The flow's proxy restarted and reused its HashKey.
    EpochReset,
}

impl Reason {
    /// As sent in the event's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Admin => "admin",
            Reason::EpochReset => "epoch_reset",
        }
    }
}

/// An upstream invalidation to apply here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The flow to drop.
    pub hash_key: u64,
    /// Why it was invalidated.
    pub reason: Reason,
    /// The instance that invalidated it first.
    pub origin: String,
    /// Endpoints it crossed before the one that sent it here (0 from the
    /// originating endpoint).
    pub hops: u64,
}

impl Invalidation {
    /// The event this endpoint re-sends on its own `/events`.
    pub fn forwarded(&self) -> Event {
        super::invalidate_event(&serde_json::json!({
            "hash_key": format!("{:#018x}", self.hash_key),
            "instance": self.origin,
            "reason": self.reason.as_str(),
            "hops": self.hops + 1,
        }))
    }
}

/// What to do with one upstream event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Drop the flow here and re-send.
    Apply(Invalidation),
    /// Not something this endpoint applies (another event type or reason).
    Ignore,
    /// An `invalidate` event that cannot be understood.
    Malformed,
    /// Crossed [`MAX_HOPS`] endpoints already.
    Loop,
}

/// Decides what an upstream event means here (see the module docs).
pub fn verdict(ev: &SseEvent) -> Verdict {
    if ev.kind != "invalidate" {
        return Verdict::Ignore;
    }
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(&ev.data)
    else {
        return Verdict::Malformed;
    };
    let hash_key = match m.get("hash_key") {
        Some(serde_json::Value::String(s)) => {
            let s = s.trim();
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        }
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    let Some(hash_key) = hash_key.filter(|&k| k != 0) else { return Verdict::Malformed };
    let reason = match m.get("reason").and_then(|r| r.as_str()) {
        Some("admin") => Reason::Admin,
        Some("epoch_reset") => Reason::EpochReset,
        Some(_) => return Verdict::Ignore,
        None => return Verdict::Malformed,
    };
    let hops = match m.get("hops") {
        None => 0,
        Some(h) => match h.as_u64() {
            Some(h) => h,
            None => return Verdict::Malformed,
        },
    };
    if hops >= MAX_HOPS {
        return Verdict::Loop;
    }
    let origin: String =
        m.get("instance").and_then(|i| i.as_str()).unwrap_or("").chars().take(256).collect();
    Verdict::Apply(Invalidation { hash_key, reason, origin, hops })
}

#[derive(Debug)]
struct Upstream {
    addr: HostPort,
    label: String,
    stats: Stats,
    status: Mutex<Status>,
}

#[derive(Debug, Default)]
struct Stats {
    connected: AtomicBool,
    connects: AtomicU64,
    disconnects: AtomicU64,
    applied: AtomicU64,
    ignored: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
}

#[derive(Debug, Clone)]
struct Status {
    state: &'static str,
    since: Instant,
    backoff: Duration,
    last_error: Option<LastError>,
}

#[derive(Debug, Clone)]
struct LastError {
    kind: ErrorKind,
    detail: String,
    at: Instant,
}

impl Status {
    fn new() -> Self {
        Status {
            state: "connecting",
            since: Instant::now(),
            backoff: BACKOFF_MIN,
            last_error: None,
        }
    }
}

impl Upstream {
    fn set_state(&self, state: &'static str, backoff: Duration) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.state = state;
        s.since = Instant::now();
        s.backoff = backoff;
    }

    /// Counts an error and keeps it for the debug page; returns whether it
    /// differs from the last one (so repeats log quietly).
    fn error(&self, kind: ErrorKind, detail: &str) -> bool {
        self.stats.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let new = s.last_error.as_ref().is_none_or(|e| e.kind != kind || e.detail != detail);
        s.last_error = Some(LastError { kind, detail: detail.to_string(), at: Instant::now() });
        new
    }
}

#[derive(Debug)]
struct Ctx {
    control: Control,
    events: tokio::sync::broadcast::Sender<Event>,
    token: Secret,
    silence: Duration,
}

/// How a session ended.
#[derive(Debug)]
struct End {
    /// When it registered, if it did.
    registered: Option<Instant>,
    kind: ErrorKind,
    detail: String,
}

/// Registers with one upstream for ever: a session, then a backoff, again.
async fn run(up: Arc<Upstream>, ctx: Ctx) {
    let mut backoff = BACKOFF_MIN;
    loop {
        up.set_state("connecting", backoff);
        let end = session(&up, &ctx).await;
        let mut healthy = false;
        if let Some(at) = end.registered {
            up.stats.connected.store(false, Ordering::Relaxed);
            up.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            healthy = at.elapsed() >= HEALTHY_AFTER;
        }
        if healthy {
            backoff = BACKOFF_MIN;
        }
        let new = up.error(end.kind, &end.detail);
        let msg = advice(end.kind, &up.label, &end.detail);
        if healthy || new {
            tracing::warn!(upstream = %up.label, reason = end.kind.as_str(), retry_in = ?backoff, "{msg}");
        } else {
            tracing::debug!(upstream = %up.label, reason = end.kind.as_str(), retry_in = ?backoff, "{msg}");
        }
        up.set_state("backoff", backoff);
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The log line for a failure: what happened and, where the operator can
/// act, the fix.
fn advice(kind: ErrorKind, upstream: &str, detail: &str) -> String {
    match kind {
        ErrorKind::Unauthorized => format!(
            "upstream {upstream} refused the token ({detail}): --upstream-events-token-file \
             must hold the token of that endpoint's --admin-token-file"
        ),
        ErrorKind::Forbidden => format!(
            "upstream {upstream} has /events off ({detail}): start it with --admin-token-file"
        ),
        ErrorKind::Refused => format!(
            "upstream {upstream} refused the registration ({detail}): it serves at most \
             --max-downstreams subscribers; raise it there or subscribe fewer endpoints to it"
        ),
        ErrorKind::HttpStatus => format!(
            "upstream {upstream} did not answer GET /events with an event stream ({detail}): \
             --upstream-events must list upstream endpoints' admin addresses (their --metrics-addr)"
        ),
        ErrorKind::Connect => format!(
            "cannot reach upstream {upstream} ({detail}): is it running, and is its \
             --metrics-addr reachable from here?"
        ),
        _ => format!("/events stream from upstream {upstream} ended: {detail}"),
    }
}

/// Half to all of `d`, so downstreams refused together spread out.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let half = d / 2;
    half + half.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// One connection: register, then apply events until it ends.
///
/// hyper reads the HTTP/1.1 response; its status, `Content-Type` and
/// de-chunked body go through the [`Decoder`] (opened with a head restating
/// the status and type), which parses the event stream of a 200 and keeps
/// the start of a refusal's body for the log.
async fn session(up: &Upstream, ctx: &Ctx) -> End {
    use http_body_util::BodyExt as _;
    use hyper::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, USER_AGENT};
    let end = |registered, kind, detail: String| End { registered, kind, detail };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&up.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return end(None, ErrorKind::Connect, e.to_string()),
        Err(_) => {
            return end(None, ErrorKind::Connect, format!("no answer in {CONNECT_TIMEOUT:?}"));
        }
    };
    let host = match up.addr.host {
        Host::Any => format!("localhost:{}", up.addr.port),
        _ => up.label.clone(),
    };
    let user_agent = concat!("ricochet/", env!("CARGO_PKG_VERSION"));
    let request = client::Get {
        host: &host,
        path: "/events",
        token: Some(&ctx.token.0),
        headers: &[
            (ACCEPT, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
            (USER_AGENT, user_agent),
        ],
    };
    let mut decoder = Decoder::new();
    let (resp, _conn) = match tokio::time::timeout(ctx.silence, client::get(stream, &request)).await
    {
        Err(_) => return silence(None, ctx),
        Ok(Err(client::Error::Http(e))) if e.is_incomplete_message() => {
            return closed(None, &decoder);
        }
        Ok(Err(e)) => return end(None, client_error_kind(&e), format!("no response: {e}")),
        Ok(Ok(r)) => r,
    };
    let mut head = format!("HTTP/1.1 {}\r\n", resp.status().as_u16()).into_bytes();
    if let Some(ct) = resp.headers().get(CONTENT_TYPE) {
        head.extend_from_slice(b"content-type: ");
        head.extend_from_slice(ct.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let mut body = resp.into_body();
    let mut items = Vec::new();
    let mut registered = None;
    let mut bytes = bytes::Bytes::from(head);
    loop {
        let result = decoder.feed(&bytes, &mut items);
        for item in items.drain(..) {
            match item {
                Item::Head { status: 200, event_stream: true } => {
                    registered = Some(Instant::now());
                    up.stats.connects.fetch_add(1, Ordering::Relaxed);
                    up.stats.connected.store(true, Ordering::Relaxed);
                    up.set_state("registered", BACKOFF_MIN);
                    tracing::info!(upstream = %up.label, "registered for invalidations");
                }
                Item::Head { status: 200, event_stream: false } => {
                    let detail = "200 without Content-Type: text/event-stream".to_string();
                    return end(None, ErrorKind::HttpStatus, detail);
                }
                Item::Head { .. } => {}
                Item::Event(ev) if registered.is_some() => apply(up, ctx, &ev).await,
                Item::Event(_) => {}
                Item::End => return closed(registered, &decoder),
            }
        }
        if let Err(e) = result {
            return end(registered, ErrorKind::of_decode(e), format!("malformed response: {e:?}"));
        }
        if registered.is_none() && decoder.rejection_full() {
            return closed(registered, &decoder);
        }
        bytes = match tokio::time::timeout(ctx.silence, body.frame()).await {
            Err(_) => return silence(registered, ctx),
            Ok(None) => return closed(registered, &decoder),
            Ok(Some(Err(e))) if e.is_incomplete_message() => {
                return closed(registered, &decoder);
            }
            Ok(Some(Err(e))) => return end(registered, hyper_error_kind(&e), e.to_string()),
            // Trailers carry nothing for this stream.
            Ok(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        };
    }
}

/// Three keep-alive intervals without a byte.
fn silence(registered: Option<Instant>, ctx: &Ctx) -> End {
    let detail = format!("no data for {:?} (three keep-alive intervals)", ctx.silence);
    End { registered, kind: ErrorKind::Silence, detail }
}

/// The error-metric reason of a request that got no response head.
fn client_error_kind(e: &client::Error) -> ErrorKind {
    match e {
        // The token file holds a byte a header cannot carry.
        client::Error::Request(_) => ErrorKind::Unauthorized,
        client::Error::Http(e) => hyper_error_kind(e),
    }
}

/// The error-metric reason of a failed exchange.
fn hyper_error_kind(e: &hyper::Error) -> ErrorKind {
    if e.is_parse_too_large() {
        ErrorKind::TooLarge
    } else if e.is_parse() || e.is_parse_status() {
        ErrorKind::BadResponse
    } else {
        ErrorKind::Io
    }
}

/// The end of a response: a refusal if it never registered.
fn closed(registered: Option<Instant>, decoder: &Decoder) -> End {
    let (kind, detail) = match (registered.is_some(), decoder.status()) {
        (true, _) => (ErrorKind::Closed, "the upstream closed the stream".to_string()),
        (false, None) => (ErrorKind::BadResponse, "closed before a response".to_string()),
        (false, Some(status)) => {
            let kind = match status {
                401 => ErrorKind::Unauthorized,
                403 => ErrorKind::Forbidden,
                503 => ErrorKind::Refused,
                _ => ErrorKind::HttpStatus,
            };
            (kind, format!("HTTP {status}: {:?}", decoder.rejection()))
        }
    };
    End { registered, kind, detail }
}

/// Applies one upstream event here and re-sends it downstream.
async fn apply(up: &Upstream, ctx: &Ctx, ev: &SseEvent) {
    let inv = match verdict(ev) {
        Verdict::Apply(inv) => inv,
        Verdict::Ignore => {
            up.stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(upstream = %up.label, kind = %ev.kind, "upstream event ignored");
            return;
        }
        // Logged when they start; a run of the same is only counted.
        Verdict::Malformed => {
            if up.error(ErrorKind::BadEvent, "an invalidate event without a valid hash_key/reason")
            {
                let data = excerpt(&ev.data);
                tracing::warn!(upstream = %up.label, data, "malformed invalidate event");
            }
            return;
        }
        Verdict::Loop => {
            if up.error(ErrorKind::Loop, "an invalidation crossed too many endpoints") {
                tracing::warn!(
                    upstream = %up.label, data = excerpt(&ev.data),
                    "invalidation crossed {MAX_HOPS} endpoints: the --upstream-events subscriptions form a cycle"
                );
            }
            return;
        }
    };
    let mut applied = None;
    for _ in 0..APPLY_ATTEMPTS {
        applied = ctx.control.invalidate(inv.hash_key);
        if applied.is_some() {
            break;
        }
        tokio::time::sleep(APPLY_RETRY).await;
    }
    match applied {
        Some(worker) => {
            up.stats.applied.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                upstream = %up.label, hash_key = format_args!("{:#018x}", inv.hash_key),
                reason = inv.reason.as_str(), worker, "upstream invalidation applied"
            );
        }
        None => {
            up.error(ErrorKind::ApplyBusy, "the owning core's inbox stayed full");
            tracing::warn!(
                upstream = %up.label, hash_key = format_args!("{:#018x}", inv.hash_key),
                "upstream invalidation not applied: the owning core stayed busy"
            );
        }
    }
    // Downstream caches drop the flow even if this one could not.
    let _ = ctx.events.send(inv.forwarded());
}

async fn connect(hp: &HostPort) -> std::io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = match &hp.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, hp.port)],
        Host::Any => vec![
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), hp.port),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), hp.port),
        ],
        Host::Name(n) => tokio::net::lookup_host((n.as_str(), hp.port)).await?.collect(),
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "resolves to no address");
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The start of an upstream's text, for a log line.
fn excerpt(s: &str) -> &str {
    s.char_indices().nth(200).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                          cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

    fn chunked(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = HEAD.to_vec();
        for p in parts {
            out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn decode(bytes: &[u8]) -> (Vec<Item>, Result<(), DecodeError>) {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let r = d.feed(bytes, &mut out);
        (out, r)
    }

    /// Feeds `bytes` cut at `cuts` (positions, any order, may exceed the
    /// length), stopping at the first error.
    fn decode_split(bytes: &[u8], cuts: &[usize]) -> (Vec<Item>, Result<(), DecodeError>) {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let mut from = 0;
        for to in cuts.into_iter().chain([bytes.len()]) {
            if let Err(e) = d.feed(&bytes[from..to], &mut out) {
                return (out, Err(e));
            }
            from = to;
        }
        (out, Ok(()))
    }

    /// What `/events` sends for `ev`.
    fn on_the_wire(ev: Event) -> Vec<u8> {
        use axum::response::IntoResponse as _;
        use futures_util::FutureExt as _;
        use http_body_util::BodyExt as _;
        let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(ev)]);
        let body = axum::response::sse::Sse::new(stream).into_response().into_body();
        body.collect().now_or_never().unwrap().unwrap().to_bytes().to_vec()
    }

    fn event(kind: &str, data: &str) -> Item {
        Item::Event(SseEvent { kind: kind.into(), data: data.into() })
    }

    #[test]
    fn what_the_upstream_sends_decodes_to_its_events() {
        // As axum writes /events: the hello comment, an invalidation, a
        // keep-alive, an epoch reset split over two chunks.
        let bytes = chunked(&[
            b": ricochet edge-1 events\n\n",
            b"event: invalidate\ndata: {\"hash_key\":\"0x00000000000000a1\",\"instance\":\"edge-1\",\"reason\":\"admin\"}\n\n",
            b":\n\n",
            b"event: invalidate\ndata: {\"hash_key\":\"0x00000000000000b2\",",
            b"\"instance\":\"edge-1\",\"reason\":\"epoch_reset\"}\n\n",
        ]);
        let (items, r) = decode(&bytes);
        assert_eq!(r, Ok(()));
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(items[0], Item::Head { status: 200, event_stream: true });
        let Item::Event(a) = &items[1] else { panic!("{items:?}") };
        let Item::Event(b) = &items[2] else { panic!("{items:?}") };
        assert_eq!(
            verdict(a),
            Verdict::Apply(Invalidation {
                hash_key: 0xa1,
                reason: Reason::Admin,
                origin: "edge-1".into(),
                hops: 0
            })
        );
        assert!(matches!(
            verdict(b),
            Verdict::Apply(Invalidation { hash_key: 0xb2, reason: Reason::EpochReset, .. })
        ));
    }

    #[test]
    fn sse_line_endings_multiline_data_and_fields() {
        let body: &[u8] = b"data: one\r\ndata:two\rdata\n\nevent: x\nid: 7\nretry: 10\ndata: y\n\nevent: nodata\n\n";
        let (items, r) = decode(&chunked(&[body]));
        assert_eq!(r, Ok(()));
        assert_eq!(items[1..], [event("message", "one\ntwo\n"), event("x", "y")]);
    }

    #[test]
    fn last_chunk_and_trailers_end_the_body() {
        let mut bytes = chunked(&[b"data: a\n\n"]);
        bytes.extend_from_slice(b"0;ext=1\r\nx-trailer: 1\r\n\r\n");
        let (items, r) = decode(&bytes);
        assert_eq!(r, Ok(()));
        assert_eq!(items[1..], [event("message", "a"), Item::End]);
    }

    #[test]
    fn a_refusal_keeps_its_status_and_body() {
        let bytes = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
                      content-length: 28\r\n\r\ntoo many /events subscribers\n";
        let mut d = Decoder::new();
        let mut items = Vec::new();
        d.feed(bytes, &mut items).unwrap();
        assert_eq!(items, [Item::Head { status: 503, event_stream: false }, Item::End]);
        assert_eq!(d.rejection(), "too many /events subscribers");
        let end = closed(None, &d);
        assert_eq!(end.kind, ErrorKind::Refused);
    }

    #[test]
    fn caps_end_the_stream() {
        let long = vec![b'a'; MAX_HEAD];
        assert_eq!(decode(&long).1, Err(DecodeError::HeadTooLong));
        let mut line = b"data: ".to_vec();
        line.resize(MAX_LINE + 10, b'x');
        assert_eq!(decode(&chunked(&[&line])).1, Err(DecodeError::LineTooLong));
        let many: Vec<u8> = std::iter::repeat_n(&b"data: 0123456789abcdef\n"[..], MAX_EVENT / 16)
            .flatten()
            .copied()
            .collect();
        assert_eq!(decode(&chunked(&[&many])).1, Err(DecodeError::EventTooLarge));
        let mut bytes = HEAD.to_vec();
        bytes.extend_from_slice(&[b'1'; MAX_CHUNK_LINE + 1]);
        assert_eq!(decode(&bytes).1, Err(DecodeError::ChunkLineTooLong));
        let mut bytes = HEAD.to_vec();
        bytes.extend_from_slice(b"11111111111111111\r\n");
        assert_eq!(decode(&bytes).1, Err(DecodeError::BadChunkSize));
        let mut bytes = HEAD.to_vec();
        bytes.extend_from_slice(b"1\r\nab");
        assert_eq!(decode(&bytes).1, Err(DecodeError::BadChunkEnd));
        assert_eq!(decode(b"HTTP/2 200\r\n").1, Err(DecodeError::BadStatusLine));
    }

    #[test]
    fn verdicts() {
        let ev = |kind: &str, data: &str| SseEvent { kind: kind.into(), data: data.into() };
        assert_eq!(verdict(&ev("message", "{}")), Verdict::Ignore);
        assert_eq!(verdict(&ev("invalidate", "nope")), Verdict::Malformed);
        assert_eq!(
            verdict(&ev("invalidate", r#"{"hash_key":"0x0","reason":"admin"}"#)),
            Verdict::Malformed
        );
        assert_eq!(verdict(&ev("invalidate", r#"{"hash_key":"0x1"}"#)), Verdict::Malformed);
        assert_eq!(
            verdict(&ev("invalidate", r#"{"hash_key":"0x1","reason":"later"}"#)),
            Verdict::Ignore
        );
        assert_eq!(
            verdict(&ev("invalidate", r#"{"hash_key":5,"reason":"admin","hops":8}"#)),
            Verdict::Loop
        );
        let Verdict::Apply(inv) =
            verdict(&ev("invalidate", r#"{"hash_key":"12","reason":"admin","hops":2}"#))
        else {
            panic!()
        };
        assert_eq!((inv.hash_key, inv.hops, inv.origin.as_str()), (12, 2, ""));
        // What is re-sent parses back one hop further.
        let (items, _) = decode(&chunked(&[&on_the_wire(inv.forwarded())]));
        let Item::Event(again) = &items[1] else { panic!("{items:?}") };
        assert_eq!(verdict(again), Verdict::Apply(Invalidation { hops: 3, ..inv }));
    }

    fn sse_body() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b":\n".to_vec()),
            Just(b"event: invalidate\n".to_vec()),
            "[a-z:{}\" ]{0,40}\n".prop_map(|s| format!("data: {s}").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..20),
        ];
        proptest::collection::vec(line, 0..30).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut d = Decoder::new();
            let _ = d.feed(&bytes, &mut Vec::new());
            prop_assert!(d.buffered() <= MAX_HEAD + MAX_REJECTION + MAX_LINE * 2 + MAX_EVENT);
            prop_assert_eq!(decode(&bytes), decode_split(&bytes, &cuts));
            // The same bytes as a 200 event-stream body.
            let mut with_head = HEAD.to_vec();
            with_head.extend_from_slice(&bytes);
            prop_assert_eq!(decode(&with_head), decode_split(&with_head, &cuts));
        }

        #[test]
        fn splitting_a_chunked_event_stream_anywhere_gives_the_same_events(
            body in sse_body(),
            chunk_sizes in proptest::collection::vec(1usize..64, 1..16),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let mut parts = Vec::new();
            let mut rest = &body[..];
            for &n in chunk_sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (a, b) = rest.split_at(n.min(rest.len()));
                parts.push(a);
                rest = b;
            }
            let mut bytes = chunked(&parts);
            bytes.extend_from_slice(b"0\r\n\r\n");
            let whole = decode(&bytes);
            prop_assert_eq!(&whole.1, &Ok(()));
            prop_assert_eq!(whole.0.last(), Some(&Item::End));
            // Chunking is invisible: the same as one chunk.
            let one = { let mut b = chunked(&[&body]); b.extend_from_slice(b"0\r\n\r\n"); b };
            prop_assert_eq!(&decode(&one), &whole);
            prop_assert_eq!(decode_split(&bytes, &cuts), whole);
        }
    }
}
