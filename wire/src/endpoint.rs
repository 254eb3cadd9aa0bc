//! Where endpoint records live in the DHT: the topic key of a domain.
//!
//! Implements `docs/PROTOCOL.md` § "Signed records", "Domain topic keys".
//! Every retry endpoint that serves a domain publishes one signed
//! [`RecordType::Endpoint`](crate::record::RecordType::Endpoint) record
//! (payload: [`EndpointPayload`](crate::record::EndpointPayload)) under
//! that domain's topic key; a downstream endpoint looks the key up to find
//! its upstreams. The store keeps one record per slot = (type, key,
//! publisher), so every endpoint of a domain has its own record under the
//! one key (seed 001's topic records, keyed by a hash of the topic name).
//!
//! ```text
//! domain_topic_key(domain) = BLAKE3("ricochet/domain/v1" ‖ domain)
//! ```
//!
//! The context string is 18 ASCII bytes with no length prefix or
//! terminator, followed by the domain id exactly as it appears in the
//! endpoint payload (1–64 bytes). Because the prefix has a fixed length the
//! concatenation is unambiguous. The key is a plain 32-byte BLAKE3 hash, so
//! any BLAKE3 implementation reproduces it.
//!
//! ```
//! use ricochet_wire::endpoint::domain_topic_key;
//! let key = domain_topic_key(b"eu-west");
//! assert_eq!(key, *blake3::hash(b"ricochet/domain/v1eu-west").as_bytes());
//! ```

/// The fixed prefix hashed before the domain id.
pub const TOPIC_CONTEXT: &[u8; 18] = b"ricochet/domain/v1";

/// The DHT key under which the endpoints serving `domain` publish their
/// endpoint records: `BLAKE3(TOPIC_CONTEXT ‖ domain)`.
pub fn domain_topic_key(domain: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(TOPIC_CONTEXT);
    h.update(domain);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The vectors of docs/PROTOCOL.md § "Domain topic keys".
    #[test]
    fn golden_vectors() {
        assert_eq!(
            hex(&domain_topic_key(b"eu-west")),
            "2e05d280ede8b298908b2e7b6271f75ed831483f2a4c7d53f84e23981a1d2170"
        );
        assert_eq!(
            hex(&domain_topic_key(b"a")),
            "50dbc5ed6ad632304e179c0c9ace370dd92a3ac9adf60d522ba807806efb71ef"
        );
    }

    #[test]
    fn prefix_and_domain_are_hashed_together() {
        let mut cat = TOPIC_CONTEXT.to_vec();
        cat.extend_from_slice(b"bsv-mainnet-eu1");
        assert_eq!(domain_topic_key(b"bsv-mainnet-eu1"), *blake3::hash(&cat).as_bytes());
        assert_ne!(domain_topic_key(b"a"), domain_topic_key(b"b"));
        assert_ne!(domain_topic_key(b""), *blake3::hash(b"").as_bytes());
    }
}
