//! Every failure the embedder names comes back as that error, and leaves the embedder usable.

mod common;

use std::path::PathBuf;

use murmur_models::{Device, EmbedderOptions, ModelConfig, ModelError};

fn load(config: &ModelConfig, options: &EmbedderOptions) -> Result<murmur_models::Embedder, ModelError> {
    murmur_models::load_embedder(&common::cache(), None, config, options)
}

#[test]
fn missing_model_file() {
    let mut config = common::default_config();
    config.onnx = PathBuf::from("/nonexistent/model.onnx");
    let err = load(&config, &EmbedderOptions::default()).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingFile { path } if path == &config.onnx),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_file() {
    let mut config = common::default_config();
    config.tokenizer = PathBuf::from("/nonexistent/tokenizer.json");
    let err = load(&config, &EmbedderOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err}");
}

#[test]
fn corrupt_model_file_without_pinned_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::default_config();
    let real = std::fs::read(&config.onnx).unwrap();
    // A truncated download: the first half of the real model.
    let truncated = dir.path().join("model.onnx");
    std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
    config.onnx = truncated;
    config.onnx_sha256 = None;
    let err = load(&config, &EmbedderOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::CorruptModel { .. }), "{err}");

    std::fs::write(&config.onnx, b"this is not protobuf").unwrap();
    let err = load(&config, &EmbedderOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::CorruptModel { .. }), "{err}");
}

#[test]
fn corrupt_model_file_with_pinned_checksum_fails_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::default_config();
    let mut bytes = std::fs::read(&config.onnx).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff; // one flipped byte
    let copy = dir.path().join("model.onnx");
    std::fs::write(&copy, &bytes).unwrap();
    config.onnx = copy;
    let err = load(&config, &EmbedderOptions::default()).unwrap_err();
    match err {
        ModelError::ChecksumMismatch { expected, actual, .. } => {
            assert_eq!(
                Some(expected.as_str()),
                common::default_config().onnx_sha256.as_deref()
            );
            assert_ne!(expected, actual);
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
}

#[test]
fn corrupt_tokenizer_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::default_config();
    config.tokenizer = dir.path().join("tokenizer.json");
    config.tokenizer_sha256 = None;
    std::fs::write(&config.tokenizer, b"{\"version\": \"1.0\", \"model\": 42}").unwrap();
    let err = load(&config, &EmbedderOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::CorruptTokenizer { .. }), "{err}");
}

#[test]
fn empty_and_whitespace_text() {
    let embedder = common::default_embedder();
    assert!(matches!(
        embedder.embed(""),
        Err(ModelError::EmptyText { index: 0 })
    ));
    let err = embedder
        .embed_batch(&["fine", " \t\n ", "also fine"])
        .unwrap_err();
    assert!(matches!(err, ModelError::EmptyText { index: 1 }), "{err}");
    // The refusal changed nothing: the same embedder still embeds.
    assert_eq!(embedder.embed("fine").unwrap().len(), 384);
}

#[test]
fn text_over_the_limit() {
    let embedder = common::default_embedder();
    let limit = embedder.max_text_bytes();
    let at_limit = "x".repeat(limit);
    assert_eq!(
        embedder.embed(&at_limit).unwrap().len(),
        384,
        "exactly the limit is accepted"
    );
    let over = "x".repeat(limit + 1);
    let err = embedder.embed_batch(&["ok", over.as_str()]).unwrap_err();
    assert!(
        matches!(err, ModelError::TextTooLong { index: 1, bytes, limit: l } if bytes == limit + 1 && l == limit),
        "{err}"
    );
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    let options = EmbedderOptions {
        device: Device::Cuda { device_id: 0 },
        ..EmbedderOptions::default()
    };
    let err = load(&common::default_config(), &options).unwrap_err();
    assert!(matches!(err, ModelError::CudaUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("CUDA"), "{err}");
}

#[test]
fn cuda_with_fallback_runs_on_cpu() {
    let options = EmbedderOptions {
        device: Device::Cuda { device_id: 0 },
        cuda_fallback_to_cpu: true,
        ..EmbedderOptions::default()
    };
    let embedder = load(&common::default_config(), &options).expect("falls back");
    assert_eq!(embedder.device(), Device::Cpu);
    assert_eq!(embedder.embed("still works").unwrap().len(), 384);
}

#[test]
fn zero_batch_size_is_refused() {
    let options = EmbedderOptions {
        max_batch: 0,
        ..EmbedderOptions::default()
    };
    let err = load(&common::default_config(), &options).unwrap_err();
    assert!(matches!(err, ModelError::InvalidConfig { .. }), "{err}");
}

#[test]
fn missing_runtime_library() {
    let config = common::default_config();
    let err = murmur_models::load_embedder(
        &common::cache(),
        Some(std::path::Path::new("/nonexistent/libonnxruntime.so")),
        &config,
        &EmbedderOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::RuntimeNotFound { .. }), "{err}");
}
