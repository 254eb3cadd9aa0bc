//! The shared store: a Redis server that sibling endpoints of one domain
//! share, as the reference endpoint's `REDIS_ADDR` and `CACHE_BACKEND=redis`.
//!
//! # What it is used for
//! - `REDIS_ADDR` set (any cache backend): cross-instance claims made with
//!   `SET key owner NX PX window`:
//!   - `bre:dedup:` ‖ HashKey ‖ SeqNum (16 bytes, big-endian), held for
//!     `DEDUP_WINDOW`: one multicast retransmit of a frame per window among
//!     the siblings;
//!   - `bre:proxy:` ‖ HashKey ‖ SeqNum, held for `PROXY_DEDUP_WINDOW`: one
//!     upstream fetch of a gap among the siblings.
//! - `CACHE_BACKEND=redis` in addition: every frame cached is also written
//!   to `bre:frame:` ‖ HashKey ‖ SeqNum with its class's TTL, and a NACK
//!   that misses the local cache is looked up there before it is answered.
//!   When a flow starts a new epoch (its proxy restarted and reused the
//!   HashKey), the new epoch's frames are written again and the keys of
//!   the old epoch's other frames this endpoint held are deleted (`DEL`),
//!   so a sibling does not serve a pre-restart frame for a post-restart
//!   gap. Writes and deletes are not ordered against each
//!   other: a delete overtaken by a later write of the new epoch can only
//!   turn that frame into a miss.
//!
//! The reference keys its retransmit dedup by SeqNum alone; ricochet adds
//! the HashKey, because SeqNums are per flow and equal SeqNums of different
//! flows would otherwise suppress each other's retransmits. Reference and
//! ricochet endpoints sharing one Redis therefore share proxy claims and
//! frames but not retransmit dedup.
//!
//! # Threads and failure
//! Workers never wait for Redis. They queue an [`Op`] with
//! [`StoreClient::try_send`] (a full queue is answered on the spot as
//! unavailable) and carry on; this module runs on the control thread,
//! performs the command with `CACHE_OP_TIMEOUT`, and hands the [`Answer`]
//! back to the asking worker through its inbox. While Redis is unreachable
//! (a failed command, or the health PING every 500 ms failing) every
//! request is answered unavailable at once, without waiting for a timeout:
//! claims fall back to each worker's local claims (dedup within this
//! endpoint only), lookups count as misses, writes are dropped. A warning
//! is logged at each transition and `ricochet_redis_up` says which state
//! it is in; when the PING succeeds again, Redis is used again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ricochet_wire::frame::FrameKey;
use tokio::sync::Semaphore;

use crate::metrics;
use crate::retry::ClaimResult;
use crate::rt::Control;
pub use crate::rt::store_queue::{
    Answer, ClaimKind, DELETE_BATCH, Op, QUEUE_DEPTH, ReplyTo, StoreClient, StoreQueue, channel,
};

/// Commands in flight at once; more are answered unavailable.
const IN_FLIGHT: usize = 1024;
/// Health check period.
const PING_EVERY: Duration = Duration::from_millis(500);

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `REDIS_ADDR` as `host:port`.
    pub addr: String,
    /// `CACHE_BACKEND=redis`.
    pub shared_cache: bool,
    /// `CACHE_DIAL_TIMEOUT`.
    pub dial_timeout: Duration,
    /// `CACHE_OP_TIMEOUT`.
    pub op_timeout: Duration,
    /// `DEDUP_WINDOW`: retransmit claims.
    pub dedup_window: Duration,
    /// `PROXY_DEDUP_WINDOW`: upstream-fetch claims.
    pub proxy_window: Duration,
    /// Written as the claims' value, so an operator can see who holds one.
    pub owner: String,
}

/// Counters and the up gauge, shared with the admin listener.
#[derive(Debug, Default)]
pub struct StoreStats {
    up: AtomicBool,
    claims_won: AtomicU64,
    claims_lost: AtomicU64,
    gets_hit: AtomicU64,
    gets_miss: AtomicU64,
    puts: AtomicU64,
    deletes: AtomicU64,
    errors: AtomicU64,
    unavailable: AtomicU64,
    transitions_down: AtomicU64,
    addr: std::sync::Mutex<String>,
}

