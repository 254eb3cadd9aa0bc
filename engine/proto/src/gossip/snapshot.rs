//! G6 cold-start snapshots: Reed-Solomon coding, chunking and reassembly.
//!
//! A starting endpoint warms its cache from siblings (issue 6, scope 5): it
//! asks three neighbours for a manifest, picks the freshest one that has a
//! fingerprint quorum ([`choose_manifest`]), then fetches `k` data shards and
//! `m` parity shards from several neighbours at once. Any `k` complete shards
//! rebuild the snapshot, so losing one neighbour mid-transfer costs nothing
//! when `m ≥ 1`. Frames are the G6 messages of docs/PROTOCOL.md § "G6
//! `0x4736`"; this module is the coding on either side of them.
//!
//! - [`EncodedSnapshot::encode`] splits a blob into `k` equal data shards
//!   (zero-padded), computes `m` parity shards with `reed_solomon_simd`, and
//!   cuts every shard into chunks of [`Manifest::chunk_size`] bytes so each
//!   G6 shard-chunk frame fits the datagram budget ([`chunk_budget`]: the
//!   datagram, minus the 43-byte gossip envelope (stamp and MAC), minus the 16-byte G6 chunk
//!   header — 1173 bytes at the default 1232).
//! - [`Reassembler`] takes chunks in any order from any number of senders,
//!   and [`Reassembler::finish`] rebuilds the blob once any `k` shards are
//!   complete and checks it against the manifest's BLAKE3 hash.
//!
//! # Contract
//! - Pure: no I/O, no clocks. The HLC and fingerprint are the caller's.
//! - The encoding is deterministic: the same blob and parameters give the
//!   same manifest and shards on every sibling, so shards of one manifest
//!   may come from different senders.
//! - Chunks are untrusted. [`Reassembler::accept`] never panics; it refuses
//!   (and counts, see [`ReassemblyStats`]) chunks whose shard index, chunk
//!   count or length disagrees with the manifest, and chunks that repeat a
//!   received one with different bytes. Memory is bounded by the manifest:
//!   at most `(k + m) · shard_size` bytes plus a bit per chunk, refused up
//!   front beyond the `max_memory` the caller allows, and allocated only for
//!   shards that actually receive a chunk.
//! - A reassembled blob is returned only if its BLAKE3 hash equals
//!   [`Manifest::blob_hash`], which travels in the G6 manifest frame
//!   (73 bytes; [`Manifest::to_repr`], [`Manifest::from_repr`]).

use std::ops::Range;

use ricochet_wire::gossip::SnapshotRepr;
use ricochet_wire::mac::GOSSIP_OVERHEAD;

/// The default `--max-datagram`: the largest gossip datagram, MAC included.
pub const DEFAULT_MAX_DATAGRAM: usize = 1232;
/// Bytes of a G6 shard-chunk frame before its data: magic, length, kind,
/// request id, shard index, chunk index and chunk count (16).
pub const CHUNK_HEADER_LEN: usize = ricochet_wire::gossip::SNAPSHOT_CHUNK_HEADER_LEN;
/// Length of the BLAKE3 hash a manifest carries.
pub const HASH_LEN: usize = 32;
/// Responses that must agree on a fingerprint for [`choose_manifest`] to
/// call it a quorum (2 of the 3 neighbours probed).
pub const QUORUM: usize = 2;

/// Chunk data bytes that fit one datagram of `max_datagram` bytes once the
/// gossip envelope (stamp and cluster MAC) and the G6 chunk header are
/// taken off (1173 for 1232).
pub const fn chunk_budget(max_datagram: usize) -> usize {
    max_datagram.saturating_sub(GOSSIP_OVERHEAD + CHUNK_HEADER_LEN)
}

/// Why a snapshot could not be encoded or rebuilt.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The parameters or a manifest break a rule (the name says which).
    BadParams(&'static str),
    /// More bytes than allowed: a blob over 4 GiB or too many chunks per
    /// shard, or a manifest whose shards exceed the caller's memory limit.
    TooLarge {
        /// The limit.
        max: u64,
        /// What was asked for.
        got: u64,
    },
    /// Fewer than `k` shards are complete.
    NotReady {
        /// Shards complete.
        complete: usize,
        /// Shards needed (`k`).
        needed: usize,
    },
    /// Reed-Solomon refused the shards.
    Coding(reed_solomon_simd::Error),
    /// The rebuilt blob does not hash to the manifest's hash: some sender
    /// served different or corrupt shards.
    HashMismatch,
    /// A G6 frame that is not a manifest was given to [`Manifest::from_repr`].
    NotAManifest,
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadParams(what) => write!(f, "bad snapshot parameters: {what}"),
            Self::TooLarge { max, got } => write!(f, "snapshot too large: {got} > {max}"),
            Self::NotReady { complete, needed } => {
                write!(f, "{complete} of {needed} needed shards complete")
            }
            Self::Coding(e) => write!(f, "reed-solomon: {e}"),
            Self::HashMismatch => f.write_str("reassembled snapshot does not match its hash"),
            Self::NotAManifest => f.write_str("G6 frame is not a manifest"),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl From<reed_solomon_simd::Error> for SnapshotError {
    fn from(e: reed_solomon_simd::Error) -> Self {
        SnapshotError::Coding(e)
    }
}

/// What a sibling's snapshot holds and how it is coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Manifest {
    /// The sibling's hybrid logical clock when it took the snapshot;
    /// larger is fresher.
    pub hlc: u64,
    /// Fingerprint of the snapshot's contents (the G2 fingerprint).
    pub fingerprint: u64,
    /// Data shards `k`, at least 1.
    pub data_shards: u8,
    /// Parity shards `m`; `k + m ≤ 255`. Any `k` of the `k + m` rebuild.
    pub parity_shards: u8,
    /// Bytes per shard, at least 1; even when `m > 0` (Reed-Solomon
    /// works on 16-bit symbols).
    pub shard_size: u32,
    /// Bytes per chunk, at least 1; a shard is at most 65 535 chunks, the
    /// last of which may be short.
    pub chunk_size: u32,
    /// Bytes of the snapshot blob, at most `k · shard_size`.
    pub blob_len: u32,
    /// BLAKE3 of the blob.
    pub blob_hash: [u8; HASH_LEN],
}

