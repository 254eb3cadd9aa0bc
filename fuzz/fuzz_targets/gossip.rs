//! Gossip frames G1–G6: any bytes either parse or return an error; whatever
//! parses re-emits to the identical datagram and parses again to the same
//! frame (the encoding is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_wire::gossip::{
    Digest, Exchange, GossipFrame, Pull, Reconcile, Rumor, RumorAck, Snapshot,
};

fuzz_target!(|data: &[u8]| {
    // Every accessor of every checked view must be callable.
    if let Ok(v) = Exchange::new_checked(data) {
        let _ = (v.body(), v.full(), v.more_chunks(), v.exchange_id(), v.chunk_index());
        let _ = (v.chunk_count(), v.topic(), v.watermark_ns(), v.entries());
    }
    if let Ok(v) = Digest::new_checked(data) {
        let _ = (v.fingerprint(), v.matched());
    }
    if let Ok(v) = Rumor::new_checked(data) {
        let _ = (v.hop_count(), v.from_dimension(), v.priority(), v.topic(), v.payload());
    }
    if let Ok(v) = Pull::new_checked(data) {
        let _ = (v.topic(), v.since_ns(), v.max_response());
    }
    if let Ok(v) = Reconcile::new_checked(data) {
        let _ = (v.kind(), v.session_id(), v.topic(), v.cells().iter().count());
        let _ = (v.mode(), v.first_cell(), v.end_cell());
    }
    if let Ok(v) = RumorAck::new_checked(data) {
        let _ = v.rumor_id();
    }
    if let Ok(v) = Snapshot::new_checked(data) {
        let _ = (v.kind(), v.request_id(), v.body());
    }

    let Ok(frame) = GossipFrame::parse(data) else { return };
    let mut out = vec![0u8; frame.buffer_len()];
    let n = frame.emit(&mut out).expect("a parsed frame re-emits");
    assert_eq!(&out[..n], data);
    assert_eq!(GossipFrame::parse(&out[..n]), Ok(frame));
});
