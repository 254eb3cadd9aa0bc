//! The sans-IO decoder of an upstream's `/events` response: HTTP/1.1
//! framing (status line, headers, chunked, `Content-Length` or
//! read-until-close body) and the server-sent event stream inside it.
//!
//! # Contract
//! - [`Decoder::feed`] takes whatever bytes arrived and appends the items
//!   they complete; how the stream is split never changes the items.
//! - Never panics, whatever the bytes; every buffer is capped by the
//!   `MAX_*` constants, so a hostile upstream cannot make it allocate
//!   without bound. Once it fails it stays failed.
//! - Pure: no socket, no clock; the engine's `admin::subscribe` reads the
//!   connection and feeds the bytes (fuzzed by `fuzz/fuzz_targets/sse.rs`).

/// Most bytes of a response head (status line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most bytes of a chunk-size or trailer line.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Most bytes of one SSE line.
pub const MAX_LINE: usize = 16 * 1024;
/// Most bytes of one SSE event's data.
pub const MAX_EVENT: usize = 16 * 1024;
/// Bytes of a refusal's body kept for the log.
pub const MAX_REJECTION: usize = 512;

/// What the [`Decoder`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The response head: its status, and whether it announces
    /// `text/event-stream`.
    Head {
        /// HTTP status code.
        status: u16,
        /// `Content-Type: text/event-stream`.
        event_stream: bool,
    },
    /// One dispatched server-sent event (of a 200 response).
    Event(SseEvent),
    /// The response body ended (last chunk, or `Content-Length` reached).
    End,
}

/// A server-sent event as the WHATWG event-stream format defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when absent.
    pub kind: String,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// Why the [`Decoder`] gave up. Once it fails it stays failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The response head is longer than [`MAX_HEAD`].
    HeadTooLong,
    /// The status line is not `HTTP/1.x NNN …`.
    BadStatusLine,
    /// A header line has no colon, or `Content-Length` is not a number.
    BadHeader,
    /// A chunk-size or trailer line is longer than [`MAX_CHUNK_LINE`].
    ChunkLineTooLong,
    /// A chunk size is not hex or overflows.
    BadChunkSize,
    /// Chunk data is not followed by CRLF.
    BadChunkEnd,
    /// An SSE line is longer than [`MAX_LINE`].
    LineTooLong,
    /// An SSE event's data is longer than [`MAX_EVENT`].
    EventTooLarge,
}

/// Decodes an HTTP/1.1 response carrying a server-sent event stream
/// (RFC 9112 §6–7 framing, WHATWG HTML "event stream interpretation"; the
/// events themselves are described in docs/OPERATIONS.md, "Invalidation
/// push between domains"):
/// status line and headers, then a chunked, `Content-Length` or
/// read-until-close body, whose bytes are parsed as SSE (status 200) or kept
/// up to [`MAX_REJECTION`] bytes (any other status, for the log).
///
/// Sans-IO: [`feed`](Self::feed) takes whatever bytes arrived and appends
/// the items they complete; how the stream is split never changes the
/// items. Every buffer it holds is capped (see the `MAX_*` constants).
#[derive(Debug, Default)]
pub struct Decoder {
    phase: Phase,
    /// The head line, chunk-size line or trailer line being read.
    line: Vec<u8>,
    /// Head bytes so far.
    head_len: usize,
    status: Option<u16>,
    event_stream: bool,
    chunked: bool,
    length: Option<u64>,
    rejection: Vec<u8>,
    sse: SseParser,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    StatusLine,
    Headers,
    ChunkSize,
    ChunkData(u64),
    /// After chunk data: CR or LF expected.
    ChunkCr,
    /// After chunk data and its CR: LF expected.
    ChunkLf,
    Trailers,
    Length(u64),
    UntilClose,
    Done,
    Failed(DecodeError),
}

impl Decoder {
    /// A decoder awaiting the status line.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// The status, once the status line is in.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The start of a non-200 response's body, for the log.
    pub fn rejection(&self) -> String {
        String::from_utf8_lossy(&self.rejection).trim().to_string()
    }

    /// Whether a non-200 body has filled its [`MAX_REJECTION`] bytes.
    pub fn rejection_full(&self) -> bool {
        self.rejection.len() >= MAX_REJECTION
    }

