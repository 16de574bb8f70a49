//! Semantic sanity on real text: a query is closer to what answers it than to what does not.

mod common;

use murmur_models::pooling::cosine;
use serde::Deserialize;

#[derive(Deserialize)]
struct Triple {
    query: String,
    relevant: String,
    irrelevant: String,
}

#[test]
fn relevant_text_scores_higher_than_irrelevant_text() {
    let triples: Vec<Triple> = common::read_json("semantic_triples.json");
    assert!(triples.len() >= 12);
    let embedder = common::default_embedder();
    let mut failures = Vec::new();
    for triple in &triples {
        let v = embedder
            .embed_batch(&[&triple.query, &triple.relevant, &triple.irrelevant])
            .expect("embeds");
        let relevant = cosine(v.row(0), v.row(1));
        let irrelevant = cosine(v.row(0), v.row(2));
        if relevant <= irrelevant {
            failures.push(format!(
                "{:?}: relevant {relevant:.3} <= irrelevant {irrelevant:.3}",
                triple.query
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
