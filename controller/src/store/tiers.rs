//! The cold tier: 1 minute and 1 hour rollups and retention, the same on
//! SQLite and plain PostgreSQL. Every write marks the hours it touched; a
//! periodic job recomputes those hours' rollups from the raw rows (so late,
//! replayed and redelivered samples are counted exactly once), then applies
//! retention. On PostgreSQL the job holds a transaction-scoped advisory lock,
//! so with several replicas one runs it at a time.

use std::time::Duration;

use fleet_proto::v1::TelemetryBatch;
use serde::Deserialize;

use super::{PgFlavour, Store};
use crate::ControllerError;

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;
/// Advisory lock of one rollup recompute ("fleetjob" in ASCII).
const ROLLUP_LOCK: i64 = 0x666c_6565_746a_6f62;
/// PostgreSQL advisory lock key of the whole periodic storage job ("fleetprt"):
/// the replica holding it runs partition upkeep, rollups and retention.
pub const JOB_LOCK: i64 = 0x666c_6565_7470_7274;
const DAY_MS: i64 = 86_400_000;
/// PostgreSQL's SQLSTATE for a table that exists already.
const DUPLICATE_TABLE: &str = "42P07";

/// Which schema a PostgreSQL database gets (`storage.postgres_schema`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PostgresSchema {
    /// A new database gets TimescaleDB where `CREATE EXTENSION timescaledb`
    /// works, plain PostgreSQL otherwise; an existing one keeps its schema.
    Auto,
    /// TimescaleDB, or the controller does not start.
    Timescaledb,
    /// Plain PostgreSQL with daily partitions, even where TimescaleDB is installed.
    Postgres,
}

/// `[storage]`: rollups and retention.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// How often dirty hours are rolled up and retention applied. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub job_interval: Duration,
    /// Raw samples are kept this long. Default 7 days.
    #[serde(with = "humantime_serde")]
    pub raw_retention: Duration,
    /// 1 minute rollups are kept this long. Default 90 days.
    #[serde(with = "humantime_serde")]
    pub rollup_1m_retention: Duration,
    /// 1 hour rollups are kept this long. Default 2 years.
    #[serde(with = "humantime_serde")]
    pub rollup_1h_retention: Duration,
    /// Plain PostgreSQL: daily partitions created this many days ahead. Default 3.
    pub partitions_ahead_days: u32,
    /// Which schema a PostgreSQL database gets. Default `auto`.
    pub postgres_schema: PostgresSchema,
    /// TimescaleDB: raw chunks older than this are compressed. Default 1 day.
    #[serde(with = "humantime_serde")]
    pub compress_after: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            job_interval: Duration::from_secs(30),
            raw_retention: Duration::from_secs(7 * 86_400),
            rollup_1m_retention: Duration::from_secs(90 * 86_400),
            rollup_1h_retention: Duration::from_secs(730 * 86_400),
            partitions_ahead_days: 3,
            postgres_schema: PostgresSchema::Auto,
            compress_after: Duration::from_secs(86_400),
        }
    }
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Raw rows deleted one by one (SQLite; PostgreSQL's default partition).
    pub rows_deleted: u64,
    /// Whole daily partitions dropped (plain PostgreSQL).
    pub partitions_dropped: u64,
}

