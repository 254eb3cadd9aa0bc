//! BRC-139 shard manifest (type 0x40), with its BRC-148 Domains section:
//! how a participant announces its sharding and, for source-specific
//! multicast, the publisher sources receivers should `(S,G)`-join.
//!
//! docs/PROTOCOL.md § "Shard manifest (SSM publisher discovery)". A manifest
//! is sent to the beacon group (index 0xFFFD) next to ADVERTs and is told
//! apart from them by byte 6 (0x40 against 0x20). It opens with the common
//! prefix, a 64-byte header, then up to four sections in this order: the
//! joined-groups claim (list or bitmap), the publisher sources, the top-level
//! Successor block and the Domains section. A flag bit says whether each is
//! present; a CRC-32C over the whole datagram, its own four bytes taken as
//! zero, protects it.
//!
//! # Contract
//! - [`ShardManifest::new_checked`] proves every count agrees with the
//!   datagram, every coherence rule of BRC-139/BRC-148 holds and the CRC
//!   matches, without allocating; its accessors and iterators cannot panic.
//! - [`ShardManifestRepr`] is the owned form. Its `flags` hold only the
//!   announcer bits (Authoritative, Shutdown, SourceModeSSM, PilotOnly); the
//!   four "section present" bits are derived from the sections themselves,
//!   so a Repr cannot claim a section it lacks. `emit` refuses every Repr
//!   that `parse` would refuse, and `parse(emit(x)) == x`.
//! - Reserved bytes inside a Successor block (2) and a domain descriptor (3)
//!   are ignored on receipt and written as zero, as the reference decoder
//!   does, so `emit(parse(b))` equals `b` only when they were zero.
//! - Stricter than the reference decoder (lightwebinc/shard-common
//!   `frame/shard_manifest.go`), on purpose: the protocol version is checked
//!   as for every fabric message; bytes past the declared end are refused
//!   (the reference ignores them, but its CRC covers only the declared
//!   length); `PilotOnly` without `Authoritative` is refused, as BRC-139
//!   requires of consumers.

use core::net::Ipv6Addr;

use crate::error::{Error, Result};
use crate::field::{Field, Writer, array, array_ref, need, u8_at, u16_at, u32_at};
use crate::prefix::{self, Kind};

/// Message type of a shard manifest (byte 6).
pub const MSG_TYPE: u8 = 0x40;
/// Size of the fixed header; the sections follow it.
pub const HEADER_LEN: usize = 64;
/// Size of a Successor block (top level, or after a domain descriptor).
pub const SUCCESSOR_LEN: usize = 24;
/// Size of a domain descriptor's fixed core.
pub const DOMAIN_LEN: usize = 24;
/// Highest shard-bit width of the transaction plane (BRC-129).
pub const MAX_SHARD_BITS: u8 = 12;
/// Highest shard-bit width of an object plane other than domain 0 (BRC-148).
pub const MAX_PLANE_SHARD_BITS: u8 = 15;
/// Most descriptors a Domains section may hold (domains 0x0–0xE).
pub const MAX_DOMAINS: usize = 15;
/// Highest domain id; 0xF would overlap the control plane.
pub const MAX_DOMAIN_ID: u8 = 0x0E;
/// First index of the BRC-129 control plane; no object plane may reach it.
pub const CONTROL_BASE: u32 = 0xF800;
/// Most entries a group list, bitmap bytes or sources a manifest can count
/// (each count is a u16).
pub const MAX_COUNT: usize = 0xFFFF;

const FLAGS: usize = 7;
const SRC: Field = 8..24;
const INSTANCE: Field = 24..28;
const EPOCH: Field = 28..32;
const TTL: Field = 32..34;
const INTERVAL: Field = 34..36;
const SHARD_BITS: usize = 36;
const ROLE: usize = 37;
const GROUP_COUNT: Field = 38..40;
const BITMAP_BYTES: Field = 40..42;
const SOURCE_COUNT: Field = 42..44;
const CRC: Field = 44..48;
const GENERATION: Field = 48..64;

// Inside a Successor block.
const SUCC_GENERATION: Field = 0..16;
const SUCC_BITS: usize = 16;
const SUCC_FLAGS: usize = 17;
const SUCC_RESERVED: Field = 18..20;
const SUCC_EPOCH: Field = 20..24;

// Inside a domain descriptor.
const DOM_ID: usize = 0;
const DOM_BITS: usize = 1;
const DOM_SPAN: usize = 2;
const DOM_FLAGS: usize = 3;
const DOM_VERSION: usize = 4;
const DOM_RESERVED: Field = 5..8;
const DOM_GENERATION: Field = 8..24;

const SOURCE_LEN: usize = 16;

/// Manifest flag bits (byte 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ManifestFlags(pub u8);

impl ManifestFlags {
    /// The joined-groups section is present.
    pub const GROUPS_VALID: u8 = 1 << 0;
    /// Operator-curated announcer; only these take part in adoption.
    pub const AUTHORITATIVE: u8 = 1 << 1;
    /// Last manifest before a graceful shutdown: drop the announcer now.
    pub const SHUTDOWN: u8 = 1 << 2;
    /// The announced data plane uses SSM (FF3x) addressing.
    pub const SOURCE_MODE_SSM: u8 = 1 << 3;
    /// The publisher-sources section is present.
    pub const SOURCES_VALID: u8 = 1 << 4;
    /// The groups are desired fleet state, not the announcer's own joins;
    /// requires Authoritative.
    pub const PILOT_ONLY: u8 = 1 << 5;
    /// The top-level Successor block is present; requires Authoritative.
    pub const SUCCESSOR_VALID: u8 = 1 << 6;
    /// The BRC-148 Domains section is present.
    pub const DOMAINS_VALID: u8 = 1 << 7;

    /// The bits that say which sections follow the header; a Repr derives
    /// them from its sections.
    pub const SECTION_BITS: u8 =
        Self::GROUPS_VALID | Self::SOURCES_VALID | Self::SUCCESSOR_VALID | Self::DOMAINS_VALID;

