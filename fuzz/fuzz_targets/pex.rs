//! PEX entries and lists (`ricochet_proto::gossip::pex`, carried in G1
//! bodies of topic `pex`): any byte string is parsed without panicking;
//! whatever parses re-emits to the same bytes and is verified without
//! panicking, whatever the key or signature bytes; a book fed the bytes
//! stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_proto::gossip::pex::{
    self, MAX_ENTRIES_PER_EXCHANGE, MAX_LIST_LEN, PexBook, PexEntry, V6_LEN,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = PexEntry::parse(data) {
        let mut out = [0u8; V6_LEN];
        let n = entry.emit(&mut out).expect("a parsed entry re-emits");
        assert_eq!(&out[..n], data, "the encoding is canonical");
        let _ = entry.verify();
        let _ = (entry.node_id(), entry.is_stale(u64::MAX), entry.is_from_future(0));
    }

    let Ok(list) = pex::decode_entries(data) else { return };
    assert!(list.len() <= MAX_ENTRIES_PER_EXCHANGE);
    let mut out = [0u8; MAX_LIST_LEN];
    let n = pex::encode_entries(&list, &mut out).expect("a parsed list re-emits");
    assert_eq!(&out[..n], data, "the encoding is canonical");

    // Judge the entries at the first one's own time, so the signature path
    // runs rather than every entry being stale.
    let now = list.first().map_or(0, |e| e.timestamp);
    let mut book = PexBook::new([0; 32]);
    let report = book.accept_bytes(data, now).expect("a parsed list is accepted");
    assert!(book.len() <= MAX_ENTRIES_PER_EXCHANGE);
    assert!(report.discovered.len() + report.rejected.len() <= list.len());
    assert!(book.choose(now, None, 1).len() <= MAX_ENTRIES_PER_EXCHANGE);
});
