//! Warm restarts over G6: a starting endpoint pulls the hot part of a
//! sibling's cache (issue 6, "warm restart").
//!
//! # The snapshot
//! The serving sibling collects its hot frames ([`crate::rt::Control::export_hot`],
//! at most [`WARM_MAX_BYTES`] of frames), frames them as a blob
//! `([u32 length][frame])*` ([`frame_blob`]) and codes it with
//! [`EncodedSnapshot`] into `k` data shards plus one parity shard, chunked to
//! the datagram budget ([`snapshot_params`]). The G6 manifest carries the
//! blob's BLAKE3 hash; the receiver checks the reassembled blob against it
//! and imports nothing on a mismatch.
//!
//! # Serving ([`Server`])
//! - Only live members are served; a manifest request starts one snapshot
//!   build (done off the control task by the driver), or reuses one built
//!   within [`SNAPSHOT_REUSE`]. At most [`MAX_SESSIONS`] sessions (built or
//!   building) exist at once; more requests are refused and counted.
//! - A session answers shard requests for its request id with chunks, at
//!   most [`MAX_QUEUED_CHUNKS`] queued per session (the rest of an
//!   over-long request is dropped; the requester asks again), and ends
//!   [`SESSION_IDLE`] after its last request. The driver paces chunks into
//!   the gossip engine's egress queue, under its global byte-rate cap.
//!
//! # Fetching ([`Fetch`])
//! 1. Wait up to [`MEMBERS_WAIT`] for a live sibling; none: done
//!    (`no_sibling`).
//! 2. Ask up to [`MANIFEST_PEERS`] live siblings for a manifest, again every
//!    [`MANIFEST_RETRY`]; give up after [`MANIFEST_WAIT`] without an answer
//!    (`no_answer`), else take what came within [`MANIFEST_GRACE`] of the
//!    first answer (or as soon as all answered).
//! 3. Pick one ([`choose_manifest`] over the non-empty manifests; all empty:
//!    done, `empty`) and fetch its shards from that sibling: runs of [`RUN`]
//!    chunks, at most [`WINDOW`] chunks outstanding. When the first pass is
//!    over and progress stops for [`REPAIR_AFTER`], the missing runs are
//!    asked again (a *repair round*); from the second round on, one more
//!    parity shard is fetched too, so chunks a shard keeps losing are
//!    covered by parity. A transfer that makes no progress for [`STALL`],
//!    exceeds [`MAX_ROUNDS`] or fails its hash moves to the next manifest.
//! 4. The whole warm-up is bounded by `--warmup-timeout` (`timeout`).
//!
//! # Contract
//! - Pure: time enters as `now`; frames to send leave through a
//!   caller-owned list. Chunks are untrusted and go through
//!   [`Reassembler`], bounded by [`REASSEMBLY_LIMIT`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_wire::gossip::SnapshotRepr;

use crate::gossip::snapshot::{
    ChunkOutcome, EncodedSnapshot, Manifest, Reassembler, SnapshotError, SnapshotParams,
    choose_manifest,
};

/// Most bytes of frames a sibling puts in one snapshot (64 MiB).
pub const WARM_MAX_BYTES: usize = 64 << 20;
/// How long the serving side waits for its workers' hot frames.
pub const EXPORT_WAIT: Duration = Duration::from_secs(1);
/// Most bytes a receiver holds while reassembling (shards and parity).
pub const REASSEMBLY_LIMIT: usize = 2 * WARM_MAX_BYTES + (1 << 20);
/// Most snapshot sessions (built or building) a sibling serves at once.
pub const MAX_SESSIONS: usize = 4;
/// A session ends this long after its last request.
pub const SESSION_IDLE: Duration = Duration::from_secs(30);
/// A build that never finished is forgotten after this.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(30);
/// A snapshot this young is reused for another requester.
pub const SNAPSHOT_REUSE: Duration = Duration::from_secs(10);
/// Most chunks queued for one session.
pub const MAX_QUEUED_CHUNKS: usize = 4096;
/// Siblings asked for a manifest.
pub const MANIFEST_PEERS: usize = 3;
/// Manifest requests are repeated this often until answered.
pub const MANIFEST_RETRY: Duration = Duration::from_millis(500);
/// No manifest after this long: give up.
pub const MANIFEST_WAIT: Duration = Duration::from_secs(5);
/// After the first manifest, wait this long for the others.
pub const MANIFEST_GRACE: Duration = Duration::from_secs(1);
/// How long to wait for a live sibling before giving up.
pub const MEMBERS_WAIT: Duration = Duration::from_secs(3);
/// Chunks per shard request.
pub const RUN: u16 = 32;
/// Most chunks requested and not yet received.
pub const WINDOW: u32 = 128;
/// Quiet time after which missing chunks are asked again.
pub const REPAIR_AFTER: Duration = Duration::from_millis(300);
/// Quiet time after which a transfer is abandoned.
pub const STALL: Duration = Duration::from_secs(3);
/// Most repair rounds per transfer.
pub const MAX_ROUNDS: u32 = 12;

