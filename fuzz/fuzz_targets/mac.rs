//! Cluster MAC trailer: opening arbitrary bytes never panics, and only a
//! correctly sealed datagram opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_wire::mac::{ClusterKey, MAC_LEN};

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::new([0x42; 32]);
    if let Ok(body) = key.open(data) {
        assert_eq!(&key.tag(body)[..], &data[data.len() - MAC_LEN..]);
    }
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&[0u8; MAC_LEN]);
    let n = key.seal(&mut sealed, data.len()).expect("room for the tag");
    assert_eq!(key.open(&sealed[..n]), Ok(data));
});
