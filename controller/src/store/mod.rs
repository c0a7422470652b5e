//! The telemetry store: SQLite (embedded default) or PostgreSQL, behind one
//! type. Writes are bulk (UNNEST arrays on PostgreSQL, multi-row inserts in
//! one transaction on SQLite); dedupe is the primary key (node_id, boot_id, seq).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use fleet_proto::v1::{TelemetryBatch, TelemetryPoint};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row};

use crate::ControllerError;

mod tiers;
pub use tiers::StorageConfig;

/// Rows per INSERT statement on SQLite (6 binds a row, well under its 32766 limit).
const SQLITE_ROWS_PER_STATEMENT: usize = 2000;
/// Raw rows a bucketed query reads at most before it answers truncated.
const MAX_ROWS_SCANNED: i64 = 2_000_000;

/// An acknowledgement watermark to persist with the rows it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckMark {
    pub node_id: String,
    pub boot_id: String,
    pub up_to_seq: u64,
}

/// The answer to a telemetry query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    pub points: Vec<TelemetryPoint>,
    pub truncated: bool,
}

/// Where telemetry lives.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating if needed) `data_dir/fleet.db` and applies migrations.
    ///
    /// # Errors
    /// When the directory or database cannot be created or migrated.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self, ControllerError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            ControllerError::Config(format!(
                "cannot create data dir {}: {e}; pass a writable --data-dir",
                data_dir.display()
            ))
        })?;
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(data_dir.join("fleet.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Store::Sqlite(pool))
    }

    /// Connects to PostgreSQL and applies migrations.
    ///
    /// # Errors
    /// When the server cannot be reached or the schema cannot be migrated.
    pub async fn open_postgres(url: &str) -> Result<Self, ControllerError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| ControllerError::Config(format!("cannot connect to --database-url: {e}")))?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Store::Postgres(pool))
    }

    /// Short name of the backend, for logs and metrics.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Checks the database answers.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), ControllerError> {
        match self {
            Store::Sqlite(p) => {
                sqlx::query("SELECT 1").execute(p).await?;
            }
            Store::Postgres(p) => {
                sqlx::query("SELECT 1").execute(p).await?;
            }
        }
        Ok(())
    }

    /// Writes every sample of `batches` and the ack marks in one transaction;
    /// returns the rows actually inserted (duplicates are skipped).
    ///
    /// # Errors
    /// Database errors; nothing is committed then.
    pub async fn write(&self, batches: &[TelemetryBatch], marks: &[AckMark]) -> Result<u64, ControllerError> {
        match self {
            Store::Postgres(pool) => write_pg(pool, batches, marks).await,
            Store::Sqlite(pool) => write_sqlite(pool, batches, marks).await,
        }
    }

    /// Number of telemetry rows stored for `node_id` (all nodes if `None`).
    ///
    /// # Errors
    /// Database errors.
    pub async fn count_samples(&self, node_id: Option<&str>) -> Result<u64, ControllerError> {
        let sql = "SELECT count(*) FROM telemetry WHERE $1 IS NULL OR node_id = $1";
        let n: i64 = match self {
            Store::Postgres(p) => sqlx::query_scalar(sql).bind(node_id).fetch_one(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(sql).bind(node_id).fetch_one(p).await?,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Stores the next version of a node's desired state: the given one with
    /// `version` = previous + 1. With `expected` non-zero, only if the current
    /// version is `expected`. Returns the stored state, or `None` on a version mismatch.
    ///
    /// # Errors
    /// Database errors.
    pub async fn put_desired(
        &self,
        mut desired: fleet_proto::v1::DesiredState,
        expected: u64,
    ) -> Result<Option<fleet_proto::v1::DesiredState>, ControllerError> {
        use prost::Message;
        let node = desired.node_id.clone();
        let current = self.get_desired(&node).await?.map_or(0, |d| d.version);
        if expected != 0 && expected != current {
            return Ok(None);
        }
        desired.version = current + 1;
        let payload = desired.encode_to_vec();
        let v = i64_of(desired.version);
        // The version check in WHERE makes concurrent writers fail instead of both winning.
        let done = match self {
            Store::Postgres(p) => sqlx::query(
                "INSERT INTO desired_state (node_id, version, payload) VALUES ($1, $2, $3) \
                 ON CONFLICT (node_id) DO UPDATE SET version = EXCLUDED.version, payload = EXCLUDED.payload, \
                 updated_at = now() WHERE desired_state.version = $2 - 1",
            )
            .bind(&node)
            .bind(v)
            .bind(&payload)
            .execute(p)
            .await?
            .rows_affected(),
            Store::Sqlite(p) => sqlx::query(
                "INSERT INTO desired_state (node_id, version, payload, updated_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (node_id) DO UPDATE SET version = excluded.version, payload = excluded.payload, \
                 updated_ms = excluded.updated_ms WHERE desired_state.version = $2 - 1",
            )
            .bind(&node)
            .bind(v)
            .bind(&payload)
            .bind(fleet_proto::now_unix_ms())
            .execute(p)
            .await?
            .rows_affected(),
        };
        Ok((done == 1).then_some(desired))
    }

    /// The latest desired state of a node.
    ///
    /// # Errors
    /// Database errors, or a stored payload that does not decode.
    pub async fn get_desired(&self, node_id: &str) -> Result<Option<fleet_proto::v1::DesiredState>, ControllerError> {
        let sql = "SELECT payload FROM desired_state WHERE node_id = $1";
        let payload: Option<Vec<u8>> = match self {
            Store::Postgres(p) => sqlx::query_scalar(sql).bind(node_id).fetch_optional(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(sql).bind(node_id).fetch_optional(p).await?,
        };
        payload.map(|b| decode_desired(&b)).transpose()
    }

    /// Every stored desired state (republished when the broker reconnects).
    ///
    /// # Errors
    /// Database errors.
    pub async fn all_desired(&self) -> Result<Vec<fleet_proto::v1::DesiredState>, ControllerError> {
        let sql = "SELECT payload FROM desired_state ORDER BY node_id";
        let rows: Vec<Vec<u8>> = match self {
            Store::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await?,
        };
        rows.iter().map(|b| decode_desired(b)).collect()
    }

    /// The persisted ack watermark of one agent run.
    ///
    /// # Errors
    /// Database errors.
    pub async fn load_ack(&self, node_id: &str, boot_id: &str) -> Result<Option<u64>, ControllerError> {
        let sql = "SELECT up_to_seq FROM ack_state WHERE node_id = $1 AND boot_id = $2";
        let v: Option<i64> = match self {
            Store::Postgres(p) => sqlx::query_scalar(sql).bind(node_id).bind(boot_id).fetch_optional(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(sql).bind(node_id).bind(boot_id).fetch_optional(p).await?,
        };
        Ok(v.and_then(|v| u64::try_from(v).ok()))
    }

    /// Samples of one metric of one node in `[start, end)` (ms), raw when
    /// `bucket_s` is 0, else aggregated per bucket; at most `limit` points.
    ///
    /// # Errors
    /// Database errors.
    pub async fn query(
        &self,
        node_id: &str,
        metric: &str,
        start_ms: i64,
        end_ms: i64,
        bucket_s: u32,
        limit: usize,
    ) -> Result<QueryResult, ControllerError> {
        // Tier by bucket: whole hours from the 1 h rollups, whole minutes from
        // the 1 min rollups, anything else (and raw samples) from raw rows.
        if bucket_s >= 3600 && bucket_s.is_multiple_of(3600) {
            return self.query_rollup("telemetry_1h", node_id, metric, (start_ms, end_ms), bucket_s, limit).await;
        }
        if bucket_s >= 60 && bucket_s.is_multiple_of(60) {
            return self.query_rollup("telemetry_1m", node_id, metric, (start_ms, end_ms), bucket_s, limit).await;
        }
        let cap =
            if bucket_s == 0 { i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1) } else { MAX_ROWS_SCANNED };
        let rows: Vec<(i64, f64)> = match self {
            Store::Postgres(p) => sqlx::query(
                "SELECT (extract(epoch FROM ts) * 1000)::int8 AS t, value FROM telemetry \
                     WHERE node_id = $1 AND metric = $2 \
                       AND ts >= 'epoch'::timestamptz + $3 * interval '1 millisecond' \
                       AND ts <  'epoch'::timestamptz + $4 * interval '1 millisecond' \
                     ORDER BY ts, boot_id, seq LIMIT $5",
            )
            .bind(node_id)
            .bind(metric)
            .bind(start_ms)
            .bind(end_ms)
            .bind(cap)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<f64, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()?,
            Store::Sqlite(p) => sqlx::query(
                "SELECT ts_ms, value FROM telemetry WHERE node_id = $1 AND metric = $2 \
                 AND ts_ms >= $3 AND ts_ms < $4 ORDER BY ts_ms, boot_id, seq LIMIT $5",
            )
            .bind(node_id)
            .bind(metric)
            .bind(start_ms)
            .bind(end_ms)
            .bind(cap)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<f64, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()?,
        };
        Ok(aggregate(&rows, bucket_s, limit, rows.len() as i64 >= cap && bucket_s > 0))
    }
}

fn decode_desired(b: &[u8]) -> Result<fleet_proto::v1::DesiredState, ControllerError> {
    use prost::Message;
    fleet_proto::v1::DesiredState::decode(b)
        .map_err(|e| ControllerError::Io(format!("stored desired state does not decode: {e}")))
}

/// Turns time-ordered raw rows into points: one per row, or one per bucket.
fn aggregate(rows: &[(i64, f64)], bucket_s: u32, limit: usize, scan_truncated: bool) -> QueryResult {
    let mut points: Vec<TelemetryPoint> = Vec::new();
    if bucket_s == 0 {
        for &(t, v) in rows.iter().take(limit) {
            points.push(TelemetryPoint { time_unix_ms: t, avg: v, min: v, max: v, last: v, count: 1 });
        }
        return QueryResult { points, truncated: rows.len() > limit };
    }
    let width = i64::from(bucket_s) * 1000;
    let mut sum = 0.0;
    for &(t, v) in rows {
        let start = t.div_euclid(width) * width;
        match points.last_mut() {
            Some(p) if p.time_unix_ms == start => {
                sum += v;
                p.count += 1;
                p.min = p.min.min(v);
                p.max = p.max.max(v);
                p.last = v;
                p.avg = sum / p.count as f64;
            }
            _ => {
                if points.len() == limit {
                    return QueryResult { points, truncated: true };
                }
                sum = v;
                points.push(TelemetryPoint { time_unix_ms: start, avg: v, min: v, max: v, last: v, count: 1 });
            }
        }
    }
    QueryResult { points, truncated: scan_truncated }
}

async fn write_pg(pool: &PgPool, batches: &[TelemetryBatch], marks: &[AckMark]) -> Result<u64, ControllerError> {
    let n: usize = batches.iter().map(|b| b.samples.len()).sum();
    let (mut nodes, mut boots, mut seqs, mut ts, mut metrics, mut values) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for b in batches {
        for (i, s) in b.samples.iter().enumerate() {
            nodes.push(b.node_id.as_str());
            boots.push(b.boot_id.as_str());
            seqs.push(i64_of(b.first_seq + i as u64));
            ts.push(s.time_unix_ms);
            metrics.push(s.metric.as_str());
            values.push(s.value);
        }
    }
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO telemetry (node_id, boot_id, seq, ts, metric, value) \
         SELECT n, b, s, 'epoch'::timestamptz + t * interval '1 millisecond', m, v \
         FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::float8[]) AS u(n, b, s, t, m, v) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&nodes)
    .bind(&boots)
    .bind(&seqs)
    .bind(&ts)
    .bind(&metrics)
    .bind(&values)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let hours = tiers::dirty_hours(batches);
    if !hours.is_empty() {
        sqlx::query(
            "INSERT INTO rollup_dirty (hour_ms, marked_ms) SELECT h, $2 FROM UNNEST($1::int8[]) AS u(h) \
             ON CONFLICT (hour_ms) DO UPDATE SET marked_ms = EXCLUDED.marked_ms",
        )
        .bind(&hours)
        .bind(fleet_proto::now_unix_ms())
        .execute(&mut *tx)
        .await?;
    }
    if !marks.is_empty() {
        let n: Vec<&str> = marks.iter().map(|m| m.node_id.as_str()).collect();
        let b: Vec<&str> = marks.iter().map(|m| m.boot_id.as_str()).collect();
        let s: Vec<i64> = marks.iter().map(|m| i64_of(m.up_to_seq)).collect();
        sqlx::query(
            "INSERT INTO ack_state (node_id, boot_id, up_to_seq) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[]) \
             ON CONFLICT (node_id, boot_id) DO UPDATE \
             SET up_to_seq = GREATEST(ack_state.up_to_seq, EXCLUDED.up_to_seq), updated_at = now()",
        )
        .bind(&n)
        .bind(&b)
        .bind(&s)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

async fn write_sqlite(
    pool: &SqlitePool,
    batches: &[TelemetryBatch],
    marks: &[AckMark],
) -> Result<u64, ControllerError> {
    let rows = batches
        .iter()
        .flat_map(|b| b.samples.iter().enumerate().map(move |(i, s)| (b, i64_of(b.first_seq + i as u64), s)));
    let rows: Vec<_> = rows.collect();
    let mut tx = pool.begin().await?;
    let mut inserted = 0;
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
    for m in marks {
        sqlx::query(
            "INSERT INTO ack_state (node_id, boot_id, up_to_seq, updated_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (node_id, boot_id) DO UPDATE \
             SET up_to_seq = max(up_to_seq, excluded.up_to_seq), updated_ms = excluded.updated_ms",
        )
        .bind(m.node_id.as_str())
        .bind(m.boot_id.as_str())
        .bind(i64_of(m.up_to_seq))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_aggregate_avg_min_max_last() {
        let rows = [(1000, 1.0), (1500, 3.0), (2000, 10.0), (3999, 2.0)];
        let r = aggregate(&rows, 2, 10, false);
        assert_eq!(r.points.len(), 2);
        let p = &r.points[0];
        assert_eq!((p.time_unix_ms, p.count, p.min, p.max, p.last), (0, 2, 1.0, 3.0, 3.0));
        assert!((p.avg - 2.0).abs() < 1e-12);
        let q = &r.points[1];
        assert_eq!((q.time_unix_ms, q.count, q.last), (2000, 2, 2.0));
        assert!((q.avg - 6.0).abs() < 1e-12);
        let raw = aggregate(&rows, 0, 3, false);
        assert_eq!(raw.points.len(), 3);
        assert!(raw.truncated);
        assert!(aggregate(&rows, 2, 1, false).truncated);
    }
}
