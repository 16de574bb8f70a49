//! Each OpenAPI document names exactly the routes its router serves, no more and no fewer; the
//! conformance run (`api_conformance.rs`) then checks what each route accepts and answers.

use std::collections::BTreeSet;

use serde_json::Value;

fn documented(document: &str) -> BTreeSet<String> {
    let spec: Value = serde_json::from_str(document).expect("the document is JSON");
    spec["paths"]
        .as_object()
        .expect("the document has paths")
        .keys()
        .cloned()
        .collect()
}

/// Every `.route("PATH"` in a router's source.
fn routed(source: &str) -> BTreeSet<String> {
    source
        .match_indices(".route(\"")
        .map(|(at, call)| {
            let rest = &source[at + call.len()..];
            rest[..rest.find('"').expect("a closing quote")].to_string()
        })
        .collect()
}

#[test]
fn the_agent_document_names_exactly_its_routes() {
    assert_eq!(
        documented(include_str!("../../docs/agent-openapi.json")),
        routed(include_str!("../../agent/src/api.rs"))
    );
}

#[test]
fn the_manager_document_names_exactly_its_routes() {
    assert_eq!(
        documented(include_str!("../../docs/manager-openapi.json")),
        routed(include_str!("../../manager/src/http.rs"))
    );
}
