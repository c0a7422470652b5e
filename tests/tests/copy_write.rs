//! The ingest writer's optimistic path on PostgreSQL and TimescaleDB: rows go
//! by binary COPY, and a write holding a row already stored (a redelivery,
//! into a compressed chunk too) falls back to the insert that skips it: every
//! sample stored once, the same rows and times as the plain insert stores.

use fleet_controller::store::{StorageConfig, Store};
use fleet_proto::v1::{Sample, TelemetryBatch};
use fleet_tests::TestDb;

const T0: i64 = 1_795_000_000_000;

fn batch(first_seq: u64, n: u64) -> TelemetryBatch {
    TelemetryBatch {
        node_id: "cw-1".into(),
        boot_id: "boot".into(),
        first_seq,
        low_water_seq: 0,
        samples: (first_seq..first_seq + n)
            .map(|i| Sample {
                metric: "cpu.usage_pct".into(),
                value: i as f64 / 4.0,
                time_unix_ms: T0 + i64::try_from(i).unwrap_or(0) * 1_000 + 7,
            })
            .collect(),
    }
}

/// Raw points of the node, as the store answers them.
async fn raw(store: &Store) -> anyhow::Result<Vec<(i64, f64)>> {
    let q = store.query("cw-1", "cpu.usage_pct", T0 - 1, T0 + 10_000_000, 0, 100_000).await?;
    Ok(q.points.iter().map(|p| (p.time_unix_ms, p.last)).collect())
}

async fn check(store: &Store, compress: Option<&StorageConfig>) -> anyhow::Result<()> {
    assert_eq!(store.write_opt(&[batch(0, 100)], &[], true).await?.inserted, 100, "copied");
    if let Some(cfg) = compress {
        store.storage_job(cfg, fleet_proto::now_unix_ms()).await?;
    }
    // A redelivery with new rows: the COPY meets a stored row, the insert skips it.
    let again = store.write_opt(&[batch(50, 100)], &[], true).await?;
    assert_eq!(again.inserted, 50, "only the new rows");
    assert_eq!(store.write_opt(&[batch(0, 150)], &[], true).await?.inserted, 0, "nothing twice");
    assert_eq!(store.count_samples(Some("cw-1")).await?, 150);
    let want: Vec<(i64, f64)> = (0..150).map(|i| (T0 + i * 1_000 + 7, i as f64 / 4.0)).collect();
    assert_eq!(raw(store).await?, want, "times and values as sent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_writes_fall_back_on_a_redelivery_in_postgres() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let store = Store::open_postgres(&db.url, &fleet_tests::pg_storage(false)).await?;
    check(&store, None).await?;
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_writes_fall_back_on_a_redelivery_into_a_compressed_chunk() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let test = "copy_write::copied_writes_fall_back_on_a_redelivery_into_a_compressed_chunk";
    let Some(store) = fleet_tests::timescale_store(&db, test).await? else { return db.cleanup().await };
    let years = std::time::Duration::from_secs(10 * 365 * 86_400);
    let cfg = StorageConfig {
        compress_after: std::time::Duration::ZERO,
        raw_retention: years,
        ..fleet_tests::pg_storage(true)
    };
    check(&store, Some(&cfg)).await?;
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let sql = "SELECT count(*) FROM chunk_compression_stats('telemetry') WHERE compression_status <> 'Uncompressed'";
    assert!(sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await? >= 1, "the redeliveries met a compressed chunk");
    pool.close().await;
    db.cleanup().await
}
