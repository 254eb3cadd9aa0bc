//! Warm restarts over G6: a starting endpoint pulls the hot part of its
//! siblings' caches (issue 6, "warm restart").
//!
//! # The snapshot
//! The serving sibling collects its hot frames (the engine's `rt::Control::export_hot`,
//! at most [`WARM_MAX_BYTES`] of frames), sorts the ones it keeps into
//! [`snapshot_order`] (by flow and SeqNum, then bytes), frames them as a
//! blob `([u32 length][frame])*` ([`frame_blob`]) and codes it with
//! [`EncodedSnapshot`] into `k` data shards ([`DATA_SHARDS`] for any blob of
//! that many chunks) plus `m = ⌈k / 2⌉` parity shards, chunked to the
//! datagram budget ([`snapshot_params`]). Siblings holding the same frames
//! therefore build the same blob, hash (the fingerprint is its first 8
//! bytes) and shards, whatever order their workers listed the frames in.
//! The G6 manifest carries the blob's BLAKE3 hash; the receiver checks the
//! reassembled blob against it and imports nothing on a mismatch.
//!
//! # Serving ([`Server`])
//! - Only live members are served; a manifest request starts one snapshot
//!   build (done off the control task by the driver), or reuses one built
//!   within [`SNAPSHOT_REUSE`]. At most [`MAX_SESSIONS`] sessions (built or
//!   building) exist at once; more requests are refused and counted.
//! - A session answers shard requests for its request id with chunks of any
//!   of its `k + m` shards, at most [`MAX_QUEUED_CHUNKS`] queued per session
//!   (the rest of an over-long request is dropped; the requester asks
//!   again), and ends [`SESSION_IDLE`] after its last request. The driver
//!   paces chunks into the gossip engine's egress queue, under its global
//!   byte-rate cap.
//!
//! # Fetching ([`Fetch`])
//! 1. Wait up to [`MEMBERS_WAIT`] for a live sibling; none: done
//!    (`no_sibling`).
//! 2. Ask up to [`MANIFEST_PEERS`] live siblings for a manifest, again every
//!    [`MANIFEST_RETRY`]; give up after [`MANIFEST_WAIT`] without an answer
//!    (`no_answer`), else take what came within [`MANIFEST_GRACE`] of the
//!    first answer (or as soon as all answered).
//! 3. Pick one ([`choose_manifest`] over the non-empty manifests: the
//!    freshest with a fingerprint quorum; all empty: done, `empty`). Every
//!    sibling whose manifest has the same encoding (blob hash and geometry,
//!    [`Manifest::same_encoding`]) is a *sender* of the transfer; when the
//!    manifests disagree, the chosen sibling is the only one.
//! 4. Shards are handed out to the senders in turn, data shards first, then
//!    parity: each sender asks for its shards in runs of [`RUN`] chunks, at
//!    most [`WINDOW`] of its chunks outstanding, and gets another shard when
//!    it has asked for all of its own, as long as the complete shards plus
//!    those live senders work on are fewer than `k`. Any `k` complete shards
//!    rebuild the blob; with no loss, exactly the `k` data shards come, each
//!    chunk once.
//! 5. A sender that has gone quiet for [`REPAIR_AFTER`] (or received all it
//!    asked for without completing its shards) has the chunks it owes asked
//!    again (a *repair round*); from round [`EXTRA_SHARD_ROUND`] on it also
//!    gets one more shard per round, so chunks a shard keeps losing are
//!    covered by parity. After [`SILENT_ROUNDS`] rounds in a row without a
//!    chunk a sender is *silent* (after [`MAX_ROUNDS`] it is asked nothing
//!    more): its shards stop counting, so the other senders take the
//!    shards no one was given yet — parity, when the data shards are out —
//!    and, when none is left, its incomplete shards, asking only for the
//!    missing chunks. Chunks it sent are kept: losing one of three senders
//!    costs its unfinished shards, never a restart; the `m` parity shards
//!    are a third of all `k + m` (`k + m ≤ 3m`), a sender's share of a
//!    stripe over three. A silent sender that speaks again counts again.
//! 6. A transfer that makes no progress for [`STALL`], whose senders all
//!    gave up, or that fails its hash moves to the next manifest of another
//!    encoding (with the siblings agreeing on it).
//! 7. The whole warm-up is bounded by `--warmup-timeout` (`timeout`).
//!
//! [`FetchStats`] counts per sender (chunks asked and stored, shards,
//! rounds, silence), the parity shards used and the shards taken over;
//! `/debug/cluster` shows them for the warm-up under way and the last one.
//!
//! # Contract
//! - Pure: time enters as `now`; frames to send leave through a
//!   caller-owned list. Chunks are untrusted and go through
//!   [`Reassembler`], bounded by [`REASSEMBLY_LIMIT`]; a manifest needs
//!   `(k + m) / k` of its blob, 1.5 from [`DATA_SHARDS`] chunks on, so
//!   96 MiB for a [`WARM_MAX_BYTES`] snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_wire::blob;
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
/// Most repair rounds per sender of a transfer.
pub const MAX_ROUNDS: u32 = 12;
/// From this repair round of a sender on, each round gives it one more
/// shard, so chunks a shard keeps losing are covered by parity.
pub const EXTRA_SHARD_ROUND: u32 = 3;
/// Repair rounds in a row without a single chunk after which a sender is
/// *silent*: its incomplete shards no longer count, others replace them.
pub const SILENT_ROUNDS: u32 = 2;
/// Data shards of a snapshot of at least that many chunks: two per sender
/// when striped over [`MANIFEST_PEERS`].
pub const DATA_SHARDS: usize = 6;
/// Most data shards (`k + ⌈k / 2⌉ ≤ 255`).
pub const MAX_DATA_SHARDS: usize = 170;

