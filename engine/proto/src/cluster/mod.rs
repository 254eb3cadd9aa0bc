//! The cluster's pure state machines, driven by the engine's `cluster`
//! module: no I/O, no clock (the caller sets the wall clock it judges by).
//!
//! - [`members`]: heartbeat records on topic `members` — last-writer-wins
//!   merge, liveness, the gossip `Store` of the topic.

pub mod members;
