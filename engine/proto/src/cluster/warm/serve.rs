//! The serving side of a warm restart: snapshot sessions a sibling builds
//! from its hot frames and answers manifest and shard requests from.
//!
//! # Invariants
//! - At most [`MAX_SESSIONS`] sessions, each with at most
//!   [`MAX_QUEUED_CHUNKS`] chunks queued; a session ends [`SESSION_IDLE`]
//!   after its last request, a build that never finished after
//!   [`BUILD_TIMEOUT`]; a snapshot younger than [`SNAPSHOT_REUSE`] is
//!   served to another requester instead of building a new one.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::gossip::snapshot::EncodedSnapshot;

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
