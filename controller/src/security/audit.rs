//! The audit log's writer: calls hand their records to a bounded queue and
//! go on; one task writes them. A full queue makes callers wait (nothing is
//! dropped); at shutdown the queue is written out before the task ends.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::Store;
use crate::store::security::AuditEntry;

/// Records waiting to be written at most.
const QUEUE: usize = 10_000;

/// Hands audit records to the writer.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<AuditEntry>,
}

impl Auditor {
    /// Starts the writer on `tasks`; it stops after `shutdown`, once the queue is written.
    #[must_use]
    pub fn start(store: Store, tasks: &TaskTracker, shutdown: CancellationToken) -> Self {
        let (tx, mut rx) = mpsc::channel::<AuditEntry>(QUEUE);
        tasks.spawn(async move {
            loop {
                let e = tokio::select! {
                    e = rx.recv() => e,
                    () = shutdown.cancelled() => { rx.close(); rx.recv().await }
                };
                let Some(e) = e else { return };
                if let Err(err) = store.append_audit(&e).await {
                    tracing::error!(error = %err, actor = %e.actor, action = %e.action, target = %e.target,
                        "Cannot write an audit record; it is in this log line instead.");
                }
            }
        });
        Self { tx }
    }

    /// Records one call: `result` is `ok` or the gRPC code and message.
    pub async fn record(&self, actor: &str, action: &str, target: &str, status: Option<&tonic::Status>) {
        let result = status.map_or_else(|| "ok".to_owned(), |s| format!("{:?}: {}", s.code(), s.message()));
        let e = AuditEntry {
            at_unix_ms: fleet_proto::now_unix_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            result,
        };
        if let Err(mpsc::error::SendError(e)) = self.tx.send(e).await {
            // Only after shutdown: the record goes to the log instead.
            tracing::warn!(actor = %e.actor, action = %e.action, target = %e.target, result = %e.result,
                "Audit record after shutdown (not stored).");
        }
    }

    /// Records how a call ended.
    pub async fn record_result<T>(&self, actor: &str, action: &str, target: &str, r: &Result<T, tonic::Status>) {
        self.record(actor, action, target, r.as_ref().err()).await;
    }
}
