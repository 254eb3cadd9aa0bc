//! DHT messages: ricochet's Kademlia RPCs on UDP 9320.
//!
//! Implements `docs/PROTOCOL.md` § "DHT (UDP 9320)"; the records these
//! messages carry are § "Signed records" ([`crate::record`]). The RPC set —
//! PING/PONG with the requester's observed address, FIND_NODE, FIND_VALUE
//! answered with records plus closer nodes, STORE with a status reply whose
//! outcomes include a stale seq and a full store — follows seed 001 (the Go
//! `dht` package); the byte format is ricochet's own.
//!
//! # Header (44 bytes)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 2  | magic `0x5244` ("RD") |
//! | 2  | 1  | version, 1 |
//! | 3  | 1  | message type ([`MessageType`]) |
//! | 4  | 8  | transaction id (echoed by the reply) |
//! | 12 | 32 | sender node id, `BLAKE3(sender public key)` |
//!
//! # Bodies (from offset 44)
//!
//! | type | body |
//! |---|---|
//! | 0x01 PING       | empty |
//! | 0x02 PONG       | the requester's address as the responder saw it: addr (19) |
//! | 0x03 FIND_NODE  | target id (32), then zero padding |
//! | 0x04 NODES      | node list |
//! | 0x05 FIND_VALUE | key (32), then zero padding |
//! | 0x06 VALUE      | u8 record count ≤ 8, each `u16 length ‖ record`; then a node list of closer peers |
//! | 0x07 STORE      | `u16 length ‖ record` |
//! | 0x08 STORE_ACK  | status u8 ([`StoreStatus`]) |
//!
//! An *addr* is 19 bytes: family u8 (4 or 6), address (16, IPv4 written
//! IPv4-mapped), port u16. A *node list* is a u8 count ≤ 20 and that many
//! 51-byte nodes: id (32) then addr (19).
//!
//! # Reply budget
//! A request's source address is never proven, so a reply is at most
//! [`AMPLIFICATION`](crate::AMPLIFICATION) (3) times the size of the
//! request it answers ([`reply_budget`]): a responder trims its NODES or
//! VALUE reply to fit.
//! FIND_NODE and FIND_VALUE may therefore carry zero bytes after their id,
//! and ricochet pads both to [`PADDED_REQUEST_LEN`] so that a full reply
//! (up to [`DATAGRAM_BUDGET`]) fits the budget of its own request.
//!
//! # Contract
//! - [`Message::new_checked`] checks the header, every fixed-size field,
//!   every count and length against the bytes that remain, every address
//!   family, and the structure of every embedded record (not its signature:
//!   call [`Record::verify`]); trailing bytes are [`Error::LengthMismatch`],
//!   except the zero padding of FIND_NODE and FIND_VALUE (a non-zero byte
//!   there is [`Error::BadField`] `"dht.padding"`).
//!   The resulting view iterates nodes and records without allocating.
//! - Parsing accepts datagrams up to [`MAX_DATAGRAM`] bytes;
//!   [`MessageRepr::emit`] refuses anything over [`DATAGRAM_BUDGET`] with
//!   [`Error::TooLong`], so everything ricochet sends fits one unfragmented
//!   IPv6 datagram.
//! - `MessageRepr::parse(emit(x)) == x`, and the encoding is canonical:
//!   re-emitting a parsed message reproduces its bytes. IPv6 flow info and
//!   scope ids are not carried (they read back as 0).

use core::net::{IpAddr, Ipv6Addr, SocketAddr};
use core::slice::ChunksExact;

use crate::error::{Error, Result};
use crate::field::{Field, Writer, array_ref, u8_at, u16_at};
use crate::record::{self, Record, RecordRepr};

/// First two bytes of every DHT message: `"RD"`.
pub const MAGIC: u16 = 0x5244;
/// The DHT protocol version this module reads and writes.
pub const VERSION: u8 = 1;
/// Default DHT UDP port.
pub const PORT: u16 = 9320;
/// Length of a node id, a lookup target or a DHT key.
pub const ID_LEN: usize = 32;
/// Length of the common header.
pub const HEADER_LEN: usize = 44;
/// Length of an encoded address: family, 16-byte address, port.
pub const ADDR_LEN: usize = 19;
/// Length of an encoded node: id then address.
pub const NODE_LEN: usize = ID_LEN + ADDR_LEN;
/// Most nodes in one node list.
pub const MAX_NODES: usize = 20;
/// Most records in one VALUE message.
pub const MAX_RECORDS: usize = 8;
/// Largest message ricochet emits (fits the IPv6 minimum MTU with room
/// for headers, as DNS's 1232-byte EDNS budget does).
pub const DATAGRAM_BUDGET: usize = 1232;
/// Largest message ricochet accepts: the largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65507;
/// The size ricochet pads FIND_NODE and FIND_VALUE to: the smallest request
/// whose reply budget is the whole [`DATAGRAM_BUDGET`] (411 bytes).
pub const PADDED_REQUEST_LEN: usize = DATAGRAM_BUDGET.div_ceil(crate::AMPLIFICATION);
/// Zero bytes after the id of a padded FIND_NODE or FIND_VALUE (335).
pub const REQUEST_PADDING: u16 = (PADDED_REQUEST_LEN - HEADER_LEN - ID_LEN) as u16;

/// The most bytes a reply to a `request_len`-byte request may have:
/// [`AMPLIFICATION`](crate::AMPLIFICATION) times the request, and never
/// over [`DATAGRAM_BUDGET`].
pub const fn reply_budget(request_len: usize) -> usize {
    let budget = request_len.saturating_mul(crate::AMPLIFICATION);
    if budget < DATAGRAM_BUDGET { budget } else { DATAGRAM_BUDGET }
}

/// Address family byte for IPv4.
pub const FAMILY_V4: u8 = 4;
/// Address family byte for IPv6.
pub const FAMILY_V6: u8 = 6;

/// The message type (byte 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Liveness probe; answered by PONG.
    Ping = 0x01,
    /// Reply to PING carrying the requester's observed address.
    Pong = 0x02,
    /// Asks for the nodes closest to a target id; answered by NODES.
    FindNode = 0x03,
    /// Up to 20 nodes.
    Nodes = 0x04,
    /// Asks for the records under a key; answered by VALUE.
    FindValue = 0x05,
    /// Up to 8 records and a list of closer nodes.
    Value = 0x06,
    /// Asks the receiver to store one record; answered by STORE_ACK.
    Store = 0x07,
    /// The outcome of a STORE.
    StoreAck = 0x08,
}

