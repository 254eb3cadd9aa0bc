//! The cluster's sans-IO core: one [`Gossip`] engine plus membership,
//! peer exchange and warm restarts. The driver (the engine's `cluster`
//! module) owns the socket,
//! the clocks and the runtime; this owns every decision.
//!
//! # Membership
//! Every [`HEARTBEAT`] the core publishes its [`MemberRecord`] on topic
//! `members`; a sibling is live while its heartbeat is younger than
//! [`LIVE_TIMEOUT`] (see [`super::members`]). Whenever the set of live
//! members changes (ids or addresses, not heartbeats), the engine gets the
//! new view ([`Gossip::set_members`]) and the workers a new gap-ownership
//! view ([`Core::take_siblings`]).
//!
//! Seeds (`--gossip-peers`) and peers learnt by PEX that are not live
//! members are asked for the `members` topic with a G4 pull (and seeds for
//! `pex` too) every [`CONTACT_RETRY`] while this member knows no live
//! sibling, every [`CONTACT_REFRESH`] once it does: that is how a new
//! member joins, and how two halves of a partition find each other again.
//!
//! # Leaving
//! [`Core::leave`] publishes a last record flagged *leaving*: siblings drop
//! the member at once instead of after [`LIVE_TIMEOUT`]. No heartbeats
//! follow.
//!
//! # Warm restarts
//! See [`super::warm`]. Two G6 kinds take a fast path past the engine's
//! per-peer rate limiter (100 msg/s would cap a transfer at 120 kB/s):
//! shard chunks from the siblings this member is fetching from, and shard
//! requests from a live member. Both are authenticated by the engine's
//! envelope check ([`Gossip::authenticate`]: MAC, time window, replay),
//! which counts what it refuses; anything else goes through the engine.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_wire::gossip::{G6_SNAPSHOT, GossipFrame, SnapshotKind, SnapshotRepr};
use ricochet_wire::mac::{ClusterKey, GOSSIP_OVERHEAD};
use ricochet_wire::record::SigningKey;

use super::members::{self, MemberRecord, MemberTable, MembersStore};
use super::pexstore::{PexState, PexStore};
use super::warm::{self, Fetch, FetchEnd, FetchStats, ManifestAction, Outcome, Server};
use crate::gossip::pex::{self, PexEntry};
use crate::gossip::snapshot::EncodedSnapshot;
use crate::gossip::{self, Event, Gossip, Member, Outbox, TopicMode, Transmit};
use crate::retry::{Holding, Sibling, Siblings};

/// How often a member publishes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A member whose latest heartbeat is this old is no longer live.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Seeds and PEX peers are pulled this often while no sibling is live.
pub const CONTACT_RETRY: Duration = Duration::from_secs(2);
/// … and this often once some sibling is.
pub const CONTACT_REFRESH: Duration = Duration::from_secs(10);
/// Most contacts pulled per round.
pub const MAX_CONTACT_PULLS: usize = 8;
/// The local PEX entry is re-signed this often (entries go stale after 1 h).
pub const PEX_RESIGN: Duration = Duration::from_secs(600);
/// Most snapshot chunks handed to the engine per step.
pub const PUMP_BATCH: usize = 64;
/// Snapshot chunks are handed to the engine only while its egress queue
/// holds fewer datagrams than this (its overload threshold is 1024).
pub const PUMP_QUEUE: usize = 256;
/// Egress priority of heartbeats (G5 ACKs always go first).
pub const HEARTBEAT_PRIORITY: u8 = 200;
/// Egress priority of PEX records.
pub const PEX_PRIORITY: u8 = 100;
/// Egress priority of G6 frames: lowest, so a transfer never delays
/// membership.
pub const SNAPSHOT_PRIORITY: u8 = 0;

/// Who this member is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The per-start ed25519 key: PEX entries are signed with it and the
    /// member id is BLAKE3 of its public half.
    pub key: SigningKey,
    /// The gossip address siblings reach us at.
    pub gossip: SocketAddr,
    /// The NACK address siblings forward gaps to.
    pub nack: SocketAddr,
    /// Unix ms when the process started.
    pub incarnation_ms: u64,
}

