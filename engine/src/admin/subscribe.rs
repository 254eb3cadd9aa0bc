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
//! hyper's HTTP/1.1 client (`client.rs`) reads the response and owns its
//! framing; the session checks its status and `Content-Type` and feeds the
//! body of a `200 text/event-stream` to the sans-IO [`SseDecoder`]: bytes
//! in, [`SseEvent`]s out, the same events however the bytes are split.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::sse::Event;
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderMap};
use ricochet_proto::events::{DecodeError, SseDecoder, SseEvent};
use tokio::net::TcpStream;

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
/// Bytes of a refusal's body kept for the log.
pub const MAX_REJECTION: usize = 512;

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
    /// Malformed HTTP, or a connection closed before the response head.
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
            DecodeError::LineTooLong | DecodeError::EventTooLarge => ErrorKind::TooLarge,
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
/// hyper reads the HTTP/1.1 response: a `200 text/event-stream` registers
/// and its de-chunked body goes through the [`SseDecoder`]; any other
/// answer is a refusal, logged with the start of its body.
async fn session(up: &Upstream, ctx: &Ctx) -> End {
    use http_body_util::BodyExt as _;
    use hyper::header::{ACCEPT, CACHE_CONTROL, USER_AGENT};
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
    let (resp, _conn) = match tokio::time::timeout(ctx.silence, client::get(stream, &request)).await
    {
        Err(_) => return silence(None, ctx),
        Ok(Err(client::Error::Http(e))) if e.is_incomplete_message() => {
            return end(None, ErrorKind::BadResponse, "closed before a response".to_string());
        }
        Ok(Err(e)) => return end(None, client_error_kind(&e), format!("no response: {e}")),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let event_stream = is_event_stream(resp.headers());
    let mut body = resp.into_body();
    if status != StatusCode::OK {
        // A refusal: keep the start of its body for the log.
        let mut kept = Vec::new();
        while kept.len() < MAX_REJECTION {
            match tokio::time::timeout(ctx.silence, body.frame()).await {
                Err(_) => return silence(None, ctx),
                Ok(None) => break,
                Ok(Some(Err(e))) if e.is_incomplete_message() => break,
                Ok(Some(Err(e))) => return end(None, hyper_error_kind(&e), e.to_string()),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let room = MAX_REJECTION - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
        }
        let (kind, detail) = refusal(status, &kept);
        return end(None, kind, detail);
    }
    if !event_stream {
        let detail = "200 without Content-Type: text/event-stream".to_string();
        return end(None, ErrorKind::HttpStatus, detail);
    }
    let registered = Some(Instant::now());
    up.stats.connects.fetch_add(1, Ordering::Relaxed);
    up.stats.connected.store(true, Ordering::Relaxed);
    up.set_state("registered", BACKOFF_MIN);
    tracing::info!(upstream = %up.label, "registered for invalidations");
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    loop {
        let data = match tokio::time::timeout(ctx.silence, body.frame()).await {
            Err(_) => return silence(registered, ctx),
            Ok(None) => return closed(registered),
            Ok(Some(Err(e))) if e.is_incomplete_message() => return closed(registered),
            Ok(Some(Err(e))) => return end(registered, hyper_error_kind(&e), e.to_string()),
            // Trailers carry nothing for this stream.
            Ok(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        };
        let result = decoder.feed(&data, &mut events);
        for ev in events.drain(..) {
            apply(up, ctx, &ev).await;
        }
        if let Err(e) = result {
            return end(registered, ErrorKind::of_decode(e), format!("malformed response: {e:?}"));
        }
    }
}

/// Whether the response announces `Content-Type: text/event-stream`
/// (parameters such as `charset` aside).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
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

/// The end of a registered stream.
fn closed(registered: Option<Instant>) -> End {
    let detail = "the upstream closed the stream".to_string();
    End { registered, kind: ErrorKind::Closed, detail }
}

/// Why a response other than 200 refused the registration, and the log
/// detail: its status and the start of its `body` (at most
/// [`MAX_REJECTION`] bytes of it).
fn refusal(status: StatusCode, body: &[u8]) -> (ErrorKind, String) {
    let kind = match status {
        StatusCode::UNAUTHORIZED => ErrorKind::Unauthorized,
        StatusCode::FORBIDDEN => ErrorKind::Forbidden,
        StatusCode::SERVICE_UNAVAILABLE => ErrorKind::Refused,
        _ => ErrorKind::HttpStatus,
    };
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_REJECTION)]);
    (kind, format!("HTTP {}: {:?}", status.as_u16(), text.trim()))
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
    use ricochet_proto::events::{MAX_BUFFERED, MAX_EVENT, MAX_LINE};

    fn decode(bytes: &[u8]) -> (Vec<SseEvent>, Result<(), DecodeError>) {
        decode_parts(&[bytes])
    }

    /// Feeds `parts` in order, as hyper hands over a body's frames,
    /// stopping at the first error.
    fn decode_parts(parts: &[&[u8]]) -> (Vec<SseEvent>, Result<(), DecodeError>) {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for part in parts {
            if let Err(e) = d.feed(part, &mut out) {
                return (out, Err(e));
            }
        }
        (out, Ok(()))
    }

    /// Feeds `bytes` cut at `cuts` (positions, any order, may exceed the
    /// length), stopping at the first error.
    fn decode_split(bytes: &[u8], cuts: &[usize]) -> (Vec<SseEvent>, Result<(), DecodeError>) {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut parts = Vec::new();
        let mut from = 0;
        for to in cuts.into_iter().chain([bytes.len()]) {
            parts.push(&bytes[from..to]);
            from = to;
        }
        decode_parts(&parts)
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

    fn event(kind: &str, data: &str) -> SseEvent {
        SseEvent { kind: kind.into(), data: data.into() }
    }

    #[test]
    fn what_the_upstream_sends_decodes_to_its_events() {
        // As axum writes /events: the hello comment, an invalidation, a
        // keep-alive, an epoch reset split over two body frames.
        let (events, r) = decode_parts(&[
            b": ricochet edge-1 events\n\n",
            b"event: invalidate\ndata: {\"hash_key\":\"0x00000000000000a1\",\"instance\":\"edge-1\",\"reason\":\"admin\"}\n\n",
            b":\n\n",
            b"event: invalidate\ndata: {\"hash_key\":\"0x00000000000000b2\",",
            b"\"instance\":\"edge-1\",\"reason\":\"epoch_reset\"}\n\n",
        ]);
        assert_eq!(r, Ok(()));
        let [a, b] = &events[..] else { panic!("{events:?}") };
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
        let (events, r) = decode(body);
        assert_eq!(r, Ok(()));
        assert_eq!(events, [event("message", "one\ntwo\n"), event("x", "y")]);
        // A CRLF split between two frames is one line end, not two.
        let (events, r) = decode_parts(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(r, Ok(()));
        assert_eq!(events, [event("message", "a\nb")]);
    }

    #[test]
    fn an_event_cut_off_by_the_end_of_the_body_is_not_applied() {
        let (events, r) = decode(b"data: whole\n\nevent: invalidate\ndata: {\"hash_key\":1}\n");
        assert_eq!(r, Ok(()));
        assert_eq!(events, [event("message", "whole")]);
    }

    #[test]
    fn a_refusal_keeps_its_status_and_body() {
        let (kind, detail) =
            refusal(StatusCode::SERVICE_UNAVAILABLE, b"too many /events subscribers\n");
        assert_eq!(kind, ErrorKind::Refused);
        assert_eq!(detail, r#"HTTP 503: "too many /events subscribers""#);
        assert_eq!(refusal(StatusCode::UNAUTHORIZED, b"").0, ErrorKind::Unauthorized);
        assert_eq!(refusal(StatusCode::FORBIDDEN, b"").0, ErrorKind::Forbidden);
        let (kind, detail) = refusal(StatusCode::NOT_FOUND, &[b'x'; 2 * MAX_REJECTION]);
        assert_eq!(kind, ErrorKind::HttpStatus);
        assert_eq!(detail, format!("HTTP 404: {:?}", "x".repeat(MAX_REJECTION)));
    }

    #[test]
    fn only_an_event_stream_registers() {
        let headers = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(ct));
            h
        };
        assert!(is_event_stream(&headers("text/event-stream")));
        assert!(is_event_stream(&headers("Text/Event-Stream ; charset=utf-8")));
        assert!(!is_event_stream(&headers("text/plain")));
        assert!(!is_event_stream(&headers("text/event-stream-x")));
        assert!(!is_event_stream(&HeaderMap::new()));
    }

    #[test]
    fn caps_end_the_stream() {
        let mut line = b"data: ".to_vec();
        line.resize(MAX_LINE + 10, b'x');
        assert_eq!(decode(&line).1, Err(DecodeError::LineTooLong));
        let many = b"data: 0123456789abcdef\n".repeat(MAX_EVENT / 16);
        assert_eq!(decode(&many).1, Err(DecodeError::EventTooLarge));
        for e in [DecodeError::LineTooLong, DecodeError::EventTooLarge] {
            assert_eq!(ErrorKind::of_decode(e), ErrorKind::TooLarge);
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&event("message", "{}")), Verdict::Ignore);
        assert_eq!(verdict(&event("invalidate", "nope")), Verdict::Malformed);
        assert_eq!(
            verdict(&event("invalidate", r#"{"hash_key":"0x0","reason":"admin"}"#)),
            Verdict::Malformed
        );
        assert_eq!(verdict(&event("invalidate", r#"{"hash_key":"0x1"}"#)), Verdict::Malformed);
        assert_eq!(
            verdict(&event("invalidate", r#"{"hash_key":"0x1","reason":"later"}"#)),
            Verdict::Ignore
        );
        assert_eq!(
            verdict(&event("invalidate", r#"{"hash_key":5,"reason":"admin","hops":8}"#)),
            Verdict::Loop
        );
        let Verdict::Apply(inv) =
            verdict(&event("invalidate", r#"{"hash_key":"12","reason":"admin","hops":2}"#))
        else {
            panic!()
        };
        assert_eq!((inv.hash_key, inv.hops, inv.origin.as_str()), (12, 2, ""));
        // What is re-sent parses back one hop further.
        let (events, _) = decode(&on_the_wire(inv.forwarded()));
        let [again] = &events[..] else { panic!("{events:?}") };
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
            let mut d = SseDecoder::new();
            let _ = d.feed(&bytes, &mut Vec::new());
            prop_assert!(d.buffered() <= MAX_BUFFERED);
            prop_assert_eq!(decode(&bytes), decode_split(&bytes, &cuts));
        }

        #[test]
        fn splitting_an_event_stream_anywhere_gives_the_same_events(
            body in sse_body(),
            frame_sizes in proptest::collection::vec(1usize..64, 1..16),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let mut frames = Vec::new();
            let mut rest = &body[..];
            for &n in frame_sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (a, b) = rest.split_at(n.min(rest.len()));
                frames.push(a);
                rest = b;
            }
            let whole = decode(&body);
            prop_assert_eq!(&whole.1, &Ok(()));
            // How hyper cuts the body into frames is invisible.
            prop_assert_eq!(&decode_parts(&frames), &whole);
            prop_assert_eq!(decode_split(&body, &cuts), whole);
        }
    }
}