impl MessageType {
    /// Decodes the type byte; anything else is [`Error::UnknownType`].
    pub const fn from_u8(byte: u8) -> Result<Self> {
        match byte {
            0x01 => Ok(MessageType::Ping),
            0x02 => Ok(MessageType::Pong),
            0x03 => Ok(MessageType::FindNode),
            0x04 => Ok(MessageType::Nodes),
            0x05 => Ok(MessageType::FindValue),
            0x06 => Ok(MessageType::Value),
            0x07 => Ok(MessageType::Store),
            0x08 => Ok(MessageType::StoreAck),
            other => Err(Error::UnknownType(other)),
        }
    }

    /// The byte written on the wire.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The STORE_ACK status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StoreStatus {
    /// The record was stored (or replaced an older one in its slot).
    Stored = 0,
    /// The store holds an equal or newer seq for the record's slot.
    StaleSeq = 1,
    /// The store is at its distinct-key cap.
    StoreFull = 2,
    /// Refused: bad signature, expired, or a policy rejection.
    Rejected = 3,
}

impl StoreStatus {
    /// Decodes the status byte; anything else is
    /// [`Error::BadField`]`("dht.store_status")`.
    pub const fn from_u8(byte: u8) -> Result<Self> {
        match byte {
            0 => Ok(StoreStatus::Stored),
            1 => Ok(StoreStatus::StaleSeq),
            2 => Ok(StoreStatus::StoreFull),
            3 => Ok(StoreStatus::Rejected),
            _ => Err(Error::BadField("dht.store_status")),
        }
    }

    /// The byte written on the wire.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A DHT contact: node id and UDP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// The node's id, `BLAKE3(public key)`.
    pub id: [u8; ID_LEN],
    /// Where the node takes DHT datagrams (IPv6 flow info and scope id are
    /// not carried).
    pub addr: SocketAddr,
}

/// A checked DHT message borrowed from a datagram.
///
/// Built only by [`Message::new_checked`]; every accessor is then
/// infallible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    buf: &'a [u8],
    body: Body<'a>,
}

/// The checked body of a [`Message`], borrowing from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// PING.
    Ping,
    /// PONG.
    Pong {
        /// The requester's address as the responder saw it.
        observed: SocketAddr,
    },
    /// FIND_NODE.
    FindNode {
        /// The id whose closest nodes are wanted.
        target: &'a [u8; ID_LEN],
        /// Zero bytes after the target (they buy a larger reply).
        padding: u16,
    },
    /// NODES.
    Nodes(Nodes<'a>),
    /// FIND_VALUE.
    FindValue {
        /// The DHT key whose records are wanted.
        key: &'a [u8; ID_LEN],
        /// Zero bytes after the key (they buy a larger reply).
        padding: u16,
    },
    /// VALUE.
    Value {
        /// The records found (structure checked, signatures not).
        records: Records<'a>,
        /// Closer nodes to ask next.
        nodes: Nodes<'a>,
    },
    /// STORE (structure checked, signature not).
    Store(Record<'a>),
    /// STORE_ACK.
    StoreAck(StoreStatus),
}

impl<'a> Message<'a> {
    /// Checks `buf` is exactly one well-formed DHT message (see the module
    /// docs).
    ///
    /// Errors: [`Error::TooLong`] over [`MAX_DATAGRAM`] bytes or for a count
    /// over its limit, [`Error::Truncated`], [`Error::BadMagic`],
    /// [`Error::BadVersion`], [`Error::UnknownType`], [`Error::BadField`]
    /// (`"dht.family"`, `"dht.addr"`, `"dht.store_status"`, `"dht.padding"`),
    /// [`Error::LengthMismatch`] for trailing bytes, and any error of
    /// [`Record::new_checked`] for an embedded record.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        if buf.len() > MAX_DATAGRAM {
            return Err(Error::TooLong { max: MAX_DATAGRAM, got: buf.len() });
        }
        let mut r = Reader { buf, at: 0 };
        if r.u16()? != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::BadVersion { got: version.into() });
        }
        let message_type = MessageType::from_u8(r.u8()?)?;
        r.take(HEADER_LEN - r.at)?;
        let body = match message_type {
            MessageType::Ping => Body::Ping,
            MessageType::Pong => Body::Pong { observed: r.addr()? },
            MessageType::FindNode => Body::FindNode { target: r.array()?, padding: r.padding()? },
            MessageType::Nodes => Body::Nodes(r.nodes()?),
            MessageType::FindValue => Body::FindValue { key: r.array()?, padding: r.padding()? },
            MessageType::Value => Body::Value { records: r.records()?, nodes: r.nodes()? },
            MessageType::Store => Body::Store(r.record()?),
            MessageType::StoreAck => Body::StoreAck(StoreStatus::from_u8(r.u8()?)?),
        };
        r.finish()?;
        Ok(Message { buf, body })
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The message type.
    pub fn message_type(&self) -> MessageType {
        self.body.message_type()
    }

    /// The transaction id a reply echoes.
    pub fn transaction_id(&self) -> u64 {
        u64::from_be_bytes(*header_array(self.buf, layout::TRANSACTION_ID))
    }

    /// The sender's node id.
    pub fn sender(&self) -> &'a [u8; ID_LEN] {
        header_array(self.buf, layout::SENDER)
    }

    /// The checked body.
    pub fn body(&self) -> Body<'a> {
        self.body
    }
}

impl Body<'_> {
    /// The message type this body belongs to.
    pub fn message_type(&self) -> MessageType {
        match self {
            Body::Ping => MessageType::Ping,
            Body::Pong { .. } => MessageType::Pong,
            Body::FindNode { .. } => MessageType::FindNode,
            Body::Nodes(_) => MessageType::Nodes,
            Body::FindValue { .. } => MessageType::FindValue,
            Body::Value { .. } => MessageType::Value,
            Body::Store(_) => MessageType::Store,
            Body::StoreAck(_) => MessageType::StoreAck,
        }
    }
}

/// A checked node list inside a message; iterate it with [`Nodes::iter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nodes<'a> {
    /// Exactly `count * NODE_LEN` bytes, every address already checked.
    buf: &'a [u8],
}

impl<'a> Nodes<'a> {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.buf.len() / NODE_LEN
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The nodes, in wire order.
    pub fn iter(&self) -> NodeIter<'a> {
        NodeIter { chunks: self.buf.chunks_exact(NODE_LEN) }
    }
}

