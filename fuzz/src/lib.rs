//! What the state-machine fuzz targets share: reading typed fields off the
//! fuzzer's bytes.

/// Reads fields off the input in order; missing bytes read as zero, so
/// every input is a complete (if short) operation list.
#[derive(Debug)]
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }

    /// Two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// 32 bytes, zero-padded at the end of the input.
    pub fn array32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let b = self.bytes(32);
        out[..b.len()].copy_from_slice(b);
        out
    }
}
