//! Signed records: the ed25519-signed envelope every DHT value travels in.
//!
//! Implements `docs/PROTOCOL.md` § "Signed records"; the messages that carry
//! records are in § "DHT (UDP 9320)" ([`crate::dht`]). The record model — a
//! typed value (endpoint, mailbox, topic) with a sequence number, a timestamp
//! and a TTL, signed by its publisher, where a store keeps one record per
//! slot and refuses an equal or older seq as stale — comes from seed 001
//! (the Go `dht` package). The byte layout below is ricochet's own.
//!
//! # Layout
//!
//! | offset   | size | field                                             |
//! |----------|------|---------------------------------------------------|
//! | 0        | 2    | magic `0x5252` ("RR")                             |
//! | 2        | 1    | format version, 1                                 |
//! | 3        | 1    | record type: 0x01 endpoint, 0x02 mailbox, 0x03 topic |
//! | 4        | 32   | key: the DHT key the record is stored under       |
//! | 36       | 8    | seq                                               |
//! | 44       | 8    | timestamp, unix seconds                           |
//! | 52       | 4    | ttl, seconds, > 0                                 |
//! | 56       | 2    | payload length `n`, ≤ 1024                        |
//! | 58       | n    | payload                                           |
//! | 58 + n   | 32   | ed25519 public key of the publisher               |
//! | 90 + n   | 64   | ed25519 signature                                 |
//!
//! # Signature
//!
//! Pure ed25519 (RFC 8032) over [`DOMAIN`] (`b"ricochet-record-v1"`, 18
//! bytes, no length prefix) followed by bytes `0 .. 90 + n` of the record —
//! everything before the signature, the public key included. The domain
//! string makes a record signature useless as a signature over anything else
//! the same key might sign. Checking uses ed25519-dalek's `verify_strict`,
//! which refuses a non-canonical `S` (≥ the group order L), a small-order
//! public key or `R`, so each (key, content) pair has one valid encoding.
//!
//! # Contract
//! - [`Record::new_checked`] proves the structure (magic, version, type,
//!   ttl > 0, payload length ≤ 1024 and agreeing exactly with the buffer).
//!   It never allocates, never panics, and does **not** check the signature:
//!   call [`Record::verify`] before trusting any field.
//! - [`RecordRepr::sign`] then [`RecordRepr::emit`] produce a record that
//!   verifies; `RecordRepr::parse(emit(x)) == x`.
//! - Expiry and staleness take `now` as an argument; nothing here reads a
//!   clock.
//!
//! ```
//! use ricochet_wire::record::{RecordRepr, RecordType, SigningKey};
//!
//! let signing_key = SigningKey::from_bytes(&[7u8; 32]);
//! let mut repr = RecordRepr::unsigned(RecordType::Topic, [1u8; 32], 1, 1_700_000_000, 600, b"hi");
//! repr.sign(&signing_key)?;
//! let mut buf = [0u8; 256];
//! let n = repr.emit(&mut buf)?;
//! let parsed = RecordRepr::parse(&buf[..n])?;
//! assert_eq!(parsed, repr);
//! parsed.verify()?;
//! # Ok::<(), ricochet_wire::Error>(())
//! ```

use core::net::{IpAddr, Ipv6Addr, SocketAddr};

use ed25519_dalek::{Signature, Signer};

use crate::error::{Error, Result};
use crate::field::{Writer, array_ref, exact, need, slice, u8_at, u16_at, u32_at, u64_at};

/// The ed25519 signing key type [`RecordRepr::sign`] takes (re-exported so
/// callers need not name the ed25519-dalek version this crate uses).
pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// First two bytes of every signed record: `"RR"`.
pub const MAGIC: u16 = 0x5252;
/// The record format version this module reads and writes.
pub const VERSION: u8 = 1;
/// Domain-separation prefix of the signed message (see the module docs).
pub const DOMAIN: &[u8; 18] = b"ricochet-record-v1";
/// Largest payload a record may carry, in bytes.
pub const MAX_PAYLOAD: usize = 1024;
/// Length of a DHT key.
pub const KEY_LEN: usize = 32;
/// Length of an ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes before the payload (magic through payload length).
pub const HEADER_LEN: usize = 58;
/// Bytes after the payload (public key and signature).
pub const TRAILER_LEN: usize = PUBLIC_KEY_LEN + SIGNATURE_LEN;
/// Size of a record with an empty payload.
pub const MIN_LEN: usize = HEADER_LEN + TRAILER_LEN;
/// Size of a record with a [`MAX_PAYLOAD`]-byte payload.
pub const MAX_LEN: usize = MIN_LEN + MAX_PAYLOAD;

/// What a record's payload is (byte 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RecordType {
    /// A retry endpoint announcing itself; payload is an [`EndpointPayload`].
    Endpoint = 0x01,
    /// A mailbox entry stored under the recipient's key.
    Mailbox = 0x02,
    /// A topic membership entry stored under the topic's key.
    Topic = 0x03,
}

impl RecordType {
    /// Decodes the type byte; anything else is [`Error::UnknownType`].
    pub const fn from_u8(byte: u8) -> Result<Self> {
        match byte {
            0x01 => Ok(RecordType::Endpoint),
            0x02 => Ok(RecordType::Mailbox),
            0x03 => Ok(RecordType::Topic),
            other => Err(Error::UnknownType(other)),
        }
    }

