//! BRC-139 shard manifest (type 0x40) with its BRC-148 Domains section.
//!
//! Each input is tried as it is and once more with a correct CRC, so the
//! checks behind the CRC (list order, Successor bounds, Domains rules) are
//! reached by mutation too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_wire::manifest::{ShardManifest, ShardManifestRepr, is_shard_manifest, manifest_crc};

fn check(data: &[u8]) {
    let _ = is_shard_manifest(data);
    let Ok(view) = ShardManifest::new_checked(data) else { return };
    let _ = (view.groups().count(), view.sources().count(), view.successor());
    let repr = ShardManifestRepr::from_view(&view);
    assert_eq!(view.domains().count(), repr.domains.len());
    let mut out = vec![0u8; repr.buffer_len()];
    let n = repr.emit(&mut out).expect("a parsed manifest re-emits");
    assert_eq!(n, data.len());
    assert_eq!(ShardManifestRepr::parse(&out), Ok(repr));
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 48 {
        let mut sealed = data.to_vec();
        let crc = manifest_crc(&sealed);
        sealed[44..48].copy_from_slice(&crc.to_be_bytes());
        check(&sealed);
    }
});
