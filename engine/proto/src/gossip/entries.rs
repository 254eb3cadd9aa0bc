//! The entries of a G1 chunk: ricochet's record codec inside the frame's
//! opaque `entries` field (docs/PROTOCOL.md § "G1 `0x4731`" leaves them to
//! the engine).
//!
//! ```text
//! [u8 meta] ([u16 record length][record])*
//! ```
//!
//! # Contract
//! - `meta` bit 0 is *backpressure*: the sender is overloaded and asks the
//!   receiver to back off. Other bits are reserved and must be zero.
//! - Each chunk is self-contained: records are never split across chunks,
//!   so a receiver can apply whatever chunks arrive.
//! - [`parse`] checks the whole field before yielding any record; a field
//!   that does not split exactly into records is refused, so a malformed
//!   chunk applies nothing. Parsing never panics and never allocates.
//! - [`chunk`] packs records greedily in order into chunks of at most
//!   `capacity` bytes each (meta byte included), at most `max_total`
//!   record bytes and `u16::MAX` chunks in all; a record that cannot fit an
//!   empty chunk is skipped and counted, records beyond the totals are cut
//!   and reported. There is always at least one chunk.

/// Meta bit 0: the sender signals backpressure.
pub const META_BACKPRESSURE: u8 = 0x01;
/// Bytes before the first record.
pub const META_LEN: usize = 1;
/// Bytes of framing per record.
pub const RECORD_OVERHEAD: usize = 2;

/// Why an entries field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntriesError {
    /// No meta byte.
    Empty,
    /// A reserved meta bit is set.
    ReservedMeta,
    /// A record length runs past the end (or a length prefix is cut).
    Truncated,
}

/// A checked entries field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entries<'a> {
    meta: u8,
    records: &'a [u8],
    count: usize,
}

impl<'a> Entries<'a> {
    /// The meta byte.
    pub fn meta(&self) -> u8 {
        self.meta
    }

    /// Whether the sender signals backpressure.
    pub fn backpressure(&self) -> bool {
        self.meta & META_BACKPRESSURE != 0
    }

    /// Records in the field.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the field holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records, in order.
    pub fn iter(&self) -> Records<'a> {
        Records { rest: self.records }
    }
}

/// Iterator over the records of a checked field.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = split_len(self.rest)?;
        let (rec, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        Some(rec)
    }
}

fn split_len(b: &[u8]) -> Option<(usize, &[u8])> {
    let (head, rest) = b.split_first_chunk::<2>()?;
    Some((usize::from(u16::from_be_bytes(*head)), rest))
}

/// Checks an entries field.
pub fn parse(field: &[u8]) -> Result<Entries<'_>, EntriesError> {
    let (&meta, records) = field.split_first().ok_or(EntriesError::Empty)?;
    if meta & !META_BACKPRESSURE != 0 {
        return Err(EntriesError::ReservedMeta);
    }
    let mut rest = records;
    let mut count = 0;
    while !rest.is_empty() {
        let (len, after) = split_len(rest).ok_or(EntriesError::Truncated)?;
        rest = after.get(len..).ok_or(EntriesError::Truncated)?;
        count += 1;
    }
    Ok(Entries { meta, records, count })
}

/// Records packed into chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    /// Each chunk's entries field (meta byte first); at least one.
    pub chunks: Vec<Vec<u8>>,
    /// Records included.
    pub included: usize,
    /// Records that could not fit even an empty chunk.
    pub oversize: usize,
    /// Whether records were cut for the byte or chunk-count limit.
    pub truncated: bool,
}

/// Packs `records` into entries fields of at most `capacity` bytes each
/// (module docs).
pub fn chunk<R: AsRef<[u8]>>(
    records: &[R],
    capacity: usize,
    max_total: usize,
    meta: u8,
) -> Chunked {
    let mut out = Chunked::default();
    let mut current = vec![meta];
    let mut total = 0usize;
    for r in records {
        let r = r.as_ref();
        let need = RECORD_OVERHEAD + r.len();
        if r.len() > usize::from(u16::MAX) || META_LEN + need > capacity {
            out.oversize += 1;
            continue;
        }
        if total + r.len() > max_total {
            out.truncated = true;
            break;
        }
        if current.len() + need > capacity {
            if out.chunks.len() + 1 >= usize::from(u16::MAX) {
                out.truncated = true;
                break;
            }
            out.chunks.push(core::mem::replace(&mut current, vec![meta]));
        }
        current.extend_from_slice(&(r.len() as u16).to_be_bytes());
        current.extend_from_slice(r);
        total += r.len();
        out.included += 1;
    }
    out.chunks.push(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_checks_everything_first() {
        assert_eq!(parse(&[]), Err(EntriesError::Empty));
        assert_eq!(parse(&[0x02]), Err(EntriesError::ReservedMeta));
        assert_eq!(parse(&[0, 0]), Err(EntriesError::Truncated));
        assert_eq!(parse(&[0, 0, 2, b'a']), Err(EntriesError::Truncated));
        // A good record followed by a bad one: nothing is yielded.
        assert_eq!(parse(&[0, 0, 1, b'a', 0, 5]), Err(EntriesError::Truncated));
        let e = parse(&[1, 0, 1, b'a', 0, 0, 0, 2, b'b', b'c']).unwrap();
        assert!(e.backpressure());
        assert_eq!(e.len(), 3);
        assert_eq!(e.iter().collect::<Vec<_>>(), vec![&b"a"[..], b"", b"bc"]);
        assert!(parse(&[0]).unwrap().is_empty());
    }

    #[test]
    fn chunking_respects_capacity_and_limits() {
        let recs = [vec![1u8; 5], vec![2; 5], vec![3; 50], vec![4; 5]];
        // capacity 16: meta + (2+5) + (2+5) = 15 fits two small records.
        let c = chunk(&recs, 16, usize::MAX, 0);
        assert_eq!(c.oversize, 1);
        assert_eq!(c.included, 3);
        assert_eq!(c.chunks.len(), 2);
        assert!(c.chunks.iter().all(|x| x.len() <= 16));
        let c = chunk(&recs, 100, 10, META_BACKPRESSURE);
        assert!(c.truncated);
        assert_eq!(c.included, 2);
        assert_eq!(c.chunks[0][0], META_BACKPRESSURE);
        let none: [&[u8]; 0] = [];
        assert_eq!(chunk(&none, 100, 100, 0).chunks, vec![vec![0u8]]);
    }

    proptest! {
        #[test]
        fn chunks_round_trip(
            recs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..60),
            capacity in 3usize..200,
        ) {
            let c = chunk(&recs, capacity, usize::MAX, 0);
            let mut got = Vec::new();
            for ch in &c.chunks {
                prop_assert!(ch.len() <= capacity.max(1));
                let e = parse(ch).unwrap();
                got.extend(e.iter().map(<[u8]>::to_vec));
            }
            let want: Vec<Vec<u8>> =
                recs.iter().filter(|r| 1 + 2 + r.len() <= capacity).cloned().collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(c.oversize + c.included, recs.len());
        }

        #[test]
        fn parse_never_panics(b in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(e) = parse(&b) {
                prop_assert_eq!(e.iter().count(), e.len());
            }
        }
    }
}
