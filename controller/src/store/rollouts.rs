//! Staged rollouts in the store (migration `*_rollouts.sql`): the rollout
//! with its spec and state, and one row per node with its batch and
//! progress. The engine reads them back at every step, so a restarted
//! controller resumes where the last one stopped.

use fleet_proto::v1::{Rollout, RolloutNode, RolloutSpec};
use prost::Message;
use sqlx::Row;

use super::{Store, i64_of};
use crate::ControllerError;

type NodeRow = (String, String, i32, i32, i64, String, i64, i64);

fn node_of(r: NodeRow) -> (String, RolloutNode) {
    let (rollout_id, node_id, batch, state, desired_version, reason, started, finished) = r;
    let node = RolloutNode {
        node_id,
        batch: u32::try_from(batch).unwrap_or(0),
        state,
        desired_version: u64::try_from(desired_version).unwrap_or(0),
        reason,
        started_unix_ms: started,
        finished_unix_ms: finished,
    };
    (rollout_id, node)
}

impl Store {
    /// Stores a new rollout with its nodes.
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert_rollout(&self, r: &Rollout) -> Result<(), ControllerError> {
        let spec = r.spec.clone().unwrap_or_default().encode_to_vec();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO rollouts (rollout_id, spec, state, reason, created_by, created_ms, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&r.rollout_id)
            .bind(&spec)
            .bind(r.state)
            .bind(&r.reason)
            .bind(&r.created_by)
            .bind(r.created_unix_ms)
            .bind(r.updated_unix_ms)
            .execute(&mut *tx)
            .await?;
            for n in &r.nodes {
                sqlx::query("INSERT INTO rollout_nodes (rollout_id, node_id, batch, state) VALUES ($1, $2, $3, $4)")
                    .bind(&r.rollout_id)
                    .bind(&n.node_id)
                    .bind(i32::try_from(n.batch).unwrap_or(i32::MAX))
                    .bind(n.state)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Rollouts with their nodes: one (`id`), the running ones, or all,
    /// newest first.
    ///
    /// # Errors
    /// Database errors, or a spec that does not decode.
    pub async fn rollouts(&self, which: Which<'_>) -> Result<Vec<Rollout>, ControllerError> {
        // The filter is one of two fixed strings; the value is bound.
        let (filter, arg) = match which {
            Which::One(id) => ("WHERE rollout_id = $1", id.to_owned()),
            Which::All => ("WHERE $1 = ''", String::new()),
        };
        let head = format!(
            "SELECT rollout_id, spec, state, reason, created_by, created_ms, updated_ms, forgiven, cleared \
             FROM rollouts {filter} \
             ORDER BY created_ms DESC, rollout_id"
        );
        let nodes_sql = format!(
            "SELECT rollout_id, node_id, batch, state, desired_version, reason, started_ms, finished_ms \
             FROM rollout_nodes WHERE rollout_id IN (SELECT rollout_id FROM rollouts {filter}) ORDER BY batch, node_id"
        );
        let mut out = Vec::new();
        let nodes: Vec<NodeRow> = on_pool!(self, p => {
            for row in sqlx::query(sqlx::AssertSqlSafe(head.as_str())).bind(&arg).fetch_all(p).await? {
                let spec: Vec<u8> = row.try_get(1)?;
                out.push(Rollout {
                    rollout_id: row.try_get(0)?,
                    spec: Some(RolloutSpec::decode(spec.as_slice()).map_err(|e| ControllerError::Io(e.to_string()))?),
                    state: row.try_get(2)?,
                    reason: row.try_get(3)?,
                    created_by: row.try_get(4)?,
                    created_unix_ms: row.try_get(5)?,
                    updated_unix_ms: row.try_get(6)?,
                    forgiven_failures: u32::try_from(row.try_get::<i32, _>(7)?).unwrap_or(0),
                    batches_cleared: u32::try_from(row.try_get::<i32, _>(8)?).unwrap_or(0),
                    ..Default::default()
                });
            }
            sqlx::query_as(sqlx::AssertSqlSafe(nodes_sql.as_str())).bind(&arg).fetch_all(p).await?
        });
        for (id, node) in nodes.into_iter().map(node_of) {
            if let Some(r) = out.iter_mut().find(|r| r.rollout_id == id) {
                r.nodes.push(node);
            }
        }
        Ok(out)
    }

    /// Sets a rollout's state and reason.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_rollout_state(&self, id: &str, state: i32, reason: &str) -> Result<(), ControllerError> {
        let sql = "UPDATE rollouts SET state = $1, reason = $2, updated_ms = $3 WHERE rollout_id = $4";
        let now = fleet_proto::now_unix_ms();
        on_pool!(self, p => {
            sqlx::query(sql).bind(state).bind(reason).bind(now).bind(id).execute(p).await?;
        });
        Ok(())
    }

    /// Resumes a stopped rollout: `forgiven` failures and the batches
    /// before `cleared` no longer count against its thresholds.
    ///
    /// # Errors
    /// Database errors.
    pub async fn resume_rollout(
        &self,
        id: &str,
        forgiven: u32,
        cleared: u32,
        reason: &str,
    ) -> Result<(), ControllerError> {
        let sql = "UPDATE rollouts SET state = $1, reason = $2, updated_ms = $3, forgiven = $4, cleared = $5 \
                   WHERE rollout_id = $6";
        let now = fleet_proto::now_unix_ms();
        let state = fleet_proto::v1::RolloutState::RolloutRunning as i32;
        let (f, c) = (i32::try_from(forgiven).unwrap_or(i32::MAX), i32::try_from(cleared).unwrap_or(i32::MAX));
        on_pool!(self, p => {
            sqlx::query(sql).bind(state).bind(reason).bind(now).bind(f).bind(c).bind(id).execute(p).await?;
        });
        Ok(())
    }

    /// Writes one node's progress in a rollout.
    ///
    /// # Errors
    /// Database errors.
    pub async fn put_rollout_node(&self, id: &str, n: &RolloutNode) -> Result<(), ControllerError> {
        let sql = "UPDATE rollout_nodes SET state = $1, desired_version = $2, reason = $3, started_ms = $4, \
                   finished_ms = $5 WHERE rollout_id = $6 AND node_id = $7";
        on_pool!(self, p => {
            sqlx::query(sql)
                .bind(n.state)
                .bind(i64_of(n.desired_version))
                .bind(&n.reason)
                .bind(n.started_unix_ms)
                .bind(n.finished_unix_ms)
                .bind(id)
                .bind(&n.node_id)
                .execute(p)
                .await?;
        });
        Ok(())
    }
}

/// Which rollouts to read.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    One(&'a str),
    All,
}

/// PostgreSQL advisory lock key of moving rollouts on ("fleetrol").
const ROLLOUT_LOCK: i64 = 0x666c_6565_7472_6f6c;

/// Held while one replica moves the rollouts on (dropped: released).
pub enum RolloutLock {
    /// SQLite: one controller per database file.
    Sole,
    /// PostgreSQL: a transaction holding the advisory lock.
    Held(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Store {
    /// The right to move rollouts on now, or None when another replica has it.
    ///
    /// # Errors
    /// Database errors.
    pub async fn rollout_lock(&self) -> Result<Option<RolloutLock>, ControllerError> {
        match self {
            Store::Sqlite(_) => Ok(Some(RolloutLock::Sole)),
            Store::Postgres(p, _) => {
                let mut tx = p.begin().await?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(ROLLOUT_LOCK)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(got.then_some(RolloutLock::Held(tx)))
            }
        }
    }
}
