//! The models a node (or the cloud tier) can run, loaded once and shared by
//! the worker threads: the built-in classifier plus whatever the model
//! directory offers. Running is synchronous and CPU-bound: callers run it on
//! `spawn_blocking` or a dedicated thread, never on an async worker.

use std::collections::BTreeMap;
use std::path::Path;

use crate::classify::{BUILTIN_NAME, Classification, TextClassifier};
use crate::embed::SentenceEmbedder;
use crate::registry::{ModelKind, ModelRegistry};
use crate::{InferenceError, StepTimes};

/// What a model answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Embedding(Vec<f32>),
    Class(Classification),
}

/// An answer and how long its steps took.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub output: Output,
    pub times: StepTimes,
}

impl Answer {
    /// The confidence joint inference compares: the class probability, or 1
    /// for an embedding (a deterministic function has nothing to be unsure of).
    #[must_use]
    pub fn confidence(&self) -> f32 {
        match &self.output {
            Output::Embedding(_) => 1.0,
            Output::Class(c) => c.confidence,
        }
    }
}

enum Runner {
    Embed(Box<SentenceEmbedder>),
    Classify(TextClassifier),
}

/// Loaded models by name.
#[derive(Default)]
pub struct Runtime {
    models: BTreeMap<String, Runner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("models", &self.models.keys().collect::<Vec<_>>()).finish()
    }
}

impl Runtime {
    /// Loads the built-in classifier and every model of `dir` (when given),
    /// keeping only the names in `only` when it is not empty. A model that
    /// cannot be loaded is left out and reported in the second value, so one
    /// bad model never stops a node from running the others.
    #[must_use]
    pub fn load(dir: Option<&Path>, only: &[String]) -> (Self, Vec<InferenceError>) {
        let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
        let mut rt = Runtime::default();
        let mut errors = Vec::new();
        if wanted(BUILTIN_NAME) {
            match TextClassifier::builtin() {
                Ok(c) => {
                    rt.models.insert(BUILTIN_NAME.to_owned(), Runner::Classify(c));
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(dir) = dir {
            match ModelRegistry::open(dir) {
                Ok(reg) => {
                    for (what, why) in reg.refused() {
                        errors.push(InferenceError::Registry { path: what.into(), reason: why.clone() });
                    }
                    for name in reg.names().filter(|n| wanted(n)) {
                        let Ok(model) = reg.get(name) else { continue };
                        let runner = match model.manifest.kind {
                            ModelKind::SentenceEmbedding => {
                                SentenceEmbedder::load(model).map(|e| Runner::Embed(Box::new(e)))
                            }
                            ModelKind::TextClassifier => TextClassifier::load(model).map(Runner::Classify),
                        };
                        match runner {
                            Ok(r) => {
                                rt.models.insert(name.to_owned(), r);
                            }
                            Err(e) => errors.push(e),
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        (rt, errors)
    }

    /// Names of the loaded models, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    /// True when `model` is loaded.
    #[must_use]
    pub fn has(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    /// Runs `model` on `text`.
    ///
    /// # Errors
    /// `UnknownModel`, a bad input, a failed forward pass.
    pub fn run(&self, model: &str, text: &str) -> Result<Answer, InferenceError> {
        match self.models.get(model) {
            Some(Runner::Embed(e)) => {
                e.embed_timed(text).map(|(v, times)| Answer { output: Output::Embedding(v), times })
            }
            Some(Runner::Classify(c)) => {
                c.classify_timed(text).map(|(c, times)| Answer { output: Output::Class(c), times })
            }
            None => Err(InferenceError::UnknownModel { name: model.to_owned(), available: self.names().join(", ") }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_alone_and_filters() {
        let (rt, errors) = Runtime::load(None, &[]);
        assert!(errors.is_empty());
        assert_eq!(rt.names(), [BUILTIN_NAME]);
        let a = rt.run(BUILTIN_NAME, "disk full telemetry is being dropped").unwrap();
        assert!(matches!(&a.output, Output::Class(c) if c.label == "critical"));
        assert!(a.confidence() > 0.5);
        let e = rt.run("minilm", "x").unwrap_err().to_string();
        assert!(e.contains("severity"), "{e}");
        let (rt, _) = Runtime::load(None, &["minilm".into()]);
        assert!(rt.names().is_empty());
        let (_, errors) = Runtime::load(Some(Path::new("/nonexistent/models")), &[]);
        assert_eq!(errors.len(), 1);
    }
}
