//! The controller's own files (the CA and its key, the admin token, the
//! WireGuard key), written so that a power cut leaves either the old file or
//! the whole new one: a temporary file in the same directory, fsynced, renamed
//! over the old one, then the directory fsynced so the rename itself survives.

use std::io::Write;
use std::path::Path;

/// Writes `contents` to `path` readable only by the owner, durably.
///
/// # Errors
/// I/O errors.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_durably(path, contents, 0o600)
}

/// Writes `contents` to `path` readable by everyone (a certificate), durably.
///
/// # Errors
/// I/O errors.
pub fn write_public(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_durably(path, contents, 0o644)
}

fn write_durably(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Makes a directory's entries (a file created, renamed or removed in it) durable.
///
/// # Errors
/// I/O errors.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` (and its parents) and makes the new entries durable.
///
/// # Errors
/// I/O errors.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_public_files_get_their_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("b.pem"));
        write_private(&a, b"secret").unwrap();
        write_public(&b, b"cert").unwrap();
        write_public(&b, b"cert 2").unwrap();
        assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&b).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read(&b).unwrap(), b"cert 2");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file left");
    }
}