const LEN_PREFIX: usize = 4;

/// Frames `frames` as `([u32 length][frame])*`, stopping before the first
/// frame that would take the blob past `max_bytes`. Returns the blob and
/// how many frames it holds.
pub fn frame_blob(frames: &[Bytes], max_bytes: usize) -> (Vec<u8>, usize) {
    let mut blob = Vec::new();
    let mut n = 0;
    for f in frames {
        let Ok(len) = u32::try_from(f.len()) else { continue };
        if blob.len() + LEN_PREFIX + f.len() > max_bytes {
            break;
        }
        blob.extend_from_slice(&len.to_be_bytes());
        blob.extend_from_slice(f);
        n += 1;
    }
    (blob, n)
}

/// Splits a blob made by [`frame_blob`]. Returns the frames and whether
/// the whole blob parsed (a malformed tail is dropped).
pub fn unframe_blob(blob: &[u8]) -> (Vec<Bytes>, bool) {
    let blob = Bytes::copy_from_slice(blob);
    let mut out = Vec::new();
    let mut at = 0;
    while at < blob.len() {
        let Some(head) = blob.get(at..at + LEN_PREFIX) else { return (out, false) };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let start = at + LEN_PREFIX;
        let Some(end) = start.checked_add(len).filter(|&e| e <= blob.len()) else {
            return (out, false);
        };
        out.push(blob.slice(start..end));
        at = end;
    }
    (out, true)
}

/// Coding parameters for a blob of `blob_len` bytes: one parity shard, and
/// as many data shards (at least 2) as keep every shard within 65 535
/// chunks of `chunk_size` bytes.
pub fn snapshot_params(blob_len: usize, chunk_size: usize) -> SnapshotParams {
    let chunk_size = chunk_size.max(2);
    let per_shard = chunk_size.saturating_mul(usize::from(u16::MAX) - 1);
    let k = blob_len.div_ceil(per_shard).clamp(2, 200);
    SnapshotParams {
        data_shards: k as u8,
        parity_shards: 1,
        chunk_size: u32::try_from(chunk_size).unwrap_or(u32::MAX),
    }
}

/// Builds a sibling's snapshot from its hot frames, stamped with `hlc`
/// (unix ms). The fingerprint is the blob hash's first 8 bytes.
pub fn build_snapshot(
    frames: &[Bytes],
    max_bytes: usize,
    hlc: u64,
    chunk_size: usize,
) -> Result<(EncodedSnapshot, usize), SnapshotError> {
    let (blob, n) = frame_blob(frames, max_bytes);
    let h = blake3::hash(&blob);
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&h.as_bytes()[..8]);
    let params = snapshot_params(blob.len(), chunk_size);
    let snap = EncodedSnapshot::encode(&blob, hlc, u64::from_be_bytes(fp), params)?;
    Ok((snap, n))
}

fn emit(repr: &SnapshotRepr<'_>) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf).ok()?;
    Some(buf)
}

// ---------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------

/// Counters of the serving side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServeStats {
    /// Manifest requests received.
    pub manifest_requests: u64,
    /// Manifest requests from a source that is not a live member.
    pub refused_not_member: u64,
    /// Manifest requests refused: [`MAX_SESSIONS`] sessions exist.
    pub refused_busy: u64,
    /// Snapshots built.
    pub snapshots_built: u64,
    /// Snapshot builds that failed.
    pub build_failures: u64,
    /// Sessions started (snapshots served to a requester).
    pub snapshots_served: u64,
    /// Manifests sent (first answers and repeats).
    pub manifests_sent: u64,
    /// Shard requests for a known session.
    pub shard_requests: u64,
    /// Shard requests for no session of ours.
    pub unknown_session: u64,
    /// Chunks sent.
    pub chunks_sent: u64,
    /// Chunk bytes sent.
    pub chunk_bytes: u64,
    /// Chunks not queued: the session's queue was full.
    pub chunks_dropped: u64,
    /// Sessions ended idle.
    pub sessions_expired: u64,
}

/// What to do with a manifest request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestAction {
    /// Build a snapshot, then call [`Server::built`].
    Build,
    /// Send this manifest frame.
    Answer(Vec<u8>),
    /// Nothing (refused, or a build is under way).
    Ignore,
}

