//! Embedding throughput of the Rust embedder; the Python peer is models/tools/bench_embed.py.
//! Both print one JSON object in the same shape; scripts/bench-embed.sh runs them side by side.
//!
//! cargo bench -p murmur-models --bench embed_throughput -- [--seconds S] [--batches 1,8,32] [--plain]
//!     [--device cuda] [--sentences FILE]
//!
//! `--device cuda` needs a build with `--features cuda` and a CUDA build of ONNX Runtime (the
//! `onnxruntime-gpu` wheel's library) in `ORT_DYLIB_PATH`.
//!
//! `--plain` turns length bucketing off, so each call's texts run in one padded batch exactly
//! as the Python peer runs them: the like-for-like comparison of the two implementations.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use murmur_models::{
    CacheDir, Device, Embedder, EmbedderOptions, ModelConfig, Runtime, runtime::locate_runtime,
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seconds: f64 = value("--seconds")
        .map_or(Ok(5.0), |s| s.parse())
        .context("--seconds")?;
    let batches: Vec<usize> = value("--batches")
        .unwrap_or_else(|| "1,8,32".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("--batches")?;

    // `--sentences` for a copy of the binary run away from its checkout (a GPU machine).
    let sentences_path = value("--sentences")
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/bench_sentences.txt").to_owned());
    let corpus = std::fs::read_to_string(&sentences_path)
        .with_context(|| format!("reading the benchmark sentences {sentences_path}"))?;
    let sentences: Vec<&str> = corpus.lines().filter(|l| !l.trim().is_empty()).collect();

    let cache = CacheDir::resolve(None)?;
    let started = Instant::now();
    let runtime = Runtime::load(&locate_runtime(None, &cache)?)?;
    let plain = args.iter().any(|a| a == "--plain");
    let device = match value("--device").as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda { device_id: 0 },
        Some(other) => anyhow::bail!("--device {other}: expected cpu or cuda"),
    };
    let options = EmbedderOptions {
        length_bucketing: !plain,
        device,
        ..EmbedderOptions::default()
    };
    let embedder = Embedder::load(&runtime, &ModelConfig::default_model(&cache), &options)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let rss_after_load = proc_status_kib("VmRSS:");

    let mut throughput = serde_json::Map::new();
    for &batch in &batches {
        let per_second = measure(&embedder, &sentences, batch, Duration::from_secs_f64(seconds))?;
        throughput.insert(batch.to_string(), per_second.into());
    }
    let report = serde_json::json!({
        "implementation": format!("{}{}", if plain { "rust-plain" } else { "rust" }, if device == Device::Cpu { "" } else { "-cuda" }),
        "sentences": sentences.len(),
        "load_seconds": load_seconds,
        "rss_after_load_kib": rss_after_load,
        "peak_rss_kib": proc_status_kib("VmHWM:"),
        "sentences_per_second": throughput,
    });
    println!("{report}");
    Ok(())
}

/// Sentences per second embedding `sentences` in chunks of `batch`, over at least `budget`
/// and at least one full pass, after one warm-up chunk.
fn measure(embedder: &Embedder, sentences: &[&str], batch: usize, budget: Duration) -> Result<f64> {
    embedder.embed_batch(&sentences[..batch.min(sentences.len())])?;
    let started = Instant::now();
    let mut done = 0usize;
    'outer: loop {
        for chunk in sentences.chunks(batch) {
            embedder.embed_batch(chunk)?;
            done += chunk.len();
            if done >= sentences.len() && started.elapsed() >= budget {
                break 'outer;
            }
        }
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