impl<'a> IntoIterator for Nodes<'a> {
    type Item = NodeInfo;
    type IntoIter = NodeIter<'a>;

    fn into_iter(self) -> NodeIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`Nodes`] list.
#[derive(Debug, Clone)]
pub struct NodeIter<'a> {
    chunks: ChunksExact<'a, u8>,
}

impl Iterator for NodeIter<'_> {
    type Item = NodeInfo;

    fn next(&mut self) -> Option<NodeInfo> {
        // Every chunk was decoded successfully by `new_checked`.
        decode_node(self.chunks.next()?).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

/// The checked records of a VALUE message; iterate with [`Records::iter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Records<'a> {
    /// `count` length-prefixed records, every one already checked.
    buf: &'a [u8],
    count: u8,
}

impl<'a> Records<'a> {
    /// Number of records.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records, in wire order.
    pub fn iter(&self) -> RecordIter<'a> {
        RecordIter { rest: self.buf, remaining: self.count }
    }
}

impl<'a> IntoIterator for Records<'a> {
    type Item = Record<'a>;
    type IntoIter = RecordIter<'a>;

    fn into_iter(self) -> RecordIter<'a> {
        self.iter()
    }
}

/// Iterator over [`Records`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    remaining: u8,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut r = Reader { buf: self.rest, at: 0 };
        // Every record was checked by `new_checked`; a failure here would
        // mean a different buffer, so stop rather than panic.
        let record = r.record().ok();
        self.rest = self.rest.get(r.at..).unwrap_or(&[]);
        if record.is_none() {
            self.remaining = 0;
        }
        record
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.remaining), Some(usize::from(self.remaining)))
    }
}

/// The parsed form of a DHT message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRepr<'a> {
    /// Chosen by the requester, echoed by the reply.
    pub transaction_id: u64,
    /// The sender's node id.
    pub sender: [u8; ID_LEN],
    /// The type-specific body.
    pub body: BodyRepr<'a>,
}

/// The parsed body of a [`MessageRepr`]; lists are held inline so parsing
/// never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "boxing the inline lists would allocate on every parse; a repr is short-lived"
)]
pub enum BodyRepr<'a> {
    /// PING.
    Ping,
    /// PONG.
    Pong {
        /// The requester's address as the responder saw it.
        observed: SocketAddr,
    },
    /// FIND_NODE.
    FindNode {
        /// The id whose closest nodes are wanted.
        target: [u8; ID_LEN],
        /// Zero bytes after the target: [`REQUEST_PADDING`] for a full
        /// reply, 0 for one trimmed to three times 76 bytes.
        padding: u16,
    },
    /// NODES.
    Nodes(NodeList),
    /// FIND_VALUE.
    FindValue {
        /// The DHT key whose records are wanted.
        key: [u8; ID_LEN],
        /// Zero bytes after the key, as for FIND_NODE.
        padding: u16,
    },
    /// VALUE.
    Value {
        /// The records found.
        records: RecordList<'a>,
        /// Closer nodes to ask next.
        nodes: NodeList,
    },
    /// STORE.
    Store(RecordRepr<'a>),
    /// STORE_ACK.
    StoreAck(StoreStatus),
}

impl<'a> MessageRepr<'a> {
    /// Checks `bytes` as a [`Message`] and lifts it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        Ok(Self::from_view(&Message::new_checked(bytes)?))
    }

    /// Lifts an already checked view.
    pub fn from_view(message: &Message<'a>) -> Self {
        let body = match message.body() {
            Body::Ping => BodyRepr::Ping,
            Body::Pong { observed } => BodyRepr::Pong { observed },
            Body::FindNode { target, padding } => BodyRepr::FindNode { target: *target, padding },
            Body::Nodes(nodes) => BodyRepr::Nodes(NodeList::from_view(nodes)),
            Body::FindValue { key, padding } => BodyRepr::FindValue { key: *key, padding },
            Body::Value { records, nodes } => BodyRepr::Value {
                records: RecordList::from_view(records),
                nodes: NodeList::from_view(nodes),
            },
            Body::Store(record) => BodyRepr::Store(RecordRepr::from_view(&record)),
            Body::StoreAck(status) => BodyRepr::StoreAck(status),
        };
        MessageRepr { transaction_id: message.transaction_id(), sender: *message.sender(), body }
    }

    /// The message type.
    pub fn message_type(&self) -> MessageType {
        match self.body {
            BodyRepr::Ping => MessageType::Ping,
            BodyRepr::Pong { .. } => MessageType::Pong,
            BodyRepr::FindNode { .. } => MessageType::FindNode,
            BodyRepr::Nodes(_) => MessageType::Nodes,
            BodyRepr::FindValue { .. } => MessageType::FindValue,
            BodyRepr::Value { .. } => MessageType::Value,
            BodyRepr::Store(_) => MessageType::Store,
            BodyRepr::StoreAck(_) => MessageType::StoreAck,
        }
    }

    /// Bytes [`MessageRepr::emit`] writes (which may exceed
    /// [`DATAGRAM_BUDGET`], in which case `emit` refuses).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match &self.body {
                BodyRepr::Ping => 0,
                BodyRepr::Pong { .. } => ADDR_LEN,
                BodyRepr::FindNode { padding, .. } | BodyRepr::FindValue { padding, .. } => {
                    ID_LEN + usize::from(*padding)
                }
                BodyRepr::Nodes(nodes) => nodes.wire_len(),
                BodyRepr::Value { records, nodes } => records.wire_len() + nodes.wire_len(),
                BodyRepr::Store(record) => 2 + record.buffer_len(),
                BodyRepr::StoreAck(_) => 1,
            }
    }

    /// Writes the message into `buf`, returning its length.
    ///
    /// Errors: [`Error::TooLong`] if the message would exceed
    /// [`DATAGRAM_BUDGET`] or a record's payload is over
    /// [`record::MAX_PAYLOAD`], [`Error::BadField`] for a record with a zero
    /// TTL, [`Error::Truncated`] if `buf` is shorter than
    /// [`MessageRepr::buffer_len`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        if len > DATAGRAM_BUDGET {
            return Err(Error::TooLong { max: DATAGRAM_BUDGET, got: len });
        }
        match &self.body {
            BodyRepr::Store(record) => record.check()?,
            BodyRepr::Value { records, .. } => {
                records.iter().try_for_each(RecordRepr::check)?;
            }
            _ => {}
        }
        let mut w = Writer::new(buf, len)?;
        w.u16(layout::MAGIC.start, MAGIC);
        w.u8(layout::VERSION, VERSION);
        w.u8(layout::TYPE, self.message_type().as_u8());
        w.u64(layout::TRANSACTION_ID.start, self.transaction_id);
        w.bytes(layout::SENDER.start, &self.sender);
        let at = HEADER_LEN;
        match &self.body {
            BodyRepr::Ping => {}
            BodyRepr::Pong { observed } => write_addr(&mut w, at, observed),
            BodyRepr::FindNode { target: id, padding }
            | BodyRepr::FindValue { key: id, padding } => {
                w.bytes(at, id);
                w.zero(at + ID_LEN..at + ID_LEN + usize::from(*padding));
            }
            BodyRepr::Nodes(nodes) => {
                nodes.write(&mut w, at);
            }
            BodyRepr::Value { records, nodes } => {
                let at = records.write(&mut w, at);
                nodes.write(&mut w, at);
            }
            BodyRepr::Store(record) => {
                write_record(&mut w, at, record);
            }
            BodyRepr::StoreAck(status) => w.u8(at, status.as_u8()),
        }
        Ok(len)
    }
}

