//! A BERT encoder for sentence embeddings, built for the CPU of a small node.
//!
//! The four dense products of each layer are candle matrix products (the
//! `gemm` crate's kernels) on weights laid out once at load time as
//! contiguous `(in, out)` matrices, with query, key and value fused into one
//! product. Everything between the products is done here, in place where it
//! can be and in parallel over rows on rayon's pool (the one `gemm` uses):
//! bias and GELU in one pass, bias + residual + LayerNorm in one pass,
//! attention per sentence and head in one pass. The sentences of a batch are
//! packed end to end, without padding: dense layers see only real tokens,
//! and attention never reaches across sentences, so no mask is needed.
//!
//! Why not candle-transformers' `BertModel`: on two cores it spent more time
//! around the products than in them (exact GELU through a scalar `erf`
//! call per element, a copy per transpose, a small matrix product per
//! sentence and head, thread hand-offs per element-wise operation). This
//! encoder computes the same function; `tests/minilm.rs` checks it against the
//! reference vectors of sentence-transformers and against `BertModel`.

mod kernels;

use std::collections::HashMap;

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;
use serde::Deserialize;

use kernels::{KEYS, add_norm_row, attend, bias_gelu};

thread_local! {
    /// A one-thread rayon pool made of the calling thread itself, so that the
    /// passes' parallel iterators run inline on it (None if it cannot be built).
    static SOLO: Option<rayon::ThreadPool> =
        rayon::ThreadPoolBuilder::new().num_threads(1).use_current_thread().build().ok();
}

/// Why the encoder cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    /// The config or a tensor is not what this encoder implements (the message names it).
    #[error("{0}")]
    Model(String),
    /// An input this model cannot take (the message says why).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// Rows per rayon task for the row-wise passes (small batches stay on one thread).
const MIN_ROWS: usize = 8;

/// The fields of a Hugging Face BERT `config.json` this encoder reads.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_position_kind")]
    pub position_embedding_type: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_position_kind() -> String {
    "absolute".into()
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    /// The exact GELU, `x * Φ(x)` (Hugging Face's "gelu").
    Gelu,
    Relu,
}

#[derive(Debug)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

#[derive(Debug)]
struct Layer {
    /// `(hidden, 3 * hidden)`: query, key and value side by side.
    qkv: Tensor,
    qkv_bias: Vec<f32>,
    out: Tensor,
    out_bias: Vec<f32>,
    attention_norm: Norm,
    up: Tensor,
    up_bias: Vec<f32>,
    down: Tensor,
    down_bias: Vec<f32>,
    output_norm: Norm,
}

/// One input sequence: token ids and token type ids, of equal length.
#[derive(Debug, Clone, Copy)]
pub struct Sequence<'a> {
    pub ids: &'a [u32],
    pub types: &'a [u32],
}

