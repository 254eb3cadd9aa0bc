//! G4 IBLT reconciliation sessions, both sides: the initiator's
//! ([`OutSession`]: it sends a fixed table or a rateless stream, then the
//! records the reply asks for) and the responder's ([`InSession`]: it
//! decodes, sends the records the initiator lacks and a reply naming the
//! keys it lacks itself).
//!
//! Invariants: a session ends once (completed, refused or timed out), and a
//! finished responder session is kept until its deadline so late frames
//! are recognised, never answered again; cells sent in answer to requests
//! are bounded by the session's budget, symbols by
//! [`Config::reconcile_max_symbols`] and tables by
//! [`Config::reconcile_max_cells`]; a responder asks again for missing
//! cells at most [`MAX_GAP_REQUESTS`] times; sessions in flight are bounded
//! by [`Config::max_reconcile_sessions`] (responder) and
//! [`Config::max_inbound_exchanges`] (initiator, with G1 exchanges); a
//! peer's watermarks move only when a session completes without
//! backpressure.

use core::net::SocketAddr;
use std::time::Instant;

use ricochet_wire::gossip::{
    Cells, ExchangeRepr, GossipFrame, IbltCell, ReconcileKind, ReconcileMode, ReconcileRepr,
};

#[cfg(doc)]
use super::super::Config;
use super::super::entries::{Entries, META_BACKPRESSURE};
use super::super::iblt::{self, Difference, HASH_COUNT, Iblt, RatelessEncoder};
use super::super::reconcile::{self, Assembly, Fed, Stream};
use super::super::sync::Outcome;
use super::exchange::{Chunks, outcome_of};
use super::{Gossip, RESPONSE_BIT, Timer};

/// Times a G4 session we decode asks again for cells that did not arrive.
const MAX_GAP_REQUESTS: u8 = 3;

/// A G4 reconciliation session we started: we hold the table or stream.
#[derive(Debug)]
pub(super) struct OutSession {
    pub(super) peer: SocketAddr,
    pub(super) topic: Vec<u8>,
    mode: ReconcileMode,
    /// Extended on every frame of progress.
    deadline: Instant,
    /// Our store's watermark when the table was built.
    mark: i64,
    /// Fixed: the whole table. Rateless: the symbols produced so far (kept
    /// for re-requests; at most `reconcile_max_symbols`).
    cells: Vec<IbltCell>,
    encoder: Option<RatelessEncoder>,
    per_frame: usize,
    /// Cells we may still send in answer to requests (so a peer cannot make
    /// us resend a table or stream without end).
    budget: usize,
    /// The keys the responder lacks, as the reply arrives.
    reply: Option<Assembly>,
    /// We sent the records the reply asked for.
    answered: bool,
    /// The responder's record chunks, and its watermark.
    records: Option<(Chunks, i64)>,
    applied: u64,
    backpressure: bool,
}

/// A peer's G4 session we are decoding.
#[derive(Debug)]
pub(super) struct InSession {
    pub(super) topic: Vec<u8>,
    mode: ReconcileMode,
    pub(super) deadline: Instant,
    per_frame: usize,
    pub(super) state: InState,
    /// When to ask again for cells that have not arrived (pushed back by
    /// every frame of progress), if armed.
    gap_at: Option<Instant>,
    /// A `Timer::Gap` for this session is pending.
    gap_timer: bool,
    gap_requests: u8,
}

#[derive(Debug)]
pub(super) enum InState {
    /// A fixed table arriving.
    Table(Assembly),
    /// A rateless stream arriving.
    Stream(Box<Stream>),
    /// Decoded and answered; the records we asked for are on their way.
    Awaiting { chunks: Option<Chunks>, applied: u64 },
    /// Finished or failed; kept until the deadline so late frames of the
    /// session are recognised and ignored.
    Done,
}

impl InSession {
    /// Whether the session still decodes or awaits records.
    pub(super) fn active(&self) -> bool {
        !matches!(self.state, InState::Done)
    }
}

