//! Downloads one model version from the controller's `ArtifactService`
//! (docs/rollouts.md) into a staging folder: the manifest first, then each
//! file appended to `<file>.part` from the bytes already on disk, so a cut
//! download resumes from its last byte and never asks for the first half
//! again. The space the version still needs is checked against the disk
//! budget before a byte is asked for; each file's sha256 is checked before it
//! loses its `.part`; a damaged part is deleted and fetched whole next time.
//! A download stops when asked (the node went on battery, the agent stops);
//! what arrived is kept.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use fleet_inference::ModelManifest;
use fleet_proto::v1::FetchModelFileRequest;
use fleet_proto::v1::artifact_service_client::ArtifactServiceClient;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Why a version was not downloaded; each says what happens or what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    #[error("the controller refused the download: {0}")]
    Refused(String),
    #[error("the download broke off: {0}; it resumes from the bytes on disk")]
    Cut(String),
    #[error(
        "model {name} {version} needs {need} more bytes, the disk budget has {free} left of {budget}; \
         raise [models] disk_budget or remove unused versions"
    )]
    Budget { name: String, version: String, need: u64, free: u64, budget: u64 },
    #[error("{file}: sha256 {actual}, the manifest says {expected}; the part was deleted")]
    Checksum { file: String, expected: String, actual: String },
    #[error("the manifest of {0} is not usable: {1}")]
    Manifest(String, String),
    #[error("{0}")]
    Disk(String),
}

/// Who downloads: the node's id and key, and the channel to the controller.
#[derive(Clone)]
pub struct Source {
    pub node_id: String,
    pub key: SigningKey,
    pub client: ArtifactServiceClient<Channel>,
    /// Cancelled: the download stops, keeping what arrived.
    pub stop: CancellationToken,
}

impl Source {
    fn request(&self, name: &str, version: &str, path: &str, offset: u64) -> FetchModelFileRequest {
        let mut r = FetchModelFileRequest {
            node_id: self.node_id.clone(),
            name: name.to_owned(),
            version: version.to_owned(),
            path: path.to_owned(),
            offset,
            signed_at_unix_ms: fleet_proto::now_unix_ms(),
            signature: Vec::new(),
        };
        fleet_proto::fetch::sign_fetch(&self.key, &mut r);
        r
    }

    /// Appends `path` of the version to `dest` from `dest`'s length on;
    /// returns the bytes received.
    async fn append(&mut self, name: &str, version: &str, path: &str, dest: &Path) -> Result<u64, FetchError> {
        let disk = |e: std::io::Error| FetchError::Disk(format!("{}: {e}", dest.display()));
        let mut have = tokio::fs::metadata(dest).await.map_or(0, |m| m.len());
        let mut f = tokio::fs::OpenOptions::new().create(true).append(true).open(dest).await.map_err(disk)?;
        let req = self.request(name, version, path, have);
        let mut stream = self.client.fetch_model_file(req).await.map_err(status)?.into_inner();
        let mut received = 0;
        let result = loop {
            let next = tokio::select! {
                m = stream.message() => m,
                () = self.stop.cancelled() => break Err(FetchError::Cut("stopped on the node's request".into())),
            };
            match next {
                Ok(Some(chunk)) if chunk.offset == have => {
                    f.write_all(&chunk.data).await.map_err(disk)?;
                    have += chunk.data.len() as u64;
                    received += chunk.data.len() as u64;
                }
                Ok(Some(chunk)) => break Err(FetchError::Cut(format!("a chunk at {}, expected {have}", chunk.offset))),
                Ok(None) => break Ok(received),
                Err(s) => break Err(status(s)),
            }
        };
        // What arrived is kept either way: the next attempt starts after it.
        f.sync_all().await.map_err(disk)?;
        result
    }
}

