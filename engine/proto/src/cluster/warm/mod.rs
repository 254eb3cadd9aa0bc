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
//! 3. Pick one ([`choose_manifest`](crate::gossip::snapshot::choose_manifest) over the non-empty manifests: the
//!    freshest with a fingerprint quorum; all empty: done, `empty`). Every
//!    sibling whose manifest has the same encoding (blob hash and geometry,
//!    [`Manifest::same_encoding`](crate::gossip::snapshot::Manifest::same_encoding)) is a *sender* of the transfer; when the
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
//!   [`Reassembler`](crate::gossip::snapshot::Reassembler), bounded by [`REASSEMBLY_LIMIT`]; a manifest needs
//!   `(k + m) / k` of its blob, 1.5 from [`DATA_SHARDS`] chunks on, so
//!   96 MiB for a [`WARM_MAX_BYTES`] snapshot.

use std::time::Duration;

use bytes::Bytes;
use ricochet_wire::blob;
use ricochet_wire::gossip::SnapshotRepr;

use crate::gossip::snapshot::{EncodedSnapshot, SnapshotError, SnapshotParams};

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

mod fetch;
mod serve;
#[cfg(test)]
mod tests;

pub use fetch::{Fetch, FetchEnd, FetchStats, Outcome, SenderStats};
pub use serve::{ManifestAction, ServeStats, Server};
