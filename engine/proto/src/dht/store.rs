//! The record store shard: signed records by DHT key, one per slot.
//!
//! Implements the store rules of `docs/PROTOCOL.md` § "Signed records"
//! (model from seed 001).
//!
//! # Contract
//! - A record is kept only after every check passed, cheapest first:
//!   size (over `max_record_len` is [`Refusal::Oversize`]), liveness
//!   (expired, timestamp more than `max_clock_skew` in the future, TTL over
//!   `max_ttl`), staleness (an equal or older seq than the record held for
//!   the same slot), capacity (`max_keys` distinct keys, default 100 000,
//!   and `max_records_per_key` slots under one key), then strict ed25519
//!   verification ([`Record::verify`]) and last the [`RecordPolicy`] hook.
//!   Cheap refusals come first so a flood of junk costs no signature checks;
//!   a byte-identical copy of a held record is accepted as
//!   [`Accepted::Refreshed`] without verifying it again.
//! - Reads never return an expired record, whether or not
//!   [`Store::purge_expired`] has run.
//! - Unix time is an argument; the store never reads a clock. Each record
//!   carries the [`Instant`] at which this node should next replicate it;
//!   the node pushes it back whenever someone else stores a copy here, so
//!   in steady state one holder per interval re-replicates a record, not k.

use core::fmt;
use std::collections::BTreeMap;
use std::time::Instant;

use ricochet_wire::dht::StoreStatus;
use ricochet_wire::record::{self, Record, Slot};

/// Store limits.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Most distinct keys held (per store shard).
    pub max_keys: usize,
    /// Most records (slots) under one key.
    pub max_records_per_key: usize,
    /// Largest record accepted, in bytes (at most [`record::MAX_LEN`]).
    pub max_record_len: usize,
    /// Longest TTL accepted, in seconds.
    pub max_ttl: u32,
    /// How far in the future a record's timestamp may be, in seconds.
    pub max_clock_skew: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            max_keys: 100_000,
            max_records_per_key: 32,
            max_record_len: record::MAX_LEN,
            max_ttl: 86_400,
            max_clock_skew: 300,
        }
    }
}

/// The record-authority hook: decides whether a record whose signature has
/// verified may be stored, served or returned from a lookup.
///
/// Runs after every other check, on records only; it must be cheap and
/// must not block. Typical policies: accept endpoint records only under
/// the topic keys of known domains, or only from an allow-list of
/// publisher keys.
pub trait RecordPolicy: fmt::Debug + Send {
    /// Whether `record` is acceptable.
    fn allow(&self, record: &Record<'_>) -> bool;
}

/// The default policy: every verified record is acceptable.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl RecordPolicy for AllowAll {
    fn allow(&self, _record: &Record<'_>) -> bool {
        true
    }
}

/// Why a record was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Longer than `max_record_len`.
    Oversize,
    /// Expired at the current unix time.
    Expired,
    /// Timestamp more than `max_clock_skew` ahead of the current unix time.
    FutureTimestamp,
    /// TTL over `max_ttl`.
    TtlTooLong,
    /// The store holds an equal or newer seq for the slot.
    Stale,
    /// `max_keys` distinct keys are held already.
    StoreFull,
    /// `max_records_per_key` slots are held under this key already.
    KeyFull,
    /// Strict ed25519 verification failed.
    BadSignature,
    /// The [`RecordPolicy`] refused it.
    Policy,
}

impl Refusal {
    /// The STORE_ACK status this refusal is answered with.
    pub fn status(self) -> StoreStatus {
        match self {
            Refusal::Stale => StoreStatus::StaleSeq,
            Refusal::StoreFull | Refusal::KeyFull => StoreStatus::StoreFull,
            _ => StoreStatus::Rejected,
        }
    }

    /// A short, stable, label-safe reason for drop counters.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Oversize => "record_oversize",
            Refusal::Expired => "record_expired",
            Refusal::FutureTimestamp => "record_future_timestamp",
            Refusal::TtlTooLong => "record_ttl_too_long",
            Refusal::Stale => "record_stale",
            Refusal::StoreFull => "record_store_full",
            Refusal::KeyFull => "record_key_full",
            Refusal::BadSignature => "record_bad_signature",
            Refusal::Policy => "record_policy",
        }
    }
}