/// Up to [`MAX_NODES`] nodes, held inline.
#[derive(Clone, Copy)]
pub struct NodeList {
    len: u8,
    nodes: [NodeInfo; MAX_NODES],
}

impl NodeList {
    /// An empty list.
    pub const fn new() -> Self {
        NodeList { len: 0, nodes: [EMPTY_NODE; MAX_NODES] }
    }

    /// A list holding `nodes`; [`Error::TooLong`] if there are more than
    /// [`MAX_NODES`].
    pub fn from_slice(nodes: &[NodeInfo]) -> Result<Self> {
        let mut list = NodeList::new();
        let dst = list
            .nodes
            .get_mut(..nodes.len())
            .ok_or(Error::TooLong { max: MAX_NODES, got: nodes.len() })?;
        dst.copy_from_slice(nodes);
        list.len = nodes.len() as u8;
        Ok(list)
    }

    /// Appends a node; [`Error::TooLong`] if the list is full.
    pub fn push(&mut self, node: NodeInfo) -> Result<()> {
        let slot = self
            .nodes
            .get_mut(usize::from(self.len))
            .ok_or(Error::TooLong { max: MAX_NODES, got: MAX_NODES + 1 })?;
        *slot = node;
        self.len += 1;
        Ok(())
    }

    /// The nodes.
    pub fn as_slice(&self) -> &[NodeInfo] {
        self.nodes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The nodes, in order.
    pub fn iter(&self) -> core::slice::Iter<'_, NodeInfo> {
        self.as_slice().iter()
    }

    fn from_view(nodes: Nodes<'_>) -> Self {
        let mut list = NodeList::new();
        for (slot, node) in list.nodes.iter_mut().zip(nodes) {
            *slot = node;
            list.len += 1;
        }
        list
    }

    fn wire_len(&self) -> usize {
        1 + self.len() * NODE_LEN
    }

    /// Writes the count and nodes at `at`, returning the offset after them.
    fn write(&self, w: &mut Writer<'_>, at: usize) -> usize {
        w.u8(at, self.len);
        let mut at = at + 1;
        for node in self.as_slice() {
            w.bytes(at, &node.id);
            write_addr(w, at + ID_LEN, &node.addr);
            at += NODE_LEN;
        }
        at
    }
}

impl Default for NodeList {
    fn default() -> Self {
        NodeList::new()
    }
}

impl PartialEq for NodeList {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for NodeList {}

impl core::fmt::Debug for NodeList {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<'l> IntoIterator for &'l NodeList {
    type Item = &'l NodeInfo;
    type IntoIter = core::slice::Iter<'l, NodeInfo>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Up to [`MAX_RECORDS`] records (payloads borrowed), held inline.
#[derive(Clone, Copy)]
pub struct RecordList<'a> {
    len: u8,
    records: [RecordRepr<'a>; MAX_RECORDS],
}

impl<'a> RecordList<'a> {
    /// An empty list.
    pub const fn new() -> Self {
        RecordList { len: 0, records: [EMPTY_RECORD; MAX_RECORDS] }
    }

    /// A list holding `records`; [`Error::TooLong`] if there are more than
    /// [`MAX_RECORDS`].
    pub fn from_slice(records: &[RecordRepr<'a>]) -> Result<Self> {
        let mut list = RecordList::new();
        let dst = list
            .records
            .get_mut(..records.len())
            .ok_or(Error::TooLong { max: MAX_RECORDS, got: records.len() })?;
        dst.copy_from_slice(records);
        list.len = records.len() as u8;
        Ok(list)
    }

    /// Appends a record; [`Error::TooLong`] if the list is full.
    pub fn push(&mut self, record: RecordRepr<'a>) -> Result<()> {
        let slot = self
            .records
            .get_mut(usize::from(self.len))
            .ok_or(Error::TooLong { max: MAX_RECORDS, got: MAX_RECORDS + 1 })?;
        *slot = record;
        self.len += 1;
        Ok(())
    }

    /// The records.
    pub fn as_slice(&self) -> &[RecordRepr<'a>] {
        self.records.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The records, in order.
    pub fn iter(&self) -> core::slice::Iter<'_, RecordRepr<'a>> {
        self.as_slice().iter()
    }

    fn from_view(records: Records<'a>) -> Self {
        let mut list = RecordList::new();
        for (slot, record) in list.records.iter_mut().zip(records) {
            *slot = RecordRepr::from_view(&record);
            list.len += 1;
        }
        list
    }

    fn wire_len(&self) -> usize {
        1 + self.iter().map(|r| 2 + r.buffer_len()).sum::<usize>()
    }

    /// Writes the count and records at `at`, returning the offset after
    /// them.
    fn write(&self, w: &mut Writer<'_>, at: usize) -> usize {
        w.u8(at, self.len);
        let mut at = at + 1;
        for record in self.as_slice() {
            at = write_record(w, at, record);
        }
        at
    }
}

impl Default for RecordList<'_> {
    fn default() -> Self {
        RecordList::new()
    }
}

impl PartialEq for RecordList<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for RecordList<'_> {}

impl core::fmt::Debug for RecordList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<'l, 'a> IntoIterator for &'l RecordList<'a> {
    type Item = &'l RecordRepr<'a>;
    type IntoIter = core::slice::Iter<'l, RecordRepr<'a>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Field offsets of a DHT message (docs/PROTOCOL.md § "DHT (UDP 9320)"),
/// for code that reads a datagram before it is checked: the runtime's
/// ownership rule and its classic-BPF steering program.
pub mod layout {
    use crate::field::Field;

