//! Storage tiers on SQLite, PostgreSQL and TimescaleDB: the same writes (with duplicates
//! and a late batch for an hour already rolled up) give the same answers from
//! both backends, and the rollups agree with the raw samples exactly.

use std::collections::BTreeMap;

use fleet_controller::store::{StorageConfig, Store};
use fleet_proto::v1::{Sample, TelemetryBatch, TelemetryPoint};
use fleet_tests::TestDb;

const T0: i64 = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000; // an hour boundary
const METRICS: [&str; 3] = ["cpu.usage_pct", "soc.temp_c", "mem.used_pct"];

/// Samples of one node: every 7 s over 3 hours, three metrics, seeded values.
fn batches(node: &str, seed: u64) -> Vec<TelemetryBatch> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::new();
    let mut seq = 0;
    let mut t = T0 + 1_000;
    while t < T0 + 3 * 3_600_000 {
        let samples: Vec<Sample> = METRICS
            .iter()
            .map(|m| Sample { metric: (*m).into(), value: (rng.f64() * 1000.0).round() / 10.0, time_unix_ms: t })
            .collect();
        out.push(TelemetryBatch {
            node_id: node.into(),
            boot_id: "boot".into(),
            first_seq: seq,
            low_water_seq: 0,
            samples: samples.clone(),
        });
        seq += samples.len() as u64;
        t += 7_000;
    }
    out
}

/// The expected points of `bucket_s` from the samples themselves.
fn expected(all: &[TelemetryBatch], node: &str, metric: &str, bucket_s: i64) -> Vec<TelemetryPoint> {
    let mut m: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
    for b in all.iter().filter(|b| b.node_id == node) {
        for s in b.samples.iter().filter(|s| s.metric == metric) {
            m.entry(s.time_unix_ms.div_euclid(bucket_s * 1000) * bucket_s * 1000)
                .or_default()
                .push((s.time_unix_ms, s.value));
        }
    }
    m.into_iter()
        .map(|(start, mut v)| {
            v.sort_by_key(|(t, _)| *t);
            let sum: f64 = v.iter().map(|(_, x)| x).sum();
            TelemetryPoint {
                time_unix_ms: start,
                avg: sum / v.len() as f64,
                min: v.iter().map(|(_, x)| *x).fold(f64::INFINITY, f64::min),
                max: v.iter().map(|(_, x)| *x).fold(f64::NEG_INFINITY, f64::max),
                last: v.last().map_or(0.0, |(_, x)| *x),
                count: v.len() as u64,
            }
        })
        .collect()
}

fn same(a: &[TelemetryPoint], b: &[TelemetryPoint], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: point counts");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (x.time_unix_ms, x.count, x.min, x.max, x.last),
            (y.time_unix_ms, y.count, y.min, y.max, y.last),
            "{what}"
        );
        assert!((x.avg - y.avg).abs() <= 1e-9 * x.avg.abs().max(1.0), "{what}: avg {} vs {}", x.avg, y.avg);
    }
}

