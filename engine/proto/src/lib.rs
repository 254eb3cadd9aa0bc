//! `ricochet-proto`: ricochet's sans-IO protocol cores — the retry cache and
//! NACK service, whisper gossip and the Kademlia DHT — as state machines
//! the daemon (crate `ricochet`) drives.
//!
//! # Contract
//! - **No I/O, no clocks, no threads.** Nothing here opens a socket or a
//!   file, reads a clock, sleeps or spawns a thread. Callers pass
//!   `now: Instant` to every call that needs the time (the DHT also derives
//!   record timestamps from a unix-seconds anchor the caller sets);
//!   datagrams enter as `(source, bytes)`; datagrams to send, timers and
//!   events leave through caller-owned outboxes that the caller drains.
//!   Timers are the caller's too: it asks when the next one is due
//!   (`poll_timeout`, `next_timeout`) and calls back with `now` when it
//!   fires (`handle_timeout`, `handle_timeouts`, `expire`).
//! - **The compiler enforces it.** This crate depends on `ricochet-wire` and
//!   pure crates only (`bytes`, `blake3`, `reed-solomon-simd`, `serde` for
//!   the stats types); `scripts/test.sh` fails if tokio, io-uring, redis,
//!   axum, hyper, socket2, nix, libc or mio enters its normal dependency
//!   tree.
//! - **Deterministic.** Gossip and DHT randomness comes from generators
//!   seeded through their `Config`; the same inputs, seeds and `now`s give
//!   the same outputs, so the simulations in `engine/proto/tests/` replay
//!   exactly. The one value drawn from the OS is the key of [`retry`]'s
//!   hash tables (std's `RandomState`, read once per table), which moves
//!   entries within a table but does not change what a call returns (see
//!   [`retry`]'s "Hashing" and its one bounded exception).
//! - **Untrusted input.** Every datagram is checked by the `ricochet-wire`
//!   decoder first; anything malformed or over a limit is dropped and
//!   counted by reason, never a panic. Every table has a cap.
//! - **One instance per owner.** A state machine is owned by one thread (a
//!   worker core's shard, or the control thread) and takes no lock; the
//!   exception is [`retry::SharedLimits`], whose cells are atomics shared by
//!   every shard's limiter.
//!
//! # Modules
//! - [`retry`]: the retry cache shard (per-flow logs, TTLs per frame class,
//!   flow epochs), the reference's NACK rate-limit tiers, claims, upstream
//!   recovery policy, sibling holdings, and the NACK service that decides
//!   what goes back on the wire.
//! - [`gossip`]: whisper, the G1–G6 control plane between sibling
//!   endpoints — hypercube rumors, anti-entropy, IBLT reconciliation,
//!   Reed-Solomon snapshots, signed PEX.
//! - [`dht`]: the signed-record Kademlia DHT for upstream discovery —
//!   routing table, record store shard, iterative lookups, the peer cache
//!   format.
//! - [`ssm`]: source-specific multicast (RFC 4607) as the reference runs
//!   it — source-mode and scope validation, the source set of each group
//!   role with join/leave diffs, the shard-manifest publisher registry and
//!   the DNS bootstrap's keep-last-good refresh; the daemon's `rt::ssm`
//!   drives it.
//! - [`discovery`]: what the daemon does with the DHT — publish this
//!   endpoint's record, look the upstream domain up, keep the upstream
//!   list — as DHT commands out and node events in.
//! - [`cluster`]: the cluster core between sibling endpoints — membership
//!   records (topic `members`), the PEX store, warm restarts — over one
//!   gossip engine.
//! - [`events`]: the decoder of an upstream endpoint's `/events` stream.
//!
//! The daemon's `rt` module owns the sockets, rings, threads and clocks
//! that drive these; its `cluster` and `discovery` modules are the
//! drivers of [`cluster`] and [`discovery`].

#![warn(missing_docs)]

/// A datagram a state machine wants sent, as the gossip engine and the DHT
/// node (and the cluster and discovery cores over them) queue it: the
/// caller sends `payload` as one UDP datagram to `dest`. (The retry core's
/// transmits name a group, a listener or an upstream instead, and carry
/// frames without copying them: `retry::Transmit`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dest: core::net::SocketAddr,
    /// The whole UDP payload.
    pub payload: Vec<u8>,
}

pub mod cluster;
pub mod dht;
pub mod discovery;
pub mod events;
pub mod gossip;
pub mod retry;
#[doc(hidden)]
pub mod sim;
pub mod ssm;
