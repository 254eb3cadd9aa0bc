//! The decoder of an upstream's `/events` response (HTTP/1.1 framing and
//! the server-sent event stream inside it) is pure, so it lives in the
//! protocol crate: `ricochet_proto::events`. Re-exported here under the
//! names `admin::subscribe` uses.

pub use ricochet_proto::events::{
    DecodeError, Decoder, Item, MAX_CHUNK_LINE, MAX_EVENT, MAX_HEAD, MAX_LINE, MAX_REJECTION,
    SseEvent,
};
