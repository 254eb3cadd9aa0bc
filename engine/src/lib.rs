//! `ricochet`: a retry endpoint for sequence-numbered multicast.
//!
//! # Layering
//! - [`retry`] is sans-IO: the retry cache, rate limits and the NACK service
//!   take `now` and `(source, bytes)` and push effects into an outbox.
//! - [`rt`] is the only code that touches sockets, threads and clocks: it
//!   runs one pinned worker per configured CPU, each owning its sockets and
//!   its shard of the retry state.
//! - [`admin`] serves `/metrics`, `/healthz`, `/readyz`, `/debug/stats` on
//!   the control thread; [`otlp`] pushes the same metrics, and sampled
//!   NACK spans, to an OTLP/gRPC collector.
//! - [`config`] turns flags, environment variables and a TOML file into a
//!   validated [`config::Config`], naming the flag and the fix on error.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod dht;
pub mod discovery;
pub mod gossip;
pub mod otlp;
pub mod retry;
pub mod rt;
pub mod store;
