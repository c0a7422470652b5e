//! The controller's store: SQLite (embedded default) or PostgreSQL, behind
//! one type, opened and migrated here. Each concern has its file:
//! `telemetry` (bulk writes with the ack marks), `query` (reads),
//! `tiers` (rollups, retention, partitions), `desired`, `jobs`, `rollouts`, `security`,
//! `usage` (what each API token used, and its quotas).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::ControllerError;

/// Runs `$body` with `$p` bound to whichever pool the store has (the SQL
/// must suit both: `$1` placeholders, no dialect features).
macro_rules! on_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match $store {
            Store::Postgres($p, _) => $body,
            Store::Sqlite($p) => $body,
        }
    };
}

pub mod acks;
mod desired;
pub mod jobs;
mod query;
pub mod replay;
mod rollouts;
mod rollup_query;
pub mod security;
mod sessions;
mod telemetry;
mod tiers;
mod upkeep;
pub mod usage;
pub use query::QueryResult;
pub use rollouts::{RolloutLock, Which};
pub use telemetry::{RunRange, Written};
pub use tiers::{JOB_LOCK, PostgresSchema, Retention, StorageConfig};
pub use upkeep::Upkeep;

/// Where telemetry lives.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool, PgFlavour),
}

/// Which schema a PostgreSQL database carries (chosen at its first migration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgFlavour {
    /// Plain PostgreSQL: native range partitions and controller-kept rollups.
    Plain,
    /// TimescaleDB: hypertable, compression, continuous aggregates, policies.
    Timescale,
}

/// PostgreSQL advisory lock key of telling the schema and migrating ("fleetsch").
const SCHEMA_LOCK: i64 = 0x666c_6565_7473_6368;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens the store: PostgreSQL at `database_url`, or SQLite in `data_dir`
    /// when it is empty.
    ///
    /// # Errors
    /// As [`Store::open_sqlite`] and [`Store::open_postgres`].
    pub async fn open(data_dir: &Path, database_url: &str, cfg: &StorageConfig) -> Result<Self, ControllerError> {
        if database_url.is_empty() {
            Self::open_sqlite(data_dir).await
        } else {
            Self::open_postgres(database_url, cfg).await
        }
    }

    /// Opens (creating if needed) `data_dir/fleet.db` and applies migrations.
    ///
    /// # Errors
    /// When the directory or database cannot be created or migrated.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self, ControllerError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            ControllerError::Config(format!(
                "cannot create data dir {}: {e}; pass a writable --data-dir",
                data_dir.display()
            ))
        })?;
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(data_dir.join("fleet.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk when it returns. The ack an agent gets
            // after a commit makes it delete the rows; under NORMAL a power cut
            // took back commits of the last moments (tests/powercut_controller.rs).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // 16 MiB of page cache per connection (SQLite's default is 2 MiB):
            // with the default, once the telemetry indexes outgrow it, every
            // insert reads its index pages back and ingest fell tenfold over a
            // few million rows (tests/tests/overlay.rs's drains).
            .pragma("cache_size", "-16384")
            .disable_statement_logging();
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Store::Sqlite(pool))
    }

    /// Connects to PostgreSQL and applies migrations: the schema
    /// `cfg.postgres_schema` picks ([`pg_flavour`]); plain PostgreSQL gets its
    /// daily partitions, today's made at once.
    ///
    /// # Errors
    /// When the server cannot be reached or the schema cannot be migrated.
    pub async fn open_postgres(url: &str, cfg: &StorageConfig) -> Result<Self, ControllerError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| ControllerError::Config(format!("--database-url is not a PostgreSQL URL: {e}")))?
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|e| ControllerError::Config(format!("cannot connect to --database-url: {e}")))?;
        // One replica at a time tells the schema and migrates: another one
        // migrating meanwhile shows tables half made (a plain table that is
        // not yet partitioned looked like TimescaleDB's).
        let mut lock = pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)").bind(SCHEMA_LOCK).execute(&mut *lock).await?;
        let migrated = async {
            let flavour = pg_flavour(&pool, cfg.postgres_schema).await?;
            match flavour {
                PgFlavour::Plain => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
                PgFlavour::Timescale => sqlx::migrate!("./migrations/timescale").run(&pool).await?,
            }
            Ok::<_, ControllerError>(flavour)
        }
        .await;
        if sqlx::query("SELECT pg_advisory_unlock($1)").bind(SCHEMA_LOCK).execute(&mut *lock).await.is_err() {
            // The lock lives as long as the session: end it.
            lock.detach();
        }
        let flavour = migrated?;
        let store = Store::Postgres(pool, flavour);
        match flavour {
            PgFlavour::Plain => {
                store.ensure_partitions(cfg, fleet_proto::now_unix_ms()).await?;
            }
            PgFlavour::Timescale => store.timescale_policies().await?,
        }
        Ok(store)
    }

    /// Short name of the backend, for logs and metrics.
    #[must_use]
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_, PgFlavour::Plain) => "postgres",
            Store::Postgres(_, PgFlavour::Timescale) => "timescaledb",
        }
    }

    /// Checks the database answers.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), ControllerError> {
        match self {
            Store::Sqlite(p) => {
                sqlx::query("SELECT 1").execute(p).await?;
            }
            Store::Postgres(p, _) => {
                sqlx::query("SELECT 1").execute(p).await?;
            }
        }
        Ok(())
    }
}