/// What [`Store::put`] did with an acceptable record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A new slot.
    Stored,
    /// A newer seq replaced the slot's record.
    Replaced,
    /// A byte-identical copy of the held record (not verified again).
    Refreshed,
}

/// An owned record that passed structural checks and strict signature
/// verification.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RecordBuf {
    bytes: Box<[u8]>,
}

impl RecordBuf {
    /// Copies a record that has been verified. Crate-internal so a
    /// `RecordBuf` always holds a verified record.
    pub(crate) fn verified(record: &Record<'_>) -> Self {
        RecordBuf { bytes: record.as_bytes().into() }
    }

    /// Copies a record after strict signature verification: the way to
    /// build a `RecordBuf` outside this crate (the engine's discovery tests
    /// do). Size, liveness and policy are not checked here; see [`check`].
    pub fn new_verified(record: &Record<'_>) -> Result<Self, Refusal> {
        record.verify().map_err(|_| Refusal::BadSignature)?;
        Ok(Self::verified(record))
    }

    /// The record as a checked view (the bytes were checked on the way in,
    /// so this cannot fail).
    pub fn view(&self) -> Record<'_> {
        match Record::new_checked(&self.bytes) {
            Ok(record) => record,
            Err(_) => unreachable!("a RecordBuf holds a checked record"),
        }
    }

    /// The record's wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for RecordBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.view();
        f.debug_struct("RecordBuf")
            .field("type", &r.record_type())
            .field("key", &super::NodeId(*r.key()))
            .field("seq", &r.seq())
            .field("expires_at", &r.expires_at())
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Checks a record everything but staleness and capacity: size, liveness
/// at `now_unix`, strict signature, policy (in that order). Used for
/// records a lookup returns, which are not stored.
pub fn check(
    record: &Record<'_>,
    now_unix: u64,
    settings: &StoreSettings,
    policy: &dyn RecordPolicy,
) -> Result<(), Refusal> {
    cheap_checks(record, now_unix, settings)?;
    record.verify().map_err(|_| Refusal::BadSignature)?;
    if !policy.allow(record) {
        return Err(Refusal::Policy);
    }
    Ok(())
}

