//! Usage and quotas per API token (docs/security.md, "Usage and quotas").
//!
//! What each token uses — jobs accepted, inference time on nodes and in the
//! cloud tier (charged when a result settles), telemetry queries and the
//! points they returned — is counted in memory and added to the store's
//! hourly and daily rows every second by [`Usage::run`], and once more when
//! the controller stops (`Controller::wait`), so a clean stop loses nothing;
//! a crash loses at most the last second. Counting takes a short lock, never
//! a database round trip.
//!
//! Quotas: jobs and inference seconds per UTC day are judged on the day's
//! stored row (read once per token and day, then kept in step with what this
//! replica writes and re-read after every flush, so other replicas' counts
//! arrive within about a second) plus what is not yet written; queries per
//! minute are counted in memory by each replica. Every method has an `_at`
//! twin that takes the time, so tests move time instead of waiting; the
//! controller's calls use its [`Clock`].

mod report;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fleet_proto::v1::Site;
use tokio_util::sync::CancellationToken;

use crate::ControllerError;
use crate::auth::Quota;
use crate::clock::Clock;
use crate::metrics::{Metrics, ReasonLabel};
use crate::store::Store;
use crate::store::usage::{Period, UsageCounts, UsageDelta};

/// How often counts are added to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often rows past their keeping are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Hourly rows are kept this many hours, daily rows this many days.
pub const KEEP_HOURS: i64 = 31 * 24;
pub const KEEP_DAYS: i64 = 400;
/// Token-hours counted and not yet written, at most (while the store is
/// unreachable); beyond it counts are dropped and counted in `fleet_usage_dropped_total`.
const MAX_PENDING: usize = 100_000;
const MINUTE_MS: i64 = 60_000;

/// The quotas' names, as messages, `GetUsage` and fleetctl say them.
pub const JOBS_PER_DAY: &str = "jobs per day";
pub const INFERENCE_PER_DAY: &str = "inference seconds per day";
pub const QUERIES_PER_MINUTE: &str = "queries per minute";

/// A job counted by [`Usage::admit_job_at`], to give back if it is not taken after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    hour_ms: i64,
}

type Hours = HashMap<i64, UsageCounts>;

#[derive(Default)]
struct State {
    /// Counted and not yet handed to the store: per token, per hour.
    pending: HashMap<String, Hours>,
    /// Token-hours in `pending` (bounded by MAX_PENDING).
    pending_len: usize,
    /// Taken by the flush under way: written, or put back when the write fails.
    flushing: HashMap<String, Hours>,
    /// The stored row of the current day of each token with a day quota.
    days: HashMap<String, (i64, UsageCounts)>,
    /// Each token's queries in its current minute, on this replica.
    minutes: HashMap<String, (i64, u64)>,
}

impl State {
    /// Counts `c` for `token` in the hour starting at `hour_ms`; false when
    /// dropped because too much is waiting for the store.
    fn add(&mut self, token: &str, hour_ms: i64, c: &UsageCounts) -> bool {
        let full = self.pending_len >= MAX_PENDING;
        if let Some(hours) = self.pending.get_mut(token) {
            if let Some(have) = hours.get_mut(&hour_ms) {
                have.add(c);
                return true;
            }
            if full {
                return false;
            }
            hours.insert(hour_ms, *c);
        } else {
            if full {
                return false;
            }
            self.pending.insert(token.to_owned(), HashMap::from([(hour_ms, *c)]));
        }
        self.pending_len += 1;
        true
    }

    /// What `token` used in the day starting at `day_ms`: the stored row (when
    /// loaded for that day) and what is not yet in it.
    fn today(&self, token: &str, day_ms: i64) -> UsageCounts {
        let mut c = self.days.get(token).filter(|(d, _)| *d == day_ms).map(|(_, c)| *c).unwrap_or_default();
        for hours in [self.flushing.get(token), self.pending.get(token)].into_iter().flatten() {
            for (h, d) in hours {
                if Period::Day.start_of(*h) == day_ms {
                    c.add(d);
                }
            }
        }
        c
    }

    fn queries_this_minute(&self, token: &str, minute_ms: i64) -> u64 {
        self.minutes.get(token).filter(|(m, _)| *m == minute_ms).map_or(0, |(_, n)| *n)
    }
}

/// Usage counting and quota checks; cheap to clone.
#[derive(Clone)]
pub struct Usage {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<Clock>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// One flush or day load at a time, so a day row is never read while
    /// this replica's counts are half written.
    store_turn: tokio::sync::Mutex<()>,
}

fn minute_of(at_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(MINUTE_MS)
}

/// An RFC 3339 time, UTC, to the second.
#[must_use]
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Which day quota another job would break, given what was used `today`:
/// the quota as a message says it, and the fleetctl flag that raises it.
fn job_refusal(quota: &Quota, today: &UsageCounts) -> Option<(String, &'static str)> {
    let jobs = u64::try_from(today.jobs).unwrap_or(0);
    if quota.jobs_per_day > 0 && jobs >= quota.jobs_per_day {
        return Some((format!("{} {JOBS_PER_DAY} ({jobs} used today)", quota.jobs_per_day), "--jobs-per-day"));
    }
    let limit_us = to_db(quota.inference_s_per_day).saturating_mul(1_000_000);
    if quota.inference_s_per_day > 0 && today.inference_us() >= limit_us {
        #[allow(clippy::cast_precision_loss)] // a message
        let used = today.inference_us() as f64 / 1e6;
        let what = format!("{} {INFERENCE_PER_DAY} ({used:.3} s used today)", quota.inference_s_per_day);
        return Some((what, "--inference-s-per-day"));
    }
    None
}

