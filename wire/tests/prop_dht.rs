//! Property tests for the DHT messages and signed records
//! (docs/PROTOCOL.md § "DHT (UDP 9320)" and § "Signed records"):
//! `parse(emit(x)) == x`, emitted bytes are canonical, signed records verify,
//! and no byte string makes a decoder panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use ricochet_wire::Error;
use ricochet_wire::dht::{
    self, BodyRepr, Message, MessageRepr, NodeInfo, NodeList, RecordList, StoreStatus,
};
use ricochet_wire::record::{self, EndpointPayload, Record, RecordRepr, RecordType, SigningKey};

/// The owned inputs of a record; the repr borrows `payload`.
#[derive(Debug, Clone)]
struct RecordSpec {
    record_type: RecordType,
    key: [u8; 32],
    seq: u64,
    timestamp: u64,
    ttl: u32,
    payload: Vec<u8>,
    seed: [u8; 32],
}

impl RecordSpec {
    fn signed(&self) -> RecordRepr<'_> {
        let mut repr = RecordRepr::unsigned(
            self.record_type,
            self.key,
            self.seq,
            self.timestamp,
            self.ttl,
            &self.payload,
        );
        repr.sign(&SigningKey::from_bytes(&self.seed)).expect("valid record signs");
        repr
    }
}

fn record_type() -> impl Strategy<Value = RecordType> {
    prop_oneof![Just(RecordType::Endpoint), Just(RecordType::Mailbox), Just(RecordType::Topic)]
}

