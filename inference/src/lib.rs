//! Spark Fleet inference, shared by the agent (edge) and the controller
//! (cloud tier): a model registry that offers only models whose files match
//! their manifest's sha256, and candle runners for each model kind.
#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod bert;
pub mod classify;
pub mod embed;
pub mod pool;
pub mod registry;
pub mod runtime;
pub mod selftest;

pub use classify::{Classification, TextClassifier};
pub use embed::{SentenceEmbedder, cosine};
pub use pool::{Place, Pool, Ran, RunError};
pub use registry::{Model, ModelKind, ModelManifest, ModelRegistry};
pub use runtime::{Answer, Output, Runtime};
pub use selftest::SelfTest;

/// Why inference could not be done; every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("model registry {path}: {reason}")]
    Registry { path: PathBuf, reason: String },
    #[error("no model named {name:?} (available: {available}); add it to the model directory or fix the job's model")]
    UnknownModel { name: String, available: String },
    #[error("model {model}: cannot read {file}: {reason}; copy the model's files next to its model.toml")]
    MissingFile { model: String, file: PathBuf, reason: String },
    #[error(
        "model {model}: {file} has sha256 {actual}, its manifest says {expected}; the file is damaged or \
         not this model's: download it again"
    )]
    Checksum { model: String, file: PathBuf, expected: String, actual: String },
    #[error("model {model} cannot be loaded: {reason}")]
    Load { model: String, reason: String },
    #[error("model {model} failed: {reason}")]
    Run { model: String, reason: String },
    #[error("bad input: {0}")]
    Input(String),
}

/// How long the steps of one inference took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTimes {
    /// Tokenizing (or feature hashing) and building the input tensors.
    pub tokenize: std::time::Duration,
    /// The forward pass and reading the output.
    pub inference: std::time::Duration,
}
