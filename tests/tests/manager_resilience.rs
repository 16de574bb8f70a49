//! The manager under things going wrong: killed mid-upload, intruders, broken streams, and two
//! managers sharing one bucket.

use std::{collections::BTreeSet, time::Duration};

use murmur_tests::*;
use murmur_uplink::{Credentials, Frame, FrameKind, client_endpoint, connect, write_frame};

#[test]
fn a_manager_killed_mid_upload_loses_nothing_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let uplink = free_udp_addr();
    // The agent works offline first: the manager is not there yet.
    let agent = agent_for(&dir.path().join("agent"), &uplink, &[]);
    let ids = agent.add_all(&many(3000, "offline"), 250);
    let manager_dir = dir.path().join("manager");
    let manager = ManagerProcess::start(&manager_dir, &uplink, &["--no-model"]);

    // Kill it while the upload runs; what it reported holding just before is acknowledged.
    let mut acknowledged = 0;
    wait_until(120, "the upload to start", || {
        acknowledged = manager.live();
        acknowledged > 0
    });
    let held: Vec<&String> = ids
        .iter()
        .filter(|id| manager.status_of(id) == 200)
        .take(20)
        .collect();
    acknowledged = acknowledged.max(manager.live());
    manager.kill();
    assert!(!held.is_empty());
    eprintln!("killed holding at least {acknowledged} of {}", ids.len());

    // Restarted on another port first, so the agent cannot refill it: the bucket alone has it.
    let other = free_udp_addr();
    let restarted = ManagerProcess::start(&manager_dir, &other, &["--no-model"]);
    assert!(
        restarted.live() >= acknowledged,
        "acknowledged {acknowledged}, reloaded {}",
        restarted.live()
    );
    for id in &held {
        assert_eq!(restarted.status_of(id), 200, "{id} was acknowledged and is gone");
    }
    // The agent cannot reach this one: what it holds is what the bucket held at the kill.
    assert!(
        restarted.live() < ids.len() as u64,
        "the manager was killed after the upload had finished: nothing was tested"
    );
    restarted.stop();

    // Back on its address: the agent reconnects and the upload completes without duplicates.
    let manager = ManagerProcess::start(&manager_dir, &uplink, &["--no-model"]);
    wait_until(120, "the upload to finish after the restart", || {
        manager.live() == 3000
    });
    let overview = manager.overview();
    assert_eq!(overview["memories"]["live"], 3000, "{overview}");
    agent.stop();
    manager.stop();
}

#[test]
fn intruders_are_refused_and_a_broken_stream_harms_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    let manager = ManagerProcess::start(&dir.path().join("manager"), "127.0.0.1:0", &["--no-model"]);
    let good = agent_for(&dir.path().join("good"), &manager.uplink, &[]);

    // Wrong swarm key: refused at the handshake, nothing it writes reaches the manager.
    let wrong_key = "77".repeat(32);
    let intruder = AgentProcess::start(
        &dir.path().join("intruder"),
        &["--manager", &manager.uplink, "--swarm-key", &wrong_key],
    );
    let secret = intruder.add(memory("should never reach the manager"));
    wait_until(30, "the manager refuses the intruder", || {
        metric(&manager, "murmur_manager_uplinks_refused_total") >= 1.0
    });
    wait_until(30, "the intruder learns it was refused", || {
        intruder.log().contains("handshake refused")
    });

    // A member that breaks the framing: garbage on the stream after a valid handshake.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let uplink: std::net::SocketAddr = manager.uplink.parse().unwrap();
    runtime.block_on(async {
        let endpoint = client_endpoint(Duration::from_secs(10)).unwrap();
        let mut swarm_key = [0u8; 32];
        hex::decode_to_slice(SWARM_KEY, &mut swarm_key).unwrap();
        let credentials = Credentials::new(murmur_sync::SigningKey::from_bytes(&[9; 32]), Some(swarm_key));
        let mut session = connect(&endpoint, uplink, &credentials, &[], "garbage-sender")
            .await
            .unwrap();
        // A sync frame that is not a sync message: refused by the engine, connection kept.
        write_frame(
            &mut session.send,
            &Frame::new(FrameKind::Sync, b"not a message".to_vec()),
        )
        .await
        .unwrap();
        // An unknown frame kind: the stream is dropped.
        session.send.write_all(&[0xee, 0, 0, 0, 1, 0]).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), session.connection.closed()).await;
        assert!(
            closed.is_ok(),
            "the manager keeps a connection that broke the framing"
        );
    });
    assert!(metric(&manager, "murmur_manager_refused_messages_total") >= 1.0);
    assert!(metric(&manager, "murmur_manager_uplinks_dropped_total") >= 1.0);

    // The honest agent is unharmed.
    let ids = good.add_all(&many(50, "after the garbage"), 50);
    wait_until(60, "the honest agent's memories arrive", || manager.live() == 50);
    assert_eq!(manager.status_of(&ids[49]), 200);
    assert_eq!(manager.status_of(&secret), 404);
    intruder.kill();
    good.stop();
    manager.stop();
}