    /// The byte written on the wire.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The identity a store keeps one record for: a newer record for the same
/// slot replaces the old one, and an incoming record whose seq is equal or
/// older than the stored one is stale (seed 001).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    /// The record type.
    pub record_type: RecordType,
    /// The DHT key the record is stored under.
    pub key: [u8; KEY_LEN],
    /// The publisher's ed25519 public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
}

/// A node's (or a publisher's) 32-byte identifier: `BLAKE3(public key)`.
pub fn node_id(public_key: &[u8; PUBLIC_KEY_LEN]) -> [u8; 32] {
    *blake3::hash(public_key).as_bytes()
}

/// A structurally checked record borrowed from a buffer.
///
/// Built only by [`Record::new_checked`]; every accessor is then infallible.
/// The signature is *not* checked until [`Record::verify`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    buf: &'a [u8],
    record_type: RecordType,
}

impl<'a> Record<'a> {
    /// Checks `buf` is exactly one well-formed record (see the module docs).
    ///
    /// Errors: [`Error::Truncated`] if `buf` ends early, [`Error::BadMagic`],
    /// [`Error::BadVersion`], [`Error::UnknownType`], [`Error::BadField`]
    /// (`"record.ttl"`) for a zero TTL, [`Error::TooLong`] for a payload
    /// length over [`MAX_PAYLOAD`], and [`Error::LengthMismatch`] if bytes
    /// follow the signature.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        need(buf, HEADER_LEN)?;
        if u16_at(buf, layout::MAGIC.start) != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = u8_at(buf, layout::VERSION);
        if version != VERSION {
            return Err(Error::BadVersion { got: version.into() });
        }
        let record_type = RecordType::from_u8(u8_at(buf, layout::TYPE))?;
        if u32_at(buf, layout::TTL.start) == 0 {
            return Err(Error::BadField("record.ttl"));
        }
        let payload_len = usize::from(u16_at(buf, layout::PAYLOAD_LEN.start));
        if payload_len > MAX_PAYLOAD {
            return Err(Error::TooLong { max: MAX_PAYLOAD, got: payload_len });
        }
        exact(buf, MIN_LEN + payload_len)?;
        Ok(Record { buf, record_type })
    }

    /// The whole record, as it appeared on the wire.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The record type (byte 3).
    pub fn record_type(&self) -> RecordType {
        self.record_type
    }

    /// The DHT key the record is stored under.
    pub fn key(&self) -> &'a [u8; KEY_LEN] {
        array_ref(self.buf, layout::KEY.start)
    }

    /// The publisher's sequence number for this slot.
    pub fn seq(&self) -> u64 {
        u64_at(self.buf, layout::SEQ.start)
    }

    /// When the publisher signed the record, in unix seconds.
    pub fn timestamp(&self) -> u64 {
        u64_at(self.buf, layout::TIMESTAMP.start)
    }

    /// How long after [`Record::timestamp`] the record stays valid, in
    /// seconds (never 0).
    pub fn ttl(&self) -> u32 {
        u32_at(self.buf, layout::TTL.start)
    }

    /// The first unix second at which the record is expired.
    pub fn expires_at(&self) -> u64 {
        expires_at(self.timestamp(), self.ttl())
    }

    /// Whether the record is expired at `now_unix_secs`: it is live for
    /// `timestamp <= now < timestamp + ttl` (saturating at `u64::MAX`).
    pub fn is_expired(&self, now_unix_secs: u64) -> bool {
        now_unix_secs >= self.expires_at()
    }

    /// The payload (at most [`MAX_PAYLOAD`] bytes).
    pub fn payload(&self) -> &'a [u8] {
        slice(self.buf, layout::payload(self.payload_len()))
    }

    /// The publisher's ed25519 public key.
    pub fn public_key(&self) -> &'a [u8; PUBLIC_KEY_LEN] {
        array_ref(self.buf, layout::public_key(self.payload_len()).start)
    }

    /// The ed25519 signature.
    pub fn signature(&self) -> &'a [u8; SIGNATURE_LEN] {
        array_ref(self.buf, layout::signature(self.payload_len()).start)
    }

    /// The record bytes the signature covers after [`DOMAIN`]: everything
    /// before the signature.
    pub fn signed_bytes(&self) -> &'a [u8] {
        slice(self.buf, 0..layout::signature(self.payload_len()).start)
    }

    /// The slot this record occupies in a store.
    pub fn slot(&self) -> Slot {
        Slot { record_type: self.record_type, key: *self.key(), public_key: *self.public_key() }
    }

    /// The publisher's node id, `BLAKE3(public key)`.
    pub fn publisher_id(&self) -> [u8; 32] {
        node_id(self.public_key())
    }

    /// Strictly verifies the signature; [`Error::BadSignature`] otherwise
    /// (including for an invalid or small-order public key).
    pub fn verify(&self) -> Result<()> {
        let mut msg = [0u8; SIGNED_MAX];
        let (domain, rest) = msg.split_at_mut(DOMAIN.len());
        domain.copy_from_slice(DOMAIN);
        let signed = self.signed_bytes();
        let body = rest.get_mut(..signed.len()).ok_or(Error::BadSignature)?;
        body.copy_from_slice(signed);
        verify_strict(&msg[..DOMAIN.len() + signed.len()], self.public_key(), self.signature())
    }

    fn payload_len(&self) -> usize {
        usize::from(u16_at(self.buf, layout::PAYLOAD_LEN.start))
    }
}

