//! The workers' side of the shared store (Redis, `crate::store`): the
//! requests a worker queues, the answers it gets back through its inbox,
//! and the bounded queue between them. The runtime owns these hand-off
//! types so that it does not depend on the Redis client; `crate::store`
//! serves the queue on the control thread and re-exports them.

use std::time::Duration;

use bytes::Bytes;
use ricochet_wire::frame::FrameKey;
use tokio::sync::mpsc;

/// What a claim is for (it decides the key prefix), and the store's answer
/// to a claim or a lookup: the protocol crate's types, whose router decides
/// what a worker asks and what it does with the answer.
pub use crate::retry::effects::{ClaimKind, StoreAnswer as Answer};

/// Operations queued by workers before more are answered unavailable.
pub const QUEUE_DEPTH: usize = 16_384;

/// Where an answer goes: the asking worker and its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// Worker index.
    pub worker: usize,
    /// The worker's token for the parked request.
    pub token: u64,
}

/// A request from a worker.
#[derive(Debug)]
pub enum Op {
    /// `SET prefix‖key owner NX PX window`.
    Claim {
        /// Which claim.
        kind: ClaimKind,
        /// The frame.
        key: FrameKey,
        /// Where to answer.
        reply: ReplyTo,
    },
    /// `GET bre:frame:‖key`.
    Get {
        /// The frame.
        key: FrameKey,
        /// Where to answer.
        reply: ReplyTo,
    },
    /// `SET bre:frame:‖key frame PX ttl`; no answer.
    Put {
        /// The frame's key.
        key: FrameKey,
        /// Its TTL.
        ttl: Duration,
        /// The whole datagram.
        frame: Bytes,
    },
    /// `DEL bre:frame:‖key …`: frames of a flow's old epoch, which the new
    /// epoch has not (yet) replaced; no answer.
    Delete {
        /// At most [`DELETE_BATCH`] keys.
        keys: Vec<FrameKey>,
    },
}

/// Keys one [`Op::Delete`] carries at most.
pub const DELETE_BATCH: usize = 256;

/// The workers' handle: a bounded queue to the control thread.
#[derive(Debug, Clone)]
pub struct StoreClient {
    tx: mpsc::Sender<Op>,
    /// `CACHE_BACKEND=redis`: frames are written and looked up too.
    pub shared_cache: bool,
}

impl StoreClient {
    /// Queues `op`; gives it back when the queue is full or the store task
    /// has stopped (the caller treats that as unavailable).
    pub fn try_send(&self, op: Op) -> Result<(), Op> {
        self.tx.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(op) | mpsc::error::TrySendError::Closed(op) => op,
        })
    }
}

/// The queue's receiving end, for `crate::store::run`.
#[derive(Debug)]
pub struct StoreQueue(pub(crate) mpsc::Receiver<Op>);

/// The worker handle and the queue `crate::store::run` serves.
pub fn channel(shared_cache: bool) -> (StoreClient, StoreQueue) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    (StoreClient { tx, shared_cache }, StoreQueue(rx))
}
