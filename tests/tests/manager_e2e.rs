//! Agents (real processes) and a manager on loopback: memories flow up, land in the bucket and
//! in the Parquet export, and a delete takes them out of the current view.

use murmur_tests::*;
use serde_json::json;

#[test]
fn memories_reach_the_manager_the_bucket_and_the_export() {
    let dir = tempfile::tempdir().unwrap();
    let manager = ManagerProcess::start(&dir.path().join("manager"), "127.0.0.1:0", &["--no-model"]);
    for token in [None, Some("wrong-token-of-some-length")] {
        let (status, body) = manager.get_with_token("/api/overview", token);
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(manager.get_with_token("/healthz", None).0, 200);
    let a = agent_for(&dir.path().join("a"), &manager.uplink, &[]);
    let b = agent_for(&dir.path().join("b"), &manager.uplink, &[]);

    let on_a: Vec<String> = (0..20)
        .map(|i| a.add(memory(&format!("alpha note {i} about pumps"))))
        .collect();
    let on_b: Vec<String> = (0..10)
        .map(|i| b.add(memory(&format!("beta note {i} about valves"))))
        .collect();
    wait_until(60, "the manager holds all 30 memories", || manager.live() == 30);
    for id in on_a.iter().chain(&on_b) {
        assert_eq!(manager.status_of(id), 200, "{id}");
    }
    let (_, record) = manager.get(&format!("/api/memories/{}", on_a[3]));
    assert_eq!(record["text"], "alpha note 3 about pumps");
    assert_eq!(record["tags"], json!(["t1", "t2"]));

    // Memories come down too: each agent ends with the other's.
    wait_until(60, "agent b holds agent a's memories", || {
        b.status_of(&on_a[0]) == 200
    });
    wait_until(60, "agent a holds agent b's memories", || {
        a.status_of(&on_b[9]) == 200
    });

    // The agents show up with their uploads.
    let overview = manager.overview();
    let agents = overview["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{overview}");
    assert!(agents.iter().all(|x| x["connected"] == true));
    let mut authored: Vec<u64> = agents
        .iter()
        .map(|x| x["memories_authored"].as_u64().unwrap())
        .collect();
    authored.sort();
    assert_eq!(authored, vec![10, 20]);

    // In the bucket: segments, and the export with every memory.
    let bucket = manager.data_dir.join("bucket");
    assert!(bucket.join("murmur.json").is_file());
    let segments = walk(&bucket.join("v1/changes"));
    assert!(!segments.is_empty());
    let memories_dir = bucket.join("v1/analytics/memories");
    wait_until(30, "the export holds all 30 memories", || {
        parquet_rows(&memories_dir).len() == 30
    });
    let rows = parquet_rows(&memories_dir);
    let row = rows
        .iter()
        .find(|r| r["id"] == on_b[0].as_str())
        .expect("exported row");
    assert_eq!(row["text"], "beta note 0 about valves");
    assert_eq!(row["tags"], json!(["t1", "t2"]));
    assert!(row["metadata"].as_str().unwrap().contains("\"source\":\"test\""));
    assert!(!parquet_rows(&bucket.join("v1/analytics/agents")).is_empty());

    // A delete on the author leaves the manager's state and the current export.
    let reply = a
        .client
        .send("DELETE", &format!("/v1/memories/{}", on_a[0]), None)
        .unwrap();
    assert!(reply.status < 300, "{:?}", reply.body);
    wait_until(60, "the manager learns of the delete", || {
        manager.status_of(&on_a[0]) == 410
    });
    wait_until(30, "the export drops the deleted memory", || {
        let rows = parquet_rows(&memories_dir);
        rows.len() == 29 && !rows.iter().any(|r| r["id"] == on_a[0].as_str())
    });
    // DuckDB reads the export as it is (the query docs/manager.md shows).
    let duckdb = std::process::Command::new(tools_python())
        .arg("-c")
        .arg(DUCKDB_QUERY)
        .arg(&bucket)
        .output()
        .expect("python with duckdb");
    assert!(
        duckdb.status.success(),
        "{}",
        String::from_utf8_lossy(&duckdb.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&duckdb.stdout).expect("JSON from DuckDB");
    assert_eq!(answer["memories"], 29, "{answer}");
    assert_eq!(answer["authors"], 2, "{answer}");
    assert_eq!(answer["agents"], 2, "{answer}");
    assert!(answer["dates"].as_str().unwrap().starts_with("20"), "{answer}");
    wait_until(30, "sync events are exported", || {
        parquet_rows(&bucket.join("v1/analytics/sync_events"))
            .iter()
            .any(|r| r["kind"] == "merged")
    });
    a.stop();
    b.stop();
    manager.stop();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Counts from the export through DuckDB; argv[1] is the bucket directory.
const DUCKDB_QUERY: &str = r#"
import duckdb, json, sys
bucket = sys.argv[1]
con = duckdb.connect()
memories, authors, dates = con.sql(f"""
    SELECT count(*), count(DISTINCT author), string_agg(DISTINCT CAST(date AS VARCHAR), ',')
    FROM read_parquet('{bucket}/v1/analytics/memories/*/*.parquet', hive_partitioning = true)
""").fetchone()
agents = con.sql(f"""
    SELECT count(*) FROM read_parquet('{bucket}/v1/analytics/agents/agents.parquet') a
    WHERE a.memories_authored > 0
""").fetchone()[0]
print(json.dumps({"memories": memories, "authors": authors, "dates": dates, "agents": agents}))
"#;
