//! Files the node must find whole after a power cut (its keys and enrollment,
//! the boot counter, the desired state, the spool's cursor): written to a
//! temporary file beside the real one, fsynced, renamed over it, and the
//! directory fsynced so the rename itself is on disk. A cut at any moment
//! leaves the old file or the new one, never a part (tests/powercut_agent.rs).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_with_the_mode_and_leaves_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot_no");
        replace(&p, b"1\n", 0o600).unwrap();
        replace(&p, b"2\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2\n");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