/// The parsed form of a record, payload borrowed.
///
/// Build one with [`RecordRepr::unsigned`] (or a struct literal), call
/// [`RecordRepr::sign`], then [`RecordRepr::emit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordRepr<'a> {
    /// The record type.
    pub record_type: RecordType,
    /// The DHT key the record is stored under.
    pub key: [u8; KEY_LEN],
    /// The publisher's sequence number for this slot.
    pub seq: u64,
    /// Signing time, unix seconds.
    pub timestamp: u64,
    /// Lifetime after `timestamp`, seconds; must be > 0.
    pub ttl: u32,
    /// The payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: &'a [u8],
    /// The publisher's ed25519 public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// The ed25519 signature over [`DOMAIN`] and the preceding bytes.
    pub signature: [u8; SIGNATURE_LEN],
}

impl<'a> RecordRepr<'a> {
    /// A record with the given content and an all-zero public key and
    /// signature, ready for [`RecordRepr::sign`].
    pub const fn unsigned(
        record_type: RecordType,
        key: [u8; KEY_LEN],
        seq: u64,
        timestamp: u64,
        ttl: u32,
        payload: &'a [u8],
    ) -> Self {
        RecordRepr {
            record_type,
            key,
            seq,
            timestamp,
            ttl,
            payload,
            public_key: [0; PUBLIC_KEY_LEN],
            signature: [0; SIGNATURE_LEN],
        }
    }

    /// Checks `bytes` as a [`Record`] and lifts it (signature not verified).
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        Ok(Self::from_view(&Record::new_checked(bytes)?))
    }

    /// Lifts an already checked view.
    pub fn from_view(record: &Record<'a>) -> Self {
        RecordRepr {
            record_type: record.record_type(),
            key: *record.key(),
            seq: record.seq(),
            timestamp: record.timestamp(),
            ttl: record.ttl(),
            payload: record.payload(),
            public_key: *record.public_key(),
            signature: *record.signature(),
        }
    }

    /// Bytes [`RecordRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        MIN_LEN + self.payload.len()
    }

    /// Writes the record (with the signature as it stands) into `buf` and
    /// returns its length.
    ///
    /// Errors: [`Error::BadField`] (`"record.ttl"`) for a zero TTL,
    /// [`Error::TooLong`] for a payload over [`MAX_PAYLOAD`],
    /// [`Error::Truncated`] if `buf` is shorter than
    /// [`RecordRepr::buffer_len`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        self.check()?;
        let len = self.buffer_len();
        let mut w = Writer::new(buf, len)?;
        self.write(&mut w, 0);
        Ok(len)
    }

    /// Sets `public_key` to `signing_key`'s and `signature` to its signature
    /// over [`DOMAIN`] ‖ the record's bytes before the signature.
    ///
    /// Errors as [`RecordRepr::emit`] for an unencodable record.
    pub fn sign(&mut self, signing_key: &SigningKey) -> Result<()> {
        self.check()?;
        self.public_key = signing_key.verifying_key().to_bytes();
        let mut msg = [0u8; SIGNED_MAX];
        let len = self.write_signed_message(&mut msg)?;
        let signed = msg.get(..len).ok_or(Error::TooLong { max: SIGNED_MAX, got: len })?;
        self.signature = signing_key.sign(signed).to_bytes();
        Ok(())
    }

    /// Strictly verifies the signature, as [`Record::verify`] does.
    pub fn verify(&self) -> Result<()> {
        self.check()?;
        let mut msg = [0u8; SIGNED_MAX];
        let len = self.write_signed_message(&mut msg)?;
        let signed = msg.get(..len).ok_or(Error::BadSignature)?;
        verify_strict(signed, &self.public_key, &self.signature)
    }

    /// The slot this record occupies in a store.
    pub fn slot(&self) -> Slot {
        Slot { record_type: self.record_type, key: self.key, public_key: self.public_key }
    }

    /// The first unix second at which the record is expired.
    pub fn expires_at(&self) -> u64 {
        expires_at(self.timestamp, self.ttl)
    }

    /// Whether the record is expired at `now_unix_secs` (see
    /// [`Record::is_expired`]).
    pub fn is_expired(&self, now_unix_secs: u64) -> bool {
        now_unix_secs >= self.expires_at()
    }

    /// Checks the fields [`RecordRepr::emit`] would refuse.
    pub(crate) fn check(&self) -> Result<()> {
        if self.ttl == 0 {
            return Err(Error::BadField("record.ttl"));
        }
        if self.payload.len() > MAX_PAYLOAD {
            return Err(Error::TooLong { max: MAX_PAYLOAD, got: self.payload.len() });
        }
        Ok(())
    }

    /// Writes the whole record at offset `at` of a writer that the caller
    /// has sized for it (after [`RecordRepr::check`]).
    pub(crate) fn write(&self, w: &mut Writer<'_>, at: usize) {
        let n = self.payload.len();
        self.write_unsigned(w, at);
        w.bytes(at + layout::signature(n).start, &self.signature);
    }

    fn write_unsigned(&self, w: &mut Writer<'_>, at: usize) {
        let n = self.payload.len();
        w.u16(at + layout::MAGIC.start, MAGIC);
        w.u8(at + layout::VERSION, VERSION);
        w.u8(at + layout::TYPE, self.record_type.as_u8());
        w.bytes(at + layout::KEY.start, &self.key);
        w.u64(at + layout::SEQ.start, self.seq);
        w.u64(at + layout::TIMESTAMP.start, self.timestamp);
        w.u32(at + layout::TTL.start, self.ttl);
        // `check` bounded the payload to MAX_PAYLOAD, so it fits a u16.
        w.u16(at + layout::PAYLOAD_LEN.start, n as u16);
        w.bytes(at + layout::payload(n).start, self.payload);
        w.bytes(at + layout::public_key(n).start, &self.public_key);
    }

    /// Writes `DOMAIN ‖ record bytes before the signature` into `msg`,
    /// returning the length.
    fn write_signed_message(&self, msg: &mut [u8; SIGNED_MAX]) -> Result<usize> {
        let len = DOMAIN.len() + layout::signature(self.payload.len()).start;
        let mut w = Writer::new(msg, len)?;
        w.bytes(0, DOMAIN);
        self.write_unsigned(&mut w, DOMAIN.len());
        Ok(len)
    }
}

