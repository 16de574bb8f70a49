//! Deletes erase: a memory written on one agent of a three-agent swarm with a manager, then
//! deleted, leaves no byte of its text nor of its vector in any agent's data directory, in the
//! bucket or in the Parquet export, once the swarm has converged and the manager compacted.

use std::path::Path;

use murmur_tests::*;
use serde_json::json;

fn manager_config(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("manager.toml");
    std::fs::write(&path, "bucket_poll_ms = 200\ncompact_after_segments = 2\n").unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn a_deleted_memory_leaves_no_trace_on_agents_in_the_bucket_or_in_the_export() {
    let dir = tempfile::tempdir().unwrap();
    let manager_dir = dir.path().join("manager");
    let config = manager_config(&manager_dir);
    let manager = ManagerProcess::start(&manager_dir, "127.0.0.1:0", &["--no-model", "--config", &config]);
    let swarm = ["--swarm-listen", "/ip4/127.0.0.1/tcp/0", "--open-swarm"];
    let a = agent_for(&dir.path().join("a"), &manager.uplink, &swarm);
    let bootstrap = a.swarm_addr();
    let joined: Vec<&str> = swarm
        .iter()
        .copied()
        .chain(["--swarm-bootstrap", bootstrap.as_str()])
        .collect();
    let b = agent_for(&dir.path().join("b"), &manager.uplink, &joined);
    let c = agent_for(&dir.path().join("c"), &manager.uplink, &joined);

    let marker = format!("ERASE-ME-{}", uuid::Uuid::now_v7().simple());
    let vector = distinctive_vector();
    let kept: Vec<String> = (0..5)
        .map(|i| a.add(memory(&format!("an ordinary note {i} that stays"))))
        .collect();
    let doomed = a.add(json!({
        "text": format!("the door code is {marker}"),
        "metadata": {"secret": marker},
        "tags": ["secret"],
        "vector": vector,
    }));
    let agents = [&a, &b, &c];
    for agent in agents {
        wait_until(60, "every agent holds the memory", || {
            agent.status_of(&doomed) == 200 && agent.status_of(&kept[4]) == 200
        });
    }
    wait_until(60, "the manager holds it", || manager.status_of(&doomed) == 200);
    let bucket = manager.data_dir.join("bucket");
    let memories_export = bucket.join("v1/analytics/memories");
    wait_until(30, "the export holds it", || {
        parquet_rows(&memories_export)
            .iter()
            .any(|r| r["id"] == doomed.as_str())
    });

    // The scan finds what is there: before the delete, every copy is found.
    let needles = needles(&marker, &vector);
    for agent in agents {
        let found = find(&agent.data_dir, &needles);
        assert!(
            found.iter().any(|(_, what)| what.starts_with("the text")),
            "the scan does not see the memory on {}: {found:?}",
            agent.data_dir.display()
        );
    }
    assert!(
        !find(&bucket, &needles).is_empty(),
        "the scan does not see the memory in the bucket"
    );

    let reply = b
        .client
        .send("DELETE", &format!("/v1/memories/{doomed}"), None)
        .unwrap();
    assert_eq!(
        reply.status, 403,
        "only its author or an admin may delete it: {:?}",
        reply.body
    );
    let reply = a
        .client
        .send("DELETE", &format!("/v1/memories/{doomed}"), None)
        .unwrap();
    assert!(reply.status < 300, "{:?}", reply.body);
    for agent in agents {
        wait_until(60, "every agent learns of the delete", || {
            agent.status_of(&doomed) == 410
        });
    }
    wait_until(60, "the manager learns of the delete", || {
        manager.status_of(&doomed) == 410
    });
    wait_until(60, "the export drops it", || {
        let rows = parquet_rows(&memories_export);
        rows.len() == 5 && !rows.iter().any(|r| r["id"] == doomed.as_str())
    });
    wait_until(60, "the bucket is compacted past the delete", || {
        find(&bucket, &needles).is_empty()
    });
    // Clean stops: the agents save their indexes, the manager exports once more.
    for agent in [a, b, c] {
        let data_dir = agent.data_dir.clone();
        agent.stop();
        let left = find(&data_dir, &needles);
        assert!(left.is_empty(), "the deleted memory is still on disk: {left:?}");
    }
    manager.stop();
    let left = find(dir.path(), &needles);
    assert!(left.is_empty(), "the deleted memory is still on disk: {left:?}");
}