fn record_spec(max_payload: usize) -> impl Strategy<Value = RecordSpec> {
    (
        record_type(),
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u64>(),
        1..=u32::MAX,
        proptest::collection::vec(any::<u8>(), 0..=max_payload),
        any::<[u8; 32]>(),
    )
        .prop_map(|(record_type, key, seq, timestamp, ttl, payload, seed)| RecordSpec {
            record_type,
            key,
            seq,
            timestamp,
            ttl,
            payload,
            seed,
        })
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn node() -> impl Strategy<Value = NodeInfo> {
    (any::<[u8; 32]>(), socket_addr()).prop_map(|(id, addr)| NodeInfo { id, addr })
}

fn nodes(max: usize) -> impl Strategy<Value = Vec<NodeInfo>> {
    proptest::collection::vec(node(), 0..=max)
}

fn status() -> impl Strategy<Value = StoreStatus> {
    prop_oneof![
        Just(StoreStatus::Stored),
        Just(StoreStatus::StaleSeq),
        Just(StoreStatus::StoreFull),
        Just(StoreStatus::Rejected),
    ]
}

/// A message body with its owned parts; `body()` builds the borrowed repr.
#[derive(Debug, Clone)]
enum BodySpec {
    Ping,
    Pong(SocketAddr),
    FindNode([u8; 32], u16),
    Nodes(Vec<NodeInfo>),
    FindValue([u8; 32], u16),
    Value(Vec<RecordSpec>, Vec<NodeInfo>),
    Store(RecordSpec),
    StoreAck(StoreStatus),
}

fn body_spec() -> impl Strategy<Value = BodySpec> {
    prop_oneof![
        Just(BodySpec::Ping),
        socket_addr().prop_map(BodySpec::Pong),
        (any::<[u8; 32]>(), 0..=dht::REQUEST_PADDING).prop_map(|(t, p)| BodySpec::FindNode(t, p)),
        nodes(dht::MAX_NODES).prop_map(BodySpec::Nodes),
        (any::<[u8; 32]>(), 0..=dht::REQUEST_PADDING).prop_map(|(k, p)| BodySpec::FindValue(k, p)),
        (proptest::collection::vec(record_spec(96), 0..=dht::MAX_RECORDS), nodes(dht::MAX_NODES))
            .prop_map(|(r, n)| BodySpec::Value(r, n)),
        record_spec(record::MAX_PAYLOAD).prop_map(BodySpec::Store),
        status().prop_map(BodySpec::StoreAck),
    ]
}

fn check_round_trip(txid: u64, sender: [u8; 32], spec: &BodySpec) -> Result<(), TestCaseError> {
    let signed = signed_records(spec, dht::MAX_RECORDS);
    let body = body_repr(spec, &signed, dht::MAX_NODES);
    let repr = MessageRepr { transaction_id: txid, sender, body };
    let mut buf = vec![0u8; repr.buffer_len()];
    match repr.emit(&mut buf) {
        Ok(n) => {
            prop_assert_eq!(n, buf.len());
            prop_assert!(n <= dht::DATAGRAM_BUDGET);
            let parsed = MessageRepr::parse(&buf).unwrap();
            prop_assert_eq!(parsed, repr);
            let view = Message::new_checked(&buf).unwrap();
            prop_assert_eq!(view.message_type(), repr.message_type());
            prop_assert_eq!(view.transaction_id(), txid);
            prop_assert_eq!(view.sender(), &sender);
            if let dht::Body::Value { records, .. } = view.body() {
                for record in records {
                    prop_assert_eq!(record.verify(), Ok(()));
                }
            }
            if let dht::Body::Store(record) = view.body() {
                prop_assert_eq!(record.verify(), Ok(()));
            }
        }
        Err(e) => {
            prop_assert!(repr.buffer_len() > dht::DATAGRAM_BUDGET, "unexpected {e:?}");
            prop_assert_eq!(
                e,
                Error::TooLong { max: dht::DATAGRAM_BUDGET, got: repr.buffer_len() }
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn message_round_trip(txid in any::<u64>(), sender in any::<[u8; 32]>(), spec in body_spec()) {
        check_round_trip(txid, sender, &spec)?;
    }

    #[test]
    fn record_round_trip_and_verify(spec in record_spec(record::MAX_PAYLOAD)) {
        let repr = spec.signed();
        prop_assert_eq!(repr.verify(), Ok(()));
        let mut buf = vec![0u8; repr.buffer_len()];
        prop_assert_eq!(repr.emit(&mut buf), Ok(buf.len()));
        let parsed = RecordRepr::parse(&buf).unwrap();
        prop_assert_eq!(parsed, repr);
        let view = Record::new_checked(&buf).unwrap();
        prop_assert_eq!(view.verify(), Ok(()));
        prop_assert_eq!(view.slot(), repr.slot());
        prop_assert_eq!(view.is_expired(repr.timestamp), false);
    }

    #[test]
    fn record_flipped_bit_never_verifies(spec in record_spec(64), bit in any::<usize>()) {
        let repr = spec.signed();
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        let bit = bit % (buf.len() * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        if let Ok(view) = Record::new_checked(&buf) {
            prop_assert_eq!(view.verify(), Err(Error::BadSignature));
        }
    }

    #[test]
    fn endpoint_payload_round_trip(
        addr in any::<[u8; 16]>(),
        port in any::<u16>(),
        tier in 0..=EndpointPayload::MAX_TIER,
        preference in any::<u8>(),
        flags in any::<u16>(),
        shard_bits in 0..=EndpointPayload::MAX_SHARD_BITS,
        domain in proptest::collection::vec(any::<u8>(), 0..=EndpointPayload::MAX_DOMAIN),
    ) {
        let ep = EndpointPayload {
            nack_addr: Ipv6Addr::from(addr),
            nack_port: port,
            tier,
            preference,
            flags,
            shard_bits,
            domain: &domain,
        };
        let mut buf = vec![0u8; ep.buffer_len()];
        prop_assert_eq!(ep.emit(&mut buf), Ok(buf.len()));
        prop_assert_eq!(EndpointPayload::parse(&buf), Ok(ep));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(
        txid in any::<u64>(),
        spec in body_spec(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let bytes = emit_spec(txid, &spec);
        let mut bytes = bytes;
        for (at, v) in edits {
            let at = at % bytes.len();
            bytes[at] = v;
        }
        exercise(&bytes);
        exercise(&bytes[..cut % (bytes.len() + 1)]);
    }

    #[test]
    fn arbitrary_dht_bodies_never_panic(
        ty in 0u8..=9,
        body in proptest::collection::vec(any::<u8>(), 0..1400),
    ) {
        // Start from a valid header so the body decoders are reached.
        let mut bytes = vec![0x52, 0x44, 1, ty];
        bytes.extend_from_slice(&[0u8; 40]);
        bytes.extend_from_slice(&body);
        exercise(&bytes);
    }
}

/// Emits a variant of `spec` small enough for the datagram budget (at most
/// one record and ten nodes).
fn emit_spec(txid: u64, spec: &BodySpec) -> Vec<u8> {
    let signed = signed_records(spec, 1);
    let repr =
        MessageRepr { transaction_id: txid, sender: [9; 32], body: body_repr(spec, &signed, 10) };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf).expect("fits the budget");
    buf
}

/// Signs up to `max` of the records `spec` carries.
fn signed_records(spec: &BodySpec, max: usize) -> Vec<RecordRepr<'_>> {
    match spec {
        BodySpec::Value(records, _) => records.iter().take(max).map(RecordSpec::signed).collect(),
        BodySpec::Store(record) => vec![record.signed()],
        _ => Vec::new(),
    }
}

/// The repr of `spec`, with its records already signed and at most
/// `max_nodes` nodes.
fn body_repr<'a>(spec: &BodySpec, signed: &[RecordRepr<'a>], max_nodes: usize) -> BodyRepr<'a> {
    let node_list = |n: &[NodeInfo]| NodeList::from_slice(&n[..n.len().min(max_nodes)]).unwrap();
    match spec {
        BodySpec::Ping => BodyRepr::Ping,
        BodySpec::Pong(observed) => BodyRepr::Pong { observed: *observed },
        BodySpec::FindNode(target, padding) => {
            BodyRepr::FindNode { target: *target, padding: *padding }
        }
        BodySpec::Nodes(n) => BodyRepr::Nodes(node_list(n)),
        BodySpec::FindValue(key, padding) => BodyRepr::FindValue { key: *key, padding: *padding },
        BodySpec::Value(_, n) => BodyRepr::Value {
            records: RecordList::from_slice(signed).unwrap(),
            nodes: node_list(n),
        },
        BodySpec::Store(_) => BodyRepr::Store(signed[0]),
        BodySpec::StoreAck(s) => BodyRepr::StoreAck(*s),
    }
}

/// Runs every decoder over `bytes`; when one succeeds, its re-encoding must
/// reproduce the input.
fn exercise(bytes: &[u8]) {
    if let Ok(m) = MessageRepr::parse(bytes) {
        let mut buf = vec![0u8; m.buffer_len()];
        if m.emit(&mut buf).is_ok() {
            assert_eq!(buf, bytes);
        }
        if let Ok(view) = Message::new_checked(bytes) {
            match view.body() {
                dht::Body::Value { records, nodes } => {
                    for r in records {
                        let _ = r.verify();
                    }
                    assert_eq!(nodes.iter().count(), nodes.len());
                }
                dht::Body::Store(r) => {
                    let _ = r.verify();
                }
                _ => {}
            }
        }
    }
    if let Ok(r) = RecordRepr::parse(bytes) {
        let _ = r.verify();
        let mut buf = vec![0u8; r.buffer_len()];
        assert_eq!(r.emit(&mut buf), Ok(bytes.len()));
        assert_eq!(buf, bytes);
    }
    if let Ok(ep) = EndpointPayload::parse(bytes) {
        let mut buf = vec![0u8; ep.buffer_len()];
        assert_eq!(ep.emit(&mut buf), Ok(bytes.len()));
        assert_eq!(buf, bytes);
    }
}
