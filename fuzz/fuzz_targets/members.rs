//! Cluster member records (`ricochet_wire::members`, topic `members`, with
//! the holdings digest for sibling fill) and the member table that merges
//! them (`ricochet_proto::cluster::members`): any byte string is parsed
//! without panicking; whatever parses re-encodes to the same bytes; a
//! table fed the bytes stays bounded and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_proto::cluster::members::{MAX_HOLDINGS, MAX_MEMBERS, MemberRecord, MemberTable};
use ricochet_proto::retry::Holding;
use ricochet_wire::members::{Record, RecordRepr};

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = Record::new_checked(data) {
        let holdings: Vec<_> = view.holdings().collect();
        let mut out = vec![0u8; data.len()];
        let n = RecordRepr::from_view(&view).emit(&holdings, &mut out);
        assert_eq!(n, Ok(data.len()), "a checked record re-emits");
        assert_eq!(out, data, "the encoding is canonical");
    }
    if let Ok((record, holdings)) = MemberRecord::parse_with_holdings::<Holding>(data) {
        assert!(holdings.len() <= MAX_HOLDINGS);
        assert!(holdings.iter().all(|h| h.lo <= h.hi && u64::from(h.missing) <= h.hi - h.lo));
        let again = record.encode_with(&holdings).expect("a parsed record re-encodes");
        assert_eq!(again, data, "the encoding is canonical");
        assert_eq!(MemberRecord::parse(data), Ok(record));
    }
    // Records cut from the input at every 93-byte stride, into one table.
    let mut table = MemberTable::new();
    table.set_now(u64::from_be_bytes(
        data.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]),
    ));
    for chunk in data.chunks(93) {
        let _ = table.apply(chunk);
    }
    table.purge();
    assert!(table.len() <= MAX_MEMBERS);
});
