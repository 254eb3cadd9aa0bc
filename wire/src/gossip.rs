//! Gossip frames G1–G6: whisper, the control plane between sibling endpoints
//! (default UDP port 9310).
//!
//! Implements docs/PROTOCOL.md § "Gossip (G1–G6)". The frame set, magics and
//! limits come from seed 002 (Go package `whisper`); the layouts inside the
//! frames — G1's chunk header, how G4 tells a pull from a reconciliation, the
//! IBLT cell and the G6 bodies — are ricochet's own and are specified there.
//!
//! | magic    | frame | message                                          |
//! |----------|-------|--------------------------------------------------|
//! | `0x4731` | G1    | full/delta exchange, chunked ([`Exchange`])      |
//! | `0x4732` | G2    | digest probe, exactly 12 bytes ([`Digest`])      |
//! | `0x4733` | G3    | rumor push ([`Rumor`])                           |
//! | `0x4734` | G4    | pull ([`Pull`]) or IBLT sync ([`Reconcile`])     |
//! | `0x4735` | G5    | rumor ACK, exactly 34 bytes ([`RumorAck`])       |
//! | `0x4736` | G6    | snapshot transfer ([`Snapshot`])                 |
//!
//! # Contract
//! - A view exists only once `new_checked` has proven that every length field
//!   agrees with the datagram and every field holds a permitted value; after
//!   that its accessors cannot panic. Reprs borrow topics and payloads from
//!   the datagram, so neither checking nor parsing allocates.
//! - The encoding is canonical: a Repr keeps every field (G1's more-chunks
//!   flag is derived from the chunk position and must agree with it) and
//!   reserved bits must be zero, so `emit(parse(b)) == b` for every `b` that
//!   parses.
//! - `emit` refuses every Repr that `parse` would refuse, with the same error.
//! - The envelope that authenticates gossip datagrams (padding, stamp and
//!   cluster MAC, [`crate::mac::ClusterKey::open_gossip`]) is not part of
//!   these layouts: it is verified and removed before a frame is parsed
//!   here.
//! - PEX entries travel inside G1 bodies of topic `pex`; their signed format
//!   is not defined in this module.

use crate::error::{Error, Result};
use crate::field::{
    Field, Writer, array, array_ref, exact, i64_at, need, slice, u8_at, u16_at, u32_at, u64_at,
};

/// Default UDP port for gossip between sibling endpoints.
pub const DEFAULT_PORT: u16 = 9310;

/// G1 magic: full or delta state exchange.
pub const G1_EXCHANGE: u16 = 0x4731;
/// G2 magic: digest probe.
pub const G2_DIGEST: u16 = 0x4732;
/// G3 magic: rumor push.
pub const G3_RUMOR: u16 = 0x4733;
/// G4 magic: pull request or IBLT reconciliation (byte 2 says which).
pub const G4_PULL_RECONCILE: u16 = 0x4734;
/// G5 magic: rumor acknowledgement.
pub const G5_RUMOR_ACK: u16 = 0x4735;
/// G6 magic: snapshot transfer for warm restarts.
pub const G6_SNAPSHOT: u16 = 0x4736;

/// Longest topic name; its length travels in one byte.
pub const MAX_TOPIC: usize = 255;
/// Largest G3 rumor payload (256 KiB). Larger state travels by G1.
pub const MAX_RUMOR_PAYLOAD: usize = 256 * 1024;
/// Largest response a G4 pull request may ask for (1 MiB).
pub const MAX_PULL_RESPONSE: u32 = 1 << 20;
/// G3 `from_dimension` of a rumor at its origin: forward on every dimension.
pub const ORIGIN_DIMENSION: u8 = 0xFF;
/// Bytes of a G6 shard-chunk frame before its data: magic, length, kind,
/// request id, shard index, chunk index and chunk count.
pub const SNAPSHOT_CHUNK_HEADER_LEN: usize = g6::DATA;

/// The id of a rumor: BLAKE3 of its payload. G5 acknowledges by it, and
/// rumor dedup keys on it.
pub fn rumor_id(payload: &[u8]) -> [u8; 32] {
    blake3::hash(payload).into()
}

/// Any gossip frame, parsed. Dispatches on the magic (and, for G4, byte 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipFrame<'a> {
    /// G1 full/delta exchange chunk.
    Exchange(ExchangeRepr<'a>),
    /// G2 digest probe.
    Digest(DigestRepr),
    /// G3 rumor push.
    Rumor(RumorRepr<'a>),
    /// G4 pull request.
    Pull(PullRepr<'a>),
    /// G4 IBLT reconciliation.
    Reconcile(ReconcileRepr<'a>),
    /// G5 rumor ACK.
    RumorAck(RumorAckRepr),
    /// G6 snapshot transfer.
    Snapshot(SnapshotRepr<'a>),
}

impl<'a> GossipFrame<'a> {
    /// Parses any gossip frame.
    ///
    /// A first byte other than `0x47` ('G') is [`Error::BadMagic`]; `0x47`
    /// followed by a byte that names no frame is [`Error::UnknownType`] with
    /// that byte, as is a G4 byte 2 that is neither a reconciliation flag nor
    /// the pull marker.
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        need(buf, MAGIC.end)?;
        match u16_at(buf, MAGIC.start) {
            G1_EXCHANGE => ExchangeRepr::parse(buf).map(Self::Exchange),
            G2_DIGEST => DigestRepr::parse(buf).map(Self::Digest),
            G3_RUMOR => RumorRepr::parse(buf).map(Self::Rumor),
            G4_PULL_RECONCILE => match g4_kind(buf)? {
                None => PullRepr::parse(buf).map(Self::Pull),
                Some(_) => ReconcileRepr::parse(buf).map(Self::Reconcile),
            },
            G5_RUMOR_ACK => RumorAckRepr::parse(buf).map(Self::RumorAck),
            G6_SNAPSHOT => SnapshotRepr::parse(buf).map(Self::Snapshot),
            _ if u8_at(buf, 0) == FAMILY => Err(Error::UnknownType(u8_at(buf, 1))),
            _ => Err(Error::BadMagic),
        }
    }

    /// Bytes [`GossipFrame::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Self::Exchange(r) => r.buffer_len(),
            Self::Digest(r) => r.buffer_len(),
            Self::Rumor(r) => r.buffer_len(),
            Self::Pull(r) => r.buffer_len(),
            Self::Reconcile(r) => r.buffer_len(),
            Self::RumorAck(r) => r.buffer_len(),
            Self::Snapshot(r) => r.buffer_len(),
        }
    }

    /// Writes the frame into the start of `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        match self {
            Self::Exchange(r) => r.emit(buf),
            Self::Digest(r) => r.emit(buf),
            Self::Rumor(r) => r.emit(buf),
            Self::Pull(r) => r.emit(buf),
            Self::Reconcile(r) => r.emit(buf),
            Self::RumorAck(r) => r.emit(buf),
            Self::Snapshot(r) => r.emit(buf),
        }
    }
}

/// Every gossip magic: `0x47` ('G') then the frame number in ASCII.
const MAGIC: Field = 0..2;
const FAMILY: u8 = 0x47;

// ---------------------------------------------------------------------------
// G1: full/delta exchange — docs/PROTOCOL.md § "Gossip (G1–G6)"
// ---------------------------------------------------------------------------

mod g1 {
    use crate::field::Field;
    pub(super) const LENGTH: Field = 2..6;
    /// The length field counts every byte from here to the end.
    pub(super) const BODY: usize = 6;
    pub(super) const FLAGS: usize = 6;
    pub(super) const EXCHANGE_ID: Field = 7..11;
    pub(super) const CHUNK_INDEX: Field = 11..13;
    pub(super) const CHUNK_COUNT: Field = 13..15;
    pub(super) const TOPIC_LEN: usize = 15;
    pub(super) const TOPIC: usize = 16;
    // Relative to the end of the topic:
    pub(super) const WATERMARK: Field = 0..8;
    pub(super) const ENTRIES: usize = 8;

    pub(super) const FULL: u8 = 0x01;
    pub(super) const MORE: u8 = 0x02;
}

/// A checked G1 exchange chunk:
/// `[magic][u32 body length][u8 flags][u32 exchange id][u16 chunk index]
/// [u16 chunk count][u8 topic len][topic][i64 watermark ns][entries]`.
///
/// An exchange too large for one datagram is split into `chunk_count` frames
/// that share `exchange_id`. Flag `0x02` (more chunks follow) must agree with
/// the index — it is set exactly when `chunk_index + 1 < chunk_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange<'a> {
    buf: &'a [u8],
    topic_end: usize,
}