/// Frames `frames` as `([u32 length][frame])*` (`ricochet_wire::blob`,
/// docs/PROTOCOL.md § "G6 snapshot blob"), stopping before the first frame
/// that would take the blob past `max_bytes`. Returns the blob and how many
/// frames it holds.
pub fn frame_blob(frames: &[Bytes], max_bytes: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut n = 0;
    for f in frames {
        if f.len() > blob::MAX_FRAME {
            continue;
        }
        let at = out.len();
        if at + blob::record_len(f.len()) > max_bytes {
            break;
        }
        out.resize(at + blob::record_len(f.len()), 0);
        if blob::emit_record(f, &mut out[at..]).is_ok() {
            n += 1;
        }
    }
    (out, n)
}

/// Splits a blob made by [`frame_blob`]. Returns the frames and whether
/// the whole blob parsed (a malformed tail is dropped).
pub fn unframe_blob(bytes: &[u8]) -> (Vec<Bytes>, bool) {
    let bytes = Bytes::copy_from_slice(bytes);
    let mut out = Vec::new();
    for frame in blob::frames(&bytes) {
        match frame {
            Ok(f) => out.push(bytes.slice_ref(f)),
            Err(_) => return (out, false),
        }
    }
    (out, true)
}

/// Coding parameters for a blob of `blob_len` bytes: [`DATA_SHARDS`] data
/// shards (fewer for a blob of fewer chunks, at least 2; more if a shard
/// would exceed 65 535 chunks of `chunk_size` bytes) and `m = ⌈k / 2⌉`
/// parity shards. Then `3m ≥ k + m`: striped over up to
/// [`MANIFEST_PEERS`] senders, no sender serves more than `m` shards, and
/// losing one is covered by parity. A receiver holds at most
/// `(k + m) / k ≤ 5/3` of the blob (≤ 1.5 from 6 chunks on).
pub fn snapshot_params(blob_len: usize, chunk_size: usize) -> SnapshotParams {
    let chunk_size = chunk_size.max(2);
    let per_shard = chunk_size.saturating_mul(usize::from(u16::MAX) - 1);
    let k = blob_len
        .div_ceil(chunk_size)
        .clamp(2, DATA_SHARDS)
        .max(blob_len.div_ceil(per_shard))
        .min(MAX_DATA_SHARDS);
    SnapshotParams {
        data_shards: k as u8,
        parity_shards: k.div_ceil(2) as u8,
        chunk_size: u32::try_from(chunk_size).unwrap_or(u32::MAX),
    }
}

