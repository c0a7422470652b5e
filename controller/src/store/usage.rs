//! What each API token used, per hour and per UTC day, and its quotas
//! (migration 0010; docs/security.md, "Usage and quotas"). Counters are only
//! ever added to (`INSERT ... ON CONFLICT DO UPDATE`), so replicas share a row.

use super::Store;
use crate::ControllerError;
use crate::auth::{Quota, Role};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// A usage row's period: an hour, or a day (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
}

impl Period {
    /// The `period` column's word.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }

    /// Its length in ms.
    #[must_use]
    pub fn len_ms(self) -> i64 {
        match self {
            Period::Hour => HOUR_MS,
            Period::Day => DAY_MS,
        }
    }

    /// The start of the period `at_ms` falls in (Unix time counts UTC days).
    #[must_use]
    pub fn start_of(self, at_ms: i64) -> i64 {
        at_ms - at_ms.rem_euclid(self.len_ms())
    }
}

/// A token's counters in one period, or what to add to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    /// Jobs accepted by SubmitJob.
    pub jobs: i64,
    /// Inference time on edge nodes and in the cloud tier, µs.
    pub node_inference_us: i64,
    pub cloud_inference_us: i64,
    /// QueryTelemetry calls, and the points they returned.
    pub queries: i64,
    pub rows: i64,
}

impl UsageCounts {
    /// Adds `o` to these counters.
    pub fn add(&mut self, o: &UsageCounts) {
        self.jobs = self.jobs.saturating_add(o.jobs);
        self.node_inference_us = self.node_inference_us.saturating_add(o.node_inference_us);
        self.cloud_inference_us = self.cloud_inference_us.saturating_add(o.cloud_inference_us);
        self.queries = self.queries.saturating_add(o.queries);
        self.rows = self.rows.saturating_add(o.rows);
    }

    /// Inference time on nodes and in the cloud together, µs.
    #[must_use]
    pub fn inference_us(&self) -> i64 {
        self.node_inference_us.saturating_add(self.cloud_inference_us)
    }
}

/// What to add to one token's counters in one hour (and so in its day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub token: String,
    /// The hour's start, ms since the Unix epoch.
    pub hour_ms: i64,
    pub counts: UsageCounts,
}

/// One stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub token: String,
    pub period: Period,
    pub start_ms: i64,
    pub counts: UsageCounts,
}

/// An API token's name, role and quotas (never its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub quota: Quota,
    pub revoked: bool,
}

type CountsRow = (String, String, i64, i64, i64, i64, i64, i64);
pub(super) type ApiTokenRow = (String, String, i64, i64, i64, Option<i64>);

const ADD: &str = "INSERT INTO api_usage (token, period, start_ms, jobs, node_inference_us, cloud_inference_us, \
    queries, rows_returned) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
    ON CONFLICT (token, period, start_ms) DO UPDATE SET jobs = api_usage.jobs + excluded.jobs, \
    node_inference_us = api_usage.node_inference_us + excluded.node_inference_us, \
    cloud_inference_us = api_usage.cloud_inference_us + excluded.cloud_inference_us, \
    queries = api_usage.queries + excluded.queries, rows_returned = api_usage.rows_returned + excluded.rows_returned";

const COUNTS: &str = "token, period, start_ms, jobs, node_inference_us, cloud_inference_us, queries, rows_returned";

pub(super) const API_TOKEN_COLUMNS: &str =
    "name, role, jobs_per_day, inference_s_per_day, queries_per_minute, revoked_ms";

fn row_of(r: CountsRow) -> UsageRow {
    UsageRow {
        token: r.0,
        period: if r.1 == "day" { Period::Day } else { Period::Hour },
        start_ms: r.2,
        counts: UsageCounts { jobs: r.3, node_inference_us: r.4, cloud_inference_us: r.5, queries: r.6, rows: r.7 },
    }
}

fn db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn quota_of(jobs: i64, inference_s: i64, queries: i64) -> Quota {
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Quota { jobs_per_day: u(jobs), inference_s_per_day: u(inference_s), queries_per_minute: u(queries) }
}

pub(super) fn api_token_of(r: ApiTokenRow) -> Result<ApiToken, ControllerError> {
    Ok(ApiToken { role: Role::parse(&r.1)?, name: r.0, quota: quota_of(r.2, r.3, r.4), revoked: r.5.is_some() })
}