impl<'a> Exchange<'a> {
    /// Checks the magic, that the body length equals the bytes after it, the
    /// chunk header (`chunk_index < chunk_count`, flags consistent, reserved
    /// flag bits zero) and that the watermark is not negative.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        check_magic(buf, G1_EXCHANGE)?;
        need(buf, g1::BODY)?;
        let declared = u32_at(buf, g1::LENGTH.start) as usize;
        let actual = buf.len() - g1::BODY;
        if declared != actual {
            return Err(Error::LengthMismatch { declared, actual });
        }
        let topic_end = topic_end(buf, g1::TOPIC_LEN)?;
        need(buf, topic_end + g1::ENTRIES)?;
        let view = Exchange { buf, topic_end };
        let (index, count) = (view.chunk_index(), view.chunk_count());
        check_chunk(index, count, "g1.chunk_index")?;
        if u8_at(buf, g1::FLAGS) != exchange_flags(view.full(), index, count) {
            return Err(Error::BadField("g1.flags"));
        }
        check_time(view.watermark_ns(), "g1.watermark")?;
        Ok(view)
    }

    /// The body: every byte after the length field.
    pub fn body(&self) -> &'a [u8] {
        slice(self.buf, g1::BODY..self.buf.len())
    }

    /// Flag `0x01`: the sender's whole state for the topic, not a delta.
    pub fn full(&self) -> bool {
        u8_at(self.buf, g1::FLAGS) & g1::FULL != 0
    }

    /// Flag `0x02`: more chunks of this exchange follow.
    pub fn more_chunks(&self) -> bool {
        u8_at(self.buf, g1::FLAGS) & g1::MORE != 0
    }

    /// Shared by every chunk of one exchange.
    pub fn exchange_id(&self) -> u32 {
        u32_at(self.buf, g1::EXCHANGE_ID.start)
    }

    /// This chunk's position, below [`Exchange::chunk_count`].
    pub fn chunk_index(&self) -> u16 {
        u16_at(self.buf, g1::CHUNK_INDEX.start)
    }

    /// Chunks in the exchange (at least 1).
    pub fn chunk_count(&self) -> u16 {
        u16_at(self.buf, g1::CHUNK_COUNT.start)
    }

    /// Topic name (at most 255 bytes, not necessarily UTF-8).
    pub fn topic(&self) -> &'a [u8] {
        slice(self.buf, g1::TOPIC..self.topic_end)
    }

    /// The sender's watermark for the topic, unix nanoseconds (never negative).
    pub fn watermark_ns(&self) -> i64 {
        i64_at(self.buf, self.topic_end + g1::WATERMARK.start)
    }

    /// The entries, opaque here: the topic's codec owns them.
    pub fn entries(&self) -> &'a [u8] {
        slice(self.buf, self.topic_end + g1::ENTRIES..self.buf.len())
    }
}

/// A G1 exchange chunk, parsed. The more-chunks flag is derived from
/// `chunk_index` and `chunk_count` (see [`ExchangeRepr::more_chunks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeRepr<'a> {
    /// The sender's whole state for the topic rather than a delta.
    pub full: bool,
    /// Shared by every chunk of one exchange.
    pub exchange_id: u32,
    /// This chunk's position, below `chunk_count`.
    pub chunk_index: u16,
    /// Chunks in the exchange (at least 1).
    pub chunk_count: u16,
    /// Topic name, at most 255 bytes.
    pub topic: &'a [u8],
    /// The sender's watermark for the topic, unix nanoseconds, not negative.
    pub watermark_ns: i64,
    /// The entries, opaque here.
    pub entries: &'a [u8],
}

impl<'a> ExchangeRepr<'a> {
    /// Checks and lifts a G1 frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        Exchange::new_checked(buf).map(|v| Self::from_view(&v))
    }

    /// Lifts a checked view.
    pub fn from_view(view: &Exchange<'a>) -> Self {
        ExchangeRepr {
            full: view.full(),
            exchange_id: view.exchange_id(),
            chunk_index: view.chunk_index(),
            chunk_count: view.chunk_count(),
            topic: view.topic(),
            watermark_ns: view.watermark_ns(),
            entries: view.entries(),
        }
    }

    /// Whether more chunks of this exchange follow this one.
    pub const fn more_chunks(&self) -> bool {
        more_follow(self.chunk_index, self.chunk_count)
    }

    /// Bytes [`ExchangeRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        g1::TOPIC + self.topic.len() + g1::ENTRIES + self.entries.len()
    }

    /// Writes the frame into the start of `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let topic_len = topic_len(self.topic)?;
        check_chunk(self.chunk_index, self.chunk_count, "g1.chunk_index")?;
        check_time(self.watermark_ns, "g1.watermark")?;
        let len = self.buffer_len();
        let body_len = len_u32(len - g1::BODY)?;
        let mut w = Writer::new(buf, len)?;
        w.u16(MAGIC.start, G1_EXCHANGE);
        w.u32(g1::LENGTH.start, body_len);
        w.u8(g1::FLAGS, exchange_flags(self.full, self.chunk_index, self.chunk_count));
        w.u32(g1::EXCHANGE_ID.start, self.exchange_id);
        w.u16(g1::CHUNK_INDEX.start, self.chunk_index);
        w.u16(g1::CHUNK_COUNT.start, self.chunk_count);
        w.u8(g1::TOPIC_LEN, topic_len);
        w.bytes(g1::TOPIC, self.topic);
        let topic_end = g1::TOPIC + self.topic.len();
        w.i64(topic_end + g1::WATERMARK.start, self.watermark_ns);
        w.bytes(topic_end + g1::ENTRIES, self.entries);
        Ok(len)
    }
}

// ---------------------------------------------------------------------------
// G2: digest probe — docs/PROTOCOL.md § "Gossip (G1–G6)"
// ---------------------------------------------------------------------------

mod g2 {
    use crate::field::Field;
    pub(super) const FINGERPRINT: Field = 2..10;
    pub(super) const FLAGS: Field = 10..12;
    pub(super) const LEN: usize = 12;

    pub(super) const MATCH: u16 = 1 << 0;
}

/// A checked G2 digest probe: exactly 12 bytes, `[magic][u64 fingerprint][u16 flags]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest<'a> {
    buf: &'a [u8],
}

impl<'a> Digest<'a> {
    /// Checks the magic, the exact size and that reserved flag bits are zero.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        check_magic(buf, G2_DIGEST)?;
        exact(buf, g2::LEN)?;
        if u16_at(buf, g2::FLAGS.start) & !g2::MATCH != 0 {
            return Err(Error::BadField("g2.flags"));
        }
        Ok(Digest { buf })
    }

    /// The sender's state fingerprint.
    pub fn fingerprint(&self) -> u64 {
        u64_at(self.buf, g2::FINGERPRINT.start)
    }

    /// Flag `1 << 0`: the responder found the fingerprints equal.
    pub fn matched(&self) -> bool {
        u16_at(self.buf, g2::FLAGS.start) & g2::MATCH != 0
    }
}

/// A G2 digest probe, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DigestRepr {
    /// The sender's state fingerprint.
    pub fingerprint: u64,
    /// The responder found the fingerprints equal.
    pub matched: bool,
}

impl DigestRepr {
    /// Checks and lifts a G2 frame.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        Digest::new_checked(buf).map(|v| Self::from_view(&v))
    }

    /// Lifts a checked view.
    pub fn from_view(view: &Digest<'_>) -> Self {
        DigestRepr { fingerprint: view.fingerprint(), matched: view.matched() }
    }

    /// Bytes [`DigestRepr::emit`] writes: always 12.
    pub const fn buffer_len(&self) -> usize {
        g2::LEN
    }

    /// Writes the frame into the start of `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(buf, g2::LEN)?;
        w.u16(MAGIC.start, G2_DIGEST);
        w.u64(g2::FINGERPRINT.start, self.fingerprint);
        w.u16(g2::FLAGS.start, if self.matched { g2::MATCH } else { 0 });
        Ok(g2::LEN)
    }
}

// ---------------------------------------------------------------------------
// G3: rumor push — docs/PROTOCOL.md § "Gossip (G1–G6)"
// ---------------------------------------------------------------------------

mod g3 {
    use crate::field::Field;
    pub(super) const HOP_COUNT: usize = 2;
    pub(super) const FROM_DIMENSION: usize = 3;
    pub(super) const PRIORITY: usize = 4;
    pub(super) const TOPIC_LEN: usize = 5;
    pub(super) const TOPIC: usize = 6;
    // Relative to the end of the topic:
    pub(super) const PAYLOAD_LEN: Field = 0..4;
    pub(super) const PAYLOAD: usize = 4;
}

/// A checked G3 rumor push: `[magic][u8 hop count][u8 from-dimension]
/// [u8 priority][u8 topic len][topic][u32 payload len][payload]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rumor<'a> {
    buf: &'a [u8],
    topic_end: usize,
}

impl<'a> Rumor<'a> {
    /// Checks the magic, that the payload is at most [`MAX_RUMOR_PAYLOAD`]
    /// ([`Error::TooLong`], judged on the declared length) and that the
    /// payload length equals the bytes after it.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        check_magic(buf, G3_RUMOR)?;
        let topic_end = topic_end(buf, g3::TOPIC_LEN)?;
        need(buf, topic_end + g3::PAYLOAD)?;
        let declared = u32_at(buf, topic_end + g3::PAYLOAD_LEN.start) as usize;
        check_max(declared, MAX_RUMOR_PAYLOAD)?;
        let actual = buf.len() - (topic_end + g3::PAYLOAD);
        if declared != actual {
            return Err(Error::LengthMismatch { declared, actual });
        }
        Ok(Rumor { buf, topic_end })
    }

    /// Hops the rumor has travelled.
    pub fn hop_count(&self) -> u8 {
        u8_at(self.buf, g3::HOP_COUNT)
    }

    /// Hypercube dimension the rumor arrived on, or [`ORIGIN_DIMENSION`] at
    /// its origin. A receiver forwards on the dimensions above it.
    pub fn from_dimension(&self) -> u8 {
        u8_at(self.buf, g3::FROM_DIMENSION)
    }

    /// Sender-assigned priority; higher is more urgent.
    pub fn priority(&self) -> u8 {
        u8_at(self.buf, g3::PRIORITY)
    }

    /// Topic name (at most 255 bytes).
    pub fn topic(&self) -> &'a [u8] {
        slice(self.buf, g3::TOPIC..self.topic_end)
    }

    /// The payload, opaque here.
    pub fn payload(&self) -> &'a [u8] {
        slice(self.buf, self.topic_end + g3::PAYLOAD..self.buf.len())
    }

    /// The rumor id, [`rumor_id`] of the payload.
    pub fn id(&self) -> [u8; 32] {
        rumor_id(self.payload())
    }
}