    /// Whether every bit of `bits` is set.
    pub const fn has(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
}

/// Role hints (byte 37). Informational: never a filtering input.
pub mod role {
    /// Generic participant.
    pub const GENERIC: u8 = 0;
    /// Shard proxy (a data-plane publisher).
    pub const PROXY: u8 = 1;
    /// Listener.
    pub const LISTENER: u8 = 2;
    /// Retry endpoint.
    pub const RETRY_ENDPOINT: u8 = 3;
    /// Transaction producer.
    pub const PRODUCER: u8 = 4;
    /// A manifest-only announcer (pilot).
    pub const MANIFEST_ONLY: u8 = 5;
    /// Publisher of BEEF-plane objects (BRC-148).
    pub const PRODUCER_BEEF: u8 = 6;
    /// Subscriber of BEEF-plane groups (BRC-148).
    pub const LISTENER_BEEF: u8 = 7;
}

/// Successor flag bit: the incoming generation's data plane uses SSM.
pub const SUCCESSOR_SOURCE_MODE_SSM: u8 = 1 << 0;

/// Domain descriptor flag bits.
pub mod domain_flags {
    /// This plane's data plane uses SSM addressing.
    pub const SOURCE_MODE_SSM: u8 = 1 << 0;
    /// A Successor block follows this descriptor's core.
    pub const SUCCESSOR_VALID: u8 = 1 << 1;
    /// The announcer publishes or serves this plane.
    pub const ACTIVE: u8 = 1 << 2;
}

/// An announced generation transition: the shard-bit width (and mode) that
/// becomes the only active generation at `transition_epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Successor {
    /// The incoming generation's id.
    pub generation_id: [u8; 16],
    /// The incoming shard-bit width; within ±1 of the active one.
    pub shard_bits: u8,
    /// [`SUCCESSOR_SOURCE_MODE_SSM`]; other bits reserved, kept as received.
    pub flags: u8,
    /// Unix seconds at which the successor takes over.
    pub transition_epoch: u32,
}

impl Successor {
    fn read(block: &[u8]) -> Self {
        Successor {
            generation_id: array(block, SUCC_GENERATION.start),
            shard_bits: u8_at(block, SUCC_BITS),
            flags: u8_at(block, SUCC_FLAGS),
            transition_epoch: u32_at(block, SUCC_EPOCH.start),
        }
    }

    fn write(&self, w: &mut Writer<'_>, at: usize) {
        w.bytes(at + SUCC_GENERATION.start, &self.generation_id);
        w.u8(at + SUCC_BITS, self.shard_bits);
        w.u8(at + SUCC_FLAGS, self.flags);
        w.zero(at + SUCC_RESERVED.start..at + SUCC_RESERVED.end);
        w.u32(at + SUCC_EPOCH.start, self.transition_epoch);
    }

    /// BRC-139: at most `max_bits`, and within one bit of the active width.
    fn check(&self, active_bits: u8, max_bits: u8) -> bool {
        self.shard_bits <= max_bits && self.shard_bits.abs_diff(active_bits) <= 1
    }
}

/// One BRC-148 per-plane entry of the Domains section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DomainDescriptor {
    /// Plane selector 0x0–0xE (the high nibble of the plane's indices).
    pub domain_id: u8,
    /// The plane's shard-bit width (domain 0: ≤ 12; others: ≤ 15).
    pub shard_bits: u8,
    /// Contiguous 0x1000-index slots the plane reserves.
    pub slot_span: u8,
    /// [`domain_flags`] bits; [`domain_flags::SUCCESSOR_VALID`] is derived
    /// from `successor` on emit and must agree with it.
    pub flags: u8,
    /// Descriptor format version (0 in this revision; not checked).
    pub version: u8,
    /// The plane's generation id.
    pub generation_id: [u8; 16],
    /// The plane's in-flight transition, if any.
    pub successor: Option<Successor>,
}

impl DomainDescriptor {
    /// Bytes this descriptor occupies on the wire.
    pub const fn wire_len(&self) -> usize {
        DOMAIN_LEN + if self.successor.is_some() { SUCCESSOR_LEN } else { 0 }
    }

    fn read(core: &[u8], successor: Option<&[u8]>) -> Self {
        DomainDescriptor {
            domain_id: u8_at(core, DOM_ID),
            shard_bits: u8_at(core, DOM_BITS),
            slot_span: u8_at(core, DOM_SPAN),
            flags: u8_at(core, DOM_FLAGS),
            version: u8_at(core, DOM_VERSION),
            generation_id: array(core, DOM_GENERATION.start),
            successor: successor.map(Successor::read),
        }
    }
}

/// The joined-groups section, as the owned Repr holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum GroupClaim {
    /// No claim (identity-only manifest).
    #[default]
    None,
    /// Group indices, ascending, no duplicates, at least one.
    List(Vec<u16>),
    /// Bit `i` (LSB first within each byte) claims group `i`; at least one
    /// byte.
    Bitmap(Vec<u8>),
}

impl GroupClaim {
    fn wire_len(&self) -> usize {
        match self {
            GroupClaim::None => 0,
            GroupClaim::List(l) => 2 * l.len(),
            GroupClaim::Bitmap(b) => b.len(),
        }
    }
}

/// Whether `buf` carries the prefix and type of a shard manifest, for
/// dispatching a beacon-group datagram before parsing it.
pub fn is_shard_manifest(buf: &[u8]) -> bool {
    matches!(prefix::classify(buf), Ok(Kind::Control(MSG_TYPE)))
}

/// A checked, zero-copy view of a shard manifest.
#[derive(Debug, Clone, Copy)]
pub struct ShardManifest<'a> {
    buf: &'a [u8],
    sources_at: usize,
    successor_at: usize,
    domains_at: usize,
}

