//! The delivery window: which batches are in flight and since when, which
//! acks were heard per run, where the backlog replay stands, and whether new
//! batches go out at once (live) or wait for the replay. Reads and moves
//! the log's acknowledged position through `Log`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::v1::Ack;

use super::log::{Log, Read};
use super::record;
use super::types::{Appended, Outgoing, Position, SpoolError};

#[derive(Debug, Clone)]
struct InFlight {
    next: Position,
    boot_id: Arc<str>,
    first: u64,
    end: u64,
    samples: u64,
    sent_at: Instant,
    acked: bool,
}

/// The latest ack heard per run (few runs: the current one and leftovers).
#[derive(Debug, Clone, Default)]
struct KnownAck {
    boot_id: String,
    /// Every seq below is committed.
    next: u64,
    ranges: Vec<(u64, u64)>,
}

impl KnownAck {
    fn covers(&self, first: u64, end: u64) -> bool {
        end <= self.next || self.ranges.iter().any(|&(s, e)| s <= first && end <= e)
    }
}

/// Runs whose acks are remembered.
const KNOWN_RUNS: usize = 8;

/// The window. See the module documentation.
pub(super) struct Window {
    max_inflight: usize,
    /// Next record to replay, and where replay stops (`None`: the end).
    replay: Option<Position>,
    replay_end: Option<Position>,
    /// Appends are published directly (connected and not behind).
    live: bool,
    inflight: BTreeMap<Position, InFlight>,
    known: Vec<KnownAck>,
}

impl Window {
    /// An empty window of at most `max_inflight` batches in flight.
    pub fn new(max_inflight: usize) -> Self {
        Self { max_inflight, replay: None, replay_end: None, live: false, inflight: BTreeMap::new(), known: Vec::new() }
    }

    /// Every (re)connect: forget what was in flight and replay every
    /// unacknowledged batch from disk; publish new batches live meanwhile.
    pub fn on_connect(&mut self, log: &Log) {
        self.inflight.clear();
        let end = log.end();
        self.replay = (log.acked < end).then_some(log.acked);
        self.replay_end = Some(end);
        self.live = true;
    }

    /// The connection is lost: batches now wait on disk.
    pub fn on_disconnect(&mut self) {
        self.live = false;
    }

    /// The log dropped segment `victim` (disk budget): nothing of it is in
    /// flight or replayed any more.
    pub fn forget_segment(&mut self, victim: u64, next: Position) {
        self.inflight.retain(|p, _| p.seg != victim);
        if let Some(r) = self.replay.as_mut()
            && r.seg <= victim
        {
            *r = next;
        }
    }

    /// After an append: should the batch be published now? If so it is
    /// registered in flight and returned as wire bytes (its encoding from
    /// the record, not encoded again) with its low-water mark set. If not, it
    /// waits for the replay.
    pub fn take_live(&mut self, log: &mut Log, a: Appended, now: Instant) -> Result<Option<Outgoing>, SpoolError> {
        if self.live && self.inflight.len() < self.max_inflight * 2 {
            let Some(m) = record::meta(&a.payload) else { return Ok(None) };
            let low = log.low_water(m.boot_id)?;
            let boot = log.intern(m.boot_id);
            self.track(a.pos, a.next, boot, m.first_seq, u64::from(m.samples), now);
            return Ok(Some(Outgoing { pos: a.pos, wire: record::wire_with_low_water(m.wire, low) }));
        }
        if self.live {
            // In-flight window full: from here on the batches wait for replay.
            self.live = false;
            self.replay.get_or_insert(a.pos);
            self.replay_end = None;
        }
        Ok(None)
    }

    /// The client refused a batch handed out by `take_live` or `replay`: send it again later.
    pub fn send_failed(&mut self, pos: Position) {
        if let Some(e) = self.inflight.get_mut(&pos) {
            e.sent_at = Instant::now() - Duration::from_secs(3600);
        }
    }

    fn track(&mut self, pos: Position, next: Position, boot_id: Arc<str>, first: u64, samples: u64, now: Instant) {
        self.inflight
            .insert(pos, InFlight { next, boot_id, first, end: first + samples, samples, sent_at: now, acked: false });
    }

    fn known_acked(&self, boot_id: &str, first: u64, end: u64) -> bool {
        self.known.iter().any(|k| k.boot_id == boot_id && k.covers(first, end))
    }

