//! PostgreSQL and TimescaleDB: `pg_dump --format=custom` (one snapshot; the
//! controller keeps writing), restored by `pg_restore` in one transaction;
//! on TimescaleDB between `timescaledb_pre_restore()` and
//! `timescaledb_post_restore()`, with the extension at the backup's version.

use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::err;
use crate::ControllerError;

/// The dump's name in a backup directory.
const DUMP: &str = "database.pgdump";

/// What [`backup`] wrote.
pub(super) struct Dumped {
    pub backend: &'static str,
    pub file: String,
    pub timescaledb_version: Option<String>,
}

async fn connect(url: &str) -> Result<PgConnection, ControllerError> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| err(format!("--database-url is not a PostgreSQL URL: {e}")))?
        .disable_statement_logging();
    opts.connect().await.map_err(|e| err(format!("cannot connect to --database-url: {e}")))
}

/// `url` without its password, and the password (for `PGPASSWORD`): a
/// password never shows in the process list.
fn split_password(url: &str) -> Result<(String, Option<String>), ControllerError> {
    let mut u = url::Url::parse(url).map_err(|e| err(format!("--database-url is not a URL: {e}")))?;
    let password = u.password().map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned());
    u.set_password(None).map_err(|()| err("--database-url cannot carry a password"))?;
    Ok((u.to_string(), password))
}

/// Runs `tool` (pg_dump or pg_restore) on `url` with `args`.
async fn run(tool: &str, url: &str, args: &[&str]) -> Result<(), ControllerError> {
    let (url, password) = split_password(url)?;
    let mut cmd = tokio::process::Command::new(tool);
    cmd.args(args).arg("--dbname").arg(&url).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd.output().await.map_err(|e| {
        err(format!(
            "cannot run {tool} ({e}): install the PostgreSQL client tools of the server's major version or newer \
             (Debian: postgresql-client)"
        ))
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(err(format!("{tool} failed ({}):\n{}", out.status, last.join("\n"))));
    }
    Ok(())
}

/// The TimescaleDB version in the database, if the extension is there.
async fn timescaledb_version(conn: &mut PgConnection) -> Result<Option<String>, ControllerError> {
    let sql = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'";
    Ok(sqlx::query_scalar(sql).fetch_optional(conn).await?)
}

/// Dumps the database at `url` into `to`.
pub(super) async fn backup(url: &str, to: &Path) -> Result<Dumped, ControllerError> {
    let mut conn = connect(url).await?;
    let kind: Option<String> =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = to_regclass('telemetry')")
            .fetch_optional(&mut conn)
            .await?
            .flatten();
    let Some(kind) = kind else {
        return Err(err("--database-url holds no fleet store (no telemetry table): is it the controller's database?"));
    };
    // Plain PostgreSQL partitions telemetry by day; TimescaleDB's hypertable is a plain table.
    let (backend, version) =
        if kind == "p" { ("postgres", None) } else { ("timescaledb", timescaledb_version(&mut conn).await?) };
    conn.close().await?;
    let file = to.join(DUMP);
    let file_str = file.to_str().ok_or_else(|| err(format!("--to {} is not UTF-8", to.display())))?;
    run("pg_dump", url, &["--format=custom", "--no-owner", "--no-privileges", "--file", file_str]).await?;
    std::fs::File::open(&file)
        .and_then(|f| f.sync_all())
        .map_err(|e| err(format!("cannot sync {}: {e}", file.display())))?;
    Ok(Dumped { backend, file: DUMP.to_owned(), timescaledb_version: version })
}

/// Restores `dump` into the empty database at `url`.
pub(super) async fn restore(url: &str, dump: &Path, timescaledb: Option<&str>) -> Result<(), ControllerError> {
    let mut conn = connect(url).await?;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')",
    )
    .fetch_one(&mut conn)
    .await?;
    if tables > 0 {
        return Err(err(format!(
            "--database-url has {tables} tables already: restore into an empty database (createdb a new one)"
        )));
    }
    let dump_str = dump.to_str().ok_or_else(|| err(format!("{} is not UTF-8", dump.display())))?;
    let args = ["--no-owner", "--no-privileges", "--no-comments", "--exit-on-error", "--single-transaction", dump_str];
    let Some(version) = timescaledb else {
        conn.close().await?;
        return run("pg_restore", url, &args).await;
    };
    if version.is_empty() || !version.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        return Err(err(format!("the manifest's timescaledb_version {version:?} is not a version")));
    }
    let create = format!("CREATE EXTENSION IF NOT EXISTS timescaledb VERSION '{version}'");
    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut conn).await {
        return Err(err(format!(
            "the backup is of TimescaleDB {version}, and that extension cannot be made in --database-url ({e}): \
             install TimescaleDB {version} and preload it (docs/schema.md)"
        )));
    }
    let have = timescaledb_version(&mut conn).await?;
    if have.as_deref() != Some(version) {
        return Err(err(format!(
            "the backup is of TimescaleDB {version}, the database has {}: restore into a new database where \
             version {version} is installed",
            have.unwrap_or_default()
        )));
    }
    sqlx::query("SELECT timescaledb_pre_restore()").execute(&mut conn).await?;
    let restored = run("pg_restore", url, &args).await;
    sqlx::query("SELECT timescaledb_post_restore()").execute(&mut conn).await?;
    conn.close().await?;
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url() {
        let (url, pw) = split_password("postgres://fleet:p%40ss@db:5432/fleet?sslmode=require").unwrap();
        assert_eq!(url, "postgres://fleet@db:5432/fleet?sslmode=require");
        assert_eq!(pw.as_deref(), Some("p@ss"));
        assert_eq!(split_password("postgres://db/fleet").unwrap().1, None);
    }
}