#[derive(Debug)]
struct Session {
    snap: Arc<EncodedSnapshot>,
    manifest: Vec<u8>,
    last: Instant,
    /// `(shard, next chunk, end chunk exclusive)`.
    runs: VecDeque<(u8, u32, u32)>,
    queued: usize,
}

/// The serving side of warm restarts (module docs).
#[derive(Debug, Default)]
pub struct Server {
    sessions: BTreeMap<(SocketAddr, u32), Session>,
    building: BTreeMap<(SocketAddr, u32), Instant>,
    recent: Option<(Instant, Arc<EncodedSnapshot>)>,
    stats: ServeStats,
}

impl Server {
    /// No sessions.
    pub fn new() -> Self {
        Server::default()
    }

    /// The counters.
    pub fn stats(&self) -> ServeStats {
        self.stats
    }

    /// Sessions served now, and builds under way.
    pub fn sessions(&self) -> (usize, usize) {
        (self.sessions.len(), self.building.len())
    }

    /// A manifest request `rid` from `from`; `member` tells whether `from`
    /// is a live member.
    pub fn on_manifest_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        rid: u32,
        member: bool,
    ) -> ManifestAction {
        self.stats.manifest_requests += 1;
        if !member {
            self.stats.refused_not_member += 1;
            return ManifestAction::Ignore;
        }
        let key = (from, rid);
        if let Some(s) = self.sessions.get_mut(&key) {
            s.last = now;
            self.stats.manifests_sent += 1;
            return ManifestAction::Answer(s.manifest.clone());
        }
        if self.building.contains_key(&key) {
            return ManifestAction::Ignore;
        }
        self.expire(now);
        if self.sessions.len() + self.building.len() >= MAX_SESSIONS {
            self.stats.refused_busy += 1;
            return ManifestAction::Ignore;
        }
        if let Some((at, snap)) = &self.recent
            && now.saturating_duration_since(*at) < SNAPSHOT_REUSE
        {
            let snap = snap.clone();
            return match self.open(now, key, snap) {
                Some(frame) => ManifestAction::Answer(frame),
                None => ManifestAction::Ignore,
            };
        }
        self.building.insert(key, now);
        ManifestAction::Build
    }

    /// A build asked for by [`ManifestAction::Build`] finished. Returns the
    /// manifest frame to send to `from`, if it succeeded and is still
    /// wanted.
    pub fn built(
        &mut self,
        now: Instant,
        from: SocketAddr,
        rid: u32,
        snap: Result<EncodedSnapshot, String>,
    ) -> Option<Vec<u8>> {
        let wanted = self.building.remove(&(from, rid)).is_some();
        let snap = match snap {
            Ok(s) => Arc::new(s),
            Err(_) => {
                self.stats.build_failures += 1;
                return None;
            }
        };
        self.stats.snapshots_built += 1;
        self.recent = Some((now, snap.clone()));
        if !wanted {
            return None;
        }
        self.open(now, (from, rid), snap)
    }

    fn open(
        &mut self,
        now: Instant,
        key: (SocketAddr, u32),
        snap: Arc<EncodedSnapshot>,
    ) -> Option<Vec<u8>> {
        let manifest = emit(&snap.manifest().to_repr(key.1))?;
        self.stats.snapshots_served += 1;
        self.stats.manifests_sent += 1;
        self.sessions.insert(
            key,
            Session {
                snap,
                manifest: manifest.clone(),
                last: now,
                runs: VecDeque::new(),
                queued: 0,
            },
        );
        Some(manifest)
    }

    /// A shard request: queues the chunks asked for (clipped to the shard
    /// and the session's queue). False if it matches no session.
    pub fn on_shard_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        rid: u32,
        shard: u8,
        first: u16,
        count: u16,
    ) -> bool {
        let Some(s) = self.sessions.get_mut(&(from, rid)) else {
            self.stats.unknown_session += 1;
            return false;
        };
        self.stats.shard_requests += 1;
        s.last = now;
        let manifest = s.snap.manifest();
        if usize::from(shard) >= manifest.total_shards() {
            return true;
        }
        let chunks = u32::from(manifest.chunks_per_shard());
        let start = u32::from(first).min(chunks);
        let end = (u32::from(first) + u32::from(count)).min(chunks);
        let room = MAX_QUEUED_CHUNKS.saturating_sub(s.queued) as u32;
        let take = (end - start).min(room);
        self.stats.chunks_dropped += u64::from(end - start - take);
        if take > 0 {
            s.runs.push_back((shard, start, start + take));
            s.queued += take as usize;
        }
        true
    }

    /// Whether chunks wait to be sent.
    pub fn has_queued(&self) -> bool {
        self.sessions.values().any(|s| s.queued > 0)
    }

    /// The next chunk to send, taken from the sessions in turn.
    pub fn next_chunk(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let (&key, s) = self.sessions.iter_mut().find(|(_, s)| s.queued > 0)?;
        let (shard, next, end) = s.runs.front_mut()?;
        let chunk = u16::try_from(*next).ok();
        let shard = *shard;
        *next += 1;
        if *next >= *end {
            s.runs.pop_front();
        }
        s.queued = s.queued.saturating_sub(1);
        // Rotate: a session that just sent goes behind the others.
        let session = self.sessions.remove(&key)?;
        let frame =
            chunk.and_then(|c| session.snap.chunk_repr(key.1, shard, c)).and_then(|r| emit(&r));
        self.sessions.insert(key, session);
        let frame = frame?;
        self.stats.chunks_sent += 1;
        self.stats.chunk_bytes += frame.len() as u64;
        Some((key.0, frame))
    }

    /// Ends idle sessions and forgotten builds.
    pub fn expire(&mut self, now: Instant) {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| now.saturating_duration_since(s.last) < SESSION_IDLE);
        self.stats.sessions_expired += (before - self.sessions.len()) as u64;
        self.building.retain(|_, at| now.saturating_duration_since(*at) < BUILD_TIMEOUT);
        if self
            .recent
            .as_ref()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= SNAPSHOT_REUSE)
        {
            self.recent = None;
        }
    }
}