/// A G3 rumor push, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RumorRepr<'a> {
    /// Hops the rumor has travelled.
    pub hop_count: u8,
    /// Dimension it arrived on, or [`ORIGIN_DIMENSION`].
    pub from_dimension: u8,
    /// Sender-assigned priority; higher is more urgent.
    pub priority: u8,
    /// Topic name, at most 255 bytes.
    pub topic: &'a [u8],
    /// The payload, at most [`MAX_RUMOR_PAYLOAD`] bytes.
    pub payload: &'a [u8],
}

impl<'a> RumorRepr<'a> {
    /// Checks and lifts a G3 frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        Rumor::new_checked(buf).map(|v| Self::from_view(&v))
    }

    /// Lifts a checked view.
    pub fn from_view(view: &Rumor<'a>) -> Self {
        RumorRepr {
            hop_count: view.hop_count(),
            from_dimension: view.from_dimension(),
            priority: view.priority(),
            topic: view.topic(),
            payload: view.payload(),
        }
    }

    /// Bytes [`RumorRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        g3::TOPIC + self.topic.len() + g3::PAYLOAD + self.payload.len()
    }

    /// Writes the frame into the start of `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let topic_len = topic_len(self.topic)?;
        check_max(self.payload.len(), MAX_RUMOR_PAYLOAD)?;
        let len = self.buffer_len();
        let mut w = Writer::new(buf, len)?;
        w.u16(MAGIC.start, G3_RUMOR);
        w.u8(g3::HOP_COUNT, self.hop_count);
        w.u8(g3::FROM_DIMENSION, self.from_dimension);
        w.u8(g3::PRIORITY, self.priority);
        w.u8(g3::TOPIC_LEN, topic_len);
        w.bytes(g3::TOPIC, self.topic);
        let topic_end = g3::TOPIC + self.topic.len();
        w.u32(topic_end + g3::PAYLOAD_LEN.start, len_u32(self.payload.len())?);
        w.bytes(topic_end + g3::PAYLOAD, self.payload);
        Ok(len)
    }
}

// ---------------------------------------------------------------------------
// G4: pull request and IBLT reconciliation — docs/PROTOCOL.md § "Gossip (G1–G6)"
// ---------------------------------------------------------------------------

mod g4 {
    use crate::field::Field;
    /// Byte 2 tells the two G4 messages apart: 0x00–0x03 is a
    /// reconciliation flag, 0x10 a pull request.
    pub(super) const KIND: usize = 2;
    pub(super) const PULL: u8 = 0x10;

    // Pull request.
    pub(super) const PULL_TOPIC_LEN: usize = 3;
    pub(super) const PULL_TOPIC: usize = 4;
    // Relative to the end of the topic:
    pub(super) const SINCE: Field = 0..8;
    pub(super) const MAX_RESPONSE: Field = 8..12;
    pub(super) const PULL_TAIL: usize = 12;

    // Reconciliation.
    pub(super) const SESSION_ID: Field = 3..7;
    pub(super) const MODE: usize = 7;
    pub(super) const FIRST_CELL: Field = 8..12;
    pub(super) const END_CELL: Field = 12..16;
    pub(super) const RECONCILE_TOPIC_LEN: usize = 16;
    pub(super) const RECONCILE_TOPIC: usize = 17;
    // Relative to the end of the topic:
    pub(super) const CELL_COUNT: Field = 0..2;
    pub(super) const CELLS: usize = 2;
}

/// A checked G4 pull request: `[magic][0x10][u8 topic len][topic]
/// [i64 since ns][u32 max response bytes]`, nothing after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pull<'a> {
    buf: &'a [u8],
    topic_end: usize,
}

impl<'a> Pull<'a> {
    /// Checks the magic and byte 2 (a reconciliation flag there is
    /// [`Error::BadMagic`]: a different message), the exact length, that
    /// `since` is not negative and that the response cap is at most
    /// [`MAX_PULL_RESPONSE`].
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        check_magic(buf, G4_PULL_RECONCILE)?;
        if g4_kind(buf)?.is_some() {
            return Err(Error::BadMagic);
        }
        let topic_end = topic_end(buf, g4::PULL_TOPIC_LEN)?;
        exact(buf, topic_end + g4::PULL_TAIL)?;
        let view = Pull { buf, topic_end };
        check_time(view.since_ns(), "g4.since")?;
        check_max(view.max_response() as usize, MAX_PULL_RESPONSE as usize)?;
        Ok(view)
    }

    /// Topic name (at most 255 bytes).
    pub fn topic(&self) -> &'a [u8] {
        slice(self.buf, g4::PULL_TOPIC..self.topic_end)
    }

    /// Send records newer than this, unix nanoseconds; 0 asks for everything.
    pub fn since_ns(&self) -> i64 {
        i64_at(self.buf, self.topic_end + g4::SINCE.start)
    }

    /// The largest response the requester accepts, at most
    /// [`MAX_PULL_RESPONSE`]; 0 leaves it to the responder's own cap.
    pub fn max_response(&self) -> u32 {
        u32_at(self.buf, self.topic_end + g4::MAX_RESPONSE.start)
    }
}

/// A G4 pull request, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullRepr<'a> {
    /// Topic name, at most 255 bytes.
    pub topic: &'a [u8],
    /// Records newer than this, unix nanoseconds, not negative; 0 = everything.
    pub since_ns: i64,
    /// Largest response accepted, at most [`MAX_PULL_RESPONSE`]; 0 = responder's cap.
    pub max_response: u32,
}

impl<'a> PullRepr<'a> {
    /// Checks and lifts a G4 pull request.
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        Pull::new_checked(buf).map(|v| Self::from_view(&v))
    }

    /// Lifts a checked view.
    pub fn from_view(view: &Pull<'a>) -> Self {
        PullRepr {
            topic: view.topic(),
            since_ns: view.since_ns(),
            max_response: view.max_response(),
        }
    }

    /// Bytes [`PullRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        g4::PULL_TOPIC + self.topic.len() + g4::PULL_TAIL
    }

    /// Writes the frame into the start of `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let topic_len = topic_len(self.topic)?;
        check_time(self.since_ns, "g4.since")?;
        check_max(self.max_response as usize, MAX_PULL_RESPONSE as usize)?;
        let len = self.buffer_len();
        let mut w = Writer::new(buf, len)?;
        w.u16(MAGIC.start, G4_PULL_RECONCILE);
        w.u8(g4::KIND, g4::PULL);
        w.u8(g4::PULL_TOPIC_LEN, topic_len);
        w.bytes(g4::PULL_TOPIC, self.topic);
        let topic_end = g4::PULL_TOPIC + self.topic.len();
        w.i64(topic_end + g4::SINCE.start, self.since_ns);
        w.u32(topic_end + g4::MAX_RESPONSE.start, self.max_response);
        Ok(len)
    }
}

/// What a G4 reconciliation frame carries (byte 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReconcileKind {
    /// `0x00`, initiator to responder: cells of an IBLT of the initiator's
    /// key set (fixed mode) or symbols of its rateless stream.
    Table = 0x00,
    /// `0x01`, responder to initiator: the decoded difference, as pure cells.
    Reply = 0x01,
    /// `0x02`: what the sender wants — keys, as pure cells (the records
    /// themselves travel as G1 or G3 frames); or, with no cells, the table
    /// cells or stream symbols `first_cell..end_cell`.
    Request = 0x02,
    /// `0x03`, responder to initiator: the subtracted table or the stream did
    /// not decode. Carries no cells.
    DecodeFailed = 0x03,
}

impl ReconcileKind {
    /// The kind for a byte-2 value, if it is a reconciliation flag.
    pub const fn from_u8(b: u8) -> Option<Self> {
        match b {
            0x00 => Some(Self::Table),
            0x01 => Some(Self::Reply),
            0x02 => Some(Self::Request),
            0x03 => Some(Self::DecodeFailed),
            _ => None,
        }
    }
}

/// How a G4 reconciliation session codes its table (byte 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReconcileMode {
    /// `0`: a fixed-size IBLT whose size `end_cell` every table frame states.
    Fixed = 0,
    /// `1`: a rateless stream of coded symbols, sent in bursts; a table
    /// frame's `end_cell` is the end of its burst.
    Rateless = 1,
}

impl ReconcileMode {
    /// The mode for a byte-7 value.
    pub const fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Fixed),
            1 => Some(Self::Rateless),
            _ => None,
        }
    }
}

/// One invertible-Bloom-lookup-table cell, 20 bytes on the wire:
/// `[i32 count][u64 key_sum][u64 hash_sum]`.
///
/// A cell is *pure* when `count` is ±1 and `hash_sum` is the check hash of
/// `key_sum`; the key it holds is then `key_sum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IbltCell {
    /// Keys folded in minus keys taken out; negative after subtracting a
    /// peer's table.
    pub count: i32,
    /// XOR of the keys folded in.
    pub key_sum: u64,
    /// XOR of the check hash of each key folded in.
    pub hash_sum: u64,
}

impl IbltCell {
    /// Bytes per cell on the wire.
    pub const LEN: usize = 20;
    const COUNT: Field = 0..4;
    const KEY_SUM: Field = 4..12;
    const HASH_SUM: Field = 12..20;

    fn read(b: &[u8]) -> Self {
        IbltCell {
            count: i32::from_be_bytes(array(b, Self::COUNT.start)),
            key_sum: u64_at(b, Self::KEY_SUM.start),
            hash_sum: u64_at(b, Self::HASH_SUM.start),
        }
    }

    fn write(&self, w: &mut Writer<'_>, at: usize) {
        w.bytes(at + Self::COUNT.start, &self.count.to_be_bytes());
        w.u64(at + Self::KEY_SUM.start, self.key_sum);
        w.u64(at + Self::HASH_SUM.start, self.hash_sum);
    }
}

