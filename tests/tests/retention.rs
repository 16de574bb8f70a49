//! Retention on a device: an agent that keeps at most 1,000 memories of a namespace from other
//! devices holds the newest 1,000 of the 5,000 another agent writes there, while the manager
//! and the writer hold all 5,000; a clean restart, a kill -9 and the anti-entropy rounds after
//! each bring none of the others back, and the three still agree on what exists. Past its disk
//! quota an agent evicts in the same order instead of declining what peers send.

use std::collections::BTreeSet;

use murmur_tests::*;
use serde_json::{Value, json};

const WRITTEN: usize = 5_000;
const KEPT: usize = 1_000;

fn vector(rng: &mut Lcg) -> Vec<f32> {
    (0..384)
        .map(|_| (rng.next_u64() % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

/// The ids `agent` holds in `namespace`, walking the listing's pages.
fn held_ids(agent: &AgentProcess, namespace: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/memories?namespace={namespace}&limit=1000");
        if let Some(after) = &cursor {
            path.push_str(&format!("&cursor={after}"));
        }
        let page = agent.client.get(&path).expect("request").ok().expect("listing");
        for memory in page["memories"].as_array().expect("memories") {
            ids.insert(memory["id"].as_str().expect("id").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return ids,
        }
    }
}

fn digest(agent: &AgentProcess) -> Value {
    agent.stats()["sync"]["root_digest"].clone()
}

#[test]
fn a_device_keeps_the_newest_of_a_namespace_and_nothing_refills_it() {
    let dir = tempfile::tempdir().unwrap();
    let manager = ManagerProcess::start(&dir.path().join("manager"), "127.0.0.1:0", &["--no-model"]);
    let writer = agent_for(&dir.path().join("writer"), &manager.uplink, &[]);
    let kept_dir = dir.path().join("kept");
    std::fs::create_dir_all(&kept_dir).unwrap();
    let config = kept_dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("[retention.telemetry]\nmax_count = {KEPT}\n[retention.logs]\nmax_age_secs = 3600\n"),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let start_keeper = || agent_for(&kept_dir, &manager.uplink, &["--config", &config]);
    let keeper = start_keeper();

    // Its own writes are never evicted: it may be their only holder.
    let own: Vec<String> = (0..3)
        .map(|i| keeper.add(json!({"namespace": "telemetry", "text": format!("the keeper's own reading {i}"), "vector": vec![0.5f32; 384]})))
        .collect();
    let mut rng = Lcg(11);
    let memories: Vec<Value> = (0..WRITTEN)
        .map(|i| {
            json!({
                "namespace": "telemetry",
                "text": format!("reading {i} of the line sensor"),
                "vector": vector(&mut rng),
            })
        })
        .collect();
    let written = writer.add_all(&memories, 250);
    let other = writer.add(
        json!({"namespace": "logs", "text": "a log line within the age limit", "vector": vec![0.25f32; 384]}),
    );
    assert_eq!(written.len(), WRITTEN);
    // Ids sort by creation time, so the newest are the last in id order.
    let newest: BTreeSet<String> = {
        let mut sorted = written.clone();
        sorted.sort();
        sorted.split_off(WRITTEN - KEPT).into_iter().collect()
    };
    let expected: BTreeSet<String> = newest.iter().cloned().chain(own.iter().cloned()).collect();

    wait_until(180, "the manager holds every memory", || {
        manager.live() == (WRITTEN + own.len() + 1) as u64
    });
    let converged = |keeper: &AgentProcess| {
        digest(keeper) == digest(&writer)
            && digest(&writer) == manager.overview()["manager"]["root_digest"]
            && keeper.stats()["sync"]["awaiting_bodies"] == 0
            && keeper.status_of(&other) == 200
    };
    // A batch's eviction ends a moment after its store commit (the replica, the index), and
    // stats are read without the write lock: wait for both to settle.
    let settled = |keeper: &AgentProcess| {
        let stats = keeper.stats();
        converged(keeper)
            && stats["sync"]["evicted_bodies"] == json!(WRITTEN - KEPT)
            && stats["sync"]["visible"] == stats["memories"]
    };
    wait_until(180, "the keeper to agree with the swarm on what exists", || {
        settled(&keeper) && held_ids(&keeper, "telemetry").len() == expected.len()
    });
    let check = |keeper: &AgentProcess, when: &str| {
        let held = held_ids(keeper, "telemetry");
        assert_eq!(held.len(), expected.len(), "{when}: held count");
        assert!(
            held == expected,
            "{when}: the keeper does not hold exactly the newest and its own"
        );
        let stats = keeper.stats();
        assert_eq!(stats["memories"], json!(KEPT + own.len() + 1), "{when}: {stats}");
        assert_eq!(
            stats["sync"]["evicted_bodies"],
            json!(WRITTEN - KEPT),
            "{when}: {stats}"
        );
        let oldest = written.iter().min().expect("written");
        assert_eq!(
            keeper.status_of(oldest),
            404,
            "{when}: an evicted memory is served"
        );
        assert_eq!(
            manager.status_of(oldest),
            200,
            "{when}: the manager lost an evicted memory"
        );
        assert_eq!(
            writer.status_of(oldest),
            200,
            "{when}: the writer lost an evicted memory"
        );
    };
    check(&keeper, "after sync");
    let metrics = keeper.client.get("/metrics").expect("metrics").body.to_string();
    assert!(
        metrics.contains(&format!(
            "murmur_agent_retention_evicted_total {}",
            WRITTEN - KEPT
        )),
        "{metrics}"
    );

    // Restarts: each time anti-entropy rounds run to agreement again and bring nothing back.
    keeper.stop();
    let keeper = start_keeper();
    wait_until(120, "agreement after a clean restart", || settled(&keeper));
    std::thread::sleep(std::time::Duration::from_secs(6));
    check(&keeper, "after a clean restart");
    keeper.kill();
    let keeper = start_keeper();
    wait_until(120, "agreement after a kill", || settled(&keeper));
    std::thread::sleep(std::time::Duration::from_secs(6));
    check(&keeper, "after a kill -9");

    // A delete of an evicted memory still lands: the tombstone replaces the eviction.
    let oldest = written.iter().min().expect("written").clone();
    let reply = writer
        .client
        .send("DELETE", &format!("/v1/memories/{oldest}"), None)
        .unwrap();
    assert!(reply.status < 300, "{:?}", reply.body);
    wait_until(60, "the keeper learns of the delete", || {
        keeper.status_of(&oldest) == 410
    });
    assert_eq!(
        keeper.stats()["sync"]["evicted_bodies"],
        json!(WRITTEN - KEPT - 1)
    );
}

/// The metric's value in an exposition, 0 where it is absent.
fn metric(agent: &AgentProcess, name: &str) -> f64 {
    let reply = agent.client.get("/metrics").expect("metrics");
    let body = reply.body.as_str().expect("a text exposition");
    body.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn past_its_disk_quota_a_device_evicts_the_oldest_from_other_devices_instead_of_declining() {
    const ROUND: usize = 2_000;
    const OVER: u64 = 2 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let manager = ManagerProcess::start(&dir.path().join("manager"), "127.0.0.1:0", &["--no-model"]);
    let writer = agent_for(&dir.path().join("writer"), &manager.uplink, &[]);
    let kept_dir = dir.path().join("kept");
    let keeper = agent_for(&kept_dir, &manager.uplink, &[]);
    let own: Vec<String> = (0..3)
        .map(|i| keeper.add(json!({"namespace": "telemetry", "text": format!("the keeper's own reading {i}"), "vector": vec![0.5f32; 384]})))
        .collect();
    // ~7 KB a memory, in two namespaces, so that bodies outweigh sled's own files (a few MB
    // of log segments, whatever is evicted).
    let mut rng = Lcg(12);
    let mut round = |first: usize| -> Vec<Value> {
        (first..first + ROUND)
            .map(|i| {
                let namespace = if i % 2 == 0 { "telemetry" } else { "logs" };
                json!({
                    "namespace": namespace,
                    "text": format!("image caption {i}: {}", "a pallet by the dock door ".repeat(230)),
                    "vector": vector(&mut rng),
                })
            })
            .collect()
    };
    let converged = |keeper: &AgentProcess, total: usize| {
        let stats = keeper.stats();
        manager.live() == total as u64
            && digest(keeper) == digest(&writer)
            && digest(&writer) == manager.overview()["manager"]["root_digest"]
            && stats["sync"]["awaiting_bodies"] == 0
            && stats["sync"]["visible"] == stats["memories"]
            && stats["memories"].as_u64().is_some_and(|held| {
                held + stats["sync"]["evicted_bodies"].as_u64().unwrap_or(0)
                    + stats["sync"]["declined_bodies"].as_u64().unwrap_or(0)
                    == total as u64
            })
    };

    // The device fills up with what the writer sends, then gets a quota below what it holds.
    let mut written = writer.add_all(&round(0), 100);
    let first_round: BTreeSet<String> = written.iter().cloned().collect();
    wait_until(240, "the keeper to hold the first round", || {
        converged(&keeper, ROUND + own.len()) && keeper.stats()["memories"] == json!(ROUND + own.len())
    });
    // sled's files settle at a restart: measure after one.
    keeper.stop();
    let keeper = agent_for(&kept_dir, &manager.uplink, &[]);
    let full = keeper.stats()["disk_bytes"].as_u64().expect("disk bytes");
    keeper.stop();
    let quota = (full - OVER).to_string();
    let keeper = agent_for(&kept_dir, &manager.uplink, &["--disk-quota-bytes", &quota]);
    written.extend(writer.add_all(&round(ROUND), 100));
    written.sort();
    let total = 2 * ROUND + own.len();
    wait_until(240, "the keeper to agree with the swarm", || {
        converged(&keeper, total)
    });

    let stats = keeper.stats();
    assert_eq!(stats["sync"]["declined_bodies"], 0, "{stats}");
    assert_eq!(metric(&keeper, "murmur_agent_quota_declined_total"), 0.0);
    let held: BTreeSet<String> = held_ids(&keeper, "telemetry")
        .into_iter()
        .chain(held_ids(&keeper, "logs"))
        .collect();
    for id in &own {
        assert!(held.contains(id), "the keeper's own memory {id} was evicted");
    }
    // The oldest go first, across both namespaces: the first round, all held when the quota
    // came and older than all of the second, is gone before any of the second goes. Within
    // the second, what it keeps is the newest but for a few that arrived late (anti-entropy
    // after pushes) and were not needed out yet.
    let kept = written.iter().filter(|id| held.contains(*id)).count();
    assert!(
        (50..ROUND).contains(&kept),
        "kept {kept} of {}: {stats}",
        2 * ROUND
    );
    let first_kept = first_round.iter().filter(|id| held.contains(*id)).count();
    assert_eq!(
        first_kept, 0,
        "{first_kept} of the oldest round kept while newer ones went"
    );
    let newest_kept = written[2 * ROUND - kept..]
        .iter()
        .filter(|id| held.contains(*id))
        .count();
    assert!(
        newest_kept * 10 >= kept * 9,
        "of the {kept} memories kept only {newest_kept} are among the newest {kept}"
    );
    assert_eq!(
        metric(&keeper, "murmur_agent_quota_evicted_total"),
        (2 * ROUND - kept) as f64,
        "{stats}"
    );
    let used = stats["disk_bytes"].as_u64().expect("disk bytes");
    assert!(
        used < full - OVER + 2 * 1024 * 1024,
        "{used} bytes on disk for a quota of {quota}"
    );
    assert_eq!(writer.status_of(&written[0]), 200);
    assert_eq!(manager.status_of(&written[0]), 200);

    // Its own writes still find room, made of what others hold.
    let before = metric(&keeper, "murmur_agent_quota_evicted_total");
    let extra: Vec<Value> = (0..400)
        .map(|i| json!({"namespace": "telemetry", "text": format!("own caption {i}: {}", "a forklift ".repeat(500)), "vector": vector(&mut rng)}))
        .collect();
    assert_eq!(keeper.add_all(&extra, 100).len(), 400);
    assert!(metric(&keeper, "murmur_agent_quota_evicted_total") > before);
}