// ---------------------------------------------------------------------------
// Fetching
// ---------------------------------------------------------------------------

/// How a warm-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Frames imported.
    Done,
    /// Every sibling's snapshot was empty.
    Empty,
    /// No live sibling within [`MEMBERS_WAIT`].
    NoSibling,
    /// No sibling answered a manifest request within [`MANIFEST_WAIT`].
    NoAnswer,
    /// Every transfer stalled or failed its hash.
    Failed,
    /// `--warmup-timeout` ran out first.
    Timeout,
}

impl Outcome {
    /// The label used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Empty => "empty",
            Outcome::NoSibling => "no_sibling",
            Outcome::NoAnswer => "no_answer",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
        }
    }

    /// Every outcome, for metrics.
    pub const ALL: [Outcome; 6] = [
        Outcome::Done,
        Outcome::Empty,
        Outcome::NoSibling,
        Outcome::NoAnswer,
        Outcome::Failed,
        Outcome::Timeout,
    ];
}

/// Counters of one fetch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FetchStats {
    /// Manifest requests sent.
    pub manifest_requests: u64,
    /// Valid manifests received.
    pub manifests: u64,
    /// Manifests that failed validation.
    pub bad_manifests: u64,
    /// Shard requests sent.
    pub shard_requests: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Chunks received again, or no longer needed.
    pub chunks_redundant: u64,
    /// Chunks refused by the reassembler.
    pub chunks_rejected: u64,
    /// Repair rounds.
    pub repair_rounds: u64,
    /// Transfers started (one per sibling tried).
    pub transfers: u64,
    /// Transfers abandoned (stall, rounds, hash).
    pub transfers_failed: u64,
}

/// What [`Fetch::poll`] hands the caller when the fetch is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEnd {
    /// A verified blob from this sibling, to unframe and import.
    Blob {
        /// The sibling it came from.
        from: SocketAddr,
        /// The blob (its hash matched the manifest).
        blob: Vec<u8>,
    },
    /// Nothing to import.
    Finished(Outcome),
}

#[derive(Debug)]
enum Phase {
    Members {
        until: Instant,
    },
    Manifests {
        asked: Vec<SocketAddr>,
        answers: Vec<(SocketAddr, Manifest)>,
        until: Instant,
        grace: Option<Instant>,
        next_send: Instant,
    },
    Transfer(Box<Transfer>),
    Over,
}

#[derive(Debug)]
struct Transfer {
    from: SocketAddr,
    reasm: Reassembler,
    active: Vec<u8>,
    spare: VecDeque<u8>,
    todo: VecDeque<(u8, u16, u16)>,
    in_flight: u32,
    last_progress: Instant,
    last_send: Instant,
    rounds: u32,
    rest: Vec<(SocketAddr, Manifest)>,
}

