//! The nodes' replay marks (migration 0009; docs/security.md, "Signed
//! envelope"): what the controller's replay guards need after a restart.

use super::Store;
use crate::ControllerError;

/// A node's replay mark: its newest boot and the highest `msg_seq` taken in it.
pub type ReplayMark = (String, u64, u64);

fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const SAVE: &str = "INSERT INTO replay_marks (node_id, boot_no, msg_seq) VALUES ($1, $2, $3) \
    ON CONFLICT (node_id) DO UPDATE SET boot_no = excluded.boot_no, msg_seq = excluded.msg_seq \
    WHERE (replay_marks.boot_no, replay_marks.msg_seq) < (excluded.boot_no, excluded.msg_seq)";

impl Store {
    /// Every node's saved replay mark.
    ///
    /// # Errors
    /// Database errors.
    pub async fn replay_marks(&self) -> Result<Vec<ReplayMark>, ControllerError> {
        let sql = "SELECT node_id, boot_no, msg_seq FROM replay_marks";
        let rows: Vec<(String, i64, i64)> = match self {
            Store::Postgres(p, _) => sqlx::query_as(sql).fetch_all(p).await?,
            Store::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await?,
        };
        Ok(rows
            .into_iter()
            .map(|(n, b, s)| (n, u64::try_from(b).unwrap_or(0), u64::try_from(s).unwrap_or(0)))
            .collect())
    }

    /// Saves `marks` in one transaction; a mark never moves back (another
    /// replica may have saved a later one).
    ///
    /// # Errors
    /// Database errors.
    pub async fn save_replay_marks(&self, marks: &[ReplayMark]) -> Result<(), ControllerError> {
        match self {
            Store::Postgres(p, _) => {
                let mut tx = p.begin().await?;
                for (n, b, s) in marks {
                    sqlx::query(SAVE).bind(n).bind(to_db(*b)).bind(to_db(*s)).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Store::Sqlite(p) => {
                let mut tx = p.begin().await?;
                for (n, b, s) in marks {
                    sqlx::query(SAVE).bind(n).bind(to_db(*b)).bind(to_db(*s)).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }
}
