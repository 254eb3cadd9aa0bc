//! Hex text for keys and ids: the 64-digit form of key files (the DHT node
//! key, the cluster key), `--upstream-keys` and the logs. A leaf module:
//! `config`, `cluster` and `discovery` all read and write it.

use core::fmt::Write as _;

/// Lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses 64 hex digits, either case, surrounding whitespace ignored. The
/// error says where it went wrong and never quotes the text (it may be a
/// secret key).
pub fn parse32(text: &[u8]) -> Result<[u8; 32], String> {
    let s = text.trim_ascii();
    if s.len() != 64 {
        return Err(format!("found {} characters instead of 64 hex digits", s.len()));
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
            let at = if nibble(pair[0]).is_none() { i * 2 + 1 } else { i * 2 + 2 };
            return Err(format!("character {at} is not a hex digit"));
        };
        out[i] = hi << 4 | lo;
    }
    Ok(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_bad_character() {
        let bytes: [u8; 32] = core::array::from_fn(|i| (i * 37) as u8);
        let text = encode(&bytes);
        assert_eq!(text.len(), 64);
        assert_eq!(parse32(text.as_bytes()), Ok(bytes));
        assert_eq!(parse32(format!(" {}\n", text.to_uppercase()).as_bytes()), Ok(bytes));
        assert_eq!(
            parse32(b"abcd"),
            Err("found 4 characters instead of 64 hex digits".to_string())
        );
        let mut bad = text.into_bytes();
        bad[5] = b'g';
        assert_eq!(parse32(&bad), Err("character 6 is not a hex digit".to_string()));
        bad[4] = b'z';
        assert_eq!(parse32(&bad), Err("character 5 is not a hex digit".to_string()));
    }
}