    /// Magic `0x5244`.
    pub const MAGIC: Field = 0..2;
    /// Version byte.
    pub const VERSION: usize = 2;
    /// Message type byte.
    pub const TYPE: usize = 3;
    /// Transaction id, 8 bytes big-endian.
    pub const TRANSACTION_ID: Field = 4..12;
    /// Sender node id, 32 bytes.
    pub const SENDER: Field = 12..44;
    /// The body, after the header: FIND_NODE's target, FIND_VALUE's key.
    pub const BODY: usize = super::HEADER_LEN;
    /// FIND_NODE target / FIND_VALUE key.
    pub const TARGET: Field = BODY..BODY + super::ID_LEN;
    /// STORE: the record after its `u16` length.
    pub const STORE_RECORD: usize = BODY + 2;
    /// STORE: the stored record's key.
    pub const STORE_RECORD_KEY: Field =
        STORE_RECORD + crate::record::KEY_FIELD.start..STORE_RECORD + crate::record::KEY_FIELD.end;
}

/// Offsets inside an encoded address.
mod addr_layout {
    use crate::field::Field;

    pub(super) const FAMILY: usize = 0;
    pub(super) const ADDR: Field = 1..17;
    pub(super) const PORT: Field = 17..19;
}

const EMPTY_NODE: NodeInfo =
    NodeInfo { id: [0; ID_LEN], addr: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0) };

const EMPTY_RECORD: RecordRepr<'static> =
    RecordRepr::unsigned(record::RecordType::Endpoint, [0; record::KEY_LEN], 0, 0, 1, &[]);

/// A fixed-size header field of a buffer `new_checked` proved is at least
/// [`HEADER_LEN`] long.
fn header_array<const N: usize>(buf: &[u8], field: Field) -> &[u8; N] {
    array_ref(buf, field.start)
}

/// A bounds-checked cursor for `new_checked`; errors are reported against
/// the whole buffer.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.saturating_add(n);
        let bytes = self
            .buf
            .get(self.at..end)
            .ok_or(Error::Truncated { needed: end, got: self.buf.len() })?;
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<&'a [u8; N]> {
        let at = self.at;
        let (head, _) = self
            .buf
            .get(at..)
            .unwrap_or(&[])
            .split_first_chunk::<N>()
            .ok_or(Error::Truncated { needed: at + N, got: self.buf.len() })?;
        self.at = at + N;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(*self.array()?))
    }

    fn addr(&mut self) -> Result<SocketAddr> {
        decode_addr(self.array()?)
    }

    fn nodes(&mut self) -> Result<Nodes<'a>> {
        let count = usize::from(self.u8()?);
        if count > MAX_NODES {
            return Err(Error::TooLong { max: MAX_NODES, got: count });
        }
        let buf = self.take(count * NODE_LEN)?;
        for node in buf.chunks_exact(NODE_LEN) {
            decode_node(node)?;
        }
        Ok(Nodes { buf })
    }

    fn record(&mut self) -> Result<Record<'a>> {
        let len = usize::from(self.u16()?);
        if len > record::MAX_LEN {
            return Err(Error::TooLong { max: record::MAX_LEN, got: len });
        }
        Record::new_checked(self.take(len)?)
    }

    fn records(&mut self) -> Result<Records<'a>> {
        let count = self.u8()?;
        if usize::from(count) > MAX_RECORDS {
            return Err(Error::TooLong { max: MAX_RECORDS, got: count.into() });
        }
        let start = self.at;
        for _ in 0..count {
            self.record()?;
        }
        let buf = self.buf.get(start..self.at).unwrap_or(&[]);
        Ok(Records { buf, count })
    }

    /// The rest of the datagram, which must be zero bytes: their count.
    fn padding(&mut self) -> Result<u16> {
        let rest = self.buf.get(self.at..).unwrap_or(&[]);
        if rest.iter().any(|&b| b != 0) {
            return Err(Error::BadField("dht.padding"));
        }
        self.at = self.buf.len();
        // At most MAX_DATAGRAM (checked first) minus the header.
        Ok(rest.len() as u16)
    }

    fn finish(&self) -> Result<()> {
        if self.buf.len() != self.at {
            return Err(Error::LengthMismatch { declared: self.at, actual: self.buf.len() });
        }
        Ok(())
    }
}

fn decode_addr(bytes: &[u8; ADDR_LEN]) -> Result<SocketAddr> {
    let v6 = Ipv6Addr::from(*array_ref::<16>(bytes, addr_layout::ADDR.start));
    let port = u16_at(bytes, addr_layout::PORT.start);
    let ip = match u8_at(bytes, addr_layout::FAMILY) {
        FAMILY_V4 => IpAddr::V4(v6.to_ipv4_mapped().ok_or(Error::BadField("dht.addr"))?),
        FAMILY_V6 => IpAddr::V6(v6),
        _ => return Err(Error::BadField("dht.family")),
    };
    Ok(SocketAddr::new(ip, port))
}

fn decode_node(bytes: &[u8]) -> Result<NodeInfo> {
    let (id, rest) = bytes
        .split_first_chunk::<ID_LEN>()
        .ok_or(Error::Truncated { needed: NODE_LEN, got: bytes.len() })?;
    let addr = rest
        .first_chunk::<ADDR_LEN>()
        .ok_or(Error::Truncated { needed: NODE_LEN, got: bytes.len() })?;
    Ok(NodeInfo { id: *id, addr: decode_addr(addr)? })
}

