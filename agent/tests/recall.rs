//! Approximate search quality: recall@10 of the agent's usearch index, at default settings,
//! against exact brute force, over 20k real texts embedded by the real model.

use murmur_agent::index::{IndexSettings, VectorIndex};
use murmur_models::{CacheDir, pooling::cosine};

const MEMORIES: usize = 20_000;
const QUERIES: usize = 200;
const K: usize = 10;

fn corpus() -> Vec<String> {
    let cache = CacheDir::resolve(None).expect("cache dir");
    let path = cache.join("corpus/debian-descriptions.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `python3 scripts/make_corpus.py`", path.display()));
    text.lines().map(str::to_string).collect()
}

#[test]
fn recall_at_10_is_at_least_0_95_over_20k_real_texts() {
    let texts = corpus();
    assert!(
        texts.len() >= MEMORIES + QUERIES,
        "corpus has {} texts",
        texts.len()
    );
    // Queries are texts that are not stored, spread over the corpus.
    let stride = texts.len() / QUERIES;
    let (stored, queries): (Vec<_>, Vec<_>) = texts
        .iter()
        .enumerate()
        .partition(|(i, _)| i % stride != stride / 2 || i / stride >= QUERIES);
    let stored: Vec<&str> = stored
        .into_iter()
        .take(MEMORIES)
        .map(|(_, t)| t.as_str())
        .collect();
    let queries: Vec<&str> = queries
        .into_iter()
        .take(QUERIES)
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!((stored.len(), queries.len()), (MEMORIES, QUERIES));

    let embedder = murmur_models::load_default_embedder(&CacheDir::resolve(None).unwrap()).expect("model");
    let stored_vectors = embedder.embed_batch(&stored).expect("embeds");
    let query_vectors = embedder.embed_batch(&queries).expect("embeds");

    let index = VectorIndex::new(embedder.dimension(), IndexSettings::default()).expect("index");
    for (label, vector) in stored_vectors.rows().enumerate() {
        index.add(label as u64, vector).expect("add");
    }

    let mut found = 0usize;
    for query in query_vectors.rows() {
        let mut exact: Vec<(usize, f32)> = stored_vectors
            .rows()
            .enumerate()
            .map(|(i, v)| (i, cosine(query, v)))
            .collect();
        exact.select_nth_unstable_by(K, |a, b| b.1.total_cmp(&a.1));
        let truth: std::collections::HashSet<u64> = exact[..K].iter().map(|(i, _)| *i as u64).collect();
        let approx = index.search(query, K, None).expect("search");
        assert_eq!(approx.len(), K);
        found += approx.iter().filter(|(label, _)| truth.contains(label)).count();
    }
    let recall = found as f64 / (QUERIES * K) as f64;
    eprintln!("recall@{K} over {MEMORIES} memories, {QUERIES} queries: {recall:.4}");
    assert!(recall >= 0.95, "recall@{K} = {recall:.4}");
}
