//! `embed-bench`: all-MiniLM-L6-v2 sentences/s on candle at batch 1 and 32,
//! and, when Python with sentence-transformers is there, the same sentences
//! through PyTorch in the same run (same threads). Last line:
//! `candle_sentences_per_s=<batch-32 rate>` plus ` candle_vs_pytorch_ratio=<y>`
//! when PyTorch was measured.
//!
//! `cargo run --release --bin embed-bench [-- --model-dir target/models --python /opt/st-venv/bin/python
//!  --sentences 256 --threads 2]`
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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = arg(&args, "--model-dir").map_or_else(|| PathBuf::from("target/models"), PathBuf::from);
    let n: usize = arg(&args, "--sentences").map_or(Ok(256), |v| v.parse())?;
    let threads: usize = arg(&args, "--threads").map_or(Ok(2), |v| v.parse())?;
    let python = arg(&args, "--python").unwrap_or_else(|| "python3".into());
    if args.iter().any(|a| a == "--pool-child") {
        return pool_child(&dir, n, threads);
    }
    let reg = ModelRegistry::open(&dir)?;
    let model = reg.get("minilm").map_err(|e| anyhow::anyhow!("{e} (run scripts/fetch-model first)"))?;
    let e = SentenceEmbedder::load(model)?;
    let texts = sentences(n);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    e.embed(&refs[..8.min(n)])?; // warm up
    let mut candle = [0.0f64; 2];
    for (i, bs) in [1usize, 32].into_iter().enumerate() {
        let t = Instant::now();
        // As sentence-transformers' encode(texts, batch_size=bs): the whole list, cut into batches.
        e.embed_batched(&refs, bs)?;
        candle[i] = n as f64 / t.elapsed().as_secs_f64();
        println!("candle batch {bs}: {:.1} sentences/s ({n} sentences)", candle[i]);
    }

    // Batch 1 as a node's job pool runs it, in a child with one candle thread per worker.
    let pooled = Command::new(std::env::current_exe()?)
        .args(["--pool-child", "--model-dir", &dir.display().to_string()])
        .args(["--sentences", &n.to_string(), "--threads", &threads.to_string()])
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok());
    if let Some(p) = pooled {
        println!("candle batch 1, {threads} workers x 1 thread: {p:.1} sentences/s");
    }

    // PyTorch + sentence-transformers, if this Python has them.
    let json = std::env::temp_dir().join(format!("embed-bench-{}.json", std::process::id()));
    std::fs::write(&json, serde_json::to_vec(&texts)?)?;
    let model_dir = model.dir.display().to_string();
    let py = Command::new(&python)
        .args(["-c", PYTORCH, &model_dir, &threads.to_string(), &json.display().to_string()])
        .output();
    let _ = std::fs::remove_file(&json);
    let pytorch: Option<serde_json::Value> = match py {
        Ok(o) if o.status.success() => {
            String::from_utf8_lossy(&o.stdout).lines().last().and_then(|l| serde_json::from_str(l).ok())
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            println!("PyTorch not measured: {python} failed: {}", err.lines().last().unwrap_or(""));
            None
        }
        Err(e) => {
            println!(
                "PyTorch not measured: cannot run {python}: {e} (pass --python with sentence-transformers installed)"
            );
            None
        }
    };
    let mut last = format!("candle_sentences_per_s={:.1}", candle[1]);
    if let Some(p) = pytorch {
        let rate = |bs: &str| p.get(bs).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
        let (p1, p32) = (rate("1"), rate("32"));
        println!("pytorch batch 1: {p1:.1} sentences/s; batch 32: {p32:.1} sentences/s (torch threads {threads})");
        println!("candle/pytorch: batch 1 {:.2}, batch 32 {:.2}", candle[0] / p1, candle[1] / p32);
        if let Some(p) = pooled {
            println!("candle/pytorch: batch 1 on the job pool {:.2}", p / p1);
        }
        last.push_str(&format!(" candle_vs_pytorch_ratio={:.2}", candle[1] / p32));
    }
    println!("{last}");
    Ok(())
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
