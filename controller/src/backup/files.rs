//! The data directory's security files in a backup: the CA and TLS files
//! (`tls/`, the controller's signing keys among them), the first admin token
//! and the WireGuard key. Copied with their modes, durably.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::err;
use crate::ControllerError;

/// What of the data directory a backup keeps (files, or folders of files).
const SECURITY: [&str; 3] = ["tls", "admin.token", "wg.key"];

/// Makes `dir` (mode 0700: it will hold the CA's key) or checks it is empty.
pub(super) fn empty_dir(dir: &Path) -> Result<(), ControllerError> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).map_err(|e| err(format!("cannot read --to {}: {e}", dir.display())))?;
        if entries.next().is_some() {
            return Err(err(format!(
                "--to {} is not empty: give a new directory for each backup (a dated name, say)",
                dir.display()
            )));
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(format!("cannot create --to {}: {e}", dir.display())))
}

/// Every file under `rel` in `root` (a file, or a folder walked), relative paths.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let path = root.join(rel);
    if path.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&path)?.collect::<Result<_, _>>()?;
        names.sort_by_key(std::fs::DirEntry::file_name);
        for e in names {
            walk(root, &rel.join(e.file_name()), out)?;
        }
    } else if path.is_file() && path.extension().is_none_or(|x| x != "tmp") {
        out.push(rel.to_owned());
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(from)?;
    let mode = std::fs::metadata(from)?.permissions().mode() & 0o777;
    if let Some(dir) = to.parent() {
        fleet_durable::create_dir(dir)?;
    }
    fleet_durable::replace(to, &bytes, mode)
}

fn security_files(data_dir: &Path) -> Result<Vec<PathBuf>, ControllerError> {
    let mut found = Vec::new();
    for name in SECURITY {
        walk(data_dir, Path::new(name), &mut found)
            .map_err(|e| err(format!("cannot read {}: {e}", data_dir.join(name).display())))?;
    }
    Ok(found)
}

/// Copies the security files of `data_dir` into `to`; their relative paths.
pub(super) fn copy_security(data_dir: &Path, to: &Path) -> Result<Vec<String>, ControllerError> {
    let mut names = Vec::new();
    for rel in security_files(data_dir)? {
        copy(&data_dir.join(&rel), &to.join(&rel))
            .map_err(|e| err(format!("cannot copy {} into the backup: {e}", data_dir.join(&rel).display())))?;
        names.push(rel.to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Refuses a data directory that has security files of its own (a restore
/// never replaces a CA or key in use).
pub(super) fn no_security_files(data_dir: &Path) -> Result<(), ControllerError> {
    if let Some(f) = security_files(data_dir)?.first() {
        return Err(err(format!(
            "--data-dir {} already has {}: restore into a new data directory (it receives the backup's CA, keys \
             and admin token)",
            data_dir.display(),
            f.display()
        )));
    }
    Ok(())
}

/// Copies `files` from the backup `from` into `data_dir`.
pub(super) fn restore_security(from: &Path, data_dir: &Path, files: &[String]) -> Result<(), ControllerError> {
    for rel in files {
        let rel = Path::new(rel);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(err(format!("the manifest names {}, outside the data directory: not restored", rel.display())));
        }
        copy(&from.join(rel), &data_dir.join(rel)).map_err(|e| {
            err(format!("cannot restore {} into {}: {e}", from.join(rel).display(), data_dir.display()))
        })?;
    }
    Ok(())
}

/// Size of `path` in bytes (0 when unreadable: only reported).
pub(super) fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_files_keep_their_modes_and_a_second_restore_is_refused() {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join("tls")).unwrap();
        fleet_durable::write_private(&data.path().join("tls/ca.key"), b"key").unwrap();
        fleet_durable::write_public(&data.path().join("tls/ca.pem"), b"cert").unwrap();
        fleet_durable::write_private(&data.path().join("admin.token"), b"tok").unwrap();
        std::fs::write(data.path().join("fleet.db"), b"not copied").unwrap();
        let to = data.path().join("backup");
        empty_dir(&to).unwrap();
        let names = copy_security(data.path(), &to).unwrap();
        assert_eq!(names, ["tls/ca.key", "tls/ca.pem", "admin.token"]);
        assert!(empty_dir(&to).is_err(), "a used backup directory is refused");
        let fresh = tempfile::tempdir().unwrap();
        no_security_files(fresh.path()).unwrap();
        restore_security(&to, fresh.path(), &names).unwrap();
        let mode = std::fs::metadata(fresh.path().join("tls/ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(fresh.path().join("tls/ca.pem")).unwrap(), b"cert");
        assert!(no_security_files(fresh.path()).is_err(), "no restore over a CA in use");
        assert!(restore_security(&to, fresh.path(), &["../x".into()]).is_err());
    }
}