impl Transfer {
    fn new(now: Instant, from: SocketAddr, manifest: Manifest) -> Result<Self, SnapshotError> {
        let reasm = Reassembler::new(manifest, REASSEMBLY_LIMIT)?;
        let k = manifest.data_shards;
        let total = u8::try_from(manifest.total_shards()).unwrap_or(u8::MAX);
        let mut t = Transfer {
            from,
            reasm,
            active: (0..k).collect(),
            spare: (k..total).collect(),
            todo: VecDeque::new(),
            in_flight: 0,
            last_progress: now,
            last_send: now,
            rounds: 0,
            rest: Vec::new(),
        };
        let per_shard = manifest.chunks_per_shard();
        for s in 0..k {
            t.queue_runs(s, &[(0, per_shard)]);
        }
        Ok(t)
    }

    fn queue_runs(&mut self, shard: u8, runs: &[(u16, u16)]) {
        for &(first, count) in runs {
            let end = u32::from(first) + u32::from(count);
            let mut at = u32::from(first);
            while at < end {
                let n = (end - at).min(u32::from(RUN));
                // Both fit u16: `at < end ≤ 65 536` and `n ≤ RUN`.
                self.todo.push_back((shard, at as u16, n as u16));
                at += n;
            }
        }
    }
}

/// A warm-up in progress on the starting endpoint (module docs).
#[derive(Debug)]
pub struct Fetch {
    rid: u32,
    started: Instant,
    deadline: Instant,
    phase: Phase,
    stats: FetchStats,
}

impl Fetch {
    /// A warm-up with request id `rid` (random, not 0), bounded by
    /// `timeout` from `now`.
    pub fn new(rid: u32, now: Instant, timeout: Duration) -> Self {
        Fetch {
            rid,
            started: now,
            deadline: now + timeout,
            phase: Phase::Members { until: now + MEMBERS_WAIT },
            stats: FetchStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> FetchStats {
        self.stats
    }

    /// When it started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When `--warmup-timeout` runs out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A short name of the current phase, for `/debug/cluster`.
    pub fn phase(&self) -> &'static str {
        match self.phase {
            Phase::Members { .. } => "waiting_for_siblings",
            Phase::Manifests { .. } => "asking_for_manifests",
            Phase::Transfer(_) => "transferring",
            Phase::Over => "over",
        }
    }

    /// The sibling chunks are coming from, while transferring.
    pub fn source(&self) -> Option<(SocketAddr, u32)> {
        match &self.phase {
            Phase::Transfer(t) => Some((t.from, self.rid)),
            _ => None,
        }
    }

    /// `(complete shards, shards needed)` while transferring.
    pub fn progress(&self) -> Option<(usize, usize)> {
        match &self.phase {
            Phase::Transfer(t) => {
                Some((t.reasm.complete_shards(), usize::from(t.reasm.manifest().data_shards)))
            }
            _ => None,
        }
    }

    /// When [`Fetch::poll`] should run next.
    pub fn next_timeout(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Members { until } => Some(*until),
            Phase::Manifests { until, grace, next_send, .. } => {
                Some([Some(*until), *grace, Some(*next_send)].into_iter().flatten().min()?)
            }
            Phase::Transfer(t) => {
                if !t.todo.is_empty() && t.in_flight < WINDOW {
                    Some(t.last_send)
                } else {
                    Some(
                        (t.last_progress.max(t.last_send) + REPAIR_AFTER)
                            .min(t.last_progress + STALL),
                    )
                }
            }
            Phase::Over => return None,
        };
        phase.map(|t| t.min(self.deadline))
    }

    /// Advances the fetch: `live` are the live siblings' gossip addresses.
    /// G6 frames to send go to `sends`. Returns how it ended, once.
    pub fn poll(
        &mut self,
        now: Instant,
        live: &[SocketAddr],
        sends: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) -> Option<FetchEnd> {
        if matches!(self.phase, Phase::Over) {
            return None;
        }
        if now >= self.deadline {
            return Some(self.end(Outcome::Timeout));
        }
        if let Phase::Members { until } = self.phase {
            if live.is_empty() {
                return (now >= until).then(|| self.end(Outcome::NoSibling));
            }
            self.phase = Phase::Manifests {
                asked: Vec::new(),
                answers: Vec::new(),
                until: now + MANIFEST_WAIT,
                grace: None,
                next_send: now,
            };
        }
        if let Phase::Manifests { asked, answers, until, grace, next_send } = &mut self.phase {
            for &a in live {
                if asked.len() < MANIFEST_PEERS && !asked.contains(&a) {
                    asked.push(a);
                    *next_send = now;
                }
            }
            let all = !asked.is_empty() && answers.len() >= asked.len();
            if all || grace.is_some_and(|g| now >= g) {
                let answers = std::mem::take(answers);
                return self.start_transfer(now, answers, sends);
            }
            if now >= *until {
                return Some(self.end(Outcome::NoAnswer));
            }
            if now >= *next_send {
                *next_send = now + MANIFEST_RETRY;
                let req = SnapshotRepr::ManifestRequest { request_id: self.rid };
                for &a in asked.iter() {
                    if answers.iter().all(|(from, _)| *from != a)
                        && let Some(f) = emit(&req)
                    {
                        sends.push((a, f));
                        self.stats.manifest_requests += 1;
                    }
                }
            }
            return None;
        }
        self.drive_transfer(now, sends)
    }