impl Manifest {
    /// Checks every rule in the field docs (the wire's manifest rules plus
    /// what Reed-Solomon needs).
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let (k, m) = (usize::from(self.data_shards), usize::from(self.parity_shards));
        if k == 0 {
            return Err(SnapshotError::BadParams("data_shards"));
        }
        if k + m > 255 {
            return Err(SnapshotError::BadParams("parity_shards"));
        }
        if self.chunk_size == 0 {
            return Err(SnapshotError::BadParams("chunk_size"));
        }
        if self.shard_size == 0 || (m > 0 && self.shard_size & 1 != 0) {
            return Err(SnapshotError::BadParams("shard_size"));
        }
        let chunks = self.shard_size.div_ceil(self.chunk_size);
        if chunks > u32::from(u16::MAX) {
            return Err(SnapshotError::TooLarge { max: u16::MAX.into(), got: chunks.into() });
        }
        if (k as u64) * u64::from(self.shard_size) < u64::from(self.blob_len) {
            return Err(SnapshotError::BadParams("blob_len"));
        }
        if m > 0 && !reed_solomon_simd::ReedSolomonEncoder::supports(k, m) {
            return Err(SnapshotError::BadParams("parity_shards"));
        }
        Ok(())
    }

    /// `k + m`.
    pub fn total_shards(&self) -> usize {
        usize::from(self.data_shards) + usize::from(self.parity_shards)
    }

    /// Chunks per shard (every shard has the same number).
    pub fn chunks_per_shard(&self) -> u16 {
        let chunks = self.shard_size.div_ceil(self.chunk_size.max(1));
        u16::try_from(chunks).unwrap_or(u16::MAX)
    }

    /// Where chunk `chunk_index` lies within its shard, or `None` past the
    /// last chunk.
    pub fn chunk_range(&self, chunk_index: u16) -> Option<Range<usize>> {
        if chunk_index >= self.chunks_per_shard() {
            return None;
        }
        let size = self.chunk_size as usize;
        let start = usize::from(chunk_index) * size;
        let end = (start + size).min(self.shard_size as usize);
        Some(start..end)
    }

    /// Whether `other` describes the same coded bytes (same blob hash and
    /// geometry), so shards may be mixed between the two senders. The HLC
    /// and fingerprint may differ.
    pub fn same_encoding(&self, other: &Manifest) -> bool {
        (self.data_shards, self.parity_shards, self.shard_size, self.chunk_size)
            == (other.data_shards, other.parity_shards, other.shard_size, other.chunk_size)
            && (self.blob_len, self.blob_hash) == (other.blob_len, other.blob_hash)
    }

    /// The G6 manifest frame answering request `request_id`.
    pub fn to_repr(&self, request_id: u32) -> SnapshotRepr<'static> {
        SnapshotRepr::Manifest {
            request_id,
            hlc: self.hlc,
            fingerprint: self.fingerprint,
            total_bytes: self.blob_len,
            data_shards: self.data_shards,
            parity_shards: self.parity_shards,
            shard_size: self.shard_size,
            chunk_size: self.chunk_size,
            blob_hash: self.blob_hash,
        }
    }

    /// Lifts a received G6 manifest frame and validates it.
    pub fn from_repr(repr: &SnapshotRepr<'_>) -> Result<Self, SnapshotError> {
        let SnapshotRepr::Manifest {
            hlc,
            fingerprint,
            total_bytes,
            data_shards,
            parity_shards,
            shard_size,
            chunk_size,
            blob_hash,
            ..
        } = *repr
        else {
            return Err(SnapshotError::NotAManifest);
        };
        let manifest = Manifest {
            hlc,
            fingerprint,
            data_shards,
            parity_shards,
            shard_size,
            chunk_size,
            blob_len: total_bytes,
            blob_hash,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Bytes a [`Reassembler`] may hold for this manifest: every shard in
    /// full.
    pub fn reassembly_bytes(&self) -> u64 {
        self.total_shards() as u64 * u64::from(self.shard_size)
    }
}

/// How [`EncodedSnapshot::encode`] codes a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotParams {
    /// Data shards `k`, at least 1: one per neighbour the transfer fans out to.
    pub data_shards: u8,
    /// Parity shards `m`: how many neighbours may vanish mid-transfer.
    pub parity_shards: u8,
    /// Bytes per chunk; see [`chunk_budget`].
    pub chunk_size: u32,
}