impl Usage {
    /// Counts kept in `store`, at the time of `clock`.
    #[must_use]
    pub fn new(store: Store, clock: Arc<Clock>, metrics: Arc<Metrics>) -> Self {
        let inner = Inner {
            store,
            clock,
            metrics,
            state: Mutex::new(State::default()),
            store_turn: tokio::sync::Mutex::new(()),
        };
        Self { inner: Arc::new(inner) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The controller's time (never below what it has seen).
    #[must_use]
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    fn count(&self, token: &str, at_ms: i64, c: &UsageCounts) {
        if !self.state().add(token, Period::Hour.start_of(at_ms), c) {
            self.inner.metrics.usage_dropped.inc();
        }
    }

    fn over(&self, token: &str, what: &str, flag: &str, resets_ms: i64) -> ControllerError {
        self.inner.metrics.api_rejected.get_or_create(&ReasonLabel { reason: "over_quota" }).inc();
        ControllerError::OverQuota(format!(
            "API token {token:?} is over its quota of {what}; it resets at {}. Wait until then, or ask an \
             admin to raise it: fleetctl api-tokens quota {token} {flag} N",
            rfc3339(resets_ms)
        ))
    }

    /// [`Usage::admit_job_at`] now.
    ///
    /// # Errors
    /// As [`Usage::admit_job_at`].
    pub async fn admit_job(&self, token: &str, quota: &Quota) -> Result<Admitted, ControllerError> {
        self.admit_job_at(token, quota, self.now_ms()).await
    }

    /// Counts a job of `token` at `now_ms` unless its day's jobs or inference
    /// seconds are used up.
    ///
    /// # Errors
    /// `OverQuota` naming the quota, its limit and when it resets; database
    /// errors when the day's row cannot be read.
    pub async fn admit_job_at(&self, token: &str, quota: &Quota, now_ms: i64) -> Result<Admitted, ControllerError> {
        let day = Period::Day.start_of(now_ms);
        if quota.jobs_per_day > 0 || quota.inference_s_per_day > 0 {
            self.load_day(token, day).await?;
        }
        let hour_ms = Period::Hour.start_of(now_ms);
        // Checked and counted under one lock: two calls at once cannot both take the last job.
        let mut st = self.state();
        let today = st.today(token, day);
        let refused = job_refusal(quota, &today);
        let counted = refused.is_none() && st.add(token, hour_ms, &UsageCounts { jobs: 1, ..Default::default() });
        drop(st);
        if let Some((what, flag)) = refused {
            return Err(self.over(token, &what, flag, day + Period::Day.len_ms()));
        }
        if !counted {
            self.inner.metrics.usage_dropped.inc();
        }
        Ok(Admitted { hour_ms })
    }

    /// Takes back a job counted by [`Usage::admit_job_at`] that was not
    /// accepted after all (a bad request, no site to run it).
    pub fn refund_job(&self, token: &str, a: Admitted) {
        self.count(token, a.hour_ms, &UsageCounts { jobs: -1, ..Default::default() });
    }

    /// [`Usage::admit_query_at`] now.
    ///
    /// # Errors
    /// As [`Usage::admit_query_at`].
    pub fn admit_query(&self, token: &str, quota: &Quota) -> Result<(), ControllerError> {
        self.admit_query_at(token, quota, self.now_ms())
    }

    /// Counts a telemetry query of `token` at `now_ms` unless its minute's
    /// queries are used up.
    ///
    /// # Errors
    /// `OverQuota` naming the quota, its limit and when it resets.
    pub fn admit_query_at(&self, token: &str, quota: &Quota, now_ms: i64) -> Result<(), ControllerError> {
        let minute = minute_of(now_ms);
        let mut st = self.state();
        let used = st.queries_this_minute(token, minute);
        if quota.queries_per_minute > 0 && used >= quota.queries_per_minute {
            drop(st);
            let what = format!("{} {QUERIES_PER_MINUTE}", quota.queries_per_minute);
            return Err(self.over(token, &what, "--queries-per-minute", minute + MINUTE_MS));
        }
        st.minutes.insert(token.to_owned(), (minute, used + 1));
        let counted = st.add(token, Period::Hour.start_of(now_ms), &UsageCounts { queries: 1, ..Default::default() });
        drop(st);
        if !counted {
            self.inner.metrics.usage_dropped.inc();
        }
        Ok(())
    }

    /// Counts `n` points returned to `token` now.
    pub fn count_rows(&self, token: &str, n: usize) {
        self.count_rows_at(token, n, self.now_ms());
    }

    /// Counts `n` points returned to `token` at `now_ms`.
    pub fn count_rows_at(&self, token: &str, n: usize, now_ms: i64) {
        self.count(token, now_ms, &UsageCounts { rows: i64::try_from(n).unwrap_or(i64::MAX), ..Default::default() });
    }

    /// Charges `token` with `us` of inference on `site` now.
    pub fn charge_inference(&self, token: &str, site: Site, us: u64) {
        self.charge_inference_at(token, site, us, self.now_ms());
    }

    /// Charges `token` with `us` of inference on `site` at `now_ms` (a token
    /// name of "" is no token: nothing is charged).
    pub fn charge_inference_at(&self, token: &str, site: Site, us: u64, now_ms: i64) {
        if token.is_empty() || us == 0 {
            return;
        }
        let us = to_db(us);
        let c = match site {
            Site::Cloud => UsageCounts { cloud_inference_us: us, ..Default::default() },
            Site::Edge | Site::Unspecified => UsageCounts { node_inference_us: us, ..Default::default() },
        };
        self.count(token, now_ms, &c);
    }

    /// Reads `token`'s stored row of the day at `day_ms`, unless it is known.
    async fn load_day(&self, token: &str, day_ms: i64) -> Result<(), ControllerError> {
        let known = |s: &State| s.days.get(token).is_some_and(|(d, _)| *d == day_ms);
        if known(&self.state()) {
            return Ok(());
        }
        let _turn = self.inner.store_turn.lock().await;
        if known(&self.state()) {
            return Ok(());
        }
        let rows = self.inner.store.usage_rows(Some(token), i64::MAX, day_ms).await?;
        let stored = rows.into_iter().find(|r| r.start_ms == day_ms).map(|r| r.counts).unwrap_or_default();
        self.state().days.insert(token.to_owned(), (day_ms, stored));
        Ok(())
    }

    /// [`Usage::flush_at`] now.
    ///
    /// # Errors
    /// As [`Usage::flush_at`].
    pub async fn flush(&self) -> Result<(), ControllerError> {
        self.flush_at(self.now_ms()).await
    }

    /// Adds what was counted to the store, then reads back the current day's
    /// rows of tokens with day quotas (other replicas count too).
    ///
    /// # Errors
    /// Database errors; what was not written is kept and written next time.
    pub async fn flush_at(&self, now_ms: i64) -> Result<(), ControllerError> {
        let _turn = self.inner.store_turn.lock().await;
        let deltas: Vec<UsageDelta> = {
            let mut st = self.state();
            st.flushing = std::mem::take(&mut st.pending);
            st.pending_len = 0;
            let all = st.flushing.iter().flat_map(|(token, hours)| {
                hours.iter().map(|(h, c)| UsageDelta { token: token.clone(), hour_ms: *h, counts: *c })
            });
            all.collect()
        };
        if !deltas.is_empty()
            && let Err(e) = self.inner.store.add_usage(&deltas).await
        {
            let mut st = self.state();
            for d in &deltas {
                if !st.add(&d.token, d.hour_ms, &d.counts) {
                    self.inner.metrics.usage_dropped.inc();
                }
            }
            st.flushing.clear();
            return Err(e);
        }
        let day = Period::Day.start_of(now_ms);
        let refresh = {
            let mut st = self.state();
            // What was just written is in the stored rows now.
            for d in &deltas {
                if let Some((start, counts)) = st.days.get_mut(&d.token)
                    && Period::Day.start_of(d.hour_ms) == *start
                {
                    counts.add(&d.counts);
                }
            }
            st.flushing.clear();
            st.days.retain(|_, (d, _)| *d == day);
            let minute = minute_of(now_ms);
            st.minutes.retain(|_, (m, _)| *m >= minute);
            !st.days.is_empty()
        };
        if refresh {
            let rows = self.inner.store.usage_of_day(day).await?;
            let mut st = self.state();
            for (token, counts) in rows {
                if let Some(e) = st.days.get_mut(&token)
                    && e.0 == day
                {
                    e.1 = counts;
                }
            }
        }
        Ok(())
    }

    /// Deletes rows older than they are kept ([`KEEP_HOURS`], [`KEEP_DAYS`]).
    ///
    /// # Errors
    /// Database errors.
    pub async fn prune_at(&self, now_ms: i64) -> Result<u64, ControllerError> {
        let hours = Period::Hour.start_of(now_ms) - KEEP_HOURS * Period::Hour.len_ms();
        let days = Period::Day.start_of(now_ms) - KEEP_DAYS * Period::Day.len_ms();
        self.inner.store.delete_usage_before(hours, days).await
    }

    /// Writes counts to the store every [`FLUSH_EVERY`] and prunes hourly,
    /// until `shutdown`; `Controller::wait` writes the last counts after every task stopped.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => match self.flush().await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        if failures.is_multiple_of(60) {
                            tracing::warn!(error = %e, "API usage not written to the store yet; kept in memory and \
                                retried every second.");
                        }
                        failures = failures.wrapping_add(1);
                    }
                },
                _ = prune.tick() => {
                    if let Err(e) = self.prune_at(self.now_ms()).await {
                        tracing::warn!(error = %e, "Could not delete old API usage rows.");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
