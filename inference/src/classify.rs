//! A tiny text classifier: hashed word features (unigrams and bigrams, CRC-32C
//! into [`FEATURE_DIMS`] buckets, L2-normalised) into one linear layer and a
//! softmax, on candle. Its confidence is the winning class's probability,
//! which is what joint inference compares with a job's threshold.
//!
//! The built-in model `severity` (labels info / warning / critical, for fleet
//! event and log lines) ships in the binary: its weights were trained by
//! `cargo run --release -p fleet-inference --example train-severity` on
//! `inference/data/severity.tsv` and are committed as safetensors.

use std::time::Instant;

use candle_core::{D, Device, Tensor};

use crate::registry::{Model, ModelKind};
use crate::{InferenceError, StepTimes};

/// Width of the hashed feature vector.
pub const FEATURE_DIMS: usize = 2048;
/// Longest input classified (longer inputs are refused, not cut).
pub const MAX_INPUT_BYTES: usize = 16 * 1024;
/// Name of the built-in classifier.
pub const BUILTIN_NAME: &str = "severity";

const BUILTIN_WEIGHTS: &[u8] = include_bytes!("../models/severity/model.safetensors");
const BUILTIN_LABELS: &str = include_str!("../models/severity/labels.txt");

/// A classifier's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub label: String,
    /// Probability of `label`, 0-1.
    pub confidence: f32,
    /// Probability of every label, in label order.
    pub probabilities: Vec<f32>,
}

/// A loaded classifier.
pub struct TextClassifier {
    name: String,
    labels: Vec<String>,
    /// `[labels, FEATURE_DIMS]`, transposed once at load for the matmul.
    weight_t: Tensor,
    /// `[labels]`.
    bias: Tensor,
    device: Device,
}

impl std::fmt::Debug for TextClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextClassifier").field("name", &self.name).field("labels", &self.labels).finish()
    }
}