impl Default for SnapshotParams {
    /// Two data shards and one parity shard — three neighbours, any one of
    /// which may fail — chunked for the default 1232-byte datagram.
    fn default() -> Self {
        SnapshotParams {
            data_shards: 2,
            parity_shards: 1,
            chunk_size: chunk_budget(DEFAULT_MAX_DATAGRAM) as u32,
        }
    }
}

/// A snapshot blob coded into `k + m` shards, ready to serve chunks.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedSnapshot {
    manifest: Manifest,
    /// Data shards first, then parity; each `shard_size` bytes.
    shards: Vec<Vec<u8>>,
}

impl EncodedSnapshot {
    /// Codes `blob` with `params`, stamping the manifest with `hlc` and
    /// `fingerprint`.
    ///
    /// Errors: [`SnapshotError::BadParams`] for `k = 0`, `k + m > 255` or a
    /// zero chunk size; [`SnapshotError::TooLarge`] for a blob over
    /// `u32::MAX` bytes or shards of more than 65 535 chunks.
    pub fn encode(
        blob: &[u8],
        hlc: u64,
        fingerprint: u64,
        params: SnapshotParams,
    ) -> Result<Self, SnapshotError> {
        let k = usize::from(params.data_shards);
        let m = usize::from(params.parity_shards);
        if k == 0 {
            return Err(SnapshotError::BadParams("data_shards"));
        }
        if params.chunk_size == 0 {
            return Err(SnapshotError::BadParams("chunk_size"));
        }
        let blob_len = u32::try_from(blob.len()).map_err(|_| SnapshotError::TooLarge {
            max: u32::MAX.into(),
            got: blob.len() as u64,
        })?;
        // Even and non-empty, as Reed-Solomon requires.
        let shard_size = blob.len().div_ceil(k).max(2).next_multiple_of(2);
        let shard_size = u32::try_from(shard_size).map_err(|_| SnapshotError::TooLarge {
            max: u32::MAX.into(),
            got: shard_size as u64,
        })?;
        let manifest = Manifest {
            hlc,
            fingerprint,
            data_shards: params.data_shards,
            parity_shards: params.parity_shards,
            shard_size,
            chunk_size: params.chunk_size,
            blob_len,
            blob_hash: *blake3::hash(blob).as_bytes(),
        };
        manifest.validate()?;
        let size = shard_size as usize;
        let mut shards: Vec<Vec<u8>> = (0..k)
            .map(|i| {
                let start = (i * size).min(blob.len());
                let end = ((i + 1) * size).min(blob.len());
                let mut shard = blob[start..end].to_vec();
                shard.resize(size, 0);
                shard
            })
            .collect();
        if m > 0 {
            let parity = reed_solomon_simd::encode(k, m, &shards)?;
            shards.extend(parity);
        }
        Ok(EncodedSnapshot { manifest, shards })
    }

    /// The manifest describing the coding.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Shard `index` (data shards first, then parity), or `None` past the last.
    pub fn shard(&self, index: u8) -> Option<&[u8]> {
        self.shards.get(usize::from(index)).map(Vec::as_slice)
    }

    /// Chunk `chunk_index` of shard `shard_index`, or `None` if either is
    /// out of range.
    pub fn chunk(&self, shard_index: u8, chunk_index: u16) -> Option<&[u8]> {
        let range = self.manifest.chunk_range(chunk_index)?;
        self.shard(shard_index)?.get(range)
    }

    /// The G6 shard-chunk frame carrying one chunk, answering `request_id`.
    pub fn chunk_repr(
        &self,
        request_id: u32,
        shard_index: u8,
        chunk_index: u16,
    ) -> Option<SnapshotRepr<'_>> {
        let data = self.chunk(shard_index, chunk_index)?;
        Some(SnapshotRepr::ShardChunk {
            request_id,
            shard_index,
            chunk_index,
            chunk_count: self.manifest.chunks_per_shard(),
            data,
        })
    }

    /// The frames answering a G6 shard request: chunks `first_chunk ..
    /// first_chunk + chunk_count` of `shard_index`, clipped to the shard.
    pub fn serve(
        &self,
        request_id: u32,
        shard_index: u8,
        first_chunk: u16,
        chunk_count: u16,
    ) -> impl Iterator<Item = SnapshotRepr<'_>> + '_ {
        let end = u32::from(first_chunk) + u32::from(chunk_count);
        let end = end.min(u32::from(self.manifest.chunks_per_shard()));
        (u32::from(first_chunk)..end).filter_map(move |i| {
            let i = u16::try_from(i).ok()?;
            self.chunk_repr(request_id, shard_index, i)
        })
    }
}

