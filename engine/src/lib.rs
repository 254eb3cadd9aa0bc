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
//!   enabled, its DHT node and rumor-dedup shard). The control thread's
//!   modules below do I/O too, off the packet path — [`store`] (Redis over
//!   TCP), [`admin`] (the HTTP listener), [`otlp`] (gRPC), [`cluster`]
//!   (the gossip socket `rt` binds for it, snapshot files), [`discovery`]
//!   (record files) — and read the clock and spawn tasks; [`config`] reads
//!   its TOML and key files; [`metrics`] and [`addr`] do no I/O, and
//!   [`wallclock`] only reads the wall clock.
//! - [`cluster`] drives the gossip engine on the control thread
//!   (membership, gap ownership, sibling fill, warm restarts);
//!   [`discovery`] publishes this endpoint's record and looks its upstream
//!   domain up through the workers' DHT nodes. Their rule sets are in
//!   `ricochet-proto` (`ricochet_proto::cluster`, re-exported as
//!   `cluster::{machine, members, pexstore, warm}`, and
//!   `ricochet_proto::discovery`, as `discovery::machine`); these modules
//!   are their drivers.
//! - [`store`] is the Redis client for siblings sharing a cache.
//! - [`admin`] serves `/metrics`, `/healthz`, `/readyz`, `/debug/*` and
//!   `/events` on the control thread; [`otlp`] pushes the same metrics, and
//!   sampled NACK spans, to an OTLP/gRPC collector.
//! - [`config`] turns flags, environment variables and a TOML file into a
//!   validated [`config::Config`], naming the flag and the fix on error.
//! - [`manual`] writes the shell completions and the man page.
//! - [`status`] is `ricochet status`: an operator's one-screen summary of a
//!   running endpoint, read from its admin API.
//! - [`metrics`] is the leaf every reporting module writes through: the
//!   [`metrics::Section`] trait, the Prometheus text writer and label
//!   escaping. [`addr`] holds socket-address helpers, [`wallclock`] the
//!   unix time the protocol cores are given.
//!
//! # Dependency order
//! Modules import in one direction (DESIGN.md § Layout), and
//! `tests/module_cycles.rs` fails, naming a `file:line` per edge, if two
//! top-level modules come to depend on each other, in code or in tests:
//! 1. the leaves [`metrics`], [`addr`], [`wallclock`] and [`config`]
//!    depend on nothing else here (beyond the protocol crates);
//! 2. [`rt`] depends only on the leaves and the protocol cores. It owns
//!    the types it hands to and from other threads — [`rt::Control`], the
//!    shared store's queue ([`rt::store_queue`]) and the sampled-NACK
//!    records ([`rt::nack_trace`]) — so it names none of the drivers;
//! 3. the drivers depend on `rt`: [`store`], [`discovery`], and
//!    [`cluster`], which also uses `discovery`;
//! 4. [`admin`] depends on `rt` and `config` and reads the drivers only
//!    through the [`metrics::Section`]s it is handed;
//! 5. [`otlp`] depends on `admin` (it pushes the `/metrics` body) and
//!    `rt`; [`status`] on `config`; `main.rs` wires everything together.

pub use ricochet_proto::{dht, gossip, retry};

pub mod addr;
pub mod admin;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod hex;
pub mod manual;
pub mod metrics;
pub mod otlp;
pub mod rt;
pub mod status;
pub mod store;
pub mod wallclock;

/// The git commit this binary was built from: a short hash, with `-dirty`
/// when tracked files differed from it, or `unknown` outside a git
/// checkout (embedded by `build.rs`).
pub const BUILD_COMMIT: &str = env!("RICOCHET_BUILD_COMMIT");
/// The cargo profile it was built with (`debug`, `release`, …).
pub const BUILD_PROFILE: &str = env!("RICOCHET_BUILD_PROFILE");
/// `ricochet --version`: `0.1.0 (commit 1a2b3c4, profile release)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RICOCHET_BUILD_COMMIT"),
    ", profile ",
    env!("RICOCHET_BUILD_PROFILE"),
    ")"
);
