//! The NACK service: what ricochet does with each data frame and each NACK.
//!
//! docs/PROTOCOL.md § "Retransmission control (BRC-126)".
//!
//! # Frames
//! [`Service::on_frame`] checks a datagram from the fabric, caches it whole
//! under HashKey ‖ SeqNum with the TTL of its class, and remembers the group
//! to retransmit it to: the group it arrived on when the caller knows it,
//! else the one BRC-129 assigns it. Legacy (0x01) and unstamped frames are
//! counted, never cached.
//!
//! A frame that suggests its proxy restarted — a SeqNum far below the
//! flow's highest, or a held (HashKey, SeqNum) with other bytes — is
//! evidence, not a reset: it is held aside ([`FrameOutcome::Candidate`]),
//! never served and never replacing the held copy, and the flow's old
//! frames go on being served. Only when
//! [`EPOCH_EVIDENCE`](super::cache::EPOCH_EVIDENCE) consistent frames have
//! arrived without the old epoch continuing does the flow start its new
//! epoch; that frame alone reports
//! [`FrameOutcome::Cached`] with `new_epoch` (the driver's cue for an
//! `epoch_reset` on `/events`), so one forged datagram can neither drop a
//! flow nor make the endpoint announce that it did. Frames from the
//! recovery path are never evidence. See [`crate::retry::cache`] for the
//! rule in full.
//!
//! # NACKs
//! [`Service::on_nack`] follows the reference endpoint's order:
//! 1. count; check (a malformed NACK is returned as the wire error so the
//!    caller counts `ricochet_dropped_total{reason}`; nothing is sent);
//! 2. IP tier (always silent), sequence tier (THROTTLED bucket 2), chain
//!    tier (THROTTLED bucket 3); THROTTLED only when throttle responses are
//!    on, silence otherwise. The chain tier is only *peeked* here and
//!    charged at step 4 (unlike the reference, see "Overload" in
//!    [`limit`](super::limit));
//! 3. cache lookup. MISS → a MISS (unless suppressed) and, when proxying is
//!    on and the NACK was not itself proxied, an [`Effect::Recover`] for the
//!    recovery path;
//! 4. HIT → the chain tier is charged (once per NACK), then the group tier
//!    for (source, the frame's group). Limited → THROTTLED bucket 4 if
//!    throttle responses are on, else no retransmit and an ACK with flags 0
//!    (nothing was sent);
//! 5. otherwise the frame to its group (multicast retransmit on), a unicast
//!    copy to the source (unicast retransmit on, or the NACK is Proxied and
//!    its source may proxy: see "Who may proxy"), then an ACK whose flags
//!    say which of those were queued (unless suppressed).
//!
//! Everything sent back to a source that may not proxy is paid from the
//! NACK's byte budget (see "Amplification"); what does not fit is not
//! sent.
//!
//! # Siblings sharing a store
//! With `retransmit_dedup` on (a Redis server shared by sibling endpoints),
//! step 5's multicast is not queued: an [`Effect::Multicast`] carries the
//! frame, and the ACK that reports it, to the caller, which claims the
//! retransmit across instances and answers with
//! [`Service::on_multicast_claim`] — so a frame goes to its group once per
//! dedup window however many siblings are asked. The unicast copy, if any,
//! is queued at once. With `shared_cache` on (`CACHE_BACKEND=redis`) a miss
//! is not answered at once: an [`Effect::Lookup`] asks the caller to look
//! in the shared store, and [`Service::on_lookup`] finishes the answer —
//! the frame served as a hit (and cached here), or MISS and recovery as in
//! step 3. A range NACK stops at such a miss either way; the requester asks
//! again for the rest.
//!
//! Unlike the reference, which drops them, range NACKs (EndSeq > StartSeq)
//! are served frame by frame from StartSeq: steps 4–5 per frame held, then
//! on the first frame not held a MISS (and Recover for that SeqNum) and
//! stop. A range longer than `max_range` is clamped to its first `max_range`
//! SeqNums; the requester sees no answer for the rest and asks again. A
//! group-tier refusal also ends a range: the rest would be refused alike.
//! The rate-limit tiers count a range NACK once, by its StartSeq; the group
//! tier counts every frame retransmitted. A range also ends where its
//! byte budget could not pay for the next frame's ACK.
//!
//! # Outbox
//! Everything to send is pushed, in order, into a caller-owned [`Outbox`].
//! Answering a NACK allocates nothing once the outbox and the limiter tables
//! have grown, with one exception per frame: the first clone of a `Bytes`
//! built from a `Vec` allocates its shared header, so a frame's first
//! retransmit costs one small allocation and later ones none. Doing that at
//! insert instead would charge it to every frame, and most are never asked
//! for.
//!
//! Each frame's retransmits come before its ACK, so a driver that fails to
//! send a retransmit can drop the ACK that follows it (the reference sends
//! no ACK when the multicast send fails). ACK flags say what was *queued*.
//!
//! # Who may proxy
//! A Proxied NACK asks for a unicast copy of every frame it names: that is
//! how a downstream endpoint recovers a gap for its own domain. Only
//! sources that may proxy get that: live siblings (gossip membership,
//! [`Service::set_siblings`]) and the downstream endpoints listed in
//! [`Settings::proxy_allow`] (`--proxy-allow`, empty by default). From
//! anyone else the flag grants nothing beyond a plain NACK (no unicast
//! copy unless unicast retransmit is on, and then within the budget
//! below); it still marks the NACK as never to be proxied again. Such NACKs
//! are counted in [`Stats::nacks_proxied_not_allowed`]. The reference
//! sends every Proxied NACK a copy, so a single 64-byte range NACK for 64
//! large frames could draw 3 MB to any address it claims to come from.
//!
//! # Amplification
//! **No request draws more than [`AMPLIFICATION`] (3) × its size
//! from an unauthenticated source**: the bytes sent back to a source that
//! may not proxy in answer to one NACK (unicast frame copies, ACK, MISS,
//! THROTTLED) are at most 3 × 64 = 192 bytes, whatever the datagram's
//! length, the range or the settings. Each NACK carries its own
//! [`Budget`], spent by its answers only (through an
//! [`Effect::Lookup`] too; a held-back ACK is paid when it is decided),
//! and nothing is banked across NACKs, so there is no per-source state to
//! grow under a flood of spoofed addresses, and the bytes sent to any
//! address are at most 3× the bytes of the NACKs sent from it (spoofed or
//! not); the IP tier, which never answers, bounds how often on top.
//! When the next answer does not fit, the range stops there (counted in
//! [`Stats::budget_exhausted`]); the requester asks again for the rest and
//! brings a new budget. So a range NACK from such a source is answered
//! for at most 12 frames (twelve 16-byte ACKs); a unicast copy is sent
//! only if it and its ACK fit (a frame of up to 176 bytes) and is
//! otherwise skipped ([`Stats::unicast_over_budget`]) while the frame
//! still goes to its group. Retransmits to a group are not sent to the
//! source and are governed by the group tier, one token per frame.
//! Sources that may proxy are not held to the budget: they are trusted to
//! be who they say (list only addresses that cannot be spoofed from
//! outside, e.g. behind ingress filtering).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_wire::Error;
use ricochet_wire::control::{
    AckFlags, BUCKET_PER_GROUP, NACK_LEN, Nack, RESPONSE_LEN, ResponseKind, ResponseRepr,
};
use ricochet_wire::frame::{Frame, FrameKey};
use ricochet_wire::group::{self, DEFAULT_BEEF_SHARD_BITS, DEFAULT_SHARD_BITS};