impl std::fmt::Debug for EncodedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedSnapshot").field("manifest", &self.manifest).finish_non_exhaustive()
    }
}

/// What [`Reassembler::accept`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkOutcome {
    /// Stored; the shard is still incomplete.
    Accepted,
    /// Stored, and it completed its shard.
    ShardComplete,
    /// Already held with the same bytes; ignored.
    Duplicate,
    /// Valid, but `k` shards are already complete (or this shard is); ignored.
    NotNeeded,
    /// Refused and counted.
    Rejected(Reject),
}

/// Why a chunk was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Not a shard-chunk frame.
    NotAChunk,
    /// The shard index is not below `k + m`.
    ShardIndex,
    /// The chunk count disagrees with the manifest, or the index is past it.
    ChunkIndex,
    /// The data is not as long as the manifest says this chunk is.
    ChunkLength,
    /// The chunk was already received with different bytes: two senders
    /// disagree. The first copy is kept.
    Conflict,
}

/// Counters a [`Reassembler`] keeps, for metrics and for telling a slow
/// transfer from a hostile one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ReassemblyStats {
    /// Chunks stored.
    pub accepted: u64,
    /// Chunks already held with the same bytes.
    pub duplicates: u64,
    /// Valid chunks that arrived after they stopped being needed.
    pub not_needed: u64,
    /// Chunks refused (any [`Reject`]).
    pub rejected: u64,
}

/// Collects shard chunks from several senders and rebuilds the blob.
#[derive(Debug, Clone)]
pub struct Reassembler {
    manifest: Manifest,
    shards: Vec<ShardSlot>,
    complete: usize,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// A reassembler for `manifest` that may hold at most `max_memory`
    /// bytes of shards.
    ///
    /// Errors: the manifest's own [`Manifest::validate`] errors, and
    /// [`SnapshotError::TooLarge`] if [`Manifest::reassembly_bytes`] exceeds
    /// `max_memory`.
    pub fn new(manifest: Manifest, max_memory: usize) -> Result<Self, SnapshotError> {
        manifest.validate()?;
        let need = manifest.reassembly_bytes();
        if need > max_memory as u64 {
            return Err(SnapshotError::TooLarge { max: max_memory as u64, got: need });
        }
        let shards = vec![ShardSlot::default(); manifest.total_shards()];
        Ok(Reassembler { manifest, shards, complete: 0, stats: ReassemblyStats::default() })
    }

    /// The manifest being reassembled.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Offers one chunk, from any sender, in any order. Never panics.
    pub fn accept(
        &mut self,
        shard_index: u8,
        chunk_index: u16,
        chunk_count: u16,
        data: &[u8],
    ) -> ChunkOutcome {
        let outcome = self.place(shard_index, chunk_index, chunk_count, data);
        let counter = match outcome {
            ChunkOutcome::Accepted | ChunkOutcome::ShardComplete => &mut self.stats.accepted,
            ChunkOutcome::Duplicate => &mut self.stats.duplicates,
            ChunkOutcome::NotNeeded => &mut self.stats.not_needed,
            ChunkOutcome::Rejected(_) => &mut self.stats.rejected,
        };
        *counter = counter.saturating_add(1);
        outcome
    }

    /// Offers a parsed G6 frame; anything but a shard chunk is
    /// [`Reject::NotAChunk`]. Matching the request id to a request this
    /// transfer sent is the caller's job.
    pub fn accept_frame(&mut self, frame: &SnapshotRepr<'_>) -> ChunkOutcome {
        match *frame {
            SnapshotRepr::ShardChunk { shard_index, chunk_index, chunk_count, data, .. } => {
                self.accept(shard_index, chunk_index, chunk_count, data)
            }
            _ => {
                self.stats.rejected = self.stats.rejected.saturating_add(1);
                ChunkOutcome::Rejected(Reject::NotAChunk)
            }
        }
    }

    /// Shards received in full.
    pub fn complete_shards(&self) -> usize {
        self.complete
    }

    /// Whether shard `index` is complete.
    pub fn is_shard_complete(&self, index: u8) -> bool {
        self.shards.get(usize::from(index)).is_some_and(|s| s.complete)
    }

    /// Whether `k` shards are complete, so [`Reassembler::finish`] can run.
    pub fn is_ready(&self) -> bool {
        self.complete >= usize::from(self.manifest.data_shards)
    }

    /// The counters so far.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// The chunks of shard `index` still missing, as `(first chunk, chunk
    /// count)` runs ready for G6 shard requests. Empty for a complete or
    /// unknown shard.
    pub fn missing_runs(&self, index: u8) -> Vec<(u16, u16)> {
        let Some(slot) = self.shards.get(usize::from(index)) else { return Vec::new() };
        if slot.complete {
            return Vec::new();
        }
        let mut runs: Vec<(u16, u16)> = Vec::new();
        for chunk in 0..self.manifest.chunks_per_shard() {
            if slot.has(chunk) {
                continue;
            }
            match runs.last_mut() {
                Some((first, count))
                    if u32::from(*first) + u32::from(*count) == u32::from(chunk) =>
                {
                    *count += 1;
                }
                _ => runs.push((chunk, 1)),
            }
        }
        runs
    }