impl Gossip {
    /// Starts a session with `peer` for `topic`: a fixed table sized from
    /// the estimate, or (`rateless`, or an estimate too large for a table) a
    /// first burst of rateless symbols, `first_burst` of them if given.
    /// False if our session table is full or the topic has no store.
    pub(super) fn start_reconcile(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        topic: &[u8],
        rateless: bool,
        first_burst: Option<usize>,
    ) -> bool {
        if self.outbound.len() + self.out_sessions.len() >= self.config.max_inbound_exchanges {
            return false;
        }
        let sent = self.peers.get(&peer).and_then(|p| p.topics.get(topic)).and_then(|ps| ps.sent);
        let per_frame = reconcile::cells_per_datagram(self.config.max_datagram, topic.len());
        let max_cells = self.max_table_cells();
        let max_symbols = self.max_symbols();
        let max_burst = per_frame.saturating_mul(self.config.reconcile_burst.max(1));
        let Some(store) = self.store(topic) else { return false };
        let ids = store.element_ids();
        let mark = store.watermark().max(0);
        let d = reconcile::estimate(sent.map_or(0, |s| store.delta_since(s).len()));
        let table = if rateless { None } else { reconcile::table_cells(d, per_frame, max_cells) };
        let (mode, cells, encoder) = match table {
            Some(m) => match Iblt::from_keys(m, ids) {
                Ok(t) => (ReconcileMode::Fixed, t.cells().to_vec(), None),
                Err(_) => return false,
            },
            None => {
                let want = first_burst.unwrap_or_else(|| {
                    reconcile::table_cells(d, per_frame, usize::MAX).unwrap_or(per_frame)
                });
                let burst = want.clamp(per_frame, max_burst.max(per_frame)).min(max_symbols);
                let mut enc = RatelessEncoder::new(ids);
                (ReconcileMode::Rateless, enc.next_symbols(burst), Some(enc))
            }
        };
        let id = self.fresh_exchange_id();
        let end = cells.len();
        // Requests may fetch a table three times more (lost frames), a
        // stream up to twice the symbol cap.
        let budget = match mode {
            ReconcileMode::Fixed => end.saturating_mul(3),
            ReconcileMode::Rateless => max_symbols.saturating_mul(2),
        };
        let sent_cells =
            self.send_cells(peer, ReconcileKind::Table, id, mode, topic, &cells, 0, end, per_frame);
        self.stats.reconcile_started += 1;
        if mode == ReconcileMode::Rateless {
            self.stats.reconcile_rateless += 1;
        }
        self.stats.reconcile_cells_sent += sent_cells;
        let deadline = now + self.config.exchange_timeout;
        self.out_sessions.insert(
            id,
            OutSession {
                peer,
                topic: topic.to_vec(),
                mode,
                deadline,
                mark,
                cells,
                encoder,
                per_frame,
                budget,
                reply: None,
                answered: false,
                records: None,
                applied: 0,
                backpressure: false,
            },
        );
        self.timers.insert((deadline, Timer::Reconcile(id)));
        true
    }

    pub(super) fn on_reconcile(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) {
        match r.kind {
            ReconcileKind::Table => self.on_table(now, from, r),
            ReconcileKind::Reply => self.on_reply(now, from, r),
            ReconcileKind::Request if r.cells.is_empty() => self.on_cell_request(now, from, r),
            // Keys wanted by request: this engine asks by reply only.
            ReconcileKind::Request => self.stats.drops.reconcile_mismatch += 1,
            ReconcileKind::DecodeFailed => self.on_decode_failed(now, from, r),
        }
    }

