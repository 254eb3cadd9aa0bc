//! `ricochet`: a retry endpoint for sequence-numbered multicast.
//!
//! # Layering
//! The sans-IO protocol cores live in the `ricochet-proto` crate, whose
//! dependency tree holds no I/O crate, and are re-exported here under
//! their old paths:
//! - [`retry`]: the retry cache, rate limits, upstream recovery policy and
//!   the NACK service; they take `now` and `(source, bytes)` and push
//!   effects into an outbox.
//! - [`gossip`]: the whisper G1–G6 engine between sibling endpoints.
//! - [`dht`]: the signed-record Kademlia node for upstream discovery.
//!
//! This crate is the daemon that drives them:
//! - [`rt`] is the only code that touches sockets, threads and clocks on
//!   the packet path: it runs one pinned worker per configured CPU, each
//!   owning its sockets and its shard of the retry state (and, when
//!   enabled, its DHT node and rumor-dedup shard).
//! - [`cluster`] drives the gossip engine on the control thread
//!   (membership, gap ownership, sibling fill, warm restarts);
//!   [`discovery`] publishes this endpoint's record and looks its upstream
//!   domain up through the workers' DHT nodes. Their rule sets
//!   (`cluster::machine`, `discovery::machine`) are still in this crate,
//!   not yet in `ricochet-proto`.
//! - [`store`] is the Redis client for siblings sharing a cache.
//! - [`admin`] serves `/metrics`, `/healthz`, `/readyz`, `/debug/*` and
//!   `/events` on the control thread; [`otlp`] pushes the same metrics, and
//!   sampled NACK spans, to an OTLP/gRPC collector.
//! - [`config`] turns flags, environment variables and a TOML file into a
//!   validated [`config::Config`], naming the flag and the fix on error.

pub use ricochet_proto::{dht, gossip, retry};

pub mod admin;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod otlp;
pub mod rt;
pub mod store;
