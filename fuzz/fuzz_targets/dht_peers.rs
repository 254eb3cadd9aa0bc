//! The DHT peer cache (`ricochet_proto::dht::peers`, read back from
//! `--dht-peer-cache` at start) and the endpoint-record payload
//! (docs/PROTOCOL.md § "Signed records", read from every endpoint record a
//! discovery lookup returns): any byte string decodes without panicking,
//! within the decoder's bounds, and whatever decodes re-encodes to the same
//! bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_proto::dht::peers;
use ricochet_wire::record::EndpointPayload;

fuzz_target!(|data: &[u8]| {
    if let Ok(nodes) = peers::decode(data) {
        assert!(nodes.len() <= peers::MAX_PEERS);
        assert_eq!(peers::encode(&nodes), data, "the peer cache encoding is canonical");
    }
    if let Ok(p) = EndpointPayload::parse(data) {
        assert!(p.domain.len() <= EndpointPayload::MAX_DOMAIN);
        assert!(p.tier <= EndpointPayload::MAX_TIER);
        assert!(p.shard_bits <= EndpointPayload::MAX_SHARD_BITS);
        let _ = p.nack();
        let mut out = [0u8; EndpointPayload::FIXED_LEN + EndpointPayload::MAX_DOMAIN];
        let n = p.emit(&mut out).expect("a parsed payload re-emits");
        assert_eq!(&out[..n], data, "the endpoint payload encoding is canonical");
        assert_eq!(EndpointPayload::parse(&out[..n]), Ok(p));
    }
});