impl<'a> From<Record<'a>> for RecordRepr<'a> {
    fn from(record: Record<'a>) -> Self {
        RecordRepr::from_view(&record)
    }
}

/// The payload of an [`RecordType::Endpoint`] record: where and how a retry
/// endpoint takes NACKs, mirroring the BRC-126 ADVERT fields.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0  | 16 | NACK address, IPv6 (IPv4 as `::ffff:a.b.c.d`) |
/// | 16 | 2  | NACK port |
/// | 18 | 1  | tier, 0–254 |
/// | 19 | 1  | preference |
/// | 20 | 2  | flags, the ADVERT flag bits |
/// | 22 | 1  | shard bits, 0–12 |
/// | 23 | 1  | domain id length `d`, ≤ 64 |
/// | 24 | d  | domain id |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointPayload<'a> {
    /// NACK address as written (IPv4 is IPv4-mapped); see
    /// [`EndpointPayload::nack`] for the socket address to send to.
    pub nack_addr: Ipv6Addr,
    /// NACK UDP port.
    pub nack_port: u16,
    /// Distance tier, 0–254 (255 is refused, as in the ADVERT).
    pub tier: u8,
    /// Preference among endpoints of the same tier (ADVERT default 128).
    pub preference: u8,
    /// Capability flags, with the BRC-126 ADVERT bit meanings; unknown bits
    /// are carried unchanged.
    pub flags: u16,
    /// Data-shard bits of the endpoint's fabric (BRC-129), 0–12.
    pub shard_bits: u8,
    /// The domain the endpoint serves, at most [`EndpointPayload::MAX_DOMAIN`]
    /// bytes.
    pub domain: &'a [u8],
}

impl<'a> EndpointPayload<'a> {
    /// Bytes before the domain id.
    pub const FIXED_LEN: usize = 24;
    /// Longest domain id.
    pub const MAX_DOMAIN: usize = 64;
    /// Largest tier value allowed.
    pub const MAX_TIER: u8 = 254;
    /// Largest shard-bits value allowed (BRC-129 data shards).
    pub const MAX_SHARD_BITS: u8 = 12;

    /// Parses an endpoint payload; the buffer must hold exactly one.
    ///
    /// Errors: [`Error::Truncated`], [`Error::TooLong`] for a domain over 64
    /// bytes, [`Error::BadField`] (`"endpoint.tier"`, `"endpoint.shard_bits"`),
    /// [`Error::LengthMismatch`] for trailing bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        need(bytes, Self::FIXED_LEN)?;
        let domain_len = usize::from(u8_at(bytes, endpoint_layout::DOMAIN_LEN));
        if domain_len > Self::MAX_DOMAIN {
            return Err(Error::TooLong { max: Self::MAX_DOMAIN, got: domain_len });
        }
        exact(bytes, Self::FIXED_LEN + domain_len)?;
        let repr = EndpointPayload {
            nack_addr: Ipv6Addr::from(*array_ref::<16>(bytes, endpoint_layout::NACK_ADDR.start)),
            nack_port: u16_at(bytes, endpoint_layout::NACK_PORT.start),
            tier: u8_at(bytes, endpoint_layout::TIER),
            preference: u8_at(bytes, endpoint_layout::PREFERENCE),
            flags: u16_at(bytes, endpoint_layout::FLAGS.start),
            shard_bits: u8_at(bytes, endpoint_layout::SHARD_BITS),
            domain: slice(bytes, Self::FIXED_LEN..Self::FIXED_LEN + domain_len),
        };
        repr.check()?;
        Ok(repr)
    }

    /// Bytes [`EndpointPayload::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        Self::FIXED_LEN + self.domain.len()
    }

    /// Writes the payload into `buf`, returning its length.
    ///
    /// Errors as [`EndpointPayload::parse`] for out-of-range fields, and
    /// [`Error::Truncated`] if `buf` is too short.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        self.check()?;
        let len = self.buffer_len();
        let mut w = Writer::new(buf, len)?;
        w.bytes(endpoint_layout::NACK_ADDR.start, &self.nack_addr.octets());
        w.u16(endpoint_layout::NACK_PORT.start, self.nack_port);
        w.u8(endpoint_layout::TIER, self.tier);
        w.u8(endpoint_layout::PREFERENCE, self.preference);
        w.u16(endpoint_layout::FLAGS.start, self.flags);
        w.u8(endpoint_layout::SHARD_BITS, self.shard_bits);
        // `check` bounded the domain to MAX_DOMAIN, so it fits a u8.
        w.u8(endpoint_layout::DOMAIN_LEN, self.domain.len() as u8);
        w.bytes(Self::FIXED_LEN, self.domain);
        Ok(len)
    }

    /// The NACK socket address, with an IPv4-mapped address returned as
    /// IPv4.
    pub fn nack(&self) -> SocketAddr {
        SocketAddr::new(self.nack_addr.to_canonical(), self.nack_port)
    }

    /// Sets `nack_addr`/`nack_port` from a socket address (IPv4 is stored
    /// IPv4-mapped; IPv6 flow info and scope id are not carried).
    pub fn set_nack(&mut self, addr: SocketAddr) {
        self.nack_addr = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        self.nack_port = addr.port();
    }

    fn check(&self) -> Result<()> {
        if self.domain.len() > Self::MAX_DOMAIN {
            return Err(Error::TooLong { max: Self::MAX_DOMAIN, got: self.domain.len() });
        }
        if self.tier > Self::MAX_TIER {
            return Err(Error::BadField("endpoint.tier"));
        }
        if self.shard_bits > Self::MAX_SHARD_BITS {
            return Err(Error::BadField("endpoint.shard_bits"));
        }
        Ok(())
    }
}

