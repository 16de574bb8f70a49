//! Every memory an agent stores is also a signed record of the swarm state, kept in the same
//! database: a restart rebuilds the same state, deletes become signed tombstones.

use murmur_tests::AgentProcess;
use serde_json::json;

#[test]
fn the_swarm_state_follows_every_write_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    let empty = agent.stats();
    assert_eq!(empty["sync"]["visible"], 0);
    assert_eq!(empty["sync"]["shards"], 64);

    let texts = [
        "Pallet 12 in aisle 3 is leaning.",
        "The north gate camera is fogged up.",
        "Forklift 2 needs a tyre change.",
    ];
    let mut ids: Vec<String> = texts.iter().map(|t| agent.add(json!({ "text": t }))).collect();
    ids.extend(
        agent.add_all(
            &(0..20)
                .map(|i| json!({ "text": format!("sensor reading {i}") }))
                .collect::<Vec<_>>(),
            8,
        ),
    );
    let stats = agent.stats();
    let author = stats["author"].as_str().unwrap().to_string();
    assert_eq!(stats["sync"]["visible"], 23);
    assert_eq!(stats["memories"], 23);
    let first = agent
        .client
        .get(&format!("/v1/memories/{}", ids[0]))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(first["author"], author.as_str());
    let id = uuid::Uuid::parse_str(&ids[0]).unwrap();
    assert_eq!(id.get_version_num(), 7, "ids keep the UUIDv7 layout");

    let reply = agent.client.delete(&format!("/v1/memories/{}", ids[1])).unwrap();
    assert_eq!(reply.status, 204);
    let after_delete = agent.stats();
    assert_eq!(after_delete["sync"]["visible"], 22);
    assert_ne!(after_delete["sync"]["root_digest"], stats["sync"]["root_digest"]);
    let digest = after_delete["sync"]["root_digest"].clone();
    agent.stop();

    let agent = AgentProcess::start(dir.path(), &[]);
    let restarted = agent.stats();
    assert_eq!(
        restarted["sync"]["root_digest"], digest,
        "the same state after a restart"
    );
    assert_eq!(restarted["sync"]["visible"], 22);
    assert_eq!(restarted["author"], author.as_str());
    // Writing after a restart continues the same history.
    agent.add(json!({ "text": "written after the restart" }));
    assert_eq!(agent.stats()["sync"]["visible"], 23);
    agent.kill();
    let agent = AgentProcess::start(dir.path(), &[]);
    assert_eq!(agent.stats()["sync"]["visible"], 23);
}
