//! SQLite: `VACUUM INTO` copies the database as one read transaction sees
//! it (the controller keeps writing into its WAL meanwhile); a restore checks
//! the copy and puts it in place durably.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::err;
use crate::ControllerError;

/// The store's file in a data directory and in a backup.
const DB: &str = "fleet.db";

/// `immutable`: a copy nobody writes (no locks, no WAL files made beside it).
async fn connect(path: &Path, immutable: bool) -> Result<sqlx::SqliteConnection, ControllerError> {
    let opts = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .immutable(immutable)
        .busy_timeout(Duration::from_secs(30))
        .disable_statement_logging();
    Ok(opts.connect().await?)
}

/// Copies `data_dir/fleet.db` into `to/fleet.db`; the file's name.
pub(super) async fn backup(data_dir: &Path, to: &Path) -> Result<String, ControllerError> {
    let src = data_dir.join(DB);
    if !src.is_file() {
        return Err(err(format!(
            "no SQLite store at {}: pass the controller's --data-dir, or --database-url for PostgreSQL",
            src.display()
        )));
    }
    let dest = to.join(DB);
    let dest_str = dest.to_str().ok_or_else(|| err(format!("--to {} is not UTF-8", to.display())))?;
    let mut conn = connect(&src, false).await?;
    sqlx::query("VACUUM INTO ?").bind(dest_str).execute(&mut conn).await?;
    conn.close().await?;
    std::fs::File::open(&dest)
        .and_then(|f| f.sync_all())
        .map_err(|e| err(format!("cannot sync {}: {e}", dest.display())))?;
    Ok(DB.to_owned())
}

/// Checks the copy `db` and makes it `data_dir/fleet.db` (which must not exist).
pub(super) async fn restore(db: &Path, data_dir: &Path) -> Result<(), ControllerError> {
    let dest = data_dir.join(DB);
    if dest.exists() {
        return Err(err(format!(
            "{} exists: restore into a new --data-dir (a restore never replaces a store)",
            dest.display()
        )));
    }
    let mut conn = connect(db, true).await?;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await?;
    conn.close().await?;
    if check != "ok" {
        return Err(err(format!("{} is damaged ({check}): restore an older backup", db.display())));
    }
    fleet_durable::create_dir(data_dir).map_err(|e| err(format!("cannot create {}: {e}", data_dir.display())))?;
    let tmp = dest.with_extension("restoring");
    std::fs::copy(db, &tmp)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &dest))
        .and_then(|()| fleet_durable::sync_dir(data_dir))
        .map_err(|e| err(format!("cannot write {}: {e}", dest.display())))
}
