//! The sans-IO decoder of the server-sent event stream in the body of an
//! upstream's `/events` response (WHATWG HTML, "event stream
//! interpretation"; the events themselves are described in
//! docs/OPERATIONS.md, "Invalidation push between domains").
//!
//! # Contract
//! - Body bytes only: the engine's `admin::subscribe` reads the response
//!   with hyper's HTTP/1.1 client, which owns the framing (status line,
//!   headers, chunked, `Content-Length` or read-until-close body) and
//!   checks the status and `Content-Type`; it feeds the de-chunked body of
//!   a `200 text/event-stream` here.
//! - [`SseDecoder::feed`] takes whatever bytes arrived and appends the
//!   events they complete; how the stream is split never changes the
//!   events or the error.
//! - Never panics, whatever the bytes; what it holds is capped
//!   ([`MAX_LINE`], [`MAX_EVENT`], so [`SseDecoder::buffered`] never exceeds
//!   [`MAX_BUFFERED`]), so a hostile upstream cannot make it allocate
//!   without bound. Once it fails it stays failed.
//! - The end of the body needs no call: an event is dispatched only by the
//!   blank line after it, so an incomplete one at the end is dropped with
//!   the decoder, as WHATWG prescribes.
//! - Pure: no socket, no clock (fuzzed by `fuzz/fuzz_targets/sse.rs`).

/// Most bytes of one SSE line (its terminator excluded).
pub const MAX_LINE: usize = 16 * 1024;
/// Most bytes of one SSE event's data (its `data:` values, each followed
/// by a `\n` until dispatch).
pub const MAX_EVENT: usize = 16 * 1024;
/// Most bytes an [`SseDecoder`] holds at once: the line being read, the
/// event type (from one line) and the data.
pub const MAX_BUFFERED: usize = 2 * MAX_LINE + MAX_EVENT;

/// A server-sent event as the WHATWG event-stream format defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when absent or empty.
    pub kind: String,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// Why the [`SseDecoder`] gave up. Once it fails it stays failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// An SSE line is longer than [`MAX_LINE`].
    LineTooLong,
    /// An SSE event's data is longer than [`MAX_EVENT`].
    EventTooLarge,
}

