//! Golden vectors from docs/PROTOCOL.md § "DHT (UDP 9320)" and § "Signed
//! records", checked in both directions: the repr emits exactly the
//! documented bytes, and the documented bytes parse back to the repr.
//!
//! Every vector is signed by the key with seed 32 × `07` (ed25519 signing is
//! deterministic); the record signature was cross-checked with an
//! independent implementation (Python `cryptography`, OpenSSL's ed25519).

use ricochet_wire::dht::{
    BodyRepr, Message, MessageRepr, NodeInfo, NodeList, REQUEST_PADDING, RecordList, StoreStatus,
};
use ricochet_wire::record::{EndpointPayload, Record, RecordRepr, RecordType, SigningKey, node_id};

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

const TXID: u64 = 0x0102_0304_0506_0708;

const PUBLIC_KEY: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
const SENDER: &str = "0871f3aabc26e4582c508af5c03884e6a96f0989d1dd8cfb49cd17ed25792433";

/// The golden endpoint record (docs § "Signed records").
const RECORD: &str = "
    5252 01 01
    1111111111111111111111111111111111111111111111111111111111111111
    000000000000002a 000000006955b900 00000e10 001f
    20010db8000000000000000000000010 2454 01 80 0018 02 07 65752d77657374
    ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c
    47e1ec82fa3110f7edebc09f7938cb4b64683d97adad2295baaf84e3c201e174
    08705763421ba5251eb8492d296d30b32731aef5a2ee2e34112b432e74a7150b";

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn sender() -> [u8; 32] {
    node_id(&signing_key().verifying_key().to_bytes())
}

fn endpoint_payload() -> EndpointPayload<'static> {
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

/// Builds and signs the golden record; `payload` must be the emitted
/// [`endpoint_payload`].
fn record(payload: &[u8]) -> RecordRepr<'_> {
    let mut repr =
        RecordRepr::unsigned(RecordType::Endpoint, [0x11; 32], 42, 1_767_225_600, 3600, payload);
    repr.sign(&signing_key()).unwrap();
    repr
}

fn endpoint_payload_bytes() -> Vec<u8> {
    let ep = endpoint_payload();
    let mut buf = vec![0u8; ep.buffer_len()];
    ep.emit(&mut buf).unwrap();
    buf
}

fn node1() -> NodeInfo {
    NodeInfo { id: [0x01; 32], addr: "192.0.2.1:9320".parse().unwrap() }
}

fn node2() -> NodeInfo {
    NodeInfo { id: [0x02; 32], addr: "[2001:db8::2]:9320".parse().unwrap() }
}

fn check(body: BodyRepr<'_>, hex: &str) {
    let repr = MessageRepr { transaction_id: TXID, sender: sender(), body };
    let want = unhex(hex);
    let mut got = vec![0u8; repr.buffer_len()];
    assert_eq!(repr.emit(&mut got), Ok(want.len()));
    assert_eq!(got, want, "emit");
    assert_eq!(MessageRepr::parse(&want), Ok(repr), "parse");
    let view = Message::new_checked(&want).unwrap();
    assert_eq!(view.message_type(), repr.message_type());
}

#[test]
fn identity() {
    let key = signing_key();
    assert_eq!(key.verifying_key().to_bytes().to_vec(), unhex(PUBLIC_KEY));
    assert_eq!(sender().to_vec(), unhex(SENDER));
}

#[test]
fn signed_record() {
    let payload = endpoint_payload_bytes();
    let repr = record(&payload);
    let want = unhex(RECORD);
    assert_eq!(want.len(), 185);
    let mut got = vec![0u8; repr.buffer_len()];
    assert_eq!(repr.emit(&mut got), Ok(want.len()));
    assert_eq!(got, want, "emit");
    assert_eq!(RecordRepr::parse(&want), Ok(repr), "parse");
    let view = Record::new_checked(&want).unwrap();
    assert_eq!(view.verify(), Ok(()));
    assert_eq!(EndpointPayload::parse(view.payload()), Ok(endpoint_payload()));
    assert_eq!(endpoint_payload().nack(), "[2001:db8::10]:9300".parse().unwrap());
}

#[test]
fn endpoint_payload_vector() {
    let want = unhex("20010db8000000000000000000000010 2454 01 80 0018 02 07 65752d77657374");
    assert_eq!(endpoint_payload_bytes(), want);
    assert_eq!(EndpointPayload::parse(&want), Ok(endpoint_payload()));
}

#[test]
fn ping() {
    check(
        BodyRepr::Ping,
        "5244 01 01 0102030405060708
         0871f3aabc26e4582c508af5c03884e6a96f0989d1dd8cfb49cd17ed25792433",
    );
}

