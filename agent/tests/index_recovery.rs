//! The vector index is derived data: deleted or corrupted it is rebuilt from sled, stale it is
//! caught up with what was stored since it was saved, and search answers as before.

use murmur_tests::AgentProcess;
use serde_json::{Value, json};

const QUERIES: &[&str] = &[
    "image processing library",
    "network tools",
    "python bindings",
    "fonts",
];

fn answers(agent: &AgentProcess) -> Vec<Vec<String>> {
    QUERIES.iter().map(|q| agent.search_ids(q, 10)).collect()
}

#[test]
fn missing_corrupt_or_stale_index_is_rebuilt_with_equal_results() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    let memories: Vec<Value> = murmur_tests::corpus()
        .iter()
        .take(200)
        .map(|t| json!({ "text": t }))
        .collect();
    agent.add_all(&memories, 100);
    let expected = answers(&agent);
    assert!(expected.iter().all(|ids| ids.len() == 10));
    agent.stop();
    let index_file = dir.path().join("index.usearch");
    let index_bytes = std::fs::read(&index_file).unwrap();

    // Clean restart: the saved index is loaded as is, not rebuilt.
    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(answers(&agent), expected);
    assert!(
        !agent.log().contains("rebuilding the vector index"),
        "{}",
        agent.log()
    );
    agent.stop();

    // Missing.
    std::fs::remove_file(&index_file).unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(answers(&agent), expected);
    assert_eq!(agent.log().matches("rebuilding the vector index").count(), 1);
    agent.stop();

    // Corrupt: flipped bytes in the middle, then a truncated file.
    let mut corrupt = index_bytes.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle..middle + 64].iter_mut().for_each(|b| *b ^= 0xa5);
    std::fs::write(&index_file, &corrupt).unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(answers(&agent), expected);
    assert_eq!(agent.log().matches("rebuilding the vector index").count(), 2);
    agent.stop();
    std::fs::write(&index_file, &index_bytes[..index_bytes.len() / 3]).unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(answers(&agent), expected);
    assert_eq!(agent.log().matches("rebuilding the vector index").count(), 3);

    // Stale: a write after the last save, then SIGKILL before the next save. The saved index
    // is caught up from the change mark it was saved at, not rebuilt.
    let late = agent.add(json!({ "text": "a late memory about image processing libraries" }));
    agent.kill();
    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(agent.log().matches("rebuilding the vector index").count(), 3);
    assert_eq!(agent.log().matches("caught the saved index").count(), 1);
    assert!(
        agent
            .search_ids("a late memory about image processing libraries", 1)
            .contains(&late)
    );
    // A delete after the last save is caught up too: the memory is not found again.
    let reply = agent.client.delete(&format!("/v1/memories/{late}")).unwrap();
    assert_eq!(reply.status, 204);
    agent.kill();
    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(agent.log().matches("caught the saved index").count(), 2);
    assert!(
        !agent
            .search_ids("a late memory about image processing libraries", 10)
            .contains(&late)
    );
    assert_eq!(answers(&agent), expected);

    // Stale and saved without a change mark (by an older agent): rebuilt.
    let another = agent.add(json!({ "text": "another late memory, about fonts" }));
    agent.kill();
    let meta_path = dir.path().join("index.meta.json");
    let mut meta: Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta.as_object_mut().unwrap().remove("change_mark");
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(agent.log().matches("rebuilding the vector index").count(), 4);
    assert!(
        agent
            .search_ids("another late memory, about fonts", 1)
            .contains(&another)
    );
    agent.stop();
}
