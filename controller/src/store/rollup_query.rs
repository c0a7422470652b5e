//! Bucketed queries from the rollup tiers (`telemetry_1m`, `telemetry_1h`),
//! read through to the raw rows for every hour a write made dirty and the
//! storage job has not rolled up yet: a query right after ingest gives the
//! same points as one after the job, on every backend (docs/schema.md).

use fleet_proto::v1::TelemetryPoint;

use super::Store;
use super::query::QueryResult;
use crate::ControllerError;

const HOUR_MS: i64 = 3_600_000;

/// One rollup row: bucket start, count, sum, min, max, last, time of last (ms).
type Row = (i64, i64, f64, f64, f64, f64, i64);

/// Rollup rows of `table` for hours not dirty, and the same rows computed
/// from raw samples (`raw`: ts_ms, value, boot_id, seq of the node and
/// metric, binds $1-$4) for the dirty ones; `width` is the table's bucket.
fn rows_sql(table: &str, width: i64, raw: &str) -> String {
    format!(
        "SELECT bucket_ms, count, sum, min, max, last, last_ms FROM {table} \
         WHERE node_id = $1 AND metric = $2 AND bucket_ms >= $3 AND bucket_ms < $4 \
           AND (bucket_ms / {HOUR_MS}) * {HOUR_MS} NOT IN (SELECT hour_ms FROM rollup_dirty) \
         UNION ALL \
         SELECT b, count(*), sum(value), min(value), max(value), max(CASE WHEN rn = 1 THEN value END), max(ts_ms) \
         FROM (SELECT (ts_ms / {width}) * {width} AS b, value, ts_ms, \
                      row_number() OVER (PARTITION BY ts_ms / {width} ORDER BY ts_ms DESC, boot_id DESC, seq DESC) AS rn \
               FROM ({raw}) AS r WHERE (ts_ms / {HOUR_MS}) * {HOUR_MS} IN (SELECT hour_ms FROM rollup_dirty)) AS x \
         WHERE b >= $3 AND b < $4 GROUP BY b ORDER BY 1"
    )
}

// Raw rows are read only between the first and the last dirty hour that
// meet [$5, $6) (none when no hour is dirty): in a store rolled up, a query
// over days reads the rollups alone. The bounds are taken in the same
// statement as the dirty hours the query filters on, so they agree.
const DIRTY_LO: &str =
    "(SELECT COALESCE(min(hour_ms), $6) FROM rollup_dirty WHERE hour_ms > $5 - 3600000 AND hour_ms < $6)";
const DIRTY_HI: &str =
    "(SELECT COALESCE(max(hour_ms) + 3600000, $6) FROM rollup_dirty WHERE hour_ms > $5 - 3600000 AND hour_ms < $6)";

fn pg_raw() -> String {
    format!(
        "SELECT (extract(epoch FROM ts) * 1000)::int8 AS ts_ms, value, boot_id, seq FROM telemetry \
         WHERE node_id = $1 AND metric = $2 \
           AND ts >= 'epoch'::timestamptz + GREATEST($5, {DIRTY_LO}) * interval '1 millisecond' \
           AND ts < 'epoch'::timestamptz + LEAST($6, {DIRTY_HI}) * interval '1 millisecond'"
    )
}

fn sqlite_raw() -> String {
    format!(
        "SELECT ts_ms, value, boot_id, seq FROM telemetry WHERE node_id = $1 AND metric = $2 \
           AND ts_ms >= max($5, {DIRTY_LO}) AND ts_ms < min($6, {DIRTY_HI})"
    )
}

impl Store {
    /// The rows of `table` (`telemetry_1m` or `telemetry_1h`) in buckets
    /// starting in `[start, end)`, dirty hours read from raw rows.
    async fn rollup_rows(
        &self,
        table: &'static str,
        node_id: &str,
        metric: &str,
        (start_ms, end_ms): (i64, i64),
    ) -> Result<Vec<Row>, ControllerError> {
        let width = if table == "telemetry_1h" { HOUR_MS } else { 60_000 };
        // Raw rows of every bucket that starts in the window.
        let (lo, hi) = (start_ms.div_euclid(width) * width, end_ms.div_euclid(width) * width + width);
        Ok(match self {
            Store::Postgres(p, _) => {
                sqlx::query_as(sqlx::AssertSqlSafe(rows_sql(table, width, &pg_raw())))
                    .bind(node_id)
                    .bind(metric)
                    .bind(start_ms)
                    .bind(end_ms)
                    .bind(lo)
                    .bind(hi)
                    .fetch_all(p)
                    .await?
            }
            Store::Sqlite(p) => {
                sqlx::query_as(sqlx::AssertSqlSafe(rows_sql(table, width, &sqlite_raw())))
                    .bind(node_id)
                    .bind(metric)
                    .bind(start_ms)
                    .bind(end_ms)
                    .bind(lo)
                    .bind(hi)
                    .fetch_all(p)
                    .await?
            }
        })
    }

    /// Points of `bucket_s` seconds built from a rollup table (`telemetry_1m` or `telemetry_1h`).
    pub(super) async fn query_rollup(
        &self,
        table: &'static str,
        node_id: &str,
        metric: &str,
        (start_ms, end_ms): (i64, i64),
        bucket_s: u32,
        limit: usize,
    ) -> Result<QueryResult, ControllerError> {
        let rows = self.rollup_rows(table, node_id, metric, (start_ms, end_ms)).await?;
        let width = i64::from(bucket_s) * 1000;
        let mut points: Vec<TelemetryPoint> = Vec::new();
        let mut sums: Vec<(f64, i64)> = Vec::new();
        for (b, count, sum, min, max, last, last_ms) in rows {
            let start = b.div_euclid(width) * width;
            let count = u64::try_from(count).unwrap_or(0);
            match points.last_mut() {
                Some(p) if p.time_unix_ms == start => {
                    let (s, lm) = sums.last_mut().expect("sums follow points");
                    *s += sum;
                    p.count += count;
                    p.min = p.min.min(min);
                    p.max = p.max.max(max);
                    if last_ms >= *lm {
                        *lm = last_ms;
                        p.last = last;
                    }
                    p.avg = *s / p.count as f64;
                }
                _ => {
                    if points.len() == limit {
                        return Ok(QueryResult { points, truncated: true });
                    }
                    sums.push((sum, last_ms));
                    points.push(TelemetryPoint {
                        time_unix_ms: start,
                        avg: sum / count.max(1) as f64,
                        min,
                        max,
                        last,
                        count,
                    });
                }
            }
        }
        Ok(QueryResult { points, truncated: false })
    }
}