use super::allow::AllowList;
use super::cache::{Cache, CacheSettings, CacheStats, EpochReset, Insert, Origin, Sweep, TtlClass};
use super::limit::{LimitSettings, Limiter, Tier};
use super::shared_limit::SharedLimits;
use super::siblings::Siblings;

/// Every knob of the service, defaulting to the reference endpoint's
/// defaults; the doc of each field names the reference's env var.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Cache TTLs and bounds.
    pub cache: CacheSettings,
    /// The four rate-limit tiers.
    pub limits: LimitSettings,
    /// Most frames one range NACK is served (64); longer ranges are clamped
    /// to their first `max_range` SeqNums. Values below 1 act as 1.
    pub max_range: u64,
    /// `SUPPRESS_ACK`: send no ACKs.
    pub suppress_ack: bool,
    /// `SUPPRESS_MISS`: send no MISSes.
    pub suppress_miss: bool,
    /// `BEACON_FLAGS_MULTICAST`: retransmit to the frame's group (on).
    pub multicast_retransmit: bool,
    /// `BEACON_FLAGS_UNICAST`: also send a copy to the requester (off),
    /// within the request's byte budget unless the requester may proxy.
    /// Proxied NACKs from a source that may proxy always get one.
    pub unicast_retransmit: bool,
    /// `RL_THROTTLE_RESPONSE`: answer rate-limited NACKs with THROTTLED
    /// (except the IP tier, which is always silent) (off).
    pub throttle_responses: bool,
    /// `PROXY_ENABLED`: ask the recovery path to fetch missed frames (off).
    pub proxy_enabled: bool,
    /// `SHARD_BITS`: data shard bits, for frames whose arrival group is not
    /// given (2).
    pub shard_bits: u8,
    /// `BEEF_SHARD_BITS`: BEEF object plane shard bits (4).
    pub beef_shard_bits: u8,
    /// `REDIS_ADDR` set: multicast retransmits wait for a cross-instance
    /// dedup claim ([`Effect::Multicast`]) (off).
    pub retransmit_dedup: bool,
    /// `CACHE_BACKEND=redis`: a miss here is looked up in the shared store
    /// before it is answered ([`Effect::Lookup`]) (off).
    pub shared_cache: bool,
    /// `--proxy-allow` (ricochet's own): the downstream endpoints whose
    /// Proxied NACKs get unicast copies and whose answers are not held to
    /// [`AMPLIFICATION`]; live siblings are always allowed. Empty
    /// (the default): none but siblings.
    pub proxy_allow: AllowList,
}

/// How many times its own size (64 bytes, [`NACK_LEN`], whatever the
/// datagram's length) one NACK from a source that may not proxy can draw
/// back to that source: the project-wide bound, 3. 192 bytes: twelve
/// 16-byte answers, or no frame copy at all. See "Amplification" in the
/// module docs.
pub use ricochet_wire::AMPLIFICATION;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cache: CacheSettings::default(),
            limits: LimitSettings::default(),
            max_range: 64,
            suppress_ack: false,
            suppress_miss: false,
            multicast_retransmit: true,
            unicast_retransmit: false,
            throttle_responses: false,
            proxy_enabled: false,
            shard_bits: DEFAULT_SHARD_BITS,
            beef_shard_bits: DEFAULT_BEEF_SHARD_BITS,
            retransmit_dedup: false,
            shared_cache: false,
            proxy_allow: AllowList::default(),
        }
    }
}