/// Builds a sibling's snapshot from its hot frames, stamped with `hlc`
/// (unix ms). The frames kept (in the given order, up to `max_bytes`) are
/// framed in [`snapshot_order`], so siblings holding the same frames build
/// the same blob, hash and shards, and a fetch can stripe over them. The
/// fingerprint is the blob hash's first 8 bytes.
pub fn build_snapshot(
    frames: &[Bytes],
    max_bytes: usize,
    hlc: u64,
    chunk_size: usize,
) -> Result<(EncodedSnapshot, usize), SnapshotError> {
    let mut kept = Vec::new();
    let mut len = 0usize;
    for f in frames {
        if f.len() > blob::MAX_FRAME {
            continue;
        }
        if len + blob::record_len(f.len()) > max_bytes {
            break;
        }
        len += blob::record_len(f.len());
        kept.push(f.clone());
    }
    snapshot_order(&mut kept);
    let (blob, n) = frame_blob(&kept, usize::MAX);
    let h = blake3::hash(&blob);
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&h.as_bytes()[..8]);
    let params = snapshot_params(blob.len(), chunk_size);
    let snap = EncodedSnapshot::encode(&blob, hlc, u64::from_be_bytes(fp), params)?;
    Ok((snap, n))
}

/// Sorts frames into snapshot order: by flow and SeqNum ([`FrameKey`];
/// frames without a key first), then by bytes. The order depends on the
/// frames only, not on how a sibling's workers listed them.
///
/// [`FrameKey`]: ricochet_wire::frame::FrameKey
pub fn snapshot_order(frames: &mut [Bytes]) {
    frames.sort_by_cached_key(|f| {
        let key = ricochet_wire::frame::Frame::new_checked(&f[..]).ok().and_then(|v| v.key());
        (key, f.clone())
    });
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
    /// Repair rounds (all senders).
    pub repair_rounds: u64,
    /// Transfers started (one per group of agreeing siblings tried).
    pub transfers: u64,
    /// Transfers abandoned (stall, rounds, hash).
    pub transfers_failed: u64,
    /// Senders of the current (or last) transfer: the siblings whose
    /// manifests agree with the chosen one, at most [`MANIFEST_PEERS`];
    /// 1 when they disagree.
    pub senders_used: u64,
    /// Parity shards the blob was rebuilt with (0: every data shard came).
    pub parity_used: u64,
    /// Shards moved from a silent sender to another sender.
    pub takeovers: u64,
    /// Each sender of the current (or last) transfer, in the order chosen.
    pub senders: [SenderStats; MANIFEST_PEERS],
}

/// Counters of one sender of a transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SenderStats {
    /// The sibling; `None` for an unused slot.
    pub addr: Option<SocketAddr>,
    /// Shards given to it (fresh ones and ones taken over).
    pub shards: u64,
    /// Chunks asked of it, repeats included.
    pub chunks_requested: u64,
    /// Chunks from it that were stored.
    pub chunks: u64,
    /// Its repair rounds.
    pub repair_rounds: u64,
    /// Whether it is silent ([`SILENT_ROUNDS`]) or gave up
    /// ([`MAX_ROUNDS`]).
    pub silent: bool,
}

