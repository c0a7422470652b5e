//! Quotas per API token on the real controller process (docs/security.md,
//! "Usage and quotas"), with its wall clock under libfaketime moved while it
//! runs (never waited for): a token with a quota of 2 jobs a day gets its
//! third job refused with RESOURCE_EXHAUSTED naming the quota and the next
//! 00:00 UTC, and its job goes through once the clock passes midnight; a
//! token with 2 queries a minute likewise until the next minute; the counts
//! survive a clean restart, and `fleetctl usage` shows them as a table and as
//! JSON. Quotas are set with `fleetctl api-tokens create` and `quota`; jobs
//! run on the controller's cloud tier (its built-in classifier), no node needed.

use std::path::Path;

use anyhow::{Context, ensure};
use fleet_net::client::{FleetClient, fleet_client};
use fleet_proto::v1::{QueryTelemetryRequest, SubmitJobRequest};
use fleet_tests::cluster::{ControllerProc, ControllerSetup, output};
use fleet_tests::faketime::{self, FakeClock};
use fleet_tests::free_port;
use fleet_tests::need::{self, Need};
use tonic::Code;

const H: i64 = 3_600_000;
const M: i64 = 60_000;
const DAY: i64 = 24 * H;

/// A UTC day ten days from now, for the fake clock.
fn a_day_ahead() -> i64 {
    let now = fleet_proto::now_unix_ms();
    now - now.rem_euclid(DAY) + 10 * DAY
}

/// An RFC 3339 time as the controller prints it.
fn rfc3339(ms: i64) -> String {
    fleet_controller::usage::rfc3339(ms)
}

/// A controller whose wall clock reads `at_ms` (and runs on), with its admin fleetctl.
async fn controller(dir: &Path, test: &str, at_ms: i64) -> anyhow::Result<Option<(ControllerProc, FakeClock)>> {
    let Some(lib) = faketime::library() else {
        need::missing(Need::Root, test, "libfaketime is not installed (apt-get install faketime; scripts/test does)")?;
        return Ok(None);
    };
    let setup = ControllerSetup::embedded(dir, free_port());
    // Started once to make its CA and admin token, then again on the fake clock.
    let mut ctl = ControllerProc::start(dir, &setup).await?;
    let clock = FakeClock::new(&lib, dir, at_ms)?;
    ctl.term()?;
    ctl.up_with_env(&clock.env()).await?;
    Ok(Some((ctl, clock)))
}

/// fleetctl as admin with `args`; its stdout.
fn fleetctl(ctl: &ControllerProc, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = ctl.fleetctl()?;
    cmd.args(args);
    output(cmd, &format!("fleetctl {}", args.join(" ")))
}

/// A client with the API token `fleetctl` printed.
async fn client_of(ctl: &ControllerProc, printed: &str) -> anyhow::Result<FleetClient> {
    let ca = std::fs::read(ctl.data.join("tls/ca.pem"))?;
    fleet_client(&ctl.server(), Some(&ca), Some(printed.trim())).await.map_err(anyhow::Error::msg)
}

fn job() -> SubmitJobRequest {
    SubmitJobRequest { model: "severity".into(), text: "disk failure on /dev/sda".into(), ..Default::default() }
}

fn query() -> QueryTelemetryRequest {
    QueryTelemetryRequest { node_id: "pi-1".into(), metric: "cpu.usage_pct".into(), ..Default::default() }
}