    /// Responder: a frame of a peer's table or stream.
    fn on_table(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) {
        if !self.admit_merge_topic(r.topic) {
            return;
        }
        let key = (from, r.session_id);
        if !self.in_sessions.contains_key(&key) && !self.open_session(now, from, r) {
            return;
        }
        let Some(mut s) = self.in_sessions.remove(&key) else { return };
        if s.topic != r.topic || s.mode != r.mode {
            self.stats.drops.reconcile_mismatch += 1;
            self.in_sessions.insert(key, s);
            return;
        }
        let (first, end, n) = (r.first_cell as usize, r.end_cell as usize, r.cells.len());
        let timeout = self.config.exchange_timeout;
        match &mut s.state {
            InState::Table(asm) => {
                self.stats.reconcile_cells_received += n as u64;
                if end != asm.len() || asm.place(first, r.cells).is_none() {
                    self.stats.drops.reconcile_mismatch += 1;
                } else if asm.complete() {
                    let ids = self.store(r.topic).map(|st| st.element_ids()).unwrap_or_default();
                    match reconcile::decode_table(asm.cells(), ids) {
                        Ok(diff) => self.finish_decoded(now, from, r.session_id, &mut s, &diff),
                        Err(_) => self.refuse_session(from, r.session_id, &mut s),
                    }
                } else {
                    s.deadline = now + timeout;
                    self.arm_gap(now, from, r.session_id, &mut s);
                }
            }
            InState::Stream(st) => {
                self.stats.reconcile_cells_received += n as u64;
                if end > self.max_symbols() {
                    self.refuse_session(from, r.session_id, &mut s);
                } else {
                    match st.feed(u64::from(r.first_cell), u64::from(r.end_cell), r.cells) {
                        Fed::Decoded => {
                            self.stats.reconcile_symbols_used += st.received();
                            let diff = st.difference().unwrap_or_default();
                            self.finish_decoded(now, from, r.session_id, &mut s, &diff);
                        }
                        Fed::Failed => self.refuse_session(from, r.session_id, &mut s),
                        Fed::Refused => self.stats.drops.reconcile_mismatch += 1,
                        Fed::Pending => {
                            s.deadline = now + timeout;
                            self.stream_progress(now, from, r.session_id, &mut s);
                        }
                    }
                }
            }
            InState::Awaiting { .. } | InState::Done => {}
        }
        self.in_sessions.insert(key, s);
    }

    /// Responder: a pending stream took a frame. Asks for the next burst
    /// once the current one is in (refusing the stream at the symbol cap),
    /// else waits for the rest of the burst.
    fn stream_progress(&mut self, now: Instant, to: SocketAddr, id: u32, s: &mut InSession) {
        let InState::Stream(st) = &mut s.state else { return };
        let max = self.max_symbols() as u64;
        let per = s.per_frame;
        if st.wants_more() {
            let got = st.received();
            if got >= max {
                self.refuse_session(to, id, s);
                return;
            }
            let end = (got + reconcile::next_burst(got, per, self.config.reconcile_burst)).min(max);
            st.requested(end);
            let topic = s.topic.clone();
            self.request_cells(to, id, s.mode, &topic, got as usize, end as usize);
        }
        // Whether the rest of this burst or the next is awaited, ask again
        // if it does not come.
        self.arm_gap(now, to, id, s);
    }

    /// Responder: cells of the table or burst are still to come; unless
    /// they arrive within [`Config::ack_timeout`] (frames reorder), ask for
    /// them again.
    fn arm_gap(&mut self, now: Instant, from: SocketAddr, id: u32, s: &mut InSession) {
        if s.gap_requests >= MAX_GAP_REQUESTS {
            return;
        }
        let at = now + self.config.ack_timeout;
        s.gap_at = Some(at);
        if !s.gap_timer {
            s.gap_timer = true;
            self.timers.insert((at, Timer::Gap(from, id)));
        }
    }

    /// Responder: the gap timer fired. Unless frames arrived since, asks for
    /// the span of cells still missing (from the first to the last gap) and
    /// re-arms, at most [`MAX_GAP_REQUESTS`] times per session.
    pub(super) fn gap_timeout(&mut self, now: Instant, from: SocketAddr, id: u32) {
        let Some(mut s) = self.in_sessions.remove(&(from, id)) else { return };
        s.gap_timer = false;
        if let Some(at) = s.gap_at.filter(|&t| t > now) {
            // Frames arrived since: wait on.
            s.gap_timer = true;
            self.timers.insert((at, Timer::Gap(from, id)));
        } else if s.gap_at.is_some() {
            s.gap_at = None;
            let span = match &s.state {
                InState::Table(asm) => asm.missing_span(),
                InState::Stream(st) => {
                    // The rest of the burst (up to the first frame past a
                    // gap), or the burst we asked for.
                    let upto = st.gap().map_or(st.burst_end().max(st.requested_end()), |(_, b)| b);
                    (st.received() < upto).then_some((st.received() as usize, upto as usize))
                }
                _ => None,
            };
            if let Some((a, b)) = span {
                s.gap_requests += 1;
                let topic = s.topic.clone();
                self.request_cells(from, id, s.mode, &topic, a, b);
                self.arm_gap(now, from, id, &mut s);
            }
        }
        self.in_sessions.insert((from, id), s);
    }