/// Where a [`Transmit`] goes. Ordered groups first, then unicast, then
/// upstream (the order a worker groups a round's sends in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dest {
    /// The multicast group with this BRC-129 index, on the egress port.
    Group(u16),
    /// One address: the NACK's source, address and port.
    Unicast(SocketAddr),
    /// An upstream endpoint: sent from the worker's upstream socket, so its
    /// replies come back to the recovery path (see `recover`).
    Upstream(SocketAddr),
}

/// The bytes of a [`Transmit`].
#[derive(Clone, PartialEq, Eq)]
pub enum Payload {
    /// A cached datagram, byte-identical to what arrived.
    Frame(Bytes),
    /// A control message built in place (MISS, ACK, THROTTLED are 16
    /// bytes; 64 leaves room for a NACK).
    Control {
        /// The message; only `..len` is meaningful.
        buf: [u8; 64],
        /// Its length.
        len: u8,
    },
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Frame(b) => f.debug_tuple("Frame").field(&b.len()).finish(),
            Payload::Control { buf, len } => {
                f.debug_tuple("Control").field(&&buf[..usize::from(*len).min(64)]).finish()
            }
        }
    }
}

impl Payload {
    /// The datagram to send.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Frame(b) => b,
            Payload::Control { buf, len } => &buf[..usize::from(*len).min(buf.len())],
        }
    }

    /// A response as a control payload.
    fn response(r: ResponseRepr) -> Option<Payload> {
        let mut buf = [0u8; 64];
        // Cannot fail: the buffer is larger than any response and every
        // constructor masks the bucket into range.
        let len = r.emit(&mut buf).ok()?;
        Some(Payload::Control { buf, len: len as u8 })
    }
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where.
    pub dest: Dest,
    /// What.
    pub payload: Payload,
}

/// Work for other parts of the daemon that is not a datagram.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Effect {
    /// A NACKed frame is not held and proxying is on: fetch it upstream
    /// (proxied NACK, flag 0x01), re-cache it, retransmit it.
    Recover {
        /// The flow.
        hash_key: u64,
        /// The missing SeqNum.
        seq: u64,
        /// The NACK's SubtreeID, forwarded upstream.
        subtree_id: [u8; 32],
        /// A sibling forwarded the NACK here because this endpoint owns the
        /// gap: recover it, do not forward it again.
        from_sibling: bool,
    },
    /// A multicast retransmit waiting for its cross-instance dedup claim;
    /// answer with [`Service::on_multicast_claim`].
    Multicast(PendingMulticast),
    /// A miss to look up in the shared store; answer with
    /// [`Service::on_lookup`].
    Lookup(Lookup),
}

/// A multicast retransmit held back for its dedup claim, with the ACK that
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PendingMulticast {
    /// The frame's key (what is claimed).
    pub key: FrameKey,
    /// Its group.
    pub group: u16,
    /// The frame.
    pub frame: Bytes,
    /// Who to ACK once decided (`None`: ACKs suppressed).
    pub ack_to: Option<SocketAddr>,
    /// ACK flags for what was already queued (the unicast copy).
    pub ack_flags: u8,
}

/// A NACKed frame not held here, to look for in the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lookup {
    /// The frame asked for.
    pub key: FrameKey,
    /// The NACK's source.
    pub src: SocketAddr,
    /// The NACK's SubtreeID (forwarded upstream if it comes to recovery).
    pub subtree_id: [u8; 32],
    /// Whether the NACK was Proxied.
    pub proxied: bool,
    /// Whether a sibling forwarded it ([`NackFlags::SIBLING`]).
    ///
    /// [`NackFlags::SIBLING`]: ricochet_wire::control::NackFlags::SIBLING
    pub from_sibling: bool,
    /// Whether the chain tier is still to be charged if the frame is found
    /// (it is charged once per NACK, on its first hit).
    pub charge_chain: bool,
    /// Whether the source may proxy (a live sibling or in `proxy_allow`),
    /// so that a Proxied NACK gets a unicast copy.
    pub allowed: bool,
    /// What the NACK may still draw back to its source.
    pub budget: Budget,
}

/// The bytes one NACK may still draw back to its source: at most
/// [`AMPLIFICATION`] × [`NACK_LEN`] from a source that may not
/// proxy, unbounded from one that may. Spent by the answers to that NACK
/// only; nothing is banked across NACKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Bytes left; `None` = unbounded.
    left: Option<usize>,
}

impl Budget {
    /// The budget of a fresh request: unbounded if its source may proxy.
    pub const fn for_request(allowed: bool) -> Budget {
        Budget { left: if allowed { None } else { Some(AMPLIFICATION * NACK_LEN) } }
    }

    /// Bytes left; `None` = unbounded.
    pub const fn left(&self) -> Option<usize> {
        self.left
    }

    /// Whether `n` more bytes may be sent.
    fn fits(&self, n: usize) -> bool {
        self.left.is_none_or(|left| n <= left)
    }

    /// Takes `n` bytes if they fit.
    fn spend(&mut self, n: usize) -> bool {
        match &mut self.left {
            None => true,
            Some(left) if n <= *left => {
                *left -= n;
                true
            }
            Some(_) => false,
        }
    }
}

