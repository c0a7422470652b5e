//! Ingest: the bulk telemetry writer. The link hands it verified batches
//! through a bounded queue (`queue`); the writer (`writer`) commits rows and
//! ack marks in one transaction, then has the link publish each run's `Ack`.

pub mod queue;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ControllerError;
use crate::link::Link;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;

/// `[ingest]`: the writer queue and the bulk writes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Writer queue capacity in batches. Default 4096.
    pub queue_batches: usize,
    /// Writer queue capacity in rows (samples), whatever the batch sizes. Default 200000.
    pub queue_rows: usize,
    /// Rows per database write at most. Default 20000.
    pub max_rows_per_write: usize,
    /// Database writes in flight at once (PostgreSQL; SQLite has one). Default 2.
    pub writers: usize,
    /// Longest wait to fill a write. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub max_write_delay: Duration,
    /// Samples with a time further than this ahead of the controller's clock
    /// are refused (and counted). Default 5 min.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            queue_batches: 4096,
            max_rows_per_write: 20_000,
            queue_rows: 200_000,
            writers: 2,
            max_write_delay: Duration::from_millis(100),
            max_future_skew: Duration::from_secs(300),
        }
    }
}

impl IngestConfig {
    /// Checks the values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the keys.
    pub fn validate(&self) -> Result<(), ControllerError> {
        if self.queue_batches == 0 || self.queue_rows == 0 || self.max_rows_per_write == 0 || self.writers == 0 {
            return Err(ControllerError::Invalid(
                "keys `ingest.queue_batches`, `ingest.queue_rows`, `ingest.max_rows_per_write` and `ingest.writers` \
                 must be at least 1"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Ingest: its writers and the receiving end of their queue.
pub struct Ingest {
    writers: Vec<writer::Writer>,
    /// The writers take the queue in turn: one gathers while others write.
    rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<queue::WriteItem>>>,
}

impl Ingest {
    /// The queue the link sends to, and the writers behind it: `writers` of
    /// them on PostgreSQL (one write's database time overlaps gathering the
    /// next), one on SQLite (it has one writer anyway).
    #[must_use]
    pub fn new(
        cfg: &IngestConfig,
        store: &Store,
        registry: &Registry,
        metrics: &Arc<Metrics>,
        link: &Link,
    ) -> (queue::WriteQueue, Self) {
        let (tx, rx) = queue::WriteQueue::new(cfg.queue_batches, cfg.queue_rows);
        let n = if matches!(store, Store::Sqlite(_)) { 1 } else { cfg.writers };
        let writers = (0..n)
            .map(|_| writer::Writer::new(store.clone(), registry.clone(), metrics.clone(), link.clone(), cfg.clone()))
            .collect();
        (tx, Self { writers, rx: Arc::new(tokio::sync::Mutex::new(rx)) })
    }

    /// Runs each writer as its own task on `tasks` until `shutdown`; what is
    /// queued by then is still written.
    pub fn spawn_on(self, tasks: &TaskTracker, shutdown: &CancellationToken) {
        for w in self.writers {
            tasks.spawn(w.run(self.rx.clone(), shutdown.clone()));
        }
    }
}