    /// The next backlog batches to send (at most `limit`, and while the
    /// in-flight window has room), oldest first.
    pub fn replay(&mut self, log: &mut Log, now: Instant, limit: usize) -> Result<Vec<Outgoing>, SpoolError> {
        let mut out = Vec::new();
        let mut buf = std::mem::take(&mut log.buf);
        while out.len() < limit && self.inflight.len() < self.max_inflight {
            let Some(p) = self.replay else { break };
            let stop = self.replay_end.unwrap_or_else(|| log.end());
            if p >= stop {
                self.replay = None;
                if self.replay_end.is_none() {
                    self.live = true;
                }
                break;
            }
            match log.read_at(p, &mut buf)? {
                Read::End => {
                    self.replay = None;
                    self.live = true;
                }
                Read::Skipped(n) => {
                    self.replay = Some(n);
                    log.stats.dropped_batches += 1;
                    if log.acked == p {
                        log.acked = n;
                        log.head = None;
                    }
                }
                Read::Record { next, boot_id, first_seq, samples } => {
                    self.replay = Some(next);
                    if self.inflight.contains_key(&p) {
                        continue;
                    }
                    let acked = self.known_acked(&boot_id, first_seq, first_seq + samples);
                    let low = if acked { 0 } else { log.low_water(&boot_id)? };
                    self.track(p, next, boot_id, first_seq, samples, now);
                    if acked {
                        if let Some(e) = self.inflight.get_mut(&p) {
                            e.acked = true;
                        }
                    } else if let Some(m) = record::meta(&buf) {
                        out.push(Outgoing { pos: p, wire: record::wire_with_low_water(m.wire, low) });
                    }
                }
            }
        }
        log.buf = buf;
        self.advance(log)?;
        Ok(out)
    }

    /// Batches in flight longer than `timeout` without an ack (at most `limit`), re-read from disk.
    pub fn resends(
        &mut self,
        log: &mut Log,
        now: Instant,
        timeout: Duration,
        limit: usize,
    ) -> Result<Vec<Outgoing>, SpoolError> {
        let due: Vec<Position> = self
            .inflight
            .iter()
            .filter(|(_, e)| !e.acked && now.duration_since(e.sent_at) >= timeout)
            .map(|(p, _)| *p)
            .take(limit)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        let mut buf = std::mem::take(&mut log.buf);
        for p in due {
            if let Read::Record { boot_id, .. } = log.read_at(p, &mut buf)? {
                let low = log.low_water(&boot_id)?;
                if let (Some(e), Some(m)) = (self.inflight.get_mut(&p), record::meta(&buf)) {
                    e.sent_at = now;
                    out.push(Outgoing { pos: p, wire: record::wire_with_low_water(m.wire, low) });
                }
            }
        }
        log.buf = buf;
        Ok(out)
    }

    /// Applies an ack from the controller; returns the samples newly acknowledged.
    pub fn ack(&mut self, log: &mut Log, ack: &Ack) -> Result<u64, SpoolError> {
        let known = KnownAck {
            boot_id: ack.boot_id.clone(),
            next: ack.up_to_seq.saturating_add(1),
            ranges: ack.committed.iter().map(|r| (r.start, r.end)).collect(),
        };
        // Acks from two controller replicas can arrive out of order: an older
        // (lower) one never takes back what a newer one said.
        if let Some(k) = self.known.iter().find(|k| k.boot_id == ack.boot_id)
            && k.next > known.next
        {
            return Ok(0);
        }
        self.known.retain(|k| k.boot_id != ack.boot_id);
        self.known.push(known.clone());
        if self.known.len() > KNOWN_RUNS {
            self.known.remove(0);
        }
        let mut samples = 0;
        for e in self.inflight.values_mut() {
            if !e.acked && *e.boot_id == *ack.boot_id && known.covers(e.first, e.end) {
                e.acked = true;
                samples += e.samples;
            }
        }
        self.advance(log)?;
        Ok(samples)
    }

    /// The batch at `pos` is durable elsewhere (a Kafka delivery report);
    /// returns its samples if it was in flight.
    pub fn ack_position(&mut self, log: &mut Log, pos: Position) -> Result<u64, SpoolError> {
        let samples = match self.inflight.get_mut(&pos) {
            Some(e) if !e.acked => {
                e.acked = true;
                e.samples
            }
            _ => 0,
        };
        self.advance(log)?;
        Ok(samples)
    }

    /// Moves the acknowledged position over acknowledged batches at the head.
    fn advance(&mut self, log: &mut Log) -> Result<(), SpoolError> {
        let before = log.acked;
        loop {
            let p = log.normalize(log.acked);
            log.acked = p;
            match self.inflight.get(&p) {
                Some(e) if e.acked => {
                    let next = e.next;
                    self.inflight.remove(&p);
                    log.ack_head(next);
                }
                _ => break,
            }
        }
        if log.acked != before {
            log.head = None;
            log.release_acked_segments()?;
        }
        Ok(())
    }

    /// Batches sent and waiting for an ack.
    pub fn inflight(&self) -> usize {
        self.inflight.values().filter(|e| !e.acked).count()
    }
}
