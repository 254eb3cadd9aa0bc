//! The flow HashKey the shard-proxy stamps on every frame.
//!
//! docs/PROTOCOL.md § "Flow HashKey": `XXH64(sender IPv6 (16 B) ‖ group index
//! (u32, big-endian) ‖ SubtreeID (32 B))` with seed 0. An IPv4 sender is
//! hashed as its IPv4-mapped IPv6 address. 0 means "unstamped"; a flow that
//! happens to hash to 0 is stamped as 1 so it can still be cached.

use core::net::{IpAddr, Ipv6Addr};

use xxhash_rust::xxh64::xxh64;

/// Computes the HashKey of a flow.
pub fn hash_key(sender: IpAddr, group_index: u32, subtree_id: &[u8; 32]) -> u64 {
    let sender: Ipv6Addr = match sender {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut input = [0u8; 16 + 4 + 32];
    input[..16].copy_from_slice(&sender.octets());
    input[16..20].copy_from_slice(&group_index.to_be_bytes());
    input[20..].copy_from_slice(subtree_id);
    match xxh64(&input, 0) {
        0 => 1,
        k => k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_is_hashed_as_mapped() {
        let s = [3u8; 32];
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(hash_key(v4, 1, &s), hash_key(mapped, 1, &s));
        assert_ne!(hash_key(v4, 1, &s), hash_key(v4, 2, &s));
    }

    #[test]
    fn matches_xxh64_of_the_concatenation() {
        // Pins the input order: address, index (BE), subtree id.
        let mut input = Vec::new();
        input.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        input.extend_from_slice(&7u32.to_be_bytes());
        input.extend_from_slice(&[0xAB; 32]);
        assert_eq!(hash_key("fd00::1".parse().unwrap(), 7, &[0xAB; 32]), xxh64(&input, 0));
    }
}
