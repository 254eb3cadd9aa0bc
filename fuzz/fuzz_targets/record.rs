//! Signed records (docs/PROTOCOL.md § "Signed records") and the endpoint
//! payload: any byte string is parsed without panicking; whatever parses is
//! verified (never panicking, whatever the key or signature bytes) and
//! re-emits to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_wire::record::{EndpointPayload, MAX_LEN, Record, RecordRepr};

fuzz_target!(|data: &[u8]| {
    if let Ok(ep) = EndpointPayload::parse(data) {
        let mut out = [0u8; EndpointPayload::FIXED_LEN + EndpointPayload::MAX_DOMAIN];
        let n = ep.emit(&mut out).expect("a parsed payload re-emits");
        assert_eq!(&out[..n], data);
        let _ = ep.nack();
    }

    let Ok(view) = Record::new_checked(data) else { return };
    let verified = view.verify();
    let _ = (view.slot(), view.publisher_id(), view.is_expired(u64::MAX), view.signed_bytes());
    if view.record_type() == ricochet_wire::record::RecordType::Endpoint {
        let _ = EndpointPayload::parse(view.payload());
    }

    let repr = RecordRepr::parse(data).expect("a checked view lifts");
    assert_eq!(repr.verify(), verified, "view and repr agree on the signature");
    let mut out = [0u8; MAX_LEN];
    let n = repr.emit(&mut out).expect("a parsed record re-emits");
    assert_eq!(&out[..n], data, "the encoding is canonical");
    assert_eq!(RecordRepr::parse(&out[..n]), Ok(repr));
});
