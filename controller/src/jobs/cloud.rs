//! The cloud inference tier inside the controller: the models it loads and
//! the bounded pool that runs jobs no edge node should.

use std::path::PathBuf;
use std::sync::Arc;

use fleet_inference::Pool;
use serde::Deserialize;

use crate::ControllerError;

/// `[cloud]`: the cloud inference tier inside the controller.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudConfig {
    /// Run jobs here when no edge node should. Default true.
    pub enabled: bool,
    /// Model directory (a folder per model with its model.toml); empty: only
    /// the built-in classifier. Default "".
    pub model_dir: PathBuf,
    /// Inference threads. Default 2.
    pub workers: usize,
    /// Jobs waiting for a thread at most; beyond it the cloud tier counts as
    /// busy for the router. Default 64.
    pub queue: usize,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self { enabled: true, model_dir: PathBuf::new(), workers: 2, queue: 64 }
    }
}

impl CloudConfig {
    /// Checks the values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), ControllerError> {
        if self.workers == 0 {
            return Err(ControllerError::Invalid("key `cloud.workers` must be at least 1".into()));
        }
        Ok(())
    }
}

/// Loads the cloud tier's models off the event loop; `None` when the tier is off.
/// A model that fails to load is logged and left out; the others serve.
///
/// # Errors
/// The loading thread failed.
pub async fn load(cfg: &CloudConfig) -> Result<Option<Pool>, ControllerError> {
    if !cfg.enabled {
        return Ok(None);
    }
    let dir = (!cfg.model_dir.as_os_str().is_empty()).then(|| cfg.model_dir.clone());
    let (rt, errors) = tokio::task::spawn_blocking(move || fleet_inference::Runtime::load(dir.as_deref(), &[]))
        .await
        .map_err(|e| ControllerError::Io(format!("loading the cloud tier's models: {e}")))?;
    for e in errors {
        tracing::error!(error = %e, "Cloud tier: a model was not loaded.");
    }
    tracing::info!(models = ?rt.names(), workers = cfg.workers, "Cloud inference tier ready.");
    Ok(Some(Pool::new(Arc::new(rt), cfg.workers, cfg.queue)))
}
