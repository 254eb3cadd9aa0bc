//! The `/events` body decoder (`ricochet_proto::events`), which reads the
//! server-sent event stream whatever an upstream endpoint sends: any byte
//! string, fed whole or split at any point, decodes without panicking, to
//! the same events and the same error either way, with what it holds
//! within `MAX_BUFFERED`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_proto::events::{MAX_BUFFERED, SseDecoder};

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else { return };
    let split = usize::from(split) * data.len() / 256;

    let mut whole = SseDecoder::new();
    let mut events = Vec::new();
    let r1 = whole.feed(data, &mut events);
    assert!(whole.buffered() <= MAX_BUFFERED);

    let mut parts = SseDecoder::new();
    let mut events2 = Vec::new();
    let mut r2 = parts.feed(&data[..split], &mut events2);
    assert!(parts.buffered() <= MAX_BUFFERED);
    if r2.is_ok() {
        r2 = parts.feed(&data[split..], &mut events2);
    }
    assert!(parts.buffered() <= MAX_BUFFERED);
    assert_eq!(r1, r2);
    assert_eq!(events, events2);
});
