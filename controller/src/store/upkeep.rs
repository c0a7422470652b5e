//! The periodic storage job as a task: partitions ahead, rollups of the
//! hours writes touched, retention (`tiers` does the work).

use tokio_util::sync::CancellationToken;

use super::{StorageConfig, Store};

/// Runs the storage job every `job_interval`.
pub struct Upkeep {
    store: Store,
    cfg: StorageConfig,
}

impl Upkeep {
    /// Upkeep of `store` by `cfg`.
    #[must_use]
    pub fn new(store: Store, cfg: StorageConfig) -> Self {
        Self { store, cfg }
    }

    /// Runs until `shutdown`; a failed round is logged and retried the next.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.job_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.store.storage_job(&self.cfg, fleet_proto::now_unix_ms()).await {
                tracing::error!(error = %e, "Storage upkeep (partitions, rollups, retention) failed; retrying next round.");
            }
        }
    }
}
