//! The G6 snapshot blob: the frames a warm restart carries, each behind its
//! length, `([u32 length][frame])*`.
//!
//! Implements `docs/PROTOCOL.md` § "G6 snapshot blob". The blob is what G6
//! Reed-Solomon codes into shards and what the manifest's BLAKE3 hash
//! covers ([`crate::gossip::SnapshotRepr`]); the engine's warm restart
//! builds it from its hot frames and imports the frames a fetched blob
//! holds.
//!
//! | offset | size | field |
//! |--------|------|-------|
//! | 0      | 4    | length `n` of the first frame, big-endian |
//! | 4      | n    | the frame's bytes (a data frame as cached; not parsed here) |
//! | 4 + n  | …    | the next record, the same way, up to the end of the blob |
//!
//! An empty blob holds no frame. A record cut short by the end of the blob
//! is malformed.
//!
//! # Contract
//! - [`Blob::new_checked`] and [`frames`] never panic and never allocate;
//!   [`frames`] walks a blob leniently, yielding every whole frame before
//!   the first malformed record.
//! - [`emit_record`] writes exactly [`record_len`] bytes, and the frames of
//!   the records it wrote read back unchanged.

use crate::error::{Error, Result};
use crate::field::{Writer, u32_at};

/// Bytes of the length before each frame.
pub const LEN_PREFIX: usize = 4;
/// Longest frame a record can hold (the length is a `u32`).
pub const MAX_FRAME: usize = u32::MAX as usize;

/// A checked blob: every record is whole and the last one ends the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob<'a> {
    buf: &'a [u8],
}

impl<'a> Blob<'a> {
    /// Walks every record. Errors: [`Error::Truncated`] for a record cut
    /// short (counted from the blob's start).
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        for frame in frames(buf) {
            frame?;
        }
        Ok(Blob { buf })
    }

    /// The frames, in order.
    pub fn frames(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        frames(self.buf).map_while(|f| f.ok())
    }
}

/// The frames of `blob` in order, each `Ok`, then (if the blob ends inside
/// a record) one [`Error::Truncated`], then nothing.
pub fn frames(blob: &[u8]) -> Frames<'_> {
    Frames { blob, at: 0 }
}

/// Bytes [`emit_record`] writes for a frame of `frame_len` bytes.
pub const fn record_len(frame_len: usize) -> usize {
    LEN_PREFIX + frame_len
}

/// Writes `[u32 length][frame]` into the start of `buf` and returns its
/// length. Errors: [`Error::TooLong`] for a frame over [`MAX_FRAME`]
/// bytes, [`Error::Truncated`] if `buf` is short.
pub fn emit_record(frame: &[u8], buf: &mut [u8]) -> Result<usize> {
    let len = u32::try_from(frame.len())
        .map_err(|_| Error::TooLong { max: MAX_FRAME, got: frame.len() })?;
    let n = record_len(frame.len());
    let mut w = Writer::new(buf, n)?;
    w.u32(0, len);
    w.bytes(LEN_PREFIX, frame);
    Ok(n)
}

/// The walk [`frames`] returns.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    blob: &'a [u8],
    /// Offset of the next record; past the end once done or failed.
    at: usize,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8]>;

    fn next(&mut self) -> Option<Result<&'a [u8]>> {
        let got = self.blob.len();
        if self.at >= got {
            return None;
        }
        let start = self.at + LEN_PREFIX;
        if start > got {
            self.at = usize::MAX;
            return Some(Err(Error::Truncated { needed: start, got }));
        }
        let end = start.saturating_add(u32_at(self.blob, self.at) as usize);
        match self.blob.get(start..end) {
            Some(frame) => {
                self.at = end;
                Some(Ok(frame))
            }
            None => {
                self.at = usize::MAX;
                Some(Err(Error::Truncated { needed: end, got }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob_of(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![0u8; frames.iter().map(|f| record_len(f.len())).sum()];
        let mut at = 0;
        for f in frames {
            at += emit_record(f, &mut out[at..]).unwrap();
        }
        assert_eq!(at, out.len());
        out
    }

    /// docs/PROTOCOL.md § "G6 snapshot blob": frames `abc`, empty, `Z`.
    const GOLDEN: [u8; 16] = [
        0x00, 0x00, 0x00, 0x03, b'a', b'b', b'c', //
        0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x01, b'Z',
    ];

    #[test]
    fn golden_vector_both_ways() {
        assert_eq!(blob_of(&[b"abc", b"", b"Z"]), GOLDEN);
        let blob = Blob::new_checked(&GOLDEN).unwrap();
        assert_eq!(blob.frames().collect::<Vec<_>>(), [&b"abc"[..], b"", b"Z"]);
        assert_eq!(Blob::new_checked(&[]).unwrap().frames().count(), 0);
    }

    fn walk(b: &[u8]) -> Vec<Result<&[u8]>> {
        frames(b).collect()
    }

    #[test]
    fn a_cut_record_ends_the_walk() {
        assert_eq!(
            walk(&GOLDEN[..15]),
            [Ok(&b"abc"[..]), Ok(b""), Err(Error::Truncated { needed: 16, got: 15 })]
        );
        assert_eq!(
            walk(&GOLDEN[..9]),
            [Ok(&b"abc"[..]), Err(Error::Truncated { needed: 11, got: 9 })]
        );
        assert_eq!(
            walk(&[0xFF, 0xFF, 0xFF, 0xFF, 1]),
            [Err(Error::Truncated { needed: 4 + 0xFFFF_FFFF, got: 5 })]
        );
        assert_eq!(Blob::new_checked(&GOLDEN[..3]), Err(Error::Truncated { needed: 4, got: 3 }));
        assert_eq!(emit_record(b"abc", &mut [0; 6]), Err(Error::Truncated { needed: 7, got: 6 }));
    }

    proptest! {
        #[test]
        fn prop_round_trip(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            let blob = blob_of(&refs);
            let view = Blob::new_checked(&blob).unwrap();
            prop_assert_eq!(view.frames().collect::<Vec<_>>(), refs);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let walked: Vec<_> = frames(&data).collect();
            let whole: Vec<&[u8]> = walked.iter().filter_map(|f| f.as_ref().ok().copied()).collect();
            prop_assert!(walked.iter().filter(|f| f.is_err()).count() <= 1);
            prop_assert_eq!(Blob::new_checked(&data).is_ok(), whole.len() == walked.len());
            // Whatever was walked re-emits to the blob's prefix.
            let again = blob_of(&whole);
            prop_assert_eq!(&data[..again.len()], &again[..]);
        }
    }
}
