//! The dashboard's sessions in the store (migration 0011/0012): which API
//! token a session cookie's hash stands for, until when. Shared by replicas.

use crate::ControllerError;

use super::Store;

impl Store {
    /// Live sessions (not expired at `now_ms`).
    ///
    /// # Errors
    /// Database errors.
    pub async fn live_sessions(&self, now_ms: i64) -> Result<u64, ControllerError> {
        let sql = "SELECT COUNT(*) FROM dashboard_sessions WHERE expires_unix_ms > $1";
        let n: i64 = match self {
            Store::Postgres(p, _) => sqlx::query_scalar(sql).bind(now_ms).fetch_one(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(sql).bind(now_ms).fetch_one(p).await?,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Deletes the sessions expired at `now_ms`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn sweep_sessions(&self, now_ms: i64) -> Result<(), ControllerError> {
        let sql = "DELETE FROM dashboard_sessions WHERE expires_unix_ms <= $1";
        match self {
            Store::Postgres(p, _) => {
                sqlx::query(sql).bind(now_ms).execute(p).await?;
            }
            Store::Sqlite(p) => {
                sqlx::query(sql).bind(now_ms).execute(p).await?;
            }
        }
        Ok(())
    }

    /// Records a session.
    ///
    /// # Errors
    /// Database errors.
    pub async fn add_session(&self, id_hash: &str, token_hash: &str, expires_ms: i64) -> Result<(), ControllerError> {
        let sql = "INSERT INTO dashboard_sessions (id_hash, token_hash, expires_unix_ms) VALUES ($1, $2, $3)";
        match self {
            Store::Postgres(p, _) => {
                sqlx::query(sql).bind(id_hash).bind(token_hash).bind(expires_ms).execute(p).await?;
            }
            Store::Sqlite(p) => {
                sqlx::query(sql).bind(id_hash).bind(token_hash).bind(expires_ms).execute(p).await?;
            }
        }
        Ok(())
    }

    /// The API token hash and expiry of the session `id_hash`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn session(&self, id_hash: &str) -> Result<Option<(String, i64)>, ControllerError> {
        let sql = "SELECT token_hash, expires_unix_ms FROM dashboard_sessions WHERE id_hash = $1";
        Ok(match self {
            Store::Postgres(p, _) => sqlx::query_as(sql).bind(id_hash).fetch_optional(p).await?,
            Store::Sqlite(p) => sqlx::query_as(sql).bind(id_hash).fetch_optional(p).await?,
        })
    }

    /// Ends the session `id_hash` (logout).
    ///
    /// # Errors
    /// Database errors.
    pub async fn end_session(&self, id_hash: &str) -> Result<(), ControllerError> {
        let sql = "DELETE FROM dashboard_sessions WHERE id_hash = $1";
        match self {
            Store::Postgres(p, _) => {
                sqlx::query(sql).bind(id_hash).execute(p).await?;
            }
            Store::Sqlite(p) => {
                sqlx::query(sql).bind(id_hash).execute(p).await?;
            }
        }
        Ok(())
    }

    /// Ends every session of the API token `token_hash` (it was revoked).
    ///
    /// # Errors
    /// Database errors.
    pub async fn end_sessions_of(&self, token_hash: &str) -> Result<(), ControllerError> {
        let sql = "DELETE FROM dashboard_sessions WHERE token_hash = $1";
        match self {
            Store::Postgres(p, _) => {
                sqlx::query(sql).bind(token_hash).execute(p).await?;
            }
            Store::Sqlite(p) => {
                sqlx::query(sql).bind(token_hash).execute(p).await?;
            }
        }
        Ok(())
    }
}
