//! The DHT's reply bound against the real daemon: a FIND_NODE or
//! FIND_VALUE comes from an address nobody has proven, so whatever it asks,
//! the reply is at most three times its size. A 76-byte unpadded request
//! gets three nodes and no record; the same request padded to 411 bytes
//! (what ricochet sends) gets all 20 nodes and the record. Each cut is
//! counted in `ricochet_dht_replies_trimmed_total`.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use ricochet_e2e::{Engine, dht_msg, ports};
use ricochet_wire::dht::{Body, BodyRepr, PADDED_REQUEST_LEN, REQUEST_PADDING, StoreStatus};
use ricochet_wire::record::{RecordRepr, RecordType, SigningKey};

/// Sends `request` from `sock` and returns the reply's bytes.
fn ask(sock: &UdpSocket, dht: SocketAddr, request: &[u8]) -> Vec<u8> {
    sock.send_to(request, dht).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("a reply");
    assert_eq!(from, dht);
    buf[..n].to_vec()
}

#[test]
fn a_dht_reply_is_at_most_three_times_its_request() {
    let p = ports();
    let e =
        Engine::start_on(p, &["--cpus", "0", "--dht-enabled", "--dht-port", &p.dht.to_string()]);
    let dht = SocketAddr::from((Ipv4Addr::LOCALHOST, p.dht));

    // 25 peers, each a socket of its own that has PINGed the node.
    let peers: Vec<UdpSocket> = (0..25u8)
        .map(|i| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut id = [i.wrapping_mul(37).wrapping_add(1); 32];
            id[31] = i;
            let pong = ask(&s, dht, &dht_msg(u64::from(i), id, BodyRepr::Ping));
            assert!(matches!(
                ricochet_wire::dht::Message::new_checked(&pong).unwrap().body(),
                Body::Pong { .. }
            ));
            s
        })
        .collect();

    // A 456-byte record under `key`.
    let key = [0x5A; 32];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut r = RecordRepr::unsigned(RecordType::Topic, key, 1, now, 600, &[7; 300]);
    r.sign(&SigningKey::from_bytes(&[0x42; 32])).unwrap();
    let mut rec = vec![0u8; r.buffer_len()];
    r.emit(&mut rec).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let stranger = [0xEE; 32];
    let ack = ask(
        &client,
        dht,
        &dht_msg(100, stranger, BodyRepr::Store(RecordRepr::parse(&rec).unwrap())),
    );
    let stored = ricochet_wire::dht::Message::new_checked(&ack).unwrap();
    assert_eq!(stored.body(), Body::StoreAck(StoreStatus::Stored));

    let parse = |bytes: &[u8]| -> (usize, usize) {
        match ricochet_wire::dht::Message::new_checked(bytes).unwrap().body() {
            Body::Nodes(n) => (0, n.len()),
            Body::Value { records, nodes } => (records.len(), nodes.len()),
            other => panic!("{other:?}"),
        }
    };
    let find_node =
        |padding| dht_msg(101, stranger, BodyRepr::FindNode { target: [0x77; 32], padding });
    let find_value = |padding| dht_msg(102, stranger, BodyRepr::FindValue { key, padding });

    let small = find_node(0);
    let reply = ask(&client, dht, &small);
    assert_eq!(small.len(), 76);
    assert!(reply.len() <= 3 * small.len(), "{} bytes for 76", reply.len());
    assert_eq!(parse(&reply), (0, 3));

    let padded = find_node(REQUEST_PADDING);
    let reply = ask(&client, dht, &padded);
    assert_eq!(padded.len(), PADDED_REQUEST_LEN);
    assert!(reply.len() <= 3 * padded.len());
    assert_eq!(parse(&reply), (0, 20), "a padded request gets a full reply");

    let reply = ask(&client, dht, &find_value(0));
    assert!(reply.len() <= 3 * 76, "{} bytes for 76", reply.len());
    assert_eq!(parse(&reply).0, 0, "the record does not fit three times 76 bytes");
    let reply = ask(&client, dht, &find_value(REQUEST_PADDING));
    assert!(reply.len() <= 3 * PADDED_REQUEST_LEN);
    assert_eq!(parse(&reply).0, 1, "a padded request gets the record");

    // Non-zero padding is malformed: dropped, counted, not answered.
    let mut bad = find_node(4);
    *bad.last_mut().unwrap() = 1;
    client.send_to(&bad, dht).unwrap();
    let body = e.wait_metrics(Duration::from_secs(5), |m| {
        ricochet_e2e::metric_value(m, "ricochet_dht_dropped_total{reason=\"bad_field\"}")
            == Some(1.0)
    });
    let v = |s: &str| ricochet_e2e::metric_value(&body, s).unwrap_or(-1.0);
    assert_eq!(v("ricochet_dht_replies_trimmed_total"), 2.0, "{body}");
    assert_eq!(v("ricochet_dht_dropped_total{reason=\"bad_field\"}"), 1.0, "{body}");
    drop(peers);
}
