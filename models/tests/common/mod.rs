//! Shared by the integration tests: the fetched cache and the committed test data.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use murmur_models::{CacheDir, Embedder, ModelConfig, artifacts};

pub fn cache() -> CacheDir {
    let cache = CacheDir::resolve(None).expect("a cache directory");
    for artifact in artifacts::default_artifacts() {
        let path = cache.join(artifact.dest);
        assert!(
            path.is_file(),
            "{} is missing: run `cargo run -p murmur-models -- fetch --test-fixtures` first",
            path.display()
        );
    }
    cache
}

pub fn default_config() -> ModelConfig {
    ModelConfig::default_model(&cache())
}

pub fn default_embedder() -> Embedder {
    murmur_models::load_default_embedder(&cache()).expect("the default model loads")
}

pub fn testdata(name: &str) -> PathBuf {
    // At run time: a test binary reused from another clone sharing the target directory would
    // otherwise read that clone's files.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    crate_dir.join("testdata").join(name)
}

pub fn read_json<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let text = std::fs::read_to_string(testdata(name)).expect("test data is committed");
    serde_json::from_str(&text).expect("test data parses")
}
