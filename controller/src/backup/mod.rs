//! `fleet-controller backup --to DIR` and `restore --from DIR`
//! (docs/operations.md, "Backups"): a consistent copy of the store, taken
//! while the controller runs, and the security files of its data directory
//! (the CA, the signing keys, the first admin token, the WireGuard key).
//!
//! SQLite is copied by `VACUUM INTO` (one read transaction: the state at its
//! start, the controller writing on meanwhile); PostgreSQL and TimescaleDB by
//! `pg_dump` (one snapshot), restored by `pg_restore` inside TimescaleDB's
//! `timescaledb_pre_restore()` / `timescaledb_post_restore()`. A restore
//! goes only into an empty store and a data directory without security files.

mod files;
mod postgres;
mod sqlite;

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ControllerError;
use crate::config::ControllerConfig;

/// The manifest's name in a backup directory.
pub const MANIFEST: &str = "backup.toml";
/// Format of the backup directory; a restore refuses others.
const FORMAT: u32 = 1;

/// What a backup directory holds (`DIR/backup.toml`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    /// `sqlite`, `postgres` or `timescaledb`.
    pub backend: String,
    /// RFC 3339: when the store's snapshot was taken.
    pub taken_at: String,
    pub controller_version: String,
    /// The TimescaleDB extension's version (a restore needs the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timescaledb_version: Option<String>,
    /// The store's file in the directory.
    pub database: String,
    /// The data directory's security files copied (relative paths).
    pub files: Vec<String>,
}

/// What a backup or restore did, for its one-line report.
#[derive(Debug, Clone)]
pub struct Report {
    pub backend: String,
    pub bytes: u64,
    pub files: usize,
    pub took: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} store, {:.1} MiB, {} security files, in {:.1} s",
            self.backend,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.files,
            self.took.as_secs_f64()
        )
    }
}

fn err(msg: impl Into<String>) -> ControllerError {
    ControllerError::Invalid(msg.into())
}

/// Writes a backup of the store and security files `cfg` names into `to`
/// (a new or empty directory).
///
/// # Errors
/// `to` not empty or not writable, the store unreachable, `pg_dump` missing
/// or failing; each says what to do.
pub async fn backup(cfg: &ControllerConfig, to: &Path) -> Result<Report, ControllerError> {
    let start = Instant::now();
    files::empty_dir(to)?;
    let taken_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let (backend, database, timescaledb_version) = if cfg.database_url.is_empty() {
        ("sqlite".to_owned(), sqlite::backup(&cfg.data_dir, to).await?, None)
    } else {
        let dumped = postgres::backup(&cfg.database_url, to).await?;
        (dumped.backend.to_owned(), dumped.file, dumped.timescaledb_version)
    };
    // After the snapshot: a key it refers to is never newer than the files.
    let copied = files::copy_security(&cfg.data_dir, to)?;
    let bytes = files::size(&to.join(&database));
    let manifest = Manifest {
        format: FORMAT,
        backend: backend.clone(),
        taken_at,
        controller_version: env!("CARGO_PKG_VERSION").to_owned(),
        timescaledb_version,
        database,
        files: copied.clone(),
    };
    let text = toml::to_string(&manifest).map_err(|e| err(format!("cannot write the manifest: {e}")))?;
    fleet_durable::write_public(&to.join(MANIFEST), text.as_bytes())
        .map_err(|e| err(format!("cannot write {}: {e}", to.join(MANIFEST).display())))?;
    fleet_durable::sync_dir(to).map_err(|e| err(format!("cannot sync {}: {e}", to.display())))?;
    Ok(Report { backend, bytes, files: copied.len(), took: start.elapsed() })
}

/// Reads `from`'s manifest.
///
/// # Errors
/// Missing, unreadable, or of another format.
pub fn manifest(from: &Path) -> Result<Manifest, ControllerError> {
    let path = from.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        err(format!("{} cannot be read ({e}): is {} a fleet-controller backup?", path.display(), from.display()))
    })?;
    let m: Manifest =
        toml::from_str(&text).map_err(|e| err(format!("{} is not a backup manifest: {e}", path.display())))?;
    if m.format != FORMAT {
        return Err(err(format!(
            "{} is backup format {}; this fleet-controller reads format {FORMAT}: restore with the version that made it",
            path.display(),
            m.format
        )));
    }
    Ok(m)
}

/// Restores the backup in `from` into the (empty) store and data directory
/// `cfg` names.
///
/// # Errors
/// A backend other than the backup's, a store or data directory not empty,
/// `pg_restore` missing or failing, TimescaleDB missing; each says what to do.
pub async fn restore(cfg: &ControllerConfig, from: &Path) -> Result<Report, ControllerError> {
    let start = Instant::now();
    let m = manifest(from)?;
    let target = if cfg.database_url.is_empty() { "sqlite" } else { "postgres" };
    let fits = match m.backend.as_str() {
        "sqlite" => target == "sqlite",
        "postgres" | "timescaledb" => target == "postgres",
        _ => false,
    };
    if !fits {
        return Err(err(format!(
            "{} holds a {} store, and the target is {target} ({}): restore a SQLite backup without \
             --database-url, a PostgreSQL or TimescaleDB one with it",
            from.display(),
            m.backend,
            if target == "sqlite" { "no --database-url" } else { "--database-url" }
        )));
    }
    files::no_security_files(&cfg.data_dir)?;
    let db = from.join(&m.database);
    if m.backend == "sqlite" {
        sqlite::restore(&db, &cfg.data_dir).await?;
    } else {
        postgres::restore(&cfg.database_url, &db, m.timescaledb_version.as_deref()).await?;
    }
    files::restore_security(from, &cfg.data_dir, &m.files)?;
    Ok(Report { backend: m.backend, bytes: files::size(&db), files: m.files.len(), took: start.elapsed() })
}
