//! Model versions the controller keeps and serves to nodes (docs/rollouts.md):
//! `data_dir/models/<name>/<version>/` holds a version's `model.toml` and its
//! files. A push lands in `models/.incoming/` first; the version appears by one
//! rename only after every file matched its size and sha256, so a reader never
//! sees half a version and a crash leaves only `.incoming/` debris (emptied at
//! start). Versions never change once kept.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use fleet_inference::ModelManifest;
use fleet_inference::registry::check_model_ref;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::ControllerError;

#[cfg(test)]
mod tests;

/// The manifest's file name in a version's folder.
pub const MANIFEST: &str = "model.toml";
/// Largest chunk a push may send and a fetch answers with.
pub const MAX_CHUNK: usize = 1024 * 1024;
/// Largest version (every file together).
pub const MAX_VERSION_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Most files a version may have (its manifest included).
pub const MAX_FILES: usize = 64;

const INCOMING: &str = ".incoming";

/// A version kept, as its manifest says, and when it was pushed.
#[derive(Debug, Clone)]
pub struct Stored {
    pub manifest: ModelManifest,
    pub pushed_unix_ms: i64,
}

/// The directory of model versions.
#[derive(Debug, Clone)]
pub struct Artifacts {
    root: PathBuf,
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> ControllerError {
    ControllerError::Io(format!("{what} {}: {e}", path.display()))
}

/// A file path inside a version's folder: plain components only.
fn inside(path: &str) -> bool {
    !path.is_empty() && path.len() <= 255 && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

impl Artifacts {
    /// Opens (creating) `data_dir/models` and empties what an interrupted push left.
    ///
    /// # Errors
    /// When the directory cannot be made.
    pub fn open(data_dir: &Path) -> Result<Self, ControllerError> {
        let root = data_dir.join("models");
        let incoming = root.join(INCOMING);
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming).map_err(|e| io("cannot empty", &incoming, &e))?;
        }
        fleet_durable::create_dir(&incoming).map_err(|e| io("cannot create", &incoming, &e))?;
        Ok(Self { root })
    }

    /// Where a new push is written until it is published.
    ///
    /// # Errors
    /// When the staging folder cannot be made.
    pub fn incoming(&self) -> Result<Incoming, ControllerError> {
        let parent = self.root.join(INCOMING);
        let dir = tempfile::Builder::new()
            .prefix("push-")
            .tempdir_in(&parent)
            .map_err(|e| io("cannot create", &parent, &e))?;
        Ok(Incoming { dir, files: BTreeMap::new(), total: 0 })
    }

    /// Checks a finished push and keeps it as a version.
    ///
    /// # Errors
    /// `Invalid` with what to fix (manifest, sizes, digests, files not
    /// listed), `AlreadyExists` when that version is kept already.
    pub async fn publish(&self, incoming: Incoming) -> Result<Stored, ControllerError> {
        let Incoming { dir, files, .. } = incoming;
        for (path, (file, _)) in files {
            file.sync_all().await.map_err(|e| io("cannot sync", &dir.path().join(&path), &e))?;
        }
        let staged = dir.path().to_owned();
        let model = tokio::task::spawn_blocking(move || fleet_inference::registry::load_model(&staged))
            .await
            .map_err(|e| ControllerError::Io(e.to_string()))?
            .map_err(|e| ControllerError::Invalid(format!("the pushed model was refused: {e}")))?;
        let m = model.manifest;
        if m.version.is_empty() {
            return Err(ControllerError::Invalid("model.toml: give a `version` to push it".into()));
        }
        if let Some(f) = m.files.iter().find(|f| f.size.is_none()) {
            return Err(ControllerError::Invalid(format!("model.toml: file {:?} has no `size`", f.path)));
        }
        check_nothing_unlisted(dir.path(), &m)?;
        let folder = self.root.join(&m.name);
        fleet_durable::create_dir(&folder).map_err(|e| io("cannot create", &folder, &e))?;
        let target = folder.join(&m.version);
        if target.exists() {
            return Err(ControllerError::AlreadyExists(format!(
                "model {} version {} is kept already; versions never change, push a new version",
                m.name, m.version
            )));
        }
        let staged = dir.keep();
        if let Err(e) = std::fs::rename(&staged, &target) {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(io("cannot keep the version in", &target, &e));
        }
        fleet_durable::sync_dir(&folder).map_err(|e| io("cannot sync", &folder, &e))?;
        tracing::info!(model = %m.name, version = %m.version, bytes = m.total_size(), "Model version kept.");
        self.get(&m.name, &m.version).await
    }

