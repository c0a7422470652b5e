//! The counting and quota rules on a SQLite store, time passed in (both
//! stores, and a second replica: `tests/tests/usage_store.rs`).

use super::*;

/// 2023-11-14T23:59:00Z: a minute before midnight.
const T: i64 = 1_700_006_340_000;
const MIDNIGHT: i64 = 1_700_006_400_000;

async fn usage() -> (tempfile::TempDir, Usage) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_sqlite(dir.path()).await.expect("store");
    (dir, Usage::new(store, Arc::new(Clock::new(0)), Arc::new(Metrics::new())))
}

#[tokio::test]
async fn a_refunded_job_leaves_room_for_another() {
    let (_dir, u) = usage().await;
    let q = Quota { jobs_per_day: 1, ..Default::default() };
    let a = u.admit_job_at("ci", &q, T).await.expect("the first job");
    u.refund_job("ci", a);
    u.admit_job_at("ci", &q, T + 1).await.expect("the refunded job's place");
    assert!(u.admit_job_at("ci", &q, T + 2).await.is_err());
    u.flush_at(T + 3).await.expect("flush");
    let rows = u.inner.store.usage_rows(Some("ci"), 0, 0).await.expect("rows");
    assert!(rows.iter().all(|r| r.counts.jobs == 1), "{rows:?}");
}

#[tokio::test]
async fn the_day_quota_is_judged_on_what_is_written_and_what_is_not_yet() {
    let (_dir, u) = usage().await;
    let q = Quota { jobs_per_day: 3, ..Default::default() };
    u.admit_job_at("ci", &q, T).await.expect("1");
    u.flush_at(T).await.expect("flush");
    u.admit_job_at("ci", &q, T + 1).await.expect("2");
    u.admit_job_at("ci", &q, T + 2).await.expect("3 (written 1, waiting 2)");
    let e = u.admit_job_at("ci", &q, T + 3).await.expect_err("the 4th");
    assert!(e.to_string().contains("3 jobs per day (3 used today)"), "{e}");
    // Over midnight while the counts wait: the new day starts empty.
    u.admit_job_at("ci", &q, MIDNIGHT).await.expect("a new day");
}

#[tokio::test]
async fn inference_is_charged_per_site_and_an_unnamed_job_is_charged_to_nobody() {
    let (_dir, u) = usage().await;
    u.charge_inference_at("ci", Site::Edge, 700, T);
    u.charge_inference_at("ci", Site::Cloud, 300, T);
    u.charge_inference_at("", Site::Cloud, 300, T);
    u.flush_at(T).await.expect("flush");
    let rows = u.inner.store.usage_rows(None, 0, 0).await.expect("rows");
    assert_eq!(rows.len(), 2, "an hour and a day row of ci only: {rows:?}");
    assert!(rows.iter().all(|r| r.counts.node_inference_us == 700 && r.counts.cloud_inference_us == 300));
}

#[test]
fn a_job_is_refused_by_the_first_day_quota_it_would_break() {
    let q = Quota { jobs_per_day: 5, inference_s_per_day: 2, ..Default::default() };
    let used = UsageCounts { jobs: 4, node_inference_us: 1_500_000, cloud_inference_us: 600_000, ..Default::default() };
    let (what, flag) = job_refusal(&q, &used).expect("2.1 s of 2");
    assert_eq!((what.as_str(), flag), ("2 inference seconds per day (2.100 s used today)", "--inference-s-per-day"));
    assert!(job_refusal(&Quota::default(), &used).is_none(), "unlimited");
    assert_eq!(rfc3339(MIDNIGHT), "2023-11-15T00:00:00Z");
    assert_eq!(minute_of(T + 59_999), T);
}