/// Caller-owned output buffers, drained after each call and reused so that
/// answering a NACK allocates nothing once they have grown to size. The
/// service only ever appends; the caller may read, drain, take or swap the
/// vectors directly (e.g. `mem::take` the transmits to send them while
/// calling back into the service, then put the emptied vector back) or use
/// the methods.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Datagrams to send, in sending order.
    pub transmits: Vec<Transmit>,
    /// Effects for other parts of the daemon, in order.
    pub effects: Vec<Effect>,
}

impl Outbox {
    /// Empty buffers.
    pub fn new() -> Self {
        Outbox::default()
    }

    /// Buffers pre-sized for `transmits` datagrams (a full range NACK with
    /// unicast on needs `3 × max_range + 1`).
    pub fn with_capacity(transmits: usize) -> Self {
        Outbox { transmits: Vec::with_capacity(transmits), effects: Vec::new() }
    }

    /// Datagrams queued so far, in sending order.
    pub fn transmits(&self) -> &[Transmit] {
        &self.transmits
    }

    /// Effects queued so far.
    pub fn effects(&self) -> &[Effect] {
        &self.effects
    }

    /// Takes the queued datagrams in order, keeping the allocation.
    pub fn drain_transmits(&mut self) -> std::vec::Drain<'_, Transmit> {
        self.transmits.drain(..)
    }

    /// Takes the queued effects, keeping the allocation.
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// Drops everything queued, keeping the allocations.
    pub fn clear(&mut self) {
        self.transmits.clear();
        self.effects.clear();
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty() && self.effects.is_empty()
    }
}

/// What [`Service::on_frame`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameOutcome {
    /// Cached under `key`, to be retransmitted to `group`.
    Cached {
        /// HashKey ‖ SeqNum.
        key: FrameKey,
        /// Retransmit group index.
        group: u16,
        /// This frame confirmed the flow's new epoch (proxy restart): its
        /// older frames were dropped and its candidate frames stored.
        new_epoch: bool,
        /// How long it stays cached (its class's TTL).
        ttl: Duration,
    },
    /// Already cached; the first copy was kept.
    Duplicate(FrameKey),
    /// Held as evidence that the flow's proxy restarted (a conflicting copy
    /// or a SeqNum far behind); not served, and the flow unchanged until
    /// [`EPOCH_EVIDENCE`](super::cache::EPOCH_EVIDENCE) such frames confirm it.
    Candidate(FrameKey),
    /// Legacy (0x01) or unstamped (HashKey or SeqNum 0): counted, not cached.
    Unkeyed,
    /// Older than its flow's window; not cached.
    Stale(FrameKey),
    /// Larger than the whole cache byte budget; not cached.
    TooLarge(FrameKey),
}

/// Counters of one shard. Every field except `cache` maps to a Prometheus
/// counter `ricochet_<field>_total`; `cache` documents its own. Serializes
/// to a flat-per-level JSON object, which is what `/debug/stats` and the
/// metrics exporter walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Well-formed data frames handed to [`Service::on_frame`] (malformed
    /// ones are returned as errors for the caller to count by reason).
    pub frames_received: u64,
    /// Frames newly cached (servable), counting the candidate frames a
    /// confirmed new epoch stores along with the confirming one.
    pub frames_cached: u64,
    /// Frames already cached (first copy kept).
    pub frames_duplicate: u64,
    /// Legacy or unstamped frames, never cached.
    pub frames_uncached_legacy: u64,
    /// Frames refused by the cache: stale, or larger than the byte budget.
    pub frames_refused: u64,
    /// Frames re-cached by the recovery path.
    pub frames_recovered: u64,
    /// NACK datagrams handed to [`Service::on_nack`], malformed included
    /// (the reference counts before validating).
    pub nacks: u64,
    /// Well-formed NACKs with the Proxied flag (from a downstream endpoint).
    pub nacks_proxied: u64,
    /// Proxied NACKs from a source neither in `proxy_allow` nor a live
    /// sibling: answered as plain NACKs (no unicast copy, byte budget).
    pub nacks_proxied_not_allowed: u64,
    /// Answers cut short by the request's byte budget (a range stopped, or
    /// its closing MISS, ACK or THROTTLED not sent).
    pub budget_exhausted: u64,
    /// Unicast copies not sent because they would exceed the request's
    /// byte budget (the frame still went to its group if multicast is on).
    pub unicast_over_budget: u64,
    /// NACKs from a live sibling (Proxied or Sibling flag) that skipped the
    /// per-source rate tiers.
    pub nacks_from_siblings: u64,
    /// NACKs that asked for more than one frame.
    pub ranges_served: u64,
    /// Range NACKs clamped to `max_range`.
    pub ranges_clamped: u64,
    /// Frames asked for and found.
    pub cache_hits: u64,
    /// Frames asked for and not found (a range counts its first miss only).
    pub cache_misses: u64,
    /// Frames queued to their multicast group.
    pub retransmits_multicast: u64,
    /// Frames queued by unicast to a requester.
    pub retransmits_unicast: u64,
    /// ACKs queued.
    pub acks_sent: u64,
    /// MISSes queued.
    pub misses_sent: u64,
    /// THROTTLEDs queued.
    pub throttled_sent: u64,
    /// NACKs dropped by the IP tier.
    pub rate_limited_ip: u64,
    /// NACKs refused by the sequence tier.
    pub rate_limited_sequence: u64,
    /// NACKs refused by the chain tier.
    pub rate_limited_chain: u64,
    /// Retransmits refused by the group tier.
    pub rate_limited_group: u64,
    /// [`Effect::Recover`]s emitted.
    pub recover_requested: u64,
    /// Multicast retransmits skipped because a sibling (or this endpoint)
    /// sent the frame to its group within the dedup window.
    pub retransmits_deduplicated: u64,
    /// Misses found in the shared store.
    pub shared_hits: u64,
    /// Misses not in the shared store either (or it could not answer).
    pub shared_misses: u64,
    /// The cache shard's gauges and counters.
    pub cache: CacheStats,
}