impl<'a> ShardManifest<'a> {
    /// Checks prefix and type, every section count against the datagram
    /// (exactly, no trailing bytes), the coherence rules, the CRC, the group
    /// list order, the Successor bounds and the Domains rules.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        match prefix::classify(buf)? {
            Kind::Control(MSG_TYPE) => {}
            Kind::Control(t) | Kind::Frame(t) => return Err(Error::UnknownType(t)),
        }
        need(buf, HEADER_LEN)?;
        let flags = ManifestFlags(u8_at(buf, FLAGS));
        let authoritative = flags.has(ManifestFlags::AUTHORITATIVE);
        let shard_bits = u8_at(buf, SHARD_BITS);
        if shard_bits > MAX_SHARD_BITS {
            return Err(Error::BadField("shard_bits"));
        }
        let group_count = usize::from(u16_at(buf, GROUP_COUNT.start));
        let bitmap_bytes = usize::from(u16_at(buf, BITMAP_BYTES.start));
        let groups_len = groups_section_len(flags, group_count, bitmap_bytes)?;
        let source_count = usize::from(u16_at(buf, SOURCE_COUNT.start));
        if flags.has(ManifestFlags::SOURCES_VALID) != (source_count > 0) {
            return Err(Error::BadField("sources"));
        }
        if flags.has(ManifestFlags::SUCCESSOR_VALID) && !authoritative {
            return Err(Error::BadField("successor"));
        }
        if flags.has(ManifestFlags::PILOT_ONLY) && !authoritative {
            return Err(Error::BadField("pilot_only"));
        }

        let sources_at = HEADER_LEN + groups_len;
        let successor_at = sources_at + SOURCE_LEN * source_count;
        let domains_at = successor_at
            + if flags.has(ManifestFlags::SUCCESSOR_VALID) { SUCCESSOR_LEN } else { 0 };
        need(buf, domains_at)?;
        let end = if flags.has(ManifestFlags::DOMAINS_VALID) {
            domains_end(buf, domains_at)?
        } else {
            domains_at
        };
        if buf.len() > end {
            return Err(Error::LengthMismatch { declared: end, actual: buf.len() });
        }
        if manifest_crc(buf) != u32_at(buf, CRC.start) {
            return Err(Error::BadField("manifest_crc"));
        }

        let m = ShardManifest { buf, sources_at, successor_at, domains_at };
        if let RawGroups::List(list) = m.raw_groups()
            && !strictly_ascending(list.chunks_exact(2).map(be16))
        {
            return Err(Error::BadField("groups"));
        }
        if let Some(s) = m.successor()
            && !s.check(shard_bits, MAX_SHARD_BITS)
        {
            return Err(Error::BadField("successor"));
        }
        if flags.has(ManifestFlags::DOMAINS_VALID) {
            check_domains(m.domains(), shard_bits, &m.generation_id(), authoritative)?;
        }
        Ok(m)
    }

    /// Flags byte, section bits included.
    pub fn flags(&self) -> ManifestFlags {
        ManifestFlags(u8_at(self.buf, FLAGS))
    }
    /// The announcer's own IPv6 as it wrote it (informational: the datagram's
    /// source address is the one to trust).
    pub fn src_ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::from(*array_ref::<16>(self.buf, SRC.start))
    }
    /// Instance id (CRC-32C of the announcer's hostname).
    pub fn instance_id(&self) -> u32 {
        u32_at(self.buf, INSTANCE.start)
    }
    /// Unix seconds when the manifest was generated.
    pub fn epoch(&self) -> u32 {
        u32_at(self.buf, EPOCH.start)
    }
    /// Validity in seconds; 0 asks the consumer to use its default.
    pub fn ttl_secs(&self) -> u16 {
        u16_at(self.buf, TTL.start)
    }
    /// Seconds between announcements.
    pub fn announce_interval_secs(&self) -> u16 {
        u16_at(self.buf, INTERVAL.start)
    }
    /// Transaction-plane shard bits, 0..=12.
    pub fn shard_bits(&self) -> u8 {
        u8_at(self.buf, SHARD_BITS)
    }
    /// Role hint (see [`role`]).
    pub fn role_hint(&self) -> u8 {
        u8_at(self.buf, ROLE)
    }
    /// The CRC as carried.
    pub fn crc(&self) -> u32 {
        u32_at(self.buf, CRC.start)
    }
    /// Generation id of the active configuration.
    pub fn generation_id(&self) -> [u8; 16] {
        *array_ref::<16>(self.buf, GENERATION.start)
    }
    /// Total bytes (the whole datagram).
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Never true: a manifest has at least its header.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The group indices claimed, ascending. Bitmap bits at or above
    /// `2^shard_bits` are skipped, as BRC-139 tells consumers to.
    pub fn groups(&self) -> impl Iterator<Item = u16> + 'a {
        let limit = 1u32 << self.shard_bits();
        let (list, bitmap) = match self.raw_groups() {
            RawGroups::None => (&[][..], &[][..]),
            RawGroups::List(l) => (l, &[][..]),
            RawGroups::Bitmap(b) => (&[][..], b),
        };
        let from_list = list.chunks_exact(2).map(be16);
        let from_bitmap = bitmap.iter().enumerate().flat_map(move |(i, &byte)| {
            (0..8u32).filter_map(move |bit| {
                let index = (i as u32) * 8 + bit;
                (byte & (1 << bit) != 0 && index < limit).then_some(index as u16)
            })
        });
        from_list.chain(from_bitmap)
    }

    /// The publisher sources, in wire order (duplicates possible).
    pub fn sources(&self) -> impl ExactSizeIterator<Item = Ipv6Addr> + 'a {
        let raw = self.buf.get(self.sources_at..self.successor_at).unwrap_or(&[]);
        raw.chunks_exact(SOURCE_LEN).map(|c| Ipv6Addr::from(array::<16>(c, 0)))
    }

    /// Number of source entries.
    pub fn source_count(&self) -> usize {
        (self.successor_at - self.sources_at) / SOURCE_LEN
    }

    /// The top-level Successor block, if present.
    pub fn successor(&self) -> Option<Successor> {
        self.flags()
            .has(ManifestFlags::SUCCESSOR_VALID)
            .then(|| Successor::read(self.buf.get(self.successor_at..).unwrap_or(&[])))
    }

    /// The Domains section's descriptors (empty when absent).
    pub fn domains(&self) -> Domains<'a> {
        let present = self.flags().has(ManifestFlags::DOMAINS_VALID);
        let count = if present { usize::from(u8_at(self.buf, self.domains_at)) } else { 0 };
        Domains { buf: self.buf, at: self.domains_at + 1, left: count }
    }

    fn raw_groups(&self) -> RawGroups<'a> {
        let section = self.buf.get(HEADER_LEN..self.sources_at).unwrap_or(&[]);
        if !self.flags().has(ManifestFlags::GROUPS_VALID) {
            RawGroups::None
        } else if u16_at(self.buf, BITMAP_BYTES.start) > 0 {
            RawGroups::Bitmap(section)
        } else {
            RawGroups::List(section)
        }
    }
}

/// Iterator over a checked manifest's domain descriptors.
#[derive(Debug, Clone)]
pub struct Domains<'a> {
    buf: &'a [u8],
    at: usize,
    left: usize,
}

impl Iterator for Domains<'_> {
    type Item = DomainDescriptor;

    fn next(&mut self) -> Option<DomainDescriptor> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let core = self.buf.get(self.at..self.at + DOMAIN_LEN)?;
        self.at += DOMAIN_LEN;
        let successor = if u8_at(core, DOM_FLAGS) & domain_flags::SUCCESSOR_VALID != 0 {
            let block = self.buf.get(self.at..self.at + SUCCESSOR_LEN)?;
            self.at += SUCCESSOR_LEN;
            Some(block)
        } else {
            None
        };
        Some(DomainDescriptor::read(core, successor))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// The parsed, owned form of a shard manifest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ShardManifestRepr {
    /// Announcer bits only: [`ManifestFlags::AUTHORITATIVE`],
    /// [`ManifestFlags::SHUTDOWN`], [`ManifestFlags::SOURCE_MODE_SSM`],
    /// [`ManifestFlags::PILOT_ONLY`]. The section bits come from the
    /// sections below; `emit` refuses a Repr that sets them here.
    pub flags: ManifestFlags,
    /// The announcer's own IPv6 (informational).
    pub src_ipv6: [u8; 16],
    /// Instance id.
    pub instance_id: u32,
    /// Unix seconds at generation.
    pub epoch: u32,
    /// Validity, seconds (0: consumer default).
    pub ttl_secs: u16,
    /// Seconds between announcements.
    pub announce_interval_secs: u16,
    /// Transaction-plane shard bits, 0..=12.
    pub shard_bits: u8,
    /// Role hint.
    pub role_hint: u8,
    /// Generation id.
    pub generation_id: [u8; 16],
    /// Joined-groups claim.
    pub groups: GroupClaim,
    /// Publisher sources, in wire order.
    pub sources: Vec<Ipv6Addr>,
    /// Top-level Successor block (requires Authoritative).
    pub successor: Option<Successor>,
    /// BRC-148 descriptors; empty means no Domains section.
    pub domains: Vec<DomainDescriptor>,
}

