//! Sentence embeddings with a BERT-family model (all-MiniLM-L6-v2) on candle:
//! tokenise a batch (truncated at the model's `max_seq_length`, not padded),
//! run BERT ([`crate::bert`]), mean-pool each input's token vectors,
//! L2-normalise. The same steps as sentence-transformers' Transformer ->
//! Pooling(mean) -> Normalize pipeline for this model.

use candle_core::Device;
use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::{Bert, BertConfig, Sequence};

use crate::InferenceError;
use crate::StepTimes;
use crate::registry::{Model, ModelKind};

/// Inputs per forward pass at most; longer lists are cut into such batches.
pub const MAX_BATCH: usize = 64;
/// Longest input accepted, in bytes (the tokenizer truncates far below it).
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// A loaded sentence-embedding model.
pub struct SentenceEmbedder {
    name: String,
    model: Bert,
    tokenizer: Tokenizer,
    dim: usize,
}

impl std::fmt::Debug for SentenceEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEmbedder").field("name", &self.name).field("dim", &self.dim).finish_non_exhaustive()
    }
}

impl SentenceEmbedder {
    /// Loads a checked `sentence-embedding` model: `config.json`,
    /// `tokenizer.json`, `model.safetensors`, and optionally
    /// `sentence_bert_config.json` (its `max_seq_length`, default 256).
    ///
    /// # Errors
    /// Wrong kind, missing or unreadable files.
    pub fn load(model: &Model) -> Result<Self, InferenceError> {
        let name = model.manifest.name.clone();
        let load_err = |reason: String| InferenceError::Load { model: name.clone(), reason };
        if model.manifest.kind != ModelKind::SentenceEmbedding {
            return Err(load_err(format!("is a {} model, not a sentence-embedding one", model.manifest.kind.as_str())));
        }
        let need = |f: &str| model.file(f).ok_or_else(|| load_err(format!("its manifest does not list {f}")));
        let config: BertConfig = serde_json::from_slice(
            &std::fs::read(need("config.json")?).map_err(|e| load_err(format!("config.json: {e}")))?,
        )
        .map_err(|e| load_err(format!("config.json: {e}")))?;
        let max_len = match model.file("sentence_bert_config.json") {
            Some(p) => {
                let v: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(p).map_err(|e| load_err(format!("sentence_bert_config.json: {e}")))?,
                )
                .map_err(|e| load_err(format!("sentence_bert_config.json: {e}")))?;
                v.get("max_seq_length").and_then(serde_json::Value::as_u64).unwrap_or(256)
            }
            None => 256,
        };
        let mut tokenizer =
            Tokenizer::from_file(need("tokenizer.json")?).map_err(|e| load_err(format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer pads every input to 128 and cuts there; the
        // encoder packs inputs without padding, and cuts at the model's own limit.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: usize::try_from(max_len).unwrap_or(256),
                ..Default::default()
            }))
            .map_err(|e| load_err(format!("truncation: {e}")))?;
        let weights = need("model.safetensors")?;
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .map_err(|e| load_err(format!("model.safetensors: {e}")))?;
        let dim = config.hidden_size;
        let model = Bert::new(&config, tensors).map_err(|e| load_err(e.to_string()))?;
        Ok(Self { name, model, tokenizer, dim })
    }

    /// Length of each embedding.
    #[must_use]
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The model's registry name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One L2-normalised embedding per text, in order.
    ///
    /// # Errors
    /// An input over [`MAX_INPUT_BYTES`], tokenizer or tensor failures.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferenceError> {
        self.embed_batched(texts, MAX_BATCH)
    }

    /// As [`Self::embed`], running at most `batch` inputs per forward pass.
    ///
    /// # Errors
    /// As [`Self::embed`].
    pub fn embed_batched(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>, InferenceError> {
        let batch = batch.clamp(1, MAX_BATCH);
        if let Some(i) = texts.iter().position(|t| t.len() > MAX_INPUT_BYTES) {
            return Err(InferenceError::Input(format!("input {i} is over {MAX_INPUT_BYTES} bytes; shorten it")));
        }
        // Batches of similar lengths cost alike (as sentence-transformers
        // does): embed in length order, answer in the caller's order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let sorted: Vec<&str> = order.iter().map(|&i| texts[i]).collect();
        // Batches run side by side on rayon's threads, each also splitting its
        // own products: a thread that finishes its share takes work from the
        // other batch instead of waiting (on a VM whose second core comes and
        // goes, one batch at a time spent a third of the time idle).
        let chunks: Vec<&[&str]> = sorted.chunks(batch).collect();
        let done: Vec<Result<Vec<Vec<f32>>, InferenceError>> =
            chunks.par_iter().map(|chunk| self.embed_batch(chunk, &mut StepTimes::default())).collect();
        let mut out = vec![Vec::new(); texts.len()];
        let mut at = 0;
        for vectors in done {
            for v in vectors? {
                out[order[at]] = v;
                at += 1;
            }
        }
        Ok(out)
    }

    /// One text's embedding and how long tokenizing and the forward pass took.
    ///
    /// # Errors
    /// As [`Self::embed`].
    pub fn embed_timed(&self, text: &str) -> Result<(Vec<f32>, StepTimes), InferenceError> {
        if text.len() > MAX_INPUT_BYTES {
            return Err(InferenceError::Input(format!("input is over {MAX_INPUT_BYTES} bytes; shorten it")));
        }
        let mut times = StepTimes::default();
        let v = self.embed_batch(&[text], &mut times)?.pop().unwrap_or_default();
        Ok((v, times))
    }

    fn embed_batch(&self, texts: &[&str], times: &mut StepTimes) -> Result<Vec<Vec<f32>>, InferenceError> {
        let run = |e: &dyn std::fmt::Display| InferenceError::Run { model: self.name.clone(), reason: e.to_string() };
        let started = std::time::Instant::now();
        let enc = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| run(&e))?;
        let seqs: Vec<Sequence<'_>> =
            enc.iter().map(|e| Sequence { ids: e.get_ids(), types: e.get_type_ids() }).collect();
        let tokenized = std::time::Instant::now();
        times.tokenize += tokenized - started;
        let pooled = self.model.embed(&seqs).map_err(|e| run(&e))?;
        times.inference += tokenized.elapsed();
        Ok(pooled)
    }
}

/// Cosine similarity of two vectors (0 when either is all zeros).
#[must_use]
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) }
}
