//! The wall clock as the protocol cores take it: unix seconds (DHT record
//! lifetimes) and unix milliseconds (gossip heartbeats, replay stamps). One
//! copy for the workers and the control thread; a clock before 1970 reads
//! as 0. A leaf: depends on nothing else in the crate.

use std::time::SystemTime;

/// The wall clock's unix seconds.
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The wall clock's unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