/// What [`Fetch::poll`] hands the caller when the fetch is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEnd {
    /// A verified blob, to unframe and import.
    Blob {
        /// The sibling whose manifest was chosen (others may have sent
        /// shards too).
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

/// One sibling serving shards of a transfer.
#[derive(Debug)]
struct Sender {
    addr: SocketAddr,
    /// Shards it serves; complete ones are pruned at the next step.
    shards: Vec<u8>,
    /// Runs `(shard, first chunk, count)` still to request.
    todo: VecDeque<(u8, u16, u16)>,
    /// Chunks requested and not received (lost ones until a repair round).
    in_flight: u32,
    last_heard: Instant,
    last_send: Instant,
    rounds: u32,
    /// Repair rounds since its last chunk.
    unanswered: u32,
    stats: SenderStats,
}

impl Sender {
    fn new(now: Instant, addr: SocketAddr) -> Self {
        Sender {
            addr,
            shards: Vec::new(),
            todo: VecDeque::new(),
            in_flight: 0,
            last_heard: now,
            last_send: now,
            rounds: 0,
            unanswered: 0,
            stats: SenderStats { addr: Some(addr), ..SenderStats::default() },
        }
    }

    /// Silent, or gave up: its shards do not count and may be taken over.
    fn silent(&self) -> bool {
        self.unanswered >= SILENT_ROUNDS || self.gave_up()
    }

    /// More than [`MAX_ROUNDS`] repair rounds: asked nothing more.
    fn gave_up(&self) -> bool {
        self.rounds > MAX_ROUNDS
    }

    fn can_send(&self) -> bool {
        !self.todo.is_empty() && self.in_flight < WINDOW
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

    fn heard(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.last_heard = now;
        self.unanswered = 0;
    }
}

/// Shards of one manifest, fetched from one or more siblings that serve
/// the same encoding (module docs, "Fetching").
#[derive(Debug)]
struct Transfer {
    reasm: Reassembler,
    senders: Vec<Sender>,
    /// Shards no sender was given yet: data shards first, then parity.
    fresh: VecDeque<u8>,
    last_progress: Instant,
    takeovers: u64,
    /// Fall-backs: manifests of other encodings, the next one last.
    rest: Vec<(SocketAddr, Manifest)>,
}

impl Transfer {
    /// A transfer of `manifest` from `senders`, which all serve it.
    fn new(
        now: Instant,
        manifest: Manifest,
        senders: &[SocketAddr],
    ) -> Result<Self, SnapshotError> {
        let reasm = Reassembler::new(manifest, REASSEMBLY_LIMIT)?;
        let total = u8::try_from(manifest.total_shards()).unwrap_or(u8::MAX);
        Ok(Transfer {
            reasm,
            senders: senders.iter().map(|&a| Sender::new(now, a)).collect(),
            fresh: (0..total).collect(),
            last_progress: now,
            takeovers: 0,
            rest: Vec::new(),
        })
    }

    /// Shards still to hand out: `k` minus the complete ones and those
    /// live (not silent) senders are working on.
    fn wanted(&self) -> usize {
        let working: usize =
            self.senders.iter().filter(|s| !s.silent()).map(|s| s.shards.len()).sum();
        usize::from(self.reasm.manifest().data_shards)
            .saturating_sub(self.reasm.complete_shards() + working)
    }

    /// Gives sender `i` one more shard: a fresh one (data, then parity),
    /// else the shard of a silent sender with the fewest chunks missing,
    /// whose missing chunks `i` then serves. False if there is none.
    fn give(&mut self, i: usize) -> bool {
        if let Some(shard) = self.fresh.pop_front() {
            let all = self.reasm.manifest().chunks_per_shard();
            let s = &mut self.senders[i];
            s.shards.push(shard);
            s.queue_runs(shard, &[(0, all)]);
            s.stats.shards += 1;
            return true;
        }
        let mut best: Option<(u32, usize, u8)> = None;
        for (j, other) in self.senders.iter().enumerate() {
            if j == i || !other.silent() {
                continue;
            }
            for &shard in &other.shards {
                let missing: u32 =
                    self.reasm.missing_runs(shard).iter().map(|r| u32::from(r.1)).sum();
                if missing > 0 && best.is_none_or(|b| missing < b.0) {
                    best = Some((missing, j, shard));
                }
            }
        }
        let Some((_, j, shard)) = best else { return false };
        let old = &mut self.senders[j];
        old.shards.retain(|&s| s != shard);
        old.todo.retain(|r| r.0 != shard);
        let runs = self.reasm.missing_runs(shard);
        let s = &mut self.senders[i];
        s.shards.push(shard);
        s.queue_runs(shard, &runs);
        s.stats.shards += 1;
        self.takeovers += 1;
        true
    }

    /// Repair round for sender `i` (module docs): everything it serves
    /// that is missing is queued again.
    fn repair(&mut self, i: usize) {
        let s = &mut self.senders[i];
        s.rounds += 1;
        s.unanswered += 1;
        s.stats.repair_rounds += 1;
        s.in_flight = 0;
        s.todo.clear();
        if s.gave_up() {
            return;
        }
        for shard in s.shards.clone() {
            let runs = self.reasm.missing_runs(shard);
            self.senders[i].queue_runs(shard, &runs);
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

    /// Whether `addr` is a sender of the transfer under way (its chunks
    /// take the fast path).
    pub fn is_sender(&self, addr: SocketAddr) -> bool {
        match &self.phase {
            Phase::Transfer(t) => t.senders.iter().any(|s| s.addr == addr),
            _ => false,
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
                let mut at = t.last_progress + STALL;
                for s in &t.senders {
                    if s.can_send() {
                        at = at.min(s.last_send);
                    } else if !s.shards.is_empty() && !s.gave_up() {
                        at = at.min(s.last_heard.max(s.last_send) + REPAIR_AFTER);
                    }
                }
                Some(at)
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
            ) if *request_id == rid => {
                let Some(i) = t.senders.iter().position(|s| s.addr == from) else {
                    return false;
                };
                match t.reasm.accept(*shard_index, *chunk_index, *chunk_count, data) {
                    ChunkOutcome::Accepted | ChunkOutcome::ShardComplete => {
                        self.stats.chunks += 1;
                        t.senders[i].stats.chunks += 1;
                        t.senders[i].heard(now);
                        t.last_progress = now;
                    }
                    ChunkOutcome::Duplicate | ChunkOutcome::NotNeeded => {
                        self.stats.chunks_redundant += 1;
                        t.senders[i].heard(now);
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

    /// Starts a transfer of the last entry of `queue`'s manifest from its
    /// sibling and from every sibling in `queue` serving the same encoding
    /// (at most [`MANIFEST_PEERS`] in all); the rest are kept as
    /// fall-backs. Ends the fetch when none is left.
    fn next_source(
        &mut self,
        now: Instant,
        mut queue: Vec<(SocketAddr, Manifest)>,
        sends: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) -> Option<FetchEnd> {
        while let Some((from, manifest)) = queue.pop() {
            let mut senders = vec![from];
            queue.retain(|(a, m)| {
                let join = senders.len() < MANIFEST_PEERS
                    && m.same_encoding(&manifest)
                    && !senders.contains(a);
                if join {
                    senders.push(*a);
                }
                !join
            });
            match Transfer::new(now, manifest, &senders) {
                Ok(mut t) => {
                    t.rest = queue;
                    self.stats.transfers += 1;
                    self.stats.senders_used = senders.len() as u64;
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
        let rid = self.rid;
        let Phase::Transfer(t) = &mut self.phase else { return None };
        if t.reasm.is_ready() {
            let k = t.reasm.manifest().data_shards;
            let data = (0..k).filter(|&i| t.reasm.is_shard_complete(i)).count();
            self.stats.parity_used = u64::from(k) - data as u64;
            sync_stats(&mut self.stats, t);
            return match t.reasm.finish() {
                Ok(blob) => {
                    let from = t.senders[0].addr;
                    self.phase = Phase::Over;
                    Some(FetchEnd::Blob { from, blob })
                }
                Err(_) => self.abandon(now, sends),
            };
        }
        let stalled = now.saturating_duration_since(t.last_progress) >= STALL;
        if stalled || t.senders.iter().all(Sender::gave_up) {
            sync_stats(&mut self.stats, t);
            return self.abandon(now, sends);
        }
        for s in &mut t.senders {
            s.shards.retain(|&x| !t.reasm.is_shard_complete(x));
        }
        // Repair rounds, sender by sender.
        for i in 0..t.senders.len() {
            let s = &t.senders[i];
            if s.shards.is_empty() || s.gave_up() || s.can_send() {
                continue;
            }
            let quiet = now.saturating_duration_since(s.last_heard.max(s.last_send));
            let idle = s.todo.is_empty() && s.in_flight == 0;
            if !idle && quiet < REPAIR_AFTER {
                continue;
            }
            t.repair(i);
            self.stats.repair_rounds += 1;
            let s = &t.senders[i];
            if s.rounds >= EXTRA_SHARD_ROUND && !s.silent() {
                // Chunks a shard keeps losing: one more shard covers them.
                t.give(i);
            }
        }
        // Requests, and new shards to senders that asked for all of theirs,
        // one sender after the other until no shard is wanted.
        loop {
            let mut gave = false;
            for i in 0..t.senders.len() {
                let s = &mut t.senders[i];
                while s.can_send() {
                    let Some((shard, first, count)) = s.todo.pop_front() else { break };
                    let req = SnapshotRepr::ShardRequest {
                        request_id: rid,
                        shard_index: shard,
                        first_chunk: first,
                        chunk_count: count,
                    };
                    if let Some(f) = emit(&req) {
                        sends.push((s.addr, f));
                        self.stats.shard_requests += 1;
                        s.stats.chunks_requested += u64::from(count);
                        s.in_flight += u32::from(count);
                        s.last_send = now;
                    }
                }
                let s = &t.senders[i];
                if s.todo.is_empty() && s.in_flight < WINDOW && !s.silent() && t.wanted() > 0 {
                    gave |= t.give(i);
                }
            }
            if !gave {
                break;
            }
        }
        sync_stats(&mut self.stats, t);
        None
    }

    /// Gives up on the current senders and moves to the next manifest.
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

/// Copies a transfer's per-sender counters into the fetch's.
fn sync_stats(stats: &mut FetchStats, t: &Transfer) {
    stats.takeovers = t.takeovers;
    stats.senders = Default::default();
    for (slot, s) in stats.senders.iter_mut().zip(&t.senders) {
        *slot = SenderStats { silent: s.silent(), ..s.stats };
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
        assert_eq!(snapshot_params(3 * 1200, 1200).data_shards, 3);
        for len in [0, 1, 5000, 1 << 20, WARM_MAX_BYTES, 1 << 30, u32::MAX as usize] {
            let p = snapshot_params(len, 1200);
            let (k, m) = (usize::from(p.data_shards), usize::from(p.parity_shards));
            // Striped over up to 3 senders, one sender's share is covered.
            assert!(m >= (k + m).div_ceil(MANIFEST_PEERS), "{len}: {p:?}");
            assert!(k + m <= 255, "{len}: {p:?}");
            let shard = len.div_ceil(k);
            assert!(shard.div_ceil(1200) <= 65_535, "{len}: {p:?}");
        }
        let p = snapshot_params(WARM_MAX_BYTES, 1200);
        assert_eq!((p.data_shards, p.parity_shards), (6, 3));
        // The largest snapshot still fits the reassembly limit, and a chunk
        // the default datagram.
        let snap = EncodedSnapshot::encode(&[], 1, 1, p).unwrap();
        let mut m = *snap.manifest();
        m.shard_size = (WARM_MAX_BYTES.div_ceil(6) as u32).next_multiple_of(2);
        m.blob_len = WARM_MAX_BYTES as u32;
        assert!(m.reassembly_bytes() <= REASSEMBLY_LIMIT as u64);
        assert_eq!(
            crate::gossip::snapshot::chunk_budget(crate::gossip::snapshot::DEFAULT_MAX_DATAGRAM),
            1173
        );
    }

    #[test]
    fn the_same_frames_in_any_order_give_the_same_snapshot() {
        let f = frames(500);
        let mut g = f.clone();
        g.reverse();
        let (a, _) = build_snapshot(&f, usize::MAX, 1, 1200).unwrap();
        let (b, _) = build_snapshot(&g, usize::MAX, 2, 1200).unwrap();
        assert!(a.manifest().same_encoding(b.manifest()));
        assert_eq!(a.manifest().fingerprint, b.manifest().fingerprint);
        let total = a.manifest().total_shards() as u8;
        assert!((0..total).all(|i| a.shard(i) == b.shard(i)));
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
    }
    const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);
    const B: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 2);

    /// A fetch at `A` and servers at ports 2, 3, … on a virtual clock:
    /// every datagram arrives within the step it was sent in, except every
    /// `drop_every`-th chunk (0: none); a server whose index is `cut.0` is
    /// cut off (both ways) once it has sent `cut.1` chunks.
    struct Link {
        servers: Vec<(SocketAddr, Server, Vec<Bytes>)>,
        drop_every: u64,
        cut: Option<(usize, u64)>,
    }

    impl Link {
        fn new(caches: Vec<Vec<Bytes>>) -> Link {
            let servers = caches
                .into_iter()
                .enumerate()
                .map(|(i, c)| (addr(2 + i as u16), Server::new(), c))
                .collect();
            Link { servers, drop_every: 0, cut: None }
        }

        fn is_cut(&self, i: usize) -> bool {
            self.cut
                .is_some_and(|(c, after)| c == i && self.servers[i].1.stats().chunks_sent >= after)
        }

        fn run(&mut self) -> (Option<FetchEnd>, FetchStats) {
            let mut now = Instant::now();
            let until = now + Duration::from_secs(60);
            let mut fetch = Fetch::new(7, now, until - now);
            let live: Vec<SocketAddr> = self.servers.iter().map(|s| s.0).collect();
            let mut sends = Vec::new();
            let mut chunks = 0u64;
            // Virtual time is bounded: the fetch times out at `until`.
            while now <= until {
                if let Some(end) = fetch.poll(now, &live, &mut sends) {
                    return (Some(end), fetch.stats());
                }
                for (to, bytes) in sends.drain(..) {
                    let i = self.servers.iter().position(|s| s.0 == to).expect("a server");
                    if self.is_cut(i) {
                        continue;
                    }
                    let (at, server, cache) = &mut self.servers[i];
                    match SnapshotRepr::parse(&bytes).unwrap() {
                        SnapshotRepr::ManifestRequest { request_id } => {
                            let m = match server.on_manifest_request(now, A, request_id, true) {
                                ManifestAction::Build => {
                                    let snap =
                                        build_snapshot(cache, usize::MAX, 1 + i as u64, 1200)
                                            .unwrap()
                                            .0;
                                    server.built(now, A, request_id, Ok(snap)).unwrap()
                                }
                                ManifestAction::Answer(m) => m,
                                ManifestAction::Ignore => continue,
                            };
                            fetch.on_frame(now, *at, &SnapshotRepr::parse(&m).unwrap());
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
                for i in 0..self.servers.len() {
                    while let Some((to, chunk)) = self.servers[i].1.next_chunk() {
                        assert_eq!(to, A);
                        chunks += 1;
                        if self.is_cut(i) || (self.drop_every > 0 && chunks % self.drop_every == 0)
                        {
                            continue;
                        }
                        let from = self.servers[i].0;
                        assert!(fetch.on_frame(now, from, &SnapshotRepr::parse(&chunk).unwrap()));
                    }
                }
                now += Duration::from_millis(10);
            }
            (None, fetch.stats())
        }
    }

    fn transfer(frames: &[Bytes], drop_every: u64) -> (Option<FetchEnd>, FetchStats) {
        let mut link = Link::new(vec![frames.to_vec()]);
        link.drop_every = drop_every;
        link.run()
    }

    /// `frames` in snapshot order.
    fn ordered(frames: &[Bytes]) -> Vec<Bytes> {
        let mut f = frames.to_vec();
        snapshot_order(&mut f);
        f
    }

    #[test]
    fn a_fetch_brings_the_frames_over() {
        let f = frames(2000);
        let (end, stats) = transfer(&f, 0);
        let Some(FetchEnd::Blob { from, blob }) = end else { panic!("{end:?}") };
        assert_eq!(from, B);
        assert!(unframe_blob(&blob) == (ordered(&f), true));
        assert_eq!((stats.repair_rounds, stats.transfers_failed), (0, 0), "no loss, no repair");
        assert_eq!((stats.senders_used, stats.parity_used), (1, 0), "{stats:?}");
    }

    #[test]
    fn lost_chunks_are_asked_again() {
        let f = frames(3000);
        let (end, stats) = transfer(&f, 7);
        let Some(FetchEnd::Blob { blob, .. }) = end else { panic!("{end:?}") };
        assert!(unframe_blob(&blob).0 == ordered(&f));
        assert!(stats.repair_rounds >= 1, "{stats:?}");
    }

    #[test]
    fn agreeing_siblings_share_the_transfer_and_parity_covers_one_cut_off() {
        let f = frames(3000);
        let snap = build_snapshot(&f, usize::MAX, 1, 1200).unwrap().0;
        let m = *snap.manifest();
        let per_shard = u64::from(m.chunks_per_shard());
        let k = u64::from(m.data_shards);
        // No loss: three senders, data shards only, each chunk once.
        let mut link = Link::new(vec![f.clone(); 3]);
        let (end, stats) = link.run();
        let Some(FetchEnd::Blob { blob, .. }) = end else { panic!("{end:?}") };
        assert!(blake3::hash(&blob).as_bytes() == &m.blob_hash);
        assert_eq!((stats.senders_used, stats.parity_used), (3, 0), "{stats:?}");
        assert_eq!(stats.chunks, k * per_shard, "{stats:?}");
        assert!(stats.senders.iter().all(|s| s.chunks >= per_shard), "{stats:?}");
        // The second sender is cut off after sending part of its share.
        let mut link = Link::new(vec![f.clone(); 3]);
        link.cut = Some((1, per_shard / 2));
        let (end, stats) = link.run();
        let Some(FetchEnd::Blob { blob, .. }) = end else { panic!("{end:?}") };
        assert!(blake3::hash(&blob).as_bytes() == &m.blob_hash);
        assert!(stats.parity_used >= 1, "{stats:?}");
        assert_eq!((stats.transfers, stats.transfers_failed), (1, 0), "not started over");
        let cut = stats.senders.iter().find(|s| s.addr == Some(addr(3))).expect("a sender");
        assert!(cut.silent && cut.chunks > 0, "{stats:?}");
        // What the cut-off sender sent is kept: at most its partial shards
        // and the other senders' last partial ones come on top of k shards.
        let received = stats.chunks + stats.chunks_redundant;
        assert!(received < (k + 3) * per_shard, "{received} chunks for {k} × {per_shard}");
        assert!(stats.chunks_redundant <= per_shard / 4, "{stats:?}");
    }

    #[test]
    fn siblings_that_disagree_are_fetched_from_one_at_a_time() {
        let f = frames(1500);
        let mut other = f.clone();
        other.pop();
        let mut link = Link::new(vec![f.clone(), other, f[..1000].to_vec()]);
        let (end, stats) = link.run();
        let Some(FetchEnd::Blob { blob, .. }) = end else { panic!("{end:?}") };
        assert!(!blob.is_empty());
        assert_eq!((stats.senders_used, stats.transfers), (1, 1), "{stats:?}");
        assert_eq!(stats.senders[1], SenderStats::default());
    }

    #[test]
    fn the_server_serves_any_shard_of_its_snapshot() {
        let now = Instant::now();
        let mut s = Server::new();
        assert_eq!(s.on_manifest_request(now, A, 5, true), ManifestAction::Build);
        let snap = build_snapshot(&frames(800), usize::MAX, 1, 1200).unwrap().0;
        let want = snap.clone();
        assert!(s.built(now, A, 5, Ok(snap)).is_some());
        let m = *want.manifest();
        let total = m.total_shards() as u8;
        for shard in 0..total {
            assert!(s.on_shard_request(now, A, 5, shard, 1, 2));
        }
        // Past the last shard: nothing queued.
        assert!(s.on_shard_request(now, A, 5, total, 0, 1));
        let mut got = Vec::new();
        while let Some((_, frame)) = s.next_chunk() {
            if let Ok(SnapshotRepr::ShardChunk { shard_index, chunk_index, data, .. }) =
                SnapshotRepr::parse(&frame)
            {
                assert_eq!(Some(data), want.chunk(shard_index, chunk_index));
                got.push((shard_index, chunk_index));
            }
        }
        let expect: Vec<(u8, u16)> = (0..total)
            .flat_map(|sh| [(sh, 1), (sh, 2)])
            .filter(|&(_, c)| c < m.chunks_per_shard())
            .collect();
        assert_eq!(got, expect);
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