    /// Rebuilds the blob from any `k` complete shards and checks its hash.
    ///
    /// Errors: [`SnapshotError::NotReady`] before `k` shards are complete,
    /// [`SnapshotError::HashMismatch`] if the result is not the manifest's
    /// blob (a sender served other bytes; retry with other senders).
    pub fn finish(&self) -> Result<Vec<u8>, SnapshotError> {
        let k = usize::from(self.manifest.data_shards);
        let m = usize::from(self.manifest.parity_shards);
        if !self.is_ready() {
            return Err(SnapshotError::NotReady { complete: self.complete, needed: k });
        }
        let data_complete = self.shards[..k].iter().all(|s| s.complete);
        let restored = if data_complete {
            Default::default()
        } else {
            let originals = self.shards[..k]
                .iter()
                .enumerate()
                .filter(|(_, s)| s.complete)
                .map(|(i, s)| (i, s.data.as_slice()));
            let recovery = self.shards[k..]
                .iter()
                .enumerate()
                .filter(|(_, s)| s.complete)
                .map(|(i, s)| (i, s.data.as_slice()));
            reed_solomon_simd::decode(k, m, originals, recovery)?
        };
        let mut blob = Vec::with_capacity(k * self.manifest.shard_size as usize);
        for (i, slot) in self.shards[..k].iter().enumerate() {
            let shard = if slot.complete { Some(&slot.data) } else { restored.get(&i) };
            let shard =
                shard.ok_or(SnapshotError::NotReady { complete: self.complete, needed: k })?;
            blob.extend_from_slice(shard);
        }
        blob.truncate(self.manifest.blob_len as usize);
        if blake3::hash(&blob).as_bytes() != &self.manifest.blob_hash {
            return Err(SnapshotError::HashMismatch);
        }
        Ok(blob)
    }

    fn place(
        &mut self,
        shard_index: u8,
        chunk_index: u16,
        chunk_count: u16,
        data: &[u8],
    ) -> ChunkOutcome {
        let manifest = self.manifest;
        let chunks = manifest.chunks_per_shard();
        let Some(slot) = self.shards.get_mut(usize::from(shard_index)) else {
            return ChunkOutcome::Rejected(Reject::ShardIndex);
        };
        if chunk_count != chunks {
            return ChunkOutcome::Rejected(Reject::ChunkIndex);
        }
        let Some(range) = manifest.chunk_range(chunk_index) else {
            return ChunkOutcome::Rejected(Reject::ChunkIndex);
        };
        if data.len() != range.len() {
            return ChunkOutcome::Rejected(Reject::ChunkLength);
        }
        if slot.has(chunk_index) {
            return if slot.data.get(range) == Some(data) {
                ChunkOutcome::Duplicate
            } else {
                ChunkOutcome::Rejected(Reject::Conflict)
            };
        }
        if slot.complete || self.complete >= usize::from(manifest.data_shards) {
            return ChunkOutcome::NotNeeded;
        }
        if slot.data.is_empty() {
            // First chunk of this shard: allocate it now, within the bound
            // `new` checked against `max_memory`.
            slot.data = vec![0; manifest.shard_size as usize];
            slot.have = vec![0; usize::from(chunks).div_ceil(64)];
        }
        let Some(dst) = slot.data.get_mut(range) else {
            return ChunkOutcome::Rejected(Reject::ChunkLength);
        };
        dst.copy_from_slice(data);
        slot.set(chunk_index);
        slot.received += 1;
        if slot.received == u32::from(chunks) {
            slot.complete = true;
            slot.have = Vec::new();
            self.complete += 1;
            ChunkOutcome::ShardComplete
        } else {
            ChunkOutcome::Accepted
        }
    }
}

/// One shard being received.
#[derive(Debug, Clone, Default)]
struct ShardSlot {
    /// Empty until the first chunk arrives, then `shard_size` bytes.
    data: Vec<u8>,
    /// One bit per chunk received; dropped once the shard is complete.
    have: Vec<u64>,
    received: u32,
    complete: bool,
}

impl ShardSlot {
    fn has(&self, chunk: u16) -> bool {
        if self.complete {
            return true;
        }
        let (word, bit) = (usize::from(chunk) / 64, chunk % 64);
        self.have.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn set(&mut self, chunk: u16) {
        let (word, bit) = (usize::from(chunk) / 64, chunk % 64);
        if let Some(w) = self.have.get_mut(word) {
            *w |= 1 << bit;
        }
    }
}

/// The manifest [`choose_manifest`] picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ManifestChoice {
    /// Position of the chosen manifest in the responses.
    pub index: usize,
    /// Whether at least [`QUORUM`] valid responses agree on its fingerprint.
    /// Without a quorum the freshest response is chosen anyway and the
    /// caller should flag the disagreement.
    pub quorum: bool,
    /// How many valid responses share its fingerprint (itself included).
    pub agreeing: usize,
}

