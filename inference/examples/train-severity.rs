//! Trains the built-in `severity` classifier (see `src/classify.rs`) on
//! `inference/data/severity.tsv` and writes `inference/models/severity/`
//! (`model.safetensors`, `labels.txt`). Deterministic: zero initial weights,
//! full-batch AdamW, fixed steps.
//!
//! `cargo run --release -p fleet-inference --example train-severity`

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use fleet_inference::classify::{FEATURE_DIMS, features};

const STEPS: usize = 400;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = std::fs::read_to_string(root.join("data/severity.tsv")).context("reading data/severity.tsv")?;
    let labels = ["info", "warning", "critical"];
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for (n, line) in data.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((label, text)) = line.split_once('\t') else { bail!("line {}: expected label<TAB>text", n + 1) };
        let y = labels.iter().position(|l| *l == label).with_context(|| format!("line {}: unknown label", n + 1))?;
        xs.extend(features(text));
        ys.push(u32::try_from(y)?);
    }
    let dev = Device::Cpu;
    let n = ys.len();
    let x = Tensor::from_vec(xs, (n, FEATURE_DIMS), &dev)?;
    let y = Tensor::from_vec(ys.clone(), n, &dev)?;
    let w = Var::zeros((labels.len(), FEATURE_DIMS), DType::F32, &dev)?;
    let b = Var::zeros(labels.len(), DType::F32, &dev)?;
    let params = candle_nn::ParamsAdamW { lr: 0.05, weight_decay: 0.001, ..Default::default() };
    let mut opt = candle_nn::AdamW::new(vec![w.clone(), b.clone()], params)?;
    for step in 0..STEPS {
        let logits = x.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        opt.backward_step(&loss)?;
        if step % 100 == 0 || step + 1 == STEPS {
            let pred = logits.argmax(1)?.to_vec1::<u32>()?;
            let right = pred.iter().zip(&ys).filter(|(p, y)| p == y).count();
            println!("step {step}: loss {:.4}, training accuracy {right}/{n}", loss.to_scalar::<f32>()?);
        }
    }
    let out = root.join("models/severity");
    std::fs::create_dir_all(&out)?;
    let tensors: HashMap<String, Tensor> =
        [("weight".to_owned(), w.as_tensor().clone()), ("bias".to_owned(), b.as_tensor().clone())].into();
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    std::fs::write(out.join("labels.txt"), labels.join("\n") + "\n")?;
    println!("wrote {}", out.display());
    Ok(())
}