#[test]
fn two_managers_on_one_bucket_converge_and_lose_no_object() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("shared-bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let url = format!("file://{}", bucket.display());
    let args = ["--no-model", "--bucket", url.as_str()];
    let m1 = ManagerProcess::start(&dir.path().join("m1"), "127.0.0.1:0", &args);
    let m2 = ManagerProcess::start(&dir.path().join("m2"), "127.0.0.1:0", &args);
    let a = agent_for(&dir.path().join("a"), &m1.uplink, &[]);
    let b = agent_for(&dir.path().join("b"), &m2.uplink, &[]);
    let on_a = a.add_all(&many(300, "site one"), 100);
    let on_b = b.add_all(&many(200, "site two"), 100);
    a.client
        .send("DELETE", &format!("/v1/memories/{}", on_a[0]), None)
        .unwrap();

    wait_until(120, "both managers hold the union", || {
        m1.live() == 499 && m2.live() == 499
    });
    let digest = |m: &ManagerProcess| m.overview()["manager"]["root_digest"].clone();
    wait_until(60, "both managers reach one state", || digest(&m1) == digest(&m2));
    assert_eq!(m2.status_of(&on_a[0]), 410);
    assert_eq!(m1.status_of(&on_b[0]), 200);
    // Agents get the other site's memories through their own manager.
    wait_until(120, "agent a receives site two", || {
        a.status_of(&on_b[199]) == 200
    });
    wait_until(120, "agent b receives site one and its delete", || {
        b.status_of(&on_a[299]) == 200 && b.status_of(&on_a[0]) == 410
    });

    // Every segment either manager wrote is in the bucket, each under its own name.
    let written = metric(&m1, "murmur_manager_segments_written_total")
        + metric(&m2, "murmur_manager_segments_written_total");
    let mut segments = BTreeSet::new();
    let mut stack = vec![bucket.join("v1/changes")];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "seg") {
                segments.insert(entry.path());
            }
        }
    }
    assert_eq!(
        segments.len() as f64,
        written,
        "segments in the bucket vs segments written"
    );
    let writers: BTreeSet<_> = segments.iter().filter_map(|p| p.parent()).collect();
    assert_eq!(writers.len(), 2, "one writer directory per manager");

    // A third manager started on the bucket alone loads the same state.
    a.stop();
    b.stop();
    let d1 = digest(&m1);
    m1.stop();
    m2.stop();
    let m3 = ManagerProcess::start(&dir.path().join("m3"), "127.0.0.1:0", &args);
    assert_eq!(digest(&m3), d1);
    assert_eq!(m3.live(), 499);
    m3.stop();
}

#[test]
fn a_damaged_segment_is_skipped_and_the_rest_of_the_bucket_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let manager_dir = dir.path().join("manager");
    let manager = ManagerProcess::start(&manager_dir, "127.0.0.1:0", &["--no-model"]);
    let agent = agent_for(&dir.path().join("agent"), &manager.uplink, &[]);
    let ids = agent.add_all(&many(30, "before the damage"), 30);
    wait_until(60, "the manager holds all 30", || manager.live() == 30);
    agent.stop();
    manager.stop();

    // One truncated real segment and one object that is not a segment at all.
    let changes = manager_dir.join("bucket/v1/changes");
    let writer = std::fs::read_dir(&changes)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let real = std::fs::read_dir(&writer)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let bytes = std::fs::read(&real).unwrap();
    let other = changes.join("0000000000000000000000000000dead");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("000000000001.seg"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(other.join("000000000002.seg"), b"not a segment at all").unwrap();

    let restarted = ManagerProcess::start(&manager_dir, "127.0.0.1:0", &["--no-model"]);
    assert_eq!(restarted.live(), 30, "{}", restarted.log());
    assert_eq!(restarted.status_of(&ids[29]), 200);
    assert_eq!(
        metric(&restarted, "murmur_manager_segments_unreadable_total"),
        2.0
    );
    assert!(restarted.log().contains("skipping a damaged segment"));
    // Left in place for an operator, not deleted.
    assert!(other.join("000000000002.seg").is_file());
    restarted.stop();
}