fn cheap_checks(
    record: &Record<'_>,
    now_unix: u64,
    settings: &StoreSettings,
) -> Result<(), Refusal> {
    if record.as_bytes().len() > settings.max_record_len {
        return Err(Refusal::Oversize);
    }
    if record.is_expired(now_unix) {
        return Err(Refusal::Expired);
    }
    if record.timestamp() > now_unix.saturating_add(settings.max_clock_skew) {
        return Err(Refusal::FutureTimestamp);
    }
    if record.ttl() > settings.max_ttl {
        return Err(Refusal::TtlTooLong);
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Stored {
    buf: RecordBuf,
    slot: Slot,
    seq: u64,
    expires_at: u64,
    replicate_at: Instant,
}

/// One shard of the record store.
#[derive(Debug)]
pub struct Store {
    settings: StoreSettings,
    policy: Box<dyn RecordPolicy>,
    keys: BTreeMap<[u8; 32], Vec<Stored>>,
    records: usize,
    verifications: u64,
}

impl Store {
    /// An empty store.
    pub fn new(settings: StoreSettings, policy: Box<dyn RecordPolicy>) -> Self {
        Store { settings, policy, keys: BTreeMap::new(), records: 0, verifications: 0 }
    }

    /// The settings in force.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// The record policy.
    pub fn policy(&self) -> &dyn RecordPolicy {
        &*self.policy
    }

    /// Distinct keys held (expired records not yet purged included).
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Records held (expired records not yet purged included).
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Signature verifications performed so far.
    pub fn verifications(&self) -> u64 {
        self.verifications
    }

    /// Offers `record` to the store at `now_unix` (see the module docs for
    /// the order of checks). On acceptance the record's next replication is
    /// set to `replicate_at`.
    pub fn put(
        &mut self,
        now_unix: u64,
        record: &Record<'_>,
        replicate_at: Instant,
    ) -> Result<Accepted, Refusal> {
        cheap_checks(record, now_unix, &self.settings)?;
        let slot = record.slot();
        let key = *record.key();
        let held = self.keys.get(&key);
        let existing = held.and_then(|rs| rs.iter().position(|s| s.slot == slot));
        if let (Some(rs), Some(pos)) = (held, existing) {
            let s = &rs[pos];
            if *s.buf.as_bytes() == *record.as_bytes() {
                if let Some(s) = self.keys.get_mut(&key).and_then(|rs| rs.get_mut(pos)) {
                    s.replicate_at = s.replicate_at.max(replicate_at);
                }
                return Ok(Accepted::Refreshed);
            }
            if record.seq() <= s.seq {
                return Err(Refusal::Stale);
            }
        } else {
            match held {
                None if self.keys.len() >= self.settings.max_keys => {
                    return Err(Refusal::StoreFull);
                }
                Some(rs) if rs.len() >= self.settings.max_records_per_key => {
                    return Err(Refusal::KeyFull);
                }
                _ => {}
            }
        }
        self.verifications += 1;
        record.verify().map_err(|_| Refusal::BadSignature)?;
        if !self.policy.allow(record) {
            return Err(Refusal::Policy);
        }
        let stored = Stored {
            buf: RecordBuf::verified(record),
            slot,
            seq: record.seq(),
            expires_at: record.expires_at(),
            replicate_at,
        };
        let rs = self.keys.entry(key).or_default();
        match existing {
            Some(pos) => {
                rs[pos] = stored;
                Ok(Accepted::Replaced)
            }
            None => {
                rs.push(stored);
                self.records += 1;
                Ok(Accepted::Stored)
            }
        }
    }

    /// The live records under `key` at `now_unix`.
    pub fn get<'s>(
        &'s self,
        key: &[u8; 32],
        now_unix: u64,
    ) -> impl Iterator<Item = &'s RecordBuf> + 's {
        self.keys
            .get(key)
            .into_iter()
            .flatten()
            .filter(move |s| now_unix < s.expires_at)
            .map(|s| &s.buf)
    }

    /// Every live record, by key.
    pub fn iter(&self, now_unix: u64) -> impl Iterator<Item = &RecordBuf> + '_ {
        self.keys.values().flatten().filter(move |s| now_unix < s.expires_at).map(|s| &s.buf)
    }

    /// Drops every record expired at `now_unix`; returns how many.
    pub fn purge_expired(&mut self, now_unix: u64) -> usize {
        let before = self.records;
        self.keys.retain(|_, rs| {
            rs.retain(|s| now_unix < s.expires_at);
            !rs.is_empty()
        });
        self.records = self.keys.values().map(Vec::len).sum();
        before - self.records
    }

    /// Up to `max` keys holding a live record due for replication at `now`.
    pub(crate) fn due_keys(&self, now: Instant, now_unix: u64, max: usize) -> Vec<[u8; 32]> {
        self.keys
            .iter()
            .filter(|(_, rs)| rs.iter().any(|s| s.replicate_at <= now && now_unix < s.expires_at))
            .map(|(k, _)| *k)
            .take(max)
            .collect()
    }

    /// The live records under `key` due for replication at `now`; their
    /// next replication moves to `next`.
    pub(crate) fn take_due(
        &mut self,
        now: Instant,
        now_unix: u64,
        key: &[u8; 32],
        next: Instant,
    ) -> Vec<RecordBuf> {
        let Some(rs) = self.keys.get_mut(key) else { return Vec::new() };
        rs.iter_mut()
            .filter(|s| s.replicate_at <= now && now_unix < s.expires_at)
            .map(|s| {
                s.replicate_at = next;
                s.buf.clone()
            })
            .collect()
    }
}
