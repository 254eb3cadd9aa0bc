//! DHT messages (docs/PROTOCOL.md § "DHT (UDP 9320)"): any byte string is
//! parsed without panicking; whatever parses walks its node and record lists,
//! verifies its records, and re-emits to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_wire::Error;
use ricochet_wire::dht::{Body, DATAGRAM_BUDGET, Message, MessageRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(view) = Message::new_checked(data) else { return };
    let _ = (view.message_type(), view.transaction_id(), view.sender());
    match view.body() {
        Body::Nodes(nodes) => assert_eq!(nodes.iter().count(), nodes.len()),
        Body::Value { records, nodes } => {
            assert_eq!(nodes.iter().count(), nodes.len());
            let mut seen = 0;
            for record in records {
                let _ = (record.verify(), record.slot(), record.is_expired(0));
                seen += 1;
            }
            assert_eq!(seen, records.len());
        }
        Body::Store(record) => {
            let _ = record.verify();
        }
        _ => {}
    }

    let msg = MessageRepr::parse(data).expect("a checked view lifts");
    let mut out = [0u8; DATAGRAM_BUDGET];
    match msg.emit(&mut out) {
        Ok(n) => {
            assert_eq!(&out[..n], data, "the encoding is canonical");
            assert_eq!(MessageRepr::parse(&out[..n]), Ok(msg));
        }
        Err(Error::TooLong { max, got }) => {
            assert_eq!(max, DATAGRAM_BUDGET);
            assert_eq!(got, data.len());
        }
        Err(e) => panic!("a parsed message failed to re-emit: {e:?}"),
    }
});