/// A sequence of IBLT cells: borrowed straight from a checked datagram, or
/// from a caller's slice for emitting. Two `Cells` are equal when they hold
/// the same cells, whichever their source.
#[derive(Clone, Copy)]
pub struct Cells<'a>(CellSource<'a>);

#[derive(Clone, Copy)]
enum CellSource<'a> {
    /// Wire bytes; a multiple of [`IbltCell::LEN`] long (the view checked it).
    Wire(&'a [u8]),
    Slice(&'a [IbltCell]),
}

impl<'a> Cells<'a> {
    /// Number of cells.
    pub fn len(&self) -> usize {
        match self.0 {
            CellSource::Wire(b) => b.len() / IbltCell::LEN,
            CellSource::Slice(s) => s.len(),
        }
    }

    /// Whether there are no cells.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cells in order, decoded one at a time without allocating.
    pub fn iter(&self) -> CellIter<'a> {
        CellIter(match self.0 {
            CellSource::Wire(b) => IterSource::Wire(b.chunks_exact(IbltCell::LEN)),
            CellSource::Slice(s) => IterSource::Slice(s.iter()),
        })
    }
}

impl<'a> From<&'a [IbltCell]> for Cells<'a> {
    fn from(cells: &'a [IbltCell]) -> Self {
        Cells(CellSource::Slice(cells))
    }
}

impl<'a> IntoIterator for Cells<'a> {
    type Item = IbltCell;
    type IntoIter = CellIter<'a>;
    fn into_iter(self) -> CellIter<'a> {
        self.iter()
    }
}

impl PartialEq for Cells<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Cells<'_> {}

impl core::fmt::Debug for Cells<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over [`Cells`].
#[derive(Debug, Clone)]
pub struct CellIter<'a>(IterSource<'a>);

#[derive(Debug, Clone)]
enum IterSource<'a> {
    Wire(core::slice::ChunksExact<'a, u8>),
    Slice(core::slice::Iter<'a, IbltCell>),
}

impl Iterator for CellIter<'_> {
    type Item = IbltCell;

    fn next(&mut self) -> Option<IbltCell> {
        match &mut self.0 {
            IterSource::Wire(it) => it.next().map(IbltCell::read),
            IterSource::Slice(it) => it.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            IterSource::Wire(it) => it.size_hint(),
            IterSource::Slice(it) => it.size_hint(),
        }
    }
}

impl ExactSizeIterator for CellIter<'_> {}

/// A checked G4 reconciliation frame: `[magic][u8 flag 0x00–0x03]
/// [u32 session id][u8 mode][u32 first cell][u32 end cell][u8 topic len]
/// [topic][u16 cell count][cells, 20 B each]`, nothing after.
///
/// The cells are `first_cell..first_cell + n` of a sequence that ends at
/// `end_cell`: a fixed table of `end_cell` cells, a burst of a rateless
/// stream that ends there, or a list of keys `end_cell` long, so one table,
/// stream or list can span many datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconcile<'a> {
    buf: &'a [u8],
    topic_end: usize,
}

impl<'a> Reconcile<'a> {
    /// Checks the magic and flag (a pull request is [`Error::BadMagic`]: a
    /// different message), that the frame is exactly as long as its cell
    /// count says, the mode, that the cells lie within the sequence
    /// (`first_cell + n ≤ end_cell`), and that a decode-failed frame carries
    /// no cells and zero positions.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        check_magic(buf, G4_PULL_RECONCILE)?;
        let Some(kind) = g4_kind(buf)? else { return Err(Error::BadMagic) };
        let topic_end = topic_end(buf, g4::RECONCILE_TOPIC_LEN)?;
        need(buf, topic_end + g4::CELLS)?;
        let count = usize::from(u16_at(buf, topic_end + g4::CELL_COUNT.start));
        exact(buf, topic_end + g4::CELLS + count * IbltCell::LEN)?;
        if ReconcileMode::from_u8(u8_at(buf, g4::MODE)).is_none() {
            return Err(Error::BadField("g4.mode"));
        }
        let view = Reconcile { buf, topic_end };
        check_cell_range(kind, view.first_cell(), view.end_cell(), count)?;
        Ok(view)
    }

    /// What the frame carries.
    pub fn kind(&self) -> ReconcileKind {
        ReconcileKind::from_u8(u8_at(self.buf, g4::KIND)).unwrap_or(ReconcileKind::Table)
    }

    /// Ties the frames of one reconciliation round together.
    pub fn session_id(&self) -> u32 {
        u32_at(self.buf, g4::SESSION_ID.start)
    }

    /// The session's mode.
    pub fn mode(&self) -> ReconcileMode {
        ReconcileMode::from_u8(u8_at(self.buf, g4::MODE)).unwrap_or(ReconcileMode::Fixed)
    }

    /// Position of the first cell carried within its sequence.
    pub fn first_cell(&self) -> u32 {
        u32_at(self.buf, g4::FIRST_CELL.start)
    }

    /// Where the sequence ends (see [`ReconcileRepr::end_cell`]).
    pub fn end_cell(&self) -> u32 {
        u32_at(self.buf, g4::END_CELL.start)
    }

    /// Topic name (at most 255 bytes).
    pub fn topic(&self) -> &'a [u8] {
        slice(self.buf, g4::RECONCILE_TOPIC..self.topic_end)
    }

    /// The cells, decoded lazily from the datagram.
    pub fn cells(&self) -> Cells<'a> {
        Cells(CellSource::Wire(slice(self.buf, self.topic_end + g4::CELLS..self.buf.len())))
    }
}

/// A G4 reconciliation frame, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileRepr<'a> {
    /// What the frame carries.
    pub kind: ReconcileKind,
    /// Ties the frames of one reconciliation round together.
    pub session_id: u32,
    /// The session's mode (a decode-failed frame names the mode that failed).
    pub mode: ReconcileMode,
    /// Position of the first cell carried within its sequence; 0 for
    /// [`ReconcileKind::DecodeFailed`].
    pub first_cell: u32,
    /// One past the last cell of the sequence: the table size (fixed table),
    /// the end of the burst (rateless stream), the list length (keys), the
    /// end of the range wanted (a request without cells); 0 for
    /// [`ReconcileKind::DecodeFailed`]. `first_cell + cells ≤ end_cell`.
    pub end_cell: u32,
    /// Topic name, at most 255 bytes.
    pub topic: &'a [u8],
    /// At most 65 535 cells; none for [`ReconcileKind::DecodeFailed`].
    pub cells: Cells<'a>,
}

impl<'a> ReconcileRepr<'a> {
    /// Checks and lifts a G4 reconciliation frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        Reconcile::new_checked(buf).map(|v| Self::from_view(&v))
    }

    /// Lifts a checked view.
    pub fn from_view(view: &Reconcile<'a>) -> Self {
        ReconcileRepr {
            kind: view.kind(),
            session_id: view.session_id(),
            mode: view.mode(),
            first_cell: view.first_cell(),
            end_cell: view.end_cell(),
            topic: view.topic(),
            cells: view.cells(),
        }
    }

    /// Bytes [`ReconcileRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        g4::RECONCILE_TOPIC + self.topic.len() + g4::CELLS + self.cells.len() * IbltCell::LEN
    }

    /// Writes the frame into the start of `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let topic_len = topic_len(self.topic)?;
        let count = u16::try_from(self.cells.len())
            .map_err(|_| Error::TooLong { max: u16::MAX.into(), got: self.cells.len() })?;
        check_cell_range(self.kind, self.first_cell, self.end_cell, self.cells.len())?;
        let len = self.buffer_len();
        let mut w = Writer::new(buf, len)?;
        w.u16(MAGIC.start, G4_PULL_RECONCILE);
        w.u8(g4::KIND, self.kind as u8);
        w.u32(g4::SESSION_ID.start, self.session_id);
        w.u8(g4::MODE, self.mode as u8);
        w.u32(g4::FIRST_CELL.start, self.first_cell);
        w.u32(g4::END_CELL.start, self.end_cell);
        w.u8(g4::RECONCILE_TOPIC_LEN, topic_len);
        w.bytes(g4::RECONCILE_TOPIC, self.topic);
        let topic_end = g4::RECONCILE_TOPIC + self.topic.len();
        w.u16(topic_end + g4::CELL_COUNT.start, count);
        let cells = topic_end + g4::CELLS;
        for (i, cell) in self.cells.iter().enumerate() {
            cell.write(&mut w, cells + i * IbltCell::LEN);
        }
        Ok(len)
    }
}

/// The G4 cell-position rules shared by parse and emit: a decode-failed
/// frame has no cells and zero positions; every other frame's cells lie
/// within its sequence.
fn check_cell_range(kind: ReconcileKind, first: u32, end: u32, count: usize) -> Result<()> {
    if kind == ReconcileKind::DecodeFailed {
        return match (count, first, end) {
            (0, 0, 0) => Ok(()),
            (0, 0, _) => Err(Error::BadField("g4.end_cell")),
            (0, _, _) => Err(Error::BadField("g4.first_cell")),
            _ => Err(Error::BadField("g4.cell_count")),
        };
    }
    if u64::from(first) + count as u64 > u64::from(end) {
        return Err(Error::BadField("g4.end_cell"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// G5: rumor ACK — docs/PROTOCOL.md § "Gossip (G1–G6)"
// ---------------------------------------------------------------------------

mod g5 {
    use crate::field::Field;
    pub(super) const RUMOR_ID: Field = 2..34;
    pub(super) const LEN: usize = 34;
}

/// A checked G5 rumor ACK: exactly 34 bytes, `[magic][rumor id 32]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RumorAck<'a> {
    buf: &'a [u8],
}

impl<'a> RumorAck<'a> {
    /// Checks the magic and the exact size.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        check_magic(buf, G5_RUMOR_ACK)?;
        exact(buf, g5::LEN)?;
        Ok(RumorAck { buf })
    }

    /// The acknowledged rumor's id ([`rumor_id`] of its payload).
    pub fn rumor_id(&self) -> &'a [u8; 32] {
        array_ref(self.buf, g5::RUMOR_ID.start)
    }
}

/// A G5 rumor ACK, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RumorAckRepr {
    /// The acknowledged rumor's id.
    pub rumor_id: [u8; 32],
}

