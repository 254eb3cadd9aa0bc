//! Cluster member records (engine/src/cluster/members.rs, topic `members`,
//! with the holdings digest for sibling fill): any byte string is parsed
//! without panicking; whatever parses re-encodes to the same bytes; a
//! table fed the bytes stays bounded and never panics.
//!
//! `members.rs` lives in the engine crate, which this fuzz crate does not
//! build (tokio, io-uring, redis under sanitizers). It needs only three
//! names from the engine — the gossip `Store` trait, `RecordRejected` and
//! `retry::Holding` — declared here with the engine's definitions, so the
//! file compiles in directly.
#![no_main]

#[allow(dead_code)]
mod gossip {
    /// As engine/src/gossip/mod.rs (the required methods only).
    pub trait Store {
        fn fingerprint(&self) -> u64;
        fn watermark(&self) -> i64;
        fn snapshot(&self) -> Vec<Vec<u8>>;
        fn delta_since(&self, since: i64) -> Vec<Vec<u8>>;
        fn apply(&mut self, record: &[u8]) -> Result<bool, RecordRejected>;
    }
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RecordRejected;
}

#[allow(dead_code)]
mod retry {
    /// As engine/src/retry/siblings.rs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Holding {
        pub hash_key: u64,
        pub lo: u64,
        pub hi: u64,
        pub missing: u32,
    }
}

#[allow(dead_code, unreachable_pub, unused_imports)]
#[path = "../../engine/src/cluster/members.rs"]
mod members;

use libfuzzer_sys::fuzz_target;
use members::{MAX_HOLDINGS, MAX_MEMBERS, MemberRecord, MemberTable};

fuzz_target!(|data: &[u8]| {
    if let Some((record, holdings)) = MemberRecord::parse_with_holdings(data) {
        assert!(holdings.len() <= MAX_HOLDINGS);
        assert!(holdings.iter().all(|h| h.lo <= h.hi && u64::from(h.missing) <= h.hi - h.lo));
        let again = record.encode_with(&holdings).expect("a parsed record re-encodes");
        assert_eq!(again, data, "the encoding is canonical");
        assert_eq!(MemberRecord::parse(data), Some(record));
    }
    // Records cut from the input at every 93-byte stride, into one table.
    let mut table = MemberTable::new();
    table.set_now(u64::from_be_bytes(data.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8])));
    for chunk in data.chunks(93) {
        let _ = table.apply(chunk);
    }
    table.purge();
    assert!(table.len() <= MAX_MEMBERS);
});