    /// Bytes held in buffers now (the caps bound it).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.rejection.len() + self.sse.buffered()
    }

    /// Consumes `bytes`, appending the items they complete to `out`. After
    /// an error every call returns it again; after [`Item::End`] further
    /// bytes are ignored.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Item>) -> Result<(), DecodeError> {
        while !bytes.is_empty() {
            match self.step(bytes, out) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) => {
                    self.phase = Phase::Failed(e);
                    return Err(e);
                }
            }
        }
        match self.phase {
            Phase::Failed(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Consumes a prefix of `bytes` (at least one byte) and returns its
    /// length.
    fn step(&mut self, bytes: &[u8], out: &mut Vec<Item>) -> Result<usize, DecodeError> {
        match self.phase {
            Phase::StatusLine | Phase::Headers => {
                let budget = MAX_HEAD - self.head_len;
                let (n, done) = take_line(&mut self.line, bytes, budget);
                self.head_len += n;
                if !done {
                    return if n == budget { Err(DecodeError::HeadTooLong) } else { Ok(n) };
                }
                let line = std::mem::take(&mut self.line);
                let result = self.head_line(trim_cr(&line), out);
                self.line = line;
                self.line.clear();
                result.map(|()| n)
            }
            Phase::ChunkSize | Phase::Trailers => {
                let budget = MAX_CHUNK_LINE - self.line.len();
                let (n, done) = take_line(&mut self.line, bytes, budget);
                if !done {
                    return if n == budget { Err(DecodeError::ChunkLineTooLong) } else { Ok(n) };
                }
                let line = trim_cr(&self.line);
                if self.phase == Phase::Trailers {
                    if line.is_empty() {
                        self.finish(out);
                    }
                } else {
                    let size = chunk_size(line)?;
                    self.phase = if size == 0 { Phase::Trailers } else { Phase::ChunkData(size) };
                }
                self.line.clear();
                Ok(n)
            }
            Phase::ChunkData(left) => {
                let n = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                self.body(&bytes[..n], out)?;
                let left = left - n as u64;
                self.phase = if left == 0 { Phase::ChunkCr } else { Phase::ChunkData(left) };
                Ok(n)
            }
            Phase::ChunkCr | Phase::ChunkLf => {
                self.phase = match (self.phase, bytes[0]) {
                    (Phase::ChunkCr, b'\r') => Phase::ChunkLf,
                    (_, b'\n') => Phase::ChunkSize,
                    _ => return Err(DecodeError::BadChunkEnd),
                };
                Ok(1)
            }
            Phase::Length(left) => {
                let n = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                self.body(&bytes[..n], out)?;
                let left = left - n as u64;
                if left == 0 {
                    self.finish(out);
                } else {
                    self.phase = Phase::Length(left);
                }
                Ok(n)
            }
            Phase::UntilClose => {
                self.body(bytes, out)?;
                Ok(bytes.len())
            }
            Phase::Done => Ok(bytes.len()),
            Phase::Failed(e) => Err(e),
        }
    }

    fn head_line(&mut self, line: &[u8], out: &mut Vec<Item>) -> Result<(), DecodeError> {
        if self.phase == Phase::StatusLine {
            self.status = Some(status_code(line).ok_or(DecodeError::BadStatusLine)?);
            self.phase = Phase::Headers;
            return Ok(());
        }
        if !line.is_empty() {
            let colon = line.iter().position(|&b| b == b':').ok_or(DecodeError::BadHeader)?;
            let name = String::from_utf8_lossy(&line[..colon]).trim().to_ascii_lowercase();
            let value = String::from_utf8_lossy(&line[colon + 1..]).trim().to_ascii_lowercase();
            match name.as_str() {
                // The last coding decides whether the body is chunked.
                "transfer-encoding" => {
                    self.chunked = value.rsplit(',').next().is_some_and(|c| c.trim() == "chunked");
                }
                "content-length" => {
                    let n: u64 = value.parse().map_err(|_| DecodeError::BadHeader)?;
                    if self.length.is_some_and(|m| m != n) {
                        return Err(DecodeError::BadHeader);
                    }
                    self.length = Some(n);
                }
                "content-type" => {
                    self.event_stream =
                        value.split(';').next().map(str::trim) == Some("text/event-stream");
                }
                _ => {}
            }
            return Ok(());
        }
        // The empty line: the head is complete.
        let status = self.status.unwrap_or(0);
        out.push(Item::Head { status, event_stream: self.event_stream });
        self.phase = if (100..200).contains(&status) || status == 204 || status == 304 {
            Phase::Done
        } else if self.chunked {
            Phase::ChunkSize
        } else if let Some(n) = self.length {
            Phase::Length(n)
        } else {
            Phase::UntilClose
        };
        if matches!(self.phase, Phase::Done | Phase::Length(0)) {
            self.finish(out);
        }
        Ok(())
    }

    fn body(&mut self, bytes: &[u8], out: &mut Vec<Item>) -> Result<(), DecodeError> {
        if self.status == Some(200) {
            self.sse.feed(bytes, out)
        } else {
            let room = MAX_REJECTION - self.rejection.len();
            self.rejection.extend_from_slice(&bytes[..bytes.len().min(room)]);
            Ok(())
        }
    }

    fn finish(&mut self, out: &mut Vec<Item>) {
        self.phase = Phase::Done;
        out.push(Item::End);
    }
}

/// Appends `bytes` up to the first LF to `line`, consuming at most
/// `budget` bytes, the LF included (the LF is not stored); returns how many
/// it consumed and whether the line ended. A line that is not over when
/// the budget is spent is too long: callers fail then, so they never call
/// with a budget of zero.
fn take_line(line: &mut Vec<u8>, bytes: &[u8], budget: usize) -> (usize, bool) {
    let window = &bytes[..bytes.len().min(budget)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&window[..i]);
            (i + 1, true)
        }
        None => {
            line.extend_from_slice(window);
            (window.len(), false)
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `HTTP/1.x NNN reason` → `NNN`.
fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    if !minor.is_ascii_digit() || rest.len() < 3 || !rest[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    if rest.len() > 3 && rest[3] != b' ' {
        return None;
    }
    std::str::from_utf8(&rest[..3]).ok()?.parse().ok()
}

/// `1a2;ext=…` → 0x1a2 (RFC 9112 §7.1).
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let hex = line[..end].trim_ascii();
    if hex.is_empty() || hex.len() > 16 {
        return Err(DecodeError::BadChunkSize);
    }
    let hex = std::str::from_utf8(hex).map_err(|_| DecodeError::BadChunkSize)?;
    u64::from_str_radix(hex, 16).map_err(|_| DecodeError::BadChunkSize)
}

/// The WHATWG event-stream line parser: lines end in CRLF, LF or CR; an
/// empty line dispatches; `:` starts a comment.
#[derive(Debug, Default)]
struct SseParser {
    line: Vec<u8>,
    /// The last byte was a CR: a LF right after it ends no line.
    after_cr: bool,
    kind: Vec<u8>,
    data: Vec<u8>,
    /// Some `data:` field was seen since the last dispatch.
    has_data: bool,
}

impl SseParser {
    fn buffered(&self) -> usize {
        self.line.len() + self.kind.len() + self.data.len()
    }

    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Item>) -> Result<(), DecodeError> {
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

    fn end_line(&mut self, out: &mut Vec<Item>) -> Result<(), DecodeError> {
        let line = std::mem::take(&mut self.line);
        let result = self.field(&line, out);
        self.line = line;
        self.line.clear();
        result
    }

    fn field(&mut self, line: &[u8], out: &mut Vec<Item>) -> Result<(), DecodeError> {
        if line.is_empty() {
            if std::mem::take(&mut self.has_data) {
                self.data.pop(); // the newline after the last data line
                let kind = if self.kind.is_empty() { "message".into() } else { lossy(&self.kind) };
                out.push(Item::Event(SseEvent { kind, data: lossy(&self.data) }));
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

    /// Everything a decoder may hold at once.
    const CAP: usize = MAX_HEAD + MAX_CHUNK_LINE + MAX_LINE + 2 * MAX_EVENT + MAX_REJECTION;

    fn decode(parts: &[&[u8]]) -> (Vec<Item>, Result<(), DecodeError>) {
        let mut d = Decoder::new();
        let mut items = Vec::new();
        let mut result = Ok(());
        for part in parts {
            result = d.feed(part, &mut items);
            assert!(d.buffered() <= CAP);
        }
        (items, result)
    }

    #[test]
    fn a_chunked_event_stream_decodes_to_its_events() {
        let response: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
            transfer-encoding: chunked\r\n\r\n2f\r\nevent: invalidate\r\n\
            data: {\"hash_key\":\"0x1\"}\r\n\r\n\r\n0\r\n\r\n";
        let event = SseEvent { kind: "invalidate".into(), data: "{\"hash_key\":\"0x1\"}".into() };
        let want =
            vec![Item::Head { status: 200, event_stream: true }, Item::Event(event), Item::End];
        assert_eq!(decode(&[response]), (want.clone(), Ok(())));
        for cut in 0..response.len() {
            assert_eq!(decode(&[&response[..cut], &response[cut..]]), (want.clone(), Ok(())));
        }
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
    }
}
