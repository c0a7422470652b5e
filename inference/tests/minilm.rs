//! all-MiniLM-L6-v2 on candle against the real model: embeddings match the
//! reference vectors made once by sentence-transformers (cosine >= 0.9999
//! each) and candle-transformers' `BertModel` (the encoder is our own,
//! `fleet_inference::bert`), are unit length, do not depend on the batch they
//! ride in, and rank related sentences above unrelated ones.
//!
//! The model comes from `scripts/fetch-model` (scripts/test runs it) into
//! `target/models`, or `FLEET_MODEL_DIR`.

use std::path::PathBuf;

use fleet_inference::{ModelRegistry, SentenceEmbedder, cosine};

fn registry() -> Option<ModelRegistry> {
    let dir = std::env::var_os("FLEET_MODEL_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models"), PathBuf::from);
    let reg = ModelRegistry::open(&dir).ok().filter(|r| r.get("minilm").is_ok());
    if reg.is_none() {
        let why = format!("model minilm not in {} (run scripts/fetch-model)", dir.display());
        assert!(std::env::var("FLEET_REQUIRE_MODEL").as_deref() != Ok("1"), "{why} (FLEET_REQUIRE_MODEL = 1)");
        skipped(&why);
    }
    reg
}

/// Says on stderr that a test skipped, and counts it in `FLEET_SKIP_LOG` (scripts/test
/// prints the count); the same rule as `fleet_tests::need`, which this crate cannot use.
fn skipped(why: &str) {
    eprintln!("SKIPPED fleet-inference minilm: {why}");
    if let Some(path) = std::env::var_os("FLEET_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = std::io::Write::write_all(&mut f, format!("fleet-inference minilm: {why}\n").as_bytes());
    }
}

fn embedder() -> Option<SentenceEmbedder> {
    let reg = registry()?;
    Some(SentenceEmbedder::load(reg.get("minilm").expect("checked above")).expect("load minilm"))
}

/// The same sentences through candle-transformers' BERT (padded batch,
/// attention mask), mean-pooled under the mask and normalised.
fn candle_transformers_embeddings(texts: &[&str]) -> Vec<Vec<f32>> {
    use candle_core::{DType, Device, Tensor};
    use candle_transformers::models::bert::{BertModel, Config};
    let reg = registry().expect("checked by the caller");
    let model = reg.get("minilm").unwrap();
    let file = |f: &str| model.file(f).unwrap();
    let config: Config = serde_json::from_slice(&std::fs::read(file("config.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(file("model.safetensors"), &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let bert = BertModel::load(vb, &config).unwrap();
    let mut tok = tokenizers::Tokenizer::from_file(file("tokenizer.json")).unwrap();
    tok.with_padding(Some(tokenizers::PaddingParams::default()));
    tok.with_truncation(Some(tokenizers::TruncationParams { max_length: 256, ..Default::default() })).unwrap();
    let enc = tok.encode_batch(texts.to_vec(), true).unwrap();
    let (n, len) = (enc.len(), enc[0].len());
    let cat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| {
        Tensor::from_vec(enc.iter().flat_map(|e| f(e).to_vec()).collect::<Vec<u32>>(), (n, len), &Device::Cpu).unwrap()
    };
    let (ids, types, mask) = (cat(&|e| e.get_ids()), cat(&|e| e.get_type_ids()), cat(&|e| e.get_attention_mask()));
    let hidden = bert.forward(&ids, &types, Some(&mask)).unwrap();
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let mean = hidden.broadcast_mul(&m).unwrap().sum(1).unwrap().broadcast_div(&m.sum(1).unwrap()).unwrap();
    let norm = mean.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
    mean.broadcast_div(&norm).unwrap().to_vec2::<f32>().unwrap()
}

#[derive(serde::Deserialize)]
struct Reference {
    sentences: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

#[test]
fn embeddings_match_sentence_transformers() {
    let Some(e) = embedder() else { return };
    let r: Reference = serde_json::from_str(include_str!("reference/minilm.json")).expect("reference json");
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    // In one batch, and one by one: the same answer.
    let batched = e.embed(&texts).unwrap();
    for (i, (t, want)) in texts.iter().zip(&r.vectors).enumerate() {
        let alone = e.embed(&[t]).unwrap().remove(0);
        for (how, got) in [("batched", &batched[i]), ("alone", &alone)] {
            let c = cosine(got, want);
            assert!(c >= 0.9999, "sentence {i} ({how}): cosine {c} vs sentence-transformers");
            let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "sentence {i}: norm {norm}");
        }
    }
}

#[test]
fn our_encoder_matches_candle_transformers_bert() {
    let Some(e) = embedder() else { return };
    let r: Reference = serde_json::from_str(include_str!("reference/minilm.json")).expect("reference json");
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    let ours = e.embed(&texts).unwrap();
    for (i, (a, b)) in ours.iter().zip(candle_transformers_embeddings(&texts)).enumerate() {
        let c = cosine(a, &b);
        assert!(c >= 0.99999, "sentence {i}: cosine {c} vs candle-transformers' BertModel");
    }
}

#[test]
fn related_sentences_are_closer_than_unrelated_ones() {
    let Some(e) = embedder() else { return };
    let v =
        e.embed(&["The node's battery is almost empty.", "Battery level is critically low.", "I like pizza."]).unwrap();
    assert_eq!(v[0].len(), 384);
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.3);
}

#[test]
fn oversized_input_is_refused_with_a_reason() {
    let Some(e) = embedder() else { return };
    let big = "x".repeat(fleet_inference::embed::MAX_INPUT_BYTES + 1);
    let err = e.embed(&[&big]).unwrap_err().to_string();
    assert!(err.contains("shorten"), "{err}");
}

#[test]
fn one_rayon_thread_serves_two_workers_on_their_own_threads() {
    // As a node runs jobs: RAYON_NUM_THREADS=1 and a worker thread per core.
    // nextest runs each test in its own process, so the global pool is ours.
    if rayon::ThreadPoolBuilder::new().num_threads(1).build_global().is_err() {
        // Only under `cargo test` (one process, many tests); nextest runs each test alone.
        skipped("rayon's global pool was built by an earlier test in this process (run under nextest)");
        return;
    }
    let Some(e) = embedder() else { return };
    let e = std::sync::Arc::new(e);
    let r: Reference = serde_json::from_str(include_str!("reference/minilm.json")).expect("reference json");
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (e, r) = (e.clone(), (r.sentences.clone(), r.vectors.clone()));
            std::thread::spawn(move || {
                for (i, (t, want)) in r.0.iter().zip(&r.1).enumerate().skip(w).step_by(2) {
                    let got = e.embed(&[t.as_str()]).unwrap().remove(0);
                    let c = cosine(&got, want);
                    assert!(c >= 0.9999, "sentence {i} on worker {w}: cosine {c}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
}
