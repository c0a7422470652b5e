//! Ack watermarks live in the database: two stores (as two replicas) writing
//! batches of the same agent runs concurrently and out of order end with the
//! exact watermark, and out-of-order ranges survive a reopen (restart).

use fleet_controller::store::{JOB_LOCK, RunRange, Store};
use fleet_proto::v1::{Sample, TelemetryBatch};
use fleet_tests::TestDb;
use sqlx::Connection;

fn batch(node: &str, first_seq: u64, n: u64) -> (TelemetryBatch, RunRange) {
    // A sample keeps its time on every redelivery (the agent spools it).
    let base = fleet_proto::now_unix_ms() / 86_400_000 * 86_400_000;
    let b = TelemetryBatch {
        node_id: node.into(),
        boot_id: "boot".into(),
        first_seq,
        samples: (0..n)
            .map(|i| Sample {
                metric: "m".into(),
                value: i as f64,
                time_unix_ms: base + i64::try_from(first_seq + i).unwrap_or(0),
            })
            .collect(),
        low_water_seq: 0,
    };
    let r =
        RunRange { node_id: node.into(), boot_id: "boot".into(), start: first_seq, end: first_seq + n, low_water: 0 };
    (b, r)
}

/// Writes batches 0..count of 10 samples each for `nodes`, in a shuffled
/// order, through `stores` taking turns concurrently.
async fn write_shuffled(stores: &[Store], nodes: &[&str], count: u64, seed: u64) -> anyhow::Result<()> {
    let mut work: Vec<(String, u64)> =
        nodes.iter().flat_map(|n| (0..count).map(move |i| ((*n).to_owned(), i * 10))).collect();
    fastrand::Rng::with_seed(seed).shuffle(&mut work);
    let mut tasks = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let mine: Vec<(String, u64)> = work.iter().skip(i).step_by(stores.len()).cloned().collect();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in mine.chunks(3) {
                let (batches, runs): (Vec<_>, Vec<_>) = chunk.iter().map(|(n, s)| batch(n, *s, 10)).unzip();
                store.write(&batches, &runs).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Two writers (replicas) on one database: each sample once, one watermark.
async fn two_writers_agree(a: Store, b: Store) -> anyhow::Result<()> {
    let nodes = ["n1", "n2", "n3", "n4"];
    write_shuffled(&[a.clone(), b.clone()], &nodes, 50, 7).await?;
    // Both writers at once, each with every batch again and more: each sample still once.
    let (only_a, only_b) = ([a.clone()], [b.clone()]);
    let (x, y) = tokio::join!(write_shuffled(&only_a, &nodes, 60, 8), write_shuffled(&only_b, &nodes, 60, 9));
    x?;
    y?;
    for n in nodes {
        assert_eq!(a.load_ack(n, "boot").await?, Some(599), "{n}");
        assert_eq!(a.count_samples(Some(n)).await?, 600);
    }
    // A redelivered batch changes nothing and reports the full mark.
    let (bt, r) = batch("n1", 100, 10);
    let w = b.write(&[bt], &[r]).await?;
    assert_eq!(w.inserted, 0);
    assert_eq!(w.marks[0].2.up_to(), Some(599));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_agree_on_the_watermark_in_postgres() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let cfg = fleet_tests::pg_storage(false);
    let (a, b) = (Store::open_postgres(&db.url, &cfg).await?, Store::open_postgres(&db.url, &cfg).await?);
    two_writers_agree(a, b).await?;
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_agree_on_the_watermark_in_timescaledb() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    if let Some(a) = fleet_tests::timescale_store(&db, "two_writers_agree_on_the_watermark_in_timescaledb").await? {
        let b = Store::open_postgres(&db.url, &fleet_tests::pg_storage(true)).await?;
        two_writers_agree(a, b).await?;
    }
    db.cleanup().await
}

/// Ranges committed above a gap are kept in the store: a store opened again
/// (the controller restarted) moves the watermark past them once the gap fills.
async fn ranges_survive_a_restart(open: impl AsyncFn() -> anyhow::Result<Store>) -> anyhow::Result<()> {
    {
        let s = open().await?;
        for first in [0, 20, 40] {
            let (b, r) = batch("n", first, 10);
            s.write(&[b], &[r]).await?;
        }
        assert_eq!(s.load_ack("n", "boot").await?, Some(9));
    }
    let s = open().await?;
    let (b, r) = batch("n", 10, 10);
    let w = s.write(&[b], &[r]).await?;
    assert_eq!(w.marks[0].2.up_to(), Some(29), "20..30 was remembered");
    assert_eq!(w.marks[0].2.ranges(8).collect::<Vec<_>>(), [(40, 50)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_ranges_survive_a_restart_in_sqlite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    ranges_survive_a_restart(async || Ok(Store::open_sqlite(dir.path()).await?)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_ranges_survive_a_restart_in_postgres() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    ranges_survive_a_restart(async || Ok(Store::open_postgres(&db.url, &fleet_tests::pg_storage(false)).await?))
        .await?;
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_ranges_survive_a_restart_in_timescaledb() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let test = "acks::out_of_order_ranges_survive_a_restart_in_timescaledb";
    if fleet_tests::timescale_store(&db, test).await?.is_some() {
        ranges_survive_a_restart(async || Ok(Store::open_postgres(&db.url, &fleet_tests::pg_storage(true)).await?))
            .await?;
    }
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_job_runs_on_one_replica_at_a_time() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let cfg = fleet_tests::pg_storage(false);
    let store = Store::open_postgres(&db.url, &cfg).await?;
    let now = fleet_proto::now_unix_ms();
    // Another replica holds the job's lock: this one skips its round.
    let mut other = sqlx::PgConnection::connect(&db.url).await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(JOB_LOCK).execute(&mut other).await?;
    assert!(!store.storage_job(&cfg, now).await?, "ran while another replica held the lock");
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(JOB_LOCK).execute(&mut other).await?;
    assert!(store.storage_job(&cfg, now).await?);
    // And it gave the lock back.
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(JOB_LOCK).fetch_one(&mut other).await?;
    assert!(free);
    other.close().await?;
    db.cleanup().await
}
