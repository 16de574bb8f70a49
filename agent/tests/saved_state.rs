//! A start resumes the replica and the search filters' facts from `state.snapshot` and replays
//! only what was stored after it: the same state whether the file is current (after SIGTERM),
//! stale (SIGKILL after more writes and deletes) or damaged.

use murmur_tests::AgentProcess;
use serde_json::{Value, json};

const DIMENSION: usize = 384;

fn memory(i: usize, namespace: &str) -> Value {
    let mut vector = vec![0.01f32; DIMENSION];
    vector[i % DIMENSION] = 1.0;
    json!({ "text": format!("reading {i} of {namespace}"), "namespace": namespace, "vector": vector })
}

fn state(agent: &AgentProcess) -> (Value, Value, Value) {
    let stats = agent.stats();
    (
        stats["sync"]["root_digest"].clone(),
        stats["memories"].clone(),
        stats["namespaces"].clone(),
    )
}

#[test]
fn a_start_resumes_from_the_saved_state_and_what_was_stored_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    let mut memories: Vec<Value> = (0..15).map(|i| memory(i, "a")).collect();
    memories.extend((15..30).map(|i| memory(i, "b")));
    let ids = agent.add_all(&memories, 10);
    let saved = state(&agent);
    agent.stop();
    let state_file = dir.path().join("state.snapshot");
    assert!(state_file.exists(), "a clean stop saves the state");

    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(state(&agent), saved, "resumed from a current saved state");
    assert!(!agent.log().contains("not usable"), "{}", agent.log());

    // More after the snapshot, then a kill: the file is stale.
    let newer = agent.add_all(&(30..40).map(|i| memory(i, "c")).collect::<Vec<_>>(), 5);
    for id in &ids[..5] {
        let reply = agent.client.delete(&format!("/v1/memories/{id}")).unwrap();
        assert_eq!(reply.status, 204);
    }
    let after = state(&agent);
    assert_eq!(after.1, 35);
    assert_eq!(after.2, json!({ "a": 10, "b": 15, "c": 10 }));
    agent.kill();

    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(
        state(&agent),
        after,
        "resumed from a stale saved state and the changes after it"
    );
    assert!(!agent.log().contains("disagrees"), "{}", agent.log());
    for id in &ids[..5] {
        assert_eq!(
            agent.status_of(id),
            410,
            "a delete stored after the snapshot came back"
        );
    }
    let in_c: Vec<String> = agent
        .search(json!({ "vector": memory(33, "c")["vector"], "k": 20, "filter": { "namespace": "c" } }))
        .iter()
        .map(|hit| hit["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_c.len(), 10);
    assert!(in_c.iter().all(|id| newer.contains(id)), "{in_c:?}");
    agent.stop();

    // A damaged file is said and passed over: the same state from the store alone.
    let mut bytes = std::fs::read(&state_file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&state_file, &bytes).unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(
        state(&agent),
        after,
        "rebuilt from the store past a damaged saved state"
    );
    assert!(agent.log().contains("not usable"), "{}", agent.log());
    agent.stop();
}
