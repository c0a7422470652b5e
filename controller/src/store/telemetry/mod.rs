//! Telemetry writes: every sample of a group of batches and the ack marks of
//! their runs, in one transaction; dedupe is the primary key
//! (node_id, boot_id, seq). Bulk on both backends: UNNEST arrays on
//! PostgreSQL (`pg`), multi-row inserts on SQLite (`sqlite`); the marks'
//! rules are in `marks`.

mod marks;
mod pg;
mod sqlite;

use fleet_proto::v1::TelemetryBatch;

pub use marks::{RunRange, Written};

use super::Store;
use crate::ControllerError;

impl Store {
    /// Writes every sample of `batches` and moves the ack marks of `runs` in
    /// one transaction; returns the rows actually inserted (duplicates are
    /// skipped) and each run's mark as committed.
    ///
    /// # Errors
    /// Database errors; nothing is committed then.
    pub async fn write(&self, batches: &[TelemetryBatch], runs: &[RunRange]) -> Result<Written, ControllerError> {
        self.write_opt(batches, runs, false).await
    }

    /// As [`Store::write`]; `optimistic` first tries a plain insert (faster)
    /// and falls back to skipping duplicates when one is already stored. For
    /// writers that rarely see redeliveries.
    ///
    /// # Errors
    /// Database errors; nothing is committed then.
    pub async fn write_opt(
        &self,
        batches: &[TelemetryBatch],
        runs: &[RunRange],
        optimistic: bool,
    ) -> Result<Written, ControllerError> {
        match self {
            Store::Postgres(pool, _) => pg::write(pool, batches, runs, optimistic).await,
            Store::Sqlite(pool) => sqlite::write(pool, batches, runs).await,
        }
    }

    /// Number of telemetry rows stored for `node_id` (all nodes if `None`).
    ///
    /// # Errors
    /// Database errors.
    pub async fn count_samples(&self, node_id: Option<&str>) -> Result<u64, ControllerError> {
        let sql = "SELECT count(*) FROM telemetry WHERE $1 IS NULL OR node_id = $1";
        let n: i64 = match self {
            Store::Postgres(p, _) => sqlx::query_scalar(sql).bind(node_id).fetch_one(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(sql).bind(node_id).fetch_one(p).await?,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The persisted ack watermark of one agent run (`None`: nothing committed).
    ///
    /// # Errors
    /// Database errors.
    pub async fn load_ack(&self, node_id: &str, boot_id: &str) -> Result<Option<u64>, ControllerError> {
        let sql = "SELECT up_to_seq FROM ack_state WHERE node_id = $1 AND boot_id = $2";
        let v: Option<i64> = match self {
            Store::Postgres(p, _) => sqlx::query_scalar(sql).bind(node_id).bind(boot_id).fetch_optional(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(sql).bind(node_id).bind(boot_id).fetch_optional(p).await?,
        };
        Ok(v.and_then(|v| u64::try_from(v).ok()))
    }
}