impl ShardManifestRepr {
    /// Checks and lifts.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        Ok(Self::from_view(&ShardManifest::new_checked(buf)?))
    }

    /// Lifts an already checked view.
    pub fn from_view(m: &ShardManifest<'_>) -> Self {
        let groups = match m.raw_groups() {
            RawGroups::None => GroupClaim::None,
            RawGroups::List(l) => GroupClaim::List(l.chunks_exact(2).map(be16).collect()),
            RawGroups::Bitmap(b) => GroupClaim::Bitmap(b.to_vec()),
        };
        ShardManifestRepr {
            flags: ManifestFlags(m.flags().0 & !ManifestFlags::SECTION_BITS),
            src_ipv6: m.src_ipv6().octets(),
            instance_id: m.instance_id(),
            epoch: m.epoch(),
            ttl_secs: m.ttl_secs(),
            announce_interval_secs: m.announce_interval_secs(),
            shard_bits: m.shard_bits(),
            role_hint: m.role_hint(),
            generation_id: m.generation_id(),
            groups,
            sources: m.sources().collect(),
            successor: m.successor(),
            domains: m.domains().collect(),
        }
    }

    /// The flags byte as it goes on the wire, section bits included.
    pub fn wire_flags(&self) -> ManifestFlags {
        let mut f = self.flags.0;
        if self.groups != GroupClaim::None {
            f |= ManifestFlags::GROUPS_VALID;
        }
        if !self.sources.is_empty() {
            f |= ManifestFlags::SOURCES_VALID;
        }
        if self.successor.is_some() {
            f |= ManifestFlags::SUCCESSOR_VALID;
        }
        if !self.domains.is_empty() {
            f |= ManifestFlags::DOMAINS_VALID;
        }
        ManifestFlags(f)
    }

    /// Bytes `emit` writes.
    pub fn buffer_len(&self) -> usize {
        let domains = if self.domains.is_empty() {
            0
        } else {
            1 + self.domains.iter().map(DomainDescriptor::wire_len).sum::<usize>()
        };
        HEADER_LEN
            + self.groups.wire_len()
            + SOURCE_LEN * self.sources.len()
            + if self.successor.is_some() { SUCCESSOR_LEN } else { 0 }
            + domains
    }

    /// Checks every rule `parse` enforces, then writes the manifest with its
    /// CRC, returning its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        self.check()?;
        let total = self.buffer_len();
        let mut w = Writer::new(buf, total)?;
        self.write_unsealed(&mut w);
        // The CRC field was written as zero; seal it.
        let crc = manifest_crc(&buf[..total]);
        buf[CRC].copy_from_slice(&crc.to_be_bytes());
        Ok(total)
    }

    /// Writes every byte but the CRC, which is left zero.
    fn write_unsealed(&self, w: &mut Writer<'_>) {
        let flags = self.wire_flags();
        prefix::write(w, MSG_TYPE);
        w.u8(FLAGS, flags.0);
        w.bytes(SRC.start, &self.src_ipv6);
        w.u32(INSTANCE.start, self.instance_id);
        w.u32(EPOCH.start, self.epoch);
        w.u16(TTL.start, self.ttl_secs);
        w.u16(INTERVAL.start, self.announce_interval_secs);
        w.u8(SHARD_BITS, self.shard_bits);
        w.u8(ROLE, self.role_hint);
        let (count, bitmap) = match &self.groups {
            GroupClaim::None => (0, 0),
            GroupClaim::List(l) => (l.len(), 0),
            GroupClaim::Bitmap(b) => (0, b.len()),
        };
        // check() has bounded every count by MAX_COUNT.
        w.u16(GROUP_COUNT.start, count as u16);
        w.u16(BITMAP_BYTES.start, bitmap as u16);
        w.u16(SOURCE_COUNT.start, self.sources.len() as u16);
        w.zero(CRC);
        w.bytes(GENERATION.start, &self.generation_id);
        let mut at = HEADER_LEN;
        match &self.groups {
            GroupClaim::None => {}
            GroupClaim::List(l) => {
                for &g in l {
                    w.u16(at, g);
                    at += 2;
                }
            }
            GroupClaim::Bitmap(b) => {
                w.bytes(at, b);
                at += b.len();
            }
        }
        for s in &self.sources {
            w.bytes(at, &s.octets());
            at += SOURCE_LEN;
        }
        if let Some(s) = &self.successor {
            s.write(w, at);
            at += SUCCESSOR_LEN;
        }
        if !self.domains.is_empty() {
            w.u8(at, self.domains.len() as u8);
            at += 1;
            for d in &self.domains {
                w.u8(at + DOM_ID, d.domain_id);
                w.u8(at + DOM_BITS, d.shard_bits);
                w.u8(at + DOM_SPAN, d.slot_span);
                w.u8(at + DOM_FLAGS, d.flags);
                w.u8(at + DOM_VERSION, d.version);
                w.zero(at + DOM_RESERVED.start..at + DOM_RESERVED.end);
                w.bytes(at + DOM_GENERATION.start, &d.generation_id);
                at += DOMAIN_LEN;
                if let Some(s) = &d.successor {
                    s.write(w, at);
                    at += SUCCESSOR_LEN;
                }
            }
        }
        debug_assert_eq!(at, self.buffer_len());
    }

    fn check(&self) -> Result<()> {
        if self.flags.0 & ManifestFlags::SECTION_BITS != 0 {
            return Err(Error::BadField("flags"));
        }
        let authoritative = self.flags.has(ManifestFlags::AUTHORITATIVE);
        if self.shard_bits > MAX_SHARD_BITS {
            return Err(Error::BadField("shard_bits"));
        }
        match &self.groups {
            GroupClaim::None => {}
            GroupClaim::List(l) => {
                if l.is_empty() || !strictly_ascending(l.iter().copied()) {
                    return Err(Error::BadField("groups"));
                }
                bounded(l.len())?;
            }
            GroupClaim::Bitmap(b) => {
                if b.is_empty() {
                    return Err(Error::BadField("groups"));
                }
                bounded(b.len())?;
            }
        }
        bounded(self.sources.len())?;
        if self.flags.has(ManifestFlags::PILOT_ONLY) && !authoritative {
            return Err(Error::BadField("pilot_only"));
        }
        if let Some(s) = &self.successor
            && (!authoritative || !s.check(self.shard_bits, MAX_SHARD_BITS))
        {
            return Err(Error::BadField("successor"));
        }
        if !self.domains.is_empty() {
            for d in &self.domains {
                let flagged = d.flags & domain_flags::SUCCESSOR_VALID != 0;
                if flagged != d.successor.is_some() {
                    return Err(Error::BadField("domains"));
                }
            }
            check_domains(
                self.domains.iter().copied(),
                self.shard_bits,
                &self.generation_id,
                authoritative,
            )?;
        }
        Ok(())
    }
}