    /// A G6 frame (already authenticated) from `from`. Returns whether it
    /// belonged to this fetch.
    pub fn on_frame(&mut self, now: Instant, from: SocketAddr, frame: &SnapshotRepr<'_>) -> bool {
        let rid = self.rid;
        match (&mut self.phase, frame) {
            (
                Phase::Manifests { asked, answers, grace, .. },
                SnapshotRepr::Manifest { request_id, .. },
            ) if *request_id == rid && asked.contains(&from) => {
                if answers.iter().any(|(a, _)| *a == from) {
                    return true;
                }
                match Manifest::from_repr(frame) {
                    Ok(m) => {
                        self.stats.manifests += 1;
                        answers.push((from, m));
                        grace.get_or_insert(now + MANIFEST_GRACE);
                    }
                    Err(_) => self.stats.bad_manifests += 1,
                }
                true
            }
            (
                Phase::Transfer(t),
                SnapshotRepr::ShardChunk {
                    request_id,
                    shard_index,
                    chunk_index,
                    chunk_count,
                    data,
                },
            ) if *request_id == rid && from == t.from => {
                match t.reasm.accept(*shard_index, *chunk_index, *chunk_count, data) {
                    ChunkOutcome::Accepted | ChunkOutcome::ShardComplete => {
                        self.stats.chunks += 1;
                        t.in_flight = t.in_flight.saturating_sub(1);
                        t.last_progress = now;
                    }
                    ChunkOutcome::Duplicate | ChunkOutcome::NotNeeded => {
                        self.stats.chunks_redundant += 1;
                        t.in_flight = t.in_flight.saturating_sub(1);
                    }
                    ChunkOutcome::Rejected(_) => self.stats.chunks_rejected += 1,
                }
                true
            }
            _ => false,
        }
    }

    fn end(&mut self, outcome: Outcome) -> FetchEnd {
        self.phase = Phase::Over;
        FetchEnd::Finished(outcome)
    }

    /// Starts on the best manifest of `answers` (module docs).
    fn start_transfer(
        &mut self,
        now: Instant,
        answers: Vec<(SocketAddr, Manifest)>,
        sends: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) -> Option<FetchEnd> {
        let mut full: Vec<(SocketAddr, Manifest)> =
            answers.into_iter().filter(|(_, m)| m.blob_len > 0).collect();
        if full.is_empty() {
            return Some(self.end(Outcome::Empty));
        }
        let manifests: Vec<Manifest> = full.iter().map(|(_, m)| *m).collect();
        let first = choose_manifest(&manifests).map_or(0, |c| c.index);
        let chosen = full.remove(first);
        // The others, freshest first, in case the chosen one fails.
        full.sort_by_key(|(_, m)| std::cmp::Reverse(m.hlc));
        let mut queue = vec![chosen];
        queue.extend(full);
        queue.reverse();
        self.next_source(now, queue, sends)
    }

    /// Starts a transfer from the last entry of `queue` (the rest kept as
    /// fall-backs), or ends the fetch when none is left.
    fn next_source(
        &mut self,
        now: Instant,
        mut queue: Vec<(SocketAddr, Manifest)>,
        sends: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) -> Option<FetchEnd> {
        while let Some((from, manifest)) = queue.pop() {
            match Transfer::new(now, from, manifest) {
                Ok(mut t) => {
                    t.rest = queue;
                    self.stats.transfers += 1;
                    self.phase = Phase::Transfer(Box::new(t));
                    return self.drive_transfer(now, sends);
                }
                Err(_) => self.stats.bad_manifests += 1,
            }
        }
        Some(self.end(Outcome::Failed))
    }

