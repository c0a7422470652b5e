//! Usage per API token and its quotas on both stores (docs/security.md,
//! "Usage and quotas"): counts are added to hourly and UTC-daily rows, only
//! ever added to; the quotas of jobs and inference seconds per day and of
//! queries per minute refuse with the quota, its limit and its reset time and
//! let calls through again once the time passes it; what one replica (or a
//! controller before its restart) wrote counts against the quota on another —
//! on SQLite and on the real PostgreSQL. Time is passed in, never waited for.

use std::sync::Arc;

use fleet_controller::ControllerError;
use fleet_controller::auth::{Quota, Role};
use fleet_controller::clock::Clock;
use fleet_controller::metrics::Metrics;
use fleet_controller::store::Store;
use fleet_controller::store::usage::{Period, UsageCounts, UsageDelta};
use fleet_controller::usage::Usage;
use fleet_proto::v1::Site;
use fleet_tests::TestDb;

/// 2027-01-15T00:00:00Z.
const DAY: i64 = 1_799_971_200_000;
const H: i64 = 3_600_000;
const M: i64 = 60_000;
const NEXT_DAY: i64 = DAY + 24 * H;

fn delta(token: &str, hour_ms: i64, counts: UsageCounts) -> UsageDelta {
    UsageDelta { token: token.into(), hour_ms, counts }
}

fn usage(s: &Store) -> Usage {
    Usage::new(s.clone(), Arc::new(Clock::new(0)), Arc::new(Metrics::new()))
}

/// The refusal's message, or a failure saying the call went through.
fn refused(r: Result<impl std::fmt::Debug, ControllerError>, what: &str) -> String {
    match r {
        Err(ControllerError::OverQuota(m)) => m,
        other => panic!("{what} should be over its quota, got {other:?}"),
    }
}

async fn counts_per_hour_and_day(s: &Store) -> anyhow::Result<()> {
    let c = |jobs, node, cloud, queries, rows| UsageCounts {
        jobs,
        node_inference_us: node,
        cloud_inference_us: cloud,
        queries,
        rows,
    };
    s.add_usage(&[delta("ci", DAY + 23 * H, c(2, 0, 0, 1, 10)), delta("ops", DAY + 22 * H, c(0, 700, 0, 0, 0))])
        .await?;
    // The same hour again adds to it; the next hour is the next day.
    s.add_usage(&[delta("ci", DAY + 23 * H, c(1, 0, 0, 0, 0)), delta("ci", NEXT_DAY, c(0, 0, 500, 0, 0))]).await?;
    let rows = s.usage_rows(None, 0, 0).await?;
    let got: Vec<_> = rows.iter().map(|r| (r.token.as_str(), r.period, r.start_ms, r.counts)).collect();
    let want = vec![
        ("ci", Period::Day, NEXT_DAY, c(0, 0, 500, 0, 0)),
        ("ci", Period::Day, DAY, c(3, 0, 0, 1, 10)),
        ("ci", Period::Hour, NEXT_DAY, c(0, 0, 500, 0, 0)),
        ("ci", Period::Hour, DAY + 23 * H, c(3, 0, 0, 1, 10)),
        ("ops", Period::Day, DAY, c(0, 700, 0, 0, 0)),
        ("ops", Period::Hour, DAY + 22 * H, c(0, 700, 0, 0, 0)),
    ];
    assert_eq!(got, want, "rows by token, period, newest first");
    let mut day = s.usage_of_day(DAY).await?;
    day.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(day, vec![("ci".into(), c(3, 0, 0, 1, 10)), ("ops".into(), c(0, 700, 0, 0, 0))]);
    let recent = s.usage_rows(Some("ci"), NEXT_DAY, NEXT_DAY).await?;
    assert_eq!(recent.len(), 2, "one token, the window only: {recent:?}");
    assert_eq!(s.delete_usage_before(NEXT_DAY, DAY).await?, 2, "the two hour rows of the first day");
    assert_eq!(s.usage_rows(None, 0, 0).await?.len(), 4);
    Ok(())
}

async fn quotas_of_tokens(s: &Store) -> anyhow::Result<()> {
    let two = Quota { jobs_per_day: 2, ..Quota::default() };
    s.create_api_token("ci", "hash-ci", (Role::Operator, &two), DAY).await?;
    let q = s.set_token_quota("ci", None, Some(30), Some(0)).await?;
    assert_eq!(q, Some(Quota { jobs_per_day: 2, inference_s_per_day: 30, queries_per_minute: 0 }), "only those given");
    assert_eq!(s.set_token_quota("nobody", Some(1), None, None).await?, None);
    s.revoke_api_token("ci", DAY + 1).await?;
    assert_eq!(s.set_token_quota("ci", Some(1), None, None).await?, None, "a revoked token's quota stays");
    let listed = s.api_tokens(None).await?;
    assert!(listed.iter().any(|t| t.name == "ci" && t.revoked && t.quota.inference_s_per_day == 30), "{listed:?}");
    Ok(())
}