/// The manifest CRC of `buf`: CRC-32C over the datagram with the CRC field
/// (bytes 44..48) taken as zero (over what there is, if `buf` is shorter).
pub fn manifest_crc(buf: &[u8]) -> u32 {
    let (head, rest) = buf.split_at(CRC.start.min(buf.len()));
    let tail = rest.get(CRC.len()..).unwrap_or(&[]);
    let state = crc32c_update(!0, head);
    let state = crc32c_update(state, &[0; 4]);
    !crc32c_update(state, tail)
}

/// Streaming CRC-32C (the same reflected Castagnoli polynomial as
/// [`crate::crc32c`], which takes one slice): the manifest CRC skips its own
/// field, and checking must not copy the datagram to zero it. Bitwise: a
/// manifest arrives every few minutes per announcer.
fn crc32c_update(mut c: u32, data: &[u8]) -> u32 {
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
        }
    }
    c
}

enum RawGroups<'a> {
    None,
    List(&'a [u8]),
    Bitmap(&'a [u8]),
}

/// The encoding-form table of BRC-139: no counts without the flag; with it,
/// exactly one of list and bitmap.
fn groups_section_len(flags: ManifestFlags, count: usize, bitmap: usize) -> Result<usize> {
    match (flags.has(ManifestFlags::GROUPS_VALID), count, bitmap) {
        (false, 0, 0) => Ok(0),
        (true, 0, b) if b > 0 => Ok(b),
        (true, n, 0) if n > 0 => Ok(2 * n),
        _ => Err(Error::BadField("groups")),
    }
}

/// End of a Domains section starting at `at`, checking its count and that
/// every descriptor (and successor block) is present.
fn domains_end(buf: &[u8], at: usize) -> Result<usize> {
    need(buf, at + 1)?;
    let count = usize::from(u8_at(buf, at));
    if count == 0 || count > MAX_DOMAINS {
        return Err(Error::BadField("domains"));
    }
    let mut end = at + 1;
    for _ in 0..count {
        need(buf, end + DOMAIN_LEN)?;
        let has_successor = u8_at(buf, end + DOM_FLAGS) & domain_flags::SUCCESSOR_VALID != 0;
        end += DOMAIN_LEN;
        if has_successor {
            end += SUCCESSOR_LEN;
            need(buf, end)?;
        }
    }
    Ok(end)
}

/// BRC-148's Domains rules: 1..=15 descriptors, ids 0x0–0xE and unique,
/// each plane below the control plane, slot spans wide enough, inside
/// 0x0–0xE and not overlapping, a domain-0 descriptor agreeing with the
/// top-level width and generation, and per-domain successors only from an
/// Authoritative announcer and within one bit.
fn check_domains(
    domains: impl Iterator<Item = DomainDescriptor>,
    top_bits: u8,
    top_generation: &[u8; 16],
    authoritative: bool,
) -> Result<()> {
    const BAD: Error = Error::BadField("domains");
    let mut seen = [false; MAX_DOMAINS];
    let mut slots = [false; MAX_DOMAINS];
    let mut n = 0usize;
    for d in domains {
        n += 1;
        let id = usize::from(d.domain_id);
        if d.domain_id > MAX_DOMAIN_ID || seen[id] {
            return Err(BAD);
        }
        seen[id] = true;
        let max_bits = if d.domain_id == 0 { MAX_SHARD_BITS } else { MAX_PLANE_SHARD_BITS };
        if !plane_fits(d.domain_id, d.shard_bits, max_bits) {
            return Err(BAD);
        }
        let implied = if d.shard_bits > 12 { 1u8 << (d.shard_bits - 12) } else { 1 };
        let span = usize::from(d.slot_span);
        if d.slot_span < implied || id + span > MAX_DOMAINS {
            return Err(BAD);
        }
        for slot in &mut slots[id..id + span] {
            if *slot {
                return Err(BAD);
            }
            *slot = true;
        }
        if d.domain_id == 0 && (d.shard_bits != top_bits || d.generation_id != *top_generation) {
            return Err(BAD);
        }
        if let Some(s) = d.successor
            && (!authoritative
                || !s.check(d.shard_bits, max_bits)
                || !plane_fits(d.domain_id, s.shard_bits, max_bits))
        {
            return Err(BAD);
        }
    }
    if n == 0 || n > MAX_DOMAINS {
        return Err(BAD);
    }
    Ok(())
}

/// Width within the cap, and `domain << 12 + 2^bits` not past the control
/// plane.
fn plane_fits(domain: u8, bits: u8, max_bits: u8) -> bool {
    bits <= max_bits && (u32::from(domain) << 12) + (1u32 << bits) <= CONTROL_BASE
}

fn bounded(n: usize) -> Result<()> {
    if n > MAX_COUNT { Err(Error::TooLong { max: MAX_COUNT, got: n }) } else { Ok(()) }
}

fn be16(c: &[u8]) -> u16 {
    u16_at(c, 0)
}

fn strictly_ascending(mut it: impl Iterator<Item = u16>) -> bool {
    let Some(mut prev) = it.next() else { return true };
    for g in it {
        if g <= prev {
            return false;
        }
        prev = g;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// docs/PROTOCOL.md, "Shard manifest": a publisher's own manifest — SSM,
    /// a group list and two sources. Built by hand from the layout table,
    /// CRC computed independently of this crate.
    const GOLDEN_A: &str = "e3e1f3e802bf4019fd000000000000000000000000000010\
        5eed12346a18a5000384012c0201000400000002fb4948a1\
        a0a1a2a3a4a5a6a7a8a9aaabacadaeaf0000000100020003\
        fd200000000000000000000000000001fd200000000000000000000000000002";

    /// An authoritative pilot: bitmap claim, a Successor block and one BEEF
    /// plane descriptor.
    const GOLDEN_B: &str = "e3e1f3e802bf40ebfd0000000000000000000000000000aa\
        0000beef6a18a62c0000012c0405000000020000830bb4ef\
        b0b1b2b3b4b5b6b7b8b9babbbcbdbebf0f80c0c1c2c3c4c5c6c7c8c9cacbcccdcecf\
        050100006a18aadc01010c010500000000d0d1d2d3d4d5d6d7d8d9dadbdcdddedf";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn seq16(start: u8) -> [u8; 16] {
        core::array::from_fn(|i| start + i as u8)
    }

    fn golden_a() -> ShardManifestRepr {
        ShardManifestRepr {
            flags: ManifestFlags(ManifestFlags::SOURCE_MODE_SSM),
            src_ipv6: "fd00::10".parse::<Ipv6Addr>().unwrap().octets(),
            instance_id: 0x5EED_1234,
            epoch: 1_780_000_000,
            ttl_secs: 900,
            announce_interval_secs: 300,
            shard_bits: 2,
            role_hint: role::PROXY,
            generation_id: seq16(0xA0),
            groups: GroupClaim::List(vec![0, 1, 2, 3]),
            sources: vec!["fd20::1".parse().unwrap(), "fd20::2".parse().unwrap()],
            successor: None,
            domains: vec![],
        }
    }

    fn golden_b() -> ShardManifestRepr {
        ShardManifestRepr {
            flags: ManifestFlags(
                ManifestFlags::AUTHORITATIVE
                    | ManifestFlags::SOURCE_MODE_SSM
                    | ManifestFlags::PILOT_ONLY,
            ),
            src_ipv6: "fd00::aa".parse::<Ipv6Addr>().unwrap().octets(),
            instance_id: 0xBEEF,
            epoch: 1_780_000_300,
            ttl_secs: 0,
            announce_interval_secs: 300,
            shard_bits: 4,
            role_hint: role::MANIFEST_ONLY,
            generation_id: seq16(0xB0),
            groups: GroupClaim::Bitmap(vec![0x0F, 0x80]),
            sources: vec![],
            successor: Some(Successor {
                generation_id: seq16(0xC0),
                shard_bits: 5,
                flags: SUCCESSOR_SOURCE_MODE_SSM,
                transition_epoch: 1_780_001_500,
            }),
            domains: vec![DomainDescriptor {
                domain_id: 1,
                shard_bits: 12,
                slot_span: 1,
                flags: domain_flags::ACTIVE | domain_flags::SOURCE_MODE_SSM,
                version: 0,
                generation_id: seq16(0xD0),
                successor: None,
            }],
        }
    }

    fn emit(r: &ShardManifestRepr) -> Vec<u8> {
        let mut b = vec![0u8; r.buffer_len()];
        assert_eq!(r.emit(&mut b), Ok(b.len()));
        b
    }

    /// Re-seals a hand-edited datagram so a test reaches the check after the
    /// CRC.
    fn reseal(b: &mut [u8]) {
        let crc = manifest_crc(b);
        b[44..48].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn golden_a_both_ways() {
        let bytes = hex(GOLDEN_A);
        assert_eq!(bytes.len(), 104);
        let v = ShardManifest::new_checked(&bytes).unwrap();
        assert_eq!(v.crc(), 0xFB49_48A1);
        assert_eq!(v.flags().0, 0x19);
        assert_eq!(v.groups().collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(v.source_count(), 2);
        assert!(v.successor().is_none() && v.domains().next().is_none());
        assert_eq!(ShardManifestRepr::parse(&bytes), Ok(golden_a()));
        assert_eq!(emit(&golden_a()), bytes);
        assert!(is_shard_manifest(&bytes));
    }

    #[test]
    fn golden_b_both_ways() {
        let bytes = hex(GOLDEN_B);
        assert_eq!(bytes.len(), 115);
        let v = ShardManifest::new_checked(&bytes).unwrap();
        assert_eq!(v.crc(), 0x830B_B4EF);
        assert_eq!(v.flags().0, 0xEB);
        // Bit 15 is set, but 2^4 = 16 groups, so it is still in range.
        assert_eq!(v.groups().collect::<Vec<_>>(), [0, 1, 2, 3, 15]);
        assert_eq!(ShardManifestRepr::parse(&bytes), Ok(golden_b()));
        assert_eq!(emit(&golden_b()), bytes);
    }

    #[test]
    fn streaming_crc_matches_the_crate_crc() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(!crc32c_update(!0, &data), crate::crc32c::crc32c(&data));
    }

    #[test]
    fn every_truncation_and_any_extension_is_refused() {
        for bytes in [hex(GOLDEN_A), hex(GOLDEN_B)] {
            for n in 0..bytes.len() {
                assert!(
                    matches!(ShardManifest::new_checked(&bytes[..n]), Err(Error::Truncated { .. })),
                    "prefix of {n} bytes"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(
                ShardManifest::new_checked(&long).err(),
                Some(Error::LengthMismatch { declared: bytes.len(), actual: bytes.len() + 1 })
            );
        }
    }

    #[test]
    fn prefix_type_and_crc_are_checked() {
        let good = hex(GOLDEN_A);
        let mut b = good.clone();
        b[6] = 0x20;
        assert_eq!(ShardManifest::new_checked(&b).err(), Some(Error::UnknownType(0x20)));
        assert!(!is_shard_manifest(&b));
        let mut b = good.clone();
        b[0] = 0;
        assert_eq!(ShardManifest::new_checked(&b).err(), Some(Error::BadMagic));
        let mut b = good.clone();
        b[5] = 0xC0;
        assert_eq!(ShardManifest::new_checked(&b).err(), Some(Error::BadVersion { got: 0x02C0 }));
        for at in [7usize, 8, 30, 45, 50, 64, 72, 103] {
            let mut b = good.clone();
            b[at] ^= 0x01;
            assert!(ShardManifest::new_checked(&b).is_err(), "flip at {at}");
        }
        let mut b = good;
        b[70] ^= 0x01; // group 3 becomes 2: caught by the CRC first
        assert_eq!(ShardManifest::new_checked(&b).err(), Some(Error::BadField("manifest_crc")));
    }

    #[test]
    fn coherence_rules_are_enforced_on_both_sides() {
        let a = hex(GOLDEN_A);
        let case = |edit: &dyn Fn(&mut Vec<u8>), want: Error| {
            let mut b = a.clone();
            edit(&mut b);
            reseal(&mut b);
            assert_eq!(ShardManifest::new_checked(&b).err(), Some(want));
        };
        case(&|b| b[36] = 13, Error::BadField("shard_bits"));
        // GroupsValid without counts, counts without GroupsValid, both forms.
        case(&|b| b[38..40].copy_from_slice(&[0, 0]), Error::BadField("groups"));
        case(&|b| b[7] &= !ManifestFlags::GROUPS_VALID, Error::BadField("groups"));
        case(&|b| b[40..42].copy_from_slice(&[0, 8]), Error::BadField("groups"));
        // SourcesValid and SourceCount disagree.
        case(&|b| b[7] &= !ManifestFlags::SOURCES_VALID, Error::BadField("sources"));
        case(&|b| b[42..44].copy_from_slice(&[0, 0]), Error::BadField("sources"));
        // PilotOnly and SuccessorValid need Authoritative.
        case(&|b| b[7] |= ManifestFlags::PILOT_ONLY, Error::BadField("pilot_only"));
        case(&|b| b[7] |= ManifestFlags::SUCCESSOR_VALID, Error::BadField("successor"));
        // An unsorted list (3, 2) and a duplicate (2, 2).
        case(&|b| b[70..72].copy_from_slice(&[0, 2]), Error::BadField("groups"));
        case(&|b| b[68..72].copy_from_slice(&[0, 3, 0, 2]), Error::BadField("groups"));

        let mut r = golden_a();
        r.flags.0 |= ManifestFlags::SOURCES_VALID;
        assert_eq!(r.emit(&mut [0; 200]), Err(Error::BadField("flags")));
        let mut r = golden_a();
        r.groups = GroupClaim::List(vec![3, 1]);
        assert_eq!(r.emit(&mut [0; 200]), Err(Error::BadField("groups")));
        r.groups = GroupClaim::List(vec![]);
        assert_eq!(r.emit(&mut [0; 200]), Err(Error::BadField("groups")));
        r.groups = GroupClaim::Bitmap(vec![]);
        assert_eq!(r.emit(&mut [0; 200]), Err(Error::BadField("groups")));
        let mut r = golden_a();
        r.flags.0 |= ManifestFlags::PILOT_ONLY;
        assert_eq!(r.emit(&mut [0; 200]), Err(Error::BadField("pilot_only")));
        let mut r = golden_a();
        r.sources = vec![Ipv6Addr::LOCALHOST; MAX_COUNT + 1];
        assert_eq!(r.emit(&mut []), Err(Error::TooLong { max: MAX_COUNT, got: MAX_COUNT + 1 }));
        assert_eq!(golden_a().emit(&mut [0; 103]), Err(Error::Truncated { needed: 104, got: 103 }));
    }

    #[test]
    fn successor_rules() {
        let b = hex(GOLDEN_B);
        let succ_bits = 64 + 2 + 16;
        for (bits, ok) in [(3u8, true), (4, true), (5, true), (6, false), (2, false), (13, false)] {
            let mut m = b.clone();
            m[succ_bits] = bits;
            reseal(&mut m);
            let got = ShardManifest::new_checked(&m);
            assert_eq!(got.is_ok(), ok, "successor bits {bits}: {:?}", got.err());
        }
        // Reserved bytes are ignored on receipt and zeroed on emit.
        let mut m = b.clone();
        m[succ_bits + 2] = 0xAA;
        reseal(&mut m);
        let r = ShardManifestRepr::parse(&m).unwrap();
        assert_eq!(r, golden_b());
        assert_eq!(emit(&r), b);

        let mut r = golden_b();
        r.flags.0 &= !(ManifestFlags::AUTHORITATIVE | ManifestFlags::PILOT_ONLY);
        assert_eq!(r.emit(&mut [0; 200]), Err(Error::BadField("successor")));
    }

    /// The BRC-148 descriptor table, on the emit side (the decoder shares
    /// `check_domains`) and once through the decoder.
    #[test]
    fn domains_rules() {
        let base = golden_b();
        let d0 = base.domains[0];
        let with = |f: &dyn Fn(&mut ShardManifestRepr)| {
            let mut r = base.clone();
            f(&mut r);
            r.emit(&mut [0; 512]).map(|_| ())
        };
        let bad = Err(Error::BadField("domains"));
        assert_eq!(
            with(&|r| {
                r.domains[0].shard_bits = 15;
                r.domains[0].slot_span = 8;
            }),
            Ok(())
        );
        assert_eq!(with(&|r| r.domains[0].domain_id = 0x0F), bad);
        assert_eq!(with(&|r| r.domains.push(d0)), bad);
        assert_eq!(with(&|r| r.domains[0].shard_bits = 15), bad); // span 1 < implied 8
        assert_eq!(
            with(&|r| {
                r.domains[0].slot_span = 2;
                r.domains.push(DomainDescriptor { domain_id: 2, slot_span: 1, ..d0 });
            }),
            bad
        );
        assert_eq!(
            with(&|r| {
                r.domains[0].domain_id = 0x0E;
                r.domains[0].slot_span = 2;
            }),
            bad
        );
        // 0xE000 + 2^13 reaches the control plane.
        assert_eq!(
            with(&|r| {
                r.domains[0].domain_id = 0x0E;
                r.domains[0].shard_bits = 13;
                r.domains[0].slot_span = 2;
            }),
            bad
        );
        let top = DomainDescriptor {
            domain_id: 0,
            shard_bits: base.shard_bits,
            generation_id: base.generation_id,
            ..d0
        };
        assert_eq!(with(&|r| r.domains.push(top)), Ok(()));
        assert_eq!(with(&|r| r.domains.push(DomainDescriptor { shard_bits: 5, ..top })), bad);
        assert_eq!(
            with(&|r| r.domains.push(DomainDescriptor { generation_id: [0; 16], ..top })),
            bad
        );
        let succ =
            Successor { generation_id: [7; 16], shard_bits: 11, flags: 0, transition_epoch: 9 };
        let with_succ = |d: &mut DomainDescriptor, s: Successor| {
            d.flags |= domain_flags::SUCCESSOR_VALID;
            d.successor = Some(s);
        };
        assert_eq!(with(&|r| with_succ(&mut r.domains[0], succ)), Ok(()));
        assert_eq!(
            with(&|r| with_succ(&mut r.domains[0], Successor { shard_bits: 10, ..succ })),
            bad
        );
        assert_eq!(
            with(&|r| {
                r.flags.0 = 0;
                r.successor = None;
                with_succ(&mut r.domains[0], succ);
            }),
            bad
        );
        assert_eq!(with(&|r| r.domains[0].flags |= domain_flags::SUCCESSOR_VALID), bad);
        assert_eq!(with(&|r| r.domains = vec![d0; 16]), bad);

        // Decoder: a zero count, and a tampered descriptor byte.
        let b = hex(GOLDEN_B);
        let count_at = 64 + 2 + 24;
        let mut m = b.clone();
        m[count_at] = 0;
        reseal(&mut m);
        assert_eq!(ShardManifest::new_checked(&m).err(), Some(Error::BadField("domains")));
        let mut m = b.clone();
        m[count_at + 1] = 0x0F;
        reseal(&mut m);
        assert_eq!(ShardManifest::new_checked(&m).err(), Some(Error::BadField("domains")));
        // A descriptor claiming a successor block that is not there.
        let mut m = b;
        m[count_at + 1 + 3] |= domain_flags::SUCCESSOR_VALID;
        assert!(matches!(ShardManifest::new_checked(&m), Err(Error::Truncated { .. })));
    }

    #[test]
    fn bitmap_bits_past_the_shard_space_are_ignored() {
        let mut r = golden_a();
        r.shard_bits = 3; // 8 groups
        r.groups = GroupClaim::Bitmap(vec![0b1000_0001, 0xFF]);
        let b = emit(&r);
        let v = ShardManifest::new_checked(&b).unwrap();
        assert_eq!(v.groups().collect::<Vec<_>>(), [0, 7]);
        assert_eq!(ShardManifestRepr::parse(&b), Ok(r));
    }

    fn successor_for(bits: u8) -> impl Strategy<Value = Successor> {
        let lo = bits.saturating_sub(1);
        let hi = (bits + 1).min(MAX_SHARD_BITS);
        (any::<[u8; 16]>(), lo..=hi, any::<u8>(), any::<u32>()).prop_map(
            |(generation_id, shard_bits, flags, transition_epoch)| Successor {
                generation_id,
                shard_bits,
                flags,
                transition_epoch,
            },
        )
    }

    fn groups() -> impl Strategy<Value = GroupClaim> {
        prop_oneof![
            Just(GroupClaim::None),
            proptest::collection::btree_set(any::<u16>(), 1..20)
                .prop_map(|s| GroupClaim::List(s.into_iter().collect())),
            proptest::collection::vec(any::<u8>(), 1..80).prop_map(GroupClaim::Bitmap),
        ]
    }

    prop_compose! {
        fn repr()(
            auth in any::<bool>(),
            shutdown in any::<bool>(),
            ssm in any::<bool>(),
            pilot in any::<bool>(),
            shard_bits in 0..=MAX_SHARD_BITS,
            head in any::<([u8; 16], u32, u32, u16, u16, u8, [u8; 16])>(),
            groups in groups(),
            sources in proptest::collection::vec(any::<[u8; 16]>(), 0..6),
            want_successor in any::<bool>(),
            planes in proptest::collection::btree_map(1u8..=14, (0u8..=11, any::<u8>(), any::<[u8; 16]>(), any::<bool>()), 0..4),
            with_domain0 in any::<bool>(),
        )(
            successor in successor_for(shard_bits),
            plane_succ in proptest::collection::vec(successor_for(11), 4),
            auth in Just(auth), shutdown in Just(shutdown), ssm in Just(ssm), pilot in Just(pilot),
            shard_bits in Just(shard_bits), head in Just(head), groups in Just(groups),
            sources in Just(sources), want_successor in Just(want_successor),
            planes in Just(planes), with_domain0 in Just(with_domain0),
        ) -> ShardManifestRepr {
            let mut flags = 0;
            if auth { flags |= ManifestFlags::AUTHORITATIVE; }
            if shutdown { flags |= ManifestFlags::SHUTDOWN; }
            if ssm { flags |= ManifestFlags::SOURCE_MODE_SSM; }
            if pilot && auth { flags |= ManifestFlags::PILOT_ONLY; }
            let (src, instance_id, epoch, ttl_secs, interval, role_hint, generation_id) = head;
            let mut domains: Vec<DomainDescriptor> = planes
                .into_iter()
                .zip(plane_succ)
                .map(|((id, (bits, f, generation_id, succ)), s)| {
                    let successor = (succ && auth)
                        .then_some(Successor { shard_bits: s.shard_bits.clamp(bits.saturating_sub(1), bits + 1), ..s });
                    let flags = (f & !domain_flags::SUCCESSOR_VALID)
                        | if successor.is_some() { domain_flags::SUCCESSOR_VALID } else { 0 };
                    DomainDescriptor { domain_id: id, shard_bits: bits, slot_span: 1, flags, version: f >> 4, generation_id, successor }
                })
                .collect();
            if with_domain0 && !domains.is_empty() {
                domains.push(DomainDescriptor {
                    domain_id: 0, shard_bits, slot_span: 1, flags: 0, version: 0, generation_id, successor: None,
                });
            }
            ShardManifestRepr {
                flags: ManifestFlags(flags),
                src_ipv6: src,
                instance_id,
                epoch,
                ttl_secs,
                announce_interval_secs: interval,
                shard_bits,
                role_hint,
                generation_id,
                groups,
                sources: sources.into_iter().map(Ipv6Addr::from).collect(),
                successor: (want_successor && auth).then_some(successor),
                domains,
            }
        }
    }

    proptest! {
        #[test]
        fn round_trip(r in repr()) {
            let b = emit(&r);
            prop_assert_eq!(b.len(), r.buffer_len());
            let v = ShardManifest::new_checked(&b).unwrap();
            prop_assert_eq!(v.flags(), r.wire_flags());
            prop_assert_eq!(v.sources().collect::<Vec<_>>(), r.sources.clone());
            prop_assert_eq!(v.domains().collect::<Vec<_>>(), r.domains.clone());
            prop_assert_eq!(ShardManifestRepr::parse(&b), Ok(r));
            // Every truncation is refused; no single-byte corruption panics
            // or parses to something that re-emits differently.
            for n in [0, 7, 63, b.len() / 2, b.len() - 1] {
                prop_assert!(ShardManifest::new_checked(&b[..n.min(b.len() - 1)]).is_err());
            }
        }

        #[test]
        fn corruption_never_panics(r in repr(), at in any::<prop::sample::Index>(), x in 1u8..) {
            let mut b = emit(&r);
            let i = at.index(b.len());
            b[i] ^= x;
            // The CRC catches any single flipped byte; whatever still
            // parses must survive a re-emit unchanged.
            if let Ok(p) = ShardManifestRepr::parse(&b) {
                prop_assert_eq!(ShardManifestRepr::parse(&emit(&p)), Ok(p));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(v) = ShardManifest::new_checked(&data) {
                let _ = (v.groups().count(), v.sources().count(), v.domains().count(), v.successor());
            }
        }
    }
}