impl RumorAckRepr {
    /// Checks and lifts a G5 frame.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        RumorAck::new_checked(buf).map(|v| Self::from_view(&v))
    }

    /// Lifts a checked view.
    pub fn from_view(view: &RumorAck<'_>) -> Self {
        RumorAckRepr { rumor_id: *view.rumor_id() }
    }

    /// Bytes [`RumorAckRepr::emit`] writes: always 34.
    pub const fn buffer_len(&self) -> usize {
        g5::LEN
    }

    /// Writes the frame into the start of `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(buf, g5::LEN)?;
        w.u16(MAGIC.start, G5_RUMOR_ACK);
        w.bytes(g5::RUMOR_ID.start, &self.rumor_id);
        Ok(g5::LEN)
    }
}

// ---------------------------------------------------------------------------
// G6: snapshot transfer — docs/PROTOCOL.md § "Gossip (G1–G6)"
// ---------------------------------------------------------------------------

mod g6 {
    use crate::field::Field;
    pub(super) const LENGTH: Field = 2..6;
    /// The length field counts every byte from here (the kind) to the end.
    pub(super) const KIND: usize = 6;
    pub(super) const BODY: usize = 7;
    pub(super) const REQUEST_ID: Field = 7..11;
    pub(super) const MANIFEST_REQUEST_LEN: usize = 11;
    // Manifest.
    pub(super) const HLC: Field = 11..19;
    pub(super) const FINGERPRINT: Field = 19..27;
    pub(super) const TOTAL_BYTES: Field = 27..31;
    pub(super) const DATA_SHARDS: usize = 31;
    pub(super) const PARITY_SHARDS: usize = 32;
    pub(super) const SHARD_SIZE: Field = 33..37;
    pub(super) const CHUNK_SIZE: Field = 37..41;
    pub(super) const BLOB_HASH: Field = 41..73;
    pub(super) const MANIFEST_LEN: usize = 73;
    // Shard request and shard chunk.
    pub(super) const SHARD_INDEX: usize = 11;
    /// First chunk wanted (request) or this chunk's index (chunk).
    pub(super) const CHUNK: Field = 12..14;
    /// Chunks wanted (request) or chunks in the shard (chunk).
    pub(super) const CHUNK_COUNT: Field = 14..16;
    pub(super) const SHARD_REQUEST_LEN: usize = 16;
    pub(super) const DATA: usize = 16;
}

/// The message a G6 frame carries (byte 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SnapshotKind {
    /// `0x10`: asks a sibling for its snapshot manifest.
    ManifestRequest = 0x10,
    /// `0x11`: what the sibling's snapshot holds and how it is sharded.
    Manifest = 0x11,
    /// `0x12`: asks for a run of chunks of one shard.
    ShardRequest = 0x12,
    /// `0x13`: one chunk of one shard.
    ShardChunk = 0x13,
}

impl SnapshotKind {
    /// The kind for a byte-6 value, if ricochet knows it.
    pub const fn from_u8(b: u8) -> Option<Self> {
        match b {
            0x10 => Some(Self::ManifestRequest),
            0x11 => Some(Self::Manifest),
            0x12 => Some(Self::ShardRequest),
            0x13 => Some(Self::ShardChunk),
            _ => None,
        }
    }
}

/// A checked G6 snapshot frame: `[magic][u32 length][u8 kind][body]`, the
/// length counting kind and body. Every body starts with a `u32 request id`;
/// the rest depends on the kind (see [`SnapshotRepr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot<'a> {
    buf: &'a [u8],
}

impl<'a> Snapshot<'a> {
    /// Checks the magic, that the length equals the bytes after it, the kind,
    /// the body's size for that kind and its fields:
    /// - manifest: `data_shards ≥ 1`, `data_shards + parity_shards ≤ 255`,
    ///   `chunk_size ≥ 1`, a shard splits into at most 65 535 chunks, and the
    ///   data shards can hold `total_bytes`;
    /// - shard request and chunk: `shard_index ≤ 254` (checking it against a
    ///   manifest's `data_shards + parity_shards` is the caller's job);
    /// - shard request: at least one chunk, none past index 65 535;
    /// - shard chunk: `chunk_index < chunk_count`.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        check_magic(buf, G6_SNAPSHOT)?;
        need(buf, g6::BODY)?;
        let declared = u32_at(buf, g6::LENGTH.start) as usize;
        let actual = buf.len() - g6::KIND;
        if declared != actual {
            return Err(Error::LengthMismatch { declared, actual });
        }
        let view = Snapshot { buf };
        match view.kind_checked()? {
            SnapshotKind::ManifestRequest => exact(buf, g6::MANIFEST_REQUEST_LEN)?,
            SnapshotKind::Manifest => {
                exact(buf, g6::MANIFEST_LEN)?;
                check_manifest(
                    u8_at(buf, g6::DATA_SHARDS),
                    u8_at(buf, g6::PARITY_SHARDS),
                    u32_at(buf, g6::TOTAL_BYTES.start),
                    u32_at(buf, g6::SHARD_SIZE.start),
                    u32_at(buf, g6::CHUNK_SIZE.start),
                )?;
            }
            SnapshotKind::ShardRequest => {
                exact(buf, g6::SHARD_REQUEST_LEN)?;
                check_shard_index(u8_at(buf, g6::SHARD_INDEX))?;
                check_chunk_run(u16_at(buf, g6::CHUNK.start), u16_at(buf, g6::CHUNK_COUNT.start))?;
            }
            SnapshotKind::ShardChunk => {
                need(buf, g6::DATA)?;
                check_shard_index(u8_at(buf, g6::SHARD_INDEX))?;
                let (index, count) =
                    (u16_at(buf, g6::CHUNK.start), u16_at(buf, g6::CHUNK_COUNT.start));
                check_chunk(index, count, "g6.chunk_index")?;
            }
        }
        Ok(view)
    }

    /// The message this frame carries.
    pub fn kind(&self) -> SnapshotKind {
        self.kind_checked().unwrap_or(SnapshotKind::ManifestRequest)
    }

    /// Pairs a response with its request.
    pub fn request_id(&self) -> u32 {
        u32_at(self.buf, g6::REQUEST_ID.start)
    }

    /// The body: every byte after the kind.
    pub fn body(&self) -> &'a [u8] {
        slice(self.buf, g6::BODY..self.buf.len())
    }

    fn kind_checked(&self) -> Result<SnapshotKind> {
        let b = u8_at(self.buf, g6::KIND);
        SnapshotKind::from_u8(b).ok_or(Error::UnknownType(b))
    }
}

/// A G6 snapshot frame, parsed. The four bodies, after the shared
/// `u32 request id`:
/// - manifest request: nothing;
/// - manifest: `[u64 hlc][u64 fingerprint][u32 total bytes][u8 data shards]
///   [u8 parity shards][u32 shard size][u32 chunk size][32-byte blob hash]`;
/// - shard request: `[u8 shard index][u16 first chunk][u16 chunk count]`;
/// - shard chunk: `[u8 shard index][u16 chunk index][u16 chunk count][data]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotRepr<'a> {
    /// Asks a sibling for its snapshot manifest.
    ManifestRequest {
        /// Echoed in the manifest.
        request_id: u32,
    },
    /// What the sibling's snapshot holds and how it is sharded:
    /// Reed-Solomon, `data_shards` data plus `parity_shards` parity shards of
    /// `shard_size` bytes, each sent in chunks of `chunk_size` bytes (the
    /// last chunk of a shard may be shorter).
    Manifest {
        /// Echoes the manifest request.
        request_id: u32,
        /// The sibling's hybrid logical clock when it took the snapshot.
        hlc: u64,
        /// Fingerprint of the snapshot's contents (the G2 fingerprint).
        fingerprint: u64,
        /// Bytes of snapshot data, at most `data_shards * shard_size`.
        total_bytes: u32,
        /// Data shards `k`, at least 1.
        data_shards: u8,
        /// Parity shards `m`; `k + m ≤ 255`.
        parity_shards: u8,
        /// Bytes per shard.
        shard_size: u32,
        /// Bytes per chunk, at least 1; a shard is at most 65 535 chunks.
        chunk_size: u32,
        /// BLAKE3 of the snapshot data (`total_bytes` bytes): the receiver
        /// checks the reassembled snapshot against it.
        blob_hash: [u8; 32],
    },
    /// Asks for chunks `first_chunk .. first_chunk + chunk_count` of one shard.
    ShardRequest {
        /// Echoed in every chunk sent in reply.
        request_id: u32,
        /// Shard wanted: data shards first, then parity; at most 254.
        shard_index: u8,
        /// First chunk wanted.
        first_chunk: u16,
        /// Chunks wanted, at least 1, none past index 65 535.
        chunk_count: u16,
    },
    /// One chunk of one shard.
    ShardChunk {
        /// Echoes the shard request.
        request_id: u32,
        /// Shard the chunk belongs to; at most 254.
        shard_index: u8,
        /// This chunk's position in the shard, below `chunk_count`.
        chunk_index: u16,
        /// Chunks in the whole shard.
        chunk_count: u16,
        /// The chunk's bytes.
        data: &'a [u8],
    },
}