fn status(s: tonic::Status) -> FetchError {
    match s.code() {
        tonic::Code::PermissionDenied
        | tonic::Code::NotFound
        | tonic::Code::OutOfRange
        | tonic::Code::InvalidArgument => FetchError::Refused(s.message().to_owned()),
        _ => FetchError::Cut(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// What a download did.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub manifest: ModelManifest,
    /// The version's folder, complete and checked.
    pub dir: PathBuf,
    /// Bytes received by this call (what a resume saved is not among them).
    pub received: u64,
}

/// Downloads `name` `version` into `staging/<name>/<version>`; `used` bytes
/// of `budget` are taken by versions already on the node (this one's staged
/// part not counted there).
///
/// # Errors
/// As [`FetchError`]; what was received is kept for the next attempt.
pub async fn fetch_version(
    src: &mut Source,
    name: &str,
    version: &str,
    staging: &Path,
    (used, budget): (u64, u64),
) -> Result<Fetched, FetchError> {
    let dir = staging.join(name).join(version);
    let disk = |e: std::io::Error| FetchError::Disk(format!("{}: {e}", dir.display()));
    tokio::fs::create_dir_all(&dir).await.map_err(disk)?;
    // The manifest is small: fetched whole each time.
    let manifest_part = dir.join("model.toml.part");
    let _ = tokio::fs::remove_file(&manifest_part).await;
    let mut received = src.append(name, version, "model.toml", &manifest_part).await?;
    let text = tokio::fs::read_to_string(&manifest_part).await.map_err(disk)?;
    let manifest = ModelManifest::parse(&text).map_err(|e| FetchError::Manifest(format!("{name} {version}"), e))?;
    if manifest.name != name || manifest.version != version {
        let why = format!("it is {} {}", manifest.name, manifest.version);
        return Err(FetchError::Manifest(format!("{name} {version}"), why));
    }
    let staged = staged_bytes(&dir, &manifest).await;
    let need = manifest.total_size().saturating_sub(staged);
    let free = budget.saturating_sub(used.saturating_add(staged));
    if need > free {
        let (name, version) = (name.to_owned(), version.to_owned());
        return Err(FetchError::Budget { name, version, need, free, budget });
    }
    for f in &manifest.files {
        let done = dir.join(&f.path);
        if tokio::fs::try_exists(&done).await.unwrap_or(false) {
            continue;
        }
        if let Some(parent) = done.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(disk)?;
        }
        let part = part_of(&done);
        if tokio::fs::metadata(&part).await.is_ok_and(|m| Some(m.len()) > f.size) {
            let _ = tokio::fs::remove_file(&part).await;
        }
        received += src.append(name, version, &f.path, &part).await?;
        check_digest(&part, &f.path, &f.sha256).await?;
        tokio::fs::rename(&part, &done).await.map_err(disk)?;
    }
    tokio::fs::rename(&manifest_part, dir.join("model.toml")).await.map_err(disk)?;
    fleet_durable::sync_dir(&dir).map_err(disk)?;
    Ok(Fetched { manifest, dir, received })
}

fn part_of(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Bytes of the version already in `dir` (whole files and parts).
async fn staged_bytes(dir: &Path, m: &ModelManifest) -> u64 {
    let mut n = 0;
    for f in &m.files {
        let file = dir.join(&f.path);
        for p in [part_of(&file), file] {
            n += tokio::fs::metadata(&p).await.map_or(0, |m| m.len());
        }
    }
    n
}

async fn check_digest(part: &Path, path: &str, expected: &str) -> Result<(), FetchError> {
    let owned = part.to_owned();
    let actual = tokio::task::spawn_blocking(move || fleet_inference::registry::sha256_file(&owned))
        .await
        .map_err(|e| FetchError::Disk(e.to_string()))?
        .map_err(|e| FetchError::Disk(format!("{}: {e}", part.display())))?;
    if actual.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    let _ = tokio::fs::remove_file(part).await;
    Err(FetchError::Checksum { file: path.to_owned(), expected: expected.to_owned(), actual })
}
