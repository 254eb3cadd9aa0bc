//! The one error type every decoder and encoder in this crate returns.

use core::fmt;

/// Why a datagram (or a buffer handed to an encoder) was refused.
///
/// Small and `Copy` so the packet path can count drops by [`Error::reason`]
/// without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The buffer ends before the structure does.
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes that were there.
        got: usize,
    },
    /// The leading magic is not the one this message family uses.
    BadMagic,
    /// The protocol version field is not one ricochet speaks.
    BadVersion {
        /// The version found on the wire.
        got: u16,
    },
    /// A data-frame version byte ricochet does not know.
    UnknownFrameVersion(u8),
    /// A message-type (or kind) byte ricochet does not know.
    UnknownType(u8),
    /// A length field disagrees with the datagram, or a fixed-size message
    /// has the wrong size.
    LengthMismatch {
        /// Length the header (or the message type) declares.
        declared: usize,
        /// Length actually present.
        actual: usize,
    },
    /// A variable-length part exceeds its protocol limit.
    TooLong {
        /// The limit.
        max: usize,
        /// What was found (or asked for).
        got: usize,
    },
    /// A field holds a value the protocol forbids (the name says which).
    BadField(&'static str),
    /// An ed25519 signature failed strict verification, or a key is invalid.
    BadSignature,
    /// The cluster MAC trailer did not verify.
    BadMac,
}

impl Error {
    /// A short, stable, label-safe reason, for `ricochet_dropped_total{reason=…}`.
    pub const fn reason(&self) -> &'static str {
        match self {
            Error::Truncated { .. } => "truncated",
            Error::BadMagic => "bad_magic",
            Error::BadVersion { .. } => "bad_version",
            Error::UnknownFrameVersion(_) => "unknown_frame_version",
            Error::UnknownType(_) => "unknown_type",
            Error::LengthMismatch { .. } => "length_mismatch",
            Error::TooLong { .. } => "too_long",
            Error::BadField(_) => "bad_field",
            Error::BadSignature => "bad_signature",
            Error::BadMac => "bad_mac",
        }
    }

    /// Every value [`Error::reason`] can return, for pre-registering metrics.
    pub const REASONS: [&'static str; 10] = [
        "truncated",
        "bad_magic",
        "bad_version",
        "unknown_frame_version",
        "unknown_type",
        "length_mismatch",
        "too_long",
        "bad_field",
        "bad_signature",
        "bad_mac",
    ];
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { needed, got } => {
                write!(f, "truncated: needed {needed} bytes, got {got}")
            }
            Error::BadMagic => f.write_str("bad magic"),
            Error::BadVersion { got } => write!(f, "unsupported protocol version {got:#06x}"),
            Error::UnknownFrameVersion(v) => write!(f, "unknown frame version {v:#04x}"),
            Error::UnknownType(t) => write!(f, "unknown message type {t:#04x}"),
            Error::LengthMismatch { declared, actual } => {
                write!(f, "length mismatch: declared {declared} bytes, datagram has {actual}")
            }
            Error::TooLong { max, got } => write!(f, "too long: {got} bytes, limit {max}"),
            Error::BadField(name) => write!(f, "invalid value in field {name}"),
            Error::BadSignature => f.write_str("signature verification failed"),
            Error::BadMac => f.write_str("cluster MAC verification failed"),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias used across the crate.
pub type Result<T> = core::result::Result<T, Error>;