fn write_addr(w: &mut Writer<'_>, at: usize, addr: &SocketAddr) {
    let (family, v6) = match addr.ip() {
        IpAddr::V4(v4) => (FAMILY_V4, v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => (FAMILY_V6, v6),
    };
    w.u8(at + addr_layout::FAMILY, family);
    w.bytes(at + addr_layout::ADDR.start, &v6.octets());
    w.u16(at + addr_layout::PORT.start, addr.port());
}

/// Writes `u16 length ‖ record` at `at` (record already checked), returning
/// the offset after it.
fn write_record(w: &mut Writer<'_>, at: usize, record: &RecordRepr<'_>) -> usize {
    let len = record.buffer_len();
    // A checked record is at most record::MAX_LEN bytes, so it fits a u16.
    w.u16(at, len as u16);
    record.write(w, at + 2);
    at + 2 + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordType, SigningKey};

    const TXID: u64 = 0x0102_0304_0506_0708;

    fn sender() -> [u8; 32] {
        record::node_id(&SigningKey::from_bytes(&[7u8; 32]).verifying_key().to_bytes())
    }

    fn signed(payload: &[u8], seq: u64) -> RecordRepr<'_> {
        let mut r =
            RecordRepr::unsigned(RecordType::Topic, [0x22; 32], seq, 1_767_225_600, 600, payload);
        r.sign(&SigningKey::from_bytes(&[7u8; 32])).unwrap();
        r
    }

    fn node(i: u8) -> NodeInfo {
        let addr = if i.is_multiple_of(2) {
            SocketAddr::new(IpAddr::V4([10, 0, 0, i].into()), 9320)
        } else {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i))),
                9320,
            )
        };
        NodeInfo { id: [i; 32], addr }
    }

    fn msg(body: BodyRepr<'_>) -> MessageRepr<'_> {
        MessageRepr { transaction_id: TXID, sender: sender(), body }
    }

    fn emit(m: &MessageRepr<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; m.buffer_len()];
        assert_eq!(m.emit(&mut buf), Ok(buf.len()));
        buf
    }

    fn samples<'a>(r1: &RecordRepr<'a>, r2: &RecordRepr<'a>) -> Vec<MessageRepr<'a>> {
        let nodes: Vec<NodeInfo> = (0..MAX_NODES as u8).map(node).collect();
        vec![
            msg(BodyRepr::Ping),
            msg(BodyRepr::Pong { observed: "203.0.113.9:40000".parse().unwrap() }),
            msg(BodyRepr::Pong { observed: "[2001:db8::5]:9320".parse().unwrap() }),
            msg(BodyRepr::Pong { observed: "[::ffff:1.2.3.4]:1".parse().unwrap() }),
            msg(BodyRepr::FindNode { target: [0xAB; 32], padding: 0 }),
            msg(BodyRepr::FindNode { target: [0xAB; 32], padding: REQUEST_PADDING }),
            msg(BodyRepr::Nodes(NodeList::new())),
            msg(BodyRepr::Nodes(NodeList::from_slice(&nodes).unwrap())),
            msg(BodyRepr::FindValue { key: [0x22; 32], padding: 0 }),
            msg(BodyRepr::FindValue { key: [0x22; 32], padding: 1 }),
            msg(BodyRepr::Value { records: RecordList::new(), nodes: NodeList::new() }),
            msg(BodyRepr::Value {
                records: RecordList::from_slice(&[*r1, *r2]).unwrap(),
                nodes: NodeList::from_slice(&nodes[..3]).unwrap(),
            }),
            msg(BodyRepr::Store(*r1)),
            msg(BodyRepr::StoreAck(StoreStatus::Stored)),
            msg(BodyRepr::StoreAck(StoreStatus::StaleSeq)),
            msg(BodyRepr::StoreAck(StoreStatus::StoreFull)),
            msg(BodyRepr::StoreAck(StoreStatus::Rejected)),
        ]
    }

    /// The public offsets (read before a datagram is checked, by the
    /// runtime's steering) point where the codec writes.
    #[test]
    fn layout_offsets_match_the_codec() {
        let r = signed(b"one", 1);
        let store = emit(&msg(BodyRepr::Store(r)));
        assert_eq!(store[layout::TYPE], MessageType::Store.as_u8());
        assert_eq!(&store[layout::TRANSACTION_ID], &TXID.to_be_bytes());
        assert_eq!(&store[layout::SENDER], &sender());
        assert_eq!(&store[layout::STORE_RECORD_KEY], &[0x22; 32]);
        assert_eq!((layout::BODY, layout::STORE_RECORD_KEY.start), (44, 50));
        let find = emit(&msg(BodyRepr::FindNode { target: [0xAB; 32], padding: REQUEST_PADDING }));
        assert_eq!(&find[layout::TARGET], &[0xAB; 32]);
        let value = emit(&msg(BodyRepr::FindValue { key: [0x22; 32], padding: 0 }));
        assert_eq!(&value[layout::TARGET], &[0x22; 32]);
    }

    #[test]
    fn round_trip_every_type() {
        let (r1, r2) = (signed(b"one", 1), signed(b"two!", 2));
        for m in samples(&r1, &r2) {
            let bytes = emit(&m);
            let view = Message::new_checked(&bytes).unwrap();
            assert_eq!(view.message_type(), m.message_type());
            assert_eq!(view.transaction_id(), TXID);
            assert_eq!(view.sender(), &sender());
            assert_eq!(view.as_bytes(), &bytes[..]);
            let parsed = MessageRepr::parse(&bytes).unwrap();
            assert_eq!(parsed, m);
            assert_eq!(emit(&parsed), bytes);
        }
    }

    #[test]
    fn fixed_sizes() {
        let (r1, r2) = (signed(b"", 1), signed(b"", 2));
        let sizes: Vec<usize> = samples(&r1, &r2).iter().map(|m| emit(m).len()).collect();
        assert_eq!(sizes[0], 44); // PING
        assert_eq!(sizes[1], 63); // PONG
        assert_eq!(sizes[4], 76); // FIND_NODE
        assert_eq!(sizes[5], PADDED_REQUEST_LEN); // padded FIND_NODE
        assert_eq!(sizes[6], 45); // empty NODES
        assert_eq!(sizes[7], 45 + 20 * 51); // full NODES
        assert_eq!(sizes[8], 76); // FIND_VALUE
        assert_eq!(sizes[9], 77); // FIND_VALUE, one byte of padding
        assert_eq!(sizes[12], 44 + 2 + record::MIN_LEN); // STORE
        assert_eq!(sizes[13], 45); // STORE_ACK
    }

    /// The reply budget: three times the request, capped at what ricochet
    /// sends; a padded request buys the whole budget, one byte less does
    /// not, and the fullest NODES reply fits it.
    #[test]
    fn a_padded_request_buys_a_full_reply_and_an_unpadded_one_a_third() {
        assert_eq!(PADDED_REQUEST_LEN, 411);
        assert_eq!(REQUEST_PADDING, 335);
        assert_eq!(reply_budget(PADDED_REQUEST_LEN), DATAGRAM_BUDGET);
        assert!(reply_budget(PADDED_REQUEST_LEN - 1) < DATAGRAM_BUDGET);
        assert_eq!(reply_budget(76), 228);
        assert_eq!(reply_budget(usize::MAX), DATAGRAM_BUDGET);
        assert!(HEADER_LEN + 1 + MAX_NODES * NODE_LEN <= reply_budget(PADDED_REQUEST_LEN));
        // Even the smallest request (a PING) leaves room for its PONG.
        assert!(HEADER_LEN + ADDR_LEN <= reply_budget(HEADER_LEN));
    }

    #[test]
    fn padding_must_be_zero_and_counts_toward_the_length() {
        for body in [
            BodyRepr::FindNode { target: [0xAB; 32], padding: 3 },
            BodyRepr::FindValue { key: [0x22; 32], padding: 3 },
        ] {
            let bytes = emit(&msg(body));
            assert_eq!(bytes.len(), 79);
            assert_eq!(&bytes[76..], &[0, 0, 0]);
            for i in 76..79 {
                let mut b = bytes.clone();
                b[i] = 0x80;
                assert_eq!(Message::new_checked(&b), Err(Error::BadField("dht.padding")));
            }
            // Padding past what ricochet sends parses, and is refused on emit.
            let mut big = bytes.clone();
            big.resize(DATAGRAM_BUDGET + 1, 0);
            let m = MessageRepr::parse(&big).unwrap();
            let mut out = vec![0u8; big.len()];
            assert_eq!(
                m.emit(&mut out),
                Err(Error::TooLong { max: DATAGRAM_BUDGET, got: DATAGRAM_BUDGET + 1 })
            );
        }
    }

    #[test]
    fn view_iterates_without_allocating() {
        let (r1, r2) = (signed(b"one", 1), signed(b"two!", 2));
        let nodes = [node(1), node(2), node(3)];
        let m = msg(BodyRepr::Value {
            records: RecordList::from_slice(&[r1, r2]).unwrap(),
            nodes: NodeList::from_slice(&nodes).unwrap(),
        });
        let bytes = emit(&m);
        let view = Message::new_checked(&bytes).unwrap();
        let Body::Value { records, nodes: found } = view.body() else { panic!("not VALUE") };
        assert_eq!(records.len(), 2);
        assert!(!records.is_empty());
        assert_eq!(records.iter().size_hint(), (2, Some(2)));
        let mut it = records.iter();
        let first = it.next().unwrap();
        assert_eq!(first.payload(), b"one");
        first.verify().unwrap();
        let second = it.next().unwrap();
        assert_eq!(second.seq(), 2);
        second.verify().unwrap();
        assert!(it.next().is_none());
        assert_eq!(found.len(), 3);
        assert!(found.iter().eq(nodes.iter().copied()));
        assert_eq!(found.into_iter().size_hint(), (3, Some(3)));
    }

    #[test]
    fn truncation_at_every_length() {
        let (r1, r2) = (signed(b"one", 1), signed(b"two!", 2));
        for m in samples(&r1, &r2) {
            let bytes = emit(&m);
            let padded = matches!(m.body, BodyRepr::FindNode { .. } | BodyRepr::FindValue { .. });
            // A padded request cut inside its padding is a shorter one.
            let whole = if padded { HEADER_LEN + ID_LEN } else { bytes.len() };
            for len in 0..whole {
                match Message::new_checked(&bytes[..len]) {
                    Err(Error::Truncated { got, .. }) => assert_eq!(got, len, "{m:?} at {len}"),
                    other => panic!("{:?} cut at {len}: {other:?}", m.message_type()),
                }
            }
            let mut longer = bytes.clone();
            longer.push(0);
            if padded {
                let n = MessageRepr::parse(&longer).unwrap();
                assert_eq!(n.buffer_len(), longer.len(), "a zero byte more is more padding");
                longer.push(1);
                assert_eq!(Message::new_checked(&longer), Err(Error::BadField("dht.padding")));
            } else {
                assert_eq!(
                    Message::new_checked(&longer),
                    Err(Error::LengthMismatch { declared: bytes.len(), actual: bytes.len() + 1 })
                );
            }
        }
    }

    #[test]
    fn header_checks() {
        let bytes = emit(&msg(BodyRepr::Ping));
        let mut b = bytes.clone();
        b[1] = 0;
        assert_eq!(Message::new_checked(&b), Err(Error::BadMagic));
        let mut b = bytes.clone();
        b[2] = 9;
        assert_eq!(Message::new_checked(&b), Err(Error::BadVersion { got: 9 }));
        for t in [0u8, 9, 0xFF] {
            let mut b = bytes.clone();
            b[3] = t;
            assert_eq!(Message::new_checked(&b), Err(Error::UnknownType(t)));
        }
        let huge = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(
            Message::new_checked(&huge),
            Err(Error::TooLong { max: MAX_DATAGRAM, got: MAX_DATAGRAM + 1 })
        );
    }

    #[test]
    fn address_checks() {
        let bytes = emit(&msg(BodyRepr::Pong { observed: "192.0.2.1:7".parse().unwrap() }));
        assert_eq!(
            &bytes[44..63],
            &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 192, 0, 2, 1, 0, 7]
        );
        for family in [0u8, 5, 46, 0xFF] {
            let mut b = bytes.clone();
            b[44] = family;
            assert_eq!(Message::new_checked(&b), Err(Error::BadField("dht.family")));
        }
        let mut b = bytes.clone();
        b[45] = 1; // family 4 but not IPv4-mapped
        assert_eq!(Message::new_checked(&b), Err(Error::BadField("dht.addr")));
        let mut b = bytes.clone();
        b[44] = 6; // the same bytes as IPv6 are a valid (mapped) IPv6 address
        let Body::Pong { observed } = Message::new_checked(&b).unwrap().body() else { panic!() };
        assert_eq!(observed, "[::ffff:192.0.2.1]:7".parse::<SocketAddr>().unwrap());

        let nodes = emit(&msg(BodyRepr::Nodes(NodeList::from_slice(&[node(2)]).unwrap())));
        let mut b = nodes.clone();
        b[45 + 32] = 3;
        assert_eq!(Message::new_checked(&b), Err(Error::BadField("dht.family")));
    }

    #[test]
    fn count_checks() {
        let mut b = emit(&msg(BodyRepr::Nodes(NodeList::new())));
        b[44] = 21;
        assert_eq!(Message::new_checked(&b), Err(Error::TooLong { max: 20, got: 21 }));
        b[44] = 1;
        assert_eq!(Message::new_checked(&b), Err(Error::Truncated { needed: 45 + 51, got: 45 }));

        let mut b =
            emit(&msg(BodyRepr::Value { records: RecordList::new(), nodes: NodeList::new() }));
        b[44] = 9;
        assert_eq!(Message::new_checked(&b), Err(Error::TooLong { max: 8, got: 9 }));
        b[44] = 1; // one record declared, its length prefix missing
        assert_eq!(Message::new_checked(&b), Err(Error::Truncated { needed: 47, got: 46 }));

        let mut b = emit(&msg(BodyRepr::Store(signed(b"x", 1))));
        b[44..46].copy_from_slice(&(record::MAX_LEN as u16 + 1).to_be_bytes());
        assert_eq!(
            Message::new_checked(&b),
            Err(Error::TooLong { max: record::MAX_LEN, got: record::MAX_LEN + 1 })
        );
        let mut b = emit(&msg(BodyRepr::Store(signed(b"x", 1))));
        b[44..46].copy_from_slice(&(record::MIN_LEN as u16).to_be_bytes());
        // The prefix is one short of the record: the record sees a payload
        // length that runs past its slice, then a trailing byte remains.
        assert!(matches!(Message::new_checked(&b), Err(Error::Truncated { .. })));

        let mut b = emit(&msg(BodyRepr::StoreAck(StoreStatus::Stored)));
        b[44] = 4;
        assert_eq!(Message::new_checked(&b), Err(Error::BadField("dht.store_status")));
    }

    #[test]
    fn embedded_record_errors_surface() {
        let mut b = emit(&msg(BodyRepr::Store(signed(b"x", 1))));
        b[46 + 3] = 9; // record type
        assert_eq!(Message::new_checked(&b), Err(Error::UnknownType(9)));
        // Structure is checked but not the signature: a tampered record parses.
        let mut b = emit(&msg(BodyRepr::Store(signed(b"x", 1))));
        b[46 + record::HEADER_LEN] ^= 1;
        let Body::Store(rec) = Message::new_checked(&b).unwrap().body() else { panic!() };
        assert_eq!(rec.verify(), Err(Error::BadSignature));
    }

    #[test]
    fn emit_budget() {
        // The largest record fits a STORE within the budget.
        let big = vec![0u8; record::MAX_PAYLOAD];
        let r = signed(&big, 1);
        let store = msg(BodyRepr::Store(r));
        assert_eq!(store.buffer_len(), 44 + 2 + record::MAX_LEN);
        assert!(store.buffer_len() <= DATAGRAM_BUDGET);
        emit(&store);
        // Two of them in a VALUE do not.
        let value = msg(BodyRepr::Value {
            records: RecordList::from_slice(&[r, r]).unwrap(),
            nodes: NodeList::new(),
        });
        let mut buf = vec![0u8; value.buffer_len()];
        assert_eq!(
            value.emit(&mut buf),
            Err(Error::TooLong { max: DATAGRAM_BUDGET, got: value.buffer_len() })
        );
        // A full node list fits.
        let nodes: Vec<NodeInfo> = (0..20).map(node).collect();
        let full = msg(BodyRepr::Value {
            records: RecordList::new(),
            nodes: NodeList::from_slice(&nodes).unwrap(),
        });
        emit(&full);
        // Too small an output buffer.
        let ping = msg(BodyRepr::Ping);
        assert_eq!(ping.emit(&mut [0u8; 43]), Err(Error::Truncated { needed: 44, got: 43 }));
        // A bad record is refused.
        let zero_ttl = RecordRepr { ttl: 0, ..r };
        let mut buf = vec![0u8; 2048];
        assert_eq!(
            msg(BodyRepr::Store(zero_ttl)).emit(&mut buf),
            Err(Error::BadField("record.ttl"))
        );
    }

    #[test]
    fn parse_accepts_more_than_the_emit_budget() {
        // Hand-assemble a VALUE holding eight maximal records (≈ 9.5 KB).
        let big = vec![1u8; record::MAX_PAYLOAD];
        let r = signed(&big, 5);
        let mut rec = vec![0u8; r.buffer_len()];
        r.emit(&mut rec).unwrap();
        let mut bytes = emit(&msg(BodyRepr::Ping));
        bytes[3] = MessageType::Value.as_u8();
        bytes.push(8);
        for _ in 0..8 {
            bytes.extend_from_slice(&(rec.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&rec);
        }
        bytes.push(0);
        assert!(bytes.len() > DATAGRAM_BUDGET);
        let m = MessageRepr::parse(&bytes).unwrap();
        let BodyRepr::Value { records, nodes } = m.body else { panic!() };
        assert_eq!(records.len(), 8);
        assert!(nodes.is_empty());
        assert!(records.iter().all(|x| *x == r));
        assert!(matches!(m.emit(&mut vec![0u8; 16384]), Err(Error::TooLong { .. })));
    }

    #[test]
    fn lists() {
        let mut nodes = NodeList::new();
        for i in 0..20 {
            nodes.push(node(i)).unwrap();
        }
        assert_eq!(nodes.push(node(20)), Err(Error::TooLong { max: 20, got: 21 }));
        assert_eq!(nodes.len(), 20);
        let all: Vec<NodeInfo> = (0..21).map(node).collect();
        assert_eq!(NodeList::from_slice(&all), Err(Error::TooLong { max: 20, got: 21 }));
        assert_eq!(NodeList::from_slice(&all[..20]).unwrap(), nodes);
        assert_eq!((&nodes).into_iter().count(), 20);
        assert!(NodeList::default().is_empty());

        let r = signed(b"", 1);
        let mut records = RecordList::new();
        for _ in 0..8 {
            records.push(r).unwrap();
        }
        assert_eq!(records.push(r), Err(Error::TooLong { max: 8, got: 9 }));
        assert_eq!(RecordList::from_slice(&[r; 9]), Err(Error::TooLong { max: 8, got: 9 }));
        assert_eq!(RecordList::from_slice(&[r; 8]).unwrap(), records);
        assert_eq!((&records).into_iter().count(), 8);
        assert!(RecordList::default().is_empty());
        // Equality ignores the unused inline slots.
        let mut a = NodeList::new();
        a.push(node(1)).unwrap();
        assert_eq!(a, NodeList::from_slice(&[node(1)]).unwrap());
        assert_eq!(format!("{:?}", NodeList::new()), "[]");
    }

    #[test]
    fn type_bytes() {
        for b in 1..=8u8 {
            assert_eq!(MessageType::from_u8(b).unwrap().as_u8(), b);
        }
        for b in 0..=3u8 {
            assert_eq!(StoreStatus::from_u8(b).unwrap().as_u8(), b);
        }
    }
}
