//! Model versions the controller sends (docs/rollouts.md), kept in
//! `data_dir/models`:
//!
//! - `staging/<name>/<version>/`: a download in progress (`fetch`);
//! - `versions/<name>/<version>/`: whole, checked versions;
//! - `active/<name>`: a symlink to the version in force; the inference
//!   runtime reads `active/` as its model directory;
//! - `previous/<name>`: a symlink to the version it replaced, kept for a revert;
//! - `failed/<name>`: the version that failed here and why, so a restart
//!   does not fetch and fail it again (a newer version clears it).
//!
//! Switching is one rename of a new symlink over the old, so a power cut
//! leaves the old version or the new one in force, never neither. At most the
//! active and the previous version of each model are kept.

pub mod fetch;
pub mod update;

use std::path::{Path, PathBuf};

/// The node's model versions.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl ModelStore {
    /// Opens (creating) `data_dir/models`.
    ///
    /// # Errors
    /// When the folders cannot be made.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let root = data_dir.join("models");
        for sub in ["staging", "versions", "active", "previous", "failed"] {
            fleet_durable::create_dir(&root.join(sub)).map_err(|e| io("cannot create", &root.join(sub), &e))?;
        }
        Ok(Self { root })
    }

    /// The folder the runtime reads: one entry per model in force.
    #[must_use]
    pub fn active_dir(&self) -> PathBuf {
        self.root.join("active")
    }

    /// Where downloads are staged.
    #[must_use]
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Bytes the kept versions take (the disk budget's use).
    #[must_use]
    pub fn used(&self) -> u64 {
        du(&self.root.join("versions"))
    }

    /// Bytes of `name` `version` on the node: kept, or staged so far.
    #[must_use]
    pub fn bytes_of(&self, name: &str, version: &str) -> u64 {
        let kept = self.root.join("versions").join(name).join(version);
        if kept.is_dir() { du(&kept) } else { du(&self.staging().join(name).join(version)) }
    }

    /// Whether `name` `version` is kept whole.
    #[must_use]
    pub fn holds(&self, name: &str, version: &str) -> bool {
        self.root.join("versions").join(name).join(version).join("model.toml").is_file()
    }

    /// The version of `name` in force.
    #[must_use]
    pub fn current(&self, name: &str) -> Option<String> {
        link_version(&self.root.join("active").join(name))
    }

    /// The version `name`'s current one replaced.
    #[must_use]
    pub fn previous(&self, name: &str) -> Option<String> {
        link_version(&self.root.join("previous").join(name))
    }

    /// Every model in force and its version.
    #[must_use]
    pub fn in_force(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = std::fs::read_dir(self.active_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                (!name.starts_with('.')).then(|| Some((name.clone(), self.current(&name)?)))?
            })
            .collect();
        out.sort();
        out
    }

    /// Moves a downloaded version from staging into the kept versions.
    ///
    /// # Errors
    /// Disk errors.
    pub fn keep(&self, name: &str, version: &str) -> std::io::Result<()> {
        let from = self.staging().join(name).join(version);
        let folder = self.root.join("versions").join(name);
        fleet_durable::create_dir(&folder).map_err(|e| io("cannot create", &folder, &e))?;
        let to = folder.join(version);
        if to.exists() {
            std::fs::remove_dir_all(&to).map_err(|e| io("cannot replace", &to, &e))?;
        }
        std::fs::rename(&from, &to).map_err(|e| io("cannot keep", &to, &e))?;
        fleet_durable::sync_dir(&folder)
    }

    /// Puts `version` of `name` in force; the one it replaces becomes the
    /// previous, and older versions are deleted.
    ///
    /// # Errors
    /// The version is not kept, or disk errors.
    pub fn activate(&self, name: &str, version: &str) -> std::io::Result<()> {
        if !self.holds(name, version) {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{name} {version} is not kept")));
        }
        let current = self.current(name);
        if current.as_deref() == Some(version) {
            return Ok(());
        }
        if let Some(cur) = &current {
            self.point(&self.root.join("previous"), name, cur)?;
        }
        self.point(&self.root.join("active"), name, version)?;
        self.prune(name);
        Ok(())
    }

    /// Puts the previous version of `name` back in force and deletes the one
    /// that failed; without a previous one, `name` is taken out of force.
    /// Returns the version now in force.
    ///
    /// # Errors
    /// Disk errors.
    pub fn revert(&self, name: &str) -> std::io::Result<Option<String>> {
        let failed = self.current(name);
        let back = self.previous(name);
        let active = self.root.join("active");
        match &back {
            Some(v) => self.point(&active, name, v)?,
            None => {
                let _ = std::fs::remove_file(active.join(name));
                fleet_durable::sync_dir(&active)?;
            }
        }
        let previous = self.root.join("previous");
        let _ = std::fs::remove_file(previous.join(name));
        fleet_durable::sync_dir(&previous)?;
        if let Some(f) = failed.filter(|f| Some(f) != back.as_ref()) {
            let _ = std::fs::remove_dir_all(self.root.join("versions").join(name).join(f));
        }
        Ok(back)
    }

    /// Remembers that `version` of `name` failed here, and why.
    ///
    /// # Errors
    /// Disk errors.
    pub fn mark_failed(&self, name: &str, version: &str, reason: &str) -> std::io::Result<()> {
        let text = format!("{version}\n{reason}");
        fleet_durable::replace(&self.root.join("failed").join(name), text.as_bytes(), 0o644)
    }

    /// The version of `name` that failed here last, and why.
    #[must_use]
    pub fn failed(&self, name: &str) -> Option<(String, String)> {
        let text = std::fs::read_to_string(self.root.join("failed").join(name)).ok()?;
        let (version, reason) = text.split_once('\n')?;
        Some((version.to_owned(), reason.to_owned()))
    }

    /// `dir/name` -> `../versions/name/version`, by rename.
    fn point(&self, dir: &Path, name: &str, version: &str) -> std::io::Result<()> {
        let link = dir.join(name);
        let tmp = dir.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("../versions").join(name).join(version), &tmp)
            .map_err(|e| io("cannot link", &tmp, &e))?;
        std::fs::rename(&tmp, &link).map_err(|e| io("cannot switch", &link, &e))?;
        fleet_durable::sync_dir(dir)
    }

    /// Deletes the versions of `name` neither in force nor previous.
    fn prune(&self, name: &str) {
        let keep = [self.current(name), self.previous(name)];
        let folder = self.root.join("versions").join(name);
        for e in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let v = e.file_name().to_string_lossy().into_owned();
            if !keep.iter().flatten().any(|k| *k == v) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn link_version(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    target.file_name()?.to_str().map(str::to_owned)
}

fn du(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| du(&e.path())).sum(),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(store: &ModelStore, name: &str, version: &str, body: &[u8]) {
        let dir = store.staging().join(name).join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.toml"), "x").unwrap();
        std::fs::write(dir.join("w.bin"), body).unwrap();
        store.keep(name, version).unwrap();
    }

    #[test]
    fn activate_keeps_the_previous_and_revert_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(dir.path()).unwrap();
        stage(&s, "m", "1", b"one");
        s.activate("m", "1").unwrap();
        assert_eq!((s.current("m"), s.previous("m")), (Some("1".into()), None));
        assert!(s.active_dir().join("m/w.bin").is_file(), "the runtime sees the files through the link");
        stage(&s, "m", "2", b"two");
        s.activate("m", "2").unwrap();
        assert_eq!((s.current("m"), s.previous("m")), (Some("2".into()), Some("1".into())));
        assert_eq!(s.in_force(), [("m".to_owned(), "2".to_owned())]);
        stage(&s, "m", "3", b"three");
        s.activate("m", "3").unwrap();
        assert!(!s.holds("m", "1"), "only the active and the previous are kept");
        assert_eq!(s.used(), (1 + 3) + (1 + 5), "versions 2 and 3, manifest and weights");
        assert_eq!(s.revert("m").unwrap(), Some("2".into()));
        assert_eq!((s.current("m"), s.previous("m")), (Some("2".into()), None));
        assert!(!s.holds("m", "3"), "the failed version is deleted");
        assert_eq!(s.revert("m").unwrap(), None);
        assert!(s.current("m").is_none());
        assert!(s.activate("m", "9").is_err());
        assert!(s.failed("m").is_none());
        s.mark_failed("m", "3", "self-test: case 1 is \"x\"").unwrap();
        assert_eq!(s.failed("m"), Some(("3".into(), "self-test: case 1 is \"x\"".into())));
    }
}
