//! A user's own ONNX model described by a TOML config: another dimension, another pooling,
//! other inputs and output name (models/testdata/tiny-model, made by tools/make_tiny_model.py).

mod common;

use murmur_models::{EmbedderOptions, ModelConfig, ModelError, Pooling};

/// Copies the tiny model and its config next to the default tokenizer, as a user would lay it out.
fn tiny_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["tiny.onnx", "murmur-model.toml"] {
        std::fs::copy(common::testdata("tiny-model").join(name), dir.path().join(name)).expect("copy");
    }
    std::fs::copy(
        common::default_config().tokenizer,
        dir.path().join("tokenizer.json"),
    )
    .expect("copy tokenizer");
    dir
}

/// What the tiny model computes, by hand: the normalised sum of sin-table rows of the token ids.
fn expected(text: &str, tokenizer: &tokenizers::Tokenizer, max_tokens: usize) -> Vec<f32> {
    // Truncation keeps [CLS] and [SEP] and cuts the words between them.
    let words = tokenizer.encode(text, false).expect("tokenizes");
    let words = &words.get_ids()[..words.get_ids().len().min(max_tokens - 2)];
    let special = |token| tokenizer.token_to_id(token).expect("BERT special token");
    let ids = std::iter::once(special("[CLS]"))
        .chain(words.iter().copied())
        .chain(std::iter::once(special("[SEP]")));
    let mut sum = [0f32; 16];
    for id in ids {
        let row = (id % 64) as usize;
        for (j, acc) in sum.iter_mut().enumerate() {
            *acc += ((row * 16 + j) as f64).sin() as f32;
        }
    }
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    sum.iter().map(|v| v / norm).collect()
}

#[test]
fn own_model_with_cls_pooling_and_16_dimensions() {
    let dir = tiny_model_dir();
    let config = ModelConfig::from_toml_file(&dir.path().join("murmur-model.toml")).expect("config loads");
    assert_eq!(config.pooling, Pooling::Cls);
    let embedder = murmur_models::load_embedder(&common::cache(), None, &config, &EmbedderOptions::default())
        .expect("loads");
    assert_eq!(embedder.model_id(), "murmur-tiny-cls-16");
    assert_eq!(
        embedder.dimension(),
        16,
        "discovered from a symbolic output shape"
    );

    let mut tokenizer = tokenizers::Tokenizer::from_file(&config.tokenizer).expect("tokenizer");
    // tokenizer.json pads every text to 128; the hand computation wants only the real tokens.
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).expect("no truncation");
    let long = "many words in a row ".repeat(40);
    let texts = ["short", "a somewhat longer memory about forklifts", long.as_str()];
    let vectors = embedder.embed_batch(&texts).expect("embeds");
    for (text, vector) in texts.iter().zip(vectors.rows()) {
        let want = expected(text, &tokenizer, config.max_tokens);
        for (got, want) in vector.iter().zip(&want) {
            assert!((got - want).abs() < 1e-4, "{text:?}: {vector:?} != {want:?}");
        }
    }
}

#[test]
fn declared_dimension_must_match_the_model() {
    let dir = tiny_model_dir();
    let mut config =
        ModelConfig::from_toml_file(&dir.path().join("murmur-model.toml")).expect("config loads");
    config.dimension = Some(384);
    let err = murmur_models::load_embedder(&common::cache(), None, &config, &EmbedderOptions::default())
        .expect_err("a 16-dimensional model is not 384-dimensional");
    assert!(
        matches!(
            err,
            ModelError::DimensionMismatch {
                expected: 384,
                actual: 16,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn pooling_that_does_not_fit_the_output_is_refused() {
    let dir = tiny_model_dir();
    let mut config =
        ModelConfig::from_toml_file(&dir.path().join("murmur-model.toml")).expect("config loads");
    config.pooling = Pooling::None; // wants a [batch, dim] output; this one is [batch, tokens, dim]
    let err = murmur_models::load_embedder(&common::cache(), None, &config, &EmbedderOptions::default())
        .expect_err("rank mismatch");
    assert!(matches!(err, ModelError::UnsupportedModel { .. }), "{err}");
}