/// Decodes an event stream: lines end in CRLF, LF or CR (a CRLF split
/// between two feeds is one line end); `field: value` lines (one space
/// after the colon dropped; a line without a colon is a field with an
/// empty value) build an event, which a blank line dispatches; a line
/// starting with `:` is a comment (the keep-alive). Only the `event` and
/// `data` fields matter: the stream has no replay, so `id` and `retry`
/// are ignored like unknown fields. An event with no `data` field is not
/// dispatched.
///
/// Sans-IO: [`feed`](Self::feed) takes whatever bytes arrived and appends
/// the events they complete; how the stream is split never changes the
/// events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// The line being read, without its terminator.
    line: Vec<u8>,
    /// The last byte was a CR: a LF right after it ends no line.
    after_cr: bool,
    /// The event type buffer.
    kind: Vec<u8>,
    /// The data buffer: each `data:` value followed by `\n`.
    data: Vec<u8>,
    /// Some `data` field was seen since the last dispatch.
    has_data: bool,
    failed: Option<DecodeError>,
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        SseDecoder::default()
    }

    /// Bytes held in buffers now; at most [`MAX_BUFFERED`].
    pub fn buffered(&self) -> usize {
        self.line.len() + self.kind.len() + self.data.len()
    }

    /// Consumes `bytes`, appending the events they complete to `out`.
    /// After an error every call returns it again and appends nothing; the
    /// events completed before the offending line are still appended.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let result = self.lines(bytes, out);
        if let Err(e) = result {
            self.failed = Some(e);
            // Nothing more will be read: free what was held.
            self.line = Vec::new();
            self.kind = Vec::new();
            self.data = Vec::new();
        }
        result
    }

    fn lines(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), DecodeError> {
        let mut rest = bytes;
        while let Some((&first, tail)) = rest.split_first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                rest = tail;
                continue;
            }
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.push(&rest[..i])?;
                    self.after_cr = rest[i] == b'\r';
                    self.end_line(out)?;
                    rest = &rest[i + 1..];
                }
                None => {
                    self.push(rest)?;
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(DecodeError::LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), DecodeError> {
        let line = std::mem::take(&mut self.line);
        let result = self.field(&line, out);
        self.line = line;
        self.line.clear();
        result
    }

    fn field(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), DecodeError> {
        if line.is_empty() {
            if std::mem::take(&mut self.has_data) {
                self.data.pop(); // the newline after the last data line
                let kind = if self.kind.is_empty() { "message".into() } else { lossy(&self.kind) };
                out.push(SseEvent { kind, data: lossy(&self.data) });
            }
            self.kind.clear();
            self.data.clear();
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // a comment: the keep-alive
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..])),
            None => (line, &[][..]),
        };
        match name {
            b"event" => {
                self.kind.clear();
                self.kind.extend_from_slice(value);
            }
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT {
                    return Err(DecodeError::EventTooLarge);
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
                self.has_data = true;
            }
            _ => {} // id, retry and unknown fields: this stream has no replay
        }
        Ok(())
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `parts` in order, checking the buffer bound after each.
    fn decode(parts: &[&[u8]]) -> (Vec<SseEvent>, Result<(), DecodeError>) {
        let mut d = SseDecoder::new();
        let mut events = Vec::new();
        let mut result = Ok(());
        for part in parts {
            result = d.feed(part, &mut events);
            assert!(d.buffered() <= MAX_BUFFERED);
        }
        (events, result)
    }

    fn event(kind: &str, data: &str) -> SseEvent {
        SseEvent { kind: kind.into(), data: data.into() }
    }

    #[test]
    fn an_event_stream_decodes_to_its_events_however_split() {
        let body: &[u8] = b": hello\r\n\r\nevent: invalidate\r\n\
            data: {\"hash_key\":\"0x1\"}\r\n\r\ndata: a\rdata:b\r\rdata: partial\n";
        let want = vec![event("invalidate", "{\"hash_key\":\"0x1\"}"), event("message", "a\nb")];
        assert_eq!(decode(&[body]), (want.clone(), Ok(())));
        for cut in 0..=body.len() {
            assert_eq!(decode(&[&body[..cut], &body[cut..]]), (want.clone(), Ok(())));
        }
    }

    #[test]
    fn fields_follow_the_event_stream_rules() {
        // One space after the colon is dropped, not two; a field without a
        // colon has an empty value; unknown fields and a data-less event
        // dispatch nothing; an empty `event:` means `message`.
        let body: &[u8] = b"data:  two spaces\ndata\nid: 7\nretry: 10\nfoo: bar\n\n\
            event: nodata\n\nevent:\ndata:x\n\n";
        let (events, r) = decode(&[body]);
        assert_eq!(r, Ok(()));
        assert_eq!(events, [event("message", " two spaces\n"), event("message", "x")]);
    }

    #[test]
    fn caps_fail_and_the_failure_stays() {
        let mut line = b"data: ".to_vec();
        line.resize(MAX_LINE + 1, b'x');
        assert_eq!(decode(&[&line]).1, Err(DecodeError::LineTooLong));
        line.truncate(MAX_LINE);
        line.push(b'\n');
        assert_eq!(decode(&[&line]).1, Ok(()));
        let many = b"data: 0123456789abcdef\n".repeat(MAX_EVENT / 16);
        let mut d = SseDecoder::new();
        let mut events = Vec::new();
        assert_eq!(d.feed(b"data: before\n\n", &mut events), Ok(()));
        assert_eq!(d.feed(&many, &mut events), Err(DecodeError::EventTooLarge));
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.feed(b"data: after\n\n", &mut events), Err(DecodeError::EventTooLarge));
        assert_eq!(events, [event("message", "before")]);
    }

    proptest! {
        #[test]
        fn prop_any_split_decodes_the_same(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(data.len() + 1);
            prop_assert_eq!(decode(&[&data]), decode(&[&data[..cut], &data[cut..]]));
        }

        #[test]
        fn prop_byte_at_a_time_decodes_the_same(
            data in proptest::collection::vec(
                prop::sample::select(b"data:event \r\nx".to_vec()), 0..400),
        ) {
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            prop_assert_eq!(decode(&[&data]), decode(&bytes));
        }
    }
}
