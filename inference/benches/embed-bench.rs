//! `embed-bench`: all-MiniLM-L6-v2 sentences/s on candle at batch 1 and 32,
//! and, when Python with sentence-transformers is there, the same sentences
//! through PyTorch in the same run (same threads). Last line:
//! `candle_sentences_per_s=<batch-32 rate>` plus ` candle_vs_pytorch_ratio=<y>`
//! when PyTorch was measured.
//!
//! `cargo run --release --bin embed-bench [-- --model-dir target/models --python /opt/st-venv/bin/python
//!  --sentences 256 --threads 2 --rounds 3]`
//!
//! Rounds alternate candle and PyTorch; each side's best round is reported.
//!
//! Also measured: batch 1 as a node serves jobs, one sentence per job on a
//! pool of `--threads` workers with one candle thread each (a child process
//! with `RAYON_NUM_THREADS=1`), the setting docs/routing.md recommends.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use fleet_inference::{ModelRegistry, SentenceEmbedder};

const WORDS: [&str; 24] = [
    "node",
    "battery",
    "temperature",
    "the",
    "greenhouse",
    "sensor",
    "reports",
    "a",
    "fan",
    "is",
    "running",
    "low",
    "power",
    "solar",
    "panel",
    "edge",
    "inference",
    "model",
    "cloud",
    "link",
    "down",
    "again",
    "after",
    "update",
];

/// Deterministic sentences of 6 to 30 words.
fn sentences(n: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(42);
    (0..n)
        .map(|_| {
            let len = rng.usize(6..=30);
            (0..len).map(|_| WORDS[rng.usize(..WORDS.len())]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

const PYTORCH: &str = r#"
import json, sys, time
import torch
from sentence_transformers import SentenceTransformer
model_dir, threads, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
texts = json.load(open(path))
m = SentenceTransformer(model_dir, device="cpu")
m.encode(texts[:8], batch_size=8)
out = {}
for bs in (1, 32):
    t = time.perf_counter()
    m.encode(texts, batch_size=bs, normalize_embeddings=True)
    out[bs] = len(texts) / (time.perf_counter() - t)
print(json.dumps(out))
"#;

/// mimalloc: model inference allocates and frees megabytes per layer; glibc
/// hands such blocks back to the kernel and faults them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = arg(&args, "--model-dir").map_or_else(|| PathBuf::from("target/models"), PathBuf::from);
    let n: usize = arg(&args, "--sentences").map_or(Ok(256), |v| v.parse())?;
    let threads: usize = arg(&args, "--threads").map_or(Ok(2), |v| v.parse())?;
    let python = arg(&args, "--python").unwrap_or_else(|| "python3".into());
    if args.iter().any(|a| a == "--pool-child") {
        return pool_child(&dir, n, threads);
    }
    let rounds: usize = arg(&args, "--rounds").map_or(Ok(3), |v| v.parse())?;
    let reg = ModelRegistry::open(&dir)?;
    let model = reg.get("minilm").map_err(|e| anyhow::anyhow!("{e} (run scripts/fetch-model first)"))?;
    let e = SentenceEmbedder::load(model)?;
    let texts = sentences(n);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    e.embed(&refs[..8.min(n)])?; // warm up
    let json = std::env::temp_dir().join(format!("embed-bench-{}.json", std::process::id()));
    std::fs::write(&json, serde_json::to_vec(&texts)?)?;
    let model_dir = model.dir.display().to_string();

    // Rounds alternate candle and PyTorch so that both see the same machine
    // (a VM's neighbours come and go); each side's best round counts.
    let (mut candle, mut pytorch, mut pooled) = ([0.0f64; 2], None::<[f64; 2]>, None::<f64>);
    for round in 1..=rounds.max(1) {
        for (i, bs) in [1usize, 32].into_iter().enumerate() {
            let t = Instant::now();
            // As sentence-transformers' encode(texts, batch_size=bs): the whole list, cut into batches.
            e.embed_batched(&refs, bs)?;
            let rate = n as f64 / t.elapsed().as_secs_f64();
            println!("round {round}: candle batch {bs}: {rate:.1} sentences/s ({n} sentences)");
            candle[i] = candle[i].max(rate);
        }
        // Batch 1 as a node's job pool runs it, in a child with one candle thread per worker.
        let p = Command::new(std::env::current_exe()?)
            .args(["--pool-child", "--model-dir", &dir.display().to_string()])
            .args(["--sentences", &n.to_string(), "--threads", &threads.to_string()])
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok());
        if let Some(p) = p {
            println!("round {round}: candle batch 1, {threads} workers x 1 thread: {p:.1} sentences/s");
            pooled = Some(pooled.map_or(p, |b: f64| b.max(p)));
        }
        // PyTorch + sentence-transformers, if this Python has them.
        match run_pytorch(&python, &model_dir, threads, &json) {
            Ok([p1, p32]) => {
                println!(
                    "round {round}: pytorch batch 1: {p1:.1} sentences/s; batch 32: {p32:.1} sentences/s (torch threads {threads})"
                );
                pytorch = Some(pytorch.map_or([p1, p32], |[b1, b32]| [b1.max(p1), b32.max(p32)]));
            }
            Err(why) => {
                println!("PyTorch not measured: {why}");
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&json);
    println!("best of {rounds} rounds: candle batch 1 {:.1}, batch 32 {:.1} sentences/s", candle[0], candle[1]);
    let mut last = format!("candle_sentences_per_s={:.1}", candle[1]);
    if let Some([p1, p32]) = pytorch {
        println!("best of {rounds} rounds: pytorch batch 1 {p1:.1}, batch 32 {p32:.1} sentences/s");
        println!("candle/pytorch: batch 1 {:.2}, batch 32 {:.2}", candle[0] / p1, candle[1] / p32);
        if let Some(p) = pooled {
            println!("candle/pytorch: batch 1 on the job pool {:.2}", p / p1);
        }
        last.push_str(&format!(" candle_vs_pytorch_ratio={:.2}", candle[1] / p32));
    }
    println!("{last}");
    Ok(())
}

/// One PyTorch measurement: sentences/s at batch 1 and 32.
fn run_pytorch(python: &str, model_dir: &str, threads: usize, json: &std::path::Path) -> Result<[f64; 2], String> {
    let o = Command::new(python)
        .args(["-c", PYTORCH, model_dir, &threads.to_string(), &json.display().to_string()])
        .output()
        .map_err(|e| format!("cannot run {python}: {e} (pass --python with sentence-transformers installed)"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        return Err(format!("{python} failed: {}", err.lines().last().unwrap_or("")));
    }
    let v: serde_json::Value = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("{python} printed no result"))?;
    let rate = |bs: &str| v.get(bs).and_then(serde_json::Value::as_f64).ok_or_else(|| format!("no batch {bs} rate"));
    Ok([rate("1")?, rate("32")?])
}

/// The child: `threads` workers, each embedding its share one sentence at a time.
fn pool_child(dir: &std::path::Path, n: usize, threads: usize) -> anyhow::Result<()> {
    let reg = ModelRegistry::open(dir)?;
    let e = std::sync::Arc::new(SentenceEmbedder::load(reg.get("minilm")?)?);
    let texts = std::sync::Arc::new(sentences(n));
    e.embed(&[texts[0].as_str()])?; // warm up
    let t = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|w| {
            let (e, texts) = (e.clone(), texts.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                for s in texts.iter().skip(w).step_by(threads.max(1)) {
                    e.embed(&[s.as_str()])?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    println!("{:.1}", n as f64 / t.elapsed().as_secs_f64());
    Ok(())
}