impl StoreStats {
    /// Whether Redis answered the last command or health check.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl metrics::Section for StoreStats {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn metrics(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metrics::gauge(
            out,
            "ricochet_redis_up",
            "1 while the shared Redis answers, 0 while claims fall back to local dedup.",
            f64::from(u8::from(self.up())),
        );
        let ops = [
            ("claim", "won", &self.claims_won),
            ("claim", "lost", &self.claims_lost),
            ("get", "hit", &self.gets_hit),
            ("get", "miss", &self.gets_miss),
            ("put", "ok", &self.puts),
            ("del", "ok", &self.deletes),
        ]
        .map(|(op, result, c)| (format!("op=\"{op}\",result=\"{result}\""), get(c)));
        metrics::labelled(
            out,
            "ricochet_redis_ops_total",
            "counter",
            "Redis commands by operation and result.",
            &ops,
        );
        for (name, help, c) in [
            (
                "ricochet_redis_errors_total",
                "Redis commands that failed or timed out.",
                &self.errors,
            ),
            (
                "ricochet_redis_unavailable_total",
                "Requests answered unavailable at once because Redis was down or busy.",
                &self.unavailable,
            ),
            (
                "ricochet_redis_down_total",
                "Times Redis became unreachable.",
                &self.transitions_down,
            ),
        ] {
            metrics::counter(out, name, help, get(c));
        }
    }

    fn debug(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "addr": self.addr.lock().map(|a| a.clone()).unwrap_or_default(),
            "up": self.up(),
            "claims_won": get(&self.claims_won),
            "claims_lost": get(&self.claims_lost),
            "gets_hit": get(&self.gets_hit),
            "gets_miss": get(&self.gets_miss),
            "puts": get(&self.puts),
            "deletes": get(&self.deletes),
            "errors": get(&self.errors),
            "unavailable": get(&self.unavailable),
            "times_down": get(&self.transitions_down),
        })
    }

    /// Commands that failed or timed out, and requests answered unavailable
    /// at once.
    fn cache_errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed) + self.unavailable.load(Ordering::Relaxed)
    }
}

/// The Redis key of a frame under `prefix`.
pub fn redis_key(prefix: &[u8], key: FrameKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 16);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&key.hash_key.to_be_bytes());
    k.extend_from_slice(&key.seq.to_be_bytes());
    k
}

/// Serves the workers' requests until every [`StoreClient`] is dropped.
/// Returns an error only if the address cannot form a Redis URL.
pub async fn run(
    settings: StoreSettings,
    queue: StoreQueue,
    control: Control,
    stats: Arc<StoreStats>,
) -> Result<(), String> {
    let url = format!("redis://{}/", settings.addr);
    let client = redis::Client::open(url.as_str())
        .map_err(|e| format!("--redis-addr (REDIS_ADDR) = {}: {e}", settings.addr))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.dial_timeout))
        .set_response_timeout(Some(settings.op_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| format!("--redis-addr (REDIS_ADDR) = {}: {e}", settings.addr))?;
    if let Ok(mut a) = stats.addr.lock() {
        a.clone_from(&settings.addr);
    }
    let settings = Arc::new(settings);
    tokio::spawn(health(conn.clone(), settings.clone(), stats.clone()));
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut rx = queue.0;
    while let Some(op) = rx.recv().await {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) if stats.up() => p,
            _ => {
                bump(&stats.unavailable);
                unavailable(&control, op);
                continue;
            }
        };
        let (conn, settings, stats, control) =
            (conn.clone(), settings.clone(), stats.clone(), control.clone());
        tokio::spawn(async move {
            execute(conn, &settings, &stats, &control, op).await;
            drop(permit);
        });
    }
    Ok(())
}

/// Answers `op` as unavailable.
fn unavailable(control: &Control, op: Op) {
    match op {
        Op::Claim { reply, .. } => control.answer(reply, Answer::Claim(ClaimResult::Unavailable)),
        Op::Get { reply, .. } => control.answer(reply, Answer::Get(Err(()))),
        Op::Put { .. } | Op::Delete { .. } => {}
    }
}

async fn execute(
    mut conn: ConnectionManager,
    s: &StoreSettings,
    stats: &StoreStats,
    control: &Control,
    op: Op,
) {
    let mut cmd = redis::cmd("SET");
    let (reply, is_claim) = match &op {
        Op::Claim { kind, key, reply } => {
            let (prefix, window): (&[u8], _) = match kind {
                ClaimKind::Retransmit => (b"bre:dedup:", s.dedup_window),
                ClaimKind::Proxy => (b"bre:proxy:", s.proxy_window),
            };
            cmd.arg(redis_key(prefix, *key))
                .arg(s.owner.as_bytes())
                .arg("NX")
                .arg("PX")
                .arg(window.as_millis().max(1) as u64);
            (Some(*reply), true)
        }
        Op::Get { key, reply } => {
            cmd = redis::cmd("GET");
            cmd.arg(redis_key(b"bre:frame:", *key));
            (Some(*reply), false)
        }
        Op::Put { key, ttl, frame } => {
            cmd.arg(redis_key(b"bre:frame:", *key))
                .arg(frame.as_ref())
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            (None, false)
        }
        Op::Delete { keys } => {
            cmd = redis::cmd("DEL");
            for key in keys {
                cmd.arg(redis_key(b"bre:frame:", *key));
            }
            (None, false)
        }
    };
    let result =
        tokio::time::timeout(s.op_timeout, cmd.query_async::<redis::Value>(&mut conn)).await;
    let value = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return failed(stats, control, op, &e.to_string()),
        Err(_) => return failed(stats, control, op, "timed out"),
    };
    let Some(reply) = reply else {
        bump(if matches!(op, Op::Delete { .. }) { &stats.deletes } else { &stats.puts });
        return;
    };
    let answer = if is_claim {
        // SET NX answers OK when it set the key and nil when it existed.
        if matches!(value, redis::Value::Nil) {
            bump(&stats.claims_lost);
            Answer::Claim(ClaimResult::Lost)
        } else {
            bump(&stats.claims_won);
            Answer::Claim(ClaimResult::Won)
        }
    } else {
        match value {
            redis::Value::BulkString(b) => {
                bump(&stats.gets_hit);
                Answer::Get(Ok(Some(Bytes::from(b))))
            }
            _ => {
                bump(&stats.gets_miss);
                Answer::Get(Ok(None))
            }
        }
    };
    control.answer(reply, answer);
}