/// Tuning of a [`Core`].
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// The gossip engine's configuration (seed, `--max-datagram`, …).
    pub gossip: gossip::Config,
    /// Most bytes of frames in a served snapshot.
    pub warm_max_bytes: usize,
}

/// Something the driver acts on or logs.
#[derive(Debug, Clone)]
pub enum Note {
    /// The live set changed.
    MembersChanged {
        /// Live siblings now (this member not included).
        live: Vec<MemberRecord>,
        /// Members that became live.
        joined: usize,
        /// Members that stopped being live.
        left: usize,
    },
    /// Build a snapshot of the hot cache and hand it to
    /// [`Core::snapshot_built`].
    BuildSnapshot {
        /// The requester.
        to: SocketAddr,
        /// Its request id.
        rid: u32,
    },
    /// Import these frames into the cache, then call [`Core::imported`].
    Import {
        /// The sibling they came from.
        from: SocketAddr,
        /// The frames.
        frames: Vec<Bytes>,
    },
    /// The warm-up is over.
    WarmupOver(Box<WarmReport>),
}

/// How the last warm-up went (`/debug/cluster`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WarmReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Frames imported.
    pub frames: u64,
    /// Bytes of frames imported.
    pub bytes: u64,
    /// Frames that could not be imported (not keyed, or workers busy).
    pub dropped: u64,
    /// The sibling the snapshot came from.
    pub from: Option<SocketAddr>,
    /// Milliseconds from start to end.
    pub duration_ms: u64,
    /// The transfer's counters.
    pub fetch: FetchStats,
}

/// Counters of the core (besides the engine's and the server's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Heartbeats published.
    pub heartbeats: u64,
    /// Heartbeats the engine refused (applied locally, carried by
    /// anti-entropy).
    pub heartbeats_refused: u64,
    /// Changes of the live set.
    pub membership_changes: u64,
    /// Gap-ownership views offered to the workers again because an inbox
    /// was full.
    pub siblings_retries: u64,
    /// G4 pulls sent to seeds and PEX peers.
    pub contact_pulls: u64,
    /// G6 frames taken on the fast path.
    pub g6_fast_path: u64,
    /// G6 frames that matched no request of ours.
    pub g6_unsolicited: u64,
    /// G6 frames the engine could not hand over (send refused).
    pub g6_send_errors: u64,
    /// Rumors whose retry budget ran out.
    pub rumors_dropped: u64,
    /// Warm-ups by outcome, indexed like [`Outcome::ALL`].
    pub warmups: [u64; 6],
    /// Frames imported by warm-ups.
    pub warm_frames: u64,
    /// Bytes of frames imported by warm-ups.
    pub warm_bytes: u64,
    /// Frames a warm-up could not import.
    pub warm_dropped: u64,
    /// Leaving records published.
    pub leaves: u64,
    /// Views handed to the workers because a sibling's holdings changed
    /// (membership unchanged).
    pub holdings_updates: u64,
}

/// No frames imported: `(frames, bytes, dropped)` of a warm-up without an
/// import.
const NONE: (u64, u64, u64) = (0, 0, 0);

#[derive(Debug)]
struct Importing {
    from: SocketAddr,
    started: Instant,
    fetch: FetchStats,
}

/// The cluster core (module docs).
#[derive(Debug)]
pub struct Core {
    gossip: Gossip,
    me: MemberRecord,
    signing: SigningKey,
    table: Arc<Mutex<MemberTable>>,
    pex: Arc<Mutex<PexState>>,
    seeds: Vec<SocketAddr>,
    live: Vec<MemberRecord>,
    pending_siblings: Option<Siblings>,
    /// The last view built for the workers, and the member table version
    /// it was built at (a heartbeat with new holdings changes the view).
    last_view: (Siblings, i64),
    /// This endpoint's own holdings digest, sent with each heartbeat.
    holdings: Vec<Holding>,
    server: Server,
    fetch: Option<Fetch>,
    importing: Option<Importing>,
    warm_deadline: Option<Instant>,
    last_warm: Option<WarmReport>,
    out: Outbox,
    sends: Vec<(SocketAddr, Vec<u8>)>,
    clock: (Instant, u64),
    last_step: Instant,
    next_tick: Instant,
    next_contact: Instant,
    next_resign: Instant,
    contact_cursor: usize,
    leaving: bool,
    rid_state: u64,
    settings: CoreSettings,
    notes: Vec<Note>,
    counters: Counters,
}

