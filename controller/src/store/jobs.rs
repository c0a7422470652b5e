//! Finished inference jobs: one row per job (queryable columns plus the
//! encoded `JobView`), written in batches by the job manager's recorder.

use fleet_proto::v1::{JobStatus, JobView, Site};
use prost::Message;

use super::{Store, i64_of};
use crate::ControllerError;

/// The `status` column's words.
#[must_use]
pub fn status_word(s: i32) -> &'static str {
    match JobStatus::try_from(s).unwrap_or(JobStatus::Unspecified) {
        JobStatus::Unspecified => "unspecified",
        JobStatus::Pending => "pending",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Refused => "refused",
        JobStatus::Expired => "expired",
        JobStatus::Abandoned => "abandoned",
    }
}

/// The `site` column's words.
#[must_use]
pub fn site_word(s: i32) -> &'static str {
    match Site::try_from(s).unwrap_or(Site::Unspecified) {
        Site::Unspecified => "",
        Site::Edge => "edge",
        Site::Cloud => "cloud",
    }
}

fn decode(b: &[u8]) -> Result<JobView, ControllerError> {
    JobView::decode(b).map_err(|e| ControllerError::Io(format!("a stored job does not decode: {e}")))
}

impl Store {
    /// Records finished jobs (a job recorded twice keeps its first row).
    ///
    /// # Errors
    /// Database errors.
    pub async fn put_jobs(&self, jobs: &[JobView]) -> Result<(), ControllerError> {
        let sql = "INSERT INTO jobs (job_id, model, status, site, node_id, submitted_ms, finished_ms, \
                   end_to_end_us, inference_us, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                   ON CONFLICT (job_id) DO NOTHING";
        macro_rules! put {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                for j in jobs {
                    let t = j.timings.unwrap_or_default();
                    let mut kept = j.clone();
                    kept.embedding.clear();
                    sqlx::query(sql)
                        .bind(&j.job_id)
                        .bind(&j.model)
                        .bind(status_word(j.status))
                        .bind(site_word(j.site))
                        .bind(&j.node_id)
                        .bind(j.submitted_unix_ms)
                        .bind(j.finished_unix_ms)
                        .bind(i64_of(t.end_to_end_us))
                        .bind(i64_of(t.inference_us))
                        .bind(kept.encode_to_vec())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }};
        }
        match self {
            Store::Postgres(p, _) => put!(p),
            Store::Sqlite(p) => put!(p),
        }
        Ok(())
    }

    /// One recorded job.
    ///
    /// # Errors
    /// Database errors.
    pub async fn get_job(&self, job_id: &str) -> Result<Option<JobView>, ControllerError> {
        let sql = "SELECT payload FROM jobs WHERE job_id = $1";
        let b: Option<Vec<u8>> = match self {
            Store::Postgres(p, _) => sqlx::query_scalar(sql).bind(job_id).fetch_optional(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(sql).bind(job_id).fetch_optional(p).await?,
        };
        b.map(|b| decode(&b)).transpose()
    }

    /// Recorded jobs, newest first, optionally of one node and one status.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_jobs(
        &self,
        node_id: Option<&str>,
        status: Option<i32>,
        limit: u32,
    ) -> Result<Vec<JobView>, ControllerError> {
        let sql = "SELECT payload FROM jobs WHERE ($1 IS NULL OR node_id = $1) AND ($2 IS NULL OR status = $2) \
                   ORDER BY submitted_ms DESC LIMIT $3";
        let status = status.map(status_word);
        let rows: Vec<Vec<u8>> = match self {
            Store::Postgres(p, _) => {
                sqlx::query_scalar(sql).bind(node_id).bind(status).bind(i64::from(limit)).fetch_all(p).await?
            }
            Store::Sqlite(p) => {
                sqlx::query_scalar(sql).bind(node_id).bind(status).bind(i64::from(limit)).fetch_all(p).await?
            }
        };
        rows.iter().map(|b| decode(b)).collect()
    }

    /// Deletes job records submitted before `before_ms`; returns how many.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete_jobs_before(&self, before_ms: i64) -> Result<u64, ControllerError> {
        let sql = "DELETE FROM jobs WHERE submitted_ms < $1";
        Ok(match self {
            Store::Postgres(p, _) => sqlx::query(sql).bind(before_ms).execute(p).await?.rows_affected(),
            Store::Sqlite(p) => sqlx::query(sql).bind(before_ms).execute(p).await?.rows_affected(),
        })
    }
}
