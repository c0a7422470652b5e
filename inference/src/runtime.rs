//! The models a node (or the cloud tier) can run, shared by the worker
//! threads: the built-in classifier plus whatever the model directory offers.
//! `Runtime::open` only lists them; each is loaded the first time a job needs
//! it (on that job's worker thread), so a node that never runs a model never
//! pays its memory (`Runtime::load` loads every one at once, for the cloud
//! tier). A model that fails to load is reported by that job and no longer
//! offered. Running is synchronous and CPU-bound: callers run it on
//! `spawn_blocking` or a dedicated thread, never on an async worker.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use crate::classify::{BUILTIN_NAME, Classification, TextClassifier};
use crate::embed::SentenceEmbedder;
use crate::registry::{Model, ModelKind, ModelRegistry};
use crate::selftest::{Observed, SelfTest};
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

/// Where a model comes from.
enum Source {
    Builtin,
    Dir(Model),
}

impl Source {
    fn load(&self) -> Result<Runner, InferenceError> {
        match self {
            Source::Builtin => TextClassifier::builtin().map(Runner::Classify),
            Source::Dir(model) => match model.manifest.kind {
                ModelKind::SentenceEmbedding => SentenceEmbedder::load(model).map(|e| Runner::Embed(Box::new(e))),
                ModelKind::TextClassifier => TextClassifier::load(model).map(Runner::Classify),
            },
        }
    }
}

/// A model, loaded at its first use (the error kept when that failed).
struct Slot {
    source: Source,
    runner: OnceLock<Result<Runner, String>>,
}

impl Slot {
    fn runner(&self, name: &str) -> Result<&Runner, InferenceError> {
        let r = self.runner.get_or_init(|| {
            let loaded = self.source.load().map_err(|e| e.to_string());
            match &loaded {
                Ok(_) => tracing::info!(model = name, "Model loaded."),
                Err(e) => {
                    tracing::error!(model = name, error = %e, "A model could not be loaded; it is no longer offered.")
                }
            }
            loaded
        });
        r.as_ref().map_err(|reason| InferenceError::Load { model: name.to_owned(), reason: reason.clone() })
    }

    fn failed(&self) -> bool {
        self.runner.get().is_some_and(Result::is_err)
    }
}

/// The models by name.
#[derive(Default)]
pub struct Runtime {
    models: BTreeMap<String, Slot>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("models", &self.models.keys().collect::<Vec<_>>()).finish()
    }
}

impl Runtime {
    /// Lists the built-in classifier and every model of `dir` (when given),
    /// keeping only the names in `only` when it is not empty; loads none. A
    /// model the registry refuses (a file missing or damaged) is left out and
    /// reported in the second value.
    #[must_use]
    pub fn open(dir: Option<&Path>, only: &[String]) -> (Self, Vec<InferenceError>) {
        Self::open_dirs(dir.as_slice(), only)
    }

    /// As `open`, over several model directories: a model in a later one
    /// replaces one of the same name in an earlier one (the node's versions
    /// from the controller over the models placed by hand).
    #[must_use]
    pub fn open_dirs(dirs: &[&Path], only: &[String]) -> (Self, Vec<InferenceError>) {
        let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
        let mut rt = Runtime::default();
        let mut errors = Vec::new();
        let slot = |source| Slot { source, runner: OnceLock::new() };
        if wanted(BUILTIN_NAME) {
            rt.models.insert(BUILTIN_NAME.to_owned(), slot(Source::Builtin));
        }
        for dir in dirs {
            match ModelRegistry::open(dir) {
                Ok(reg) => {
                    for (what, why) in reg.refused() {
                        errors.push(InferenceError::Registry { path: what.into(), reason: why.clone() });
                    }
                    for name in reg.names().filter(|n| wanted(n)) {
                        let Ok(model) = reg.get(name) else { continue };
                        rt.models.insert(name.to_owned(), slot(Source::Dir(model.clone())));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        (rt, errors)
    }

    /// As `open`, then loads every model now; one that fails is reported and
    /// no longer offered, so one bad model never stops the others.
    #[must_use]
    pub fn load(dir: Option<&Path>, only: &[String]) -> (Self, Vec<InferenceError>) {
        let (rt, mut errors) = Self::open(dir, only);
        for (name, slot) in &rt.models {
            if let Err(e) = slot.runner(name) {
                errors.push(e);
            }
        }
        (rt, errors)
    }

    /// Names of the models offered (not failed to load), sorted.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.models.iter().filter(|(_, s)| !s.failed()).map(|(n, _)| n.clone()).collect()
    }

    /// True when `model` is offered.
    #[must_use]
    pub fn has(&self, model: &str) -> bool {
        self.models.get(model).is_some_and(|s| !s.failed())
    }

    /// Loads `model` now if it is not loaded yet (a job's worker does this
    /// before it starts timing the run).
    ///
    /// # Errors
    /// `UnknownModel`, or the model cannot be loaded.
    pub fn prepare(&self, model: &str) -> Result<(), InferenceError> {
        let Some(slot) = self.models.get(model) else {
            return Err(InferenceError::UnknownModel { name: model.to_owned(), available: self.names().join(", ") });
        };
        slot.runner(model).map(|_| ())
    }

    /// Runs `model` on `text` (loading it first if this is its first run).
    ///
    /// # Errors
    /// `UnknownModel`, a bad input, a failed forward pass.
    pub fn run(&self, model: &str, text: &str) -> Result<Answer, InferenceError> {
        let Some(slot) = self.models.get(model) else {
            return Err(InferenceError::UnknownModel { name: model.to_owned(), available: self.names().join(", ") });
        };
        match slot.runner(model)? {
            Runner::Embed(e) => e.embed_timed(text).map(|(v, times)| Answer { output: Output::Embedding(v), times }),
            Runner::Classify(c) => c.classify_timed(text).map(|(c, times)| Answer { output: Output::Class(c), times }),
        }
    }
}

impl Runtime {
    /// Runs `test`'s cases through `model` (loading it first).
    ///
    /// # Errors
    /// The first case that failed and how, or why the model cannot run.
    pub fn self_test(&self, model: &str, test: &SelfTest) -> Result<(), String> {
        test.check(|text| match self.run(model, text).map_err(|e| e.to_string())?.output {
            Output::Embedding(v) => Ok(Observed::Embedding(v)),
            Output::Class(c) => Ok(Observed::Label(c.label)),
        })
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

    #[test]
    fn open_loads_nothing_until_a_model_runs() {
        let (rt, errors) = Runtime::open(None, &[]);
        assert!(errors.is_empty());
        assert_eq!(rt.names(), [BUILTIN_NAME], "offered before it is loaded");
        assert!(rt.models[BUILTIN_NAME].runner.get().is_none(), "nothing loaded by open");
        rt.run(BUILTIN_NAME, "disk full").unwrap();
        assert!(rt.models[BUILTIN_NAME].runner.get().is_some_and(Result::is_ok), "loaded by its first run");
    }
}
