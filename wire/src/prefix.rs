//! The 7-byte prefix every BRC-124 data frame and BRC-126 control message
//! shares, and classification of a datagram by it.
//!
//! docs/PROTOCOL.md § "Common prefix": magic `0xE3E1F3E8` (4 B), protocol
//! version `0x02BF` (2 B), then byte 6 — the frame version of a data frame
//! (0x01–0x09) or the type of a control message (0x10 and up). The two ranges
//! never overlap, so one byte tells them apart.

use crate::error::{Error, Result};
use crate::field::{Field, need, u8_at, u16_at, u32_at};
use crate::{MAGIC, PROTOCOL_VERSION};

pub(crate) const MAGIC_F: Field = 0..4;
pub(crate) const VERSION_F: Field = 4..6;
pub(crate) const KIND: usize = 6;
/// Length of the common prefix.
pub const LEN: usize = 7;

/// What byte 6 says a fabric datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A data frame; the byte is its frame version.
    Frame(u8),
    /// A BRC-126 control message; the byte is its type.
    Control(u8),
}

/// Checks magic and protocol version and returns what byte 6 says.
///
/// Does not check that the frame version or type is one ricochet knows; the
/// message's own `new_checked` does that.
pub fn classify(buf: &[u8]) -> Result<Kind> {
    need(buf, LEN)?;
    if u32_at(buf, MAGIC_F.start) != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = u16_at(buf, VERSION_F.start);
    if version != PROTOCOL_VERSION {
        return Err(Error::BadVersion { got: version });
    }
    let kind = u8_at(buf, KIND);
    Ok(if kind < 0x10 { Kind::Frame(kind) } else { Kind::Control(kind) })
}

/// Writes magic, protocol version and byte 6 into the first 7 bytes.
pub(crate) fn write(w: &mut crate::field::Writer<'_>, kind: u8) {
    w.u32(MAGIC_F.start, MAGIC);
    w.u16(VERSION_F.start, PROTOCOL_VERSION);
    w.u8(KIND, kind);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_byte_six() {
        let mut b = [0xE3, 0xE1, 0xF3, 0xE8, 0x02, 0xBF, 0x02];
        assert_eq!(classify(&b), Ok(Kind::Frame(2)));
        b[6] = 0x10;
        assert_eq!(classify(&b), Ok(Kind::Control(0x10)));
        b[5] = 0xC0;
        assert_eq!(classify(&b), Err(Error::BadVersion { got: 0x02C0 }));
        b[0] = 0;
        assert_eq!(classify(&b), Err(Error::BadMagic));
        assert_eq!(classify(&b[..6]), Err(Error::Truncated { needed: 7, got: 6 }));
    }
}