/// A loaded BERT encoder.
#[derive(Debug)]
pub struct Bert {
    hidden: usize,
    heads: usize,
    activation: Activation,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

/// The activation of a config this encoder implements; what it does not, named.
fn supported(config: &BertConfig) -> Result<Activation, BertError> {
    let h = config.hidden_size;
    if config.num_attention_heads == 0 || !h.is_multiple_of(config.num_attention_heads) {
        return Err(BertError::Model(format!(
            "hidden_size {h} is not a multiple of num_attention_heads {}",
            config.num_attention_heads
        )));
    }
    if config.position_embedding_type != "absolute" {
        return Err(BertError::Model(format!(
            "position_embedding_type {:?} is not supported (only \"absolute\")",
            config.position_embedding_type
        )));
    }
    match config.hidden_act.as_str() {
        "gelu" => Ok(Activation::Gelu),
        "relu" => Ok(Activation::Relu),
        other => Err(BertError::Model(format!("hidden_act {other:?} is not supported (only \"gelu\" and \"relu\")"))),
    }
}

impl Bert {
    /// Builds the encoder from a config and the model's tensors (names as in
    /// Hugging Face checkpoints, with or without a `bert.` prefix).
    ///
    /// # Errors
    /// A setting this encoder does not implement, or a missing or
    /// mis-shaped tensor, named in the message.
    pub fn new(config: &BertConfig, mut tensors: HashMap<String, Tensor>) -> Result<Self, BertError> {
        let h = config.hidden_size;
        let activation = supported(config)?;
        let prefix = if tensors.keys().any(|k| k.starts_with("bert.")) { "bert." } else { "" };
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor, BertError> {
            let full = format!("{prefix}{name}");
            let t = tensors.remove(&full).ok_or_else(|| BertError::Model(format!("tensor {full} is missing")))?;
            if t.dims() != shape {
                return Err(BertError::Model(format!("tensor {full} has shape {:?}, expected {shape:?}", t.dims())));
            }
            t.to_dtype(DType::F32).map_err(|e| BertError::Model(format!("tensor {full}: {e}")))
        };
        let vec = |t: Tensor| -> Result<Vec<f32>, BertError> { Ok(t.flatten_all().and_then(|t| t.to_vec1::<f32>())?) };
        // Stored as (out, in); the products want the contiguous (in, out).
        let weight = |t: Tensor| -> Result<Tensor, BertError> { Ok(t.t().and_then(|t| t.contiguous())?) };
        let eps = config.layer_norm_eps as f32;
        let mut norm = |name: &str| -> Result<Norm, BertError> {
            Ok(Norm {
                gamma: vec(take(&format!("{name}.weight"), &[h])?)?,
                beta: vec(take(&format!("{name}.bias"), &[h])?)?,
                eps,
            })
        };
        // `norm` borrows `take`; collect the norms first, then the rest.
        let embedding_norm = norm("embeddings.LayerNorm")?;
        let mut norms = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            norms.push((norm(&format!("{p}.attention.output.LayerNorm"))?, norm(&format!("{p}.output.LayerNorm"))?));
        }
        let word = vec(take("embeddings.word_embeddings.weight", &[config.vocab_size, h])?)?;
        let position = vec(take("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?)?;
        let token_type = vec(take("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?)?;
        let inter = config.intermediate_size;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for (l, (attention_norm, output_norm)) in norms.into_iter().enumerate() {
            let p = format!("encoder.layer.{l}");
            let mut qkv = Vec::with_capacity(3);
            let mut qkv_bias = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                qkv.push(take(&format!("{p}.attention.self.{part}.weight"), &[h, h])?);
                qkv_bias.extend(vec(take(&format!("{p}.attention.self.{part}.bias"), &[h])?)?);
            }
            let qkv = Tensor::cat(&qkv, 0)?;
            layers.push(Layer {
                qkv: weight(qkv)?,
                qkv_bias,
                out: weight(take(&format!("{p}.attention.output.dense.weight"), &[h, h])?)?,
                out_bias: vec(take(&format!("{p}.attention.output.dense.bias"), &[h])?)?,
                attention_norm,
                up: weight(take(&format!("{p}.intermediate.dense.weight"), &[inter, h])?)?,
                up_bias: vec(take(&format!("{p}.intermediate.dense.bias"), &[inter])?)?,
                down: weight(take(&format!("{p}.output.dense.weight"), &[h, inter])?)?,
                down_bias: vec(take(&format!("{p}.output.dense.bias"), &[h])?)?,
                output_norm,
            });
        }
        Ok(Self {
            hidden: h,
            heads: config.num_attention_heads,
            activation,
            word,
            position,
            token_type,
            embedding_norm,
            layers,
        })
    }

    /// Width of the hidden states (and of the embeddings).
    #[must_use]
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The mean of each sequence's last hidden states, L2-normalised: one
    /// vector per sequence, in order.
    ///
    /// # Errors
    /// A token id or position outside the model's tables, ids and types of
    /// different lengths, or a failed matrix product.
    pub fn embed(&self, seqs: &[Sequence<'_>]) -> Result<Vec<Vec<f32>>, BertError> {
        if rayon::current_num_threads() <= 1 {
            // One rayon thread (`RAYON_NUM_THREADS=1`, as a node's job pool runs
            // one job per core): stay on the caller's thread, or every worker's
            // job would queue for the one rayon thread.
            return SOLO.with(|pool| match pool {
                Some(pool) => pool.install(|| self.embed_on_pool(seqs)),
                None => self.embed_on_pool(seqs),
            });
        }
        // The whole pass runs on one of rayon's threads: each parallel step
        // is then shared with the pool's other threads directly, instead of
        // waking the pool from outside and sleeping until it is done.
        rayon::join(|| self.embed_on_pool(seqs), || ()).0
    }

    fn embed_on_pool(&self, seqs: &[Sequence<'_>]) -> Result<Vec<Vec<f32>>, BertError> {
        let h = self.hidden;
        let mut starts = Vec::with_capacity(seqs.len() + 1);
        starts.push(0);
        for s in seqs {
            if s.ids.len() != s.types.len() {
                return Err(BertError::Input(format!("{} token ids but {} type ids", s.ids.len(), s.types.len())));
            }
            starts.push(starts.last().copied().unwrap_or(0) + s.ids.len());
        }
        let n = starts.last().copied().unwrap_or(0);
        if n == 0 {
            return Ok(vec![vec![0.0; h]; seqs.len()]);
        }
        let mut x = self.embeddings(seqs, n)?;
        for layer in &self.layers {
            x = self.layer(layer, x, n, &starts)?;
        }
        Ok(seqs
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let rows = &x[starts[i] * h..starts[i + 1] * h];
                let count = (starts[i + 1] - starts[i]).max(1) as f32;
                let mut mean = vec![0.0f32; h];
                for row in rows.chunks_exact(h) {
                    for (m, v) in mean.iter_mut().zip(row) {
                        *m += v;
                    }
                }
                let norm = mean.iter().map(|v| (v / count) * (v / count)).sum::<f32>().sqrt().max(1e-12);
                mean.iter().map(|v| v / count / norm).collect()
            })
            .collect())
    }

    fn embeddings(&self, seqs: &[Sequence<'_>], n: usize) -> Result<Vec<f32>, BertError> {
        let h = self.hidden;
        let (vocab, positions, types) = (self.word.len() / h, self.position.len() / h, self.token_type.len() / h);
        let mut x = Vec::with_capacity(n * h);
        for s in seqs {
            if s.ids.len() > positions {
                return Err(BertError::Input(format!("{} tokens; this model takes at most {positions}", s.ids.len())));
            }
            for (p, (&id, &ty)) in s.ids.iter().zip(s.types).enumerate() {
                let (id, ty) = (id as usize, ty as usize);
                if id >= vocab || ty >= types {
                    return Err(BertError::Input(format!(
                        "token id {id} or type {ty} outside the model's tables ({vocab}, {types})"
                    )));
                }
                let (w, ps, t) =
                    (&self.word[id * h..][..h], &self.position[p * h..][..h], &self.token_type[ty * h..][..h]);
                x.extend(w.iter().zip(ps).zip(t).map(|((a, b), c)| a + b + c));
            }
        }
        x.par_chunks_mut(h).with_min_len(MIN_ROWS).for_each(|row| self.embedding_norm.apply(row));
        Ok(x)
    }

    fn layer(&self, l: &Layer, x: Vec<f32>, n: usize, starts: &[usize]) -> Result<Vec<f32>, BertError> {
        let h = self.hidden;
        let qkv = product(x.clone(), n, &l.qkv)?; // x stays for the residual
        let ctx = with_f32(&qkv, |qkv| self.attention(qkv, &l.qkv_bias, starts))?;
        let attended = product(ctx, n, &l.out)?;
        let x = with_f32(&attended, |a| add_norm(a, &l.out_bias, x, &l.attention_norm, h))?;
        let up = product(x.clone(), n, &l.up)?;
        let inter = l.up_bias.len();
        let act = with_f32(&up, |u| {
            let mut out = vec![0.0f32; u.len()];
            out.par_chunks_mut(inter).zip(u.par_chunks(inter)).with_min_len(MIN_ROWS).for_each(|(o, u)| {
                match self.activation {
                    Activation::Gelu => bias_gelu(o, u, &l.up_bias),
                    Activation::Relu => {
                        o.iter_mut().zip(u).zip(&l.up_bias).for_each(|((o, u), b)| *o = (u + b).max(0.0))
                    }
                }
            });
            out
        })?;
        let down = product(act, n, &l.down)?;
        with_f32(&down, |d| add_norm(d, &l.down_bias, x, &l.output_norm, h))
    }

    /// Self-attention over packed sequences: `qkv` is `(n, 3 * hidden)`
    /// without its bias; the answer is the context, `(n, hidden)`.
    fn attention(&self, qkv: &[f32], bias: &[f32], starts: &[usize]) -> Vec<f32> {
        let h = self.hidden;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let n = starts.last().copied().unwrap_or(0);
        let mut ctx = vec![0.0f32; n * h];
        // One task per sequence, over its own rows of the context.
        let mut rows: Vec<(usize, &mut [f32])> = Vec::with_capacity(starts.len());
        let mut rest = ctx.as_mut_slice();
        for (s, w) in starts.windows(2).enumerate() {
            let (mine, tail) = rest.split_at_mut((w[1] - w[0]) * h);
            rows.push((s, mine));
            rest = tail;
        }
        rows.par_iter_mut().for_each(|(s, out)| {
            let (first, len) = (starts[*s], starts[*s + 1] - starts[*s]);
            // k^T's rows padded to whole blocks of keys (the padding stays 0).
            let padded = len.div_ceil(KEYS) * KEYS;
            let (mut q, mut k, mut v) = (vec![0.0f32; len * d], vec![0.0f32; d * padded], vec![0.0f32; len * d]);
            let mut scores = vec![0.0f32; padded];
            for head in 0..self.heads {
                let col = head * d;
                for (part, buf, mul) in [(0, &mut q, scale), (2, &mut v, 1.0)] {
                    let b = &bias[part * h + col..][..d];
                    for (t, dst) in buf.chunks_exact_mut(d).enumerate() {
                        let row = &qkv[(first + t) * 3 * h + part * h + col..][..d];
                        for ((o, x), b) in dst.iter_mut().zip(row).zip(b) {
                            *o = (x + b) * mul;
                        }
                    }
                }
                // k transposed: one row per feature, one column per token.
                let b = &bias[h + col..][..d];
                for t in 0..len {
                    let row = &qkv[(first + t) * 3 * h + h + col..][..d];
                    for (c, (x, b)) in row.iter().zip(b).enumerate() {
                        k[c * padded + t] = x + b;
                    }
                }
                attend(&q, &k, &v, d, &mut scores, &mut out[col..], h);
            }
        });
        ctx
    }
}

impl Norm {
    /// LayerNorm of one row, in place.
    fn apply(&self, row: &mut [f32]) {
        add_norm_row(row, None, &self.gamma, &self.beta, self.eps);
    }
}

/// `LayerNorm(product + bias + residual)`, row by row, into `residual`'s buffer.
fn add_norm(product: &[f32], bias: &[f32], mut residual: Vec<f32>, norm: &Norm, h: usize) -> Vec<f32> {
    residual.par_chunks_mut(h).zip(product.par_chunks(h)).with_min_len(MIN_ROWS).for_each(|(r, p)| {
        add_norm_row(r, Some((p, bias)), &norm.gamma, &norm.beta, norm.eps);
    });
    residual
}

// The passes below are compiled for the wider vector units too and picked
// at run time (`multiversion`): the same code, 8 or 16 lanes instead of 4.

/// `x @ w` for `x` of `n` rows: one candle matrix product (`x` is taken over).
fn product(x: Vec<f32>, n: usize, w: &Tensor) -> Result<Tensor, BertError> {
    let k = w.dims().first().copied().unwrap_or(0);
    Ok(Tensor::from_vec(x, (n, k), &Device::Cpu).and_then(|x| x.matmul(w))?)
}

/// Runs `f` on a contiguous f32 CPU tensor's values without copying them.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, BertError> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(BertError::Internal("a product's result is not contiguous"));
    };
    match &*storage {
        Storage::Cpu(candle_core::CpuStorage::F32(v)) => Ok(f(&v[start..end])),
        _ => Err(BertError::Internal("a product's result is not f32 on the CPU")),
    }
}