impl Store {
    /// Adds each delta to its token's hour row and day row, in one transaction.
    ///
    /// # Errors
    /// Database errors (then nothing was added).
    pub async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), ControllerError> {
        macro_rules! add {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                for d in deltas {
                    let c = &d.counts;
                    for (period, start) in [(Period::Hour, d.hour_ms), (Period::Day, Period::Day.start_of(d.hour_ms))] {
                        sqlx::query(ADD)
                            .bind(&d.token)
                            .bind(period.word())
                            .bind(start)
                            .bind(c.jobs)
                            .bind(c.node_inference_us)
                            .bind(c.cloud_inference_us)
                            .bind(c.queries)
                            .bind(c.rows)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
            }};
        }
        match self {
            Store::Postgres(p, _) => add!(p),
            Store::Sqlite(p) => add!(p),
        }
        Ok(())
    }

    /// Every token's row of the day starting at `day_ms`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn usage_of_day(&self, day_ms: i64) -> Result<Vec<(String, UsageCounts)>, ControllerError> {
        let sql = format!("SELECT {COUNTS} FROM api_usage WHERE period = 'day' AND start_ms = $1");
        let sql = sqlx::AssertSqlSafe(sql);
        let rows: Vec<CountsRow> = match self {
            Store::Postgres(p, _) => sqlx::query_as(sql).bind(day_ms).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as(sql).bind(day_ms).fetch_all(p).await?,
        };
        Ok(rows.into_iter().map(row_of).map(|r| (r.token, r.counts)).collect())
    }

    /// Rows of `token` (or every token): hours starting at or after
    /// `hours_from`, days at or after `days_from`; newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn usage_rows(
        &self,
        token: Option<&str>,
        hours_from: i64,
        days_from: i64,
    ) -> Result<Vec<UsageRow>, ControllerError> {
        let sql = format!(
            "SELECT {COUNTS} FROM api_usage WHERE ($1 IS NULL OR token = $1) \
             AND ((period = 'hour' AND start_ms >= $2) OR (period = 'day' AND start_ms >= $3)) \
             ORDER BY token, period, start_ms DESC"
        );
        let sql = sqlx::AssertSqlSafe(sql);
        let rows: Vec<CountsRow> = match self {
            Store::Postgres(p, _) => {
                sqlx::query_as(sql).bind(token).bind(hours_from).bind(days_from).fetch_all(p).await?
            }
            Store::Sqlite(p) => sqlx::query_as(sql).bind(token).bind(hours_from).bind(days_from).fetch_all(p).await?,
        };
        Ok(rows.into_iter().map(row_of).collect())
    }

    /// Deletes hour rows that start before `hours_before` and day rows before
    /// `days_before`; returns how many.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete_usage_before(&self, hours_before: i64, days_before: i64) -> Result<u64, ControllerError> {
        let sql =
            "DELETE FROM api_usage WHERE (period = 'hour' AND start_ms < $1) OR (period = 'day' AND start_ms < $2)";
        Ok(match self {
            Store::Postgres(p, _) => {
                sqlx::query(sql).bind(hours_before).bind(days_before).execute(p).await?.rows_affected()
            }
            Store::Sqlite(p) => sqlx::query(sql).bind(hours_before).bind(days_before).execute(p).await?.rows_affected(),
        })
    }

    /// API tokens (one by name, or all), revoked ones included, by name.
    ///
    /// # Errors
    /// Database errors, or a stored role that is not a role.
    pub async fn api_tokens(&self, name: Option<&str>) -> Result<Vec<ApiToken>, ControllerError> {
        let sql = format!("SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE ($1 IS NULL OR name = $1) ORDER BY name");
        let sql = sqlx::AssertSqlSafe(sql);
        let rows: Vec<ApiTokenRow> = match self {
            Store::Postgres(p, _) => sqlx::query_as(sql).bind(name).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as(sql).bind(name).fetch_all(p).await?,
        };
        rows.into_iter().map(api_token_of).collect()
    }

    /// Sets the quotas given (`None` leaves one as it is) of the live token
    /// `name`; its quotas after, or `None` when there is no live token so named.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_token_quota(
        &self,
        name: &str,
        jobs_per_day: Option<u64>,
        inference_s_per_day: Option<u64>,
        queries_per_minute: Option<u64>,
    ) -> Result<Option<Quota>, ControllerError> {
        let sql = "UPDATE api_tokens SET jobs_per_day = COALESCE($1, jobs_per_day), \
                   inference_s_per_day = COALESCE($2, inference_s_per_day), \
                   queries_per_minute = COALESCE($3, queries_per_minute) WHERE name = $4 AND revoked_ms IS NULL";
        let (j, i, q) = (jobs_per_day.map(db), inference_s_per_day.map(db), queries_per_minute.map(db));
        let n = match self {
            Store::Postgres(p, _) => {
                sqlx::query(sql).bind(j).bind(i).bind(q).bind(name).execute(p).await?.rows_affected()
            }
            Store::Sqlite(p) => sqlx::query(sql).bind(j).bind(i).bind(q).bind(name).execute(p).await?.rows_affected(),
        };
        if n != 1 {
            return Ok(None);
        }
        Ok(self.api_tokens(Some(name)).await?.into_iter().next().map(|t| t.quota))
    }
}

/// A quota's values as the store keeps them.
pub(super) fn quota_values(q: &Quota) -> [i64; 3] {
    [db(q.jobs_per_day), db(q.inference_s_per_day), db(q.queries_per_minute)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_utc_hours_and_days() {
        // 2023-11-14T22:13:20Z
        let t = 1_700_000_000_000;
        assert_eq!(Period::Hour.start_of(t), 1_699_999_200_000); // 22:00:00Z
        assert_eq!(Period::Day.start_of(t), 1_699_920_000_000); // 2023-11-14T00:00:00Z
        assert_eq!(Period::Day.start_of(Period::Day.start_of(t)), Period::Day.start_of(t));
        assert_eq!(Period::Day.start_of(-1), -DAY_MS, "before 1970 too");
    }
}
