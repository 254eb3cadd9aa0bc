//! The `/events` response decoder (`ricochet_proto::events`), which reads
//! whatever an upstream endpoint sends: any byte string, fed whole or split
//! at any point, decodes without panicking, to the same items and the same
//! error either way, with every buffer within its cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_proto::events::{
    Decoder, MAX_CHUNK_LINE, MAX_EVENT, MAX_HEAD, MAX_LINE, MAX_REJECTION,
};

/// Everything a decoder may hold at once.
const CAP: usize = MAX_HEAD + MAX_CHUNK_LINE + MAX_LINE + 2 * MAX_EVENT + MAX_REJECTION;

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else { return };
    let split = usize::from(split) * data.len() / 256;

    let mut whole = Decoder::new();
    let mut items = Vec::new();
    let r1 = whole.feed(data, &mut items);
    assert!(whole.buffered() <= CAP);

    let mut parts = Decoder::new();
    let mut items2 = Vec::new();
    let mut r2 = parts.feed(&data[..split], &mut items2);
    if r2.is_ok() {
        r2 = parts.feed(&data[split..], &mut items2);
    }
    assert!(parts.buffered() <= CAP);
    assert_eq!(r1, r2);
    assert_eq!(items, items2);
});
