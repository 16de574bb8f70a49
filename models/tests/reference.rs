//! The Rust embedder against vectors Python onnxruntime produced from the same files
//! (models/tools/reference_embeddings.py).

mod common;

use murmur_models::{EmbedderOptions, pooling::cosine};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    model_sha256: String,
    tokenizer_sha256: String,
    max_tokens: usize,
    embeddings: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    text: String,
    vector: Vec<f32>,
}

fn reference() -> Reference {
    let reference: Reference = common::read_json("reference_embeddings.json");
    let config = common::default_config();
    // The reference is only meaningful for the very files the Rust side loads.
    assert_eq!(
        Some(reference.model_sha256.as_str()),
        config.onnx_sha256.as_deref()
    );
    assert_eq!(
        Some(reference.tokenizer_sha256.as_str()),
        config.tokenizer_sha256.as_deref()
    );
    assert_eq!(reference.max_tokens, config.max_tokens);
    reference
}

fn assert_matches_reference(label: &str, rows: &[Row], vectors: impl Iterator<Item = Vec<f32>>) {
    let mut checked = 0;
    for (row, vector) in rows.iter().zip(vectors) {
        assert_eq!(vector.len(), 384, "{label}: dimension of {:?}", row.text);
        let similarity = cosine(&vector, &row.vector);
        assert!(
            similarity >= 0.9999,
            "{label}: cosine {similarity} < 0.9999 for {:?}",
            row.text
        );
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "{label}: norm {norm} for {:?}",
            row.text
        );
        checked += 1;
    }
    assert_eq!(checked, rows.len(), "{label}: every reference row was compared");
}

#[test]
fn each_text_alone_matches_python_onnxruntime() {
    let reference = reference();
    let embedder = common::default_embedder();
    assert_eq!(embedder.model_id(), "all-MiniLM-L6-v2-int8");
    assert_eq!(embedder.dimension(), 384);
    let vectors = reference
        .embeddings
        .iter()
        .map(|row| embedder.embed(&row.text).expect("embeds"));
    assert_matches_reference("alone", &reference.embeddings, vectors);
}

#[test]
fn padded_batches_match_python_onnxruntime() {
    let reference = reference();
    let texts: Vec<&str> = reference.embeddings.iter().map(|r| r.text.as_str()).collect();
    // One batch of all texts (heavy padding, including one truncated text), then batches of 5,
    // each with and without length bucketing (which reorders texts internally).
    for (max_batch, length_bucketing) in [(64, false), (5, false), (64, true), (5, true)] {
        let options = EmbedderOptions {
            max_batch,
            length_bucketing,
            ..EmbedderOptions::default()
        };
        let cache = common::cache();
        let embedder =
            murmur_models::load_embedder(&cache, None, &common::default_config(), &options).expect("loads");
        let vectors = embedder.embed_batch(&texts).expect("embeds");
        assert_eq!(vectors.len(), texts.len());
        let label = format!("max_batch {max_batch}, bucketing {length_bucketing}");
        assert_matches_reference(&label, &reference.embeddings, vectors.into_vecs().into_iter());
        let stats = embedder.stats();
        assert_eq!(stats.texts, texts.len() as u64, "{label}");
        assert!(
            stats.padded_tokens >= stats.tokens && stats.tokens > 0,
            "{label}: {stats:?}"
        );
    }
}

#[test]
fn length_bucketing_pads_less_than_arrival_order() {
    let reference = reference();
    let texts: Vec<&str> = reference.embeddings.iter().map(|r| r.text.as_str()).collect();
    let padded = |length_bucketing| {
        let options = EmbedderOptions {
            length_bucketing,
            ..EmbedderOptions::default()
        };
        let embedder =
            murmur_models::load_embedder(&common::cache(), None, &common::default_config(), &options)
                .unwrap();
        embedder.embed_batch(&texts).unwrap();
        embedder.stats()
    };
    let (plain, bucketed) = (padded(false), padded(true));
    assert_eq!(plain.tokens, bucketed.tokens, "same real tokens either way");
    assert!(
        bucketed.padded_tokens * 2 < plain.padded_tokens,
        "bucketing should at least halve padding on mixed lengths: {bucketed:?} vs {plain:?}"
    );
}

#[test]
fn an_empty_call_embeds_nothing() {
    let embedder = common::default_embedder();
    let none: [&str; 0] = [];
    let vectors = embedder.embed_batch(&none).expect("empty input is fine");
    assert!(vectors.is_empty());
    assert_eq!(embedder.stats().batches, 0);
}

#[test]
fn concurrent_and_async_callers_get_the_same_vectors() {
    let reference = reference();
    let embedder = common::default_embedder();
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let embedder = embedder.clone();
            let rows = &reference.embeddings;
            scope.spawn(move || {
                let mine: Vec<&Row> = rows.iter().skip(worker).step_by(4).collect();
                let texts: Vec<&str> = mine.iter().map(|r| r.text.as_str()).collect();
                let vectors = embedder.embed_batch(&texts).expect("embeds");
                for (row, vector) in mine.iter().zip(vectors.rows()) {
                    assert!(
                        cosine(vector, &row.vector) >= 0.9999,
                        "thread {worker}: {:?}",
                        row.text
                    );
                }
            });
        }
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let texts: Vec<String> = reference.embeddings.iter().map(|r| r.text.clone()).collect();
    let vectors = runtime
        .block_on(embedder.embed_batch_async(texts))
        .expect("embeds on the blocking pool");
    assert_matches_reference("async", &reference.embeddings, vectors.into_vecs().into_iter());
}