    fn drive_transfer(
        &mut self,
        now: Instant,
        sends: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) -> Option<FetchEnd> {
        let Phase::Transfer(t) = &mut self.phase else { return None };
        if t.reasm.is_ready() {
            return match t.reasm.finish() {
                Ok(blob) => {
                    let from = t.from;
                    self.phase = Phase::Over;
                    Some(FetchEnd::Blob { from, blob })
                }
                Err(_) => self.abandon(now, sends),
            };
        }
        if now.saturating_duration_since(t.last_progress) >= STALL {
            return self.abandon(now, sends);
        }
        let quiet = now.saturating_duration_since(t.last_progress.max(t.last_send));
        if t.todo.is_empty() && (t.in_flight == 0 || quiet >= REPAIR_AFTER) {
            t.rounds += 1;
            self.stats.repair_rounds += 1;
            if t.rounds > MAX_ROUNDS {
                return self.abandon(now, sends);
            }
            t.in_flight = 0;
            let incomplete: Vec<u8> =
                t.active.iter().copied().filter(|&s| !t.reasm.is_shard_complete(s)).collect();
            if t.rounds >= 2
                && !incomplete.is_empty()
                && let Some(parity) = t.spare.pop_front()
            {
                t.active.push(parity);
                let per_shard = t.reasm.manifest().chunks_per_shard();
                t.queue_runs(parity, &[(0, per_shard)]);
            }
            for s in incomplete {
                let runs = t.reasm.missing_runs(s);
                t.queue_runs(s, &runs);
            }
        }
        while t.in_flight < WINDOW {
            let Some((shard, first, count)) = t.todo.pop_front() else { break };
            let req = SnapshotRepr::ShardRequest {
                request_id: self.rid,
                shard_index: shard,
                first_chunk: first,
                chunk_count: count,
            };
            if let Some(f) = emit(&req) {
                sends.push((t.from, f));
                self.stats.shard_requests += 1;
                t.in_flight += u32::from(count);
                t.last_send = now;
            }
        }
        None
    }

    /// Gives up on the current sibling and moves to the next manifest.
    fn abandon(
        &mut self,
        now: Instant,
        sends: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) -> Option<FetchEnd> {
        self.stats.transfers_failed += 1;
        let rest = match &mut self.phase {
            Phase::Transfer(t) => std::mem::take(&mut t.rest),
            _ => Vec::new(),
        };
        self.next_source(now, rest, sends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(vec![i as u8; 100 + i % 300])).collect()
    }

    #[test]
    fn blobs_round_trip_and_stop_at_the_limit() {
        let f = frames(50);
        let (blob, n) = frame_blob(&f, usize::MAX);
        assert_eq!(n, 50);
        assert_eq!(unframe_blob(&blob), (f.clone(), true));
        let (small, n) = frame_blob(&f, 1000);
        assert!(small.len() <= 1000 && n < 50);
        assert_eq!(unframe_blob(&small).0, f[..n].to_vec());
        let (got, clean) = unframe_blob(&blob[..blob.len() - 1]);
        assert!(!clean);
        assert_eq!(got, f[..49].to_vec());
        assert_eq!(unframe_blob(&[0xFF, 0xFF, 0xFF, 0xFF, 1]), (vec![], false));
        assert_eq!(unframe_blob(&[]), (vec![], true));
    }

    #[test]
    fn params_keep_shards_within_the_chunk_limit() {
        assert_eq!(snapshot_params(0, 1200).data_shards, 2);
        let p = snapshot_params(WARM_MAX_BYTES, 1200);
        assert_eq!((p.data_shards, p.parity_shards), (2, 1));
        let p = snapshot_params(1 << 30, 1200);
        let shard = (1usize << 30).div_ceil(usize::from(p.data_shards));
        assert!(shard.div_ceil(1200) <= 65_535, "{p:?}");
    }