impl Core {
    /// A core for `identity`, with the wall clock `unix_ms` at `now`.
    pub fn new(
        identity: Identity,
        key: ClusterKey,
        settings: CoreSettings,
        now: Instant,
        unix_ms: u64,
    ) -> Result<Core, String> {
        let public = identity.key.verifying_key().to_bytes();
        let id = ricochet_wire::record::node_id(&public);
        let me = MemberRecord {
            id,
            incarnation_ms: identity.incarnation_ms,
            heartbeat_ms: unix_ms,
            leaving: false,
            gossip: identity.gossip,
            nack: identity.nack,
        };
        if me.encode().is_none() {
            return Err(format!(
                "cannot advertise gossip address {} / NACK address {} to siblings: an address \
                 must be a unicast IP with a port",
                identity.gossip, identity.nack
            ));
        }
        let mut table = MemberTable::new();
        table.set_now(unix_ms);
        let table = Arc::new(Mutex::new(table));
        let mut pex_state = PexState::new(public);
        pex_state.set_now(unix_ms / 1000);
        let pex = Arc::new(Mutex::new(pex_state));
        let rid_state = u64::from_le_bytes(
            blake3::hash(&settings.gossip.seed).as_bytes()[..8].try_into().unwrap_or([1; 8]),
        ) | 1;
        let mut g = Gossip::new(id, identity.gossip, key, settings.gossip.clone(), now);
        g.set_unix_time(now, unix_ms);
        let topics: [(&[u8], TopicMode, u8); 2] = [
            (
                members::TOPIC,
                TopicMode::StatefulMerge(Box::new(MembersStore::new(table.clone()))),
                HEARTBEAT_PRIORITY,
            ),
            (
                pex::TOPIC,
                TopicMode::StatefulMerge(Box::new(PexStore::new(pex.clone()))),
                PEX_PRIORITY,
            ),
        ];
        for (name, mode, priority) in topics {
            g.register_topic(name, mode, priority).map_err(|e| e.to_string())?;
            g.subscribe(name).map_err(|e| e.to_string())?;
        }
        let mut core = Core {
            gossip: g,
            me,
            signing: identity.key,
            table,
            pex,
            seeds: Vec::new(),
            live: Vec::new(),
            pending_siblings: None,
            last_view: (Siblings::default(), -1),
            holdings: Vec::new(),
            server: Server::new(),
            fetch: None,
            importing: None,
            warm_deadline: None,
            last_warm: None,
            out: Outbox::new(),
            sends: Vec::new(),
            clock: (now, unix_ms),
            last_step: now,
            next_tick: now,
            next_contact: now,
            next_resign: now,
            contact_cursor: 0,
            leaving: false,
            rid_state,
            settings,
            notes: Vec::new(),
            counters: Counters::default(),
        };
        core.resign(now);
        Ok(core)
    }

    // ------------------------------------------------------------------
    // Accessors
    // ------------------------------------------------------------------

    /// This member's record (as of its last heartbeat).
    pub fn me(&self) -> &MemberRecord {
        &self.me
    }

    /// The live siblings, sorted by id.
    pub fn live(&self) -> &[MemberRecord] {
        &self.live
    }

    /// The gossip engine.
    pub fn gossip(&self) -> &Gossip {
        &self.gossip
    }

