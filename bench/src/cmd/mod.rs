//! One module per `ricochet-loadgen` subcommand.

pub mod bench;
pub mod lab;
pub mod listen;
pub mod memory;
pub mod nack;
pub mod publish;
pub mod reflect;