    /// Responder: the first frame of a session. False if it is refused
    /// (counted, and answered where the initiator can act on it).
    fn open_session(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) -> bool {
        let priority = self.config.sync_priority;
        let cap = self.config.max_reconcile_sessions;
        if self.overloaded() {
            self.stats.backpressure_sent += 1;
            let c = self.chunk(r.topic, &[] as &[&[u8]], 0, META_BACKPRESSURE);
            self.emit_chunks(from, r.topic, r.session_id | RESPONSE_BIT, false, 0, &c, priority);
            // Remember the session, so its other frames are not answered again.
            if self.in_sessions.len() < cap.saturating_mul(4) {
                let s = InSession {
                    topic: r.topic.to_vec(),
                    mode: r.mode,
                    deadline: now + self.config.exchange_timeout,
                    per_frame: 1,
                    state: InState::Done,
                    gap_at: None,
                    gap_timer: false,
                    gap_requests: 0,
                };
                self.in_sessions.insert((from, r.session_id), s);
            }
            return false;
        }
        let full = |g: &Self| {
            g.in_sessions.values().filter(|s| s.active()).count() >= cap
                || g.in_sessions.len() >= cap.saturating_mul(4).max(1)
        };
        if full(self) {
            self.sweep(now);
            if self.in_sessions.len() >= cap.saturating_mul(4).max(1) {
                self.in_sessions.retain(|_, s| s.active());
            }
        }
        if full(self) {
            self.stats.drops.reconcile_table_full += 1;
            return false;
        }
        let per_frame = reconcile::cells_per_datagram(self.config.max_datagram, r.topic.len());
        let state = match r.mode {
            ReconcileMode::Fixed => {
                let m = r.end_cell as usize;
                if m < HASH_COUNT {
                    self.stats.drops.reconcile_mismatch += 1;
                    return false;
                }
                if m > self.max_table_cells() {
                    // Too large for us: the initiator streams instead.
                    InState::Done
                } else {
                    InState::Table(Assembly::new(m))
                }
            }
            ReconcileMode::Rateless => {
                let ids = self.store(r.topic).map(|st| st.element_ids()).unwrap_or_default();
                let pending = self.config.reconcile_burst.max(1);
                InState::Stream(Box::new(Stream::new(ids, self.max_symbols(), pending)))
            }
        };
        if let Some(round) = self.round.as_mut().filter(|x| x.peer == from) {
            round.syncing = true;
        }
        let mut s = InSession {
            topic: r.topic.to_vec(),
            mode: r.mode,
            deadline: now + self.config.exchange_timeout,
            per_frame,
            state,
            gap_at: None,
            gap_timer: false,
            gap_requests: 0,
        };
        if matches!(s.state, InState::Done) {
            self.refuse_session(from, r.session_id, &mut s);
        }
        self.in_sessions.insert((from, r.session_id), s);
        true
    }

    /// Responder: the difference is known. Sends the records the initiator
    /// lacks (G1, at least one chunk) and the reply naming the keys we lack.
    fn finish_decoded(
        &mut self,
        now: Instant,
        to: SocketAddr,
        id: u32,
        s: &mut InSession,
        diff: &Difference,
    ) {
        self.stats.reconcile_decoded += 1;
        self.stats.reconcile_differences += diff.len() as u64;
        s.state = InState::Done;
        let Some(store) = self.store(&s.topic) else { return };
        // Seen from here, side A is ours: `only_in_a` is what the initiator
        // lacks, `only_in_b` what we lack.
        let records = store.records_for(&diff.only_in_a);
        let mark = store.watermark().max(0);
        let meta = if self.overloaded() { META_BACKPRESSURE } else { 0 };
        let topic = s.topic.clone();
        let c = self.chunk(&topic, &records, self.config.max_exchange_bytes, meta);
        self.stats.reconcile_records_sent += c.included as u64;
        self.emit_chunks(to, &topic, id | RESPONSE_BIT, false, mark, &c, self.config.sync_priority);
        let keys: Vec<IbltCell> =
            diff.only_in_b.iter().map(|&k| iblt::pure_cell(k, false)).collect();
        self.stats.reconcile_key_cells_sent += keys.len() as u64;
        let (n, per) = (keys.len(), s.per_frame);
        self.send_cells(to, ReconcileKind::Reply, id, s.mode, &topic, &keys, 0, n, per);
        s.deadline = now + self.config.exchange_timeout;
        if keys.is_empty() {
            self.session_answered(now, to, 0);
        } else {
            s.state = InState::Awaiting { chunks: None, applied: 0 };
        }
    }

