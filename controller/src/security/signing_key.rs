//! The controller's Ed25519 signing key (docs/security.md, "Both
//! directions"): made at first start, kept mode 0600 beside the CA as
//! `tls/signing-<generation>.key` (the 32-byte seed, base64). A rotation
//! makes the next generation with a marker `tls/signing-<generation>.pending`
//! beside it: the marked key is handed to nodes but does not sign yet; the
//! rotation finishes by removing the marker. The highest generation without
//! a marker signs. Replicas of one fleet share the folder, as they share the
//! CA, and each reads it again every few seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::SigningKey;

use crate::ControllerError;
use crate::link::seal::Keys;

/// The folder the key lives in, under the data directory (the CA's).
const DIR: &str = "tls";

fn file(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("signing-{generation}.key"))
}

/// The generations whose key files are in `dir`.
fn generations(dir: &Path) -> Result<Vec<u64>, ControllerError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ControllerError::Io(format!("cannot read {}: {e}", dir.display()))),
    };
    let mut found: Vec<u64> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("signing-")?.strip_suffix(".key")?.parse().ok()
        })
        .collect();
    found.sort_unstable();
    Ok(found)
}

fn read(path: &Path) -> Result<SigningKey, ControllerError> {
    let damaged = |why: String| {
        ControllerError::Config(format!(
            "{} is not a signing key ({why}); restore it from a backup (nodes check the controller's messages \
             with it), or move it away and enroll every node again",
            path.display()
        ))
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ControllerError::Io(format!("cannot read {}: {e}", path.display())))?;
    let seed = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|e| damaged(e.to_string()))?;
    let seed: [u8; 32] = seed.try_into().map_err(|s: Vec<u8>| damaged(format!("{} bytes, not 32", s.len())))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn marker(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("signing-{generation}.pending"))
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> ControllerError {
    ControllerError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// The kept keys in `dir`, and which signs; `None` when there is none.
fn load(dir: &Path) -> Result<Option<Keys>, ControllerError> {
    let gens = generations(dir)?;
    let mut by_generation = BTreeMap::new();
    for &g in &gens {
        by_generation.insert(g, read(&file(dir, g))?);
    }
    // A marker left without its key (a cut during `rotate`) marks nothing.
    let signing = gens.iter().rev().find(|&&g| !marker(dir, g).exists()).or(gens.first());
    Ok(signing.map(|&signing| Keys { by_generation, signing }))
}

fn make(dir: &Path, generation: u64) -> Result<(), ControllerError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| ControllerError::Io(format!("the system's random source failed: {e}")))?;
    let path = file(dir, generation);
    let text = format!("{}\n", base64::engine::general_purpose::STANDARD.encode(seed));
    fleet_durable::write_private(&path, text.as_bytes()).map_err(|e| io("write", &path, &e))
}

/// The controller's keys from `data_dir`, the first (generation 1) made
/// when there is none.
///
/// # Errors
/// A key file that cannot be read, written or decoded.
pub fn load_or_make(data_dir: &Path) -> Result<Keys, ControllerError> {
    let dir = data_dir.join(DIR);
    if let Some(keys) = load(&dir)? {
        return Ok(keys);
    }
    fleet_durable::create_dir(&dir).map_err(|e| io("create", &dir, &e))?;
    make(&dir, 1)?;
    tracing::info!(path = %file(&dir, 1).display(), "Controller signing key made (mode 0600); nodes receive its public half when they enroll.");
    load(&dir)?.ok_or_else(|| ControllerError::Io(format!("{} vanished after it was written", dir.display())))
}

/// The keys in `data_dir` as they are now (another replica may have rotated).
///
/// # Errors
/// A key file that cannot be read or decoded, or none at all.
pub fn reload(data_dir: &Path) -> Result<Keys, ControllerError> {
    let dir = data_dir.join(DIR);
    load(&dir)?.ok_or_else(|| ControllerError::Io(format!("no signing key in {} any more", dir.display())))
}

/// Opens a rotation: the next generation's key, marked pending (the marker
/// first, so a cut never leaves an unannounced key that signs).
///
/// # Errors
/// `FailedPrecondition`-worthy `Config` error when a rotation is open; I/O errors.
pub fn rotate(data_dir: &Path) -> Result<Keys, ControllerError> {
    let keys = reload(data_dir)?;
    let newest = keys.newest();
    if newest > keys.signing {
        return Err(ControllerError::Config(format!(
            "a rotation to generation {newest} is open: wait until every node holds it, or finish it now \
             (`fleetctl controller-key finish --force`)"
        )));
    }
    let dir = data_dir.join(DIR);
    let next = newest + 1;
    fleet_durable::write_private(&marker(&dir, next), b"").map_err(|e| io("write", &marker(&dir, next), &e))?;
    make(&dir, next)?;
    tracing::info!(
        generation = next,
        "Controller signing key rotation opened; nodes receive the new key signed with the old."
    );
    reload(data_dir)
}

/// Finishes the open rotation: the newest key signs from now on.
///
/// # Errors
/// I/O errors.
pub fn finish(data_dir: &Path, generation: u64) -> Result<Keys, ControllerError> {
    let dir = data_dir.join(DIR);
    let m = marker(&dir, generation);
    match std::fs::remove_file(&m) {
        Ok(()) => fleet_durable::sync_dir(&dir).map_err(|e| io("sync", &dir, &e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", &m, &e)),
    }
    reload(data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_make(dir.path()).unwrap();
        let b = load_or_make(dir.path()).unwrap();
        assert_eq!((a.signing, b.signing, a.newest()), (1, 1, 1));
        assert_eq!(a.by_generation[&1].to_bytes(), b.by_generation[&1].to_bytes());
        let path = dir.path().join("tls/signing-1.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("tls/signing-2.key"), "AAAA\n").unwrap();
        let e = load_or_make(dir.path()).err().unwrap().to_string();
        assert!(e.contains("signing-2.key is not a signing key") && e.contains("restore it"), "{e}");
    }

    #[test]
    fn a_rotation_opens_one_at_a_time_and_the_new_key_signs_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        load_or_make(dir.path()).unwrap();
        let open = rotate(dir.path()).unwrap();
        assert_eq!((open.signing, open.newest()), (1, 2));
        let e = rotate(dir.path()).err().unwrap().to_string();
        assert!(e.contains("rotation to generation 2 is open") && e.contains("finish"), "{e}");
        assert_eq!(load_or_make(dir.path()).unwrap().signing, 1, "a restart keeps the old key signing");
        let done = finish(dir.path(), 2).unwrap();
        assert_eq!((done.signing, done.newest(), done.by_generation.len()), (2, 2, 2));
        assert_eq!(rotate(dir.path()).unwrap().newest(), 3);
    }

    #[test]
    fn a_marker_left_without_its_key_marks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        load_or_make(dir.path()).unwrap();
        std::fs::write(dir.path().join("tls/signing-2.pending"), "").unwrap();
        let keys = reload(dir.path()).unwrap();
        assert_eq!((keys.signing, keys.newest()), (1, 1));
        assert_eq!(rotate(dir.path()).unwrap().newest(), 2);
    }
}
