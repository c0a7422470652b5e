//! The spool's vocabulary, shared by the log, the window and the facade:
//! its settings, errors, positions, counters, and what goes in and out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Errors of the spool that stop the agent (a full or broken disk); corruption
/// is handled, counted and logged instead.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}; check the disk and the permissions of the agent's data_dir")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a batch of {0} bytes (or a boot id over 255 bytes) does not fit a spool record")]
    TooLarge(usize),
    /// A `[spool]` value refused; the sentence names the key.
    #[error("{0}")]
    Invalid(String),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_owned(), source }
}

/// `[spool]`: where batches wait for their acknowledgement.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// A segment is sealed and a new one started past this size. Default 8 MiB.
    pub segment_bytes: u64,
    /// Disk budget: past it the oldest segments are dropped (counted). Default 256 MiB.
    pub max_bytes: u64,
    /// Group commit: fsync at least this often while data is unsynced; 0 fsyncs every batch. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// ...or as soon as this many bytes are unsynced. Default 1 MiB.
    pub fsync_bytes: u64,
    /// Batches sent and not yet acknowledged, at most. Default 1024.
    pub max_inflight: usize,
    /// Backlog replay rate after a reconnect, batches per second. Default 500.
    pub replay_batches_per_s: u32,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 8 << 20,
            max_bytes: 256 << 20,
            fsync_interval: Duration::from_secs(1),
            fsync_bytes: 1 << 20,
            max_inflight: 1024,
            replay_batches_per_s: 500,
        }
    }
}

impl SpoolConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), SpoolError> {
        if self.segment_bytes < 4096 {
            return Err(SpoolError::Invalid("key `spool.segment_bytes`: use at least 4096".into()));
        }
        if self.max_bytes < self.segment_bytes * 4 {
            return Err(SpoolError::Invalid("key `spool.max_bytes`: use at least 4 x spool.segment_bytes".into()));
        }
        if self.max_inflight == 0 || self.replay_batches_per_s == 0 {
            return Err(SpoolError::Invalid(
                "keys `spool.max_inflight` and `spool.replay_batches_per_s` must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub seg: u64,
    pub off: u64,
}

/// What the spool has counted since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub appended_batches: u64,
    /// Unacknowledged batches dropped by the disk budget (or unreadable).
    pub dropped_batches: u64,
    pub dropped_samples: u64,
    pub quarantined_segments: u64,
    /// Bytes moved to quarantine that held no intact record we could keep.
    pub quarantined_bytes: u64,
    pub torn_tails_truncated: u64,
    pub fsyncs: u64,
}

/// A batch to publish: its place in the spool and its wire bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub pos: Position,
    pub wire: Vec<u8>,
}

/// A batch just appended: where it is, where the next record starts, and its
/// record as written (the batch encoded once, for the live send too).
#[derive(Debug)]
pub struct Appended {
    pub pos: Position,
    pub next: Position,
    pub(super) payload: Vec<u8>,
}