impl<'a> SnapshotRepr<'a> {
    /// Checks and lifts a G6 frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        Snapshot::new_checked(buf).map(|v| Self::from_view(&v))
    }

    /// Lifts a checked view.
    pub fn from_view(view: &Snapshot<'a>) -> Self {
        let b = view.buf;
        let request_id = view.request_id();
        match view.kind() {
            SnapshotKind::ManifestRequest => Self::ManifestRequest { request_id },
            SnapshotKind::Manifest => Self::Manifest {
                request_id,
                hlc: u64_at(b, g6::HLC.start),
                fingerprint: u64_at(b, g6::FINGERPRINT.start),
                total_bytes: u32_at(b, g6::TOTAL_BYTES.start),
                data_shards: u8_at(b, g6::DATA_SHARDS),
                parity_shards: u8_at(b, g6::PARITY_SHARDS),
                shard_size: u32_at(b, g6::SHARD_SIZE.start),
                chunk_size: u32_at(b, g6::CHUNK_SIZE.start),
                blob_hash: *array_ref(b, g6::BLOB_HASH.start),
            },
            SnapshotKind::ShardRequest => Self::ShardRequest {
                request_id,
                shard_index: u8_at(b, g6::SHARD_INDEX),
                first_chunk: u16_at(b, g6::CHUNK.start),
                chunk_count: u16_at(b, g6::CHUNK_COUNT.start),
            },
            SnapshotKind::ShardChunk => Self::ShardChunk {
                request_id,
                shard_index: u8_at(b, g6::SHARD_INDEX),
                chunk_index: u16_at(b, g6::CHUNK.start),
                chunk_count: u16_at(b, g6::CHUNK_COUNT.start),
                data: slice(b, g6::DATA..b.len()),
            },
        }
    }

    /// The message this frame carries.
    pub const fn kind(&self) -> SnapshotKind {
        match self {
            Self::ManifestRequest { .. } => SnapshotKind::ManifestRequest,
            Self::Manifest { .. } => SnapshotKind::Manifest,
            Self::ShardRequest { .. } => SnapshotKind::ShardRequest,
            Self::ShardChunk { .. } => SnapshotKind::ShardChunk,
        }
    }

    /// Bytes [`SnapshotRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Self::ManifestRequest { .. } => g6::MANIFEST_REQUEST_LEN,
            Self::Manifest { .. } => g6::MANIFEST_LEN,
            Self::ShardRequest { .. } => g6::SHARD_REQUEST_LEN,
            Self::ShardChunk { data, .. } => g6::DATA + data.len(),
        }
    }

    /// Writes the frame into the start of `buf` and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        match *self {
            Self::Manifest {
                data_shards,
                parity_shards,
                total_bytes,
                shard_size,
                chunk_size,
                ..
            } => {
                check_manifest(data_shards, parity_shards, total_bytes, shard_size, chunk_size)?;
            }
            Self::ShardRequest { shard_index, first_chunk, chunk_count, .. } => {
                check_shard_index(shard_index)?;
                check_chunk_run(first_chunk, chunk_count)?;
            }
            Self::ShardChunk { shard_index, chunk_index, chunk_count, .. } => {
                check_shard_index(shard_index)?;
                check_chunk(chunk_index, chunk_count, "g6.chunk_index")?;
            }
            Self::ManifestRequest { .. } => {}
        }
        let len = self.buffer_len();
        let length = len_u32(len - g6::KIND)?;
        let mut w = Writer::new(buf, len)?;
        w.u16(MAGIC.start, G6_SNAPSHOT);
        w.u32(g6::LENGTH.start, length);
        w.u8(g6::KIND, self.kind() as u8);
        match *self {
            Self::ManifestRequest { request_id } => w.u32(g6::REQUEST_ID.start, request_id),
            Self::Manifest {
                request_id,
                hlc,
                fingerprint,
                total_bytes,
                data_shards,
                parity_shards,
                shard_size,
                chunk_size,
                blob_hash,
            } => {
                w.u32(g6::REQUEST_ID.start, request_id);
                w.u64(g6::HLC.start, hlc);
                w.u64(g6::FINGERPRINT.start, fingerprint);
                w.u32(g6::TOTAL_BYTES.start, total_bytes);
                w.u8(g6::DATA_SHARDS, data_shards);
                w.u8(g6::PARITY_SHARDS, parity_shards);
                w.u32(g6::SHARD_SIZE.start, shard_size);
                w.u32(g6::CHUNK_SIZE.start, chunk_size);
                w.bytes(g6::BLOB_HASH.start, &blob_hash);
            }
            Self::ShardRequest { request_id, shard_index, first_chunk, chunk_count } => {
                w.u32(g6::REQUEST_ID.start, request_id);
                w.u8(g6::SHARD_INDEX, shard_index);
                w.u16(g6::CHUNK.start, first_chunk);
                w.u16(g6::CHUNK_COUNT.start, chunk_count);
            }
            Self::ShardChunk { request_id, shard_index, chunk_index, chunk_count, data } => {
                w.u32(g6::REQUEST_ID.start, request_id);
                w.u8(g6::SHARD_INDEX, shard_index);
                w.u16(g6::CHUNK.start, chunk_index);
                w.u16(g6::CHUNK_COUNT.start, chunk_count);
                w.bytes(g6::DATA, data);
            }
        }
        Ok(len)
    }
}

// ---------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------

fn check_magic(buf: &[u8], magic: u16) -> Result<()> {
    need(buf, MAGIC.end)?;
    if u16_at(buf, MAGIC.start) == magic { Ok(()) } else { Err(Error::BadMagic) }
}

/// G4 byte 2: `None` for a pull request, the flag for a reconciliation.
fn g4_kind(buf: &[u8]) -> Result<Option<ReconcileKind>> {
    need(buf, g4::KIND + 1)?;
    match u8_at(buf, g4::KIND) {
        g4::PULL => Ok(None),
        b => ReconcileKind::from_u8(b).map(Some).ok_or(Error::UnknownType(b)),
    }
}

/// Reads the one-byte topic length at `len_at` and returns where the topic
/// (which starts right after it) ends.
fn topic_end(buf: &[u8], len_at: usize) -> Result<usize> {
    need(buf, len_at + 1)?;
    let end = len_at + 1 + usize::from(u8_at(buf, len_at));
    need(buf, end)?;
    Ok(end)
}

fn topic_len(topic: &[u8]) -> Result<u8> {
    u8::try_from(topic.len()).map_err(|_| Error::TooLong { max: MAX_TOPIC, got: topic.len() })
}

fn len_u32(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::TooLong { max: u32::MAX as usize, got: len })
}

fn check_max(got: usize, max: usize) -> Result<()> {
    if got <= max { Ok(()) } else { Err(Error::TooLong { max, got }) }
}

fn check_time(ns: i64, field: &'static str) -> Result<()> {
    if ns >= 0 { Ok(()) } else { Err(Error::BadField(field)) }
}

fn check_chunk(index: u16, count: u16, field: &'static str) -> Result<()> {
    if index < count { Ok(()) } else { Err(Error::BadField(field)) }
}

/// G1 flags byte. The more-chunks bit follows from the chunk position, so a
/// Repr never stores it and a view must agree with it.
fn exchange_flags(full: bool, index: u16, count: u16) -> u8 {
    let more = more_follow(index, count);
    (if full { g1::FULL } else { 0 }) | (if more { g1::MORE } else { 0 })
}

const fn more_follow(index: u16, count: u16) -> bool {
    index < count.saturating_sub(1)
}

fn check_shard_index(index: u8) -> Result<()> {
    // k + m ≤ 255 shards, so index 255 can never name one.
    if index < u8::MAX { Ok(()) } else { Err(Error::BadField("g6.shard_index")) }
}

fn check_chunk_run(first: u16, count: u16) -> Result<()> {
    if count >= 1 && u32::from(first) + u32::from(count) <= 1 << 16 {
        Ok(())
    } else {
        Err(Error::BadField("g6.chunk_count"))
    }
}