async fn load(store: &Store, all: &[TelemetryBatch]) -> anyhow::Result<()> {
    // First the first two hours, rolled up; then everything again (duplicates)
    // plus the third hour and a late batch back in hour one; rolled up again.
    let early: Vec<TelemetryBatch> =
        all.iter().filter(|b| b.samples[0].time_unix_ms < T0 + 2 * 3_600_000).cloned().collect();
    for chunk in early.chunks(200) {
        store.write(chunk, &[]).await?;
    }
    while store.rollup_dirty(64).await? > 0 {}
    for chunk in all.chunks(300) {
        store.write(chunk, &[]).await?;
    }
    while store.rollup_dirty(64).await? > 0 {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_answer_the_same_and_match_the_samples() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = TestDb::create().await?;
    let sqlite = Store::open_sqlite(dir.path()).await?;
    let pg = Store::open_postgres(&db.url, &fleet_tests::pg_storage(false)).await?;
    let mut all = batches("n1", 1);
    all.extend(batches("n2", 2));
    // A late sample in hour one, after that hour was rolled up once.
    let late = TelemetryBatch {
        node_id: "n1".into(),
        boot_id: "late-run".into(),
        first_seq: 0,
        low_water_seq: 0,
        samples: vec![Sample { metric: "soc.temp_c".into(), value: 99.5, time_unix_ms: T0 + 30 * 60_000 + 500 }],
    };
    all.push(late);
    load(&sqlite, &all).await?;
    load(&pg, &all).await?;
    // The controller made partitions from today on, so these days-old samples
    // wait in the default partition; making their day's partition moves them.
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let in_default = "SELECT count(*) FROM telemetry_default";
    let waiting: i64 = sqlx::query_scalar(in_default).fetch_one(&pool).await?;
    assert_eq!(u64::try_from(waiting)?, pg.count_samples(None).await?);
    let day_of_t0 = StorageConfig { partitions_ahead_days: 0, ..StorageConfig::default() };
    assert_eq!(pg.ensure_partitions(&day_of_t0, T0).await?, 1);
    assert_eq!(pg.ensure_partitions(&day_of_t0, T0).await?, 0, "made once");
    assert_eq!(sqlx::query_scalar::<_, i64>(in_default).fetch_one(&pool).await?, 0);
    let partition: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry_p20261118").fetch_one(&pool).await?;
    assert_eq!(partition, waiting, "every row moved into its day");

    for node in ["n1", "n2"] {
        for metric in METRICS {
            for bucket_s in [10u32, 60, 300, 3600, 7200] {
                let what = format!("{node} {metric} bucket {bucket_s}s");
                let end = T0 + 3 * 3_600_000;
                let a = sqlite.query(node, metric, T0, end, bucket_s, 100_000).await?;
                let b = pg.query(node, metric, T0, end, bucket_s, 100_000).await?;
                same(&a.points, &b.points, &format!("{what}: sqlite vs postgres"));
                same(&a.points, &expected(&all, node, metric, i64::from(bucket_s)), &format!("{what}: vs the samples"));
            }
            let raw_a = sqlite.query(node, metric, T0, T0 + 1_800_000, 0, 100_000).await?;
            let raw_b = pg.query(node, metric, T0, T0 + 1_800_000, 0, 100_000).await?;
            same(&raw_a.points, &raw_b.points, "raw");
        }
    }

    // Retention: a year later raw rows go, rollups of 1 h stay.
    let cfg = StorageConfig::default();
    let later = T0 + 365 * 86_400_000;
    for store in [&sqlite, &pg] {
        let r = store.apply_retention(&cfg, later).await?;
        match store.backend() {
            "sqlite" => assert!(r.rows_deleted > 0),
            _ => assert!(r.partitions_dropped >= 1, "{r:?}"),
        }
        assert_eq!(store.count_samples(None).await?, 0);
        let h = store.query("n1", "cpu.usage_pct", T0, T0 + 3 * 3_600_000, 3600, 10).await?;
        assert_eq!(h.points.len(), 3, "hourly rollups outlive raw rows");
        let m = store.query("n1", "cpu.usage_pct", T0, T0 + 3 * 3_600_000, 60, 10).await?;
        assert!(m.points.is_empty(), "minute rollups are past their 90 days");
    }
    pool.close().await;
    db.cleanup().await
}

/// Replicas start at the same moment on a new database (a deployment rolls
/// them out together): each opens the store, makes the schema and the days'
/// partitions, and neither fails on what the other made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_opening_a_new_postgres_database_at_once_both_start() -> anyhow::Result<()> {
    for round in 0..5 {
        let db = TestDb::create().await?;
        let cfg = StorageConfig { partitions_ahead_days: 5, ..fleet_tests::pg_storage(false) };
        let (a, b, c) = tokio::join!(
            Store::open_postgres(&db.url, &cfg),
            Store::open_postgres(&db.url, &cfg),
            Store::open_postgres(&db.url, &cfg)
        );
        for (name, s) in [("first", a), ("second", b), ("third", c)] {
            let s = s.map_err(|e| anyhow::anyhow!("round {round}: the {name} replica failed to open: {e}"))?;
            assert_eq!(s.backend(), "postgres");
        }
        db.cleanup().await?;
    }
    Ok(())
}

/// Every node, metric and bucket of `buckets` gives the same points from `a` and `b`.
async fn compare(a: &Store, b: &Store, buckets: &[u32], when: &str) -> anyhow::Result<()> {
    for node in ["n1", "n2"] {
        for metric in METRICS {
            for &bucket_s in buckets {
                let what = format!("{node} {metric} bucket {bucket_s}s, {when}: {} vs {}", a.backend(), b.backend());
                let end = T0 + 3 * 3_600_000;
                let x = a.query(node, metric, T0, end, bucket_s, 100_000).await?;
                let y = b.query(node, metric, T0, end, bucket_s, 100_000).await?;
                same(&x.points, &y.points, &what);
            }
        }
    }
    Ok(())
}

