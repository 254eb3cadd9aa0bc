//! Cluster MAC trailer and the gossip v2 envelope (docs/PROTOCOL.md §
//! "Cluster MAC"): opening arbitrary bytes never panics, only a correctly
//! sealed datagram opens, and whatever opens re-seals to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_wire::mac::{ClusterKey, GOSSIP_OVERHEAD, MAC_LEN, Stamp};

fuzz_target!(|data: &[u8]| {
    // Seeds are sealed under 32 × 0x4b (the golden vectors' key).
    for key in [ClusterKey::new([0x42; 32]), ClusterKey::new([0x4B; 32])] {
        if let Ok(body) = key.open(data) {
            assert_eq!(&key.tag(body)[..], &data[data.len() - MAC_LEN..]);
        }
        // A v2 datagram that opens is canonical: sealing what it carries
        // gives the same bytes back.
        if let Ok(o) = key.open_gossip(data) {
            let again = key.seal_gossip_vec(o.frame, o.padding, &o.stamp).expect("re-seals");
            assert_eq!(again, data);
            assert_eq!(data.len(), o.frame.len() + o.padding + GOSSIP_OVERHEAD);
        }
    }
    let key = ClusterKey::new([0x42; 32]);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&[0u8; MAC_LEN]);
    let n = key.seal(&mut sealed, data.len()).expect("room for the tag");
    assert_eq!(key.open(&sealed[..n]), Ok(data));
    // Any bytes as a frame, stamped from its first bytes, round-trip.
    let word =
        |i: usize| data.get(i..i + 8).map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
    let stamp = Stamp { sender: word(0), time_ms: word(8), counter: word(16) };
    let padding = data.first().map_or(0, |b| usize::from(*b & 0x1F));
    let d = key.seal_gossip_vec(data, padding, &stamp).expect("seals");
    let o = key.open_gossip(&d).expect("opens");
    assert_eq!((o.frame, o.stamp, o.padding), (data, stamp, padding));
    // A version-1 datagram is recognised as such, never opened.
    assert!(key.open_gossip(&sealed[..n]).is_err());
});
