//! The bounded queue between the link and the writers.

use std::sync::Arc;
use std::time::Instant;

use fleet_proto::v1::TelemetryBatch;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::ControllerError;

/// A batch for the writer; `done` (Kafka) hears whether its rows are committed.
#[derive(Debug)]
pub struct WriteItem {
    pub batch: TelemetryBatch,
    pub done: Option<tokio::sync::oneshot::Sender<bool>>,
    /// When it entered the queue: the write lag metric is measured from here.
    pub queued_at: Instant,
    /// Its rows' share of the queue, given back once written.
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// Its trace's span, open until its rows are committed (docs/tracing.md).
    pub span: tracing::Span,
}

/// The queue to the writers, bounded twice: at most `batches` batches and
/// `rows` rows (so memory stays bounded whatever the batch size). Sending
/// waits for room: that wait is the backpressure on the MQTT reader and the
/// Kafka consumer.
#[derive(Debug, Clone)]
pub struct WriteQueue {
    tx: mpsc::Sender<WriteItem>,
    rows: Arc<Semaphore>,
    max_rows: u32,
}

impl WriteQueue {
    /// A queue and the receiving end the writers share.
    #[must_use]
    pub fn new(batches: usize, rows: usize) -> (Self, mpsc::Receiver<WriteItem>) {
        let (tx, rx) = mpsc::channel(batches.max(1));
        let max_rows = u32::try_from(rows.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        (Self { tx, rows: Arc::new(Semaphore::new(max_rows as usize)), max_rows }, rx)
    }

    /// Queues `item` once there is room.
    ///
    /// # Errors
    /// `Stopped` when the writers are gone (shutdown).
    pub async fn send(&self, mut item: WriteItem) -> Result<(), ControllerError> {
        let n = u32::try_from(item.batch.samples.len()).unwrap_or(u32::MAX).clamp(1, self.max_rows);
        item.permit = Some(self.rows.clone().acquire_many_owned(n).await.map_err(|_| ControllerError::Stopped)?);
        self.tx.send(item).await.map_err(|_| ControllerError::Stopped)
    }
}

impl WriteItem {
    /// A batch for the writers in `span`; `done`, if any, hears whether its rows were committed.
    #[must_use]
    pub fn new(batch: TelemetryBatch, done: Option<tokio::sync::oneshot::Sender<bool>>, span: tracing::Span) -> Self {
        Self { batch, done, queued_at: Instant::now(), permit: None, span }
    }
}