    /// Responder: the table or stream did not decode (or is beyond our
    /// caps): `0x03` in the session's mode.
    fn refuse_session(&mut self, to: SocketAddr, id: u32, s: &mut InSession) {
        self.stats.reconcile_decode_failed += 1;
        s.state = InState::Done;
        let topic = s.topic.clone();
        self.send_cells(to, ReconcileKind::DecodeFailed, id, s.mode, &topic, &[], 0, 0, 1);
    }

    /// Responder: our part of a session is over; so is the probe round it
    /// answered, if it was ours.
    fn session_answered(&mut self, now: Instant, peer: SocketAddr, applied: u64) {
        if self.round.is_some_and(|r| r.peer == peer && r.syncing) {
            self.finish_round(now, outcome_of(applied));
        } else {
            self.note_applied(now, applied);
        }
    }

    /// Responder: a chunk of the records our reply asked for.
    pub(super) fn on_requested_records(
        &mut self,
        now: Instant,
        from: SocketAddr,
        id: u32,
        x: &ExchangeRepr<'_>,
        entries: &Entries<'_>,
    ) {
        let Some(s) = self.in_sessions.get_mut(&(from, id)) else { return };
        let InState::Awaiting { chunks, .. } = &mut s.state else { return };
        let c = chunks.get_or_insert_with(|| Chunks::new(x.chunk_count));
        if c.count() != x.chunk_count {
            self.stats.drops.chunk_mismatch += 1;
            return;
        }
        if !c.mark(x.chunk_index) {
            return;
        }
        let complete = c.complete();
        if entries.backpressure() {
            self.backpressure_from(now, from);
        }
        let got = self.apply_records(x.topic, from, entries);
        let Some(s) = self.in_sessions.get_mut(&(from, id)) else { return };
        let InState::Awaiting { applied, .. } = &mut s.state else { return };
        *applied += got;
        let total = *applied;
        if complete {
            s.state = InState::Done;
            self.session_answered(now, from, total);
        }
    }

    /// Initiator: a chunk of the records the responder found we lack.
    pub(super) fn on_session_records(
        &mut self,
        now: Instant,
        from: SocketAddr,
        id: u32,
        x: &ExchangeRepr<'_>,
        entries: &Entries<'_>,
    ) {
        let timeout = self.config.exchange_timeout;
        let Some(s) = self.out_sessions.get_mut(&id) else { return };
        let (c, wm) = s.records.get_or_insert_with(|| (Chunks::new(x.chunk_count), x.watermark_ns));
        if c.count() != x.chunk_count || *wm != x.watermark_ns {
            self.stats.drops.chunk_mismatch += 1;
            return;
        }
        if !c.mark(x.chunk_index) {
            return;
        }
        s.deadline = now + timeout;
        if entries.backpressure() {
            s.backpressure = true;
            self.backpressure_from(now, from);
        }
        let applied = self.apply_records(x.topic, from, entries);
        if let Some(s) = self.out_sessions.get_mut(&id) {
            s.applied += applied;
        }
        self.complete_session(now, id);
    }