/// The hashed, L2-normalised feature vector of `text` (lower-cased words of
/// letters and digits; each word and each pair of neighbours counts once per occurrence).
#[must_use]
pub fn features(text: &str) -> Vec<f32> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let mut v = vec![0f32; FEATURE_DIMS];
    let bucket = |s: &[u8]| crc32c::crc32c(s) as usize % FEATURE_DIMS;
    for (i, w) in words.iter().enumerate() {
        v[bucket(w.as_bytes())] += 1.0;
        if let Some(next) = words.get(i + 1) {
            let pair = format!("{w} {next}");
            v[bucket(pair.as_bytes())] += 1.0;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

impl TextClassifier {
    /// The built-in `severity` classifier.
    ///
    /// # Errors
    /// Only if the shipped weights were damaged at build time.
    pub fn builtin() -> Result<Self, InferenceError> {
        let labels = BUILTIN_LABELS.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        Self::from_safetensors(BUILTIN_NAME, BUILTIN_WEIGHTS, labels)
    }

    /// Loads a `text-classifier` from the registry: `model.safetensors`
    /// (`weight` `[labels, 2048]`, `bias` `[labels]`) and `labels.txt` (one per line).
    ///
    /// # Errors
    /// A model of another kind, missing or malformed files.
    pub fn load(model: &Model) -> Result<Self, InferenceError> {
        let name = model.manifest.name.clone();
        let load = |reason: String| InferenceError::Load { model: name.clone(), reason };
        if model.manifest.kind != ModelKind::TextClassifier {
            return Err(load(format!("it is a {} model, not a text-classifier", model.manifest.kind.as_str())));
        }
        if model.manifest.base.is_some() {
            return Err(load("classifier heads over embeddings (`base`) are not supported; remove `base`".into()));
        }
        let read = |file: &str| {
            let path = model.file(file).ok_or_else(|| load(format!("its manifest must list {file}")))?;
            std::fs::read(&path).map_err(|e| InferenceError::MissingFile {
                model: name.clone(),
                file: path,
                reason: e.to_string(),
            })
        };
        let weights = read("model.safetensors")?;
        let labels = String::from_utf8_lossy(&read("labels.txt")?)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        Self::from_safetensors(&name, &weights, labels)
    }

    fn from_safetensors(name: &str, bytes: &[u8], labels: Vec<String>) -> Result<Self, InferenceError> {
        let load = |reason: String| InferenceError::Load { model: name.to_owned(), reason };
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load_buffer(bytes, &device).map_err(|e| load(e.to_string()))?;
        let get = |k: &str| tensors.get(k).cloned().ok_or_else(|| load(format!("model.safetensors has no {k:?}")));
        let (weight, bias) = (get("weight")?, get("bias")?);
        if weight.dims() != [labels.len(), FEATURE_DIMS] || bias.dims() != [labels.len()] || labels.len() < 2 {
            return Err(load(format!(
                "weight {:?} and bias {:?} do not fit {} labels x {FEATURE_DIMS} features",
                weight.dims(),
                bias.dims(),
                labels.len()
            )));
        }
        let weight_t = weight.t().and_then(|t| t.contiguous()).map_err(|e| load(e.to_string()))?;
        Ok(Self { name: name.to_owned(), labels, weight_t, bias, device })
    }

    /// The model's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The labels, in output order.
    #[must_use]
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Classifies one text.
    ///
    /// # Errors
    /// An input over [`MAX_INPUT_BYTES`], tensor failures.
    pub fn classify(&self, text: &str) -> Result<Classification, InferenceError> {
        self.classify_timed(text).map(|(c, _)| c)
    }

    /// As [`Self::classify`], with the time spent on features and on the layer.
    ///
    /// # Errors
    /// As [`Self::classify`].
    pub fn classify_timed(&self, text: &str) -> Result<(Classification, StepTimes), InferenceError> {
        if text.len() > MAX_INPUT_BYTES {
            return Err(InferenceError::Input(format!("input is over {MAX_INPUT_BYTES} bytes; shorten it")));
        }
        let run = |e: candle_core::Error| InferenceError::Run { model: self.name.clone(), reason: e.to_string() };
        let started = Instant::now();
        let x = Tensor::from_vec(features(text), (1, FEATURE_DIMS), &self.device).map_err(run)?;
        let featured = Instant::now();
        let probabilities = x
            .matmul(&self.weight_t)
            .and_then(|l| l.broadcast_add(&self.bias))
            .and_then(|l| candle_nn::ops::softmax(&l, D::Minus1))
            .and_then(|p| p.squeeze(0))
            .and_then(|p| p.to_vec1::<f32>())
            .map_err(run)?;
        let times = StepTimes { tokenize: featured - started, inference: featured.elapsed() };
        let (best, confidence) =
            probabilities.iter().copied().enumerate().fold((0, f32::MIN), |a, (i, p)| if p > a.1 { (i, p) } else { a });
        let label = self.labels.get(best).cloned().unwrap_or_default();
        Ok((Classification { label, confidence, probabilities }, times))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_normalised_and_stable() {
        let f = features("Battery LOW, battery low!");
        let norm: f32 = f.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(f, features("battery low battery low"));
        assert!(features("").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn builtin_classifies_its_kind_of_text_with_confidence() {
        let c = TextClassifier::builtin().unwrap();
        assert_eq!(c.labels(), ["info", "warning", "critical"]);
        // Sentences not in the training data.
        for (text, want) in [
            ("the battery is critically low and the node is shutting down", "critical"),
            ("disk usage is getting high on node seven", "warning"),
            ("the node connected and the job completed successfully", "info"),
        ] {
            let r = c.classify(text).unwrap();
            assert_eq!(r.label, want, "{text}: {r:?}");
            assert!((r.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        }
        // Words it never saw: no class stands out.
        let unsure = c.classify("zyx qwv plorb").unwrap();
        let sure = c.classify("battery critically low shutting down now").unwrap();
        assert!(unsure.confidence < 0.6, "{unsure:?}");
        assert!(sure.confidence > unsure.confidence + 0.2, "{sure:?} vs {unsure:?}");
        assert!(c.classify(&"x".repeat(MAX_INPUT_BYTES + 1)).is_err());
    }
}
