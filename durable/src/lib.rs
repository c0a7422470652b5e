//! Files both ends must find whole after a power cut (the node's keys,
//! enrollment, boot counter, desired state and spool cursor; the controller's
//! CA, keys and admin token): written to a temporary file beside the real one
//! with its final mode, fsynced, renamed over it, and the directory fsynced so
//! the rename itself is on disk. A cut at any moment leaves the old file or the
//! new one, never a part (tests/powercut_agent.rs, tests/powercut_controller.rs).
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `contents`, created with `mode` (never briefly
/// readable by others when the mode says so), durably.
///
/// # Errors
/// I/O errors.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Writes `contents` to `path` readable only by the owner (a key, a token), durably.
///
/// # Errors
/// I/O errors.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    replace(path, contents, 0o600)
}

/// Writes `contents` to `path` readable by everyone (a certificate), durably.
///
/// # Errors
/// I/O errors.
pub fn write_public(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    replace(path, contents, 0o644)
}

/// Makes the entry of `path` in its directory durable (after a create, rename or delete).
///
/// # Errors
/// I/O errors.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Makes a directory's entries durable.
///
/// # Errors
/// I/O errors.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` (and its parents) and makes the new entry durable.
///
/// # Errors
/// I/O errors.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    sync_parent(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replaces_whole_with_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot_no");
        replace(&p, b"1\n", 0o600).unwrap();
        replace(&p, b"2\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2\n");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_and_public_files_get_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("b.pem"));
        write_private(&a, b"secret").unwrap();
        write_public(&b, b"cert").unwrap();
        write_public(&b, b"cert 2").unwrap();
        assert_eq!((mode(&a), mode(&b)), (0o600, 0o644));
        assert_eq!(std::fs::read(&b).unwrap(), b"cert 2");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file left");
    }

    #[test]
    fn a_leftover_temporary_file_from_a_cut_does_not_block_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("identity.toml");
        std::fs::write(dir.path().join("identity.tmp"), b"half").unwrap();
        write_private(&p, b"whole").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