    /// One kept version.
    ///
    /// # Errors
    /// `NotFound` when the controller does not hold it.
    pub async fn get(&self, name: &str, version: &str) -> Result<Stored, ControllerError> {
        let not_found = || {
            ControllerError::NotFound(format!(
                "the controller holds no model {name:?} version {version:?}; push it first: fleetctl models push DIR \
                 (fleetctl models list shows what it holds)"
            ))
        };
        if check_model_ref(name, version).is_err() {
            return Err(not_found());
        }
        let dir = self.root.join(name).join(version);
        let text = match tokio::fs::read_to_string(dir.join(MANIFEST)).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io("cannot read", &dir, &e)),
        };
        let manifest =
            ModelManifest::parse(&text).map_err(|e| ControllerError::Io(format!("{}: {e}", dir.display())))?;
        let pushed =
            tokio::fs::metadata(&dir).await.and_then(|m| m.modified()).map_err(|e| io("cannot stat", &dir, &e))?;
        let pushed_unix_ms = pushed
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Ok(Stored { manifest, pushed_unix_ms })
    }

    /// Every kept version (of `name` only, when given), by name and then push time.
    ///
    /// # Errors
    /// When the directory cannot be read.
    pub async fn list(&self, name: Option<&str>) -> Result<Vec<Stored>, ControllerError> {
        let mut out = Vec::new();
        for model in subfolders(&self.root).await? {
            if model.starts_with('.') || name.is_some_and(|n| n != model) {
                continue;
            }
            for version in subfolders(&self.root.join(&model)).await? {
                match self.get(&model, &version).await {
                    Ok(s) => out.push(s),
                    Err(e) => tracing::warn!(model, version, error = %e, "A kept model version cannot be read."),
                }
            }
        }
        out.sort_by(|a, b| (&a.manifest.name, a.pushed_unix_ms).cmp(&(&b.manifest.name, b.pushed_unix_ms)));
        Ok(out)
    }

    /// Up to `max` bytes (at most [`MAX_CHUNK`]) of one file of a kept
    /// version from `offset` on, and the file's length.
    ///
    /// # Errors
    /// `NotFound` for an unknown version or a file its manifest does not list,
    /// `OutOfRange` for an offset past the end.
    pub async fn read(
        &self,
        name: &str,
        version: &str,
        path: &str,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<u8>, u64), ControllerError> {
        let stored = self.get(name, version).await?;
        if path != MANIFEST && !stored.manifest.files.iter().any(|f| f.path == path) {
            return Err(ControllerError::NotFound(format!("model {name} version {version} has no file {path:?}")));
        }
        let file = self.root.join(name).join(version).join(path);
        let mut f = tokio::fs::File::open(&file).await.map_err(|e| io("cannot open", &file, &e))?;
        let len = f.metadata().await.map_err(|e| io("cannot stat", &file, &e))?.len();
        if offset > len {
            return Err(ControllerError::OutOfRange(format!(
                "offset {offset} is past the end of {path} ({len} bytes)"
            )));
        }
        f.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| io("cannot seek", &file, &e))?;
        let want = usize::try_from(len - offset).unwrap_or(usize::MAX).min(max.min(MAX_CHUNK));
        let mut buf = vec![0; want];
        f.read_exact(&mut buf).await.map_err(|e| io("cannot read", &file, &e))?;
        Ok((buf, len))
    }
}

async fn subfolders(dir: &Path) -> Result<Vec<String>, ControllerError> {
    let mut out = Vec::new();
    let mut rd = tokio::fs::read_dir(dir).await.map_err(|e| io("cannot list", dir, &e))?;
    while let Some(e) = rd.next_entry().await.map_err(|e| io("cannot list", dir, &e))? {
        if e.file_type().await.is_ok_and(|t| t.is_dir())
            && let Some(n) = e.file_name().to_str()
        {
            out.push(n.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Refuses a push with a file its manifest does not list (it would be kept unverified).
fn check_nothing_unlisted(dir: &Path, m: &ModelManifest) -> Result<(), ControllerError> {
    for entry in walk(dir) {
        let rel = entry.strip_prefix(dir).unwrap_or(&entry).to_string_lossy().into_owned();
        if rel != MANIFEST && !m.files.iter().any(|f| f.path == rel) {
            return Err(ControllerError::Invalid(format!("{rel:?} was pushed but model.toml does not list it")));
        }
    }
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// A push being received: each file must arrive in order, from offset 0.
pub struct Incoming {
    dir: tempfile::TempDir,
    files: BTreeMap<String, (tokio::fs::File, u64)>,
    total: u64,
}

impl Incoming {
    /// Appends `data` at `offset` of `path`.
    ///
    /// # Errors
    /// `Invalid` for a path outside the folder, a gap or overlap, a chunk too
    /// large, too many files or bytes.
    pub async fn write(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), ControllerError> {
        let bad = |why: String| Err(ControllerError::Invalid(format!("push of {path:?}: {why}")));
        if !inside(path) {
            return bad("a path inside the model's folder".into());
        }
        if data.len() > MAX_CHUNK {
            return bad(format!("a chunk of {} bytes; at most {MAX_CHUNK}", data.len()));
        }
        self.total += data.len() as u64;
        if self.total > MAX_VERSION_BYTES {
            return bad(format!("more than {MAX_VERSION_BYTES} bytes in one version"));
        }
        if !self.files.contains_key(path) {
            if self.files.len() >= MAX_FILES {
                return bad(format!("more than {MAX_FILES} files in one version"));
            }
            let file = self.dir.path().join(path);
            if let Some(parent) = file.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| io("cannot create", parent, &e))?;
            }
            let f = tokio::fs::File::create_new(&file).await.map_err(|e| io("cannot create", &file, &e))?;
            self.files.insert(path.to_owned(), (f, 0));
        }
        let Some((f, len)) = self.files.get_mut(path) else { return bad("lost".into()) };
        if offset != *len {
            return bad(format!("offset {offset}, expected {len}: send each file in order"));
        }
        f.write_all(data).await.map_err(|e| io("cannot write", Path::new(path), &e))?;
        *len += data.len() as u64;
        Ok(())
    }
}
