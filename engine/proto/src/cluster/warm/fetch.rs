//! The fetching side of a warm restart: asking siblings for manifests,
//! agreeing on one, striping shard requests over up to
//! [`MANIFEST_PEERS`] senders, repairing and replacing silent ones, and
//! decoding the blob.
//!
//! # Invariants
//! - At most [`WINDOW`] chunks requested and not yet received; at most
//!   [`MAX_ROUNDS`] repair rounds per sender; a transfer without progress
//!   for [`STALL`] is abandoned for the next manifest; reassembly is
//!   bounded by [`REASSEMBLY_LIMIT`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ricochet_wire::gossip::SnapshotRepr;

use super::*;
use crate::gossip::snapshot::{
    ChunkOutcome, Manifest, Reassembler, SnapshotError, choose_manifest,
};

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
