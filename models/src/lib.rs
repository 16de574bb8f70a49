//! On-device sentence embeddings for Murmur.
//!
//! Everything about turning text into vectors lives here: fetching pinned model and runtime
//! files ([`fetch`]), loading ONNX Runtime dynamically ([`runtime`]), and the [`Embedder`]
//! itself (tokenise, infer, pool, normalise). Agents, the manager and the simulator only see
//! [`Embedder`], its model id and its dimension.

pub mod artifacts;
pub mod batching;
pub mod cache;
pub mod config;
pub mod digest;
pub mod embedder;
pub mod error;
pub mod fetch;
pub mod pooling;
pub mod runtime;

pub use cache::CacheDir;
pub use config::{ModelConfig, Pooling};
pub use embedder::{Device, Embedder, EmbedderOptions, EmbedderStats, Embeddings};
pub use error::{ModelError, Result};
pub use runtime::Runtime;

use std::path::Path;

/// Loads the runtime (explicit path, `ORT_DYLIB_PATH`, or the cache) and the model `config`.
pub fn load_embedder(
    cache: &CacheDir,
    runtime_path: Option<&Path>,
    config: &ModelConfig,
    options: &EmbedderOptions,
) -> Result<Embedder> {
    let runtime = Runtime::load(&runtime::locate_runtime(runtime_path, cache)?)?;
    Embedder::load(&runtime, config, options)
}

/// The default model from the cache laid out by `murmur-models fetch`, on the CPU.
pub fn load_default_embedder(cache: &CacheDir) -> Result<Embedder> {
    load_embedder(
        cache,
        None,
        &ModelConfig::default_model(cache),
        &EmbedderOptions::default(),
    )
}

/// Fetches the default model and ONNX Runtime into `cache` unless every file is already there
/// (verified when it was fetched). For daemons that should start on a fresh machine.
pub fn ensure_default_model(cache: &CacheDir) -> Result<()> {
    let wanted = artifacts::default_artifacts();
    if wanted.iter().all(|a| cache.join(a.dest).is_file()) {
        return Ok(());
    }
    tracing::info!(cache = %cache.root().display(), "fetching the default embedding model and ONNX Runtime");
    fetch::Fetcher::new(cache.clone()).fetch_all(&wanted, |_| {})?;
    Ok(())
}