/// TimescaleDB answers as SQLite does, with its chunks compressed between the
/// writes: the redelivered batches into compressed chunks are stored once,
/// the late sample into a compressed hour updates that hour's rollups, and
/// the controller's own storage job (no extension scheduler) does the
/// rollups, the compression and the retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timescaledb_answers_as_sqlite_with_compressed_chunks_and_late_data() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = TestDb::create().await?;
    let Some(ts) = fleet_tests::timescale_store(&db, "timescaledb_answers_as_sqlite").await? else {
        return db.cleanup().await;
    };
    let sqlite = Store::open_sqlite(dir.path()).await?;
    let mut all = batches("n1", 1);
    all.extend(batches("n2", 2));
    all.push(TelemetryBatch {
        node_id: "n1".into(),
        boot_id: "late-run".into(),
        first_seq: 0,
        low_water_seq: 0,
        samples: vec![Sample { metric: "soc.temp_c".into(), value: 99.5, time_unix_ms: T0 + 30 * 60_000 + 500 }],
    });
    load(&sqlite, &all).await?;
    // Compress everything older than now (all of it) between the two loads;
    // keep it all (the samples are days old).
    let years = std::time::Duration::from_secs(10 * 365 * 86_400);
    let cfg = StorageConfig {
        compress_after: std::time::Duration::ZERO,
        raw_retention: years,
        rollup_1m_retention: years,
        rollup_1h_retention: years,
        ..fleet_tests::pg_storage(true)
    };
    let now = fleet_proto::now_unix_ms();
    let early: Vec<TelemetryBatch> =
        all.iter().filter(|b| b.samples[0].time_unix_ms < T0 + 2 * 3_600_000).cloned().collect();
    ts.write(&early, &[]).await?;
    assert!(ts.storage_job(&cfg, now).await?, "the storage job ran");
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let compressed =
        "SELECT count(*) FROM chunk_compression_stats('telemetry') WHERE compression_status = 'Compressed'";
    assert!(sqlx::query_scalar::<_, i64>(compressed).fetch_one(&pool).await? >= 1, "a chunk was compressed");
    for chunk in all.chunks(300) {
        ts.write(chunk, &[]).await?;
    }
    // Right after the writes, before any rollup: the dirty hours answer from raw rows.
    compare(&sqlite, &ts, &[60, 3600, 7200], "before the storage job").await?;
    assert!(ts.storage_job(&cfg, now).await?);
    assert_eq!(ts.count_samples(None).await?, sqlite.count_samples(None).await?, "each sample stored once");
    compare(&sqlite, &ts, &[0, 10, 60, 300, 3600, 7200], "after the storage job").await?;
    let r = ts.apply_retention(&StorageConfig::default(), T0 + 365 * 86_400_000).await?;
    assert!(r.partitions_dropped >= 1, "whole chunks dropped: {r:?}");
    assert_eq!(ts.count_samples(None).await?, 0);
    let h = ts.query("n1", "cpu.usage_pct", T0, T0 + 3 * 3_600_000, 3600, 10).await?;
    assert_eq!(h.points.len(), 3, "hourly rollups outlive raw rows");
    pool.close().await;
    db.cleanup().await
}

/// Right after ingest, before any storage job: 1 min and 1 h bucket queries
/// give the samples' points on SQLite, plain PostgreSQL and TimescaleDB alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_query_right_after_ingest_is_the_same_on_every_backend() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (plain_db, ts_db) = (TestDb::create().await?, TestDb::create().await?);
    let test = "tiers::a_bucket_query_right_after_ingest_is_the_same_on_every_backend";
    let Some(ts) = fleet_tests::timescale_store(&ts_db, test).await? else {
        plain_db.cleanup().await?;
        return ts_db.cleanup().await;
    };
    let sqlite = Store::open_sqlite(dir.path()).await?;
    let pg = Store::open_postgres(&plain_db.url, &fleet_tests::pg_storage(false)).await?;
    let mut all = batches("n1", 1);
    all.extend(batches("n2", 2));
    for store in [&sqlite, &pg, &ts] {
        for chunk in all.chunks(300) {
            store.write(chunk, &[]).await?;
        }
    }
    for store in [&sqlite, &pg, &ts] {
        for node in ["n1", "n2"] {
            for metric in METRICS {
                for bucket_s in [60u32, 3600] {
                    let q = store.query(node, metric, T0, T0 + 3 * 3_600_000, bucket_s, 100_000).await?;
                    let what = format!("{} {node} {metric} {bucket_s}s right after ingest", store.backend());
                    same(&q.points, &expected(&all, node, metric, i64::from(bucket_s)), &what);
                }
            }
        }
    }
    plain_db.cleanup().await?;
    ts_db.cleanup().await
}