/// Picks the manifest to restore from among the neighbours' responses: the
/// freshest by HLC among those whose fingerprint at least [`QUORUM`]
/// responses share, else (no quorum) the freshest of all. Invalid manifests
/// are ignored; ties go to the earlier response. `None` if none is valid.
pub fn choose_manifest(responses: &[Manifest]) -> Option<ManifestChoice> {
    let valid: Vec<(usize, &Manifest)> =
        responses.iter().enumerate().filter(|(_, m)| m.validate().is_ok()).collect();
    let agreeing = |fp: u64| valid.iter().filter(|(_, m)| m.fingerprint == fp).count();
    let freshest = |with_quorum: bool| {
        valid
            .iter()
            .filter(|(_, m)| !with_quorum || agreeing(m.fingerprint) >= QUORUM)
            // `max_by_key` keeps the last maximum; reversing keeps the first.
            .rev()
            .max_by_key(|(_, m)| m.hlc)
            .map(|&(index, m)| ManifestChoice {
                index,
                quorum: with_quorum,
                agreeing: agreeing(m.fingerprint),
            })
    };
    freshest(true).or_else(|| freshest(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
    }

    fn params(k: u8, m: u8, chunk_size: u32) -> SnapshotParams {
        SnapshotParams { data_shards: k, parity_shards: m, chunk_size }
    }

    /// Every chunk of the given shards, as (shard, chunk, count, bytes).
    fn chunks_of(enc: &EncodedSnapshot, shards: &[u8]) -> Vec<(u8, u16, u16, Vec<u8>)> {
        let count = enc.manifest().chunks_per_shard();
        let mut out = Vec::new();
        for &s in shards {
            for c in 0..count {
                out.push((s, c, count, enc.chunk(s, c).unwrap().to_vec()));
            }
        }
        out
    }

    /// A deterministic shuffle (xorshift).
    fn shuffle<T>(items: &mut [T], mut seed: u64) {
        for i in (1..items.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            items.swap(i, (seed % (i as u64 + 1)) as usize);
        }
    }

    #[test]
    fn chunk_budget_fits_the_default_datagram() {
        assert_eq!(chunk_budget(DEFAULT_MAX_DATAGRAM), 1173);
        assert_eq!(chunk_budget(10), 0);
        let enc = EncodedSnapshot::encode(&blob(5000, 1), 1, 2, SnapshotParams::default()).unwrap();
        let frame = enc.chunk_repr(9, 0, 0).unwrap();
        assert_eq!(frame.buffer_len() + GOSSIP_OVERHEAD, DEFAULT_MAX_DATAGRAM);
        let mut buf = vec![0; frame.buffer_len()];
        frame.emit(&mut buf).unwrap();
        assert_eq!(SnapshotRepr::parse(&buf), Ok(frame));
    }

    #[test]
    fn manifest_round_trips_through_the_wire() {
        let enc = EncodedSnapshot::encode(&blob(3000, 2), 77, 88, params(3, 2, 500)).unwrap();
        let m = *enc.manifest();
        assert_eq!((m.data_shards, m.parity_shards, m.shard_size, m.blob_len), (3, 2, 1000, 3000));
        let repr = m.to_repr(5);
        let mut buf = vec![0; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        let parsed = SnapshotRepr::parse(&buf).unwrap();
        assert_eq!(buf.len(), 73);
        assert_eq!(Manifest::from_repr(&parsed), Ok(m));
        let not = SnapshotRepr::ManifestRequest { request_id: 5 };
        assert_eq!(Manifest::from_repr(&not), Err(SnapshotError::NotAManifest));
    }

    #[test]
    fn encode_refuses_bad_params() {
        let b = blob(10, 0);
        let bad = |p| EncodedSnapshot::encode(&b, 0, 0, p).unwrap_err();
        assert_eq!(bad(params(0, 1, 100)), SnapshotError::BadParams("data_shards"));
        assert_eq!(bad(params(200, 56, 100)), SnapshotError::BadParams("parity_shards"));
        assert_eq!(bad(params(1, 1, 0)), SnapshotError::BadParams("chunk_size"));
        let big = blob(70_000 * 2, 0);
        let err = EncodedSnapshot::encode(&big, 0, 0, params(1, 0, 2)).unwrap_err();
        assert!(matches!(err, SnapshotError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn all_data_shards_rebuild_without_parity() {
        for len in [0, 1, 2, 3, 999, 1000, 1001] {
            let b = blob(len, 3);
            let enc = EncodedSnapshot::encode(&b, 1, 1, params(2, 0, 64)).unwrap();
            let mut r = Reassembler::new(*enc.manifest(), 1 << 20).unwrap();
            for (s, c, n, d) in chunks_of(&enc, &[0, 1]) {
                assert!(matches!(
                    r.accept(s, c, n, &d),
                    ChunkOutcome::Accepted | ChunkOutcome::ShardComplete
                ));
            }
            assert_eq!(r.finish(), Ok(b), "len {len}");
        }
    }

    /// Three neighbours serve one shard each (k = 2, m = 1); neighbour 1
    /// vanishes halfway through its shard. Chunks arrive shuffled, with
    /// duplicates and garbage mixed in; parity rebuilds the snapshot.
    #[test]
    fn losing_one_neighbour_mid_transfer_is_survived() {
        let b = blob(50_000, 4);
        let enc = EncodedSnapshot::encode(&b, 10, 20, SnapshotParams::default()).unwrap();
        let manifest = *enc.manifest();
        let per_shard = manifest.chunks_per_shard();
        assert_eq!(per_shard, 22);

        let mut arrivals = chunks_of(&enc, &[0, 2]);
        let from_lost: Vec<_> =
            chunks_of(&enc, &[1]).into_iter().take(usize::from(per_shard / 2)).collect();
        arrivals.extend(from_lost.iter().cloned());
        arrivals.extend(arrivals.clone().into_iter().step_by(3)); // duplicates
        arrivals.push((7, 0, per_shard, vec![0; 1200])); // no such shard
        arrivals.push((0, 0, per_shard + 1, vec![0; 1200])); // wrong count
        arrivals.push((0, per_shard, per_shard, vec![])); // past the end
        arrivals.push((2, 0, per_shard, vec![0; 3])); // short
        shuffle(&mut arrivals, 0xDEAD_BEEF);

        let mut r = Reassembler::new(manifest, 1 << 20).unwrap();
        for (s, c, n, d) in &arrivals {
            let _ = r.accept(*s, *c, *n, d);
        }
        assert!(r.is_ready());
        assert!(r.is_shard_complete(0) && r.is_shard_complete(2) && !r.is_shard_complete(1));
        assert_eq!(
            r.missing_runs(1).iter().map(|&(_, n)| n).sum::<u16>(),
            per_shard - per_shard / 2
        );
        let stats = r.stats();
        assert_eq!(stats.rejected, 4);
        assert!(stats.duplicates + stats.not_needed > 0);
        assert_eq!(r.finish(), Ok(b));
    }

    #[test]
    fn too_few_shards_is_not_ready() {
        let enc = EncodedSnapshot::encode(&blob(4000, 5), 1, 1, params(3, 1, 256)).unwrap();
        let mut r = Reassembler::new(*enc.manifest(), 1 << 20).unwrap();
        for (s, c, n, d) in chunks_of(&enc, &[0, 3]) {
            r.accept(s, c, n, &d);
        }
        assert_eq!(r.finish(), Err(SnapshotError::NotReady { complete: 2, needed: 3 }));
        assert_eq!(r.missing_runs(1), vec![(0, enc.manifest().chunks_per_shard())]);
        assert_eq!(r.missing_runs(0), vec![]);
        assert_eq!(r.missing_runs(200), vec![]);
    }

    #[test]
    fn conflicting_chunks_are_refused_and_a_bad_shard_fails_the_hash() {
        let b = blob(3000, 6);
        let enc = EncodedSnapshot::encode(&b, 1, 1, params(2, 1, 300)).unwrap();
        let mut r = Reassembler::new(*enc.manifest(), 1 << 20).unwrap();
        let n = enc.manifest().chunks_per_shard();
        let mut forged = enc.chunk(0, 0).unwrap().to_vec();
        forged[0] ^= 1;
        assert_eq!(r.accept(0, 0, n, &forged), ChunkOutcome::Accepted);
        assert_eq!(
            r.accept(0, 0, n, enc.chunk(0, 0).unwrap()),
            ChunkOutcome::Rejected(Reject::Conflict)
        );
        assert_eq!(r.accept(0, 0, n, &forged), ChunkOutcome::Duplicate);
        for (s, c, n, d) in chunks_of(&enc, &[0, 1]) {
            r.accept(s, c, n, &d);
        }
        assert_eq!(r.finish(), Err(SnapshotError::HashMismatch));
    }

    #[test]
    fn chunks_after_ready_are_not_needed() {
        let enc = EncodedSnapshot::encode(&blob(1000, 7), 1, 1, params(1, 2, 200)).unwrap();
        let mut r = Reassembler::new(*enc.manifest(), 1 << 20).unwrap();
        for (s, c, n, d) in chunks_of(&enc, &[2]) {
            r.accept(s, c, n, &d);
        }
        assert!(r.is_ready());
        let d = enc.chunk(0, 0).unwrap();
        assert_eq!(r.accept(0, 0, enc.manifest().chunks_per_shard(), d), ChunkOutcome::NotNeeded);
        assert_eq!(r.finish(), Ok(blob(1000, 7)));
    }

    #[test]
    fn memory_limit_is_enforced_up_front() {
        let enc = EncodedSnapshot::encode(&blob(10_000, 8), 1, 1, params(2, 1, 1000)).unwrap();
        assert_eq!(enc.manifest().reassembly_bytes(), 15_000);
        assert_eq!(
            Reassembler::new(*enc.manifest(), 14_999).unwrap_err(),
            SnapshotError::TooLarge { max: 14_999, got: 15_000 }
        );
        assert!(Reassembler::new(*enc.manifest(), 15_000).is_ok());
    }

    #[test]
    fn serve_answers_a_shard_request() {
        let enc = EncodedSnapshot::encode(&blob(2000, 9), 1, 1, params(2, 1, 300)).unwrap();
        let n = enc.manifest().chunks_per_shard();
        assert_eq!(n, 4);
        let frames: Vec<_> = enc.serve(3, 2, 2, 10).collect();
        assert_eq!(frames.len(), 2);
        let SnapshotRepr::ShardChunk { request_id, shard_index, chunk_index, chunk_count, data } =
            frames[1]
        else {
            panic!()
        };
        assert_eq!((request_id, shard_index, chunk_index, chunk_count), (3, 2, 3, 4));
        assert_eq!(data.len(), 1000 - 900);
        assert_eq!(enc.serve(3, 9, 0, 1).count(), 0);
        let mut r = Reassembler::new(*enc.manifest(), 1 << 20).unwrap();
        assert_eq!(
            r.accept_frame(&SnapshotRepr::ManifestRequest { request_id: 1 }),
            ChunkOutcome::Rejected(Reject::NotAChunk)
        );
        assert_eq!(r.accept_frame(&frames[0]), ChunkOutcome::Accepted);
    }

    fn manifest(hlc: u64, fingerprint: u64) -> Manifest {
        let mut m =
            *EncodedSnapshot::encode(b"x", hlc, fingerprint, params(1, 1, 10)).unwrap().manifest();
        m.hlc = hlc;
        m
    }

    #[test]
    fn choose_manifest_prefers_a_quorum_then_freshness() {
        assert_eq!(choose_manifest(&[]), None);
        // Two agree on fingerprint 1; the outlier is fresher but alone.
        let got = choose_manifest(&[manifest(5, 1), manifest(9, 2), manifest(7, 1)]).unwrap();
        assert_eq!(got, ManifestChoice { index: 2, quorum: true, agreeing: 2 });
        // All agree: the freshest.
        let got = choose_manifest(&[manifest(5, 1), manifest(9, 1), manifest(7, 1)]).unwrap();
        assert_eq!(got, ManifestChoice { index: 1, quorum: true, agreeing: 3 });
        // No quorum: the freshest anyway, flagged.
        let got = choose_manifest(&[manifest(5, 1), manifest(9, 2), manifest(7, 3)]).unwrap();
        assert_eq!(got, ManifestChoice { index: 1, quorum: false, agreeing: 1 });
        // Ties go to the earlier response; invalid manifests do not count.
        let mut broken = manifest(100, 1);
        broken.data_shards = 0;
        let got = choose_manifest(&[manifest(5, 2), broken, manifest(5, 2)]).unwrap();
        assert_eq!(got, ManifestChoice { index: 0, quorum: true, agreeing: 2 });
        assert_eq!(choose_manifest(&[broken]), None);
    }

    #[test]
    fn same_encoding_ignores_clock_and_fingerprint() {
        let a = manifest(1, 1);
        assert!(a.same_encoding(&Manifest { hlc: 9, fingerprint: 9, ..a }));
        assert!(!a.same_encoding(&Manifest { blob_hash: [0; 32], ..a }));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_any_k_shards_rebuild(
            len in 0usize..6000,
            k in 1u8..6,
            m in 0u8..4,
            chunk_size in 1u32..700,
            seed in any::<u64>(),
        ) {
            let b = blob(len, seed as u8);
            let enc = EncodedSnapshot::encode(&b, 1, 2, params(k, m, chunk_size)).unwrap();
            // Drop m shards, chosen by the seed, and shuffle the rest.
            let mut order: Vec<u8> = (0..k + m).collect();
            shuffle(&mut order, seed | 1);
            let kept = &order[..usize::from(k)];
            let mut arrivals = chunks_of(&enc, kept);
            shuffle(&mut arrivals, seed.rotate_left(7) | 1);
            let mut r = Reassembler::new(*enc.manifest(), usize::MAX).unwrap();
            for (s, c, n, d) in &arrivals {
                let got = r.accept(*s, *c, *n, d);
                prop_assert!(matches!(got, ChunkOutcome::Accepted | ChunkOutcome::ShardComplete));
            }
            prop_assert_eq!(r.finish(), Ok(b));
        }

        #[test]
        fn prop_garbage_never_panics(
            k in 1u8..4,
            m in 0u8..3,
            junk in proptest::collection::vec(
                (any::<u8>(), any::<u16>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..80)),
                0..200,
            ),
        ) {
            let enc = EncodedSnapshot::encode(&blob(500, 1), 1, 2, params(k, m, 64)).unwrap();
            let mut r = Reassembler::new(*enc.manifest(), 1 << 20).unwrap();
            let real = enc.manifest().chunks_per_shard();
            for (s, c, n, d) in &junk {
                // Bias towards plausible fields so the deeper paths run too.
                let (s, c) = (s % (k + m + 1), c % (real + 1));
                let n = if n % 2 == 0 { real } else { *n };
                let _ = r.accept(s, c, n, d);
            }
            let st = r.stats();
            prop_assert_eq!(st.accepted + st.duplicates + st.not_needed + st.rejected, junk.len() as u64);
            match r.finish() {
                Ok(got) => prop_assert_eq!(got, blob(500, 1)),
                Err(e) => {
                    let expected =
                        matches!(e, SnapshotError::NotReady { .. } | SnapshotError::HashMismatch);
                    prop_assert!(expected, "{}", e);
                }
            }
        }
    }
}
