//! `store-bench`: a store holding `--days` days of `--nodes` nodes sampled
//! once a second (one metric), on SQLite, plain PostgreSQL and TimescaleDB,
//! made as the controller's storage job keeps it (rows written, every hour
//! rolled up, TimescaleDB's chunks older than `compress_after` compressed);
//! prints per backend the bytes per stored sample (TimescaleDB: raw and
//! compressed) and the milliseconds of a 1 min and a 1 h bucket query over
//! the whole span for one node (median of 5, after one warm-up).
//!
//! Rows are generated inside the database (`generate_series`, a recursive
//! CTE): what is measured is the store's layout and queries, not ingest
//! (ingest-bench measures that).
//!
//! `cargo run --release -p fleet-tests --bin store-bench [-- --days 7 --nodes 100
//!  --backends sqlite,postgres,timescaledb --database-url URL --keep DIR]`
//! `--keep DIR` keeps the stores (SQLite in `DIR/sqlite`, the PostgreSQL
//! databases named) for a backup and restore drill at that size.

use std::time::{Duration, Instant};

use fleet_controller::store::StorageConfig;
use fleet_controller::store::Store;
use sqlx::Connection;

const HOUR_MS: i64 = 3_600_000;
const DAY_S: i64 = 86_400;
const METRIC: &str = "cpu_usage_pct";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// What one backend holds: `days` whole days ending at `end_ms` (UTC midnight:
/// TimescaleDB's daily chunks are whole days).
struct Span {
    days: i64,
    nodes: i64,
    end_ms: i64,
}

impl Span {
    fn start_ms(&self) -> i64 {
        self.end_ms - self.days * DAY_S * 1000
    }

    fn samples(&self) -> i64 {
        self.days * DAY_S * self.nodes
    }
}