/// Length of the largest signed message: [`DOMAIN`] and a maximal record
/// without its signature.
const SIGNED_MAX: usize = DOMAIN.len() + MAX_LEN - SIGNATURE_LEN;

/// Record field offsets; the variable tail is a function of the payload
/// length.
/// Where a record's key sits (the DHT's STORE ownership rule reads it).
pub const KEY_FIELD: crate::field::Field = layout::KEY;

mod layout {
    use crate::field::Field;

    pub(super) const MAGIC: Field = 0..2;
    pub(super) const VERSION: usize = 2;
    pub(super) const TYPE: usize = 3;
    pub(super) const KEY: Field = 4..36;
    pub(super) const SEQ: Field = 36..44;
    pub(super) const TIMESTAMP: Field = 44..52;
    pub(super) const TTL: Field = 52..56;
    pub(super) const PAYLOAD_LEN: Field = 56..58;

    pub(super) const fn payload(n: usize) -> Field {
        super::HEADER_LEN..super::HEADER_LEN + n
    }

    pub(super) const fn public_key(n: usize) -> Field {
        let at = super::HEADER_LEN + n;
        at..at + super::PUBLIC_KEY_LEN
    }

    pub(super) const fn signature(n: usize) -> Field {
        let at = super::HEADER_LEN + n + super::PUBLIC_KEY_LEN;
        at..at + super::SIGNATURE_LEN
    }
}

/// Endpoint payload field offsets.
mod endpoint_layout {
    use crate::field::Field;

    pub(super) const NACK_ADDR: Field = 0..16;
    pub(super) const NACK_PORT: Field = 16..18;
    pub(super) const TIER: usize = 18;
    pub(super) const PREFERENCE: usize = 19;
    pub(super) const FLAGS: Field = 20..22;
    pub(super) const SHARD_BITS: usize = 22;
    pub(super) const DOMAIN_LEN: usize = 23;
}

fn expires_at(timestamp: u64, ttl: u32) -> u64 {
    timestamp.saturating_add(u64::from(ttl))
}

/// Longest domain tag [`sign_detached`] accepts.
pub const MAX_TAG: usize = 63;
/// Longest message [`sign_detached`] accepts.
pub const MAX_DETACHED: usize = 1024;

/// Signs `message` for one use, named by `tag` (an ASCII string such as
/// `b"ricochet/pex/v1"`, 1..=[`MAX_TAG`] bytes). The signed bytes are
/// `len(tag) as u8 ‖ tag ‖ message`: the length byte is below 64, so they
/// never start like a record's signed bytes (which begin with the ASCII
/// `ricochet-record-v1`), and two tags never produce the same bytes — a
/// signature made for one use verifies for no other.
///
/// Errors: [`Error::BadField`] (`"signature.tag"`, `"signature.message"`)
/// for a tag or message out of range.
pub fn sign_detached(key: &SigningKey, tag: &[u8], message: &[u8]) -> Result<[u8; SIGNATURE_LEN]> {
    use ed25519_dalek::Signer;
    let mut buf = [0u8; 1 + MAX_TAG + MAX_DETACHED];
    let n = tagged(&mut buf, tag, message)?;
    Ok(key.sign(&buf[..n]).to_bytes())
}

