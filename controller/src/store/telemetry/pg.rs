//! The PostgreSQL telemetry write.

use fleet_proto::v1::TelemetryBatch;
use sqlx::PgConnection;
use sqlx::postgres::PgPool;

use super::marks::{RunRange, STORED_RANGES, Written, apply_runs, run_keys, stored_marks};
use crate::ControllerError;
use crate::store::acks::RunMark;
use crate::store::{i64_of, tiers};

/// The bulk insert of a write's rows, from arrays (one statement a write),
/// skipping rows already stored (redeliveries).
const PG_INSERT_SKIP: &str = "INSERT INTO telemetry (node_id, boot_id, seq, ts, metric, value) \
     SELECT n, b, s, 'epoch'::timestamptz + t * interval '1 millisecond', m, v \
     FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::float8[]) AS u(n, b, s, t, m, v) \
     ON CONFLICT DO NOTHING";
/// A write's rows by binary COPY (optimistic writes).
const PG_COPY: &str = "COPY telemetry (node_id, boot_id, seq, ts, metric, value) FROM STDIN (FORMAT binary)";
/// Milliseconds from the Unix epoch to PostgreSQL's, 2000-01-01 UTC.
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// The rows of a write as column arrays, for one UNNEST statement.
struct Columns<'a> {
    nodes: Vec<&'a str>,
    boots: Vec<&'a str>,
    seqs: Vec<i64>,
    ts: Vec<i64>,
    metrics: Vec<&'a str>,
    values: Vec<f64>,
}

impl<'a> Columns<'a> {
    fn of(batches: &'a [TelemetryBatch]) -> Self {
        let n: usize = batches.iter().map(|b| b.samples.len()).sum();
        let mut c = Columns {
            nodes: Vec::with_capacity(n),
            boots: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            metrics: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
        };
        for b in batches {
            for (i, s) in b.samples.iter().enumerate() {
                c.nodes.push(b.node_id.as_str());
                c.boots.push(b.boot_id.as_str());
                c.seqs.push(i64_of(b.first_seq + i as u64));
                c.ts.push(s.time_unix_ms);
                c.metrics.push(s.metric.as_str());
                c.values.push(s.value);
            }
        }
        c
    }

    /// Inserts the rows, skipping those already stored.
    async fn insert_skip(&self, tx: &mut PgConnection) -> Result<u64, ControllerError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(PG_INSERT_SKIP))
            .bind(&self.nodes)
            .bind(&self.boots)
            .bind(&self.seqs)
            .bind(&self.ts)
            .bind(&self.metrics)
            .bind(&self.values)
            .execute(&mut *tx)
            .await?;
        Ok(r.rows_affected())
    }
}

/// The rows of `batches` in PostgreSQL's binary COPY format; `None` when a
/// time is outside what this encoding is checked for (years 1 to 9999: such
/// rows go by INSERT, which says what is wrong).
fn copy_binary(batches: &[TelemetryBatch]) -> Option<Vec<u8>> {
    const MIN_MS: i64 = -62_135_596_800_000;
    const MAX_MS: i64 = 253_402_300_799_999;
    let rows: usize = batches.iter().map(|b| b.samples.len()).sum();
    let mut buf = Vec::with_capacity(21 + rows * 96);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&[0; 8]); // flags, header extension
    let field = |buf: &mut Vec<u8>, bytes: &[u8]| {
        buf.extend_from_slice(&i32::try_from(bytes.len()).unwrap_or(i32::MAX).to_be_bytes());
        buf.extend_from_slice(bytes);
    };
    for b in batches {
        for (i, s) in b.samples.iter().enumerate() {
            if !(MIN_MS..=MAX_MS).contains(&s.time_unix_ms) {
                return None;
            }
            buf.extend_from_slice(&6i16.to_be_bytes());
            field(&mut buf, b.node_id.as_bytes());
            field(&mut buf, b.boot_id.as_bytes());
            field(&mut buf, &i64_of(b.first_seq + i as u64).to_be_bytes());
            field(&mut buf, &((s.time_unix_ms - PG_EPOCH_MS) * 1000).to_be_bytes());
            field(&mut buf, s.metric.as_bytes());
            field(&mut buf, &s.value.to_be_bytes());
        }
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    Some(buf)
}

