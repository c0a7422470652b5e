//! The SQLite telemetry write.

use fleet_proto::v1::TelemetryBatch;
use sqlx::QueryBuilder;
use sqlx::SqliteConnection;
use sqlx::sqlite::SqlitePool;

use super::marks::{RunRange, STORED_RANGES, Written, apply_runs, run_keys, stored_marks};
use crate::ControllerError;
use crate::store::acks::RunMark;
use crate::store::{i64_of, tiers};

/// Rows per INSERT statement on SQLite (6 binds a row, well under its 32766 limit).
const SQLITE_ROWS_PER_STATEMENT: usize = 2000;
pub(super) async fn write(
    pool: &SqlitePool,
    batches: &[TelemetryBatch],
    runs: &[RunRange],
) -> Result<Written, ControllerError> {
    let rows = batches
        .iter()
        .flat_map(|b| b.samples.iter().enumerate().map(move |(i, s)| (b, i64_of(b.first_seq + i as u64), s)));
    let rows: Vec<_> = rows.collect();
    let mut tx = pool.begin().await?;
    let mut inserted = 0;
    // The first write takes SQLite's write lock, so the marks read below
    // cannot change under this transaction.
    for chunk in rows.chunks(SQLITE_ROWS_PER_STATEMENT) {
        let mut qb =
            QueryBuilder::new("INSERT OR IGNORE INTO telemetry (node_id, boot_id, seq, ts_ms, metric, value) ");
        qb.push_values(chunk, |mut r, (b, seq, s)| {
            r.push_bind(b.node_id.as_str())
                .push_bind(b.boot_id.as_str())
                .push_bind(*seq)
                .push_bind(s.time_unix_ms)
                .push_bind(s.metric.as_str())
                .push_bind(s.value);
        });
        inserted += qb.build().execute(&mut *tx).await?.rows_affected();
    }
    let now = fleet_proto::now_unix_ms();
    for h in tiers::dirty_hours(batches) {
        sqlx::query(
            "INSERT INTO rollup_dirty (hour_ms, marked_ms) VALUES ($1, $2) \
             ON CONFLICT (hour_ms) DO UPDATE SET marked_ms = excluded.marked_ms",
        )
        .bind(h)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let marks = read_marks(&mut tx, runs).await?;
    save_marks(&mut tx, &marks, now).await?;
    tx.commit().await?;
    Ok(Written { inserted, marks })
}

/// Each run's stored mark with `runs` applied (the write lock is held: they cannot change meanwhile).
async fn read_marks(
    tx: &mut SqliteConnection,
    runs: &[RunRange],
) -> Result<Vec<(String, String, RunMark)>, ControllerError> {
    let keys = run_keys(runs);
    let mut state = Vec::with_capacity(keys.len());
    let mut ranges = Vec::new();
    for &(n, b) in &keys {
        let up_to: Option<i64> =
            sqlx::query_scalar("SELECT up_to_seq FROM ack_state WHERE node_id = $1 AND boot_id = $2")
                .bind(n)
                .bind(b)
                .fetch_optional(&mut *tx)
                .await?;
        state.push((n.to_owned(), b.to_owned(), up_to.unwrap_or(-1)));
        let r: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT node_id, boot_id, start_seq, end_seq FROM ack_ranges WHERE node_id = $1 AND boot_id = $2",
        )
        .bind(n)
        .bind(b)
        .fetch_all(&mut *tx)
        .await?;
        ranges.extend(r);
    }
    Ok(apply_runs(&keys, stored_marks(state, ranges), runs))
}

/// Stores each run's new watermark and its ranges above it.
async fn save_marks(
    tx: &mut SqliteConnection,
    marks: &[(String, String, RunMark)],
    now: i64,
) -> Result<(), ControllerError> {
    for (n, b, m) in marks {
        sqlx::query(
            "INSERT INTO ack_state (node_id, boot_id, up_to_seq, updated_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (node_id, boot_id) DO UPDATE SET up_to_seq = excluded.up_to_seq, updated_ms = excluded.updated_ms",
        )
        .bind(n.as_str())
        .bind(b.as_str())
        .bind(m.up_to().map_or(-1, i64_of))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM ack_ranges WHERE node_id = $1 AND boot_id = $2")
            .bind(n.as_str())
            .bind(b.as_str())
            .execute(&mut *tx)
            .await?;
        for (s, e) in m.ranges(STORED_RANGES) {
            sqlx::query("INSERT INTO ack_ranges (node_id, boot_id, start_seq, end_seq) VALUES ($1, $2, $3, $4)")
                .bind(n.as_str())
                .bind(b.as_str())
                .bind(i64_of(s))
                .bind(i64_of(e))
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}
