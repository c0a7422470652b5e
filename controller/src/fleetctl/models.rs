//! `fleetctl models`: push a model version to the controller, list the
//! versions it keeps (docs/rollouts.md).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use fleet_net::client::FleetClient;
use fleet_proto::v1::{ListModelsRequest, ModelChunk};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::args::Output;
use super::error::CtlError;
use super::output::{model_table, models_json, pretty};
use crate::artifacts::{MANIFEST, MAX_CHUNK};

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Push the model in DIR (its model.toml with name, version, and every
    /// file's sha256 and size; the files beside it). Checked here first.
    Push { dir: PathBuf },
    /// The versions the controller keeps.
    List {
        /// Only this model's versions.
        name: Option<String>,
    },
}

/// Runs one `models` command.
///
/// # Errors
/// A model that does not check here, the controller's error, or JSON that cannot be written.
pub async fn run(client: &mut FleetClient, command: ModelsCommand, out: Output) -> Result<(), CtlError> {
    match command {
        ModelsCommand::Push { dir } => {
            let files = check(&dir).await?;
            let (tx, rx) = mpsc::channel(4);
            let reader = tokio::spawn(send_files(dir, files, tx));
            let pushed = client.push_model(ReceiverStream::new(rx)).await;
            reader.await.map_err(|e| CtlError::Settings(e.to_string()))??;
            let v = pushed?.into_inner();
            println!(
                "pushed model {} version {} ({} bytes in {} files)",
                v.name,
                v.version,
                v.total_bytes,
                v.files.len()
            );
        }
        ModelsCommand::List { name } => {
            let req = ListModelsRequest { name: name.unwrap_or_default() };
            let versions = client.list_models(req).await?.into_inner().versions;
            if out == Output::Json {
                println!("{}", pretty(&models_json(&versions))?);
            } else {
                print!("{}", model_table(&versions));
            }
        }
    }
    Ok(())
}

/// The model's files as the controller will check them (digests, sizes, a
/// version), so a mistake shows before anything is sent.
async fn check(dir: &Path) -> Result<Vec<String>, CtlError> {
    let owned = dir.to_owned();
    let model = tokio::task::spawn_blocking(move || fleet_inference::registry::load_model(&owned))
        .await
        .map_err(|e| CtlError::Settings(e.to_string()))?
        .map_err(|e| CtlError::Settings(format!("{e}; fix the model before pushing it")))?;
    let m = model.manifest;
    if m.version.is_empty() {
        return Err(CtlError::Settings(format!(
            "{}: give the model a `version` to push it",
            dir.join(MANIFEST).display()
        )));
    }
    if let Some(f) = m.files.iter().find(|f| f.size.is_none()) {
        return Err(CtlError::Settings(format!(
            "{}: give file {:?} its `size` in bytes",
            dir.join(MANIFEST).display(),
            f.path
        )));
    }
    Ok(std::iter::once(MANIFEST.to_owned()).chain(m.files.into_iter().map(|f| f.path)).collect())
}

/// Sends each file in order, in chunks; stops when the call has ended.
async fn send_files(dir: PathBuf, files: Vec<String>, tx: mpsc::Sender<ModelChunk>) -> Result<(), CtlError> {
    for path in files {
        let full = dir.join(&path);
        let unreadable = |e: std::io::Error| CtlError::Settings(format!("cannot read {}: {e}", full.display()));
        let mut f = tokio::fs::File::open(&full).await.map_err(unreadable)?;
        let mut offset = 0u64;
        loop {
            let mut data = vec![0; MAX_CHUNK];
            let n = f.read(&mut data).await.map_err(unreadable)?;
            if n == 0 && offset > 0 {
                break;
            }
            data.truncate(n);
            if tx.send(ModelChunk { path: path.clone(), offset, data }).await.is_err() {
                return Ok(());
            }
            if n == 0 {
                break;
            }
            offset += n as u64;
        }
    }
    Ok(())
}
