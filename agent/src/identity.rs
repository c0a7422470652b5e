//! The node's own keys (docs/security.md, enrollment): a WireGuard key pair
//! and an Ed25519 signing key, generated on the device and kept in its config
//! directory, readable by the agent's user only. Private keys never leave the
//! node and are never logged.
//!
//! Files: `wg.key` (base64, as `wg genkey` writes it) and `signing.key` (the
//! 32-byte Ed25519 seed, base64), both mode 0600, written atomically.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::SigningKey;
use wireguard_control::Key;

/// The WireGuard private key's file name.
pub const WG_KEY_FILE: &str = "wg.key";
/// The signing key's file name.
pub const SIGNING_KEY_FILE: &str = "signing.key";

/// Why the node's keys could not be made or read; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0} already exists: this node has keys; enroll again with --force to replace them")]
    Exists(PathBuf),
    #[error("{0} is missing: run `fleet-agent enroll` first")]
    Missing(PathBuf),
    #[error("{path} is readable by others (mode {mode:o}): run `chmod 600 {path}`")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is damaged ({why}): enroll again with --force")]
    Damaged { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the system's random source failed: {0}")]
    Random(String),
}

/// The node's keys.
pub struct Identity {
    wg: Key,
    signing: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public halves only.
        f.debug_struct("Identity")
            .field("wg_public", &self.wg_public_base64())
            .field("signing_public", &self.signing_public_base64())
            .finish()
    }
}

impl Identity {
    /// Makes new keys in `dir` (created if needed). Refuses to replace keys
    /// that are there unless `force`.
    ///
    /// # Errors
    /// Keys already there, the random source, or the file system.
    pub fn create(dir: &Path, force: bool) -> Result<Self, IdentityError> {
        let (wg_path, sign_path) = (dir.join(WG_KEY_FILE), dir.join(SIGNING_KEY_FILE));
        if !force {
            for p in [&wg_path, &sign_path] {
                if p.exists() {
                    return Err(IdentityError::Exists(p.clone()));
                }
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io { path: dir.into(), source })?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        let identity = Self { wg: Key::generate_private(), signing: SigningKey::from_bytes(&seed) };
        write_secret(&wg_path, &identity.wg.to_base64())?;
        write_secret(&sign_path, &base64::engine::general_purpose::STANDARD.encode(seed))?;
        Ok(identity)
    }

    /// Reads the keys from `dir`, refusing key files others can read.
    ///
    /// # Errors
    /// Missing, too open or damaged files.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let wg_path = dir.join(WG_KEY_FILE);
        let wg_text = read_secret(&wg_path)?;
        let wg = Key::from_base64(wg_text.trim())
            .map_err(|_| IdentityError::Damaged { path: wg_path, why: "not a base64 WireGuard key".into() })?;
        let sign_path = dir.join(SIGNING_KEY_FILE);
        let seed = base64::engine::general_purpose::STANDARD
            .decode(read_secret(&sign_path)?.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| IdentityError::Damaged { path: sign_path, why: "not 32 base64 bytes".into() })?;
        Ok(Self { wg, signing: SigningKey::from_bytes(&seed) })
    }

    /// The WireGuard public key, base64 (what `Enroll` sends).
    #[must_use]
    pub fn wg_public_base64(&self) -> String {
        self.wg.get_public().to_base64()
    }

    /// The WireGuard private key, for configuring the interface.
    #[must_use]
    pub fn wg_private(&self) -> &Key {
        &self.wg
    }

    /// The Ed25519 public key, base64 (what `Enroll` sends).
    #[must_use]
    pub fn signing_public_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.signing.verifying_key().as_bytes())
    }

    /// The key that signs every message this node sends.
    #[must_use]
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

/// The next WireGuard key during a rotation: `<generation> <base64 key>`.
pub const WG_NEXT_FILE: &str = "wg.next";

/// Keeps the next WireGuard key of rotation `generation` (mode 0600).
///
/// # Errors
/// The file system.
pub fn save_next_wg(dir: &Path, generation: u64, key: &Key) -> Result<(), IdentityError> {
    write_secret(&dir.join(WG_NEXT_FILE), &format!("{generation} {}", key.to_base64()))
}

/// The next WireGuard key, if a rotation is under way.
#[must_use]
pub fn load_next_wg(dir: &Path) -> Option<(u64, Key)> {
    let text = read_secret(&dir.join(WG_NEXT_FILE)).ok()?;
    let (g, k) = text.trim().split_once(' ')?;
    Some((g.parse().ok()?, Key::from_base64(k).ok()?))
}

/// Makes the next key the key (the rotation is done on this side).
///
/// # Errors
/// The file system.
pub fn promote_next_wg(dir: &Path) -> Result<(), IdentityError> {
    let Some((_, key)) = load_next_wg(dir) else { return Ok(()) };
    write_secret(&dir.join(WG_KEY_FILE), &key.to_base64())?;
    std::fs::remove_file(dir.join(WG_NEXT_FILE))
        .map_err(|source| IdentityError::Io { path: dir.join(WG_NEXT_FILE), source })
}

/// Writes a secret file mode 0600 from the start (never briefly readable),
/// durably (`fleet_durable::replace`).
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), IdentityError> {
    fleet_durable::replace(path, format!("{text}\n").as_bytes(), 0o600)
        .map_err(|source| IdentityError::Io { path: path.into(), source })
}

pub(crate) fn read_secret(path: &Path) -> Result<String, IdentityError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => IdentityError::Missing(path.into()),
        _ => IdentityError::Io { path: path.into(), source: e },
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::TooOpen { path: path.into(), mode });
    }
    std::fs::read_to_string(path).map_err(|source| IdentityError::Io { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let made = Identity::create(dir.path(), false).unwrap();
        for f in [WG_KEY_FILE, SIGNING_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let read = Identity::load(dir.path()).unwrap();
        assert_eq!(read.wg_public_base64(), made.wg_public_base64());
        assert_eq!(read.signing_public_base64(), made.signing_public_base64());
        assert_eq!(made.wg_public_base64().len(), 44);
        // Debug shows public halves only.
        let dbg = format!("{made:?}");
        assert!(!dbg.contains(&made.wg_private().to_base64()), "{dbg}");
        // A signature made with the loaded key checks with the made one's public key.
        let m = fleet_proto::signing::sign(
            read.signing_key(),
            "pi-a",
            fleet_proto::v1::MessageKind::Status,
            1,
            1,
            b"x".to_vec(),
        );
        assert!(fleet_proto::signing::verify(&made.signing_key().verifying_key(), &m).is_ok());
    }

    #[test]
    fn existing_keys_are_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::create(dir.path(), false).unwrap();
        let err = Identity::create(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("already exists") && err.contains("--force"), "{err}");
        assert_eq!(Identity::load(dir.path()).unwrap().wg_public_base64(), first.wg_public_base64());
        let second = Identity::create(dir.path(), true).unwrap();
        assert_ne!(second.wg_public_base64(), first.wg_public_base64());
    }

    #[test]
    fn missing_open_or_damaged_key_files_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing") && err.contains("fleet-agent enroll"), "{err}");
        Identity::create(dir.path(), false).unwrap();
        let wg = dir.path().join(WG_KEY_FILE);
        std::fs::set_permissions(&wg, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("644"), "{err}");
        std::fs::set_permissions(&wg, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join(SIGNING_KEY_FILE), "short\n").unwrap();
        std::fs::set_permissions(dir.path().join(SIGNING_KEY_FILE), std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("damaged") && !err.contains("short"), "{err}");
    }
}