fn check_manifest(k: u8, m: u8, total: u32, shard_size: u32, chunk_size: u32) -> Result<()> {
    if k == 0 {
        return Err(Error::BadField("g6.data_shards"));
    }
    if u16::from(k) + u16::from(m) > 255 {
        return Err(Error::BadField("g6.parity_shards"));
    }
    if chunk_size == 0 || shard_size.div_ceil(chunk_size) > u32::from(u16::MAX) {
        return Err(Error::BadField("g6.chunk_size"));
    }
    if u64::from(k) * u64::from(shard_size) < u64::from(total) {
        return Err(Error::BadField("g6.shard_size"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CELLS: [IbltCell; 2] = [
        IbltCell { count: 1, key_sum: 0x0102_0304_0506_0708, hash_sum: 0xA1A2_A3A4_A5A6_A7A8 },
        IbltCell { count: -2, key_sum: u64::MAX, hash_sum: 0 },
    ];

    /// One valid frame of every message and G6 kind.
    fn samples() -> Vec<GossipFrame<'static>> {
        vec![
            GossipFrame::Exchange(ExchangeRepr {
                full: true,
                exchange_id: 7,
                chunk_index: 1,
                chunk_count: 3,
                topic: b"gaps",
                watermark_ns: 1_700_000_000_000_000_000,
                entries: b"entries",
            }),
            GossipFrame::Digest(DigestRepr { fingerprint: 0xDEAD_BEEF, matched: true }),
            GossipFrame::Rumor(RumorRepr {
                hop_count: 2,
                from_dimension: ORIGIN_DIMENSION,
                priority: 9,
                topic: b"owner",
                payload: b"rumor payload",
            }),
            GossipFrame::Pull(PullRepr { topic: b"gaps", since_ns: 0, max_response: 4096 }),
            GossipFrame::Reconcile(ReconcileRepr {
                kind: ReconcileKind::Table,
                session_id: 42,
                mode: ReconcileMode::Fixed,
                first_cell: 7,
                end_cell: 90,
                topic: b"gaps",
                cells: Cells::from(&CELLS[..]),
            }),
            GossipFrame::Reconcile(ReconcileRepr {
                kind: ReconcileKind::Request,
                session_id: 43,
                mode: ReconcileMode::Rateless,
                first_cell: 118,
                end_cell: 236,
                topic: b"gaps",
                cells: Cells::from(&CELLS[..0]),
            }),
            GossipFrame::Reconcile(ReconcileRepr {
                kind: ReconcileKind::DecodeFailed,
                session_id: 44,
                mode: ReconcileMode::Rateless,
                first_cell: 0,
                end_cell: 0,
                topic: b"gaps",
                cells: Cells::from(&CELLS[..0]),
            }),
            GossipFrame::RumorAck(RumorAckRepr { rumor_id: rumor_id(b"rumor payload") }),
            GossipFrame::Snapshot(SnapshotRepr::ManifestRequest { request_id: 5 }),
            GossipFrame::Snapshot(SnapshotRepr::Manifest {
                request_id: 5,
                hlc: 99,
                fingerprint: 0xDEAD_BEEF,
                total_bytes: 1000,
                data_shards: 2,
                parity_shards: 1,
                shard_size: 500,
                chunk_size: 256,
                blob_hash: [0xB3; 32],
            }),
            GossipFrame::Snapshot(SnapshotRepr::ShardRequest {
                request_id: 6,
                shard_index: 2,
                first_chunk: 0,
                chunk_count: 2,
            }),
            GossipFrame::Snapshot(SnapshotRepr::ShardChunk {
                request_id: 6,
                shard_index: 2,
                chunk_index: 1,
                chunk_count: 2,
                data: b"chunk",
            }),
        ]
    }

    fn bytes(f: &GossipFrame<'_>) -> Vec<u8> {
        let mut out = vec![0; f.buffer_len()];
        assert_eq!(f.emit(&mut out), Ok(out.len()));
        out
    }

    #[test]
    fn samples_round_trip() {
        for f in samples() {
            let b = bytes(&f);
            assert_eq!(GossipFrame::parse(&b), Ok(f));
        }
    }

    #[test]
    fn every_truncation_is_truncated_or_length_mismatch() {
        for f in samples() {
            let b = bytes(&f);
            for len in 0..b.len() {
                let got = GossipFrame::parse(&b[..len]);
                assert!(
                    matches!(got, Err(Error::Truncated { .. } | Error::LengthMismatch { .. })),
                    "{f:?} cut to {len}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn a_trailing_byte_is_a_length_mismatch() {
        for f in samples() {
            let mut b = bytes(&f);
            b.push(0);
            let got = GossipFrame::parse(&b);
            assert!(matches!(got, Err(Error::LengthMismatch { .. })), "{f:?}: {got:?}");
        }
    }

    #[test]
    fn emit_refuses_a_short_buffer() {
        for f in samples() {
            let mut out = vec![0; f.buffer_len() - 1];
            assert_eq!(
                f.emit(&mut out),
                Err(Error::Truncated { needed: f.buffer_len(), got: out.len() })
            );
        }
    }

    #[test]
    fn digest_and_ack_sizes_are_exact() {
        let d = bytes(&GossipFrame::Digest(DigestRepr { fingerprint: 1, matched: false }));
        assert_eq!(d.len(), 12);
        assert_eq!(Digest::new_checked(&d[..11]), Err(Error::Truncated { needed: 12, got: 11 }));
        let long = [&d[..], &[0]].concat();
        assert_eq!(
            Digest::new_checked(&long),
            Err(Error::LengthMismatch { declared: 12, actual: 13 })
        );

        let a = bytes(&GossipFrame::RumorAck(RumorAckRepr { rumor_id: [7; 32] }));
        assert_eq!(a.len(), 34);
        assert_eq!(RumorAck::new_checked(&a).map(|v| *v.rumor_id()), Ok([7; 32]));
        assert_eq!(RumorAck::new_checked(&a[..33]), Err(Error::Truncated { needed: 34, got: 33 }));
        let long = [&a[..], &[0]].concat();
        assert_eq!(
            RumorAck::new_checked(&long),
            Err(Error::LengthMismatch { declared: 34, actual: 35 })
        );
    }

    #[test]
    fn digest_reserved_flags_are_refused() {
        let mut d = bytes(&GossipFrame::Digest(DigestRepr { fingerprint: 1, matched: true }));
        assert!(Digest::new_checked(&d).unwrap().matched());
        d[10] = 0x80;
        assert_eq!(DigestRepr::parse(&d), Err(Error::BadField("g2.flags")));
    }

    #[test]
    fn rumor_payload_limit() {
        let big = vec![0u8; MAX_RUMOR_PAYLOAD + 1];
        let at_limit = RumorRepr {
            hop_count: 0,
            from_dimension: 0,
            priority: 0,
            topic: b"",
            payload: &big[1..],
        };
        let f = GossipFrame::Rumor(at_limit);
        assert_eq!(GossipFrame::parse(&bytes(&f)), Ok(f));
        let over = RumorRepr { payload: &big, ..at_limit };
        let too_long = Error::TooLong { max: MAX_RUMOR_PAYLOAD, got: MAX_RUMOR_PAYLOAD + 1 };
        assert_eq!(over.emit(&mut vec![0; over.buffer_len()]), Err(too_long));
        // Judged on the declared length, before the bytes are even there.
        let header = [0x47, 0x33, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01];
        assert_eq!(RumorRepr::parse(&header), Err(too_long));
    }

    #[test]
    fn rumor_id_is_blake3_of_the_payload() {
        let empty = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
        let hex: String = rumor_id(b"").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, empty);
        let f =
            RumorRepr { hop_count: 1, from_dimension: 3, priority: 0, topic: b"t", payload: b"x" };
        let b = bytes(&GossipFrame::Rumor(f));
        assert_eq!(Rumor::new_checked(&b).unwrap().id(), rumor_id(b"x"));
    }

    #[test]
    fn pull_limits() {
        let ok = PullRepr { topic: b"t", since_ns: 5, max_response: MAX_PULL_RESPONSE };
        assert_eq!(GossipFrame::parse(&bytes(&GossipFrame::Pull(ok))), Ok(GossipFrame::Pull(ok)));
        let over = PullRepr { max_response: MAX_PULL_RESPONSE + 1, ..ok };
        let too_long = Error::TooLong { max: 1 << 20, got: (1 << 20) + 1 };
        assert_eq!(over.emit(&mut [0; 64]), Err(too_long));
        let mut b = bytes(&GossipFrame::Pull(ok));
        let n = b.len();
        b[n - 4..].copy_from_slice(&(MAX_PULL_RESPONSE + 1).to_be_bytes());
        assert_eq!(PullRepr::parse(&b), Err(too_long));
        let negative = PullRepr { since_ns: -1, ..ok };
        assert_eq!(negative.emit(&mut [0; 64]), Err(Error::BadField("g4.since")));
    }

    #[test]
    fn topic_limit() {
        let topic = [b'a'; MAX_TOPIC + 1];
        let pull = PullRepr { topic: &topic[..MAX_TOPIC], since_ns: 0, max_response: 0 };
        assert_eq!(
            GossipFrame::parse(&bytes(&GossipFrame::Pull(pull))),
            Ok(GossipFrame::Pull(pull))
        );
        let pull = PullRepr { topic: &topic, ..pull };
        assert_eq!(pull.emit(&mut [0; 300]), Err(Error::TooLong { max: 255, got: 256 }));
    }

    #[test]
    fn byte_two_tells_pull_from_reconciliation() {
        let pull = bytes(&GossipFrame::Pull(PullRepr { topic: b"", since_ns: 0, max_response: 0 }));
        assert_eq!(pull[2], 0x10);
        assert!(matches!(GossipFrame::parse(&pull), Ok(GossipFrame::Pull(_))));
        assert_eq!(Reconcile::new_checked(&pull), Err(Error::BadMagic));

        // Flag, session 1, mode fixed, cells 0..0, empty topic, no cells.
        let frame = |flag| [0x47, 0x34, flag, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for (flag, kind) in [
            (0x00, ReconcileKind::Table),
            (0x01, ReconcileKind::Reply),
            (0x02, ReconcileKind::Request),
            (0x03, ReconcileKind::DecodeFailed),
        ] {
            let b = frame(flag);
            let Ok(GossipFrame::Reconcile(r)) = GossipFrame::parse(&b) else { panic!("{flag}") };
            assert_eq!((r.kind, r.session_id, r.topic, r.cells.len()), (kind, 1, &b""[..], 0));
            assert_eq!(Pull::new_checked(&b), Err(Error::BadMagic));
        }
        for flag in [0x04, 0x0F, 0x11, 0xFF] {
            assert_eq!(GossipFrame::parse(&frame(flag)), Err(Error::UnknownType(flag)));
        }
    }

    #[test]
    fn cells_decode_lazily_from_the_datagram() {
        let f = GossipFrame::Reconcile(ReconcileRepr {
            kind: ReconcileKind::Reply,
            session_id: 1,
            mode: ReconcileMode::Rateless,
            first_cell: 3,
            end_cell: 5,
            topic: b"",
            cells: Cells::from(&CELLS[..]),
        });
        let b = bytes(&f);
        assert_eq!(b.len(), 19 + 2 * IbltCell::LEN);
        assert_eq!(b[7], 1, "mode");
        assert_eq!((&b[8..12], &b[12..16]), (&3u32.to_be_bytes()[..], &5u32.to_be_bytes()[..]));
        assert_eq!(&b[19..23], &1i32.to_be_bytes());
        assert_eq!(&b[39..43], &(-2i32).to_be_bytes());
        let view = Reconcile::new_checked(&b).unwrap();
        assert_eq!(
            (view.mode(), view.first_cell(), view.end_cell()),
            (ReconcileMode::Rateless, 3, 5)
        );
        assert_eq!(view.cells().iter().len(), 2);
        assert!(view.cells().iter().eq(CELLS));
    }

    #[test]
    fn decode_failed_carries_no_cells() {
        let r = ReconcileRepr {
            kind: ReconcileKind::DecodeFailed,
            session_id: 1,
            mode: ReconcileMode::Fixed,
            first_cell: 0,
            end_cell: 1,
            topic: b"",
            cells: Cells::from(&CELLS[..1]),
        };
        assert_eq!(r.emit(&mut [0; 64]), Err(Error::BadField("g4.cell_count")));
        let mut b =
            bytes(&GossipFrame::Reconcile(ReconcileRepr { kind: ReconcileKind::Table, ..r }));
        b[2] = 0x03;
        assert_eq!(ReconcileRepr::parse(&b), Err(Error::BadField("g4.cell_count")));
        // No cells, but positions: refused too.
        let none = ReconcileRepr { cells: Cells::from(&CELLS[..0]), ..r };
        assert_eq!(none.emit(&mut [0; 64]), Err(Error::BadField("g4.end_cell")));
        let first = ReconcileRepr { first_cell: 1, end_cell: 0, ..none };
        assert_eq!(first.emit(&mut [0; 64]), Err(Error::BadField("g4.first_cell")));
        let ok = ReconcileRepr { end_cell: 0, ..none };
        let mut b = bytes(&GossipFrame::Reconcile(ok));
        assert_eq!(ReconcileRepr::parse(&b), Ok(ok));
        b[15] = 1;
        assert_eq!(ReconcileRepr::parse(&b), Err(Error::BadField("g4.end_cell")));
        b[11] = 1;
        assert_eq!(ReconcileRepr::parse(&b), Err(Error::BadField("g4.first_cell")));
    }

    #[test]
    fn reconcile_cells_lie_within_their_sequence() {
        let r = ReconcileRepr {
            kind: ReconcileKind::Table,
            session_id: 1,
            mode: ReconcileMode::Fixed,
            first_cell: 88,
            end_cell: 90,
            topic: b"t",
            cells: Cells::from(&CELLS[..]),
        };
        let mut b = bytes(&GossipFrame::Reconcile(r));
        assert_eq!(ReconcileRepr::parse(&b), Ok(r));
        let past = ReconcileRepr { end_cell: 89, ..r };
        assert_eq!(past.emit(&mut [0; 128]), Err(Error::BadField("g4.end_cell")));
        // No overflow at the top of the u32 range.
        let top = ReconcileRepr { first_cell: u32::MAX - 1, end_cell: u32::MAX, ..r };
        assert_eq!(top.emit(&mut [0; 128]), Err(Error::BadField("g4.end_cell")));
        let top = ReconcileRepr { first_cell: u32::MAX - 2, ..top };
        assert_eq!(
            GossipFrame::parse(&bytes(&GossipFrame::Reconcile(top))),
            Ok(GossipFrame::Reconcile(top))
        );
        // The end as a parse sees it.
        b[15] = 89;
        assert_eq!(ReconcileRepr::parse(&b), Err(Error::BadField("g4.end_cell")));
        // Modes other than 0 and 1 are refused.
        b[15] = 90;
        for mode in [2, 0x80, 0xFF] {
            b[7] = mode;
            assert_eq!(ReconcileRepr::parse(&b), Err(Error::BadField("g4.mode")), "{mode}");
        }
    }

    #[test]
    fn magic_dispatch() {
        assert_eq!(GossipFrame::parse(&[0x47]), Err(Error::Truncated { needed: 2, got: 1 }));
        assert_eq!(GossipFrame::parse(&[0x47, 0x30, 0]), Err(Error::UnknownType(0x30)));
        assert_eq!(GossipFrame::parse(&[0x47, 0x37, 0]), Err(Error::UnknownType(0x37)));
        assert_eq!(GossipFrame::parse(&[0x48, 0x31, 0]), Err(Error::BadMagic));
        assert_eq!(GossipFrame::parse(&[0xE3, 0xE1, 0xF3, 0xE8]), Err(Error::BadMagic));
        let digest = bytes(&GossipFrame::Digest(DigestRepr { fingerprint: 0, matched: false }));
        assert_eq!(RumorAck::new_checked(&digest), Err(Error::BadMagic));
    }

    #[test]
    fn exchange_chunk_header() {
        let Some(GossipFrame::Exchange(x)) = samples().into_iter().next() else { unreachable!() };
        let b = bytes(&GossipFrame::Exchange(x));
        let view = Exchange::new_checked(&b).unwrap();
        assert!(view.full() && view.more_chunks() && x.more_chunks());
        assert_eq!(view.body().len(), b.len() - 6);
        assert_eq!((view.topic(), view.entries()), (&b"gaps"[..], &b"entries"[..]));

        let last = ExchangeRepr { chunk_index: 2, ..x };
        assert_eq!(bytes(&GossipFrame::Exchange(last))[6], 0x01);
        let past = ExchangeRepr { chunk_index: 3, ..x };
        assert_eq!(past.emit(&mut [0; 64]), Err(Error::BadField("g1.chunk_index")));
        let none = ExchangeRepr { chunk_index: 0, chunk_count: 0, ..x };
        assert_eq!(none.emit(&mut [0; 64]), Err(Error::BadField("g1.chunk_index")));
        let negative = ExchangeRepr { watermark_ns: -1, ..x };
        assert_eq!(negative.emit(&mut [0; 64]), Err(Error::BadField("g1.watermark")));

        for flags in [0x01, 0x07, 0x83] {
            let mut bad = b.clone();
            bad[6] = flags;
            assert_eq!(ExchangeRepr::parse(&bad), Err(Error::BadField("g1.flags")), "{flags:#x}");
        }
    }

    #[test]
    fn snapshot_fields_are_validated() {
        let manifest = |k, m, total, shard_size, chunk_size| SnapshotRepr::Manifest {
            request_id: 0,
            hlc: 0,
            fingerprint: 0,
            total_bytes: total,
            data_shards: k,
            parity_shards: m,
            shard_size,
            chunk_size,
            blob_hash: [0; 32],
        };
        let emit = |r: SnapshotRepr<'_>| r.emit(&mut [0; 128]);
        assert_eq!(emit(manifest(1, 254, 10, 10, 1)), Ok(73));
        assert_eq!(emit(manifest(0, 1, 0, 0, 1)), Err(Error::BadField("g6.data_shards")));
        assert_eq!(emit(manifest(200, 56, 0, 0, 1)), Err(Error::BadField("g6.parity_shards")));
        assert_eq!(emit(manifest(1, 0, 0, 0, 0)), Err(Error::BadField("g6.chunk_size")));
        assert_eq!(emit(manifest(1, 0, 0, 65_536, 1)), Err(Error::BadField("g6.chunk_size")));
        assert_eq!(emit(manifest(2, 0, 21, 10, 4)), Err(Error::BadField("g6.shard_size")));

        let request = |shard_index, first_chunk, chunk_count| SnapshotRepr::ShardRequest {
            request_id: 0,
            shard_index,
            first_chunk,
            chunk_count,
        };
        assert_eq!(emit(request(254, 65_535, 1)), Ok(16));
        assert_eq!(emit(request(255, 0, 1)), Err(Error::BadField("g6.shard_index")));
        assert_eq!(emit(request(0, 0, 0)), Err(Error::BadField("g6.chunk_count")));
        assert_eq!(emit(request(0, 65_535, 2)), Err(Error::BadField("g6.chunk_count")));

        let chunk = SnapshotRepr::ShardChunk {
            request_id: 0,
            shard_index: 0,
            chunk_index: 2,
            chunk_count: 2,
            data: b"",
        };
        assert_eq!(emit(chunk), Err(Error::BadField("g6.chunk_index")));

        // The same checks on the parse side.
        let mut b = bytes(&GossipFrame::Snapshot(request(1, 0, 1)));
        b[11] = 0xFF;
        assert_eq!(SnapshotRepr::parse(&b), Err(Error::BadField("g6.shard_index")));
        let mut b = bytes(&GossipFrame::Snapshot(manifest(1, 0, 0, 0, 1)));
        b[31] = 0;
        assert_eq!(SnapshotRepr::parse(&b), Err(Error::BadField("g6.data_shards")));
        b[6] = 0x14;
        assert_eq!(SnapshotRepr::parse(&b), Err(Error::UnknownType(0x14)));
    }

    #[test]
    fn snapshot_view_accessors() {
        let f = GossipFrame::Snapshot(SnapshotRepr::ShardChunk {
            request_id: 0x0102_0304,
            shard_index: 0,
            chunk_index: 0,
            chunk_count: 1,
            data: b"abc",
        });
        let b = bytes(&f);
        let view = Snapshot::new_checked(&b).unwrap();
        assert_eq!(view.kind(), SnapshotKind::ShardChunk);
        assert_eq!(view.request_id(), 0x0102_0304);
        assert_eq!(view.body().len(), 4 + 5 + 3);
        assert_eq!(u32_at(&b, 2) as usize, b.len() - 6);
    }
}
