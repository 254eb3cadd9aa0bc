//! Byte-range field declarations and the big-endian accessors behind every view.
//!
//! Views declare their layout as `const SEQ: Field = 48..56;` so the code
//! reads like the offset tables in docs/PROTOCOL.md. The helpers below take a
//! slice that the view's `new_checked` has already proven long enough; they
//! use `get`, so even a wrong layout constant yields zero instead of a panic.

use crate::error::{Error, Result};

/// A field's byte range inside a message.
pub type Field = core::ops::Range<usize>;

/// Fails with [`Error::Truncated`] unless `buf` holds at least `needed` bytes.
#[inline]
pub const fn need(buf: &[u8], needed: usize) -> Result<()> {
    if buf.len() < needed { Err(Error::Truncated { needed, got: buf.len() }) } else { Ok(()) }
}

/// Fails with [`Error::LengthMismatch`] unless `buf` is exactly `len` bytes
/// (after checking it is not [`Error::Truncated`]).
#[inline]
pub const fn exact(buf: &[u8], len: usize) -> Result<()> {
    if buf.len() < len {
        Err(Error::Truncated { needed: len, got: buf.len() })
    } else if buf.len() > len {
        Err(Error::LengthMismatch { declared: len, actual: buf.len() })
    } else {
        Ok(())
    }
}

#[inline]
pub(crate) fn array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    match buf.get(at..at + N) {
        Some(s) => {
            let mut out = [0u8; N];
            out.copy_from_slice(s);
            out
        }
        None => [0u8; N],
    }
}

#[inline]
pub(crate) fn u8_at(buf: &[u8], at: usize) -> u8 {
    buf.get(at).copied().unwrap_or(0)
}

#[inline]
pub(crate) fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(array(buf, at))
}

#[inline]
pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(array(buf, at))
}

#[inline]
pub(crate) fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(array(buf, at))
}

#[inline]
pub(crate) fn i64_at(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(array(buf, at))
}

/// A borrowed sub-slice, empty when out of range (never panics).
#[inline]
pub(crate) fn slice(buf: &[u8], range: Field) -> &[u8] {
    buf.get(range).unwrap_or(&[])
}

/// A borrowed fixed-size array inside a buffer a view has already checked.
///
/// Only called by accessors of views whose `new_checked` proved
/// `at + N <= buf.len()`; views have no unchecked constructor, so the index
/// cannot go out of range.
#[inline]
pub(crate) fn array_ref<const N: usize>(buf: &[u8], at: usize) -> &[u8; N] {
    let (head, _) = buf[at..].split_first_chunk::<N>().expect("checked by new_checked");
    head
}

/// Writes big-endian integers and byte strings into an output buffer that the
/// encoder has already checked is large enough.
#[derive(Debug)]
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
}

impl<'a> Writer<'a> {
    /// Checks `buf` holds `len` bytes, then wraps it.
    pub(crate) fn new(buf: &'a mut [u8], len: usize) -> Result<Self> {
        if buf.len() < len {
            return Err(Error::Truncated { needed: len, got: buf.len() });
        }
        Ok(Writer { buf })
    }

    #[inline]
    pub(crate) fn bytes(&mut self, at: usize, src: &[u8]) {
        if let Some(dst) = self.buf.get_mut(at..at + src.len()) {
            dst.copy_from_slice(src);
        }
    }

    #[inline]
    pub(crate) fn u8(&mut self, at: usize, v: u8) {
        self.bytes(at, &[v]);
    }

    #[inline]
    pub(crate) fn u16(&mut self, at: usize, v: u16) {
        self.bytes(at, &v.to_be_bytes());
    }

    #[inline]
    pub(crate) fn u32(&mut self, at: usize, v: u32) {
        self.bytes(at, &v.to_be_bytes());
    }

    #[inline]
    pub(crate) fn u64(&mut self, at: usize, v: u64) {
        self.bytes(at, &v.to_be_bytes());
    }

    #[inline]
    pub(crate) fn i64(&mut self, at: usize, v: i64) {
        self.bytes(at, &v.to_be_bytes());
    }

    #[inline]
    pub(crate) fn zero(&mut self, range: Field) {
        if let Some(dst) = self.buf.get_mut(range) {
            dst.fill(0);
        }
    }
}