/// What answering NACKs did, read from the counters before and after
/// ([`Stats::since`]): the one reading the `-debug` lines and the NACK
/// spans share, since the outbox says what was sent but not why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NackEffects {
    /// Refusals by each tier, in [`Tier::ALL`](super::Tier::ALL) order
    /// (IP, sequence, chain, group).
    pub limited: [u64; 4],
    /// THROTTLED answers sent.
    pub throttled: u64,
    /// Frames found.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Frames sent to their group.
    pub multicast: u64,
    /// Frames sent back to the requester.
    pub unicast: u64,
    /// Multicast retransmits another instance had sent already.
    pub deduplicated: u64,
}

impl Stats {
    /// What happened between `before` and these counters.
    pub fn since(&self, before: &Stats) -> NackEffects {
        let d = |f: fn(&Stats) -> u64| f(self).wrapping_sub(f(before));
        NackEffects {
            limited: [
                d(|s| s.rate_limited_ip),
                d(|s| s.rate_limited_sequence),
                d(|s| s.rate_limited_chain),
                d(|s| s.rate_limited_group),
            ],
            throttled: d(|s| s.throttled_sent),
            hits: d(|s| s.cache_hits),
            misses: d(|s| s.cache_misses),
            multicast: d(|s| s.retransmits_multicast),
            unicast: d(|s| s.retransmits_unicast),
            deduplicated: d(|s| s.retransmits_deduplicated),
        }
    }
}

/// The NACK service of one shard: a cache, a limiter and their counters.
#[derive(Debug)]
pub struct Service {
    settings: Settings,
    cache: Cache,
    limiter: Limiter,
    stats: Stats,
    /// Live siblings: their Proxied or Sibling-flagged NACKs skip the
    /// per-source rate tiers.
    siblings: Arc<Siblings>,
}

impl Service {
    /// A service with empty state, its clocks starting at `now`. Its
    /// limiter keeps all four tiers to itself: right for a lone shard.
    pub fn new(settings: Settings, now: Instant) -> Self {
        let limiter = Limiter::new(&settings.limits, now);
        Service::with_limiter(settings, limiter, now)
    }

    /// A service for one shard of an endpoint: the IP, sequence and group
    /// tiers are the endpoint's `limits`, shared with every other shard, so
    /// a source gets one allowance however many shards its NACKs reach.
    pub fn with_shared_limits(settings: Settings, limits: Arc<SharedLimits>, now: Instant) -> Self {
        let limiter = Limiter::with_shared(&settings.limits, limits, now);
        Service::with_limiter(settings, limiter, now)
    }

    fn with_limiter(settings: Settings, limiter: Limiter, now: Instant) -> Self {
        Service {
            cache: Cache::new(settings.cache, now),
            limiter,
            settings,
            stats: Stats::default(),
            siblings: Arc::default(),
        }
    }

