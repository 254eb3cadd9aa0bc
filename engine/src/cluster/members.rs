//! Membership: heartbeat records on topic `members` and which members are
//! live. The table is the pure state machine
//! `ricochet_proto::cluster::members` (its bytes are
//! `ricochet_wire::members`); the driver ([`super::machine`]) sets its
//! clock, publishes this endpoint's record every
//! [`super::machine::HEARTBEAT`] and reads liveness with
//! [`super::machine::LIVE_TIMEOUT`].

pub use ricochet_proto::cluster::members::*;
