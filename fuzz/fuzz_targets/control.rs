//! BRC-126 control messages: NACK, MISS/ACK/THROTTLED, ADVERT.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_wire::control::{Control, Nack, peek_nack_key};
use ricochet_wire::prefix::classify;

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    let _ = peek_nack_key(data);
    if let Ok(n) = Nack::new_checked(data) {
        let _ = (n.flags(), n.hash_key(), n.subtree_id(), n.span());
    }
    let Ok(msg) = Control::parse(data) else { return };
    let mut out = [0u8; 64];
    let n = msg.emit(&mut out).expect("a parsed message re-emits");
    assert_eq!(n, data.len());
    assert_eq!(Control::parse(&out[..n]), Ok(msg));
});
