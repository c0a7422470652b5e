//! Desired states: one versioned row per node, the encoded `DesiredState`.

use fleet_proto::v1::DesiredState;
use prost::Message;

use super::{Store, i64_of};
use crate::ControllerError;

impl Store {
    /// Stores the next version of a node's desired state: the given one with
    /// `version` = previous + 1. With `expected` non-zero, only if the current
    /// version is `expected`. Returns the stored state, or `None` on a version mismatch.
    ///
    /// # Errors
    /// Database errors.
    pub async fn put_desired(
        &self,
        mut desired: DesiredState,
        expected: u64,
    ) -> Result<Option<DesiredState>, ControllerError> {
        let node = desired.node_id.clone();
        let current = self.get_desired(&node).await?.map_or(0, |d| d.version);
        if expected != 0 && expected != current {
            return Ok(None);
        }
        desired.version = current + 1;
        let payload = desired.encode_to_vec();
        let v = i64_of(desired.version);
        // The version check in WHERE makes concurrent writers fail instead of both winning.
        let done = match self {
            Store::Postgres(p, _) => sqlx::query(
                "INSERT INTO desired_state (node_id, version, payload) VALUES ($1, $2, $3) \
                 ON CONFLICT (node_id) DO UPDATE SET version = EXCLUDED.version, payload = EXCLUDED.payload, \
                 updated_at = now() WHERE desired_state.version = $2 - 1",
            )
            .bind(&node)
            .bind(v)
            .bind(&payload)
            .execute(p)
            .await?
            .rows_affected(),
            Store::Sqlite(p) => sqlx::query(
                "INSERT INTO desired_state (node_id, version, payload, updated_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (node_id) DO UPDATE SET version = excluded.version, payload = excluded.payload, \
                 updated_ms = excluded.updated_ms WHERE desired_state.version = $2 - 1",
            )
            .bind(&node)
            .bind(v)
            .bind(&payload)
            .bind(fleet_proto::now_unix_ms())
            .execute(p)
            .await?
            .rows_affected(),
        };
        Ok((done == 1).then_some(desired))
    }

    /// The latest desired state of a node.
    ///
    /// # Errors
    /// Database errors, or a stored payload that does not decode.
    pub async fn get_desired(&self, node_id: &str) -> Result<Option<DesiredState>, ControllerError> {
        let sql = "SELECT payload FROM desired_state WHERE node_id = $1";
        let payload: Option<Vec<u8>> = match self {
            Store::Postgres(p, _) => sqlx::query_scalar(sql).bind(node_id).fetch_optional(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(sql).bind(node_id).fetch_optional(p).await?,
        };
        payload.map(|b| decode_desired(&b)).transpose()
    }

    /// Every stored desired state (republished when the broker reconnects).
    ///
    /// # Errors
    /// Database errors.
    pub async fn all_desired(&self) -> Result<Vec<DesiredState>, ControllerError> {
        let sql = "SELECT payload FROM desired_state ORDER BY node_id";
        let rows: Vec<Vec<u8>> = match self {
            Store::Postgres(p, _) => sqlx::query_scalar(sql).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await?,
        };
        rows.iter().map(|b| decode_desired(b)).collect()
    }
}

fn decode_desired(b: &[u8]) -> Result<DesiredState, ControllerError> {
    DesiredState::decode(b).map_err(|e| ControllerError::Io(format!("stored desired state does not decode: {e}")))
}