    const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);
    const B: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 2);

    /// Runs a fetch against a server over a link that drops every
    /// `drop_every`-th chunk (0: none), on a virtual clock.
    fn transfer(frames: &[Bytes], drop_every: u64) -> (Option<FetchEnd>, FetchStats) {
        let mut now = Instant::now();
        let mut server = Server::new();
        let mut fetch = Fetch::new(7, now, Duration::from_secs(60));
        let mut sends = Vec::new();
        let mut chunks = 0u64;
        for _ in 0..100_000 {
            if let Some(end) = fetch.poll(now, &[B], &mut sends) {
                return (Some(end), fetch.stats());
            }
            for (to, bytes) in sends.drain(..) {
                assert_eq!(to, B);
                match SnapshotRepr::parse(&bytes).unwrap() {
                    SnapshotRepr::ManifestRequest { request_id } => {
                        match server.on_manifest_request(now, A, request_id, true) {
                            ManifestAction::Build => {
                                let snap = build_snapshot(frames, usize::MAX, 1, 1200).unwrap().0;
                                let m = server.built(now, A, request_id, Ok(snap)).unwrap();
                                fetch.on_frame(now, B, &SnapshotRepr::parse(&m).unwrap());
                            }
                            ManifestAction::Answer(m) => {
                                fetch.on_frame(now, B, &SnapshotRepr::parse(&m).unwrap());
                            }
                            ManifestAction::Ignore => {}
                        }
                    }
                    SnapshotRepr::ShardRequest {
                        request_id,
                        shard_index,
                        first_chunk,
                        chunk_count,
                    } => {
                        assert!(server.on_shard_request(
                            now,
                            A,
                            request_id,
                            shard_index,
                            first_chunk,
                            chunk_count
                        ));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            while let Some((to, chunk)) = server.next_chunk() {
                assert_eq!(to, A);
                chunks += 1;
                if drop_every > 0 && chunks % drop_every == 0 {
                    continue;
                }
                assert!(fetch.on_frame(now, B, &SnapshotRepr::parse(&chunk).unwrap()));
            }
            now += Duration::from_millis(10);
        }
        (None, fetch.stats())
    }

    #[test]
    fn a_fetch_brings_the_frames_over() {
        let f = frames(2000);
        let (end, stats) = transfer(&f, 0);
        let Some(FetchEnd::Blob { from, blob }) = end else { panic!("{end:?}") };
        assert_eq!(from, B);
        assert_eq!(unframe_blob(&blob), (f, true));
        assert_eq!((stats.repair_rounds, stats.transfers_failed), (0, 0), "no loss, no repair");
    }

    #[test]
    fn lost_chunks_are_asked_again() {
        let f = frames(3000);
        let (end, stats) = transfer(&f, 7);
        let Some(FetchEnd::Blob { blob, .. }) = end else { panic!("{end:?}") };
        assert_eq!(unframe_blob(&blob).0, f);
        assert!(stats.repair_rounds >= 1, "{stats:?}");
    }

    #[test]
    fn no_sibling_and_no_answer_end_early() {
        let now = Instant::now();
        let mut fetch = Fetch::new(1, now, Duration::from_secs(60));
        let mut sends = Vec::new();
        assert_eq!(fetch.poll(now, &[], &mut sends), None);
        assert_eq!(
            fetch.poll(now + MEMBERS_WAIT, &[], &mut sends),
            Some(FetchEnd::Finished(Outcome::NoSibling))
        );
        let mut fetch = Fetch::new(1, now, Duration::from_secs(60));
        assert_eq!(fetch.poll(now, &[A, B], &mut sends), None);
        assert_eq!(sends.len(), 2, "both asked");
        let t = now + MANIFEST_WAIT;
        assert_eq!(fetch.poll(t, &[A, B], &mut sends), Some(FetchEnd::Finished(Outcome::NoAnswer)));
        let mut fetch = Fetch::new(1, now, Duration::from_secs(1));
        assert_eq!(
            fetch.poll(now + Duration::from_secs(1), &[A], &mut sends),
            Some(FetchEnd::Finished(Outcome::Timeout))
        );
        assert_eq!(fetch.poll(now + Duration::from_secs(2), &[A], &mut sends), None, "once");
    }

    #[test]
    fn an_empty_snapshot_ends_the_fetch() {
        let (end, _) = transfer(&[], 0);
        assert_eq!(end, Some(FetchEnd::Finished(Outcome::Empty)));
    }

    #[test]
    fn the_server_serves_members_only_and_bounds_sessions() {
        let now = Instant::now();
        let mut s = Server::new();
        assert_eq!(s.on_manifest_request(now, A, 1, false), ManifestAction::Ignore);
        for rid in 0..MAX_SESSIONS as u32 {
            assert_eq!(s.on_manifest_request(now, A, rid + 10, true), ManifestAction::Build);
        }
        assert_eq!(s.on_manifest_request(now, A, 99, true), ManifestAction::Ignore);
        assert_eq!(s.stats().refused_busy, 1);
        assert!(!s.on_shard_request(now, A, 10, 0, 0, 1));
        let snap = build_snapshot(&frames(10), usize::MAX, 1, 100).unwrap().0;
        assert!(s.built(now, A, 10, Ok(snap)).is_some());
        // A repeat of the request gets the same manifest again.
        assert!(matches!(s.on_manifest_request(now, A, 10, true), ManifestAction::Answer(_)));
        // Over-long requests are clipped to the queue.
        for _ in 0..3 {
            assert!(s.on_shard_request(now, A, 10, 0, 0, u16::MAX));
        }
        assert!(s.stats().chunks_dropped > 0 || s.has_queued());
        s.expire(now + SESSION_IDLE + BUILD_TIMEOUT);
        assert_eq!(s.sessions(), (0, 0));
        assert!(!s.has_queued());
    }
}