    /// Initiator: a frame of the reply, the keys the responder lacks. Once
    /// the whole list is in, sends those records.
    fn on_reply(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) {
        let id = r.session_id;
        let Some(mut s) = self.take_session(from, r) else { return };
        let end = r.end_cell as usize;
        let mut asm = match &mut s.reply {
            Some(a) if a.len() == end => Some(a),
            Some(_) => None,
            None if end <= self.max_table_cells().max(self.max_symbols()) => {
                Some(s.reply.insert(Assembly::new(end)))
            }
            None => None,
        };
        let placed =
            asm.as_mut().is_some_and(|a| a.place(r.first_cell as usize, r.cells).is_some());
        let Some(asm) = asm.filter(|_| placed) else {
            self.stats.drops.reconcile_mismatch += 1;
            self.out_sessions.insert(id, s);
            return;
        };
        s.deadline = now + self.config.exchange_timeout;
        if asm.complete() && !s.answered {
            s.answered = true;
            let mut keys = Vec::with_capacity(asm.len());
            for cell in asm.cells() {
                match iblt::pure_key(cell) {
                    Some((k, false)) => keys.push(k),
                    _ => self.stats.drops.reconcile_mismatch += 1,
                }
            }
            if !keys.is_empty()
                && let Some(store) = self.store(&s.topic)
            {
                let records = store.records_for(&keys);
                let mark = store.watermark().max(0);
                let topic = s.topic.clone();
                let c = self.chunk(&topic, &records, self.config.max_exchange_bytes, 0);
                self.stats.reconcile_records_sent += c.included as u64;
                let priority = self.config.sync_priority;
                self.emit_chunks(from, &topic, id | RESPONSE_BIT, false, mark, &c, priority);
            }
        }
        self.out_sessions.insert(id, s);
        self.complete_session(now, id);
    }

    /// Initiator: the responder wants cells `first..end` of our table, or
    /// the next rateless burst.
    fn on_cell_request(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) {
        let id = r.session_id;
        let Some(mut s) = self.take_session(from, r) else { return };
        let first = r.first_cell as usize;
        let cap = s.per_frame.saturating_mul(self.config.reconcile_burst.max(1));
        let (end, seq_end) = match s.mode {
            ReconcileMode::Fixed => (r.end_cell as usize, s.cells.len()),
            ReconcileMode::Rateless => {
                let end = (r.end_cell as usize).min(self.max_symbols()).min(first + cap);
                if let Some(enc) = s.encoder.as_mut() {
                    while s.cells.len() < end {
                        s.cells.push(enc.next_symbol());
                    }
                }
                (end, end)
            }
        };
        match s.cells.get(first..end) {
            Some(cells) if first < end && end - first <= s.budget => {
                s.budget -= end - first;
                let topic = s.topic.clone();
                let cells = cells.to_vec();
                let per = s.per_frame;
                let n = self.send_cells(
                    from,
                    ReconcileKind::Table,
                    id,
                    s.mode,
                    &topic,
                    &cells,
                    first,
                    seq_end,
                    per,
                );
                self.stats.reconcile_cells_sent += n;
                s.deadline = now + self.config.exchange_timeout;
            }
            _ => self.stats.drops.reconcile_mismatch += 1,
        }
        self.out_sessions.insert(id, s);
    }

    /// Initiator: the responder could not decode. A fixed table flips the
    /// peer to rateless and streams at once; a failed stream falls back to
    /// G1.
    fn on_decode_failed(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) {
        let Some(s) = self.take_session(from, r) else { return };
        let (peer, topic) = (s.peer, s.topic.clone());
        match s.mode {
            ReconcileMode::Fixed => {
                self.stats.reconcile_flips += 1;
                if let Some(ps) = self.peer_sync(peer, &topic) {
                    ps.rateless = true;
                }
                if !self.start_reconcile(now, peer, &topic, true, Some(s.cells.len())) {
                    self.start_exchange(now, peer, &topic);
                }
            }
            ReconcileMode::Rateless => {
                self.stats.reconcile_fallbacks += 1;
                if let Some(ps) = self.peer_sync(peer, &topic) {
                    ps.rateless = false;
                }
                self.start_exchange(now, peer, &topic);
            }
        }
    }

    /// Removes our session a frame names, if it is from the session's peer,
    /// for its topic and in its mode (else counts the frame).
    fn take_session(&mut self, from: SocketAddr, r: &ReconcileRepr<'_>) -> Option<OutSession> {
        match self.out_sessions.get(&r.session_id) {
            None => {
                self.stats.drops.unsolicited += 1;
                None
            }
            Some(s) if s.peer != from => {
                self.stats.drops.unsolicited += 1;
                None
            }
            Some(s) if s.topic != r.topic || s.mode != r.mode => {
                self.stats.drops.reconcile_mismatch += 1;
                None
            }
            Some(_) => self.out_sessions.remove(&r.session_id),
        }
    }

