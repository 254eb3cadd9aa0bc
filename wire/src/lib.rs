//! `ricochet-wire`: every byte layout ricochet puts on or takes off the wire.
//!
//! # Contract
//! - **Views** (`Nack<'a>`, `Frame<'a>`, …) borrow a datagram. They are built
//!   only by `new_checked`, which proves every fixed field is in range and
//!   every length field agrees with the datagram; after that no accessor can
//!   panic. Checking never allocates.
//! - **Reprs** (`NackRepr`, `FrameRepr<'a>`, …) are the parsed, owned-or-
//!   borrowed form: `Repr::parse(bytes)` checks and lifts, `repr.emit(buf)`
//!   writes exactly `repr.buffer_len()` bytes and returns that length.
//!   `parse(emit(x)) == x` for every valid `x` (property-tested).
//! - Parsing any byte string never panics (fuzzed: see `fuzz/`).
//! - One small `Copy` error enum, [`Error`], whose [`Error::reason`] is the
//!   label used for `ricochet_dropped_total{reason=…}`.
//! - No sockets, no clocks, no threads: time enters as arguments.
//!
//! All multi-byte integers are big-endian. Each module cites the section of
//! `docs/PROTOCOL.md` (and the BRC number) it implements; that document holds
//! the offset tables and one golden vector per message, checked by
//! `tests/golden*.rs` in both directions.

/// The most a datagram from a source nobody has proven (every UDP source)
/// may draw back toward it, as a multiple of its own size: 3, as QUIC
/// allows a server before it has validated a client's address (RFC 9000
/// § 8.1). The NACK service, gossip and the DHT all answer within it; a
/// requester that wants a larger answer pads its request
/// ([`dht::PADDED_REQUEST_LEN`]).
pub const AMPLIFICATION: usize = 3;

pub mod blob;
pub mod control;
pub mod crc32c;
pub mod dht;
pub mod endpoint;
pub mod error;
pub mod field;
pub mod flow;
pub mod frame;
pub mod gossip;
pub mod group;
pub mod mac;
pub mod manifest;
pub mod members;
pub mod pex;
pub mod prefix;
pub mod record;

pub use error::{Error, Result};

/// Every data frame and BRC-126 control message starts with this magic.
pub const MAGIC: u32 = 0xE3E1_F3E8;
/// The fabric protocol version that follows the magic.
pub const PROTOCOL_VERSION: u16 = 0x02BF;