/// Strictly verifies a [`sign_detached`] signature (no non-canonical `S`,
/// no small-order key or `R`); [`Error::BadSignature`] otherwise.
pub fn verify_detached(
    public_key: &[u8; PUBLIC_KEY_LEN],
    tag: &[u8],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<()> {
    let mut buf = [0u8; 1 + MAX_TAG + MAX_DETACHED];
    let n = tagged(&mut buf, tag, message)?;
    verify_strict(&buf[..n], public_key, signature)
}

fn tagged(buf: &mut [u8; 1 + MAX_TAG + MAX_DETACHED], tag: &[u8], message: &[u8]) -> Result<usize> {
    if tag.is_empty() || tag.len() > MAX_TAG {
        return Err(Error::BadField("signature.tag"));
    }
    if message.len() > MAX_DETACHED {
        return Err(Error::BadField("signature.message"));
    }
    buf[0] = tag.len() as u8;
    buf[1..1 + tag.len()].copy_from_slice(tag);
    buf[1 + tag.len()..1 + tag.len() + message.len()].copy_from_slice(message);
    Ok(1 + tag.len() + message.len())
}

fn verify_strict(
    message: &[u8],
    public_key: &[u8; PUBLIC_KEY_LEN],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<()> {
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| Error::BadSignature)?;
    key.verify_strict(message, &Signature::from_bytes(signature)).map_err(|_| Error::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use ed25519_dalek::Verifier;

    const SEED: [u8; 32] = [7u8; 32];

    fn signed(payload: &[u8]) -> RecordRepr<'_> {
        let mut repr = RecordRepr::unsigned(
            RecordType::Endpoint,
            [0x11; 32],
            42,
            1_767_225_600,
            3600,
            payload,
        );
        repr.sign(&SigningKey::from_bytes(&SEED)).unwrap();
        repr
    }

    fn emit(repr: &RecordRepr<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; repr.buffer_len()];
        assert_eq!(repr.emit(&mut buf).unwrap(), buf.len());
        buf
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        s.chunks(2)
            .map(|p| u8::from_str_radix(core::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    /// RFC 8032 §7.1 test 1: pins ed25519-dalek's signing and verification.
    #[test]
    fn rfc8032_test_vector_1() {
        let secret: [u8; 32] =
            hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .try_into()
                .unwrap();
        let key = SigningKey::from_bytes(&secret);
        assert_eq!(
            key.verifying_key().to_bytes().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let sig = key.sign(b"");
        assert_eq!(
            sig.to_bytes().to_vec(),
            hex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065\
                 224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
        );
        assert!(key.verifying_key().verify_strict(b"", &sig).is_ok());
    }

    #[test]
    fn sign_emit_parse_verify() {
        let payload = [0xA5u8; 40];
        let repr = signed(&payload);
        let bytes = emit(&repr);
        assert_eq!(bytes.len(), MIN_LEN + 40);
        let view = Record::new_checked(&bytes).unwrap();
        assert_eq!(view.record_type(), RecordType::Endpoint);
        assert_eq!(view.key(), &[0x11; 32]);
        assert_eq!(view.seq(), 42);
        assert_eq!(view.timestamp(), 1_767_225_600);
        assert_eq!(view.ttl(), 3600);
        assert_eq!(view.payload(), &payload);
        assert_eq!(view.public_key(), &SigningKey::from_bytes(&SEED).verifying_key().to_bytes());
        assert_eq!(view.signed_bytes(), &bytes[..bytes.len() - SIGNATURE_LEN]);
        assert_eq!(view.as_bytes(), &bytes[..]);
        view.verify().unwrap();
        let parsed = RecordRepr::parse(&bytes).unwrap();
        assert_eq!(parsed, repr);
        parsed.verify().unwrap();
        assert_eq!(RecordRepr::from(view), repr);
    }

    #[test]
    fn signature_covers_domain_prefix() {
        let repr = signed(b"x");
        let bytes = emit(&repr);
        let view = Record::new_checked(&bytes).unwrap();
        let key = VerifyingKey::from_bytes(view.public_key()).unwrap();
        let sig = Signature::from_bytes(view.signature());
        // Without the domain string the signature must not verify.
        assert!(key.verify_strict(view.signed_bytes(), &sig).is_err());
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(view.signed_bytes());
        assert!(key.verify_strict(&msg, &sig).is_ok());
    }

    #[test]
    fn empty_and_max_payload() {
        for n in [0, 1, MAX_PAYLOAD] {
            let payload = vec![3u8; n];
            let repr = signed(&payload);
            let bytes = emit(&repr);
            assert_eq!(bytes.len(), MIN_LEN + n);
            let view = Record::new_checked(&bytes).unwrap();
            view.verify().unwrap();
            assert_eq!(RecordRepr::parse(&bytes).unwrap(), repr);
        }
        assert_eq!(MAX_LEN, 1178);
    }

    #[test]
    fn truncation_at_every_length() {
        let bytes = emit(&signed(b"endpoint payload"));
        for len in 0..bytes.len() {
            match Record::new_checked(&bytes[..len]) {
                Err(Error::Truncated { got, .. }) => assert_eq!(got, len),
                other => panic!("len {len}: {other:?}"),
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Record::new_checked(&longer),
            Err(Error::LengthMismatch { declared: bytes.len(), actual: bytes.len() + 1 })
        );
    }

    #[test]
    fn header_checks() {
        let bytes = emit(&signed(b"p"));
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(Record::new_checked(&b), Err(Error::BadMagic));
        let mut b = bytes.clone();
        b[2] = 2;
        assert_eq!(Record::new_checked(&b), Err(Error::BadVersion { got: 2 }));
        for t in [0u8, 4, 0xFF] {
            let mut b = bytes.clone();
            b[3] = t;
            assert_eq!(Record::new_checked(&b), Err(Error::UnknownType(t)));
        }
        let mut b = bytes.clone();
        b[52..56].copy_from_slice(&[0; 4]);
        assert_eq!(Record::new_checked(&b), Err(Error::BadField("record.ttl")));
        let mut b = bytes.clone();
        b[56..58].copy_from_slice(&1025u16.to_be_bytes());
        assert_eq!(Record::new_checked(&b), Err(Error::TooLong { max: 1024, got: 1025 }));
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let bytes = emit(&signed(b"nack at [2001:db8::10]:9300"));
        // Every byte before the public key is covered; flip each in turn
        // (keeping the structure valid) and expect BadSignature.
        let pk_at = bytes.len() - TRAILER_LEN;
        for i in 4..pk_at {
            if (52..58).contains(&i) {
                continue; // ttl/len: flipping may change structure; covered below
            }
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let view = Record::new_checked(&b).unwrap();
            assert_eq!(view.verify(), Err(Error::BadSignature), "byte {i}");
        }
        let mut b = bytes.clone();
        b[55] ^= 0x01; // ttl low byte, stays non-zero
        assert_eq!(Record::new_checked(&b).unwrap().verify(), Err(Error::BadSignature));
        let mut b = bytes.clone();
        b[3] = RecordType::Topic.as_u8();
        assert_eq!(Record::new_checked(&b).unwrap().verify(), Err(Error::BadSignature));
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 0x01;
        assert_eq!(Record::new_checked(&b).unwrap().verify(), Err(Error::BadSignature));
    }

    #[test]
    fn wrong_key_is_rejected() {
        let mut repr = signed(b"payload");
        repr.public_key = SigningKey::from_bytes(&[8u8; 32]).verifying_key().to_bytes();
        assert_eq!(repr.verify(), Err(Error::BadSignature));
        let bytes = emit(&repr);
        assert_eq!(Record::new_checked(&bytes).unwrap().verify(), Err(Error::BadSignature));
        // A public key that is not a curve point at all.
        let mut repr = signed(b"payload");
        repr.public_key = [0xFF; 32];
        assert_eq!(repr.verify(), Err(Error::BadSignature));
    }

    #[test]
    fn non_canonical_s_is_rejected() {
        let repr = signed(b"malleable?");
        let mut forged = repr;
        let s: [u8; 32] = repr.signature[32..].try_into().unwrap();
        forged.signature[32..].copy_from_slice(&add_le(&s, &GROUP_ORDER));
        assert_ne!(forged.signature, repr.signature);
        assert_eq!(forged.verify(), Err(Error::BadSignature));
        let bytes = emit(&forged);
        assert_eq!(Record::new_checked(&bytes).unwrap().verify(), Err(Error::BadSignature));
        repr.verify().unwrap();
    }

    #[test]
    fn small_order_public_key_is_rejected() {
        // The identity point. With A = identity, [S]B = R + [k]A reduces to
        // [S]B = R, so (R = B, S = 1) passes a non-strict check for any
        // message; strict verification must refuse it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut repr = signed(b"anything");
        repr.public_key = identity;
        repr.signature = [0; 64];
        repr.signature[..32].copy_from_slice(&BASEPOINT);
        repr.signature[32] = 1;
        let mut msg = [0u8; SIGNED_MAX];
        let len = repr.write_signed_message(&mut msg).unwrap();
        let lax = VerifyingKey::from_bytes(&identity).unwrap();
        assert!(lax.verify(&msg[..len], &Signature::from_bytes(&repr.signature)).is_ok());
        assert_eq!(repr.verify(), Err(Error::BadSignature));
        let bytes = emit(&repr);
        assert_eq!(Record::new_checked(&bytes).unwrap().verify(), Err(Error::BadSignature));
    }

    #[test]
    fn expiry() {
        let repr = RecordRepr::unsigned(RecordType::Mailbox, [0; 32], 1, 1000, 60, b"");
        assert!(!repr.is_expired(0));
        assert!(!repr.is_expired(1059));
        assert!(repr.is_expired(1060));
        assert_eq!(repr.expires_at(), 1060);
        let far = RecordRepr { timestamp: u64::MAX - 1, ttl: u32::MAX, ..repr };
        assert_eq!(far.expires_at(), u64::MAX);
        assert!(!far.is_expired(u64::MAX - 1));
        let mut buf = [0u8; MIN_LEN];
        repr.emit(&mut buf).unwrap();
        let view = Record::new_checked(&buf).unwrap();
        assert!(!view.is_expired(1059));
        assert!(view.is_expired(1060));
    }

    #[test]
    fn emit_refuses_bad_records() {
        let big = vec![0u8; MAX_PAYLOAD + 1];
        let mut repr = RecordRepr::unsigned(RecordType::Topic, [0; 32], 1, 0, 1, &big);
        let mut buf = vec![0u8; MAX_LEN + 1];
        assert_eq!(repr.emit(&mut buf), Err(Error::TooLong { max: 1024, got: 1025 }));
        let key = SigningKey::from_bytes(&SEED);
        assert_eq!(repr.sign(&key), Err(Error::TooLong { max: 1024, got: 1025 }));
        let mut zero_ttl = RecordRepr::unsigned(RecordType::Topic, [0; 32], 1, 0, 0, b"");
        assert_eq!(zero_ttl.emit(&mut buf), Err(Error::BadField("record.ttl")));
        assert_eq!(zero_ttl.sign(&key), Err(Error::BadField("record.ttl")));
        let ok = signed(b"abc");
        let mut short = vec![0u8; ok.buffer_len() - 1];
        assert_eq!(
            ok.emit(&mut short),
            Err(Error::Truncated { needed: ok.buffer_len(), got: ok.buffer_len() - 1 })
        );
    }

    #[test]
    fn slot_and_node_id() {
        let a = signed(b"a");
        let b = RecordRepr { seq: 43, ..signed(b"b") };
        assert_eq!(a.slot(), b.slot());
        let other_type = RecordRepr { record_type: RecordType::Topic, ..a };
        assert_ne!(a.slot(), other_type.slot());
        let bytes = emit(&a);
        let view = Record::new_checked(&bytes).unwrap();
        assert_eq!(view.slot(), a.slot());
        assert_eq!(view.publisher_id(), node_id(&a.public_key));
        assert_eq!(node_id(&a.public_key), *blake3::hash(&a.public_key).as_bytes());
    }

    #[test]
    fn record_type_bytes() {
        for t in [RecordType::Endpoint, RecordType::Mailbox, RecordType::Topic] {
            assert_eq!(RecordType::from_u8(t.as_u8()), Ok(t));
        }
        assert_eq!(RecordType::from_u8(0), Err(Error::UnknownType(0)));
    }

    fn endpoint() -> EndpointPayload<'static> {
        EndpointPayload {
            nack_addr: "2001:db8::10".parse().unwrap(),
            nack_port: 9300,
            tier: 1,
            preference: 128,
            flags: 0x0018,
            shard_bits: 2,
            domain: b"eu-west",
        }
    }

    #[test]
    fn endpoint_payload_round_trip() {
        let ep = endpoint();
        let mut buf = [0u8; 128];
        let n = ep.emit(&mut buf).unwrap();
        assert_eq!(n, EndpointPayload::FIXED_LEN + 7);
        assert_eq!(EndpointPayload::parse(&buf[..n]), Ok(ep));
        for len in 0..n {
            assert!(matches!(EndpointPayload::parse(&buf[..len]), Err(Error::Truncated { .. })));
        }
        assert_eq!(
            EndpointPayload::parse(&buf[..n + 1]),
            Err(Error::LengthMismatch { declared: n, actual: n + 1 })
        );
        assert_eq!(ep.nack(), "[2001:db8::10]:9300".parse().unwrap());
    }

    #[test]
    fn endpoint_payload_v4_is_mapped() {
        let mut ep = endpoint();
        ep.set_nack(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 9300));
        let mut buf = [0u8; 128];
        let n = ep.emit(&mut buf).unwrap();
        assert_eq!(&buf[..16], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 192, 0, 2, 7]);
        let back = EndpointPayload::parse(&buf[..n]).unwrap();
        assert_eq!(back, ep);
        assert_eq!(back.nack(), "192.0.2.7:9300".parse().unwrap());
    }

    #[test]
    fn endpoint_payload_limits() {
        let mut buf = [0u8; 256];
        let long = [b'd'; 65];
        let ep = EndpointPayload { domain: &long, ..endpoint() };
        assert_eq!(ep.emit(&mut buf), Err(Error::TooLong { max: 64, got: 65 }));
        let ep = EndpointPayload { tier: 255, ..endpoint() };
        assert_eq!(ep.emit(&mut buf), Err(Error::BadField("endpoint.tier")));
        let ep = EndpointPayload { shard_bits: 13, ..endpoint() };
        assert_eq!(ep.emit(&mut buf), Err(Error::BadField("endpoint.shard_bits")));

        let n = endpoint().emit(&mut buf).unwrap();
        let mut b = buf;
        b[23] = 65;
        assert_eq!(EndpointPayload::parse(&b[..n]), Err(Error::TooLong { max: 64, got: 65 }));
        let mut b = buf;
        b[18] = 255;
        assert_eq!(EndpointPayload::parse(&b[..n]), Err(Error::BadField("endpoint.tier")));
        let mut b = buf;
        b[22] = 13;
        assert_eq!(EndpointPayload::parse(&b[..n]), Err(Error::BadField("endpoint.shard_bits")));
        let max = [b'x'; 64];
        let ep = EndpointPayload { domain: &max, ..endpoint() };
        let n = ep.emit(&mut buf).unwrap();
        assert_eq!(EndpointPayload::parse(&buf[..n]), Ok(ep));
    }

    /// The ed25519 group order L, little-endian.
    const GROUP_ORDER: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    /// The compressed ed25519 base point B.
    const BASEPOINT: [u8; 32] = [
        0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
        0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
        0x66, 0x66,
    ];

    fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "S + L fits in 256 bits");
        out
    }

    #[test]
    fn detached_signatures_are_bound_to_their_tag() {
        let key = SigningKey::from_bytes(&SEED);
        let pk = key.verifying_key().to_bytes();
        let sig = sign_detached(&key, b"ricochet/pex/v1", b"hello").unwrap();
        verify_detached(&pk, b"ricochet/pex/v1", b"hello", &sig).unwrap();
        assert_eq!(
            verify_detached(&pk, b"ricochet/pex/v2", b"hello", &sig),
            Err(Error::BadSignature)
        );
        assert_eq!(
            verify_detached(&pk, b"ricochet/pex/v1", b"hellp", &sig),
            Err(Error::BadSignature)
        );
        // Shifting bytes between tag and message does not verify either.
        assert_eq!(
            verify_detached(&pk, b"ricochet/pex/v1h", b"ello", &sig),
            Err(Error::BadSignature)
        );
        assert_eq!(sign_detached(&key, b"", b"x"), Err(Error::BadField("signature.tag")));
        assert_eq!(
            sign_detached(&key, b"t", &[0; MAX_DETACHED + 1]),
            Err(Error::BadField("signature.message"))
        );
        // Pinned: the signed bytes are len(tag) ‖ tag ‖ message.
        let vk = key.verifying_key();
        let msg = [&[15u8][..], b"ricochet/pex/v1", b"hello"].concat();
        vk.verify(&msg, &Signature::from_bytes(&sig)).unwrap();
    }
}
