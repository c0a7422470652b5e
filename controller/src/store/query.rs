//! Telemetry queries: raw samples, or buckets of any width from the raw rows
//! (bucket widths of whole minutes and hours read the rollups, `tiers`).

use fleet_proto::v1::TelemetryPoint;
use sqlx::Row;

use super::Store;
use crate::ControllerError;

/// Raw rows a bucketed query reads at most before it answers truncated.
const MAX_ROWS_SCANNED: i64 = 2_000_000;

/// The answer to a telemetry query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    pub points: Vec<TelemetryPoint>,
    pub truncated: bool,
}

impl Store {
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
            Store::Postgres(p, _) => sqlx::query(
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