/// A command failed: answer unavailable and mark Redis down until the
/// health check succeeds.
fn failed(stats: &StoreStats, control: &Control, op: Op, why: &str) {
    bump(&stats.errors);
    if stats.up.swap(false, Ordering::Relaxed) {
        bump(&stats.transitions_down);
        tracing::warn!(
            error = why,
            "Redis unreachable: claims fall back to local dedup on each worker, shared-cache lookups count as misses"
        );
    }
    unavailable(control, op);
}

/// PINGs Redis every [`PING_EVERY`] and flips the up flag, logging each
/// transition.
async fn health(mut conn: ConnectionManager, s: Arc<StoreSettings>, stats: Arc<StoreStats>) {
    let mut first = true;
    loop {
        let ping = redis::cmd("PING");
        let ok = matches!(
            tokio::time::timeout(s.op_timeout, ping.query_async::<redis::Value>(&mut conn)).await,
            Ok(Ok(_))
        );
        let was = stats.up.swap(ok, Ordering::Relaxed);
        if ok && !was {
            tracing::info!(addr = %s.addr, "Redis reachable: claims are shared with sibling endpoints");
        } else if !ok && (was || first) {
            bump(&stats.transitions_down);
            tracing::warn!(addr = %s.addr, "Redis unreachable: claims fall back to local dedup on each worker until it answers again");
        }
        first = false;
        tokio::time::sleep(PING_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition bytes, pinned: written through `crate::metrics`
    /// since the writer moved there, and unchanged by the move.
    #[test]
    fn metrics_text_is_pinned() {
        use crate::metrics::Section as _;
        let stats = StoreStats::default();
        stats.up.store(true, Ordering::Relaxed);
        stats.claims_lost.store(2, Ordering::Relaxed);
        stats.errors.store(3, Ordering::Relaxed);
        let mut out = String::new();
        stats.metrics(&mut out);
        let mut want = String::from(
            "# HELP ricochet_redis_up 1 while the shared Redis answers, 0 while claims fall \
             back to local dedup.\n# TYPE ricochet_redis_up gauge\nricochet_redis_up 1\n\
             # HELP ricochet_redis_ops_total Redis commands by operation and result.\n\
             # TYPE ricochet_redis_ops_total counter\n\
             ricochet_redis_ops_total{op=\"claim\",result=\"won\"} 0\n\
             ricochet_redis_ops_total{op=\"claim\",result=\"lost\"} 2\n\
             ricochet_redis_ops_total{op=\"get\",result=\"hit\"} 0\n\
             ricochet_redis_ops_total{op=\"get\",result=\"miss\"} 0\n\
             ricochet_redis_ops_total{op=\"put\",result=\"ok\"} 0\n\
             ricochet_redis_ops_total{op=\"del\",result=\"ok\"} 0\n",
        );
        for (name, help, v) in [
            ("ricochet_redis_errors_total", "Redis commands that failed or timed out.", 3),
            (
                "ricochet_redis_unavailable_total",
                "Requests answered unavailable at once because Redis was down or busy.",
                0,
            ),
            ("ricochet_redis_down_total", "Times Redis became unreachable.", 0),
        ] {
            want += &format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n");
        }
        assert_eq!(out, want);
        stats.up.store(false, Ordering::Relaxed);
        out.clear();
        stats.metrics(&mut out);
        assert!(out.contains("\nricochet_redis_up 0\n"), "{out}");
    }

    #[test]
    fn keys_are_the_prefix_then_hashkey_and_seq_big_endian() {
        let k = redis_key(b"bre:proxy:", FrameKey { hash_key: 0x0102_0304_0506_0708, seq: 9 });
        assert_eq!(&k[..10], b"bre:proxy:");
        assert_eq!(&k[10..], &[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn a_full_queue_gives_the_op_back() {
        let (client, _queue) = channel(false);
        let key = FrameKey { hash_key: 1, seq: 1 };
        for _ in 0..QUEUE_DEPTH {
            client
                .try_send(Op::Put { key, ttl: Duration::from_secs(1), frame: Bytes::new() })
                .unwrap();
        }
        let back =
            client.try_send(Op::Put { key, ttl: Duration::from_secs(1), frame: Bytes::new() });
        assert!(matches!(back, Err(Op::Put { .. })));
    }
}
