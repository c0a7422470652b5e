//! The answer of `GetUsage`: each token's hourly and daily rows of a recent
//! window, and where it stands against each quota.

use std::collections::BTreeMap;

use fleet_proto::v1::{GetUsageRequest, GetUsageResponse, QuotaStanding, TokenUsage, UsagePeriod};

use super::{INFERENCE_PER_DAY, JOBS_PER_DAY, MINUTE_MS, QUERIES_PER_MINUTE, Usage, minute_of};
use crate::ControllerError;
use crate::auth::Quota;
use crate::store::usage::{Period, UsageCounts, UsageRow};

/// Hours and days a report covers when the caller says nothing, and at most.
const DEFAULT_HOURS: u32 = 24;
const MAX_HOURS: u32 = 31 * 24;
const DEFAULT_DAYS: u32 = 7;
const MAX_DAYS: u32 = 400;

fn period(r: &UsageRow) -> UsagePeriod {
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let c = &r.counts;
    UsagePeriod {
        start_unix_ms: r.start_ms,
        jobs: u(c.jobs),
        node_inference_us: u(c.node_inference_us),
        cloud_inference_us: u(c.cloud_inference_us),
        queries: u(c.queries),
        rows: u(c.rows),
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^53
fn standing(quota: &str, limit: u64, used: f64, resets_unix_ms: i64) -> QuotaStanding {
    let remaining = if limit == 0 { 0.0 } else { (limit as f64 - used).max(0.0) };
    QuotaStanding { quota: quota.into(), limit, used, remaining, resets_unix_ms }
}

/// Where a token stands at `now_ms` with `today` used and `queries` this minute.
#[allow(clippy::cast_precision_loss)] // counts far below 2^53
fn standings(q: &Quota, today: &UsageCounts, queries: u64, now_ms: i64) -> Vec<QuotaStanding> {
    let midnight = Period::Day.start_of(now_ms) + Period::Day.len_ms();
    vec![
        standing(JOBS_PER_DAY, q.jobs_per_day, today.jobs.max(0) as f64, midnight),
        standing(INFERENCE_PER_DAY, q.inference_s_per_day, today.inference_us().max(0) as f64 / 1e6, midnight),
        standing(QUERIES_PER_MINUTE, q.queries_per_minute, queries as f64, minute_of(now_ms) + MINUTE_MS),
    ]
}

fn window(req: &GetUsageRequest) -> Result<(u32, u32), ControllerError> {
    let hours = if req.hours == 0 { DEFAULT_HOURS } else { req.hours };
    let days = if req.days == 0 { DEFAULT_DAYS } else { req.days };
    if hours > MAX_HOURS || days > MAX_DAYS {
        return Err(ControllerError::Invalid(format!(
            "hours: at most {MAX_HOURS} (31 days of hourly rows); days: at most {MAX_DAYS}"
        )));
    }
    Ok((hours, days))
}

impl Usage {
    /// What each token (or the one named) used in the window `req` asks for,
    /// with its quotas; everything counted so far is written first.
    ///
    /// # Errors
    /// A window too wide, an unknown token name, database errors.
    pub async fn report(&self, req: &GetUsageRequest) -> Result<GetUsageResponse, ControllerError> {
        let (hours, days) = window(req)?;
        let name = (!req.token.is_empty()).then_some(req.token.as_str());
        self.flush().await?;
        let now = self.now_ms();
        let store = &self.inner.store;
        let hours_from = Period::Hour.start_of(now) - i64::from(hours - 1) * Period::Hour.len_ms();
        let days_from = Period::Day.start_of(now) - i64::from(days - 1) * Period::Day.len_ms();
        let rows = store.usage_rows(name, hours_from, days_from).await?;
        let mut out: BTreeMap<String, (TokenUsage, Quota)> = BTreeMap::new();
        for t in store.api_tokens(name).await? {
            let u = TokenUsage {
                token: t.name.clone(),
                role: t.role.as_str().into(),
                revoked: t.revoked,
                ..Default::default()
            };
            out.insert(t.name, (u, t.quota));
        }
        let today_ms = Period::Day.start_of(now);
        let mut today: BTreeMap<String, UsageCounts> = BTreeMap::new();
        for r in rows {
            let (u, _) = out
                .entry(r.token.clone())
                .or_insert_with(|| (TokenUsage { token: r.token.clone(), ..Default::default() }, Quota::default()));
            match r.period {
                Period::Hour => u.hours.push(period(&r)),
                Period::Day => {
                    if r.start_ms == today_ms {
                        today.insert(r.token.clone(), r.counts);
                    }
                    u.days.push(period(&r));
                }
            }
        }
        if let Some(n) = name
            && out.is_empty()
        {
            return Err(ControllerError::UnknownToken(n.to_owned()));
        }
        let st = self.state();
        let minute = minute_of(now);
        let tokens = out
            .into_values()
            .map(|(mut u, q)| {
                let used = today.get(&u.token).copied().unwrap_or_default();
                u.quotas = standings(&q, &used, st.queries_this_minute(&u.token, minute), now);
                u
            })
            .collect();
        Ok(GetUsageResponse { now_unix_ms: now, tokens })
    }
}
