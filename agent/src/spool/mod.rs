//! The agent's disk spool: every batch is appended here before it is sent,
//! and leaves only when the controller acknowledges it (or the disk budget
//! forces the oldest out, counted).
//!
//! Layout under the spool directory:
//! - `segments/{id:016x}.seg`: append-only files of framed records (see `segment`);
//! - `quarantine/`: segments found corrupt, moved aside for inspection;
//! - `cursor`: the acknowledged position (segment id, offset, CRC32C).
//!
//! Guarantee after a power cut: every batch appended before the last
//! completed fsync survives; batches appended after it (at most
//! `fsync_interval` or `fsync_bytes` of them) may be lost, and a record cut
//! short is truncated at start. A corrupt record in a sealed segment moves that
//! segment to `quarantine/`; its intact records before the damage are kept and
//! everything else is still delivered. The agent always starts.
//!
//! Memory is bounded whatever the backlog: start-up scans segments through a
//! small buffer, replay reads one record at a time, and only the in-flight
//! window (at most `max_inflight` entries of metadata) is held.
//!
//! Delivery: after every (re)connect everything unacknowledged is replayed
//! from disk, oldest first, at most `replay_batches_per_s`; batches appended
//! meanwhile are published at once (live first, backlog interleaved), so a long
//! outage never starves live data.
//!
//! Two parts: the durable log (`log`, opened by `recover`) and the delivery
//! window (`window`); `Spool` is the one type the agent holds.

mod log;
pub mod record;
mod recover;
pub mod segment;
mod types;
mod window;

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_proto::v1::{Ack, TelemetryBatch};

use log::Log;
pub use types::{Appended, Outgoing, Position, SpoolConfig, SpoolError, SpoolStats};
use window::Window;

/// The spool. See the module documentation.
pub struct Spool {
    log: Log,
    window: Window,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`: truncates a torn tail,
    /// quarantines corrupt segments, reads the acknowledged position, enforces
    /// the disk budget, and starts a fresh segment for appends.
    ///
    /// # Errors
    /// When the directory cannot be created, read or written.
    pub fn open(dir: &Path, cfg: SpoolConfig) -> Result<Self, SpoolError> {
        let window = Window::new(cfg.max_inflight);
        Ok(Self { log: Log::open(dir, cfg)?, window })
    }

    /// The position just after the last record.
    #[must_use]
    pub fn end(&self) -> Position {
        self.log.end()
    }

    /// Appends a batch; fsyncs when the group-commit policy says so and drops
    /// the oldest segments past the disk budget.
    ///
    /// # Errors
    /// Disk errors, or a batch too large for a record.
    pub fn append(&mut self, batch: &TelemetryBatch) -> Result<Appended, SpoolError> {
        let a = self.log.append(batch)?;
        if self.log.total_bytes() > self.log.cfg.max_bytes {
            for (victim, next) in self.log.enforce_budget()? {
                self.window.forget_segment(victim, next);
            }
        }
        Ok(a)
    }

    /// Writes buffered records and fsyncs them.
    ///
    /// # Errors
    /// Disk errors.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.log.sync()
    }

    /// Group commit by time: fsyncs if data has waited `fsync_interval`.
    ///
    /// # Errors
    /// Disk errors.
    pub fn maybe_sync(&mut self, now: Instant) -> Result<(), SpoolError> {
        self.log.maybe_sync(now)
    }

    /// Writes the acknowledged position to disk if it moved (atomically).
    ///
    /// # Errors
    /// Disk errors.
    pub fn persist_cursor(&mut self) -> Result<(), SpoolError> {
        self.log.persist_cursor()
    }

    /// Called on every (re)connect: forget what was in flight and replay every
    /// unacknowledged batch from disk; publish new batches live meanwhile.
    pub fn on_connect(&mut self) {
        self.window.on_connect(&self.log);
    }

    /// Called when the connection is lost: batches now wait on disk.
    pub fn on_disconnect(&mut self) {
        self.window.on_disconnect();
    }

    /// After `append`: should the batch be published now? If so it is
    /// registered in flight and returned as wire bytes with its low-water
    /// mark set. If not, it waits for replay.
    ///
    /// # Errors
    /// Disk errors reading the head record.
    pub fn take_live(&mut self, appended: Appended, now: Instant) -> Result<Option<Outgoing>, SpoolError> {
        self.window.take_live(&mut self.log, appended, now)
    }

    /// The client refused a batch handed out by `take_live` or `replay`: send it again later.
    pub fn send_failed(&mut self, pos: Position) {
        self.window.send_failed(pos);
    }

    /// The next backlog batches to send (at most `limit`, and while the
    /// in-flight window has room), oldest first.
    ///
    /// # Errors
    /// Disk errors.
    pub fn replay(&mut self, now: Instant, limit: usize) -> Result<Vec<Outgoing>, SpoolError> {
        self.window.replay(&mut self.log, now, limit)
    }

    /// Batches in flight longer than `timeout` without an ack (at most `limit`), re-read from disk.
    ///
    /// # Errors
    /// Disk errors.
    pub fn resends(&mut self, now: Instant, timeout: Duration, limit: usize) -> Result<Vec<Outgoing>, SpoolError> {
        self.window.resends(&mut self.log, now, timeout, limit)
    }

    /// Applies an ack from the controller; returns the samples newly acknowledged.
    ///
    /// # Errors
    /// Disk errors while releasing acknowledged segments.
    pub fn ack(&mut self, ack: &Ack) -> Result<u64, SpoolError> {
        self.window.ack(&mut self.log, ack)
    }

    /// The batch at `pos` is durable elsewhere (a Kafka delivery report);
    /// returns its samples if it was in flight.
    ///
    /// # Errors
    /// Disk errors while releasing acknowledged segments.
    pub fn ack_position(&mut self, pos: Position) -> Result<u64, SpoolError> {
        self.window.ack_position(&mut self.log, pos)
    }

    /// Batches not yet acknowledged (on disk, from the acknowledged position on).
    #[must_use]
    pub fn pending(&self) -> u64 {
        self.log.pending
    }

    /// Batches sent and waiting for an ack.
    #[must_use]
    pub fn inflight(&self) -> usize {
        self.window.inflight()
    }

    /// Bytes on disk.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.log.total_bytes()
    }

    /// Counters since open.
    #[must_use]
    pub fn stats(&self) -> SpoolStats {
        self.log.stats
    }

    /// The acknowledged position.
    #[must_use]
    pub fn acked(&self) -> Position {
        self.log.acked
    }

    /// Where quarantined segments go.
    #[must_use]
    pub fn quarantine_dir(&self) -> &Path {
        &self.log.quarantine_dir
    }

    /// Every unacknowledged batch, oldest first, streamed from disk (tests and tools).
    ///
    /// # Errors
    /// Disk errors.
    pub fn for_each_pending(&mut self, f: impl FnMut(&TelemetryBatch)) -> Result<(), SpoolError> {
        self.log.for_each_pending(f)
    }

    /// Syncs and persists the cursor (clean shutdown); returns the batches kept.
    ///
    /// # Errors
    /// Disk errors.
    pub fn close(mut self) -> Result<u64, SpoolError> {
        self.log.sync()?;
        self.log.persist_cursor()?;
        Ok(self.log.pending)
    }
}

#[cfg(test)]
mod tests;