async fn jobs_per_day(s: &Store) -> anyhow::Result<()> {
    let (a, b) = (usage(s), usage(s));
    let q = Quota { jobs_per_day: 2, ..Quota::default() };
    a.admit_job_at("batch", &q, DAY + 23 * H + 50 * M).await?;
    a.admit_job_at("batch", &q, DAY + 23 * H + 51 * M).await?;
    let m = refused(a.admit_job_at("batch", &q, DAY + 23 * H + 52 * M).await, "a third job");
    assert!(m.contains("\"batch\"") && m.contains("2 jobs per day (2 used today)"), "{m}");
    assert!(m.contains("resets at 2027-01-16T00:00:00Z.") && m.contains("--jobs-per-day"), "{m}");
    // Another replica sees them once written.
    a.flush_at(DAY + 23 * H + 52 * M).await?;
    refused(b.admit_job_at("batch", &q, DAY + 23 * H + 53 * M).await, "a third job on another replica");
    // Past midnight UTC: a new day.
    a.admit_job_at("batch", &q, NEXT_DAY + 1_000).await?;
    b.admit_job_at("batch", &q, NEXT_DAY + 2_000).await?;
    a.flush_at(NEXT_DAY + 3_000).await?;
    b.flush_at(NEXT_DAY + 3_000).await?;
    // A controller started again (a new Usage) reads what the others wrote.
    let again = usage(s);
    let m = refused(again.admit_job_at("batch", &q, NEXT_DAY + 4_000).await, "a third job after a restart");
    assert!(m.contains("resets at 2027-01-17T00:00:00Z"), "{m}");
    let day = s.usage_of_day(NEXT_DAY).await?;
    assert_eq!(day.iter().find(|(t, _)| t == "batch").map(|(_, c)| c.jobs), Some(2), "{day:?}");
    Ok(())
}

async fn inference_per_day(s: &Store) -> anyhow::Result<()> {
    let u = usage(s);
    let q = Quota { inference_s_per_day: 1, ..Quota::default() };
    u.admit_job_at("ml", &q, DAY + 10 * H).await?;
    u.charge_inference_at("ml", Site::Edge, 600_000, DAY + 10 * H + 1);
    u.admit_job_at("ml", &q, DAY + 10 * H + 2).await?;
    u.charge_inference_at("ml", Site::Cloud, 500_000, DAY + 10 * H + 3);
    let m = refused(u.admit_job_at("ml", &q, DAY + 10 * H + 4).await, "a job after 1.1 s of 1");
    assert!(m.contains("1 inference seconds per day (1.100 s used today)"), "{m}");
    assert!(m.contains("resets at 2027-01-16T00:00:00Z"), "{m}");
    u.admit_job_at("ml", &q, NEXT_DAY).await?;
    u.flush_at(NEXT_DAY).await?;
    let day = s.usage_rows(Some("ml"), i64::MAX, DAY).await?;
    let first = day.iter().find(|r| r.start_ms == DAY).map(|r| r.counts);
    assert_eq!(first.map(|c| (c.jobs, c.node_inference_us, c.cloud_inference_us)), Some((2, 600_000, 500_000)));
    Ok(())
}

async fn queries_per_minute(s: &Store) -> anyhow::Result<()> {
    let u = usage(s);
    let q = Quota { queries_per_minute: 2, ..Quota::default() };
    let t = DAY + 12 * H + 5_000;
    u.admit_query_at("dash", &q, t)?;
    u.count_rows_at("dash", 40, t);
    u.admit_query_at("dash", &q, t + 1)?;
    let m = refused(u.admit_query_at("dash", &q, t + 2), "a third query in the minute");
    assert!(m.contains("2 queries per minute") && m.contains("resets at 2027-01-15T12:01:00Z"), "{m}");
    u.admit_query_at("dash", &q, DAY + 12 * H + M)?;
    u.flush_at(DAY + 12 * H + M).await?;
    let rows = s.usage_rows(Some("dash"), DAY + 12 * H, i64::MAX).await?;
    assert_eq!(rows.iter().map(|r| (r.counts.queries, r.counts.rows)).collect::<Vec<_>>(), [(3, 40)], "{rows:?}");
    Ok(())
}

async fn check(s: &Store) -> anyhow::Result<()> {
    counts_per_hour_and_day(s).await?;
    quotas_of_tokens(s).await?;
    jobs_per_day(s).await?;
    inference_per_day(s).await?;
    queries_per_minute(s).await
}

#[tokio::test]
async fn usage_counts_and_quotas_reset_when_their_period_ends_on_sqlite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    check(&Store::open_sqlite(dir.path()).await?).await
}

#[tokio::test]
async fn usage_counts_and_quotas_reset_when_their_period_ends_on_postgres() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let s = Store::open_postgres(&db.url, &fleet_tests::pg_storage(false)).await?;
    check(&s).await?;
    drop(s);
    db.cleanup().await
}

#[tokio::test]
async fn usage_counts_and_quotas_reset_when_their_period_ends_on_timescaledb() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    if let Some(s) =
        fleet_tests::timescale_store(&db, "usage_counts_and_quotas_reset_when_their_period_ends_on_timescaledb").await?
    {
        check(&s).await?;
    }
    db.cleanup().await
}