/// The hours (start, ms) the samples of `batches` fall in.
pub(super) fn dirty_hours(batches: &[TelemetryBatch]) -> Vec<i64> {
    let mut v: Vec<i64> =
        batches.iter().flat_map(|b| b.samples.iter().map(|s| s.time_unix_ms.div_euclid(HOUR_MS) * HOUR_MS)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// Raw rows with their time in ms, for the two backends.
const PG_RAW: &str = "SELECT node_id, metric, (extract(epoch FROM ts) * 1000)::int8 AS ts_ms, value, boot_id, seq \
     FROM telemetry WHERE ts >= 'epoch'::timestamptz + $1 * interval '1 millisecond' \
       AND ts < 'epoch'::timestamptz + $2 * interval '1 millisecond'";
const SQLITE_RAW: &str =
    "SELECT node_id, metric, ts_ms, value, boot_id, seq FROM telemetry WHERE ts_ms >= $1 AND ts_ms < $2";

fn rollup_1m_sql(raw: &str) -> String {
    format!(
        "INSERT INTO telemetry_1m (node_id, metric, bucket_ms, count, sum, min, max, last, last_ms) \
         SELECT node_id, metric, b, count(*), sum(value), min(value), max(value), \
                max(CASE WHEN rn = 1 THEN value END), max(ts_ms) \
         FROM (SELECT node_id, metric, (ts_ms / {MINUTE_MS}) * {MINUTE_MS} AS b, value, ts_ms, \
                      row_number() OVER (PARTITION BY node_id, metric, ts_ms / {MINUTE_MS} \
                                         ORDER BY ts_ms DESC, boot_id DESC, seq DESC) AS rn \
               FROM ({raw}) AS r) AS x \
         GROUP BY node_id, metric, b"
    )
}

const ROLLUP_1H: &str = "INSERT INTO telemetry_1h (node_id, metric, bucket_ms, count, sum, min, max, last, last_ms) \
     SELECT node_id, metric, $1, sum(count), sum(sum), min(min), max(max), \
            max(CASE WHEN rn = 1 THEN last END), max(last_ms) \
     FROM (SELECT *, row_number() OVER (PARTITION BY node_id, metric ORDER BY last_ms DESC) AS rn \
           FROM telemetry_1m WHERE bucket_ms >= $1 AND bucket_ms < $2) AS x \
     GROUP BY node_id, metric";

/// One dirty hour, inside the caller's transaction `$tx`, then commit: the
/// same statements on both backends, only the raw-rows query differs.
macro_rules! recompute_hour {
    ($tx:ident, $raw:expr, $hour:expr, $end:expr, $marked:expr) => {
        sqlx::query("DELETE FROM telemetry_1m WHERE bucket_ms >= $1 AND bucket_ms < $2")
            .bind($hour)
            .bind($end)
            .execute(&mut *$tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(rollup_1m_sql($raw))).bind($hour).bind($end).execute(&mut *$tx).await?;
        sqlx::query("DELETE FROM telemetry_1h WHERE bucket_ms = $1").bind($hour).execute(&mut *$tx).await?;
        sqlx::query(ROLLUP_1H).bind($hour).bind($end).execute(&mut *$tx).await?;
        sqlx::query("DELETE FROM rollup_dirty WHERE hour_ms = $1 AND marked_ms = $2")
            .bind($hour)
            .bind($marked)
            .execute(&mut *$tx)
            .await?;
        $tx.commit().await?;
    };
}

impl Store {
    /// Recomputes the rollups of up to `limit` dirty hours; returns how many.
    /// With another replica running the job (PostgreSQL), does nothing.
    ///
    /// # Errors
    /// Database errors.
    pub async fn rollup_dirty(&self, limit: i64) -> Result<usize, ControllerError> {
        let dirty: Vec<(i64, i64)> = match self {
            Store::Postgres(p, _) => {
                sqlx::query_as("SELECT hour_ms, marked_ms FROM rollup_dirty ORDER BY hour_ms LIMIT $1")
                    .bind(limit)
                    .fetch_all(p)
                    .await?
            }
            Store::Sqlite(p) => {
                sqlx::query_as("SELECT hour_ms, marked_ms FROM rollup_dirty ORDER BY hour_ms LIMIT $1")
                    .bind(limit)
                    .fetch_all(p)
                    .await?
            }
        };
        let mut done = 0;
        for (hour, marked) in dirty {
            let end = hour + HOUR_MS;
            match self {
                Store::Postgres(p, _) => {
                    let mut tx = p.begin().await?;
                    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                        .bind(ROLLUP_LOCK)
                        .fetch_one(&mut *tx)
                        .await?;
                    if !locked {
                        return Ok(done);
                    }
                    recompute_hour!(tx, PG_RAW, hour, end, marked);
                }
                Store::Sqlite(p) => {
                    let mut tx = p.begin().await?;
                    recompute_hour!(tx, SQLITE_RAW, hour, end, marked);
                }
            }
            done += 1;
        }
        Ok(done)
    }

    /// Deletes what is past its retention: raw rows (only in hours already
    /// rolled up; on PostgreSQL whole daily partitions, and rows of the
    /// default partition; on TimescaleDB whole chunks), 1 minute and 1 hour
    /// rollups, old ack marks.
    ///
    /// # Errors
    /// Database errors.
    pub async fn apply_retention(&self, cfg: &StorageConfig, now_ms: i64) -> Result<Retention, ControllerError> {
        let raw_cut = now_ms - ms(cfg.raw_retention);
        let m_cut = now_ms - ms(cfg.rollup_1m_retention);
        let h_cut = now_ms - ms(cfg.rollup_1h_retention);
        // Never drop raw rows of an hour whose rollups are still to be computed.
        let first_dirty = "(SELECT coalesce(min(hour_ms), 9223372036854775807) FROM rollup_dirty)";
        let deleted = match self {
            Store::Postgres(p, flavour) => {
                let mut n = Retention::default();
                let cut: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT least($1, {first_dirty})")))
                    .bind(raw_cut)
                    .fetch_one(p)
                    .await?;
                if *flavour == PgFlavour::Plain {
                    n.partitions_dropped = drop_partitions_before(p, cut).await?;
                    n.rows_deleted = sqlx::query(
                        "DELETE FROM telemetry_default WHERE ts < 'epoch'::timestamptz + $1 * interval '1 millisecond'",
                    )
                    .bind(cut)
                    .execute(p)
                    .await?
                    .rows_affected();
                } else {
                    n.partitions_dropped = drop_chunks_before(p, cut).await?;
                }
                sqlx::query("DELETE FROM telemetry_1m WHERE bucket_ms < $1").bind(m_cut).execute(p).await?;
                sqlx::query("DELETE FROM telemetry_1h WHERE bucket_ms < $1").bind(h_cut).execute(p).await?;
                sqlx::query(
                    "DELETE FROM ack_ranges r USING ack_state a WHERE r.node_id = a.node_id AND r.boot_id = a.boot_id \
                     AND a.updated_at < 'epoch'::timestamptz + $1 * interval '1 millisecond'",
                )
                .bind(raw_cut)
                .execute(p)
                .await?;
                sqlx::query(
                    "DELETE FROM ack_state WHERE updated_at < 'epoch'::timestamptz + $1 * interval '1 millisecond'",
                )
                .bind(raw_cut)
                .execute(p)
                .await?;
                n
            }
            Store::Sqlite(p) => {
                let rows_deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM telemetry WHERE ts_ms < min($1, {first_dirty})"
                )))
                .bind(raw_cut)
                .execute(p)
                .await?
                .rows_affected();
                let n = Retention { rows_deleted, partitions_dropped: 0 };
                sqlx::query("DELETE FROM telemetry_1m WHERE bucket_ms < $1").bind(m_cut).execute(p).await?;
                sqlx::query("DELETE FROM telemetry_1h WHERE bucket_ms < $1").bind(h_cut).execute(p).await?;
                sqlx::query(
                    "DELETE FROM ack_ranges WHERE EXISTS (SELECT 1 FROM ack_state a WHERE a.node_id = ack_ranges.node_id \
                     AND a.boot_id = ack_ranges.boot_id AND a.updated_ms < $1)",
                )
                .bind(raw_cut)
                .execute(p)
                .await?;
                sqlx::query("DELETE FROM ack_state WHERE updated_ms < $1").bind(raw_cut).execute(p).await?;
                n
            }
        };
        Ok(deleted)
    }

    /// The periodic storage job: partitions ahead (plain PostgreSQL), rollups
    /// of dirty hours, compression of chunks older than `compress_after`
    /// (TimescaleDB), retention. On PostgreSQL it runs under a session
    /// advisory lock, so with several replicas one runs it at a time; returns
    /// false when another replica holds it.
    ///
    /// # Errors
    /// Database errors.
    pub async fn storage_job(&self, cfg: &StorageConfig, now_ms: i64) -> Result<bool, ControllerError> {
        match self {
            Store::Sqlite(_) => {
                while self.rollup_dirty(64).await? == 64 {}
                self.apply_retention(cfg, now_ms).await?;
                Ok(true)
            }
            Store::Postgres(p, flavour) => {
                let mut conn = p.acquire().await?;
                let locked: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(JOB_LOCK).fetch_one(&mut *conn).await?;
                if !locked {
                    return Ok(false);
                }
                let r = async {
                    if *flavour == PgFlavour::Plain {
                        self.ensure_partitions(cfg, now_ms).await?;
                    }
                    while self.rollup_dirty(64).await? == 64 {}
                    if *flavour == PgFlavour::Timescale {
                        compress_chunks_before(p, now_ms - ms(cfg.compress_after)).await?;
                    }
                    self.apply_retention(cfg, now_ms).await
                }
                .await;
                let unlocked: Result<bool, _> =
                    sqlx::query_scalar("SELECT pg_advisory_unlock($1)").bind(JOB_LOCK).fetch_one(&mut *conn).await;
                if unlocked.is_err() {
                    // The lock lives as long as the session: end it.
                    conn.detach();
                }
                r.map(|_| true)
            }
        }
    }

    /// TimescaleDB: removes the policies an older schema left to the
    /// extension's scheduler (compression and retention of raw rows); the
    /// storage job does that work itself (docs/schema.md).
    ///
    /// # Errors
    /// Database errors.
    pub async fn timescale_policies(&self) -> Result<(), ControllerError> {
        let Store::Postgres(p, PgFlavour::Timescale) = self else { return Ok(()) };
        sqlx::query("SELECT remove_compression_policy('telemetry', if_exists => true)").execute(p).await?;
        sqlx::query("SELECT remove_retention_policy('telemetry', if_exists => true)").execute(p).await?;
        Ok(())
    }

    /// Plain PostgreSQL: makes sure the daily partitions from today to
    /// `partitions_ahead_days` on exist; rows already waiting in
    /// `telemetry_default` for a new day move into it. Returns how many were made.
    ///
    /// # Errors
    /// Database errors.
    pub async fn ensure_partitions(&self, cfg: &StorageConfig, now_ms: i64) -> Result<usize, ControllerError> {
        let Store::Postgres(p, PgFlavour::Plain) = self else { return Ok(0) };
        let today = now_ms.div_euclid(DAY_MS) * DAY_MS;
        let mut made = 0;
        'days: for d in 0..=i64::from(cfg.partitions_ahead_days) {
            let lo = today + d * DAY_MS;
            let (name, lo_lit, hi_lit): (String, String, String) = sqlx::query_as(
                "SELECT 'telemetry_p' || to_char(d, 'YYYYMMDD'), to_char(d, 'YYYY-MM-DD') || ' 00:00:00+00', \
                        to_char(d + 1, 'YYYY-MM-DD') || ' 00:00:00+00' \
                 FROM (SELECT (to_timestamp($1 / 1000.0) AT TIME ZONE 'UTC')::date AS d) AS x",
            )
            .bind(lo)
            .fetch_one(p)
            .await?;
            // Identifiers and bounds cannot be bound; these come from to_char of a date.
            let safe = |v: &str| v.chars().all(|c| c.is_ascii_alphanumeric() || " _-:+".contains(c));
            if !(safe(&name) && safe(&lo_lit) && safe(&hi_lit)) {
                return Err(ControllerError::Io(format!("unexpected partition name {name:?}")));
            }
            let exists: bool =
                sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&name).fetch_one(p).await?;
            if exists {
                continue;
            }
            let mut tx = p.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(JOB_LOCK + 1).execute(&mut *tx).await?;
            let exists: bool =
                sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&name).fetch_one(&mut *tx).await?;
            if exists {
                continue;
            }
            for sql in [
                format!("CREATE TABLE {name} (LIKE telemetry INCLUDING DEFAULTS)"),
                format!(
                    "WITH moved AS (DELETE FROM telemetry_default WHERE ts >= '{lo_lit}' AND ts < '{hi_lit}' \
                     RETURNING node_id, boot_id, seq, ts, metric, value) \
                     INSERT INTO {name} (node_id, boot_id, seq, ts, metric, value) SELECT * FROM moved"
                ),
                format!("ALTER TABLE telemetry ATTACH PARTITION {name} FOR VALUES FROM ('{lo_lit}') TO ('{hi_lit}')"),
            ] {
                match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await {
                    Ok(_) => {}
                    // Another replica made it a moment ago: the lock does not refresh this
                    // session's view of the catalog, so the check above can miss it.
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(DUPLICATE_TABLE) => {
                        tracing::debug!(partition = %name, "Partition made by another replica meanwhile.");
                        continue 'days;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            tx.commit().await?;
            tracing::info!(partition = %name, "Created a telemetry partition.");
            made += 1;
        }
        Ok(made)
    }
}

