//! Data frames (BRC-124/12/130/142): any bytes either parse or return an
//! error; whatever parses re-emits to the same bytes, less any trailing ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet_wire::frame::{Extra, Frame, FrameRepr, peek_key};
use ricochet_wire::group::retransmit_index;

fuzz_target!(|data: &[u8]| {
    let _ = peek_key(data);
    let Ok(view) = Frame::new_checked(data) else { return };
    // Every accessor of a checked view must be callable.
    let _ = (view.id(), view.key(), view.subtree_id(), view.trailing(), view.byte7());
    assert_eq!(view.bundle_members().filter(|m| m.is_err()).count(), 0);
    let _ = retransmit_index(&view, 2, 4);
    let repr = FrameRepr::from_view(&view);
    let mut out = vec![0u8; repr.buffer_len()];
    let n = repr.emit(&mut out).expect("a parsed frame re-emits");
    let mut expect = data[..data.len() - view.trailing().len()].to_vec();
    // Emit writes reserved bytes as zero.
    match repr.extra {
        Extra::Fragment(_) => expect[101..104].fill(0),
        Extra::Bundle(_) => expect[59] = 0,
        Extra::None => {}
    }
    assert_eq!(&out[..n], &expect[..]);
    assert_eq!(FrameRepr::parse(&out[..n]), Ok(repr));
});