    /// Initiator: ends the session once the responder's records and (unless
    /// it signalled backpressure) its whole reply are in. A completed
    /// session counts as a full sync.
    fn complete_session(&mut self, now: Instant, id: u32) {
        let Some(s) = self.out_sessions.get(&id) else { return };
        let records_in = s.records.as_ref().is_some_and(|(c, _)| c.complete());
        if !records_in || !(s.answered || s.backpressure) {
            return;
        }
        let Some(s) = self.out_sessions.remove(&id) else { return };
        let synced = !s.backpressure;
        if synced {
            self.stats.reconcile_completed += 1;
        }
        if let Some(p) = self.peers.get_mut(&s.peer) {
            if synced {
                p.backoff.clear();
                p.failures = 0;
            }
            if let Some(ps) = p.topics.get_mut(&s.topic).filter(|_| synced) {
                let recv_to = s.records.as_ref().map(|(_, wm)| *wm);
                ps.completed(true, recv_to, Some(s.mark), s.applied);
                ps.g1_next = false;
                ps.rateless = false;
            }
        }
        if self.round.is_some_and(|r| r.peer == s.peer && r.syncing) {
            self.finish_round(now, outcome_of(s.applied));
        } else {
            self.note_applied(now, s.applied);
        }
    }

    pub(super) fn reconcile_timeout(&mut self, now: Instant, id: u32) {
        let Some(s) = self.out_sessions.get(&id) else { return };
        if s.deadline > now {
            // Progress moved the deadline: one timer per session, re-armed.
            self.timers.insert((s.deadline, Timer::Reconcile(id)));
            return;
        }
        let Some(s) = self.out_sessions.remove(&id) else { return };
        self.stats.reconcile_timeouts += 1;
        if let Some(ps) = self.peers.get_mut(&s.peer).and_then(|p| p.topics.get_mut(&s.topic)) {
            ps.g1_next = true;
        }
        if self.round.is_some_and(|r| r.peer == s.peer) {
            self.finish_round(now, Outcome::Failed);
        }
        self.note_applied(now, s.applied);
    }

    /// Asks the initiator for cells `first..end` of its table or stream.
    fn request_cells(
        &mut self,
        to: SocketAddr,
        id: u32,
        mode: ReconcileMode,
        topic: &[u8],
        first: usize,
        end: usize,
    ) {
        self.stats.reconcile_requests += 1;
        self.send_cells(to, ReconcileKind::Request, id, mode, topic, &[], first, end, 1);
    }

    /// Sends `cells` as positions `first..` of a sequence ending at `end`,
    /// `per_frame` to a frame; one frame without cells if there are none.
    /// Returns the cells sent.
    #[allow(clippy::too_many_arguments)]
    fn send_cells(
        &mut self,
        to: SocketAddr,
        kind: ReconcileKind,
        session_id: u32,
        mode: ReconcileMode,
        topic: &[u8],
        cells: &[IbltCell],
        first: usize,
        end: usize,
        per_frame: usize,
    ) -> u64 {
        let pos = |p: usize| u32::try_from(p).unwrap_or(u32::MAX);
        let priority = self.config.sync_priority;
        if cells.is_empty() {
            let frame = GossipFrame::Reconcile(ReconcileRepr {
                kind,
                session_id,
                mode,
                first_cell: pos(first),
                end_cell: pos(end),
                topic,
                cells: Cells::from(cells),
            });
            self.send(to, priority, &frame);
            return 0;
        }
        let per = per_frame.max(1);
        for (i, chunk) in cells.chunks(per).enumerate() {
            let frame = GossipFrame::Reconcile(ReconcileRepr {
                kind,
                session_id,
                mode,
                first_cell: pos(first + i * per),
                end_cell: pos(end),
                topic,
                cells: Cells::from(chunk),
            });
            self.send(to, priority, &frame);
        }
        cells.len() as u64
    }

    /// The largest fixed table we build or decode.
    fn max_table_cells(&self) -> usize {
        self.config.reconcile_max_cells.clamp(HASH_COUNT, iblt::MAX_CELLS)
    }

    /// The most rateless symbols a session streams or decodes.
    fn max_symbols(&self) -> usize {
        self.config.reconcile_max_symbols.clamp(1, u32::MAX as usize / 2)
    }
}
