//! The cluster's pure state machines, driven by the engine's `cluster`
//! module: no I/O, no clock (time enters as `now`, and the caller sets
//! the wall clock records are judged by).
//!
//! - [`machine`]: the cluster core — one gossip engine plus membership,
//!   peer exchange and warm restarts; every decision, no socket.
//! - [`members`]: heartbeat records on topic `members` — last-writer-wins
//!   merge, liveness, the gossip `Store` of the topic.
//! - [`pexstore`]: the gossip `Store` of topic `pex`, over the PEX book.
//! - [`warm`]: warm restarts — serving a snapshot of the hot cache to a
//!   sibling and fetching one.

pub mod machine;
pub mod members;
pub mod pexstore;
pub mod warm;