/// Which schema the database at `pool` gets. An existing database keeps the
/// one it has (`auto`), or must have the one asked for; a new one gets
/// TimescaleDB when asked for (an error if the extension cannot be made) or,
/// with `auto`, when `CREATE EXTENSION IF NOT EXISTS timescaledb` succeeds.
async fn pg_flavour(pool: &PgPool, want: PostgresSchema) -> Result<PgFlavour, ControllerError> {
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('telemetry') IS NOT NULL").fetch_one(pool).await?;
    if has_table {
        // Plain PostgreSQL partitions telemetry by day; TimescaleDB's hypertable is a plain table.
        let hypertable: bool =
            sqlx::query_scalar("SELECT relkind <> 'p' FROM pg_class WHERE oid = 'telemetry'::regclass")
                .fetch_one(pool)
                .await?;
        let has = if hypertable { PgFlavour::Timescale } else { PgFlavour::Plain };
        return match (want, has) {
            (PostgresSchema::Timescaledb, PgFlavour::Plain) => Err(ControllerError::Config(
                "storage.postgres_schema = \"timescaledb\", but this database was made with the plain PostgreSQL \
                 schema: keep it with \"auto\" or \"postgres\", or move the data into a new database \
                 (fleet-controller backup, then restore into an empty one)"
                    .into(),
            )),
            (PostgresSchema::Postgres, PgFlavour::Timescale) => Err(ControllerError::Config(
                "storage.postgres_schema = \"postgres\", but this database was made with the TimescaleDB \
                 schema: keep it with \"auto\" or \"timescaledb\""
                    .into(),
            )),
            _ => Ok(has),
        };
    }
    if want == PostgresSchema::Postgres {
        return Ok(PgFlavour::Plain);
    }
    match sqlx::query("CREATE EXTENSION IF NOT EXISTS timescaledb").execute(pool).await {
        Ok(_) => {
            tracing::info!("TimescaleDB is available: telemetry goes into a hypertable.");
            Ok(PgFlavour::Timescale)
        }
        Err(e) if want == PostgresSchema::Timescaledb => Err(ControllerError::Config(format!(
            "storage.postgres_schema = \"timescaledb\", but the extension cannot be made in this database ({e}): \
             install TimescaleDB and add it to shared_preload_libraries (docs/schema.md), or set \"auto\""
        ))),
        Err(e) => {
            tracing::info!(reason = %e, "TimescaleDB is not available; using plain PostgreSQL with daily partitions.");
            Ok(PgFlavour::Plain)
        }
    }
}
