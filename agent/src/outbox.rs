//! Batches published but not yet acknowledged end to end by the controller.
//!
//! A batch leaves the outbox only when an `Ack` says the controller committed
//! it (ARCHITECTURE.md flow 1), never on the broker's PUBACK. Bounded: when
//! full, the oldest batch is dropped and counted. On shutdown what is left is
//! written to disk and sent again at the next start.
//! (The disk spool of issue 4 replaces the in-memory queue.)

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use fleet_proto::v1::{Ack, TelemetryBatch};
use prost::Message;

use crate::AgentError;

struct Entry {
    batch: TelemetryBatch,
    /// When it was last handed to the MQTT client; `None` = never (or failed).
    last_sent: Option<Instant>,
}

/// The bounded queue of unacknowledged batches, oldest first.
pub struct Outbox {
    entries: VecDeque<Entry>,
    max: usize,
    /// Batches dropped because the outbox was full.
    pub dropped_batches: u64,
    /// Samples dropped with them.
    pub dropped_samples: u64,
}

fn last_seq(b: &TelemetryBatch) -> u64 {
    b.first_seq + (b.samples.len() as u64).saturating_sub(1)
}

impl Outbox {
    /// An empty outbox holding at most `max` batches.
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self { entries: VecDeque::new(), max: max.max(1), dropped_batches: 0, dropped_samples: 0 }
    }

    /// Number of batches waiting for their ack.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when every batch is acknowledged.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a batch; drops (and counts) the oldest when full.
    pub fn push(&mut self, batch: TelemetryBatch) {
        if self.entries.len() >= self.max
            && let Some(old) = self.entries.pop_front()
        {
            self.dropped_batches += 1;
            self.dropped_samples += old.batch.samples.len() as u64;
            tracing::error!(
                boot_id = %old.batch.boot_id,
                first_seq = old.batch.first_seq,
                samples = old.batch.samples.len(),
                "Outbox full: dropped the oldest unacknowledged batch."
            );
        }
        self.entries.push_back(Entry { batch, last_sent: None });
    }

    /// Adds a batch that was just handed to the MQTT client at `now`.
    pub fn push_sent(&mut self, batch: TelemetryBatch, now: Instant) {
        self.push(batch);
        if let Some(e) = self.entries.back_mut() {
            e.last_sent = Some(now);
        }
    }

    /// The lowest seq of `boot_id` still held (what `low_water_seq` says);
    /// `default` when the outbox holds nothing of that run.
    #[must_use]
    pub fn low_water(&self, boot_id: &str, default: u64) -> u64 {
        self.entries.iter().find(|e| e.batch.boot_id == boot_id).map_or(default, |e| e.batch.first_seq)
    }

    /// Removes every batch the ack covers; returns the samples acknowledged.
    pub fn ack(&mut self, ack: &Ack) -> u64 {
        let mut acked = 0;
        self.entries.retain(|e| {
            let covered = e.batch.boot_id == ack.boot_id && last_seq(&e.batch) <= ack.up_to_seq;
            if covered {
                acked += e.batch.samples.len() as u64;
            }
            !covered
        });
        acked
    }

    /// Batches to (re)send now: never sent, or sent longer than `timeout` ago;
    /// at most `limit`, oldest first. Each is stamped sent at `now` and given
    /// the current low-water mark of its boot.
    pub fn due(&mut self, now: Instant, timeout: Duration, limit: usize) -> Vec<TelemetryBatch> {
        let mut lows: Vec<(String, u64)> = Vec::new();
        for e in &self.entries {
            if !lows.iter().any(|(b, _)| *b == e.batch.boot_id) {
                lows.push((e.batch.boot_id.clone(), e.batch.first_seq));
            }
        }
        let mut out = Vec::new();
        for e in &mut self.entries {
            if out.len() >= limit {
                break;
            }
            let due = e.last_sent.is_none_or(|t| now.duration_since(t) >= timeout);
            if due {
                e.last_sent = Some(now);
                if let Some((_, low)) = lows.iter().find(|(b, _)| *b == e.batch.boot_id) {
                    e.batch.low_water_seq = *low;
                }
                out.push(e.batch.clone());
            }
        }
        out
    }

    /// Marks a batch as not sent (the client refused it), so `due` returns it again.
    pub fn mark_unsent(&mut self, boot_id: &str, first_seq: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.batch.boot_id == boot_id && e.batch.first_seq == first_seq)
        {
            e.last_sent = None;
        }
    }

    /// Writes every batch still held to `path` (length-delimited protobuf),
    /// atomically and fsynced; removes `path` when there is nothing to keep.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn persist(&self, path: &Path) -> Result<usize, AgentError> {
        if self.entries.is_empty() {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AgentError::io(path, e)),
            }
            return Ok(0);
        }
        let tmp = path.with_extension("tmp");
        let mut buf = Vec::new();
        for e in &self.entries {
            e.batch.encode_length_delimited(&mut buf).map_err(|e| AgentError::io(&tmp, std::io::Error::other(e)))?;
        }
        let mut f = std::fs::File::create(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
        f.write_all(&buf).and_then(|()| f.sync_all()).map_err(|e| AgentError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e))?;
        Ok(self.entries.len())
    }

    /// Loads batches kept by `persist`, then removes the file. A damaged file
    /// yields the batches before the damage; the rest is counted as dropped.
    ///
    /// # Errors
    /// When the file exists but cannot be read or removed.
    pub fn restore(&mut self, path: &Path) -> Result<usize, AgentError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(AgentError::io(path, e)),
        };
        let mut rest = bytes.as_slice();
        let mut n = 0;
        while !rest.is_empty() {
            match TelemetryBatch::decode_length_delimited(&mut rest) {
                Ok(b) => {
                    self.push(b);
                    n += 1;
                }
                Err(e) => {
                    self.dropped_batches += 1;
                    tracing::error!(path = %path.display(), error = %e, left_bytes = rest.len(),
                        "Kept batches file is damaged; the rest of it is lost.");
                    break;
                }
            }
        }
        std::fs::remove_file(path).map_err(|e| AgentError::io(path, e))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::Sample;

    fn batch(boot: &str, first: u64, n: usize) -> TelemetryBatch {
        TelemetryBatch {
            node_id: "n".into(),
            boot_id: boot.into(),
            first_seq: first,
            samples: (0..n).map(|i| Sample { metric: "m".into(), value: i as f64, time_unix_ms: 1 }).collect(),
            low_water_seq: 0,
        }
    }

    #[test]
    fn ack_removes_only_covered_batches_of_that_boot() {
        let mut o = Outbox::new(10);
        o.push(batch("a", 0, 3));
        o.push(batch("a", 3, 3));
        o.push(batch("b", 0, 3));
        assert_eq!(o.ack(&Ack { boot_id: "a".into(), up_to_seq: 4 }), 3);
        assert_eq!(o.len(), 2);
        assert_eq!(o.ack(&Ack { boot_id: "a".into(), up_to_seq: 5 }), 3);
        assert_eq!(o.ack(&Ack { boot_id: "a".into(), up_to_seq: 100 }), 0);
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn full_outbox_drops_oldest_and_counts() {
        let mut o = Outbox::new(2);
        o.push(batch("a", 0, 2));
        o.push(batch("a", 2, 2));
        o.push(batch("a", 4, 2));
        assert_eq!((o.len(), o.dropped_batches, o.dropped_samples), (2, 1, 2));
        let now = Instant::now();
        let due = o.due(now, Duration::from_secs(5), 10);
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|b| b.low_water_seq == 2), "low water moves past the dropped batch");
    }

    #[test]
    fn due_respects_timeout_and_limit() {
        let mut o = Outbox::new(10);
        for i in 0..5 {
            o.push(batch("a", i * 2, 2));
        }
        let t0 = Instant::now();
        assert_eq!(o.due(t0, Duration::from_secs(5), 3).len(), 3);
        assert_eq!(o.due(t0, Duration::from_secs(5), 10).len(), 2);
        assert_eq!(o.due(t0 + Duration::from_secs(1), Duration::from_secs(5), 10).len(), 0);
        o.mark_unsent("a", 4);
        assert_eq!(o.due(t0 + Duration::from_secs(1), Duration::from_secs(5), 10)[0].first_seq, 4);
        assert_eq!(o.due(t0 + Duration::from_secs(6), Duration::from_secs(5), 10).len(), 5);
    }

    #[test]
    fn persist_and_restore_round_trip_and_survive_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unsent.pb");
        let mut o = Outbox::new(10);
        o.push(batch("a", 0, 2));
        o.push(batch("a", 2, 2));
        assert_eq!(o.persist(&path).unwrap(), 2);
        let mut r = Outbox::new(10);
        assert_eq!(r.restore(&path).unwrap(), 2);
        assert!(!path.exists());

        o.persist(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, bytes).unwrap();
        let mut r = Outbox::new(10);
        assert_eq!(r.restore(&path).unwrap(), 1);
        assert_eq!(r.dropped_batches, 1);
    }
}