/// `fleetctl usage --token NAME -o json`: the one token's entry.
fn usage_json(ctl: &ControllerProc, token: &str) -> anyhow::Result<serde_json::Value> {
    let out = fleetctl(ctl, &["usage", "--token", token, "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("no JSON: {out}"))?;
    ensure!(v["tokens"].as_array().is_some_and(|t| t.len() == 1), "one token asked for: {v}");
    Ok(v["tokens"][0].clone())
}

/// The JSON row of the period starting at `start_ms` among `rows`.
fn row(rows: &serde_json::Value, start_ms: i64) -> anyhow::Result<serde_json::Value> {
    let found = rows.as_array().and_then(|a| a.iter().find(|r| r["start_unix_ms"] == start_ms));
    found.cloned().with_context(|| format!("no row starting at {}: {rows}", rfc3339(start_ms)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_jobs_per_day_is_refused_until_utc_midnight() -> anyhow::Result<()> {
    const TEST: &str = "quotas::a_token_over_its_jobs_per_day_is_refused_until_utc_midnight";
    let dir = tempfile::tempdir()?;
    let day = a_day_ahead();
    let Some((ctl, clock)) = controller(dir.path(), TEST, day + 23 * H + 50 * M).await? else { return Ok(()) };
    let printed = fleetctl(&ctl, &["api-tokens", "create", "batch", "--role", "operator", "--jobs-per-day", "2"])?;
    let mut batch = client_of(&ctl, &printed).await?;
    for n in 1..=2 {
        let v = batch.submit_job(job()).await.with_context(|| format!("job {n} of 2"))?.into_inner();
        ensure!(v.submitted_by == "batch" && !v.label.is_empty(), "job {n} ran on the cloud tier: {v:?}");
    }
    let e = batch.submit_job(job()).await.expect_err("a third job in the day must be refused");
    ensure!(e.code() == Code::ResourceExhausted, "{e:?}");
    let midnight = rfc3339(day + DAY);
    ensure!(e.message().contains("2 jobs per day"), "names the quota and its limit: {}", e.message());
    ensure!(e.message().contains(&format!("resets at {midnight}")), "says when it resets: {}", e.message());

    // Past 00:00 UTC the day starts again.
    clock.set(day + DAY + 30_000)?;
    batch.submit_job(job()).await.context("the first job of the next day")?;

    let u = usage_json(&ctl, "batch")?;
    ensure!(u["role"] == "operator", "{u}");
    let (first, second) = (row(&u["days"], day)?, row(&u["days"], day + DAY)?);
    ensure!(first["jobs"] == 2 && second["jobs"] == 1, "jobs per day: {u}");
    ensure!(first["cloud_inference_us"].as_u64().is_some_and(|us| us > 0), "inference charged: {first}");
    ensure!(row(&u["hours"], day + 23 * H)?["jobs"] == 2, "per hour too: {u}");
    let q = &u["quotas"][0];
    ensure!(q["quota"] == "jobs per day" && q["limit"] == 2 && q["used"] == 1.0 && q["remaining"] == 1.0, "{q}");
    ensure!(q["resets"] == rfc3339(day + 2 * DAY).as_str(), "{q}");
    let table = fleetctl(&ctl, &["usage", "--token", "batch"])?;
    let today = rfc3339(day + DAY);
    let cells = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let day_row = table.lines().map(cells).find(|c| c.len() > 3 && c[..3] == ["batch", "day", today.as_str()]);
    let day_row = day_row.with_context(|| format!("no day row of {today}:\n{table}"))?;
    ensure!(day_row[3] == "1", "one job in the day's row: {day_row:?}\n{table}");
    ensure!(table.contains("jobs per day") && table.contains(&rfc3339(day + 2 * DAY)), "{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_queries_per_minute_is_refused_until_the_next_minute() -> anyhow::Result<()> {
    const TEST: &str = "quotas::a_token_over_its_queries_per_minute_is_refused_until_the_next_minute";
    let dir = tempfile::tempdir()?;
    let day = a_day_ahead();
    let noon = day + 12 * H;
    let Some((mut ctl, clock)) = controller(dir.path(), TEST, noon + 5_000).await? else { return Ok(()) };
    let printed = fleetctl(&ctl, &["api-tokens", "create", "dash", "--role", "viewer"])?;
    let set = fleetctl(&ctl, &["api-tokens", "quota", "dash", "--queries-per-minute", "2"])?;
    ensure!(set.contains("2 queries per minute") && set.contains("unlimited jobs per day"), "{set}");
    let mut dash = client_of(&ctl, &printed).await?;
    dash.query_telemetry(query()).await.context("query 1 of 2")?;
    dash.query_telemetry(query()).await.context("query 2 of 2")?;
    let e = dash.query_telemetry(query()).await.expect_err("a third query in the minute must be refused");
    ensure!(e.code() == Code::ResourceExhausted, "{e:?}");
    ensure!(e.message().contains("2 queries per minute"), "names the quota and its limit: {}", e.message());
    ensure!(e.message().contains(&format!("resets at {}", rfc3339(noon + M))), "says when: {}", e.message());

    clock.set(noon + M + 5_000)?;
    dash.query_telemetry(query()).await.context("the first query of the next minute")?;

    // A clean stop writes what was counted; the controller started again shows it.
    ctl.term()?;
    ctl.up_with_env(&clock.env()).await?;
    let u = usage_json(&ctl, "dash")?;
    ensure!(row(&u["hours"], noon)?["queries"] == 3 && row(&u["days"], day)?["queries"] == 3, "{u}");
    let q = u["quotas"].as_array().and_then(|a| a.iter().find(|q| q["quota"] == "queries per minute"));
    ensure!(q.is_some_and(|q| q["limit"] == 2 && q["resets"].as_str().is_some_and(|r| r.ends_with('Z'))), "{u}");
    let table = fleetctl(&ctl, &["usage"])?;
    let limit_of =
        |l: &str| l.split_once("queries per minute").and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned));
    ensure!(table.lines().any(|l| limit_of(l).as_deref() == Some("2")), "dash's limit of 2 queries: {table}");
    ensure!(table.lines().any(|l| l.starts_with("dash ") && l.contains(" hour ")), "dash's hour row: {table}");
    Ok(())
}