    /// Sets the live siblings (gossip membership). A NACK from
    /// one of them flagged Proxied (sibling fill) or Sibling (a gap
    /// forwarded to its owner) carries many listeners' requests, already
    /// deduplicated by gap ownership and claims, so the per-source rate
    /// tiers (IP, sequence, chain) do not apply to it; the group tier
    /// still limits what reaches the multicast groups.
    pub fn set_siblings(&mut self, siblings: Arc<Siblings>) {
        self.siblings = siblings;
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The cache shard, for inspection.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The rate limiter, for inspection.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Checks and caches one data frame from the fabric. `datagram` is the
    /// whole datagram — the receive buffer itself, or bytes already copied
    /// out of it; the cache copies it once into its segment log. `arrival_group` is the group index it arrived on, when
    /// known; otherwise the BRC-129 group is computed from the frame. The
    /// only error besides a malformed frame is
    /// `BadField("shard_bits")` from invalid settings.
    pub fn on_frame(
        &mut self,
        now: Instant,
        datagram: impl AsRef<[u8]>,
        arrival_group: Option<u16>,
    ) -> Result<FrameOutcome, Error> {
        self.store(now, datagram, arrival_group, Origin::Fabric)
    }

    /// Re-caches a frame the recovery path fetched from upstream. Such frames
    /// are behind the flow's head by nature, so they never start a new
    /// epoch; the group is computed from the frame.
    pub fn on_recovered_frame(
        &mut self,
        now: Instant,
        datagram: impl AsRef<[u8]>,
    ) -> Result<FrameOutcome, Error> {
        let outcome = self.store(now, datagram, None, Origin::Recovered)?;
        if matches!(outcome, FrameOutcome::Cached { .. }) {
            self.stats.frames_recovered += 1;
        }
        Ok(outcome)
    }

    fn store(
        &mut self,
        now: Instant,
        datagram: impl AsRef<[u8]>,
        arrival_group: Option<u16>,
        origin: Origin,
    ) -> Result<FrameOutcome, Error> {
        let (key, class, group) = {
            let frame = Frame::new_checked(datagram.as_ref())?;
            self.stats.frames_received += 1;
            let (Some(key), Some(class)) = (frame.key(), TtlClass::of(&frame)) else {
                self.stats.frames_uncached_legacy += 1;
                return Ok(FrameOutcome::Unkeyed);
            };
            let group = match arrival_group {
                Some(g) => g,
                None => group::retransmit_index(
                    &frame,
                    self.settings.shard_bits,
                    self.settings.beef_shard_bits,
                )?,
            };
            (key, class, group)
        };
        Ok(match self.cache.insert(now, key, class, group, datagram, origin) {
            Insert::Inserted { new_epoch, promoted } => {
                self.stats.frames_cached += 1 + promoted as u64;
                FrameOutcome::Cached {
                    key,
                    group,
                    new_epoch,
                    ttl: self.settings.cache.ttls.get(class),
                }
            }
            Insert::Duplicate => {
                self.stats.frames_duplicate += 1;
                FrameOutcome::Duplicate(key)
            }
            Insert::Candidate => FrameOutcome::Candidate(key),
            Insert::Stale => {
                self.stats.frames_refused += 1;
                FrameOutcome::Stale(key)
            }
            Insert::TooLarge => {
                self.stats.frames_refused += 1;
                FrameOutcome::TooLarge(key)
            }
        })
    }

    /// The memory answering `datagram` will read first and is likely to
    /// find cold: the sequence tier's cache line for its key, and the
    /// bytes of the first frame it asks for. Reads nothing but the NACK's
    /// header and the cache's index, changes nothing, and says nothing for
    /// a datagram that is not a NACK. A runtime that calls this a few NACKs
    /// of a batch ahead of answering them can have those lines fetched
    /// meanwhile, so their misses overlap instead of queueing one by one.
    pub fn nack_footprint(
        &self,
        now: Instant,
        datagram: &[u8],
        mut f: impl FnMut(*const u8, usize),
    ) {
        let Ok(nack) = Nack::new_checked(datagram) else { return };
        let (hash_key, start) = (nack.hash_key(), nack.start_seq());
        if let Some(line) = self.limiter.shared().and_then(|l| l.sequence_line(hash_key, start)) {
            f(line, 64);
        }
        if let Some(frame) = self.cache.view(hash_key, now).and_then(|v| v.peek(start)) {
            f(frame.as_ptr(), frame.len());
        }
    }

    /// Answers one NACK datagram from `src`, pushing what to send into `out`
    /// (see the module docs for the order and the rules). A malformed NACK
    /// sends nothing and is returned as the wire error.
    pub fn on_nack(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut Outbox,
    ) -> Result<(), Error> {
        self.stats.nacks += 1;
        let nack = Nack::new_checked(datagram)?;
        let (hash_key, start, end) = (nack.hash_key(), nack.start_seq(), nack.end_seq());
        let proxied = nack.flags().proxied();
        let from_sibling = nack.flags().sibling();
        self.stats.nacks_proxied += u64::from(proxied);
        let s = &self.settings;
        let stats = &mut self.stats;
        let is_sibling = self.siblings.is_sibling(src.ip());
        let sibling = (proxied || from_sibling) && is_sibling;
        stats.nacks_from_siblings += u64::from(sibling);
        // Who may proxy: live siblings and `proxy_allow`. From anyone else
        // the Proxied flag grants nothing, and the answer is bounded by the
        // request's byte budget (see "Amplification").
        let allowed = is_sibling || s.proxy_allow.contains(src.ip());
        stats.nacks_proxied_not_allowed += u64::from(proxied && !allowed);
        let mut budget = Budget::for_request(allowed);

        if sibling {
            // Not limited per source (see `set_siblings`).
        } else if let Err(tier) = self.limiter.check_before_lookup(now, src.ip(), hash_key, start) {
            match tier {
                Tier::Ip => stats.rate_limited_ip += 1,
                Tier::Sequence => stats.rate_limited_sequence += 1,
                Tier::Chain => stats.rate_limited_chain += 1,
                Tier::Group => stats.rate_limited_group += 1,
            }
            if let (true, Some(bucket)) = (s.throttle_responses, tier.throttle_bucket()) {
                respond_within(
                    out,
                    stats,
                    &mut budget,
                    src,
                    ResponseRepr::throttled(start, bucket),
                );
            }
            return Ok(());
        }

        let max_range = s.max_range.max(1);
        let last = if end - start >= max_range { start + (max_range - 1) } else { end };
        if end > start {
            stats.ranges_served += 1;
            if last < end {
                stats.ranges_clamped += 1;
            }
        }

        let subtree_id = *nack.subtree_id();
        let flow = self.cache.view(hash_key, now);
        // The chain tier was only peeked: it is charged once per NACK, at
        // the first frame found (siblings skip it).
        let mut charge_chain = !sibling;
        for seq in start..=last {
            let key = FrameKey { hash_key, seq };
            let Some(hit) = flow.and_then(|f| f.get(seq)) else {
                if self.settings.shared_cache {
                    let lookup = Lookup {
                        key,
                        src,
                        subtree_id,
                        proxied,
                        from_sibling,
                        charge_chain,
                        allowed,
                        budget,
                    };
                    out.effects.push(Effect::Lookup(lookup));
                } else {
                    let m = Miss { src, key, subtree_id, proxied, from_sibling };
                    serve_miss(&self.settings, &mut self.stats, m, &mut budget, out);
                }
                break;
            };
            if std::mem::take(&mut charge_chain) {
                self.limiter.charge_chain(now, src.ip(), hash_key);
            }
            self.stats.cache_hits += 1;
            let copy = self.settings.unicast_retransmit || (proxied && allowed);
            let ctx = Hit { now, src, start, key, group: hit.group, frame: hit.frame, copy };
            let (s, stats, limiter) = (&self.settings, &mut self.stats, &mut self.limiter);
            if !serve_hit(s, stats, limiter, ctx, &mut budget, out) {
                break;
            }
        }
        Ok(())
    }

    /// Finishes an [`Effect::Multicast`]: `send` (the dedup claim was won,
    /// or could not be made anywhere) queues the frame to its group; either
    /// way the held-back ACK follows, its flags saying what was sent.
    pub fn on_multicast_claim(&mut self, m: PendingMulticast, send: bool, out: &mut Outbox) {
        let mut flags = m.ack_flags;
        if send {
            flags |= AckFlags::MULTICAST;
            self.stats.retransmits_multicast += 1;
            out.transmits
                .push(Transmit { dest: Dest::Group(m.group), payload: Payload::Frame(m.frame) });
        } else {
            self.stats.retransmits_deduplicated += 1;
        }
        if let Some(to) = m.ack_to {
            respond(out, &mut self.stats, to, ResponseRepr::ack(m.key.seq, AckFlags(flags)));
        }
    }

    /// Finishes an [`Effect::Lookup`] with what the shared store held:
    /// a frame with the right key is cached here and served as a hit;
    /// anything else (nothing, a frame of another key, the store down) is
    /// answered as a miss.
    pub fn on_lookup(&mut self, now: Instant, l: Lookup, found: Option<Bytes>, out: &mut Outbox) {
        let valid = found.filter(|b| {
            Frame::new_checked(b).ok().and_then(|f| f.key()).is_some_and(|k| k == l.key)
        });
        let mut budget = l.budget;
        let Some(frame) = valid else {
            self.stats.shared_misses += 1;
            return serve_miss(&self.settings, &mut self.stats, Miss::from(l), &mut budget, out);
        };
        self.stats.shared_hits += 1;
        self.stats.cache_hits += 1;
        if l.charge_chain {
            self.limiter.charge_chain(now, l.src.ip(), l.key.hash_key);
        }
        let group = match self.store(now, frame.clone(), None, Origin::Recovered) {
            Ok(FrameOutcome::Cached { group, .. }) => group,
            // Cached meanwhile, or refused by the cache: serve it anyway
            // with the group its class maps to.
            _ => match Frame::new_checked(&frame).ok().and_then(|f| {
                group::retransmit_index(&f, self.settings.shard_bits, self.settings.beef_shard_bits)
                    .ok()
            }) {
                Some(g) => g,
                None => {
                    let (s, stats) = (&self.settings, &mut self.stats);
                    return serve_miss(s, stats, Miss::from(l), &mut budget, out);
                }
            },
        };
        let ctx = Hit {
            now,
            src: l.src,
            start: l.key.seq,
            key: l.key,
            group,
            frame,
            copy: self.settings.unicast_retransmit || (l.proxied && l.allowed),
        };
        serve_hit(&self.settings, &mut self.stats, &mut self.limiter, ctx, &mut budget, out);
    }

    /// Every frame flow `hash_key` holds as of `now`, with its key and its
    /// class's TTL, in SeqNum order. Right after a frame confirmed a new
    /// epoch ([`FrameOutcome::Cached`] with `new_epoch`) that is the new
    /// epoch's frames: the confirming frame and the candidates promoted with
    /// it, which a shared cache must be told about together, because it
    /// still holds the old epoch's frames under the same keys.
    pub fn flow_frames(&self, now: Instant, hash_key: u64) -> Vec<(FrameKey, Duration, Bytes)> {
        let Some(view) = self.cache.view(hash_key, now) else { return Vec::new() };
        let ttls = &self.settings.cache.ttls;
        view.range(0, u64::MAX)
            .filter_map(|(seq, hit)| {
                let class = TtlClass::of(&Frame::new_checked(&hit.frame).ok()?)?;
                Some((FrameKey { hash_key, seq }, ttls.get(class), hit.frame))
            })
            .collect()
    }

    /// Takes the last epoch reset, if it was flow `hash_key`'s
    /// ([`Cache::take_last_reset`]): right after [`FrameOutcome::Cached`]
    /// with `new_epoch`, the SeqNums under which a shared cache still holds
    /// the old epoch's frames (those this shard held).
    pub fn take_dropped_epoch(&mut self, hash_key: u64) -> Option<EpochReset> {
        self.cache.take_last_reset().filter(|r| r.hash_key == hash_key)
    }

    /// Gives back the memory of expired frames, with bounded work per call;
    /// see [`Cache::expire`].
    pub fn expire(&mut self, now: Instant) -> Sweep {
        self.cache.expire(now)
    }

    /// Drops every cached frame of a flow; returns how many.
    pub fn invalidate(&mut self, hash_key: u64) -> usize {
        self.cache.invalidate(hash_key)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        Stats { cache: self.cache.stats(), ..self.stats }
    }
}

/// One held frame being served.
struct Hit {
    now: Instant,
    src: SocketAddr,
    /// The NACK's StartSeq (THROTTLED echoes it).
    start: u64,
    key: FrameKey,
    group: u16,
    /// The frame, a view of the cache's segment: moved into the last
    /// datagram that sends it, cloned (one reference count) for the others.
    frame: Bytes,
    /// A unicast copy is wanted: unicast retransmit is on, or the NACK is
    /// Proxied from a source that may proxy.
    copy: bool,
}

/// A frame asked for and not held.
struct Miss {
    src: SocketAddr,
    key: FrameKey,
    subtree_id: [u8; 32],
    proxied: bool,
    from_sibling: bool,
}

impl From<Lookup> for Miss {
    fn from(l: Lookup) -> Miss {
        let Lookup { key, src, subtree_id, proxied, from_sibling, .. } = l;
        Miss { src, key, subtree_id, proxied, from_sibling }
    }
}

/// Step 3 for one frame: MISS (within the budget), and recovery when
/// proxying.
fn serve_miss(s: &Settings, stats: &mut Stats, m: Miss, budget: &mut Budget, out: &mut Outbox) {
    stats.cache_misses += 1;
    if !s.suppress_miss {
        respond_within(out, stats, budget, m.src, ResponseRepr::miss());
    }
    if s.proxy_enabled && !m.proxied {
        stats.recover_requested += 1;
        out.effects.push(Effect::Recover {
            hash_key: m.key.hash_key,
            seq: m.key.seq,
            subtree_id: m.subtree_id,
            from_sibling: m.from_sibling,
        });
    }
}

/// Steps 4–5 for one held frame; false when the group tier refused it or
/// the budget cannot pay for its ACK (either ends a range).
fn serve_hit(
    s: &Settings,
    stats: &mut Stats,
    limiter: &mut Limiter,
    h: Hit,
    budget: &mut Budget,
    out: &mut Outbox,
) -> bool {
    let (src, seq) = (h.src, h.key.seq);
    let ack = if s.suppress_ack { 0 } else { RESPONSE_LEN };
    if !budget.fits(ack) {
        // The frame could not be reported: stop before the group tier
        // spends a token on it. The requester asks again for the rest.
        stats.budget_exhausted += 1;
        return false;
    }
    if !limiter.check_group(h.now, src.ip(), h.group) {
        stats.rate_limited_group += 1;
        if s.throttle_responses {
            let r = ResponseRepr::throttled(h.start, BUCKET_PER_GROUP);
            respond_within(out, stats, budget, src, r);
        } else if !s.suppress_ack {
            respond_within(out, stats, budget, src, ResponseRepr::ack(seq, AckFlags(0)));
        }
        return false;
    }
    let mut flags = 0;
    let deferred = s.multicast_retransmit && s.retransmit_dedup;
    let multicast = s.multicast_retransmit && !deferred;
    // The copy must leave room for the ACK that reports it.
    let len = h.frame.len();
    let unicast = h.copy && budget.fits(len.saturating_add(ack));
    // The last of the (up to three) places the frame goes takes it.
    let mut frame = Some(h.frame);
    let mut hand = |last: bool| if last { frame.take() } else { frame.clone() }.unwrap_or_default();
    if multicast {
        flags |= AckFlags::MULTICAST;
        stats.retransmits_multicast += 1;
        let payload = Payload::Frame(hand(!unicast && !deferred));
        out.transmits.push(Transmit { dest: Dest::Group(h.group), payload });
    }
    if unicast {
        budget.spend(len);
        flags |= AckFlags::UNICAST;
        stats.retransmits_unicast += 1;
        let payload = Payload::Frame(hand(!deferred));
        out.transmits.push(Transmit { dest: Dest::Unicast(src), payload });
    } else if h.copy {
        // Still sent to its group (if multicast is on); the ACK says so.
        stats.unicast_over_budget += 1;
    }
    if deferred {
        // The held-back ACK is paid for now: it answers this request.
        budget.spend(ack);
        out.effects.push(Effect::Multicast(PendingMulticast {
            key: h.key,
            group: h.group,
            frame: hand(true),
            ack_to: (!s.suppress_ack).then_some(src),
            ack_flags: flags,
        }));
    } else if !s.suppress_ack {
        respond_within(out, stats, budget, src, ResponseRepr::ack(seq, AckFlags(flags)));
    }
    true
}

/// Queues a 16-byte response if the request's budget can pay for it;
/// otherwise counts the answer as cut short.
fn respond_within(
    out: &mut Outbox,
    stats: &mut Stats,
    budget: &mut Budget,
    src: SocketAddr,
    r: ResponseRepr,
) {
    if budget.spend(RESPONSE_LEN) {
        respond(out, stats, src, r);
    } else {
        stats.budget_exhausted += 1;
    }
}

/// Queues a 16-byte response to the NACK's source and counts it.
fn respond(out: &mut Outbox, stats: &mut Stats, src: SocketAddr, r: ResponseRepr) {
    let Some(payload) = Payload::response(r) else { return };
    match r.kind {
        ResponseKind::Miss => stats.misses_sent += 1,
        ResponseKind::Ack(_) => stats.acks_sent += 1,
        ResponseKind::Throttled { .. } => stats.throttled_sent += 1,
    }
    out.transmits.push(Transmit { dest: Dest::Unicast(src), payload });
}

#[cfg(test)]
mod tests;