    /// The membership table.
    pub fn table(&self) -> MutexGuard<'_, MemberTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Peer exchange state.
    pub fn pex(&self) -> MutexGuard<'_, PexState> {
        self.pex.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The seeds in use.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }

    /// The snapshot server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The warm-up in progress, if any.
    pub fn fetch(&self) -> Option<&Fetch> {
        self.fetch.as_ref()
    }

    /// Whether a warm-up is in progress (`/readyz` answers 503 "warming").
    pub fn warming(&self) -> bool {
        self.fetch.is_some() || self.importing.is_some()
    }

    /// How the last warm-up ended.
    pub fn last_warm(&self) -> Option<&WarmReport> {
        self.last_warm.as_ref()
    }

    /// The core's counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether [`Core::leave`] was called.
    pub fn leaving(&self) -> bool {
        self.leaving
    }

    /// The wall clock at `now`, unix ms.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let (at, ms) = self.clock;
        ms.saturating_add(now.saturating_duration_since(at).as_millis() as u64)
    }

    // ------------------------------------------------------------------
    // Inputs
    // ------------------------------------------------------------------

    /// Re-anchors the wall clock.
    pub fn set_unix_time(&mut self, now: Instant, unix_ms: u64) {
        self.clock = (now, unix_ms);
        self.gossip.set_unix_time(now, unix_ms);
    }

    /// The resolved `--gossip-peers`.
    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>) {
        self.seeds = seeds.into_iter().filter(|s| *s != self.me.gossip).collect();
    }

    /// Starts warming the cache from siblings, bounded by `timeout`.
    pub fn start_warmup(&mut self, now: Instant, timeout: Duration) {
        let rid = self.next_rid();
        self.fetch = Some(Fetch::new(rid, now, timeout));
        self.warm_deadline = Some(now + timeout);
        self.after(now);
    }

    /// One datagram from `from` (IPv4-mapped sources already canonical).
    pub fn handle(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if !self.fast_g6(now, from, bytes) {
            self.gossip.handle(now, from, bytes, &mut self.out);
        }
        self.after(now);
    }

    /// A rumor one of the workers' dedup shards admitted (see
    /// [`Gossip::handle_admitted`]).
    pub fn handle_admitted(
        &mut self,
        now: Instant,
        from: SocketAddr,
        body: &[u8],
        admission: gossip::dedup::Admission,
    ) {
        self.gossip.handle_admitted(now, from, body, admission, &mut self.out);
        self.after(now);
    }

    /// Timers: the engine's, heartbeats, contacts, housekeeping, warm-up.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.gossip.handle_timeout(now, &mut self.out);
        if now >= self.next_tick {
            self.next_tick = now + HEARTBEAT;
            let unix = self.unix_ms(now);
            self.table().set_now(unix);
            self.table().purge();
            {
                let mut p = self.pex();
                p.set_now(unix / 1000);
                p.prune();
            }
            self.server.expire(now);
            if !self.leaving {
                self.publish_heartbeat(now, false);
            }
        }
        if now >= self.next_contact {
            self.pull_contacts(now);
            let wait = if self.live.is_empty() { CONTACT_RETRY } else { CONTACT_REFRESH };
            self.next_contact = now + wait;
        }
        if now >= self.next_resign {
            self.resign(now);
        }
        if self.warm_deadline.is_some_and(|d| now >= d)
            && let Some(imp) = self.importing.take()
        {
            self.finish_warm(now, Outcome::Timeout, Some(imp.from), imp.started, imp.fetch, NONE);
        }
        self.after(now);
    }

    /// When [`Core::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_tick.min(self.next_contact).min(self.next_resign);
        if let Some(g) = self.gossip.poll_timeout() {
            t = t.min(g);
        }
        if let Some(f) = self.fetch.as_ref().and_then(Fetch::next_timeout) {
            t = t.min(f);
        }
        if self.importing.is_some()
            && let Some(d) = self.warm_deadline
        {
            t = t.min(d);
        }
        if self.server.has_queued() && self.gossip.queued() < PUMP_QUEUE {
            // More chunks to hand over right away.
            t = t.min(self.last_step);
        }
        t
    }

    /// A snapshot asked for by [`Note::BuildSnapshot`] is ready (or failed).
    pub fn snapshot_built(
        &mut self,
        now: Instant,
        to: SocketAddr,
        rid: u32,
        snap: Result<EncodedSnapshot, String>,
    ) {
        if let Some(frame) = self.server.built(now, to, rid, snap) {
            self.send_frame(now, to, &frame);
        }
        self.after(now);
    }

    /// The frames of [`Note::Import`] are in the cache: `frames` of them,
    /// `bytes` in all; `dropped` could not be imported.
    pub fn imported(&mut self, now: Instant, frames: u64, bytes: u64, dropped: u64) {
        self.counters.warm_frames += frames;
        self.counters.warm_bytes += bytes;
        self.counters.warm_dropped += dropped;
        if let Some(imp) = self.importing.take() {
            // The counts go into the report before its note does, so the
            // driver logs them.
            let counts = (frames, bytes, dropped);
            self.finish_warm(now, Outcome::Done, Some(imp.from), imp.started, imp.fetch, counts);
        } else if let Some(r) = self.last_warm.as_mut() {
            // Finished after the timeout: count what it brought anyway.
            r.frames += frames;
            r.bytes += bytes;
            r.dropped += dropped;
        }
        self.after(now);
    }

    /// Publishes a leaving record; no heartbeats follow.
    pub fn leave(&mut self, now: Instant) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        self.counters.leaves += 1;
        self.publish_heartbeat(now, true);
        self.after(now);
    }

    // ------------------------------------------------------------------
    // Outputs
    // ------------------------------------------------------------------

    /// Takes the datagrams to send.
    pub fn drain_transmits(&mut self) -> std::vec::Drain<'_, Transmit> {
        self.out.drain_transmits()
    }

    /// Takes the rumors originated here since the last call, for the
    /// workers' dedup shards (only with external dedup).
    pub fn drain_marks(&mut self) -> std::vec::Drain<'_, (gossip::RumorId, u8)> {
        self.out.marks.drain(..)
    }

    /// Takes the notes queued since the last call.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// Sets this endpoint's holdings digest (its workers' most recently
    /// active flows), sent with the next heartbeats.
    pub fn set_holdings(&mut self, holdings: Vec<Holding>) {
        self.holdings = holdings;
    }

    /// The holdings digest sent with heartbeats.
    pub fn holdings(&self) -> &[Holding] {
        &self.holdings
    }

    /// The gap-ownership view to hand to the workers, once per change.
    pub fn take_siblings(&mut self) -> Option<Siblings> {
        self.pending_siblings.take()
    }

    /// Some worker could not take `view`: offer it again after the next
    /// step (unless a newer one replaced it).
    pub fn siblings_not_taken(&mut self, view: Siblings) {
        self.counters.siblings_retries += 1;
        self.pending_siblings.get_or_insert(view);
    }

    // ------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------

    fn next_rid(&mut self) -> u32 {
        // xorshift64*: request ids need only be unlikely to repeat.
        let mut x = self.rid_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rid_state = x;
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32).max(1)
    }

    /// Everything that follows any input: engine events, chunk pumping,
    /// the warm-up, liveness.
    fn after(&mut self, now: Instant) {
        self.last_step = now;
        let events: Vec<Event> = self.out.drain_events().collect();
        for ev in events {
            match ev {
                Event::Frame { from, bytes } => match GossipFrame::parse(&bytes) {
                    Ok(GossipFrame::Snapshot(r)) => self.on_snapshot_frame(now, from, &r),
                    // The engine hands over G6 frames only.
                    Ok(_) => {}
                    Err(_) => {}
                },
                Event::RumorDropped { .. } => self.counters.rumors_dropped += 1,
                _ => {}
            }
        }
        self.pump(now);
        self.poll_fetch(now);
        self.refresh_live(now);
    }

    /// The fast path for shard chunks and shard requests (module docs).
    /// True if the datagram was taken.
    fn fast_g6(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        if bytes.len() > self.settings.gossip.max_datagram
            || bytes.len() < GOSSIP_OVERHEAD + 7
            || bytes[..2] != G6_SNAPSHOT.to_be_bytes()
        {
            return false;
        }
        let wanted = match SnapshotKind::from_u8(bytes[6]) {
            Some(SnapshotKind::ShardChunk) => {
                self.fetch.as_ref().is_some_and(|f| f.is_sender(from))
            }
            Some(SnapshotKind::ShardRequest) => self.is_live(from),
            _ => false,
        };
        if !wanted {
            return false;
        }
        // Refused (forged, version 1, stale or replayed): counted there.
        let Some(body) = self.gossip.authenticate(now, bytes) else { return true };
        let Ok(repr) = SnapshotRepr::parse(body) else { return false };
        self.counters.g6_fast_path += 1;
        self.on_snapshot_frame(now, from, &repr);
        true
    }

    fn on_snapshot_frame(&mut self, now: Instant, from: SocketAddr, r: &SnapshotRepr<'_>) {
        match *r {
            SnapshotRepr::ManifestRequest { request_id } => {
                let member = self.is_live(from);
                match self.server.on_manifest_request(now, from, request_id, member) {
                    ManifestAction::Build => {
                        self.notes.push(Note::BuildSnapshot { to: from, rid: request_id });
                    }
                    ManifestAction::Answer(frame) => self.send_frame(now, from, &frame),
                    ManifestAction::Ignore => {}
                }
            }
            SnapshotRepr::ShardRequest { request_id, shard_index, first_chunk, chunk_count } => {
                if !self.is_live(from)
                    || !self.server.on_shard_request(
                        now,
                        from,
                        request_id,
                        shard_index,
                        first_chunk,
                        chunk_count,
                    )
                {
                    self.counters.g6_unsolicited += 1;
                }
            }
            SnapshotRepr::Manifest { .. } | SnapshotRepr::ShardChunk { .. } => {
                let taken = self.fetch.as_mut().is_some_and(|f| f.on_frame(now, from, r));
                if !taken {
                    self.counters.g6_unsolicited += 1;
                }
            }
        }
    }

    fn send_frame(&mut self, now: Instant, dest: SocketAddr, frame: &[u8]) {
        if self.gossip.send_frame(now, dest, frame, SNAPSHOT_PRIORITY, &mut self.out).is_err() {
            self.counters.g6_send_errors += 1;
        }
    }

    /// Hands queued snapshot chunks to the engine while its queue is short.
    fn pump(&mut self, now: Instant) {
        for _ in 0..PUMP_BATCH {
            if self.gossip.queued() >= PUMP_QUEUE {
                break;
            }
            let Some((dest, frame)) = self.server.next_chunk() else { break };
            self.send_frame(now, dest, &frame);
        }
    }

    fn poll_fetch(&mut self, now: Instant) {
        let Some(fetch) = self.fetch.as_mut() else { return };
        let live: Vec<SocketAddr> = self.live.iter().map(|r| r.gossip).collect();
        let mut sends = std::mem::take(&mut self.sends);
        let end = fetch.poll(now, &live, &mut sends);
        for (dest, frame) in sends.drain(..) {
            self.send_frame(now, dest, &frame);
        }
        self.sends = sends;
        let Some(end) = end else { return };
        let Some(fetch) = self.fetch.take() else { return };
        match end {
            FetchEnd::Blob { from, blob } => {
                let (frames, _clean) = warm::unframe_blob(&blob);
                self.importing =
                    Some(Importing { from, started: fetch.started(), fetch: fetch.stats() });
                self.notes.push(Note::Import { from, frames });
            }
            FetchEnd::Finished(outcome) => {
                self.finish_warm(now, outcome, None, fetch.started(), fetch.stats(), NONE);
            }
        }
    }

    fn finish_warm(
        &mut self,
        now: Instant,
        outcome: Outcome,
        from: Option<SocketAddr>,
        started: Instant,
        fetch: FetchStats,
        (frames, bytes, dropped): (u64, u64, u64),
    ) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.counters.warmups[i] += 1;
        }
        let report = WarmReport {
            outcome,
            frames,
            bytes,
            dropped,
            from,
            duration_ms: now.saturating_duration_since(started).as_millis() as u64,
            fetch,
        };
        self.fetch = None;
        self.importing = None;
        self.warm_deadline = None;
        self.last_warm = Some(report.clone());
        self.notes.push(Note::WarmupOver(Box::new(report)));
    }

    fn is_live(&self, addr: SocketAddr) -> bool {
        self.live.iter().any(|r| r.gossip == addr)
    }

    fn publish_heartbeat(&mut self, now: Instant, leaving: bool) {
        let unix = self.unix_ms(now);
        self.table().set_now(unix);
        self.me.heartbeat_ms = unix.max(self.me.heartbeat_ms);
        self.me.leaving = leaving;
        // As many flows as fit one rumor (no digest once leaving).
        let room = self.gossip.max_rumor_payload(members::TOPIC.len());
        let fit = room.saturating_sub(members::BASE_MAX + 1) / members::HOLDING_LEN;
        let held = if leaving { &[][..] } else { &self.holdings[..self.holdings.len().min(fit)] };
        let Some(record) = self.me.encode_with(held) else { return };
        let published =
            self.gossip.publish(now, members::TOPIC, &record, HEARTBEAT_PRIORITY, &mut self.out);
        match published {
            Ok(_) => self.counters.heartbeats += 1,
            Err(_) => {
                // Overloaded: anti-entropy carries it instead.
                self.counters.heartbeats_refused += 1;
                if let Some(store) = self.gossip.store_mut(members::TOPIC) {
                    let _ = store.apply(&record);
                }
            }
        }
    }

    /// Pulls `members` from seeds and PEX peers that are not live.
    fn pull_contacts(&mut self, now: Instant) {
        let live: BTreeSet<SocketAddr> = self.live.iter().map(|r| r.gossip).collect();
        let seeds: BTreeSet<SocketAddr> = self.seeds.iter().copied().collect();
        let mut contacts: Vec<SocketAddr> = self.seeds.clone();
        {
            let p = self.pex();
            let unix = self.unix_ms(now) / 1000;
            contacts.extend(p.book().iter().filter(|e| !e.is_stale(unix)).map(|e| e.addr));
        }
        let mut seen = BTreeSet::new();
        contacts.retain(|c| *c != self.me.gossip && !live.contains(c) && seen.insert(*c));
        if contacts.is_empty() {
            return;
        }
        let start = self.contact_cursor % contacts.len();
        contacts.rotate_left(start);
        self.contact_cursor = self.contact_cursor.wrapping_add(MAX_CONTACT_PULLS);
        for c in contacts.into_iter().take(MAX_CONTACT_PULLS) {
            if self.gossip.pull(now, c, members::TOPIC, &mut self.out).is_ok() {
                self.counters.contact_pulls += 1;
            }
            if seeds.contains(&c) {
                let _ = self.gossip.pull(now, c, pex::TOPIC, &mut self.out);
            }
        }
    }

    /// Re-signs the local PEX entry.
    fn resign(&mut self, now: Instant) {
        self.next_resign = now + PEX_RESIGN;
        let unix = self.unix_ms(now) / 1000;
        if let Ok(entry) = PexEntry::sign(&self.signing, self.me.gossip, unix) {
            let mut p = self.pex();
            p.set_now(unix);
            let _ = p.set_local(entry);
        }
    }

    /// Recomputes the live set; on a change, updates the engine's view and
    /// queues a gap-ownership view for the workers.
    fn refresh_live(&mut self, now: Instant) {
        let unix = self.unix_ms(now);
        let live = {
            let mut t = self.table();
            t.set_now(unix);
            t.live(&self.me, LIVE_TIMEOUT)
        };
        let key = |r: &MemberRecord| (r.id, r.gossip, r.nack);
        let before: BTreeSet<_> = self.live.iter().map(key).collect();
        let after: BTreeSet<_> = live.iter().map(key).collect();
        if before == after {
            self.live = live;
            // Same members; a changed holdings digest still needs a view.
            let version = self.table().version();
            if version != self.last_view.1 {
                let view = self.build_view();
                if view != self.last_view.0 {
                    self.counters.holdings_updates += 1;
                    self.pending_siblings = Some(view.clone());
                }
                self.last_view = (view, version);
            }
            return;
        }
        let joined = after.difference(&before).count();
        let left = before.difference(&after).count();
        let was_alone = self.live.is_empty();
        self.live = live;
        let mut view: Vec<Member> =
            self.live.iter().map(|r| Member { id: r.id, addr: r.gossip }).collect();
        view.push(Member { id: self.me.id, addr: self.me.gossip });
        self.gossip.set_members(&view);
        let view = self.build_view();
        let version = self.table().version();
        self.last_view = (view.clone(), version);
        self.pending_siblings = Some(view);
        self.counters.membership_changes += 1;
        self.notes.push(Note::MembersChanged { live: self.live.clone(), joined, left });
        if was_alone && !self.leaving {
            // New siblings should hear from us now, not a heartbeat later.
            self.next_tick = now;
        }
    }

    /// The workers' view: live siblings with their holdings digests.
    fn build_view(&self) -> Siblings {
        let siblings = self.live.iter().map(|r| Sibling { id: r.sibling_id(), nack: r.nack });
        let mut view = Siblings::new(self.me.sibling_id(), siblings);
        let table = self.table();
        for r in &self.live {
            let held = table.holdings(&r.id);
            if !held.is_empty() {
                view = view.with_holdings(r.sibling_id(), held.to_vec());
            }
        }
        view
    }
}