/// Drops the daily partitions that end at or before `cut_ms`; returns how many.
async fn drop_partitions_before(p: &sqlx::PgPool, cut_ms: i64) -> Result<u64, ControllerError> {
    let old: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'telemetry'::regclass AND c.relname ~ '^telemetry_p[0-9]{8}$' \
           AND ((to_date(substr(c.relname, 12), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC') \
               <= 'epoch'::timestamptz + $1 * interval '1 millisecond' \
         ORDER BY 1",
    )
    .bind(cut_ms)
    .fetch_all(p)
    .await?;
    let mut dropped = 0u64;
    for name in old {
        // The name matched ^telemetry_p[0-9]{8}$ above.
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}"))).execute(p).await?;
        tracing::info!(partition = %name, "Dropped a telemetry partition past retention.");
        dropped += 1;
    }
    Ok(dropped)
}

/// TimescaleDB: drops the raw chunks wholly before `cut_ms`; how many.
async fn drop_chunks_before(p: &sqlx::PgPool, cut_ms: i64) -> Result<u64, ControllerError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM drop_chunks('telemetry', older_than => 'epoch'::timestamptz + $1 * interval '1 millisecond')",
    )
    .bind(cut_ms)
    .fetch_one(p)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// TimescaleDB: compresses the raw chunks wholly before `cut_ms` that are
/// not yet; how many. A late sample into one is still stored once and its
/// hour rolled up again (docs/schema.md).
async fn compress_chunks_before(p: &sqlx::PgPool, cut_ms: i64) -> Result<u64, ControllerError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(compress_chunk(c, if_not_compressed => true)) FROM show_chunks('telemetry', \
         older_than => 'epoch'::timestamptz + $1 * interval '1 millisecond') AS c",
    )
    .bind(cut_ms)
    .fetch_one(p)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