#[test]
fn pong() {
    check(
        BodyRepr::Pong { observed: "203.0.113.7:40000".parse().unwrap() },
        "5244 01 02 0102030405060708
         0871f3aabc26e4582c508af5c03884e6a96f0989d1dd8cfb49cd17ed25792433
         04 00000000000000000000ffffcb007107 9c40",
    );
}

#[test]
fn find_node() {
    check(
        BodyRepr::FindNode { target: [0xAB; 32], padding: 0 },
        "5244 01 03 0102030405060708
         0871f3aabc26e4582c508af5c03884e6a96f0989d1dd8cfb49cd17ed25792433
         abababababababababababababababababababababababababababababababab",
    );
}

/// The FIND_NODE ricochet sends: the same, then 335 zero bytes (411 in
/// all), so its reply may use the whole 1232-byte budget.
#[test]
fn find_node_padded() {
    check(
        BodyRepr::FindNode { target: [0xAB; 32], padding: REQUEST_PADDING },
        &format!(
            "5244 01 03 0102030405060708
             0871f3aabc26e4582c508af5c03884e6a96f0989d1dd8cfb49cd17ed25792433
             abababababababababababababababababababababababababababababababab
             {}",
            "00".repeat(335)
        ),
    );
}

#[test]
fn nodes() {
    check(
        BodyRepr::Nodes(NodeList::from_slice(&[node1(), node2()]).unwrap()),
        "5244 01 04 0102030405060708
         0871f3aabc26e4582c508af5c03884e6a96f0989d1dd8cfb49cd17ed25792433
         02
         0101010101010101010101010101010101010101010101010101010101010101
         04 00000000000000000000ffffc0000201 2468
         0202020202020202020202020202020202020202020202020202020202020202
         06 20010db8000000000000000000000002 2468",
    );
}

#[test]
fn find_value() {
    check(
        BodyRepr::FindValue { key: [0x11; 32], padding: 0 },
        "5244 01 05 0102030405060708
         0871f3aabc26e4582c508af5c03884e6a96f0989d1dd8cfb49cd17ed25792433
         1111111111111111111111111111111111111111111111111111111111111111",
    );
}

#[test]
fn value() {
    let payload = endpoint_payload_bytes();
    check(
        BodyRepr::Value {
            records: RecordList::from_slice(&[record(&payload)]).unwrap(),
            nodes: NodeList::from_slice(&[node1()]).unwrap(),
        },
        "5244 01 06 0102030405060708
         0871f3aabc26e4582c508af5c03884e6a96f0989d1dd8cfb49cd17ed25792433
         01 00b9
         5252 01 01
         1111111111111111111111111111111111111111111111111111111111111111
         000000000000002a 000000006955b900 00000e10 001f
         20010db8000000000000000000000010 2454 01 80 0018 02 07 65752d77657374
         ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c
         47e1ec82fa3110f7edebc09f7938cb4b64683d97adad2295baaf84e3c201e174
         08705763421ba5251eb8492d296d30b32731aef5a2ee2e34112b432e74a7150b
         01
         0101010101010101010101010101010101010101010101010101010101010101
         04 00000000000000000000ffffc0000201 2468",
    );
}

#[test]
fn store() {
    let payload = endpoint_payload_bytes();
    check(
        BodyRepr::Store(record(&payload)),
        "5244 01 07 0102030405060708
         0871f3aabc26e4582c508af5c03884e6a96f0989d1dd8cfb49cd17ed25792433
         00b9
         5252 01 01
         1111111111111111111111111111111111111111111111111111111111111111
         000000000000002a 000000006955b900 00000e10 001f
         20010db8000000000000000000000010 2454 01 80 0018 02 07 65752d77657374
         ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c
         47e1ec82fa3110f7edebc09f7938cb4b64683d97adad2295baaf84e3c201e174
         08705763421ba5251eb8492d296d30b32731aef5a2ee2e34112b432e74a7150b",
    );
}

#[test]
fn store_ack() {
    check(
        BodyRepr::StoreAck(StoreStatus::StaleSeq),
        "5244 01 08 0102030405060708
         0871f3aabc26e4582c508af5c03884e6a96f0989d1dd8cfb49cd17ed25792433
         01",
    );
}

/// docs § "Domain topic keys".
#[test]
fn domain_topic_keys() {
    use ricochet_wire::endpoint::domain_topic_key;
    assert_eq!(
        domain_topic_key(b"eu-west").to_vec(),
        unhex("2e05d280ede8b298908b2e7b6271f75ed831483f2a4c7d53f84e23981a1d2170")
    );
    assert_eq!(
        domain_topic_key(b"a").to_vec(),
        unhex("50dbc5ed6ad632304e179c0c9ace370dd92a3ac9adf60d522ba807806efb71ef")
    );
}
