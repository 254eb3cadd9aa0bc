//! The `/events` response decoder (engine/src/admin/sse.rs), which reads
//! whatever an upstream endpoint sends: any byte string, fed whole or split
//! at any point, decodes without panicking, to the same items and the same
//! error either way, with every buffer within its cap.
//!
//! The decoder lives in the engine crate, which this fuzz crate does not
//! build (tokio, io-uring, redis under sanitizers); `sse.rs` depends only on
//! `std`, so it is compiled in directly.
#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../engine/src/admin/sse.rs"]
mod sse;

use libfuzzer_sys::fuzz_target;
use sse::{Decoder, MAX_CHUNK_LINE, MAX_EVENT, MAX_HEAD, MAX_LINE, MAX_REJECTION};

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
