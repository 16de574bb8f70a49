//! The HTTP API of a real agent process: the happy paths and every kind of bad request.

use murmur_tests::AgentProcess;
use serde_json::{Value, json};

#[test]
fn add_get_search_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);

    let battery = agent.add(json!({
        "text": "The forklift battery in bay 7 is below 20 percent charge.",
        "namespace": "warehouse",
        "tags": ["forklift", "battery"],
        "metadata": { "bay": 7, "site": "north" }
    }));
    let door = agent
        .add(json!({ "text": "The loading dock door was left open overnight.", "namespace": "security" }));
    let batch = agent
        .client
        .post(
            "/v1/memories/batch",
            &json!({ "memories": [
                { "text": "Camera 4 lost its network connection.", "namespace": "security", "tags": ["camera"] },
                { "text": "Coffee was spilled in the break room.", "metadata": { "floor": 2 } }
            ]}),
        )
        .unwrap();
    assert_eq!(batch.status, 201, "{:?}", batch.body);
    assert_eq!(batch.body["ids"].as_array().unwrap().len(), 2);

    let got = agent
        .client
        .get(&format!("/v1/memories/{battery}"))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        got["text"],
        "The forklift battery in bay 7 is below 20 percent charge."
    );
    assert_eq!(got["namespace"], "warehouse");
    assert_eq!(got["metadata"]["bay"], 7);
    assert_eq!(got["tags"], json!(["forklift", "battery"]));
    assert_eq!(got["author"].as_str().unwrap().len(), 64);
    assert!(got.get("vector").is_none());
    let with_vector = agent
        .client
        .get(&format!("/v1/memories/{battery}?include_vector=true"))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(with_vector["vector"].as_array().unwrap().len(), 384);

    let hits = agent.search(json!({ "query": "which vehicle is running out of power?", "k": 2 }));
    assert_eq!(hits[0]["id"], battery.as_str(), "{hits:#?}");
    assert!(hits[0]["score"].as_f64().unwrap() > hits[1]["score"].as_f64().unwrap());

    // Search by vector: the battery memory's own vector finds it first with score ~1.
    let by_vector = agent.search(json!({ "vector": with_vector["vector"], "k": 1 }));
    assert_eq!(by_vector[0]["id"], battery.as_str());
    assert!(by_vector[0]["score"].as_f64().unwrap() > 0.99);

    // Filters: namespace, tags, metadata.
    let security = agent.search(json!({ "query": "power", "k": 10, "filter": { "namespace": "security" } }));
    assert_eq!(security.len(), 2);
    assert!(security.iter().all(|h| h["namespace"] == "security"));
    let tagged = agent.search(json!({ "query": "anything", "k": 10, "filter": { "tags_any": ["camera"] } }));
    assert_eq!(tagged.len(), 1);
    let by_meta =
        agent.search(json!({ "query": "anything", "k": 10, "filter": { "metadata": { "floor": 2 } } }));
    assert_eq!(by_meta.len(), 1);
    assert_eq!(by_meta[0]["text"], "Coffee was spilled in the break room.");

    // List with pagination, overall and per namespace.
    let page1 = agent.client.get("/v1/memories?limit=3").unwrap().ok().unwrap();
    assert_eq!(page1["memories"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = agent
        .client
        .get(&format!("/v1/memories?limit=3&cursor={cursor}"))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(page2["memories"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null());
    let listed: Vec<Value> = page1["memories"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["memories"].as_array().unwrap())
        .cloned()
        .collect();
    assert_eq!(listed[0]["id"], battery.as_str(), "list is in creation order");
    let ns = agent
        .client
        .get("/v1/memories?namespace=security")
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(ns["memories"].as_array().unwrap().len(), 2);

    // Delete: gone from get (410), list and search; a second delete is 410 too.
    let deleted = agent.client.delete(&format!("/v1/memories/{door}")).unwrap();
    assert_eq!(deleted.status, 204);
    assert_eq!(
        agent.client.get(&format!("/v1/memories/{door}")).unwrap().status,
        410
    );
    assert_eq!(
        agent
            .client
            .delete(&format!("/v1/memories/{door}"))
            .unwrap()
            .status,
        410
    );
    let after = agent.search(json!({ "query": "door left open", "k": 10 }));
    assert!(after.iter().all(|h| h["id"] != door.as_str()));
    let stats = agent.stats();
    assert_eq!(stats["memories"], 3);
    assert_eq!(stats["tombstones"], 1);
    assert_eq!(stats["namespaces"]["security"], 1);

    assert_eq!(agent.client.get("/healthz").unwrap().status, 200);
    let metrics = agent.client.get("/metrics").unwrap();
    let text = metrics.body.as_str().unwrap();
    assert!(text.contains("murmur_agent_memories_written_total 4"), "{text}");
    assert!(text.contains("murmur_agent_memories 3"), "{text}");
    agent.stop();
}

#[test]
fn selective_filters_still_return_k_results() {
    let dir = tempfile::tempdir().unwrap();
    // A threshold of 0 forces the filtered-index path, as for a large store.
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "exact_search_threshold = 0\n").unwrap();
    let agent = AgentProcess::start(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let corpus = murmur_tests::corpus();
    let memories: Vec<Value> = corpus
        .iter()
        .take(300)
        .enumerate()
        .map(|(i, text)| json!({ "text": text, "tags": if i % 50 == 0 { vec!["rare"] } else { vec!["common"] } }))
        .collect();
    agent.add_all(&memories, 100);
    // 6 of 300 carry "rare": a post-filter of the top 10 would usually find none of them.
    let hits =
        agent.search(json!({ "query": "graphics library", "k": 5, "filter": { "tags_all": ["rare"] } }));
    assert_eq!(hits.len(), 5, "{hits:#?}");
    assert!(hits.iter().all(|h| h["tags"] == json!(["rare"])));
    let hits =
        agent.search(json!({ "query": "graphics library", "k": 10, "filter": { "tags_all": ["rare"] } }));
    assert_eq!(hits.len(), 6, "all that exist, when fewer than k do");
    agent.stop();
}

/// A search vector may have any finite 32-bit components: one with large components (its f32
/// norm overflows) still ranks by cosine, the same as its unit-length copy, with numeric scores.
#[test]
fn a_search_vector_with_large_components_ranks_like_its_unit_copy() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    let corpus = murmur_tests::corpus();
    let memories: Vec<Value> = corpus
        .iter()
        .take(20)
        .map(|text| json!({ "text": text }))
        .collect();
    agent.add_all(&memories, 20);
    let unit: Vec<f32> = (0..384).map(|d| if d % 7 == 0 { 0.3 } else { -0.05 }).collect();
    let large: Vec<f32> = unit.iter().map(|v| v * 1e37).collect();
    let by_unit = agent.search(json!({ "vector": unit, "k": 5 }));
    let by_large = agent.search(json!({ "vector": large, "k": 5 }));
    assert_eq!(by_large.len(), 5);
    assert!(
        by_large.iter().all(|hit| hit["score"].is_number()),
        "scores: {:?}",
        by_large.iter().map(|h| &h["score"]).collect::<Vec<_>>()
    );
    let ids = |hits: &[Value]| hits.iter().map(|h| h["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&by_large), ids(&by_unit));
    agent.stop();
}

/// Sends `body` raw and checks status and error code; returns nothing but asserts.
fn expect_error(agent: &AgentProcess, method: &str, path: &str, body: Option<&str>, status: u16, code: &str) {
    let reply = agent.client.send(method, path, body.map(str::as_bytes)).unwrap();
    assert_eq!(reply.status, status, "{method} {path} {body:?}: {:?}", reply.body);
    assert_eq!(
        reply.body["error"]["code"], code,
        "{method} {path} {body:?}: {:?}",
        reply.body
    );
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    let kept = agent.add(json!({ "text": "one good memory" }));
    let before = agent.stats();

    let big_text = "x".repeat(8 * 1024 + 1);
    let big_meta = json!({ "text": "t", "metadata": { "blob": "y".repeat(9000) } }).to_string();
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/v1/memories",
            "{\"text\": \"unterminated".into(),
            400,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/memories",
            "not json at all".into(),
            400,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/memories",
            "{\"text\": 42}".into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/memories",
            "{\"txt\": \"typo\"}".into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/memories",
            "{\"text\": \"t\", \"tags\": \"notalist\"}".into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/memories",
            "{\"text\": \"   \"}".into(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/memories",
            json!({ "text": big_text }).to_string(),
            422,
            "invalid_input",
        ),
        ("POST", "/v1/memories", big_meta, 422, "invalid_input"),
        (
            "POST",
            "/v1/memories",
            json!({ "text": "t", "metadata": [1, 2] }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/memories",
            json!({ "text": "t", "namespace": "bad space" }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/memories",
            json!({ "text": "t", "namespace": "ümlaut" }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/memories",
            json!({ "text": "t", "namespace": "a/b" }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/memories",
            json!({ "text": "t", "vector": [0.1, 0.2] }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/memories",
            json!({ "text": "t", "tags": ["ok", ""] }).to_string(),
            422,
            "invalid_input",
        ),
        // JSON has no NaN: a NaN (or an overflowing number) cannot even be parsed.
        (
            "POST",
            "/v1/memories",
            "{\"text\": \"t\", \"vector\": [NaN]}".into(),
            400,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/search",
            "{\"vector\": [1e999]}".into(),
            400,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/memories/batch",
            json!({ "memories": [] }).to_string(),
            422,
            "invalid_input",
        ),
        // One bad memory fails the whole batch: the good one is not stored either.
        (
            "POST",
            "/v1/memories/batch",
            json!({ "memories": [{ "text": "fine" }, { "text": "" }] }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/search",
            json!({ "k": 5 }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/search",
            json!({ "query": "q", "vector": [1.0], "k": 5 }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/search",
            json!({ "vector": vec![0.5; 383] }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/search",
            json!({ "vector": vec![0.0; 384] }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/search",
            json!({ "query": "q", "k": 0 }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/search",
            json!({ "query": "q", "k": 100000 }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/search",
            json!({ "query": "q", "filter": { "namespace": "no spaces" } }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/search",
            json!({ "query": "q", "filter": { "created_after": "yesterday" } }).to_string(),
            422,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/search",
            json!({ "query": "q", "filter": { "colour": "red" } }).to_string(),
            422,
            "invalid_request",
        ),
        ("GET", "/v1/memories/not-a-uuid", String::new(), 400, "invalid_id"),
        (
            "GET",
            "/v1/memories/01a208dd-015e-7524-89cc-ba2ddf47d5df",
            String::new(),
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/v1/memories/01a208dd-015e-7524-89cc-ba2ddf47d5df",
            String::new(),
            404,
            "not_found",
        ),
        ("GET", "/v1/memories?limit=0", String::new(), 422, "invalid_input"),
        (
            "GET",
            "/v1/memories?limit=abc",
            String::new(),
            400,
            "invalid_query",
        ),
        ("GET", "/v1/memories?cursor=zzz", String::new(), 400, "invalid_id"),
        (
            "GET",
            "/v1/memories?namespace=bad%20ns",
            String::new(),
            422,
            "invalid_input",
        ),
        ("GET", "/v1/nothing-here", String::new(), 404, "no_route"),
        ("PUT", "/v1/search", "{}".into(), 405, "method_not_allowed"),
    ];
    for (method, path, body, status, code) in &cases {
        let body = (!body.is_empty() || *method == "POST").then_some(body.as_str());
        expect_error(&agent, method, path, body, *status, code);
    }
    // A body over the size limit is refused before it is parsed.
    // Just over the limit, so the unread rest fits in loopback socket buffers and the client
    // always gets to read the answer.
    let limit = murmur_agent::api::body_limit(&murmur_agent::memory::Limits::default());
    let huge = vec![b' '; limit + 4096];
    // The server answers 413 without reading the rest and closes that connection, as it should;
    // a separate client keeps the closed connection out of the shared client's pool.
    let oversize_client = murmur_agent::client::Client::new(agent.client.base());
    let reply = oversize_client
        .send("POST", "/v1/memories/batch", Some(&huge))
        .unwrap();
    assert_eq!(reply.status, 413);
    assert_eq!(reply.body["error"]["code"], "body_too_large");

    let after = agent.stats();
    assert_eq!(
        after["memories"], before["memories"],
        "rejected requests wrote nothing"
    );
    assert_eq!(
        after["generation"], before["generation"],
        "rejected requests wrote nothing"
    );
    assert_eq!(
        agent.client.get(&format!("/v1/memories/{kept}")).unwrap().status,
        200
    );
    agent.stop();
}

#[test]
fn disk_quota_refuses_writes_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(dir.path(), &["--disk-quota-bytes", "1"]);
    let reply = agent
        .client
        .post("/v1/memories", &json!({ "text": "no room" }))
        .unwrap();
    assert_eq!(reply.status, 507, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["code"], "disk_quota_exceeded");
    assert_eq!(agent.stats()["memories"], 0);
    // Reads still work when the disk is full.
    assert_eq!(agent.client.get("/v1/memories").unwrap().status, 200);
    agent.stop();
}