/// Inserts the rows of `batches`. Optimistic writes (a writer that rarely
/// sees redeliveries) send them by binary COPY under a savepoint,
/// PostgreSQL's cheapest way in (multi-row inserts, no per-row conflict
/// handling), and fall back to INSERT ... ON CONFLICT DO NOTHING when a row
/// is already there. Returns the rows inserted.
async fn insert(tx: &mut PgConnection, batches: &[TelemetryBatch], optimistic: bool) -> Result<u64, ControllerError> {
    if optimistic && let Some(rows) = copy_binary(batches) {
        let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
        let copied = async {
            let mut copy = sp.copy_in_raw(PG_COPY).await?;
            copy.send(rows).await?;
            copy.finish().await
        }
        .await;
        match copied {
            Ok(n) => {
                sp.commit().await?;
                return Ok(n);
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => sp.rollback().await?,
            Err(e) => return Err(e.into()),
        }
    }
    Columns::of(batches).insert_skip(tx).await
}

/// Writes the rows of `batches` and the marks of `runs` in one transaction.
pub(super) async fn write(
    pool: &PgPool,
    batches: &[TelemetryBatch],
    runs: &[RunRange],
    optimistic: bool,
) -> Result<Written, ControllerError> {
    let keys = run_keys(runs);
    let key_nodes: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let key_boots: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let mut tx = pool.begin().await?;
    let (marks, had_ranges) = lock_marks(&mut tx, &keys, (&key_nodes, &key_boots), runs).await?;
    let inserted = insert(&mut tx, batches, optimistic).await?;
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
    save_marks(&mut tx, &marks, (&key_nodes, &key_boots), had_ranges).await?;
    tx.commit().await?;
    Ok(Written { inserted, marks })
}

/// Locks each run's ack row first (creating it if new), in key order, so the
/// rows of one run are written by one transaction at a time; returns the
/// marks with `runs` applied, and whether any ranges were stored.
async fn lock_marks(
    tx: &mut PgConnection,
    keys: &[(&str, &str)],
    (key_nodes, key_boots): (&[&str], &[&str]),
    runs: &[RunRange],
) -> Result<(Vec<(String, String, RunMark)>, bool), ControllerError> {
    let locked: Vec<(String, String, i64)> = sqlx::query_as(
        "INSERT INTO ack_state (node_id, boot_id, up_to_seq) \
         SELECT n, b, -1 FROM UNNEST($1::text[], $2::text[]) AS u(n, b) \
         ON CONFLICT (node_id, boot_id) DO UPDATE SET updated_at = now() \
         RETURNING node_id, boot_id, up_to_seq",
    )
    .bind(key_nodes)
    .bind(key_boots)
    .fetch_all(&mut *tx)
    .await?;
    let old_ranges: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT r.node_id, r.boot_id, r.start_seq, r.end_seq FROM ack_ranges r \
         JOIN UNNEST($1::text[], $2::text[]) AS u(n, b) ON r.node_id = u.n AND r.boot_id = u.b",
    )
    .bind(key_nodes)
    .bind(key_boots)
    .fetch_all(&mut *tx)
    .await?;
    let had_ranges = !old_ranges.is_empty();
    Ok((apply_runs(keys, stored_marks(locked, old_ranges), runs), had_ranges))
}

/// Stores each run's new watermark and its ranges above it.
async fn save_marks(
    tx: &mut PgConnection,
    marks: &[(String, String, RunMark)],
    (key_nodes, key_boots): (&[&str], &[&str]),
    had_ranges: bool,
) -> Result<(), ControllerError> {
    let up_to: Vec<i64> = marks.iter().map(|(_, _, m)| m.up_to().map_or(-1, i64_of)).collect();
    sqlx::query(
        "UPDATE ack_state a SET up_to_seq = u.s FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(n, b, s) \
         WHERE a.node_id = u.n AND a.boot_id = u.b AND a.up_to_seq <> u.s",
    )
    .bind(key_nodes)
    .bind(key_boots)
    .bind(&up_to)
    .execute(&mut *tx)
    .await?;
    if had_ranges {
        sqlx::query(
            "DELETE FROM ack_ranges r USING UNNEST($1::text[], $2::text[]) AS u(n, b) \
             WHERE r.node_id = u.n AND r.boot_id = u.b",
        )
        .bind(key_nodes)
        .bind(key_boots)
        .execute(&mut *tx)
        .await?;
    }
    let (mut rn, mut rb, mut rs, mut re) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, b, m) in marks {
        for (s, e) in m.ranges(STORED_RANGES) {
            rn.push(n.as_str());
            rb.push(b.as_str());
            rs.push(i64_of(s));
            re.push(i64_of(e));
        }
    }
    if !rn.is_empty() {
        sqlx::query(
            "INSERT INTO ack_ranges (node_id, boot_id, start_seq, end_seq) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[])",
        )
        .bind(&rn)
        .bind(&rb)
        .bind(&rs)
        .bind(&re)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