async fn mark_dirty(store: &Store, span: &Span) -> anyhow::Result<()> {
    let hours: Vec<i64> = (0..span.days * 24).map(|h| span.start_ms() + h * HOUR_MS).collect();
    for h in hours {
        match store {
            Store::Postgres(p, _) => {
                sqlx::query("INSERT INTO rollup_dirty (hour_ms, marked_ms) VALUES ($1, 0) ON CONFLICT DO NOTHING")
                    .bind(h)
                    .execute(p)
                    .await?;
            }
            Store::Sqlite(p) => {
                sqlx::query("INSERT OR IGNORE INTO rollup_dirty (hour_ms, marked_ms) VALUES ($1, 0)")
                    .bind(h)
                    .execute(p)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Writes the span's rows, a day at a time.
async fn fill(store: &Store, span: &Span) -> anyhow::Result<()> {
    for day in 0..span.days {
        let first_ms = span.start_ms() + day * DAY_S * 1000;
        match store {
            Store::Postgres(p, _) => {
                sqlx::query(
                    "INSERT INTO telemetry (node_id, boot_id, seq, ts, metric, value) \
                     SELECT 'node-' || n, 'boot', $1 + s, to_timestamp(($2 + s * 1000) / 1000.0), $3, (s % 100)::float8 \
                     FROM generate_series(0, $4 - 1) n, generate_series(0, $5 - 1) s",
                )
                .bind(day * DAY_S)
                .bind(first_ms)
                .bind(METRIC)
                .bind(span.nodes)
                .bind(DAY_S)
                .execute(p)
                .await?;
            }
            Store::Sqlite(p) => {
                sqlx::query(
                    "WITH RECURSIVE n(y) AS (SELECT 0 UNION ALL SELECT y + 1 FROM n WHERE y + 1 < $4), \
                     s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x + 1 < $5) \
                     INSERT INTO telemetry (node_id, boot_id, seq, ts_ms, metric, value) \
                     SELECT 'node-' || y, 'boot', $1 + x, $2 + x * 1000, $3, x % 100 FROM n, s",
                )
                .bind(day * DAY_S)
                .bind(first_ms)
                .bind(METRIC)
                .bind(span.nodes)
                .bind(DAY_S)
                .execute(p)
                .await?;
            }
        }
        println!("  day {} written", day + 1);
    }
    Ok(())
}

/// Bytes the raw telemetry takes (tables and indexes).
async fn raw_bytes(store: &Store) -> anyhow::Result<i64> {
    Ok(match store {
        Store::Postgres(p, fleet_controller::store::PgFlavour::Timescale) => {
            sqlx::query_scalar("SELECT hypertable_size('telemetry')").fetch_one(p).await?
        }
        Store::Postgres(p, _) => {
            sqlx::query_scalar(
                "SELECT COALESCE(sum(pg_total_relation_size(inhrelid)), 0)::int8 FROM pg_inherits \
                 WHERE inhparent = 'telemetry'::regclass",
            )
            .fetch_one(p)
            .await?
        }
        Store::Sqlite(p) => {
            let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(p).await?;
            let size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(p).await?;
            pages * size
        }
    })
}

/// Median milliseconds of `runs` queries with `bucket_s` over the span.
async fn query_ms(store: &Store, span: &Span, bucket_s: u32) -> anyhow::Result<(f64, usize)> {
    let mut times = Vec::new();
    let mut points = 0;
    for i in 0..6 {
        let t = Instant::now();
        let node = format!("node-{}", span.nodes / 2);
        let r = store.query(&node, METRIC, span.start_ms(), span.end_ms, bucket_s, 100_000).await?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        points = r.points.len();
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], points))
}

async fn bench(store: &Store, span: &Span, cfg: &StorageConfig) -> anyhow::Result<()> {
    let t = Instant::now();
    fill(store, span).await?;
    mark_dirty(store, span).await?;
    println!("  {} rows written in {:.0} s", span.samples(), t.elapsed().as_secs_f64());
    let before = raw_bytes(store).await?;
    let t = Instant::now();
    store.storage_job(cfg, span.end_ms).await?;
    println!("  storage job (every hour rolled up, chunks compressed) in {:.0} s", t.elapsed().as_secs_f64());
    let after = raw_bytes(store).await?;
    let per = |b: i64| b as f64 / span.samples() as f64;
    println!(
        "  bytes per stored sample: {:.1} as written, {:.1} after the storage job ({} -> {} MB)",
        per(before),
        per(after),
        before / 1_000_000,
        after / 1_000_000
    );
    if let Store::Postgres(p, fleet_controller::store::PgFlavour::Timescale) = store {
        // The chunks the job compressed (older than compress_after), each a whole day.
        let (chunks, raw, packed): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), COALESCE(sum(before_compression_total_bytes), 0)::int8, \
             COALESCE(sum(after_compression_total_bytes), 0)::int8 \
             FROM chunk_compression_stats('telemetry') WHERE compression_status = 'Compressed'",
        )
        .fetch_one(p)
        .await?;
        let rows = (chunks * DAY_S * span.nodes).max(1) as f64;
        println!(
            "  {chunks} day chunks compressed: {:.1} bytes per sample before, {:.1} after ({:.1}x)",
            raw as f64 / rows,
            packed as f64 / rows,
            raw as f64 / (packed.max(1) as f64)
        );
    }
    for (bucket, name) in [(60, "1 min"), (3600, "1 h")] {
        let (ms, points) = query_ms(store, span, bucket).await?;
        println!("  {name} buckets over {} days of one node: {points} points in {ms:.1} ms (median of 5)", span.days);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let days: i64 = arg(&args, "--days").map_or(Ok(7), |v| v.parse())?;
    let nodes: i64 = arg(&args, "--nodes").map_or(Ok(100), |v| v.parse())?;
    let keep = arg(&args, "--keep").map(std::path::PathBuf::from);
    let backends = arg(&args, "--backends").unwrap_or_else(|| "sqlite,postgres,timescaledb".into());
    let admin = arg(&args, "--database-url").unwrap_or_else(|| "postgres://fleet:fleet@127.0.0.1:5432/postgres".into());
    let now = fleet_proto::now_unix_ms();
    let span = Span { days, nodes, end_ms: now - now % (DAY_S * 1000) };
    // Defaults, but nothing older than the span dropped.
    let cfg = StorageConfig { raw_retention: Duration::from_secs(3650 * 86_400), ..StorageConfig::default() };
    for backend in backends.split(',') {
        println!("{backend}: {days} days of {nodes} nodes at 1 Hz, {} samples", span.samples());
        if backend == "sqlite" {
            let dir = tempfile::tempdir()?;
            let path = keep.as_ref().map_or_else(|| dir.path().to_owned(), |k| k.join("sqlite"));
            let store = Store::open_sqlite(&path).await?;
            bench(&store, &span, &cfg).await?;
            if keep.is_some() {
                println!("  kept: --data-dir {}", path.display());
            }
            continue;
        }
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        let db = format!("fleet_store_bench_{}_{backend}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut conn).await?;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let result = async {
            let store =
                Store::open_postgres(&format!("{base}/{db}"), &fleet_tests::pg_storage(backend == "timescaledb"))
                    .await?;
            // Plain PostgreSQL: the daily partitions a running controller made over the span.
            for day in 0..=days {
                store.ensure_partitions(&cfg, span.start_ms() + day * DAY_S * 1000).await?;
            }
            let r = bench(&store, &span, &cfg).await;
            if let Store::Postgres(p, _) = store {
                p.close().await;
            }
            r
        }
        .await;
        if keep.is_some() {
            println!("  kept: --database-url {base}/{db}");
        } else {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")))
                .execute(&mut conn)
                .await?;
        }
        result?;
    }
    Ok(())
}
