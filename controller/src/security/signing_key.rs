//! The controller's Ed25519 signing key (docs/security.md, "Both
//! directions"): made at first start, kept mode 0600 beside the CA as
//! `tls/signing-<generation>.key` (the 32-byte seed, base64). The highest
//! generation present signs. Replicas of one fleet share the file, as they
//! share the CA.

use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::SigningKey;

use crate::ControllerError;
use crate::link::seal::Sealer;

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

/// The controller's current signing key from `data_dir`, made (generation 1)
/// when there is none.
///
/// # Errors
/// A key file that cannot be read, written or decoded.
pub fn load_or_make(data_dir: &Path) -> Result<Sealer, ControllerError> {
    let dir = data_dir.join(DIR);
    if let Some(&generation) = generations(&dir)?.last() {
        return Ok(Sealer::new(read(&file(&dir, generation))?, generation));
    }
    fleet_durable::create_dir(&dir)
        .map_err(|e| ControllerError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| ControllerError::Io(format!("the system's random source failed: {e}")))?;
    let path = file(&dir, 1);
    let text = format!("{}\n", base64::engine::general_purpose::STANDARD.encode(seed));
    fleet_durable::write_private(&path, text.as_bytes())
        .map_err(|e| ControllerError::Io(format!("cannot write {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "Controller signing key made (mode 0600); nodes receive its public half when they enroll.");
    Ok(Sealer::new(SigningKey::from_bytes(&seed), 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_make(dir.path()).unwrap();
        let b = load_or_make(dir.path()).unwrap();
        assert_eq!((a.public_key(), a.generation()), (b.public_key(), 1));
        let path = dir.path().join("tls/signing-1.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("tls/signing-2.key"), "AAAA\n").unwrap();
        let e = load_or_make(dir.path()).unwrap_err().to_string();
        assert!(e.contains("signing-2.key is not a signing key") && e.contains("restore it"), "{e}");
    }
}
